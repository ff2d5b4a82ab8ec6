//! Closed-loop load against a running core-server, to measure its request rates.
//!
//! Each of `--conns` workers keeps exactly one request outstanding and counts completions for
//! `--secs` seconds. With `--link`, the same number of sessions are multiplexed over `--links`
//! proxy links (each link carries `conns / links` sessions, one outstanding request each), so
//! direct and linked throughput can be compared.
//!
//! ```sh
//! cargo run --release -p deskmux-core-server -- --db /tmp/bench.db --listen 127.0.0.1:7100 &
//! cargo run --release -p deskmux-core-server --example bench -- --mode echo --conns 32 --secs 5
//! cargo run --release -p deskmux-core-server --example bench -- --mode echo --link --links 2 --conns 32
//! cargo run --release -p deskmux-core-server --example bench -- --mode get --conns 32
//! cargo run --release -p deskmux-core-server --example bench -- --mode history --conns 32
//! cargo run --release -p deskmux-core-server --example bench -- --mode cycle --conns 16
//! ```
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use clap::Parser;
use deskmux_codec::msg::{DesktopHello, LinkHello, control, ixn, key, ucs};
use deskmux_codec::{Frame, FrameDecoder, Head, Kind, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Parser)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7100")]
    addr: String,
    /// echo, get (UCS contact get: a read), history (UCS history insert of 256 bytes: a
    /// write) or cycle (submit→invite→accept→stop).
    #[arg(long, default_value = "echo")]
    mode: String,
    /// Concurrent sessions (each with one request outstanding).
    #[arg(long, default_value_t = 32)]
    conns: usize,
    /// Seconds to measure (after a short warm-up).
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Multiplex the sessions over proxy links instead of direct connections.
    #[arg(long)]
    link: bool,
    /// Number of links with --link.
    #[arg(long, default_value_t = 2)]
    links: usize,
    /// Tenant of the sessions.
    #[arg(long, default_value_t = 1)]
    tenant: u32,
    /// File holding the tenant's token (default: the embedded default config's `acme-token`).
    /// A file, not a value: secrets never go on a command line, where `ps` shows them.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// File holding the link secret for `--link` (default: the embedded default config's).
    #[arg(long)]
    secret_file: Option<std::path::PathBuf>,
    /// What the two files hold, read once in `main`.
    #[arg(skip)]
    secrets: Secrets,
    /// Server pid: also report the server's CPU time per request (from /proc; robust when
    /// other processes compete for the cores).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Echo payload bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
}

struct Conn {
    s: TcpStream,
    dec: FrameDecoder,
    buf: BytesMut,
    corr: u64,
}

impl Conn {
    async fn open(addr: &str) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(addr).await.context("connect")?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            dec: FrameDecoder::new(4 << 20),
            buf: BytesMut::with_capacity(1 << 16),
            corr: 0,
        })
    }

    async fn send(
        &mut self,
        mut h: Head,
        body: impl FnOnce(&mut deskmux_codec::BodyWriter<'_>) -> Result<(), deskmux_codec::BodyError>,
    ) -> anyhow::Result<u64> {
        self.corr += 1;
        h.correlation = self.corr;
        h.kind = Kind::Request;
        let f = Frame::build(h, body)?;
        self.s.write_all(f.as_bytes()).await?;
        Ok(self.corr)
    }

    async fn next(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf)? {
                let h = f.head();
                if h.kind == Kind::Request
                    && h.service == Service::Control
                    && h.msg_type == control::HEARTBEAT
                {
                    let mut r = *h;
                    r.kind = Kind::Response;
                    self.s.write_all(&r.to_bytes()).await?;
                    continue;
                }
                return Ok(f);
            }
            if self.s.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed");
            }
        }
    }

    async fn call(
        &mut self,
        h: Head,
        body: impl FnOnce(&mut deskmux_codec::BodyWriter<'_>) -> Result<(), deskmux_codec::BodyError>,
    ) -> anyhow::Result<Frame> {
        let c = self.send(h, body).await?;
        loop {
            let f = self.next().await?;
            if f.head().kind == Kind::Response && f.head().correlation == c {
                if let Some((code, m)) = f.error() {
                    bail!("error {code}: {m}");
                }
                return Ok(f);
            }
        }
    }
}

fn head(service: Service, ty: u16, tenant: u32, session: u64) -> Head {
    let mut h = Head::new(Kind::Request, service, ty);
    h.tenant = tenant;
    h.session = session;
    h
}

/// The tenant token and the link secret: from their files, or the embedded default config's.
#[derive(Clone, Default)]
struct Secrets {
    token: String,
    link: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

impl Secrets {
    fn load(a: &Args) -> anyhow::Result<Secrets> {
        let read = |p: &Option<std::path::PathBuf>, default: &str| -> anyhow::Result<String> {
            match p {
                Some(p) => Ok(std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .trim_end()
                    .to_owned()),
                None => Ok(default.to_owned()),
            }
        };
        Ok(Secrets {
            token: read(&a.token_file, "acme-token")?,
            link: read(&a.secret_file, "deskmux-link-secret")?,
        })
    }
}

/// Connect directly and hello; returns the connection.
async fn desktop(a: &Args, agent: &str) -> anyhow::Result<Conn> {
    let mut c = Conn::open(&a.addr).await?;
    let hello = DesktopHello {
        version: 1,
        agent,
        token: &a.secrets.token,
        reconnect: None,
        services: 6,
    };
    c.call(head(Service::Control, control::HELLO, a.tenant, 0), |w| {
        hello.write(w)
    })
    .await?;
    Ok(c)
}

struct Stats {
    done: AtomicU64,
    measuring: AtomicBool,
    /// Latency of each request completed while measuring, µs (echo, get and history).
    lat_us: std::sync::Mutex<Vec<u32>>,
}

async fn create_contact(c: &mut Conn, a: &Args, session: u64, i: usize) -> anyhow::Result<i64> {
    let f = c
        .call(
            head(Service::Ucs, ucs::CONTACT_CREATE, a.tenant, session),
            |w| {
                w.list(key::ATTRS, |w| {
                    w.str(key::EMAIL, &format!("bench{i}@example.com"))?;
                    w.str("name", "Bench Contact")?;
                    Ok(())
                })?;
                Ok(())
            },
        )
        .await?;
    Ok(f.body().int(key::CONTACT)?)
}

async fn send_one(
    c: &mut Conn,
    mode: &str,
    tenant: u32,
    payload: &[u8],
    sess: u64,
    contact: i64,
) -> anyhow::Result<u64> {
    match mode {
        "get" => {
            let h = head(Service::Ucs, ucs::CONTACT_GET, tenant, sess);
            c.send(h, |w| {
                w.int(key::CONTACT, contact);
                Ok(())
            })
            .await
        }
        "history" => {
            let h = head(Service::Ucs, ucs::HISTORY_INSERT, tenant, sess);
            c.send(h, |w| {
                w.int(key::CONTACT, contact);
                w.str(key::SUBJECT, "bench")?;
                w.str(key::TEXT, &"x".repeat(256))?;
                Ok(())
            })
            .await
        }
        _ => {
            let h = head(Service::Interaction, ixn::ECHO, tenant, sess);
            c.send(h, |w| {
                w.bin(key::DATA, payload)?;
                Ok(())
            })
            .await
        }
    }
}

async fn submit(c: &mut Conn, tenant: u32) -> anyhow::Result<u64> {
    c.send(head(Service::Interaction, ixn::SUBMIT, tenant, 0), |w| {
        w.str(key::QUEUE, "bench")?;
        w.list(key::PROPS, |w| {
            w.str("subject", "bench")?;
            Ok(())
        })?;
        Ok(())
    })
    .await
}

/// One connection carrying `sessions` (session id, contact id), one request outstanding each.
async fn simple_loop(
    a: Args,
    mut c: Conn,
    sessions: Vec<(u64, i64)>,
    st: Arc<Stats>,
) -> anyhow::Result<()> {
    let payload = vec![0xABu8; a.payload];
    let tenant = a.tenant;
    let mut by_corr = std::collections::HashMap::new();
    for (s, contact) in &sessions {
        let corr = send_one(&mut c, &a.mode, tenant, &payload, *s, *contact).await?;
        by_corr.insert(corr, (*s, *contact, Instant::now()));
    }
    loop {
        let f = c.next().await?;
        if f.head().kind != Kind::Response {
            continue;
        }
        if let Some((code, m)) = f.error() {
            bail!("error {code}: {m}");
        }
        let Some((s, contact, sent)) = by_corr.remove(&f.head().correlation) else {
            continue;
        };
        if st.measuring.load(Ordering::Relaxed) {
            st.done.fetch_add(1, Ordering::Relaxed);
            let us = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
            if let Ok(mut l) = st.lat_us.lock() {
                l.push(us);
            }
        }
        let corr = send_one(&mut c, &a.mode, tenant, &payload, s, contact).await?;
        by_corr.insert(corr, (s, contact, Instant::now()));
    }
}

/// An agent that also submits: submit → (any) invite → accept → stop, one at a time.
async fn cycle_loop(a: Args, i: usize, st: Arc<Stats>) -> anyhow::Result<()> {
    let mut c = desktop(&a, &format!("bench-agent-{i}")).await?;
    c.call(
        head(Service::Interaction, ixn::AGENT_LOGIN, a.tenant, 0),
        |w| {
            w.str(key::PLACE, "bench")?;
            Ok(())
        },
    )
    .await?;
    c.call(
        head(Service::Interaction, ixn::AGENT_READY, a.tenant, 0),
        |_| Ok(()),
    )
    .await?;
    submit(&mut c, a.tenant).await?;
    let mut stops = std::collections::HashSet::new();
    loop {
        let f = c.next().await?;
        let h = *f.head();
        if let Some((code, m)) = f.error() {
            bail!("error {code} on type {:#x}: {m}", h.msg_type);
        }
        match (h.kind, h.msg_type) {
            (Kind::Event, ixn::INVITE) => {
                let id = f.body().int(key::INTERACTION)?;
                c.send(head(Service::Interaction, ixn::ACCEPT, a.tenant, 0), |w| {
                    w.int(key::INTERACTION, id);
                    Ok(())
                })
                .await?;
            }
            (Kind::Response, ixn::ACCEPT) => {
                let id = f.body().int(key::INTERACTION)?;
                let corr = c
                    .send(
                        head(Service::Interaction, ixn::STOP_PROCESSING, a.tenant, 0),
                        |w| {
                            w.int(key::INTERACTION, id);
                            Ok(())
                        },
                    )
                    .await?;
                stops.insert(corr);
            }
            (Kind::Response, ixn::STOP_PROCESSING) if stops.remove(&h.correlation) => {
                if st.measuring.load(Ordering::Relaxed) {
                    st.done.fetch_add(1, Ordering::Relaxed);
                }
                submit(&mut c, a.tenant).await?;
            }
            _ => {}
        }
    }
}

async fn run(a: Args) -> anyhow::Result<()> {
    let st = Arc::new(Stats {
        done: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        lat_us: std::sync::Mutex::new(Vec::new()),
    });
    let mut tasks = Vec::new();
    match a.mode.as_str() {
        "echo" | "get" | "history" if a.link => {
            let links = a.links.max(1);
            let mut next_session = 1u64;
            for l in 0..links {
                let mut c = Conn::open(&a.addr).await?;
                let lh = LinkHello {
                    version: 1,
                    link: &format!("bench-{l}"),
                    secret: a.secrets.link.as_bytes(),
                    max_frame: None,
                };
                c.call(head(Service::Control, control::LINK_HELLO, 0, 0), |w| {
                    lh.write(w)
                })
                .await?;
                let mut sessions = Vec::new();
                for i in (l..a.conns).step_by(links) {
                    let s = next_session;
                    next_session += 1;
                    let agent = format!("bench-{i}");
                    let hello = DesktopHello {
                        version: 1,
                        agent: &agent,
                        token: &a.secrets.token,
                        reconnect: None,
                        services: 6,
                    };
                    c.call(
                        head(Service::Control, control::SESSION_OPEN, a.tenant, s),
                        |w| hello.write(w),
                    )
                    .await?;
                    let contact = if a.mode != "echo" {
                        create_contact(&mut c, &a, s, i).await?
                    } else {
                        0
                    };
                    sessions.push((s, contact));
                }
                tasks.push(tokio::spawn(simple_loop(
                    a.clone(),
                    c,
                    sessions,
                    st.clone(),
                )));
            }
        }
        "echo" | "get" | "history" => {
            for i in 0..a.conns {
                let mut c = desktop(&a, &format!("bench-{i}")).await?;
                let contact = if a.mode != "echo" {
                    create_contact(&mut c, &a, 0, i).await?
                } else {
                    0
                };
                tasks.push(tokio::spawn(simple_loop(
                    a.clone(),
                    c,
                    vec![(0, contact)],
                    st.clone(),
                )));
            }
        }
        "cycle" => {
            for i in 0..a.conns {
                tasks.push(tokio::spawn(cycle_loop(a.clone(), i, st.clone())));
            }
        }
        m => bail!("unknown mode {m}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = a.server_pid.and_then(cpu_ticks);
    st.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.secs)).await;
    st.measuring.store(false, Ordering::Relaxed);
    let n = st.done.load(Ordering::Relaxed);
    let el = t0.elapsed().as_secs_f64();
    let cpu1 = a.server_pid.and_then(cpu_ticks);
    for t in &tasks {
        if t.is_finished() {
            eprintln!("a worker stopped early");
        }
    }
    println!(
        "mode={} transport={} sessions={} secs={:.1} completed={} rate={:.0}/s mean_latency_us={:.0}",
        a.mode,
        if a.link {
            format!("link x{}", a.links)
        } else {
            "direct".into()
        },
        a.conns,
        el,
        n,
        n as f64 / el,
        if n > 0 {
            a.conns as f64 * el * 1e6 / n as f64
        } else {
            0.0
        },
    );
    if let Ok(mut l) = st.lat_us.lock()
        && !l.is_empty()
    {
        l.sort_unstable();
        let q = |p: f64| l[((l.len() - 1) as f64 * p) as usize];
        println!("  latency_us p50={} p99={} max={}", q(0.5), q(0.99), q(1.0));
    }
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        // Clock ticks are 1/100 s on Linux.
        let cpu_s = (c1 - c0) as f64 / 100.0;
        println!(
            "  server cpu {:.0}% of a core, {:.2} us cpu/request",
            100.0 * cpu_s / el,
            if n > 0 { cpu_s * 1e6 / n as f64 } else { 0.0 }
        );
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn main() -> anyhow::Result<()> {
    let mut a = Args::parse();
    a.secrets = Secrets::load(&a)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(run(a))
}
