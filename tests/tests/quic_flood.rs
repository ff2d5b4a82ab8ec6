//! An Initial flood against the proxy's QUIC endpoint (one worker), with desktops at work.
//!
//! The flood is made of *real* client Initials: quinn-proto client connections, each with its
//! own TLS ClientHello, connection ids and Initial packet protection, generated once and
//! replayed from 76 UDP sockets on 127.0.0.2–127.0.0.20 (every source 4-tuple is a new address
//! to the proxy; none of them ever answers). The flood is windowed by the answers it gets back
//! (at most [`WINDOW`] Initials unanswered), so the worker is kept saturated without the
//! kernel's socket buffer overflowing; then a short unpaced burst overflows it on purpose.
//!
//! Every flood ends on a *condition* (the worker's own counters), never on a clock: it goes on
//! until the proxy has handled the number of Initials the test needs, bounded only by the
//! generous [`FLOOD_DEADLINE`], so a slow or busy machine makes it last longer, not fail. How
//! fast the worker answers Initials and how long the desktops' echoes take under the flood are
//! measurements: they are printed here and recorded in `proxy/README.md` ("Initial flood,
//! measured"), not asserted.
//!
//! - `initial_flood_gets_stateless_retries`: `retry = true` (the default). Every Initial must
//!   cost a Retry and nothing else: the windowed flood lasts until the worker has counted
//!   [`RETRY_TARGET`] Retries, most Initials sent are counted as Retries (UDP may drop some;
//!   the burst drops many), no connection is accepted from the flood, the worker's RSS (peak:
//!   `VmHWM`, and sampled) grows by less than [`RSS_GROWTH_MAX_KIB`], and the desktops already
//!   connected through the proxy (4 QUIC, 1 TCP) keep getting every echo answered: each has
//!   at least [`LEAST_ECHOES`] answered while the worker handles the flood (a desktop starved
//!   by the flood has none), and each gets more answered after it; a desktop connected straight
//!   to core-server echoes alongside as the control. A QUIC desktop connects during the flood
//!   (through its own Retry) and another one after it.
//! - `initial_flood_without_retry_is_capped`: `retry = false`, `max_handshakes = 16`: Initials
//!   do create connections, but never more than 16 handshaking at once (from the counters:
//!   accepted − failed − desktops, sampled every 100 ms), no more accepted than the handshake
//!   deadline frees slots for, the rest refused with `CONNECTION_REFUSED`; the flood lasts
//!   until the worker has refused or accepted [`NO_RETRY_TARGET`] Initials; the desktops keep
//!   echoing; the slots are freed by the handshake deadline (`handshake_ms = 1000`), and a new
//!   desktop connects once the flood stops.
//!
//! ```text
//! cargo build --workspace --bins && cargo test -p deskmux-tests --test quic_flood -- --nocapture
//! ```

mod proxy_support;
mod quic_flood_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deskmux_codec::Service;
use deskmux_codec::msg::{ixn, key};
use deskmux_tests::secure_client::{
    ALPN, FrameClient, TestCert, client_initials, quic_connect, quic_endpoint, self_signed,
};
use proxy_support::*;
use quic_flood_support::*;

/// Distinct Initials generated (distinct connection ids and ClientHellos); the flood cycles
/// through them.
const POOL: usize = 1024;
/// At most this many Initials sent and not yet answered: more than the worker handles between
/// two looks of the flooder (so it never runs dry: 400 Initials are ~55 ms of a debug worker,
/// ~6 ms of a release one), far less than its 4 MiB socket buffer holds (so nothing is
/// dropped). A QUIC desktop's datagrams queue behind these; the burst fills the buffer.
const WINDOW: usize = 400;
/// The windowed flood of the Retry test lasts until the worker has counted this many Retries
/// (a debug worker with a core to itself answers ~7,000 Initials/s, a release one ~50,000/s).
const RETRY_TARGET: u64 = 20_000;
/// The flood of the no-Retry test lasts until the worker has refused or accepted this many.
const NO_RETRY_TARGET: u64 = 20_000;
/// The joiner connects once the worker has answered this many of the flood's Initials, so
/// that its own Initial queues behind theirs.
const JOIN_AFTER: u64 = 2_000;
/// Bound on how long one echo may go unanswered before it counts as lost.
const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// Echoes every desktop already connected must have had answered by the time the worker has
/// handled the flood's target (thousands of Initials, hundreds of its loop iterations). A
/// desktop starved by the flood gets none until the flood ends.
const LEAST_ECHOES: usize = 3;
/// Echoes every desktop must have had answered after the flood: what was queued behind it
/// came through, and the desktop still works.
const AFTER_ECHOES: usize = 2;
/// Bound on the worker's peak RSS growth under a flood. With Retry nothing is kept per
/// Initial; without it, at most `max_handshakes` (16) connections of some tens of KiB each
/// exist at once. Measured: < 0.1 MiB with Retry, ~0.5 MiB without. 4 MiB is 60 bytes per
/// Initial of the retry test's ~70 000, so any state kept per Initial fails this, and a
/// quinn-proto connection per Initial (tens of KiB) fails it a few hundred Initials in.
const RSS_GROWTH_MAX_KIB: u64 = 4 * 1024;

/// The two tests each saturate a core; run them one after the other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// One echo of `data` that must come back intact within [`ANSWER_WAIT`]; its latency.
async fn echo_once(c: &mut FrameClient, data: &[u8]) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let corr = c
        .send(Service::Interaction, ixn::ECHO, |w| {
            w.bin(key::DATA, data)?;
            Ok(())
        })
        .await?;
    let r = c.response(corr, ANSWER_WAIT).await?;
    anyhow::ensure!(r.error().is_none(), "echo error: {:?}", r.error());
    anyhow::ensure!(r.body().bin(key::DATA)? == data, "echo payload differs");
    Ok(t0.elapsed())
}

/// Echoes answered so far, one counter per desktop (in the order of the workers).
type Progress = Arc<Vec<AtomicUsize>>;

fn counts(p: &Progress) -> Vec<usize> {
    p.iter().map(|n| n.load(Ordering::Relaxed)).collect()
}

/// Echo (unique payloads, one at a time) until `stop`; every (start, latency); each answer
/// counted in `done`.
async fn echo_until(
    mut w: Worker,
    stop: Arc<AtomicBool>,
    done: Progress,
    k: usize,
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
        done[k].fetch_add(1, Ordering::Relaxed);
        i += 1;
        // The desktops' workload is a trickle (an echo every ~5 ms each) beside the flood, not
        // a second flood; no condition is waited for here.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (w, Ok(lat))
}

/// Every echo the desktops made while a flood ran (and after it): how the desktop was
/// connected, when the echo was sent, how long it took.
#[derive(Debug, Default)]
struct Echoes {
    all: Vec<(Via, Instant, Duration)>,
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

/// Run `workers` echoing while `f` (blocking; it gets their [`Progress`]) runs, and until each
/// has had [`AFTER_ECHOES`] more echoes answered after it; the workers back, with every echo.
async fn while_echoing<T: Send + 'static>(
    workers: Vec<Worker>,
    f: impl FnOnce(Progress) -> T + Send + 'static,
) -> (Vec<Worker>, Echoes, T) {
    let stop = Arc::new(AtomicBool::new(false));
    let progress: Progress = Arc::new(workers.iter().map(|_| AtomicUsize::new(0)).collect());
    let tasks: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(k, w)| tokio::spawn(echo_until(w, stop.clone(), progress.clone(), k)))
        .collect();
    let p = progress.clone();
    let out = tokio::task::spawn_blocking(move || f(p))
        .await
        .expect("flood thread");
    // What was queued behind the flood must come through too, and the desktops keep working.
    let at_end = counts(&progress);
    let end = Instant::now() + 2 * ANSWER_WAIT;
    while Instant::now() < end && !tasks.iter().any(|t| t.is_finished()) {
        let now = counts(&progress);
        if now.iter().zip(&at_end).all(|(n, e)| *n >= e + AFTER_ECHOES) {
            break;
        }
        // Back-off between two looks at the desktops' progress.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let after = counts(&progress);
    let mut back = Vec::new();
    let mut echoes = Echoes::default();
    for (k, t) in tasks.into_iter().enumerate() {
        let (w, r) = t.await.expect("echo task");
        let l = r.unwrap_or_else(|e| panic!("{}: a request was not answered: {e:#}", w.name));
        assert!(
            after[k] >= at_end[k] + AFTER_ECHOES,
            "{}: {} echoes answered after the flood",
            w.name,
            after[k] - at_end[k]
        );
        echoes
            .all
            .extend(l.into_iter().map(|(at, d)| (w.via, at, d)));
        back.push(w);
    }
    (back, echoes, out)
}

/// Every desktop had [`LEAST_ECHOES`] answered while the worker handled the flood.
fn assert_not_starved(workers: &[Worker], during: &[usize]) {
    for (w, n) in workers.iter().zip(during) {
        assert!(
            *n >= LEAST_ECHOES,
            "{}: only {n} echoes answered while the worker handled the flood: starved ({during:?})",
            w.name
        );
    }
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
        workers.push(quic_worker(st, cert, &deskmux_tests::creds::agent(i)).await);
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
    let names: Vec<String> = workers.iter().map(|w| w.name.clone()).collect();
    let before = published(admin, 4);
    let rss0 = proc_kib(pid, "VmRSS:");
    let cpu0 = cpu_ticks(pid);

    let t = Target {
        to: st.proxy.addr,
        admin,
    };
    // A desktop that connects while the flood runs (once the worker is busy with it): its
    // Initial gets a Retry like the others, it echoes the token and is accepted. The flood
    // goes on until it is done.
    let der = cert.der.clone();
    let joiner_done = Arc::new(AtomicBool::new(false));
    let done = joiner_done.clone();
    let joiner = tokio::spawn(async move {
        let r = async {
            let flooding = wait_until_async(FLOOD_DEADLINE, move || {
                Quic::read(admin).retries >= before.retries + JOIN_AFTER
            })
            .await;
            anyhow::ensure!(flooding, "the worker never answered {JOIN_AFTER} Initials");
            let t0 = Instant::now();
            let ep = quic_endpoint(&[der], &[ALPN])?;
            let (conn, mut c) = quic_connect(&ep, t.to).await?;
            c.hello_ok(T1, "joiner", TOKEN1).await?;
            let took = t0.elapsed();
            echo_once(&mut c, b"joined").await?;
            let w = Worker {
                _quic: Some((ep, conn)),
                c,
                name: "joiner".into(),
                via: Via::Quic,
            };
            anyhow::Ok((took, w))
        }
        .await;
        done.store(true, Ordering::Relaxed);
        r
    });
    let sampler = Sampler::start(admin, pid);
    let (mut workers, echoes, (paced, burst, during)) = while_echoing(workers, move |progress| {
        let socks = flood_sockets();
        // Saturating, windowed: the worker always has a full queue of Initials, until it has
        // counted RETRY_TARGET Retries and the joiner is in.
        let mut looks = Looks::new(admin);
        let mut during = None;
        let paced = flood(&socks, &initials, t, Some(WINDOW as u64), u64::MAX, |_| {
            let Some(q) = looks.look() else { return false };
            if q.retries < before.retries + RETRY_TARGET {
                return false;
            }
            // The echoes answered while the worker handled the target.
            during.get_or_insert_with(|| counts(&progress));
            joiner_done.load(Ordering::Relaxed)
        });
        // Unpaced: the socket buffer overflows; the kernel drops what does not fit. (At most a
        // third of the paced count: most of it is dropped, and the ratio checks below are on
        // the sum.)
        let n = (paced.sent / 3).min(20_000);
        let burst = flood(&socks, &initials, t, None, n, |r| r.sent >= n);
        (paced, burst, during.unwrap_or_default())
    })
    .await;
    let samples = sampler.finish();
    let cpu = cpu_ticks(pid) - cpu0;
    let after = settled(t);
    let (joined_in, joiner) = joiner
        .await
        .expect("joiner task")
        .expect("a desktop connects during the flood");
    workers.push(joiner);
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
        "retry flood: echoes answered per desktop while the worker handled {RETRY_TARGET} Initials: {names:?} {during:?}"
    );
    println!(
        "retry flood: echoes of 4 QUIC + 1 TCP desktops during the paced flood: {}",
        echoes.show(p0, p1)
    );
    println!(
        "retry flood: ... during and after the burst: {}; slowest through the proxy {:.1?}",
        echoes.show(b0, b1),
        echoes.max(p0, b1)
    );
    println!("retry flood: slowest echoes: {}", echoes.slowest(p0));

    assert!(
        paced.reached,
        "the worker did not count {RETRY_TARGET} Retries (or the joiner did not finish) within {FLOOD_DEADLINE:?}: {paced:?}, counters {before:?} -> {after:?}"
    );
    assert!(
        burst.reached,
        "the burst did not get its Initials out: {burst:?}"
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
    // The joiner connected during the flood by construction: it started once the worker had
    // answered JOIN_AFTER of the flood's Initials, and the flood went on until it was done.
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
    assert_not_starved(&workers, &during);

    // Still serving, and a new QUIC desktop gets in (through its own Retry).
    for w in &mut workers {
        echo_once(&mut w.c, b"after")
            .await
            .expect("echo after the flood");
    }
    let mut fresh = quic_worker(&st, &cert, "fresh").await;
    echo_once(&mut fresh.c, b"fresh").await.expect("fresh echo");
    let ok = wait_until_async(Duration::from_secs(20), move || {
        Quic::read(admin).desktops == 6
    })
    .await;
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
    let names: Vec<String> = workers.iter().map(|w| w.name.clone()).collect();
    let before = published(admin, 2);
    let rss0 = proc_kib(pid, "VmRSS:");
    let cpu0 = cpu_ticks(pid);

    let t = Target {
        to: st.proxy.addr,
        admin,
    };
    let sampler = Sampler::start(admin, pid);
    let seen = sampler.seen.clone();
    let (mut workers, echoes, (paced, during)) = while_echoing(workers, move |progress| {
        let socks = flood_sockets();
        // Until the worker has refused or accepted NO_RETRY_TARGET Initials, and the sampler
        // has seen handshakes in progress.
        let mut looks = Looks::new(admin);
        let mut during = None;
        let paced = flood(&socks, &initials, t, Some(WINDOW as u64), u64::MAX, |_| {
            let Some(q) = looks.look() else { return false };
            if q.refused + q.accepted < before.refused + before.accepted + NO_RETRY_TARGET {
                return false;
            }
            during.get_or_insert_with(|| counts(&progress));
            Sampler::seen(&seen).max_gauge > 0
        });
        (paced, during.unwrap_or_default())
    })
    .await;
    let samples = sampler.finish();
    let cpu = cpu_ticks(pid) - cpu0;
    let mid = settled(t);
    // Every connection the flood made was accepted by now.
    let accepted_within = paced.start.unwrap().elapsed();
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
        "no-retry flood: echoes answered per desktop while the worker handled {NO_RETRY_TARGET} Initials: {names:?} {during:?}"
    );
    println!(
        "no-retry flood: echoes of 2 QUIC + 1 TCP desktops during the flood: {}; all, after it included: max {:.1?}",
        echoes.show(p0, p1),
        echoes.max(p0, Instant::now())
    );

    assert!(
        paced.reached,
        "the worker did not refuse or accept {NO_RETRY_TARGET} Initials (or no handshake was seen in progress) within {FLOOD_DEADLINE:?}: {paced:?}, counters {before:?} -> {mid:?}, {samples:?}"
    );
    assert!(refused > 0, "nothing refused: {mid:?}");
    assert!(
        (refused + accepted) * 2 > paced.sent,
        "most Initials must be refused or accepted: {refused} + {accepted} of {}",
        paced.sent
    );
    assert!(accepted >= MAX_HANDSHAKES as u64, "{mid:?}");
    // A slot is free only once a handshake timed out (handshake_ms, then draining): from the
    // flood's start until the counters settled, at most one round per handshake_ms, plus the
    // first.
    let rounds = accepted_within.as_secs_f64() / HANDSHAKE.as_secs_f64() + 1.0;
    assert!(
        accepted as f64 <= MAX_HANDSHAKES as f64 * rounds,
        "{accepted} flood connections accepted in {accepted_within:?}: handshakes not capped"
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
    assert_not_starved(&workers, &during);

    // The flood's handshakes time out and are cleaned up; then a new desktop gets in.
    let t0 = Instant::now();
    let clean = wait_until_async(Duration::from_secs(20), move || {
        Quic::read(admin).handshaking() == 0
    })
    .await;
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
    let ok = wait_until_async(Duration::from_secs(20), move || {
        Quic::read(admin).desktops == 3
    })
    .await;
    assert!(ok, "{:?}", Quic::read(admin));
}
