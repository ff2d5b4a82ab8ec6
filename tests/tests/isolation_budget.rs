//! Issue 11's attacks on a proxy worker's memory (PROTOCOL.md §4.1.1 "A proxy's memory", §5
//! `OVERLOADED`, §10 "link queue or worker budget full"). A worker counts all it queues
//! (desktop outbound queues, bytes read and not yet handled, link queues) against
//! `limits.worker_queue_bytes`. Above 3/4 of it:
//!
//! - the desktops holding the largest backlogs (outbound queue past half its bound: they do
//!   not read) are closed first as slow consumers, largest first, so that desktops which read
//!   are not refused because of those that do not
//!   ([`never_reading_desktops_are_evicted_before_others_are_refused`]);
//! - only if that frees too little, because the bytes wait on an upstream link that does not
//!   drain, new requests and hellos get `OVERLOADED` (not sent)
//!   ([`requests_get_overloaded_while_the_bytes_wait_upstream`]).
//!
//! Either way `/status` `queued_bytes` stays within the budget plus one `max_frame`.
//!
//! The harness, the old-proxy switch (`DESKMUX_TEST_OLD_PROXY=1`) and the waiting rules are
//! described in `isolation_support/mod.rs`.

mod fake_upstream;
mod isolation_support;
mod proxy_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use deskmux_codec::msg::{ServerHello, ixn};
use deskmux_codec::{ErrorCode, Frame, HEAD_LEN, Kind, RetryClass, Service};
use fake_upstream::{FakeUpstream, Options, Reply, big_answer, data_of, set_mss};
use isolation_support::{
    Got, Reader, STEP, data_body, desktop, echo_frame, hello_frame, is_control_error, is_error,
    limits, old_proxy, raw_hello, rig, rig_with, status, summary, try_status, upstream_session,
    wait_status, worker_sum, worker_values,
};
use proxy_support::{T1, T2, code};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// `limits.max_frame`: also the largest frame the proxy takes on a link.
const MAX_FRAME: u64 = 256 * 1024;
/// `limits.out_queue_bytes`: one desktop's bound (it stops being read past half of it).
const OUT_QUEUE: u64 = 1024 * 1024;
/// `limits.worker_queue_bytes`: >= 4 x max_frame and >= 2 x out_queue_bytes (validated).
const BUDGET: u64 = 4 * 1024 * 1024;
/// Above this (3/4 of the budget) backlogged desktops are evicted, then new work refused.
const HIGH: u64 = BUDGET / 4 * 3;
/// Requests each never-reader sends, all at once (= `max_in_flight`, so that every one is
/// taken at once, by the old proxy too).
const REQS: usize = 4;
/// The whole frame of each answer the fake gives a never-reader. `REQS` of them (640 KiB) stay
/// under `OUT_QUEUE` (no never-reader overflows its own bound) but are past half of it (each
/// is backlogged: a candidate for eviction).
const ANSWER: usize = 160 * 1024;
/// Never-readers at most: 16 x 640 KiB is far over the budget, even with what the kernel's
/// socket buffers take off the proxy's hands.
const MAX_NEVER_READERS: usize = 16;
/// `limits.link_queue_bytes` of the second test: far above the worker budget's mark, so that
/// the worker budget, not the link's own bound, is what refuses.
const LINK_QUEUE: u64 = 16 * 1024 * 1024;
/// The `data` of each filler request of the second test.
const BIG_REQ: usize = 200 * 1024;
/// Fillers at most: 15 x 4 x 200 KiB = 12 MiB, well past the budget's mark plus what the
/// kernel buffers of the link take, and still under `LINK_QUEUE` (on the old proxy, the link's
/// own bound must not be what refuses the well-behaved desktop).
const MAX_FILLERS: usize = 15;
/// The fake's `SO_RCVBUF` and advertised MSS on the link in the second test: what the fake
/// does not read must wait in the proxy's link queue, not in kernel buffers (on loopback they
/// would take megabytes: see [`set_mss`]).
const LINK_RCVBUF: u32 = 4096;
const LINK_MSS: i32 = 536;

// ------------------------------------------------------------------ never-readers

/// A desktop that completed its hello, sent `REQS` requests for big answers and does not read
/// (until the test looks at what it was sent).
struct NeverReader {
    agent: String,
    /// Not read until evicted; dropped with a reset (`SO_LINGER` 0).
    stream: TcpStream,
    /// What read its hello answer (and may hold bytes after it).
    rd: Reader,
    /// Its upstream session id.
    up: u64,
}

/// Start a never-reader. A refused hello fails the test: with never-readers to evict, the
/// proxy must not refuse anyone.
async fn never_reader(
    addr: SocketAddr,
    admin: SocketAddr,
    fake: &FakeUpstream,
    agent: &str,
) -> NeverReader {
    let sock = TcpSocket::new_v4().expect("socket");
    // What it does not read must stay at the proxy, not in kernel buffers: a small receive
    // buffer here, and a small MSS, which keeps the proxy's autotuned send buffer small too.
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    set_mss(&sock, 536);
    let mut s = sock.connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_zero_linger().expect("SO_LINGER 0");
    s.write_all(hello_frame(T1, agent, 1).as_bytes())
        .await
        .expect("write hello");
    let mut rd = Reader::new();
    let f = match rd.next_no_hb(&mut s, Instant::now() + STEP).await {
        Got::Frame(f) => f,
        Got::Closed => panic!("{agent}: closed before the hello answer"),
        Got::TimedOut => panic!("{agent}: no hello answer within {STEP:?}"),
    };
    assert!(
        f.error().is_none(),
        "{agent}'s hello was refused ({}) while the desktops that do not read were there to be \
         evicted (/status queued_bytes {:?})",
        summary(&f),
        try_status(admin).await.as_ref().and_then(max_queued)
    );
    ServerHello::read(f.body()).expect("server hello body");
    let up = upstream_session(fake, agent)
        .expect("the never-reader's session at the fake")
        .1;
    let mut all = BytesMut::new();
    for corr in 0..REQS as u64 {
        all.extend_from_slice(
            echo_frame(T1, 2 + corr, format!("big:{ANSWER}").as_bytes()).as_bytes(),
        );
    }
    s.write_all(&all).await.expect("write the requests");
    NeverReader {
        agent: agent.to_string(),
        stream: s,
        rd,
        up,
    }
}

/// Everything `nr` was sent after its hello answer, up to the proxy's close.
async fn read_to_close(nr: &mut NeverReader) -> Vec<Frame> {
    let end = Instant::now() + STEP * 2;
    let mut frames = Vec::new();
    loop {
        match nr.rd.next_no_hb(&mut nr.stream, end).await {
            Got::Frame(f) => frames.push(f),
            Got::Closed => return frames,
            Got::TimedOut => panic!(
                "{}, whose session the proxy closed upstream, was not closed within {:?} \
                 (read {} frames: {:?})",
                nr.agent,
                STEP * 2,
                frames.len(),
                frames.iter().map(summary).collect::<Vec<_>>()
            ),
        }
    }
}

// ------------------------------------------------------------------ /status

/// The largest per-worker `queued_bytes` in a `/status` (`None`: not reported).
fn max_queued(v: &serde_json::Value) -> Option<u64> {
    worker_values(v, "queued_bytes").into_iter().max()
}

/// [`max_queued`] of the proxy's `/status` now.
async fn queued(admin: SocketAddr) -> Option<u64> {
    max_queued(&status(admin).await)
}

/// `/status` `queued_bytes`, sampled every 10 ms while a test runs.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Option<u64>>,
}

impl Sampler {
    fn start(admin: SocketAddr) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut max: Option<u64> = None;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(q) = try_status(admin).await.as_ref().and_then(max_queued) {
                        max = Some(max.map_or(q, |m| m.max(q)));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                max
            }
        });
        Sampler { stop, task }
    }

    /// Stop, and assert that `queued_bytes` never exceeded the budget plus one `max_frame`.
    async fn check(self) {
        self.stop.store(true, Ordering::Relaxed);
        let max = self.task.await.expect("sampler");
        eprintln!("largest /status queued_bytes seen: {max:?}");
        assert!(
            max.is_some_and(|m| m <= BUDGET + MAX_FRAME),
            "/status queued_bytes reached {max:?} (want at most worker_queue_bytes {BUDGET} + \
             max_frame {MAX_FRAME})"
        );
    }
}

fn budget_text() -> String {
    if old_proxy() {
        "not configured (old proxy)".to_string()
    } else {
        format!("{} MiB", BUDGET / 1024 / 1024)
    }
}

/// The echo of `data` on `good`: anything else fails the test with `what`.
async fn echo_must_succeed(good: &mut deskmux_tests::TestClient, data: &str, what: &str) {
    let r = good
        .request(Service::Interaction, ixn::ECHO, data_body(data.as_bytes()))
        .await
        .unwrap_or_else(|e| panic!("{what}: the well-behaved desktop's request: {e:#}"));
    assert!(
        r.error().is_none() && data_of(&r) == data.as_bytes(),
        "{what}: the well-behaved desktop's request got {} (want its echo)",
        summary(&r)
    );
}

/// Attack: never-reading desktops make one worker queue answers (each within its own
/// out-queue bound) until the worker is above 3/4 of `worker_queue_bytes`. The proxy closes
/// never-readers (each finds a control `SLOW_CONSUMER`, then the close, in what it was sent)
/// instead of refusing anyone: a well-behaved desktop's requests, one per never-reader added,
/// are all echoed, and new hellos succeed. `/status` `queued_bytes` never exceeds the budget
/// plus one `max_frame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_desktops_are_evicted_before_others_are_refused() {
    let rig = rig(
        1,
        1,
        limits(
            &[
                ("max_frame", MAX_FRAME),
                ("out_queue_bytes", OUT_QUEUE),
                ("max_in_flight", REQS as u64),
                // Idle never-readers must not be closed by the idle rule while the test runs.
                ("heartbeat_ms", 60_000),
            ],
            &[("worker_queue_bytes", BUDGET)],
        ),
    )
    .await;
    let fake = &rig.fakes[0];
    let admin = rig.proxy.admin;
    fake.set_script(|f| {
        let n = data_of(f)
            .strip_prefix(b"big:")
            .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok());
        match n {
            Some(n) => Reply::Send(vec![big_answer(f, n)]),
            None => Reply::Default,
        }
    });
    // The well-behaved desktop has its session before the worker fills up.
    let mut good = desktop(rig.addr(), T2, "isob-good").await;
    echo_must_succeed(&mut good, "before", "before the attack").await;
    let sampler = Sampler::start(admin);

    // Never-readers, one at a time, until the proxy has closed some of them.
    let link = fake.with(|s| s.up_links()[0]);
    let mut never: Vec<NeverReader> = Vec::new();
    let mut evicted: Vec<NeverReader> = Vec::new();
    let mut added = 0;
    let mut last_queued = None;
    while evicted.is_empty() && added < MAX_NEVER_READERS {
        let agent = format!("isob-never-{added}");
        let nr = never_reader(rig.addr(), admin, fake, &agent).await;
        added += 1;
        let up = nr.up;
        never.push(nr);
        // Its requests all reach the fake and are answered: none is refused.
        let end = Instant::now() + STEP * 2;
        while !fake.with(|s| s.requests_of(up) == REQS && s.outstanding(up) == 0) {
            assert!(
                Instant::now() < end,
                "{agent}'s {REQS} requests were not all forwarded and answered (the fake \
                 received {}; /status queued_bytes {:?})",
                fake.with(|s| s.requests_of(up)),
                queued(admin).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Fence: the proxy has read every answer the fake wrote before this heartbeat.
        fake.ping(link, STEP).await;
        last_queued = queued(admin).await;
        // Above the mark now, the worker must make room for this request, not refuse it.
        echo_must_succeed(
            &mut good,
            &format!("good-{added}"),
            &format!("with {added} never-readers (/status queued_bytes {last_queued:?})"),
        )
        .await;
        // A desktop the proxy closed has its session closed upstream: that `SESSION_CLOSE`
        // went on the one link before the echo just answered, so the fake has it by now.
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut never)
            .into_iter()
            .partition(|n| fake.with(|s| s.session_closed(n.up)));
        never = kept;
        evicted.extend(gone);
    }
    eprintln!(
        "{added} never-readers; /status queued_bytes {last_queued:?} (high-water mark {HIGH}); \
         evicted: {:?}",
        evicted.iter().map(|n| &n.agent).collect::<Vec<_>>()
    );
    assert!(
        !evicted.is_empty(),
        "{added} never-reading desktops holding {REQS} x {} KiB answers each (/status \
         queued_bytes {last_queued:?}, worker_queue_bytes {}): the proxy closed none of them",
        ANSWER / 1024,
        budget_text()
    );

    // What the evicted ones were sent: the answer already begun, if any, then the reason,
    // then the close. Read now: those last frames do not fit in a never-reader's window, and
    // the proxy keeps a closed desktop's unsent frames only a short while (2 s).
    for nr in &mut evicted {
        let frames = read_to_close(nr).await;
        let got: Vec<String> = frames.iter().map(summary).collect();
        let (last, before) = frames.split_last().unwrap_or_else(|| {
            panic!(
                "{} was closed without a frame (want SLOW_CONSUMER)",
                nr.agent
            )
        });
        assert!(
            is_control_error(last, ErrorCode::SLOW_CONSUMER),
            "{} was evicted; before the close it read {got:?} (want a control ERROR \
             SLOW_CONSUMER last)",
            nr.agent
        );
        assert!(
            before
                .iter()
                .all(|f| f.head().kind == Kind::Response && f.error().is_none()),
            "{} was evicted; before its SLOW_CONSUMER it read {got:?} (want only answers)",
            nr.agent
        );
    }

    // Room was made: a new desktop is let in, and the well-behaved desktop is still served.
    let late = never_reader(rig.addr(), admin, fake, "isob-late").await;
    echo_must_succeed(&mut good, "good-after", "after the eviction").await;

    // Everything the never-readers held is given back once they are gone (reset).
    drop(never);
    drop(late);
    let left = wait_status(admin, "queued_bytes", STEP * 2, |q| q == 0).await;
    assert_eq!(
        left,
        Some(0),
        "/status queued_bytes once the never-readers left"
    );
    sampler.check().await;
}

// ------------------------------------------------------------------ fillers

/// The frame of an `ECHO` request beyond its data: head, and the `data` item's key, type and
/// length.
const ECHO_OVERHEAD: usize = HEAD_LEN + 10;

/// A desktop that reads everything it is sent (a task collects it) and sends big requests.
struct Filler {
    agent: String,
    wr: OwnedWriteHalf,
    /// Frames read so far.
    got: Arc<Mutex<Vec<Frame>>>,
    /// The `data` of each request sent, by correlation id.
    sent: HashMap<u64, Vec<u8>>,
    next_corr: u64,
}

impl Filler {
    async fn start(addr: SocketAddr, agent: &str) -> Filler {
        let (s, mut rd, _) = raw_hello(addr, T1, agent).await;
        let (mut r, wr) = s.into_split();
        let got = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn({
            let got = got.clone();
            async move {
                loop {
                    // No deadline of its own: it ends with the connection or the test's runtime.
                    let end = Instant::now() + Duration::from_secs(3600);
                    match rd.next_no_hb(&mut r, end).await {
                        Got::Frame(f) => got.lock().expect("filler frames").push(f),
                        Got::Closed | Got::TimedOut => return,
                    }
                }
            }
        });
        Filler {
            agent: agent.to_string(),
            wr,
            got,
            sent: HashMap::new(),
            next_corr: 2,
        }
    }

    /// Send `n` echo requests, each with `len` bytes of data: its agent and correlation id
    /// (cut to `len` if need be), then padding.
    async fn send(&mut self, n: usize, len: usize) -> Vec<u64> {
        let mut all = BytesMut::new();
        let mut corrs = Vec::new();
        for _ in 0..n {
            let corr = self.next_corr;
            let mut d = format!("{}-{corr}:", self.agent).into_bytes();
            d.resize(len, b'x');
            all.extend_from_slice(&self.frame(d));
            corrs.push(corr);
        }
        self.wr.write_all(&all).await.expect("filler: write");
        corrs
    }

    /// Send one echo request with `data`.
    async fn send_data(&mut self, data: Vec<u8>) -> u64 {
        let corr = self.next_corr;
        let f = self.frame(data);
        self.wr.write_all(&f).await.expect("filler: write");
        corr
    }

    /// The next request's frame, recorded as sent.
    fn frame(&mut self, data: Vec<u8>) -> BytesMut {
        let corr = self.next_corr;
        self.next_corr += 1;
        let f = BytesMut::from(echo_frame(T1, corr, &data).as_bytes());
        self.sent.insert(corr, data);
        f
    }

    /// The responses read so far, by correlation id.
    fn answers(&self) -> HashMap<u64, Vec<Frame>> {
        let mut m: HashMap<u64, Vec<Frame>> = HashMap::new();
        for f in self.got.lock().expect("filler frames").iter() {
            if f.head().kind == Kind::Response {
                m.entry(f.head().correlation).or_default().push(f.clone());
            }
        }
        m
    }

    /// Fails if it was sent a control frame (an error that closes it, e.g. `SLOW_CONSUMER`).
    fn assert_not_closed(&self, when: &str) {
        let ctl: Vec<String> = self
            .got
            .lock()
            .expect("filler frames")
            .iter()
            .filter(|f| f.head().kind == Kind::Control)
            .map(summary)
            .collect();
        assert!(
            ctl.is_empty(),
            "{} reads all it is sent, yet {when} it got {ctl:?}",
            self.agent
        );
    }

    /// Its requests answered `OVERLOADED` so far.
    fn refused(&self) -> Vec<u64> {
        let a = self.answers();
        self.sent
            .keys()
            .filter(|c| {
                a.get(c)
                    .is_some_and(|v| v.iter().any(|f| code(f) == Some(ErrorCode::OVERLOADED)))
            })
            .copied()
            .collect()
    }
}

/// Attack: the bytes wait on the link, not at desktops. The fake stops reading its link, and
/// desktops that read everything they are sent pipeline big requests until the worker is at
/// 3/4 of `worker_queue_bytes` (its link queue far below `link_queue_bytes`): requests are
/// admitted while they fit under the mark, so the fill ends with one topping it up exactly.
/// No desktop holds a backlog to evict, so none is closed, and a well-behaved desktop's new
/// request gets `OVERLOADED` (not sent) and never reaches the server; a new hello gets
/// `OVERLOADED` too. Once the fake reads again, new requests succeed, and every request
/// accepted before is answered exactly once (and reaches the server once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_overloaded_while_the_bytes_wait_upstream() {
    let rig = rig_with(
        1,
        1,
        limits(
            &[
                ("max_frame", MAX_FRAME),
                ("out_queue_bytes", OUT_QUEUE),
                ("link_queue_bytes", LINK_QUEUE),
                ("max_in_flight", REQS as u64),
                ("heartbeat_ms", 60_000),
                // The requests waiting upstream must not time out while the test runs.
                ("request_timeout_ms", 120_000),
            ],
            &[("worker_queue_bytes", BUDGET)],
        ),
        |o| Options {
            rcvbuf: Some(LINK_RCVBUF),
            mss: Some(LINK_MSS),
            ..o
        },
    )
    .await;
    let fake = &rig.fakes[0];
    let admin = rig.proxy.admin;
    let link = fake.with(|s| s.up_links()[0]);
    // Every session is opened while the fake still reads its link.
    let mut good = desktop(rig.addr(), T2, "isob-good").await;
    echo_must_succeed(&mut good, "before", "before the attack").await;
    // MAX_FILLERS fillers, and the last one to top the worker up to its mark.
    let mut fillers = Vec::new();
    for i in 0..=MAX_FILLERS {
        fillers.push(Filler::start(rig.addr(), &format!("isob-fill-{i}")).await);
    }
    let sampler = Sampler::start(admin);

    fake.pause_reading(link);
    // Fillers, one at a time, until the proxy refuses some of their requests: the worker is
    // at its mark (a request is admitted only if it does not take the worker past 3/4 of its
    // budget). Each filler's requests are all taken (in flight) or refused before the next
    // one sends.
    let mut sent = 0;
    let mut refused = 0;
    let mut used = 0;
    while used < MAX_FILLERS && refused == 0 {
        fillers[used].send(REQS, BIG_REQ).await;
        sent += REQS;
        used += 1;
        refused = settle_fill(admin, &fillers, sent).await;
    }
    let mut last_queued = queued(admin).await;
    eprintln!(
        "{used} fillers sent {sent} requests of {} KiB; /status queued_bytes {last_queued:?} \
         (high-water mark {HIGH}); refused meanwhile: {refused}",
        BIG_REQ / 1024
    );
    // A proxy that reports queued_bytes must be within one request of the mark by now; if
    // not, the requests went somewhere else (kernel buffers) and the attack proves nothing.
    if let Some(q) = last_queued {
        assert!(
            q > HIGH - MAX_FRAME,
            "harness: {sent} requests of {} KiB ({refused} refused) left only {q} bytes \
             queued at the proxy (high-water mark {HIGH}); did the kernel's socket buffers take \
             them?",
            BIG_REQ / 1024
        );
        // Admission keeps the worker at or below its mark (a request is taken only if it
        // fits under it), so less than one filler request's room is left, but a small request
        // may still fit. One request of exactly that room fills the worker to its mark:
        // nothing new fits after it.
        let room = (HIGH - q.min(HIGH)) as usize;
        if room >= ECHO_OVERHEAD {
            fillers[MAX_FILLERS].send(1, room - ECHO_OVERHEAD).await;
            sent += 1;
            settle_fill(admin, &fillers, sent).await;
        }
        last_queued = queued(admin).await;
        eprintln!("topped up with {room} bytes: /status queued_bytes {last_queued:?}");
        assert!(
            last_queued.is_some_and(|q| q + ECHO_OVERHEAD as u64 > HIGH),
            "harness: after a top-up request of {room} bytes, /status queued_bytes is \
             {last_queued:?}: room for a request under the mark {HIGH}"
        );
    }

    // A well-behaved desktop's new request: refused with OVERLOADED, not forwarded.
    let corr = good
        .send(Service::Interaction, ixn::ECHO, data_body(b"good-over"))
        .await
        .expect("send");
    // Bounds a wait for a failure: a proxy that queues the request behind the link's backlog
    // never answers it while the fake does not read.
    let r = good.response(corr, STEP).await.unwrap_or_else(|e| {
        panic!(
            "with {sent} requests of {} KiB waiting on a link that does not drain (/status \
             queued_bytes {last_queued:?}, worker_queue_bytes {}), a well-behaved desktop's \
             request got no answer within {STEP:?} ({e:#}): queued instead of OVERLOADED",
            BIG_REQ / 1024,
            budget_text()
        )
    });
    assert!(
        is_error(&r, ErrorCode::OVERLOADED, RetryClass::NotSent),
        "with {sent} requests waiting on a link that does not drain (/status queued_bytes \
         {last_queued:?}), a well-behaved desktop's request got {} (want OVERLOADED, class not \
         sent)",
        summary(&r)
    );
    // A new desktop's hello too.
    let mut s = TcpStream::connect(rig.addr()).await.expect("connect");
    s.write_all(hello_frame(T1, "isob-new", 1).as_bytes())
        .await
        .expect("write hello");
    let mut rd = Reader::new();
    match rd.next_no_hb(&mut s, Instant::now() + STEP).await {
        Got::Frame(f) => assert!(
            is_error(&f, ErrorCode::OVERLOADED, RetryClass::NotSent),
            "a new desktop's hello, with the worker at its mark, got {} (want OVERLOADED)",
            summary(&f)
        ),
        Got::Closed => panic!("a new desktop was closed without an answer to its hello"),
        Got::TimedOut => panic!("a new desktop's hello got no answer within {STEP:?}"),
    }
    // Nobody was closed to make room: the fillers read all they are sent (no backlog).
    for f in &fillers {
        f.assert_not_closed("while the fake did not read");
    }
    // What each filler had accepted when the fake stopped reading: in flight.
    let accepted: Vec<Vec<u64>> = fillers
        .iter()
        .map(|f| {
            let refused = f.refused();
            let mut v: Vec<u64> = f
                .sent
                .keys()
                .filter(|c| !refused.contains(c))
                .copied()
                .collect();
            v.sort_unstable();
            v
        })
        .collect();

    // The fake reads again: new requests succeed (after OVERLOADED while the link drains).
    fake.resume_reading(link);
    let end = Instant::now() + STEP * 2;
    for i in 0.. {
        let data = format!("good-again-{i}");
        let r = good
            .request(Service::Interaction, ixn::ECHO, data_body(data.as_bytes()))
            .await
            .expect("the well-behaved desktop's request is answered");
        if r.error().is_none() {
            assert_eq!(data_of(&r), data.as_bytes(), "echo once the link drains");
            break;
        }
        assert!(
            code(&r) == Some(ErrorCode::OVERLOADED) && Instant::now() < end,
            "once the fake reads again, a request got {} (want its echo; /status queued_bytes \
             {:?})",
            summary(&r),
            queued(admin).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The refused request never reached the server (one session on one link, in order: it
    // would have arrived before the echo that just succeeded).
    let forwarded = fake.with(|s| {
        s.requests(Service::Interaction, ixn::ECHO)
            .iter()
            .any(|(_, r)| data_of(&r.frame) == b"good-over")
    });
    assert!(
        !forwarded,
        "the request refused with OVERLOADED reached the server"
    );

    // Every filler request is answered; then a last echo per filler, answered after all of
    // them, shows that nothing is answered twice.
    let end = Instant::now() + STEP * 4;
    for f in &fillers {
        while f.sent.keys().any(|c| !f.answers().contains_key(c)) {
            f.assert_not_closed("once the fake read again");
            let missing = f
                .sent
                .keys()
                .filter(|c| !f.answers().contains_key(c))
                .count();
            assert!(
                Instant::now() < end,
                "{}: {missing} of its {} requests unanswered {:?} after the fake read again",
                f.agent,
                f.sent.len(),
                STEP * 4
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (f, accepted) in fillers.iter_mut().zip(&accepted) {
        let fence = f.send_data(format!("fence-{}", f.agent).into_bytes()).await;
        let end = Instant::now() + STEP;
        while !f.answers().contains_key(&fence) {
            assert!(
                Instant::now() < end,
                "{}: its last echo is not answered",
                f.agent
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        f.assert_not_closed("once the fake read again");
        let answers = f.answers();
        for (c, data) in &f.sent {
            let got = &answers[c];
            let what: Vec<String> = got.iter().map(summary).collect();
            assert_eq!(got.len(), 1, "{} request {c}: answers {what:?}", f.agent);
            if accepted.contains(c) {
                assert!(
                    got[0].error().is_none() && data_of(&got[0]) == data.as_slice(),
                    "{} request {c}, accepted while the fake did not read: answered {what:?} \
                     (want its echo)",
                    f.agent
                );
            }
        }
        // The server saw each accepted request once and no refused one.
        for (c, data) in &f.sent {
            let n = fake.with(|s| {
                s.requests(Service::Interaction, ixn::ECHO)
                    .iter()
                    .filter(|(_, r)| data_of(&r.frame) == data.as_slice())
                    .count()
            });
            let want = usize::from(accepted.contains(c) || *c == fence);
            assert_eq!(
                n,
                want,
                "{} request {c} (accepted: {}) reached the server {n} times",
                f.agent,
                accepted.contains(c)
            );
        }
    }
    sampler.check().await;
}

/// Wait until `sent` filler requests are all in flight (`/status` `in_flight`) or refused;
/// how many were refused.
async fn settle_fill(admin: SocketAddr, fillers: &[Filler], sent: usize) -> usize {
    let end = Instant::now() + STEP * 2;
    loop {
        let in_flight = worker_sum(&status(admin).await, "in_flight").unwrap_or(0) as usize;
        let refused = fillers.iter().map(|f| f.refused().len()).sum();
        if in_flight + refused >= sent {
            return refused;
        }
        assert!(
            Instant::now() < end,
            "harness: {sent} filler requests sent, {in_flight} in flight (/status), {refused} \
             refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
