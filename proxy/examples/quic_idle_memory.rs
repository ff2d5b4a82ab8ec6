//! Where the heap of an idle QUIC desktop goes (issue 17): N QUIC connections between an
//! in-memory client endpoint and a server endpoint built with the proxy's own
//! [`deskmux_proxy::quic::server_config`], datagrams passed in memory (no sockets, no core).
//! Each connection opens its one bidirectional stream, sends a hello-sized frame and gets a
//! reply, then the clock runs past every handshake timer (ACK delay, PTOs, key discard), so
//! what is left is the steady state of an idle desktop.
//!
//! A counting global allocator attributes every allocation to the side that made it (a
//! thread-local flag set around server calls), so the figure is the server's heap alone:
//! bytes and allocations per connection, after the handshake and once idle, plus the inline
//! size of `quinn_proto::Connection`. The proxy's transport settings are compared with
//! quinn-proto's defaults (`--config default`) in the same run.
//!
//! ```text
//! cargo run --release -p deskmux-proxy --example quic_idle_memory -- [N] [proxy|default|both]
//! heaptrack target/release/examples/quic_idle_memory 2000 proxy leak   # by allocation site
//! ```
//!
//! With `leak` the server's connections are leaked at exit and everything else is dropped, so
//! heaptrack's "leaked" list is the server-side state of the idle connections, by site.

#![allow(unsafe_code)] // the counting global allocator below: GlobalAlloc is an unsafe trait

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use deskmux_proxy::quic::{QuicSettings, server_config};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig,
    Event, ServerConfig, StreamEvent, TransportConfig, VarInt,
};

thread_local! {
    static SERVER_SIDE: Cell<bool> = const { Cell::new(false) };
}
static SERVER_BYTES: AtomicI64 = AtomicI64::new(0);
static SERVER_ALLOCS: AtomicI64 = AtomicI64::new(0);

/// Counts the bytes and allocations live on the server side.
struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size() as i64, 1);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        note(-(l.size() as i64), -1);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new as i64 - l.size() as i64, 0);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

fn note(bytes: i64, allocs: i64) {
    // `try_with`: the thread-local may be gone while a thread exits.
    if SERVER_SIDE.try_with(Cell::get).unwrap_or(false) {
        SERVER_BYTES.fetch_add(bytes, Ordering::Relaxed);
        SERVER_ALLOCS.fetch_add(allocs, Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Run `f` with its allocations counted as the server's.
fn server<T>(f: impl FnOnce() -> T) -> T {
    SERVER_SIDE.with(|s| s.set(true));
    let r = f();
    SERVER_SIDE.with(|s| s.set(false));
    r
}

fn server_heap() -> (i64, i64) {
    (
        SERVER_BYTES.load(Ordering::Relaxed),
        SERVER_ALLOCS.load(Ordering::Relaxed),
    )
}

const SERVER_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4433);
/// A hello and its answer are a few hundred bytes each.
const HELLO: usize = 300;

fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        10_000 + u16::try_from(i % 50_000).unwrap_or(0),
    )
}

struct Side {
    endpoint: Endpoint,
    conns: HashMap<usize, Connection>,
}

/// A datagram in flight: to the server (`Some(client index)`) or to a client (`None`, routed
/// by its connection ID).
struct Datagram {
    from_client: Option<usize>,
    data: Vec<u8>,
}

struct World {
    now: Instant,
    server: Side,
    client: Side,
    /// Client connection handle → index (its address).
    client_index: HashMap<usize, usize>,
    /// Server connections whose stream has been answered.
    answered: usize,
    wire: Vec<Datagram>,
    sbuf: Vec<u8>,
}

impl World {
    /// One round: every connection's events and transmits, then every datagram delivered.
    fn round(&mut self) -> usize {
        let now = self.now;
        // Server connections.
        let mut answered = 0;
        let wire = &mut self.wire;
        let sbuf = &mut self.sbuf;
        server(|| {
            let s = &mut self.server;
            for (&ch, c) in &mut s.conns {
                if c.poll_timeout().is_some_and(|t| t <= now) {
                    c.handle_timeout(now);
                }
                while let Some(ev) = c.poll_endpoint_events() {
                    if let Some(back) = s.endpoint.handle_event(ConnectionHandle(ch), ev) {
                        c.handle_event(back);
                    }
                }
                while let Some(ev) = c.poll() {
                    if let Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) = ev {
                        while let Some(id) = c.streams().accept(Dir::Bi) {
                            let _ = c.send_stream(id).write(&[7u8; HELLO]);
                            answered += 1;
                        }
                    }
                    if let Event::Stream(StreamEvent::Readable { id }) = ev {
                        let mut r = c.recv_stream(id);
                        if let Ok(mut chunks) = r.read(true) {
                            while let Ok(Some(_)) = chunks.next(usize::MAX) {}
                            let _ = chunks.finalize();
                        }
                    }
                }
                loop {
                    sbuf.clear();
                    let Some(t) = c.poll_transmit(now, 1, sbuf) else {
                        break;
                    };
                    // The copy on the wire is the client's to free: made outside the server
                    // side (below).
                    SERVER_SIDE.with(|f| f.set(false));
                    wire.push(Datagram {
                        from_client: None,
                        data: sbuf[..t.size].to_vec(),
                    });
                    SERVER_SIDE.with(|f| f.set(true));
                }
            }
        });
        self.answered += answered;
        // Client connections.
        let mut cbuf = Vec::new();
        let c_side = &mut self.client;
        for (&ch, c) in &mut c_side.conns {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
            while let Some(ev) = c.poll_endpoint_events() {
                if let Some(back) = c_side.endpoint.handle_event(ConnectionHandle(ch), ev) {
                    c.handle_event(back);
                }
            }
            while let Some(ev) = c.poll() {
                match ev {
                    Event::Connected => {
                        if let Some(id) = c.streams().open(Dir::Bi) {
                            let _ = c.send_stream(id).write(&[1u8; HELLO]);
                        }
                    }
                    Event::Stream(StreamEvent::Readable { id }) => {
                        let mut r = c.recv_stream(id);
                        if let Ok(mut chunks) = r.read(true) {
                            while let Ok(Some(_)) = chunks.next(usize::MAX) {}
                            let _ = chunks.finalize();
                        }
                    }
                    _ => {}
                }
            }
            loop {
                cbuf.clear();
                let Some(t) = c.poll_transmit(now, 1, &mut cbuf) else {
                    break;
                };
                let i = self.client_index[&ch];
                // Made on the server side: the server frees it.
                let data = server(|| cbuf[..t.size].to_vec());
                self.wire.push(Datagram {
                    from_client: Some(i),
                    data,
                });
            }
        }
        // Deliver.
        let wire = std::mem::take(&mut self.wire);
        let n = wire.len();
        for d in wire {
            match d.from_client {
                Some(i) => server(|| self.deliver_to_server(client_addr(i), d.data)),
                None => self.deliver_to_client(d.data),
            }
        }
        n
    }

    fn deliver_to_server(&mut self, from: SocketAddr, data: Vec<u8>) {
        let now = self.now;
        let s = &mut self.server;
        self.sbuf.clear();
        match s.endpoint.handle(
            now,
            from,
            None,
            None,
            BytesMut::from(&data[..]),
            &mut self.sbuf,
        ) {
            Some(DatagramEvent::NewConnection(inc)) => {
                if let Ok((ch, conn)) = s.endpoint.accept(inc, now, &mut self.sbuf, None) {
                    s.conns.insert(ch.0, conn);
                }
            }
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(c) = s.conns.get_mut(&ch.0) {
                    c.handle_event(ev);
                }
            }
            Some(DatagramEvent::Response(_)) | None => {}
        }
    }

    fn deliver_to_client(&mut self, data: Vec<u8>) {
        let mut buf = Vec::new();
        if let Some(DatagramEvent::ConnectionEvent(ch, ev)) = self.client.endpoint.handle(
            self.now,
            SERVER_ADDR,
            None,
            None,
            BytesMut::from(&data[..]),
            &mut buf,
        ) && let Some(c) = self.client.conns.get_mut(&ch.0)
        {
            c.handle_event(ev);
        }
    }

    /// Rounds until nothing is on the wire.
    fn settle(&mut self) {
        for _ in 0..64 {
            if self.round() == 0 {
                return;
            }
        }
    }
}

fn run(n: usize, name: &str, sc: ServerConfig, client: &ClientConfig, leak: bool) {
    let (b0, _) = server_heap();
    let endpoint = server(|| {
        Endpoint::new(
            Arc::new(EndpointConfig::default()),
            Some(Arc::new(sc)),
            true,
            None,
        )
    });
    let (b1, _) = server_heap();
    let mut w = World {
        now: Instant::now(),
        server: Side {
            endpoint,
            conns: HashMap::new(),
        },
        client: Side {
            endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None),
            conns: HashMap::new(),
        },
        client_index: HashMap::new(),
        answered: 0,
        wire: Vec::new(),
        sbuf: server(|| Vec::with_capacity(65_536)),
    };
    // Room for every connection up front, so that the maps' growth is not counted per
    // connection (the proxy's own table is measured separately, by the worker's RSS).
    server(|| w.server.conns.reserve(n));
    let (b2, a2) = server_heap();
    for i in 0..n {
        let (ch, conn) = w
            .client
            .endpoint
            .connect(w.now, client.clone(), SERVER_ADDR, "localhost")
            .expect("connect");
        w.client.conns.insert(ch.0, conn);
        w.client_index.insert(ch.0, i);
        // Handshakes in batches of 100, as a reconnect wave would come.
        if i % 100 == 99 {
            w.settle();
        }
    }
    w.settle();
    let (b3, a3) = server_heap();
    // Idle: the clock runs 10 s in 5 ms steps (ACK delays, PTOs, key discard, the handshake
    // space dropped), far below the idle timeout.
    for _ in 0..2000 {
        w.now += Duration::from_millis(5);
        w.round();
    }
    w.settle();
    let (b4, a4) = server_heap();
    let alive = w
        .server
        .conns
        .values()
        .filter(|c| !c.is_closed() && !c.is_handshaking())
        .count();
    let per = |b: i64, a: i64| (b as f64 / n as f64, a as f64 / n as f64);
    let (hb, ha) = per(b3 - b2, a3 - a2);
    let (ib, ia) = per(b4 - b2, a4 - a2);
    println!(
        "{name}: {n} connections ({alive} established, {} streams answered); server endpoint {} B; \
         per connection after the handshake {hb:.0} B in {ha:.1} allocations, idle {ib:.0} B in {ia:.1} allocations \
         (+ the Connection struct's inline {} B wherever the proxy keeps it)",
        w.answered,
        b1 - b0,
        std::mem::size_of::<Connection>(),
    );
    if leak {
        // heaptrack's "leaked" list is then the server's idle connections, by site.
        std::mem::forget(w.server);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let which = args.next().unwrap_or_else(|| "both".into());
    let leak = args.next().as_deref() == Some("leak");

    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("root");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![deskmux_proxy::tls::ALPN.to_vec()];
    let client = ClientConfig::new(Arc::new(
        quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic client"),
    ));

    let settings = QuicSettings {
        max_handshakes: 100_000,
        max_handshakes_per_source: 100_000,
        max_desktops: 100_000,
        idle: Duration::from_secs(1800),
        retry: false,
        handshake: Duration::from_secs(600),
    };
    let proxy = || server_config(&cert, &key, &settings).expect("server config");
    if which == "default" || which == "both" {
        // quinn-proto's transport defaults with only what the protocol needs changed (one
        // bidirectional stream, no unidirectional ones, the idle timeout).
        let mut sc = proxy();
        let mut t = TransportConfig::default();
        t.max_concurrent_bidi_streams(VarInt::from_u32(1))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_idle_timeout(Some(settings.idle.try_into().expect("idle")));
        sc.transport_config(Arc::new(t));
        run(n, "quinn defaults", sc, &client, leak);
    }
    if which == "proxy" || which == "both" {
        run(n, "proxy settings", proxy(), &client, leak);
    }
}
