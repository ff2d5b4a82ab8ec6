//! Shared harness of the `isolation_*` test targets: issue 11's attacks on the proxy's
//! isolation, each against real processes: a `proxy` started from the built binary, a
//! scripted fake upstream (`fake_upstream`, the link side of PROTOCOL.md) and desktops on
//! loopback. Each test asserts what PROTOCOL.md says a desktop sees (§4.1.1 flow control,
//! deadlines and half-close; §4.2 the link hello's `max_frame`; §4.3 link liveness and the
//! session-0 `UNSUBSCRIBE`; §5 error codes and retry classes; §9 subscriptions; §10 what the
//! proxy does with each frame, and what a desktop gets when something fails) and fails on the
//! proxy that predates issue 11.
//!
//! Running against the old proxy. `DESKMUX_BIN_DIR` picks the binaries; the old proxy refuses
//! the `[limits]` keys that came with issue 11 (`frame_timeout_ms`, `link_frame_timeout_ms`,
//! `max_subscriptions`, `max_desktops_per_source`, `hello_max_frame`, `worker_queue_bytes`).
//! With `DESKMUX_TEST_OLD_PROXY=1` the configs written here leave those keys out ([`limits`]),
//! so the attacks run with the old defaults and each test fails on the attack's effect rather
//! than on a config error:
//!
//! ```sh
//! cargo build --workspace --bins
//! for t in isolation_subscriptions isolation_links isolation_desktops isolation_budget; do
//!     DESKMUX_TEST_OLD_PROXY=1 DESKMUX_BIN_DIR=/path/to/old/debug \
//!         cargo test -p deskmux-tests --test $t
//! done
//! ```
//!
//! Waiting: tests wait for conditions (an answer, a record at the fake, a `/status` value),
//! each bounded by a generous step deadline. The few fixed bounds that are not conditions
//! (a per-write stall timeout, a wait-for-failure window, the pace of a trickling attacker)
//! say so where they are.
//!
//! What is here: the config and the old-proxy switch ([`limits`], [`rig`]), desktops through
//! the test client ([`desktop`], [`desktop_rst`]), `/status` reads, and raw desktops for what
//! the client does not do (half-close, pipelining, trickling, never reading: [`Reader`],
//! [`raw_hello`]).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use deskmux_codec::msg::{DesktopHello, ServerHello, control, ixn, key};
use deskmux_codec::{
    BodyError, BodyWriter, ErrorCode, Frame, FrameDecoder, Head, Kind, RetryClass, Service,
};
use deskmux_tests::TestClient;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::fake_upstream::{FakeUpstream, Options, is_request};
use crate::proxy_support::{self, Proxy, SECRET, T2, TOKEN1, TOKEN2, code};

/// How long one step (an answer, a record at the fake) may take.
pub const STEP: Duration = Duration::from_secs(5);
/// Services `[interaction, ucs]`: every fake serves both, so one hello opens one session.
pub const BOTH: &str = "[\"interaction\", \"ucs\"]";
pub const MIB: usize = 1024 * 1024;

// ------------------------------------------------------------------ config and rig

/// Whether the configs must suit the pre-issue-11 proxy (see the module docs).
pub fn old_proxy() -> bool {
    std::env::var("DESKMUX_TEST_OLD_PROXY").is_ok_and(|v| v == "1")
}

/// `[limits]` lines: `known` keys always, `new` keys (issue 11) only for the new proxy.
pub fn limits(known: &[(&str, u64)], new: &[(&str, u64)]) -> String {
    let mut s = String::new();
    for (k, v) in known {
        s.push_str(&format!("{k} = {v}\n"));
    }
    if !old_proxy() {
        for (k, v) in new {
            s.push_str(&format!("{k} = {v}\n"));
        }
    }
    s
}

/// A proxy (one worker) in front of fake upstreams.
pub struct Rig {
    pub proxy: Proxy,
    pub fakes: Vec<FakeUpstream>,
    _dir: tempfile::TempDir,
}

impl Rig {
    pub fn addr(&self) -> SocketAddr {
        self.proxy.addr
    }
}

/// Start `n` fakes (each serving both services) and a proxy with `links` links to each.
pub async fn rig(n: usize, links: u16, limits: String) -> Rig {
    rig_with(n, links, limits, |o| o).await
}

/// As [`rig`], each fake's [`Options`] passed through `opts` first.
pub async fn rig_with(
    n: usize,
    links: u16,
    limits: String,
    opts: impl Fn(Options) -> Options,
) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fakes = Vec::new();
    for i in 0..n {
        let o = opts(Options::new(SECRET, &format!("fake{i}")));
        fakes.push(FakeUpstream::start(o).await);
    }
    let ups: Vec<(&str, SocketAddr)> = fakes.iter().map(|f| (BOTH, f.addr)).collect();
    let cfg = proxy_support::proxy_config(dir.path(), &ups, 1, links, &limits);
    // start_proxy blocks on the child's stdout; keep it off the runtime the fakes run on.
    let proxy = tokio::task::spawn_blocking(move || proxy_support::start_proxy(cfg))
        .await
        .expect("start proxy");
    for (i, f) in fakes.iter().enumerate() {
        f.wait_for(
            proxy_support::START,
            &format!("the proxy's {links} links to fake{i} are up"),
            |s| (s.up_links().len() >= usize::from(links)).then_some(()),
        )
        .await;
    }
    Rig {
        proxy,
        fakes,
        _dir: dir,
    }
}

// ------------------------------------------------------------------ desktops

pub fn token(tenant: u32) -> &'static str {
    if tenant == T2 { TOKEN2 } else { TOKEN1 }
}

/// A desktop with an open session (both services).
pub async fn desktop(addr: SocketAddr, tenant: u32, agent: &str) -> TestClient {
    let mut c = TestClient::connect(addr)
        .await
        .expect("connect to the proxy");
    c.hello_ok(tenant, agent, token(tenant))
        .await
        .unwrap_or_else(|e| panic!("hello of {agent}: {e:#}"));
    c
}

/// A desktop with an open session whose drop resets the connection (`SO_LINGER` 0): it is
/// gone at once. A plain close sends FIN, which the proxy must treat as a half-close (the
/// desktop still gets its answers, PROTOCOL.md §4.1.1), not as leaving.
pub async fn desktop_rst(addr: SocketAddr, tenant: u32, agent: &str) -> TestClient {
    let s = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect timeout")
        .expect("connect to the proxy");
    s.set_nodelay(true).expect("nodelay");
    s.set_zero_linger().expect("SO_LINGER 0");
    let mut c = TestClient::new(s);
    c.hello_ok(tenant, agent, token(tenant))
        .await
        .unwrap_or_else(|e| panic!("hello of {agent}: {e:#}"));
    c
}

/// The (link index, upstream session id) of `agent`'s session at `fake`.
pub fn upstream_session(fake: &FakeUpstream, agent: &str) -> Option<(usize, u64)> {
    fake.with(|s| s.session_of(agent).map(|(l, r)| (l, r.session)))
}

/// Wait until the proxy has noticed that desktops left: the fake saw `SESSION_CLOSE` for
/// every one of `sessions`, or `/status` counts no desktop.
///
/// A fence for the order of events, not an assertion: it makes the old proxy's slot reuse
/// reproducible (the departure is processed before what the test does next). A proxy may
/// legitimately keep a session open upstream while answers are due, so on timeout the test
/// goes on; its assertions hold whatever the order.
pub async fn wait_desktops_gone(rig: &Rig, fake: &FakeUpstream, sessions: &[u64]) {
    let end = Instant::now() + STEP * 2;
    loop {
        if fake.with(|s| sessions.iter().all(|id| s.session_closed(*id))) {
            return;
        }
        if worker_sum(&status(rig.proxy.admin).await, "desktops") == Some(0) {
            return;
        }
        if Instant::now() >= end {
            eprintln!("note: no sign yet that the proxy noticed the desktops leaving; going on");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------ /status

/// The proxy's `/status` (blocking HTTP, kept off the runtime).
pub async fn status(admin: SocketAddr) -> serde_json::Value {
    tokio::task::spawn_blocking(move || proxy_support::status(admin))
        .await
        .expect("status")
}

/// The proxy's `/status`, or `None` if its admin port does not answer: for a sampler that may
/// outlive the proxy of a test that failed (and must not add a panic of its own).
pub async fn try_status(admin: SocketAddr) -> Option<serde_json::Value> {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&admin, STEP).ok()?;
        s.set_read_timeout(Some(STEP)).ok()?;
        write!(s, "GET /status HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let (_, body) = buf.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    })
    .await
    .ok()
    .flatten()
}

/// A per-worker `/status` number, one per worker that reports it.
pub fn worker_values(v: &serde_json::Value, k: &str) -> Vec<u64> {
    v["workers"].as_array().map_or_else(Vec::new, |ws| {
        ws.iter().filter_map(|w| w["status"][k].as_u64()).collect()
    })
}

/// A per-worker `/status` number summed over the workers; `None` if no worker reported it.
pub fn worker_sum(v: &serde_json::Value, k: &str) -> Option<u64> {
    let vals = worker_values(v, k);
    (!vals.is_empty()).then(|| vals.iter().sum())
}

/// Poll `/status` until `pred` holds for the summed worker value `k` (at most `timeout`);
/// the last value seen.
pub async fn wait_status(
    admin: SocketAddr,
    k: &str,
    timeout: Duration,
    pred: impl Fn(u64) -> bool,
) -> Option<u64> {
    let end = Instant::now() + timeout;
    loop {
        let v = worker_sum(&status(admin).await, k);
        if v.is_some_and(&pred) || Instant::now() >= end {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------ frames

pub fn sub_body(topic: &str) -> impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError> + '_ {
    move |w| {
        w.str(key::TOPIC, topic)?;
        Ok(())
    }
}

/// An `ECHO` body carrying `data`.
pub fn data_body(data: &[u8]) -> impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError> + '_ {
    move |w| {
        w.bin(key::DATA, data)?;
        Ok(())
    }
}

pub fn is_control_error(f: &Frame, c: ErrorCode) -> bool {
    let h = f.head();
    h.kind == Kind::Control && h.msg_type == control::ERROR && code(f) == Some(c)
}

/// Whether `f` is an error response with code `c` (whose retry class is `class`).
pub fn is_error(f: &Frame, c: ErrorCode, class: RetryClass) -> bool {
    f.head().kind == Kind::Response && code(f) == Some(c) && c.retry_class() == class
}

pub fn summary(f: &Frame) -> String {
    let h = f.head();
    match f.error() {
        Some((c, m)) => format!("{:?} type {:#06x} error {c} {m:?}", h.kind, h.msg_type),
        None => format!(
            "{:?} type {:#06x} ok, {} body bytes",
            h.kind,
            h.msg_type,
            f.body_bytes().len()
        ),
    }
}

/// A request frame as a desktop sends it.
pub fn request(
    service: Service,
    msg_type: u16,
    tenant: u32,
    corr: u64,
    body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
) -> Frame {
    let mut h = Head::new(Kind::Request, service, msg_type);
    h.tenant = tenant;
    h.correlation = corr;
    Frame::build(h, body).expect("build request")
}

pub fn hello_frame(tenant: u32, agent: &str, corr: u64) -> Frame {
    let hello = DesktopHello {
        version: 1,
        agent,
        token: token(tenant),
        reconnect: None,
        services: 0b110,
    };
    request(Service::Control, control::HELLO, tenant, corr, |w| {
        hello.write(w)
    })
}

pub fn echo_frame(tenant: u32, corr: u64, data: &[u8]) -> Frame {
    request(
        Service::Interaction,
        ixn::ECHO,
        tenant,
        corr,
        data_body(data),
    )
}

// ------------------------------------------------------------------ raw desktops

/// What a raw read gave.
pub enum Got {
    Frame(Frame),
    /// EOF or reset.
    Closed,
    TimedOut,
}

/// Frames from a raw byte stream, with the real decoder.
pub struct Reader {
    buf: BytesMut,
    dec: FrameDecoder,
}

impl Reader {
    pub fn new() -> Reader {
        Reader {
            buf: BytesMut::with_capacity(64 * 1024),
            dec: FrameDecoder::new(16 * MIB),
        }
    }

    /// The next frame, or close, or nothing by `deadline`. Cancel-safe (bytes read stay in
    /// the buffer).
    pub async fn next(&mut self, r: &mut (impl AsyncRead + Unpin), deadline: Instant) -> Got {
        loop {
            match self.dec.decode(&mut self.buf) {
                Ok(Some(f)) => return Got::Frame(f),
                Ok(None) => {}
                Err(e) => panic!("the proxy lost framing towards the desktop: {e}"),
            }
            match tokio::time::timeout_at(deadline, r.read_buf(&mut self.buf)).await {
                Err(_) => return Got::TimedOut,
                Ok(Ok(0) | Err(_)) => return Got::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next frame that is not a heartbeat request from the proxy.
    pub async fn next_no_hb(&mut self, r: &mut (impl AsyncRead + Unpin), deadline: Instant) -> Got {
        loop {
            match self.next(r, deadline).await {
                Got::Frame(f) if is_request(&f, Service::Control, control::HEARTBEAT) => {}
                g => return g,
            }
        }
    }
}

/// Complete the hello of a raw desktop on `s`; its reader and session id.
pub async fn raw_hello_on(s: &mut TcpStream, tenant: u32, agent: &str) -> (Reader, u64) {
    s.set_nodelay(true).expect("nodelay");
    s.write_all(hello_frame(tenant, agent, 1).as_bytes())
        .await
        .expect("write hello");
    let mut rd = Reader::new();
    let f = match rd.next_no_hb(s, Instant::now() + STEP).await {
        Got::Frame(f) => f,
        Got::Closed => panic!("{agent}: closed before the hello answer"),
        Got::TimedOut => panic!("{agent}: no hello answer within {STEP:?}"),
    };
    assert!(
        f.error().is_none(),
        "{agent}: hello refused: {}",
        summary(&f)
    );
    let sh = ServerHello::read(f.body()).expect("server hello body");
    (rd, sh.session)
}

/// Connect a raw desktop and complete its hello; the stream, its reader and the session id.
pub async fn raw_hello(addr: SocketAddr, tenant: u32, agent: &str) -> (TcpStream, Reader, u64) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let (rd, session) = raw_hello_on(&mut s, tenant, agent).await;
    (s, rd, session)
}
