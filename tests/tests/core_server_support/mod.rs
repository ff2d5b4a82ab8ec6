//! Private support for the `core_server_*` integration tests: start a real `core-server`
//! process on loopback with a temp data dir, and a small blocking client speaking the wire
//! protocol through the real codec. Everything is bounded by timeouts; children die on drop.
#![allow(dead_code)]

pub use deskmux_tests::pg;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use deskmux_codec::msg::{DesktopHello, LinkHello, control, key};
use deskmux_codec::{BodyError, BodyWriter, ErrorCode, Frame, FrameDecoder, Head, Kind, Service};
use deskmux_tests::Proc;

pub const T1: u32 = 1;
pub const T2: u32 = 2;
pub const TOKEN1: &str = "tok-acme";
pub const TOKEN2: &str = "tok-globex";
pub const SECRET: &str = "test-link-secret-0123456789abcdef";
pub const WAIT: Duration = Duration::from_secs(10);

/// The `core-server` binary (see [`deskmux_tests::bin_path`]); panics if it is not built.
pub fn bin() -> PathBuf {
    let p = deskmux_tests::bin_path("core-server");
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p deskmux-core-server` first",
        p.display()
    );
    p
}

/// A config file for tests: two tenants, short invite timeout, db in `dir`.
pub fn write_config(dir: &Path, invite_timeout_ms: u32, extra: &str) -> PathBuf {
    write_config_on(dir, invite_timeout_ms, extra, None)
}

/// As [`write_config`], the data in database `db` of PostgreSQL server `pg` (its `[storage]`
/// section, the password in a file in `dir`) instead of a SQLite file.
pub fn write_config_pg(
    dir: &Path,
    invite_timeout_ms: u32,
    extra: &str,
    pg: &pg::PgServer,
    db: &str,
) -> PathBuf {
    write_config_on(dir, invite_timeout_ms, extra, Some((pg, db)))
}

/// [`write_config_pg`] serving only `tenant` (the other tenant's section removed): an
/// Interaction Server partition, which leases that tenant alone.
pub fn write_config_pg_tenant(dir: &Path, pg: &pg::PgServer, db: &str, tenant: u32) -> PathBuf {
    let cfg = write_config_pg(dir, 5000, "", pg, db);
    let other = if tenant == T1 {
        (T2, "globex")
    } else {
        (T1, "acme")
    };
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("[[tenants]]\nid = {}\nname = \"{}\"\n", other.0, other.1),
        "",
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn write_config_on(
    dir: &Path,
    invite_timeout_ms: u32,
    extra: &str,
    pg: Option<(&pg::PgServer, &str)>,
) -> PathBuf {
    // The agents are provisioned once per data (a marker file stands for a PostgreSQL one,
    // the tests' PostgreSQL mode's included).
    let data = match pg {
        None if deskmux_tests::storage_mode::postgres() => dir.join("core.provisioned"),
        None => dir.join("core.db"),
        Some((_, db)) => dir.join(format!("{db}.provisioned")),
    };
    let had_db = data.exists();
    let storage = pg.map_or(String::new(), |(pg, db)| pg.storage_toml(dir, db));
    let cfg = format!(
        r#"listen = "127.0.0.1:0"
db = "{db}"
instance = "test-core"
link_secret = "{SECRET}"
heartbeat_ms = 60000
invite_timeout_ms = {invite_timeout_ms}
shutdown_grace_ms = 300
{extra}
[[tenants]]
id = 1
name = "acme"

[[tenants]]
id = 2
name = "globex"

{storage}"#,
        db = dir.join("core.db").display()
    );
    let p = dir.join("core.toml");
    std::fs::write(&p, cfg).expect("write config");
    // Once per data file: a test that rewrites the config (to restart with other settings)
    // keeps the agents it has, and a full disk stays full.
    if !had_db {
        deskmux_tests::creds::provision_named(&p, &[(T1, TOKEN1), (T2, TOKEN2)])
            .expect("provision agents");
        if pg.is_some() || deskmux_tests::storage_mode::postgres() {
            std::fs::write(&data, b"").expect("write marker");
        }
    }
    p
}

/// A running core-server process: the shared [`Proc`] harness plus its address.
pub struct Server {
    proc_: Proc,
    pub addr: SocketAddr,
}

impl Server {
    /// Start with `config` and extra args; waits for `LISTENING`.
    pub fn start(config: &Path, args: &[&str]) -> Server {
        let config = config.to_str().expect("utf-8 config path");
        let mut all = vec!["--config", config];
        all.extend_from_slice(args);
        let mut proc_ = Proc::spawn_env("core-server", &all, &[("RUST_LOG", "error")])
            .expect("spawn core-server");
        let addr = proc_.listening(WAIT).expect("core-server LISTENING");
        Server { proc_, addr }
    }

    /// Wait for a stdout line starting with `prefix`; returns the whole line.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        let rest = self
            .proc_
            .wait_line(prefix, WAIT)
            .expect("core-server line");
        format!("{prefix}{rest}")
    }

    pub fn pid(&self) -> u32 {
        self.proc_.pid().expect("running")
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        self.proc_.kill();
    }

    /// Send a signal by name (`USR1`, `TERM`, ...).
    pub fn signal(&self, sig: &str) {
        self.proc_.signal(sig).expect("signal core-server");
    }

    /// Wait for exit (bounded).
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        self.proc_.wait_exit(within).is_ok()
    }

    /// Wait (bounded) for the process to exit by itself; its exit code (`None`: ended by a
    /// signal). Panics if it is still running after `within` (it is then killed).
    pub fn exit_code(&mut self, within: Duration) -> Option<i32> {
        self.proc_.wait_exit(within).expect("core-server exits")
    }
}

/// A blocking protocol client (a direct desktop, or a proxy link).
pub struct Client {
    s: TcpStream,
    dec: FrameDecoder,
    buf: BytesMut,
    corr: u64,
    pub tenant: u32,
    pub session: u64,
    /// Frames received while waiting for something else.
    pub stash: VecDeque<Frame>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::with_stream(TcpStream::connect_timeout(&addr, WAIT).expect("connect"))
    }

    /// Connect from source address `src` (another 127.0.0.0/8 address: a second "machine").
    pub fn connect_from(addr: SocketAddr, src: std::net::IpAddr) -> Client {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.bind(&SocketAddr::new(src, 0).into())
            .expect("bind source");
        sock.connect_timeout(&addr.into(), WAIT).expect("connect");
        Client::with_stream(sock.into())
    }

    fn with_stream(s: TcpStream) -> Client {
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(Duration::from_millis(50))).ok();
        Client {
            s,
            dec: FrameDecoder::new(4 * 1024 * 1024),
            buf: BytesMut::with_capacity(64 * 1024),
            corr: 0,
            tenant: 0,
            session: 0,
            stash: VecDeque::new(),
        }
    }

    /// Connect and hello as a desktop of `tenant`; panics on refusal.
    pub fn desktop(addr: SocketAddr, tenant: u32, agent: &str, token: &str) -> Client {
        let mut c = Client::connect(addr);
        let r = c.hello(tenant, agent, token);
        assert!(r.error().is_none(), "hello refused: {:?}", r.error());
        c
    }

    /// A second handle on the socket (for a writer thread).
    pub fn raw_stream(&self) -> TcpStream {
        self.s.try_clone().expect("clone socket")
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write");
    }

    /// Next frame within `d`, or None (timeout / closed).
    pub fn read_frame(&mut self, d: Duration) -> Option<Frame> {
        if let Some(f) = self.stash.pop_front() {
            return Some(f);
        }
        self.read_wire(d)
    }

    fn read_wire(&mut self, d: Duration) -> Option<Frame> {
        let end = Instant::now() + d;
        loop {
            if let Ok(Some(f)) = self.dec.decode(&mut self.buf) {
                // Answer server heartbeats like a desktop would.
                let h = f.head();
                if h.kind == Kind::Request
                    && h.service == Service::Control
                    && h.msg_type == control::HEARTBEAT
                {
                    let mut r = *h;
                    r.kind = Kind::Response;
                    let b = r.to_bytes();
                    let _ = self.s.write_all(&b);
                    continue;
                }
                return Some(f);
            }
            if Instant::now() >= end {
                return None;
            }
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// Whether the server closed the connection (reads EOF within `d`, ignoring frames).
    pub fn closed_within(&mut self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            let mut tmp = [0u8; 4096];
            match self.s.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// Send a request with an explicit head (correlation assigned here); return its response.
    pub fn call_head<'f>(
        &mut self,
        mut h: Head,
        body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError> + 'f,
    ) -> Frame {
        self.corr += 1;
        h.kind = Kind::Request;
        h.correlation = self.corr;
        let f = Frame::build(h, body).expect("build");
        self.send_raw(f.as_bytes());
        self.wait_response(self.corr)
    }

    pub fn wait_response(&mut self, corr: u64) -> Frame {
        let end = Instant::now() + WAIT;
        // Look in the stash first.
        if let Some(i) = self
            .stash
            .iter()
            .position(|f| f.head().kind == Kind::Response && f.head().correlation == corr)
        {
            return self.stash.remove(i).unwrap();
        }
        while Instant::now() < end {
            if let Some(f) = self.read_wire(Duration::from_millis(100)) {
                if f.head().kind == Kind::Response && f.head().correlation == corr {
                    return f;
                }
                self.stash.push_back(f);
            }
        }
        panic!("no response to correlation {corr}");
    }

    /// A request of this client's tenant and session.
    pub fn call<'f>(
        &mut self,
        service: Service,
        ty: u16,
        body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError> + 'f,
    ) -> Frame {
        let mut h = Head::new(Kind::Request, service, ty);
        h.tenant = self.tenant;
        h.session = self.session;
        self.call_head(h, body)
    }

    pub fn ixn<'f>(
        &mut self,
        ty: u16,
        body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError> + 'f,
    ) -> Frame {
        self.call(Service::Interaction, ty, body)
    }

    pub fn ucs<'f>(
        &mut self,
        ty: u16,
        body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError> + 'f,
    ) -> Frame {
        self.call(Service::Ucs, ty, body)
    }

    pub fn hello(&mut self, tenant: u32, agent: &str, token: &str) -> Frame {
        let hello = DesktopHello {
            version: 1,
            agent,
            token,
            reconnect: None,
            services: 6,
        };
        self.hello_as(tenant, &hello)
    }

    /// A `HELLO` with any body (a reconnect token, say).
    pub fn hello_as(&mut self, tenant: u32, hello: &DesktopHello<'_>) -> Frame {
        let mut h = Head::new(Kind::Request, Service::Control, control::HELLO);
        h.tenant = tenant;
        let r = self.call_head(h, |w| hello.write(w));
        if r.error().is_none() {
            self.tenant = tenant;
            self.session = r.body().int(key::SESSION).unwrap() as u64;
        }
        r
    }

    pub fn link_hello(&mut self, secret: &[u8]) -> Frame {
        let h = Head::new(Kind::Request, Service::Control, control::LINK_HELLO);
        let lh = LinkHello {
            version: 1,
            link: "test-link",
            secret,
            max_frame: None,
        };
        self.call_head(h, |w| lh.write(w))
    }

    pub fn session_open(&mut self, session: u64, tenant: u32, agent: &str, token: &str) -> Frame {
        let mut h = Head::new(Kind::Request, Service::Control, control::SESSION_OPEN);
        h.tenant = tenant;
        h.session = session;
        let hello = DesktopHello {
            version: 1,
            agent,
            token,
            reconnect: None,
            services: 6,
        };
        self.call_head(h, |w| hello.write(w))
    }

    /// A request on a link for `session` of `tenant`.
    pub fn on<'f>(
        &mut self,
        session: u64,
        tenant: u32,
        service: Service,
        ty: u16,
        body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError> + 'f,
    ) -> Frame {
        let mut h = Head::new(Kind::Request, service, ty);
        h.tenant = tenant;
        h.session = session;
        self.call_head(h, body)
    }

    /// Wait for a non-response frame matching `pred` (others are kept in the stash).
    pub fn wait_for(&mut self, d: Duration, pred: impl Fn(&Frame) -> bool) -> Option<Frame> {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i);
        }
        let end = Instant::now() + d;
        while Instant::now() < end {
            if let Some(f) = self.read_wire(Duration::from_millis(50)) {
                if pred(&f) {
                    return Some(f);
                }
                self.stash.push_back(f);
            }
        }
        None
    }

    /// Wait for an event of message type `ty`.
    pub fn event(&mut self, ty: u16, d: Duration) -> Option<Frame> {
        self.wait_for(d, |f| {
            f.head().kind == Kind::Event && f.head().msg_type == ty
        })
    }
}

/// A desktop of tenant 1 with agent `name` logged in (place `p`).
pub fn agent(addr: SocketAddr, name: &str) -> Client {
    let mut c = Client::desktop(addr, T1, name, TOKEN1);
    ok(c.ixn(deskmux_codec::msg::ixn::AGENT_LOGIN, |w| {
        w.str(key::PLACE, "p")?;
        Ok(())
    }));
    c
}

/// Submit an interaction into `queue` (properties `k=v`); its id.
pub fn submit(c: &mut Client, queue: &str) -> i64 {
    let r = ok(c.ixn(deskmux_codec::msg::ixn::SUBMIT, |w| {
        w.str(key::QUEUE, queue)?;
        props(w, key::PROPS, &[("k", "v")])
    }));
    int(&r, key::INTERACTION)
}

/// A body naming interaction `id`.
pub fn with_ixn(id: i64) -> impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError> {
    move |w| {
        w.int(key::INTERACTION, id);
        Ok(())
    }
}

/// The error code of a frame, if it is an error.
pub fn code(f: &Frame) -> Option<ErrorCode> {
    f.error().map(|(c, _)| c)
}

/// Assert success and return the frame.
#[track_caller]
pub fn ok(f: Frame) -> Frame {
    assert!(f.error().is_none(), "unexpected error {:?}", f.error());
    f
}

/// Assert an error code.
#[track_caller]
pub fn err(f: &Frame, c: ErrorCode) {
    assert_eq!(code(f), Some(c), "expected {c}, got {:?}", f.error());
}

pub fn props<'a>(
    w: &mut BodyWriter<'_>,
    k: &'static str,
    items: &'a [(&'a str, &'a str)],
) -> Result<(), BodyError> {
    w.list(k, |w| {
        for (a, b) in items {
            w.str(a, b)?;
        }
        Ok(())
    })?;
    Ok(())
}

pub fn int(f: &Frame, k: &'static str) -> i64 {
    f.body().int(k).unwrap_or_else(|e| panic!("key {k}: {e}"))
}

/// One TCP connection as the kernel shows it in `/proc/net/tcp`.
#[derive(Debug, Clone, Copy)]
pub struct TcpConn {
    /// In state ESTABLISHED (not closing).
    pub established: bool,
    /// Bytes written and not yet acknowledged by the peer.
    pub tx: u64,
    /// Bytes received and not yet read by the application.
    pub rx: u64,
}

/// The TCP connection from `local` to `remote` (IPv4); `None` if there is none (any more).
pub fn tcp_conn(local: SocketAddr, remote: SocketAddr) -> Option<TcpConn> {
    fn hex(a: SocketAddr) -> Option<String> {
        match a {
            SocketAddr::V4(v4) => Some(format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(v4.ip().octets()),
                v4.port()
            )),
            SocketAddr::V6(_) => None,
        }
    }
    let (l, r) = (hex(local)?, hex(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&l.as_str()) || f.get(2) != Some(&r.as_str()) {
            return None;
        }
        let (tx, rx) = f.get(4)?.split_once(':')?;
        Some(TcpConn {
            established: *f.get(3)? == "01",
            tx: u64::from_str_radix(tx, 16).ok()?,
            rx: u64::from_str_radix(rx, 16).ok()?,
        })
    })
}

/// Wait (bounded by `within`) until the server at `server` holds answers for the client
/// connection `client` that the client has not read: the client's receive queue holds at
/// least `unread` bytes and the server's send queue towards it is not empty; or until the
/// server closed the connection. Returns whether either happened.
pub fn server_backed_up(
    server: SocketAddr,
    client: SocketAddr,
    unread: u64,
    within: Duration,
) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        match (tcp_conn(client, server), tcp_conn(server, client)) {
            (Some(ours), Some(theirs))
                if theirs.established && ours.rx >= unread && theirs.tx > 0 =>
            {
                return true;
            }
            (_, Some(theirs)) if !theirs.established => return true,
            (_, None) => return true,
            _ => {}
        }
        // Back-off between two looks at the queues.
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// One HTTP/1.0 request; returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("http connect");
    s.set_read_timeout(Some(WAIT)).ok();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: x\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// The value of a sample line `name value` in a metrics body.
pub fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The HTTP admin address a server started with `http_listen` announces.
pub fn http_addr(s: &mut Server) -> SocketAddr {
    s.wait_line("HTTP ")
        .trim_start_matches("HTTP ")
        .trim()
        .parse()
        .expect("HTTP address")
}
