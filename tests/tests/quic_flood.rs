//! An Initial flood against the proxy's QUIC endpoint (one worker), with desktops at work.
//!
//! The flood is made of *real* client Initials: quinn-proto client connections, each with its
//! own TLS ClientHello, connection ids and Initial packet protection, generated once and
//! replayed from 76 UDP sockets on 127.0.0.2–127.0.0.20 (every source 4-tuple is a new address
//! to the proxy; none of them ever answers). The flood is windowed by the answers it gets back
//! (at most [`WINDOW`] Initials unanswered), so the worker is kept saturated without the
//! kernel's socket buffer overflowing; then a short unpaced burst overflows it on purpose.
//!
//! - `initial_flood_gets_stateless_retries`: `retry = true` (the default). Every Initial must
//!   cost a Retry and nothing else: most Initials sent are counted as Retries (UDP may drop
//!   some; the burst drops many), no connection is accepted from the flood, the worker's RSS
//!   (peak: `VmHWM`, and sampled) grows by less than [`RSS_GROWTH_MAX_KIB`], and the desktops
//!   already connected through the proxy (4 QUIC, 1 TCP) keep getting every echo answered,
//!   each within [`ECHO_MAX`] ([`BURST_ECHO_MAX`] around the burst); a desktop connected
//!   straight to core-server echoes alongside as the control. A QUIC desktop connects during
//!   the flood (through its own Retry) and another one after it.
//! - `initial_flood_without_retry_is_capped`: `retry = false`, `max_handshakes = 16`: Initials
//!   do create connections, but never more than 16 handshaking at once (from the counters:
//!   accepted − failed − desktops, sampled every 100 ms), no more accepted than the handshake
//!   deadline frees slots for, the rest refused with `CONNECTION_REFUSED`; the desktops keep
//!   echoing; the slots are freed by the handshake deadline (`handshake_ms = 1000`), and a new
//!   desktop connects once the flood stops.
//!
//! ```text
//! cargo build --workspace --bins && cargo test -p deskmux-tests --test quic_flood -- --nocapture
//! ```

mod proxy_support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deskmux_codec::Service;
use deskmux_tests::secure_client::{
    ALPN, FrameClient, TestCert, client_config, quic_connect, quic_endpoint, self_signed,
};
use proxy_support::*;

/// Distinct Initials generated (distinct connection ids and ClientHellos); the flood cycles
/// through them.
const POOL: usize = 1024;
/// Flood sources: 127.0.0.2 ..= 127.0.0.20, this many sockets each.
const SOCKETS_PER_IP: usize = 4;
/// At most this many Initials sent and not yet answered: more than the worker handles between
/// two looks of the flooder (so it never runs dry: 400 Initials are ~55 ms of a debug worker,
/// ~6 ms of a release one), far less than its 4 MiB socket buffer holds (so nothing is
/// dropped). A QUIC desktop's datagrams queue behind these; the burst fills the buffer.
const WINDOW: usize = 400;
/// Longest any one echo through the proxy may take while the flood runs. Under a saturating
/// flood the worker's loop reads up to 2 × 512 Initials per iteration (~150 ms of a debug
/// worker with a core to itself) and a request needs 2–4 iterations; measured max 0.4–0.8 s,
/// 1.6 s with a CPU hog added on this 2-core machine. 3 s leaves room for a loaded machine; a
/// desktop starved by the flood would wait for all of it (8 s) and fail.
const ECHO_MAX: Duration = Duration::from_secs(3);
/// Longest any one echo may take during and just after the unpaced burst: the kernel drops
/// datagrams of the desktops too when the socket buffer overflows, and QUIC re-sends them
/// after its probe timeout, which the queueing under the flood has inflated (still less than
/// the client's 5 s wait for any one answer).
const BURST_ECHO_MAX: Duration = Duration::from_secs(4);
/// Bound on the worker's peak RSS growth under a flood. With Retry nothing is kept per
/// Initial; without it, at most `max_handshakes` (16) connections of some tens of KiB each
/// exist at once. Measured: < 0.1 MiB with Retry, ~0.5 MiB without. 4 MiB is 60 bytes per
/// Initial of the retry test's ~70 000, so any state kept per Initial fails this, and a
/// quinn-proto connection per Initial (tens of KiB) fails it a few hundred Initials in.
const RSS_GROWTH_MAX_KIB: u64 = 4 * 1024;

/// The two tests each saturate a core; run them one after the other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `POOL` valid client Initials (UDP payloads, 1200 bytes each), made by quinn-proto.
fn client_initials(cert: &TestCert, n: usize) -> Vec<Vec<u8>> {
    let crypto = client_config(std::slice::from_ref(&cert.der), &[ALPN]).expect("rustls");
    let qcc = quinn_proto::crypto::rustls::QuicClientConfig::try_from(crypto).expect("quic tls");
    let cc = quinn_proto::ClientConfig::new(Arc::new(qcc));
    let mut ep = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    // The server address is not part of the packet.
    let server: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let now = Instant::now();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (_, mut conn) = ep
            .connect(now, cc.clone(), server, "localhost")
            .expect("connect");
        let mut buf = Vec::new();
        let t = conn.poll_transmit(now, 1, &mut buf).expect("an Initial");
        buf.truncate(t.size);
        // Long header, type Initial, QUIC v1; padded to the 1200-byte minimum.
        assert_eq!(buf[0] & 0xf0, 0xc0, "not an Initial");
        assert_eq!(&buf[1..5], &1u32.to_be_bytes());
        assert!(buf.len() >= 1200, "{}", buf.len());
        out.push(buf);
    }
    out
}

fn flood_sockets() -> Vec<UdpSocket> {
    let mut v = Vec::new();
    for ip in 2..=20u8 {
        for _ in 0..SOCKETS_PER_IP {
            let s = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, ip), 0)).expect("bind 127.0.0.x");
            s.set_nonblocking(true).expect("nonblocking");
            v.push(s);
        }
    }
    v
}

#[derive(Debug, Default, Clone, Copy)]
struct FloodReport {
    /// Initials sent (accepted by the kernel).
    sent: u64,
    /// Datagrams that came back.
    answers: u64,
    /// Of those, Retry packets (long header type 3).
    retries: u64,
    took: Duration,
    /// When it started and ended.
    start: Option<Instant>,
    end: Option<Instant>,
    /// CPU time of the flooding thread, in clock ticks.
    cpu: u64,
}

/// Send `count` Initials (at most for `max_time`) round-robin over `socks`, keeping at most
/// `window` unanswered (`None`: no window, as fast as the sender goes). Answers are read and
/// counted, never acted on.
fn flood(
    socks: &[UdpSocket],
    initials: &[Vec<u8>],
    to: SocketAddr,
    count: u64,
    max_time: Duration,
    window: Option<u64>,
) -> FloodReport {
    let t0 = Instant::now();
    let cpu0 = cpu_ticks("thread-self");
    let mut r = FloodReport::default();
    let mut rbuf = [0u8; 2048];
    let mut i = 0usize;
    while r.sent < count && t0.elapsed() < max_time {
        for s in socks {
            while let Ok(n) = s.recv(&mut rbuf) {
                r.answers += 1;
                if n > 0 && rbuf[0] & 0xf0 == 0xf0 {
                    r.retries += 1;
                }
            }
        }
        let room = window.map_or(u64::MAX, |w| {
            w.saturating_sub(r.sent.saturating_sub(r.answers))
        });
        if room == 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let burst = room.min(256).min(count - r.sent);
        for _ in 0..burst {
            let s = &socks[i % socks.len()];
            let p = &initials[(i / socks.len() + i) % initials.len()];
            i += 1;
            if s.send_to(p, to).is_ok() {
                r.sent += 1;
            }
        }
    }
    // Late answers.
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        for s in socks {
            while let Ok(n) = s.recv(&mut rbuf) {
                r.answers += 1;
                if n > 0 && rbuf[0] & 0xf0 == 0xf0 {
                    r.retries += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    r.took = t0.elapsed();
    r.start = Some(t0);
    r.end = Some(Instant::now());
    r.cpu = cpu_ticks("thread-self") - cpu0;
    r
}

fn quic_metric(m: &str, what: &str) -> u64 {
    m.lines()
        .filter(|l| l.starts_with("deskmux_proxy_quic{") && l.contains(&format!("what=\"{what}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Quic {
    retries: u64,
    refused: u64,
    accepted: u64,
    failed: u64,
    desktops: u64,
    /// The proxy's own `handshaking` gauge.
    handshaking_now: u64,
}

impl Quic {
    fn read(admin: SocketAddr) -> Quic {
        let m = http_get(admin, "/metrics").1;
        Quic {
            retries: quic_metric(&m, "retries"),
            refused: quic_metric(&m, "refused"),
            accepted: quic_metric(&m, "accepted"),
            failed: quic_metric(&m, "failed"),
            desktops: quic_metric(&m, "desktops"),
            handshaking_now: quic_metric(&m, "handshaking"),
        }
    }

    /// Connections handshaking now: accepted, not failed, no desktop stream yet (valid while
    /// no desktop leaves), and the proxy's own gauge: the larger of the two.
    fn handshaking(&self) -> i64 {
        (self.accepted as i64 - self.failed as i64 - self.desktops as i64)
            .max(self.handshaking_now as i64)
    }
}

/// The counters once they show `desktops` QUIC desktops, all of them accepted.
fn published(admin: SocketAddr, desktops: u64) -> Quic {
    let ok = wait_until(Duration::from_secs(5), || {
        let q = Quic::read(admin);
        q.desktops == desktops && q.accepted == desktops
    });
    let q = Quic::read(admin);
    assert!(ok, "{desktops} QUIC desktops expected: {q:?}");
    q
}

/// The counters once they stop moving (the worker publishes them every 100 ms tick).
fn settled(admin: SocketAddr) -> Quic {
    let mut last = Quic::read(admin);
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(150));
        let now = Quic::read(admin);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// utime + stime of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: impl std::fmt::Display) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn proc_kib(pid: u64, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Reads the counters and the worker's RSS every 100 ms (the worker publishes its counters
/// every 100 ms tick) while the flood runs.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Samples>,
}

#[derive(Debug, Default)]
struct Samples {
    n: usize,
    max_rss_kib: u64,
    max_handshaking: i64,
    /// Largest value of the proxy's `handshaking` gauge seen.
    max_gauge: u64,
}

impl Sampler {
    fn start(admin: SocketAddr, pid: u64) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Samples::default();
            while !s.load(Ordering::Relaxed) {
                let q = Quic::read(admin);
                out.n += 1;
                out.max_handshaking = out.max_handshaking.max(q.handshaking());
                out.max_gauge = out.max_gauge.max(q.handshaking_now);
                out.max_rss_kib = out.max_rss_kib.max(proc_kib(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(100));
            }
            out
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler")
    }
}

/// How a desktop reaches its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// QUIC through the proxy.
    Quic,
    /// TCP through the proxy (the same worker).
    Tcp,
    /// TCP straight to core-server: the control (what the test harness and core-server add).
    Direct,
}

/// A desktop that echoes continuously; the QUIC endpoint and connection stay alive with it.
struct Worker {
    _quic: Option<(quinn::Endpoint, quinn::Connection)>,
    c: FrameClient,
    name: String,
    via: Via,
}

async fn quic_worker(st: &Stack, cert: &TestCert, name: &str) -> Worker {
    let ep = quic_endpoint(std::slice::from_ref(&cert.der), &[ALPN]).unwrap();
    let (conn, mut c) = quic_connect(&ep, st.proxy.addr)
        .await
        .expect("quic handshake");
    c.hello_ok(T1, name, TOKEN1).await.expect("hello over quic");
    Worker {
        _quic: Some((ep, conn)),
        c,
        name: name.to_string(),
        via: Via::Quic,
    }
}

/// A TCP desktop through the proxy, and one straight to core-server.
async fn tcp_workers(st: &Stack) -> [Worker; 2] {
    [
        Worker {
            _quic: None,
            c: desktop(st.proxy.addr, T1).await,
            name: "tcp".into(),
            via: Via::Tcp,
        },
        Worker {
            _quic: None,
            c: desktop(st.core_addr, T1).await,
            name: "direct".into(),
            via: Via::Direct,
        },
    ]
}

async fn echo_once(c: &mut FrameClient, data: &[u8]) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    try_echo(c, Service::Interaction, data).await?;
    Ok(t0.elapsed())
}

/// Echo (unique payloads, one at a time, 5 ms apart) until `stop`; every (start, latency).
async fn echo_until(
    mut w: Worker,
    stop: Arc<AtomicBool>,
) -> (Worker, anyhow::Result<Vec<(Instant, Duration)>>) {
    let mut lat = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let data = format!("{}-{i}", w.name);
        let t0 = Instant::now();
        match echo_once(&mut w.c, data.as_bytes()).await {
            Ok(d) => lat.push((t0, d)),
            Err(e) => return (w, Err(e.context(format!("{} echo {i}", data)))),
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (w, Ok(lat))
}

/// Every echo the desktops made while a flood ran (and 300 ms after): how the desktop was
/// connected, when the echo was sent, how long it took.
#[derive(Debug, Default)]
struct Echoes {
    all: Vec<(Via, Instant, Duration)>,
    /// Fewest echoes any one desktop made.
    least: usize,
}

impl Echoes {
    /// Latencies of the echoes via `via` sent in `[from, to)`, sorted.
    fn window(&self, via: Via, from: Instant, to: Instant) -> Vec<Duration> {
        let mut l: Vec<Duration> = self
            .all
            .iter()
            .filter(|(v, at, _)| *v == via && *at >= from && *at < to)
            .map(|x| x.2)
            .collect();
        l.sort();
        l
    }

    /// The longest echo through the proxy (QUIC or TCP) sent in `[from, to)`.
    fn max(&self, from: Instant, to: Instant) -> Duration {
        let q = self.window(Via::Quic, from, to);
        let t = self.window(Via::Tcp, from, to);
        q.last().max(t.last()).copied().unwrap_or_default()
    }

    /// The slowest few echoes sent from `from` on: how, when (after `from`), latency.
    fn slowest(&self, from: Instant) -> String {
        let mut all: Vec<(Duration, Duration, Via)> = self
            .all
            .iter()
            .filter(|(_, at, _)| *at >= from)
            .map(|(v, at, d)| (*d, at.duration_since(from), *v))
            .collect();
        all.sort_by_key(|x| std::cmp::Reverse(x.0));
        all.iter()
            .take(6)
            .map(|(d, at, v)| format!("{v:?} at +{at:.2?}: {d:.0?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn show(&self, from: Instant, to: Instant) -> String {
        let one = |via: Via| {
            let l = self.window(via, from, to);
            format!(
                "{via:?} {} echoes, p50 {:.1?} p99 {:.1?} max {:.1?}",
                l.len(),
                pct(&l, 0.5),
                pct(&l, 0.99),
                l.last().copied().unwrap_or_default()
            )
        };
        format!(
            "{}; {}; control: {}",
            one(Via::Quic),
            one(Via::Tcp),
            one(Via::Direct)
        )
    }
}

/// Run `workers` echoing while `f` (blocking) runs, and 300 ms more; the workers back, with
/// every echo.
async fn while_echoing<T: Send + 'static>(
    workers: Vec<Worker>,
    f: impl FnOnce() -> T + Send + 'static,
) -> (Vec<Worker>, Echoes, T) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(echo_until(w, stop.clone())))
        .collect();
    let out = tokio::task::spawn_blocking(f).await.expect("flood thread");
    // A little longer: what was queued behind the flood must come through too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut back = Vec::new();
    let mut echoes = Echoes {
        least: usize::MAX,
        ..Echoes::default()
    };
    for t in tasks {
        let (w, r) = t.await.expect("echo task");
        let l = r.unwrap_or_else(|e| panic!("{}: a request was not answered: {e:#}", w.name));
        echoes.least = echoes.least.min(l.len());
        echoes
            .all
            .extend(l.into_iter().map(|(at, d)| (w.via, at, d)));
        back.push(w);
    }
    (back, echoes, out)
}

fn pct(lat: &[Duration], p: f64) -> Duration {
    if lat.is_empty() {
        return Duration::ZERO;
    }
    lat[((lat.len() - 1) as f64 * p) as usize]
}

fn flood_stack(quic_extra: &str, limits: &str) -> (Stack, TestCert, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = self_signed(dir.path(), "proxy").expect("cert");
    let st = stack_in(dir, 1, 2, limits, &(cert.toml("quic") + quic_extra));
    let t0 = Instant::now();
    let initials = client_initials(&cert, POOL);
    println!(
        "{} distinct client Initials generated in {:?}",
        initials.len(),
        t0.elapsed()
    );
    (st, cert, initials)
}

/// `quic` QUIC desktops and the TCP ones, each answering one echo before the flood starts.
async fn desktops_before_flood(st: &Stack, cert: &TestCert, quic: usize) -> Vec<Worker> {
    let mut workers = Vec::new();
    for i in 0..quic {
        workers.push(quic_worker(st, cert, &format!("quic-{i}")).await);
    }
    workers.extend(tcp_workers(st).await);
    for w in &mut workers {
        echo_once(&mut w.c, b"before")
            .await
            .expect("echo before the flood");
    }
    workers
}

fn worker_pid(st: &Stack) -> u64 {
    status(st.proxy.admin)["workers"][0]["pid"]
        .as_u64()
        .expect("worker pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_flood_gets_stateless_retries() {
    let _serial = SERIAL.lock().await;
    let (st, cert, initials) = flood_stack("max_handshakes = 64\n", "");
    let admin = st.proxy.admin;
    let pid = worker_pid(&st);

    let workers = desktops_before_flood(&st, &cert, 4).await;
    let before = published(admin, 4);
    let rss0 = proc_kib(pid, "VmRSS:");
    let cpu0 = cpu_ticks(pid);

    let to = st.proxy.addr;
    // A desktop that connects while the flood runs: its Initial gets a Retry like the others,
    // it echoes the token and is accepted.
    let der = cert.der.clone();
    let joiner = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t0 = Instant::now();
        let ep = quic_endpoint(&[der], &[ALPN])?;
        let (conn, mut c) = quic_connect(&ep, to).await?;
        c.hello_ok(T1, "joiner", TOKEN1).await?;
        let took = t0.elapsed();
        echo_once(&mut c, b"joined").await?;
        let w = Worker {
            _quic: Some((ep, conn)),
            c,
            name: "joiner".into(),
            via: Via::Quic,
        };
        anyhow::Ok((took, Instant::now(), w))
    });
    let sampler = Sampler::start(admin, pid);
    let (mut workers, echoes, (paced, burst)) = while_echoing(workers, move || {
        let socks = flood_sockets();
        // Saturating, windowed: the worker always has a full queue of Initials.
        let paced = flood(
            &socks,
            &initials,
            to,
            50_000,
            Duration::from_secs(8),
            Some(WINDOW as u64),
        );
        // Unpaced: the socket buffer overflows; the kernel drops what does not fit. (At most a
        // third of the paced count: most of it is dropped, and the ratio checks below are on
        // the sum.)
        let n = (paced.sent / 3).min(20_000);
        let burst = flood(&socks, &initials, to, n, Duration::from_secs(2), None);
        (paced, burst)
    })
    .await;
    let samples = sampler.finish();
    let cpu = cpu_ticks(pid) - cpu0;
    let (joined_in, joined_at, joiner) = joiner
        .await
        .expect("joiner task")
        .expect("a desktop connects during the flood");
    workers.push(joiner);
    let after = settled(admin);
    let hwm = proc_kib(pid, "VmHWM:");
    let rss1 = proc_kib(pid, "VmRSS:");

    let sent = paced.sent + burst.sent;
    let retries = after.retries - before.retries;
    let growth = hwm.max(samples.max_rss_kib).saturating_sub(rss0);
    println!(
        "retry flood: paced {paced:?} ({:.0} Initials/s), burst {burst:?}",
        paced.sent as f64 / paced.took.as_secs_f64()
    );
    println!(
        "retry flood: {sent} Initials sent, {retries} Retries counted by the proxy ({:.1}%), {} received by the flooders; counters {before:?} -> {after:?}",
        100.0 * retries as f64 / sent as f64,
        paced.retries + burst.retries
    );
    println!(
        "retry flood: worker VmRSS {rss0} KiB -> {rss1} KiB, peak {} KiB (+{growth} KiB); {} samples",
        hwm.max(samples.max_rss_kib),
        samples.n
    );
    let (p0, p1) = (paced.start.unwrap(), paced.end.unwrap());
    let (b0, b1) = (burst.start.unwrap(), Instant::now());
    println!(
        "retry flood: worker CPU {:.2} s = {:.0} µs per Retry ({:.0}% of a core)",
        cpu as f64 / 100.0,
        cpu as f64 * 10_000.0 / retries.max(1) as f64,
        cpu as f64 / (paced.took + burst.took).as_secs_f64(),
    );
    println!(
        "retry flood: a new QUIC desktop connected (Retry, handshake, hello) during the flood in {joined_in:.1?}"
    );
    println!(
        "retry flood: echoes of 4 QUIC + 1 TCP desktops during the paced flood: {}",
        echoes.show(p0, p1)
    );
    println!(
        "retry flood: ... during and after the burst: {}",
        echoes.show(b0, b1)
    );
    println!("retry flood: slowest echoes: {}", echoes.slowest(p0));

    assert!(
        paced.sent >= 20_000,
        "the flood was too slow to mean anything: {paced:?}"
    );
    assert!(
        retries * 2 > sent,
        "most Initials must be answered with a Retry: {retries} of {sent}"
    );
    assert!(retries <= sent, "{retries} Retries for {sent} Initials");
    // Windowed, nothing overflows: all but the last few (answered late) come back as Retries.
    assert!(
        paced.retries * 10 >= paced.sent * 9,
        "paced flood: too few Retries back: {paced:?}"
    );
    assert!(
        (paced.retries + burst.retries) * 2 > sent,
        "flooders received too few Retries: {paced:?} {burst:?}"
    );
    assert!(joined_at < paced.end.unwrap(), "joined after the flood");
    assert_eq!(
        after.accepted,
        before.accepted + 1,
        "a connection was accepted from the flood (only the joiner may be): {after:?}"
    );
    assert_eq!(after.refused, before.refused, "{after:?}");
    assert_eq!(after.failed, before.failed, "{after:?}");
    assert_eq!(after.desktops, 5, "{after:?}");
    assert!(
        growth < RSS_GROWTH_MAX_KIB,
        "worker RSS grew by {growth} KiB under the flood"
    );
    assert!(echoes.least >= 3, "a desktop hardly got through");
    let max = echoes.max(p0, p1);
    assert!(max < ECHO_MAX, "an echo took {max:?} during the flood");
    let max = echoes.max(b0, b1);
    assert!(
        max < BURST_ECHO_MAX,
        "an echo took {max:?} during the burst"
    );

    // Still serving, and a new QUIC desktop gets in (through its own Retry).
    for w in &mut workers {
        echo_once(&mut w.c, b"after")
            .await
            .expect("echo after the flood");
    }
    let mut fresh = quic_worker(&st, &cert, "fresh").await;
    echo_once(&mut fresh.c, b"fresh").await.expect("fresh echo");
    let ok = wait_until(Duration::from_secs(3), || Quic::read(admin).desktops == 6);
    let end = Quic::read(admin);
    assert!(ok, "{end:?}");
    assert_eq!(end.accepted, before.accepted + 2, "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_flood_without_retry_is_capped() {
    const MAX_HANDSHAKES: i64 = 16;
    const HANDSHAKE: Duration = Duration::from_millis(1000);
    let _serial = SERIAL.lock().await;
    let (st, cert, initials) = flood_stack(
        &format!("retry = false\nmax_handshakes = {MAX_HANDSHAKES}\n"),
        &format!("handshake_ms = {}", HANDSHAKE.as_millis()),
    );
    let admin = st.proxy.admin;
    let pid = worker_pid(&st);

    let workers = desktops_before_flood(&st, &cert, 2).await;
    let before = published(admin, 2);
    let rss0 = proc_kib(pid, "VmRSS:");
    let cpu0 = cpu_ticks(pid);

    let to = st.proxy.addr;
    let sampler = Sampler::start(admin, pid);
    let (mut workers, echoes, paced) = while_echoing(workers, move || {
        let socks = flood_sockets();
        flood(
            &socks,
            &initials,
            to,
            40_000,
            Duration::from_secs(3),
            Some(WINDOW as u64),
        )
    })
    .await;
    let samples = sampler.finish();
    let cpu = cpu_ticks(pid) - cpu0;
    let mid = settled(admin);
    let hwm = proc_kib(pid, "VmHWM:");
    let growth = hwm.max(samples.max_rss_kib).saturating_sub(rss0);
    let accepted = mid.accepted - before.accepted;
    let refused = mid.refused - before.refused;
    println!(
        "no-retry flood: {paced:?} ({:.0} Initials/s); counters {before:?} -> {mid:?}",
        paced.sent as f64 / paced.took.as_secs_f64()
    );
    println!(
        "no-retry flood: {accepted} accepted, {refused} refused; at most {} handshaking (max_handshakes {MAX_HANDSHAKES}) over {} samples; worker RSS +{growth} KiB",
        samples.max_handshaking, samples.n
    );
    let (p0, p1) = (paced.start.unwrap(), paced.end.unwrap());
    println!(
        "no-retry flood: worker CPU {:.2} s = {:.0} µs per Initial refused or accepted ({:.0}% of a core)",
        cpu as f64 / 100.0,
        cpu as f64 * 10_000.0 / (refused + accepted).max(1) as f64,
        cpu as f64 / paced.took.as_secs_f64(),
    );
    println!("no-retry flood: slowest echoes: {}", echoes.slowest(p0));
    println!(
        "no-retry flood: echoes of 2 QUIC + 1 TCP desktops during the flood: {}; all, 300 ms after included: max {:.1?}",
        echoes.show(p0, p1),
        echoes.max(p0, Instant::now())
    );

    assert!(paced.sent >= 10_000, "{paced:?}");
    assert!(refused > 0, "nothing refused: {mid:?}");
    assert!(
        (refused + accepted) * 2 > paced.sent,
        "most Initials must be refused or accepted: {refused} + {accepted} of {}",
        paced.sent
    );
    assert!(accepted >= MAX_HANDSHAKES as u64, "{mid:?}");
    // A slot is free only once a handshake timed out (handshake_ms, then draining).
    let rounds = paced.took.as_secs_f64() / HANDSHAKE.as_secs_f64() + 1.0;
    assert!(
        accepted as f64 <= MAX_HANDSHAKES as f64 * rounds,
        "{accepted} flood connections accepted in {:?}: handshakes not capped",
        paced.took
    );
    assert!(
        samples.max_handshaking <= MAX_HANDSHAKES,
        "{} handshaking at once",
        samples.max_handshaking
    );
    assert!(
        samples.max_gauge > 0,
        "the handshaking gauge never showed the flood's handshakes"
    );
    assert!(
        growth < RSS_GROWTH_MAX_KIB,
        "worker RSS grew by {growth} KiB under the flood"
    );
    assert!(echoes.least >= 3, "a desktop hardly got through");
    let max = echoes.max(p0, Instant::now());
    assert!(max < ECHO_MAX, "an echo took {max:?} during the flood");

    // The flood's handshakes time out and are cleaned up; then a new desktop gets in.
    let t0 = Instant::now();
    let clean = wait_until(Duration::from_secs(15), || {
        Quic::read(admin).handshaking() == 0
    });
    let end = Quic::read(admin);
    println!(
        "no-retry flood: handshakes cleaned up in {:?}: {end:?}",
        t0.elapsed()
    );
    assert!(clean, "flood handshakes never cleaned up: {end:?}");
    assert_eq!(end.failed - before.failed, end.accepted - before.accepted);
    for w in &mut workers {
        echo_once(&mut w.c, b"after")
            .await
            .expect("echo after the flood");
    }
    let mut fresh = quic_worker(&st, &cert, "fresh").await;
    echo_once(&mut fresh.c, b"fresh").await.expect("fresh echo");
    let ok = wait_until(Duration::from_secs(3), || Quic::read(admin).desktops == 3);
    assert!(ok, "{:?}", Quic::read(admin));
}
