//! Issue 11's attacks by a desktop on its own connection (PROTOCOL.md §4.1 the hello,
//! §4.1.1 flow control, deadlines, half-close and the per-source cap, §10): half-close, a
//! desktop that never reads, frames that never finish, an oversized frame before the hello,
//! one source address taking every slot, and a request written with the hello.
//!
//! The harness, the old-proxy switch (`DESKMUX_TEST_OLD_PROXY=1`) and the waiting rules are
//! described in `isolation_support/mod.rs`.

mod fake_upstream;
mod isolation_support;
mod proxy_support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use deskmux_codec::msg::{DesktopHello, control, ixn};
use deskmux_codec::{ErrorCode, Head, Kind, Service};
use deskmux_tests::TestClient;
use fake_upstream::{Reply, data_of, head_only, is_request};
use isolation_support::{
    Got, MIB, Reader, STEP, desktop, echo_frame, hello_frame, is_control_error, limits, raw_hello,
    rig, summary, upstream_session,
};
use proxy_support::{T1, T2, TOKEN1};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

// ------------------------------------------------------------------ half-close

/// Attack (or just a client that is done sending): 7 pipelined requests, then FIN. The
/// desktop still gets the 7 answers, then EOF; the proxy then closes the upstream session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_desktop_gets_every_answer_then_eof() {
    let rig = rig(1, 1, limits(&[], &[])).await;
    let fake = &rig.fakes[0];
    fake.set_script(|f| {
        if is_request(f, Service::Interaction, ixn::ECHO) {
            Reply::Hold
        } else {
            Reply::Default
        }
    });
    let (mut s, mut rd, _) = raw_hello(rig.addr(), T1, "iso5").await;
    let (_, up) = upstream_session(fake, "iso5").unwrap();
    let mut all = BytesMut::new();
    for corr in 2..=8u64 {
        all.extend_from_slice(echo_frame(T1, corr, format!("half-{corr}").as_bytes()).as_bytes());
    }
    s.write_all(&all).await.unwrap();
    s.shutdown().await.expect("shut down the write side");
    fake.wait_held(7, STEP, "the 7 requests reach the server", |_| true)
        .await;
    let released_at = fake.with(|s| s.now());
    assert_eq!(fake.release(|_| true), 7);

    let mut answers = Vec::new();
    let end = loop {
        match rd.next_no_hb(&mut s, Instant::now() + STEP * 2).await {
            Got::Frame(f) => answers.push(f),
            g => break g,
        }
    };
    let ok: Vec<u64> = answers
        .iter()
        .filter(|f| {
            f.head().kind == Kind::Response
                && f.error().is_none()
                && data_of(f) == format!("half-{}", f.head().correlation).as_bytes()
        })
        .map(|f| f.head().correlation)
        .collect();
    assert_eq!(
        ok,
        (2..=8).collect::<Vec<u64>>(),
        "a desktop that half-closed after 7 requests got {} of the 7 answers, in order, before \
         the connection {}; frames: {:?}",
        ok.len(),
        if matches!(end, Got::Closed) {
            "closed"
        } else {
            "went silent"
        },
        answers.iter().map(summary).collect::<Vec<_>>()
    );
    assert!(
        matches!(end, Got::Closed),
        "the proxy closes the connection after the last answer"
    );
    fake.wait_for(STEP, "SESSION_CLOSE upstream after the answers", |s| {
        s.all_received()
            .any(|(_, r)| {
                let h = r.frame.head();
                h.kind == Kind::Control
                    && h.msg_type == control::SESSION_CLOSE
                    && h.session == up
                    && r.at > released_at
            })
            .then_some(())
    })
    .await;
}

// ------------------------------------------------------------------ never reads

/// Attack: a desktop pipelines 64 KiB echoes (answered with 64 KiB) and never reads. The
/// proxy must stop reading it (backpressure) instead of reading on and answering with errors
/// or cutting it: the bytes the kernel accepts stop growing far below what it tries to
/// write, upstream never sees more than `max_in_flight` of its requests, other desktops are
/// served meanwhile, and once it reads, every request it wrote is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_desktop_is_not_read_past_its_cap() {
    const CAP: u64 = 8;
    const BODY: usize = 64 * 1024;
    /// The attack's bound: a proxy that never pushes back has taken this much.
    const ATTEMPT: u64 = 256 * MIB as u64;
    /// "Far below": the proxy holds at most CAP requests and half its out-queue; the rest is
    /// kernel socket buffers on both sides (tens of MiB at most on loopback).
    const FAR_BELOW: u64 = 128 * MIB as u64;
    /// A write that makes no progress for this long means the proxy stopped reading. This
    /// only ends the attack; success is decided by what follows (bytes, answers).
    const STALL: Duration = Duration::from_secs(3);
    let rig = rig(
        1,
        1,
        limits(
            &[("max_in_flight", CAP), ("out_queue_bytes", 2 * MIB as u64)],
            &[],
        ),
    )
    .await;
    let fake = &rig.fakes[0];
    let (s, mut rd, _) = raw_hello(rig.addr(), T1, "iso6-a").await;
    let (_, a_up) = upstream_session(fake, "iso6-a").unwrap();
    let (mut r, mut w) = s.into_split();
    let frame =
        |corr: u64| -> Bytes { echo_frame(T1, corr, &vec![(corr % 251) as u8; BODY]).freeze() };

    enum Outcome {
        Stalled,
        Closed(String),
        NotPaused,
    }
    let mut corr = 2u64;
    let mut cur = frame(corr);
    let mut off = 0usize;
    let mut written = 0u64;
    let mut complete = Vec::new();
    let outcome = loop {
        if written >= ATTEMPT {
            break Outcome::NotPaused;
        }
        match tokio::time::timeout(STALL, w.write(&cur[off..])).await {
            Err(_) => break Outcome::Stalled,
            Ok(Err(e)) => break Outcome::Closed(e.to_string()),
            Ok(Ok(0)) => break Outcome::Closed("write returned 0".into()),
            Ok(Ok(n)) => {
                written += n as u64;
                off += n;
                if off == cur.len() {
                    complete.push(corr);
                    corr += 1;
                    cur = frame(corr);
                    off = 0;
                }
            }
        }
    };
    let mib = written as f64 / MIB as f64;
    match outcome {
        Outcome::Stalled => {}
        Outcome::Closed(e) => panic!(
            "the proxy cut the never-reading desktop after taking {mib:.1} MiB ({} requests) \
             ({e}) instead of pausing reads at max_in_flight = {CAP}",
            complete.len()
        ),
        Outcome::NotPaused => panic!(
            "the proxy kept reading a desktop that never reads: {mib:.1} MiB ({} requests) \
             taken, max_in_flight = {CAP}",
            complete.len()
        ),
    }
    eprintln!(
        "never-reading desktop: paused after {mib:.1} MiB ({} whole requests) were taken",
        complete.len()
    );
    assert!(
        written < FAR_BELOW,
        "the proxy took {mib:.1} MiB from a desktop that never reads before pushing back"
    );
    // Another desktop is served while the first one is paused.
    let mut other = desktop(rig.addr(), T2, "iso6-b").await;
    for i in 0..3 {
        proxy_support::echo_ok(
            &mut other,
            Service::Interaction,
            format!("b-{i}").as_bytes(),
        )
        .await;
    }
    let max_out = fake.with(|s| s.max_outstanding(a_up));
    assert!(
        max_out as u64 <= CAP,
        "upstream saw {max_out} of the desktop's requests outstanding (max_in_flight = {CAP})"
    );
    // The desktop reads now: every request it wrote is answered (the one cut short is
    // finished first).
    let rest = cur.slice(off..);
    complete.push(corr);
    let finish = tokio::spawn(async move { w.write_all(&rest).await.map(|()| w) });
    let mut pending: std::collections::BTreeSet<u64> = complete.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pending.is_empty() {
        let f = match rd.next_no_hb(&mut r, deadline).await {
            Got::Frame(f) => f,
            Got::Closed => panic!(
                "connection closed with {} of {} answers missing",
                pending.len(),
                complete.len()
            ),
            Got::TimedOut => panic!(
                "{} of {} answers missing once the desktop reads",
                pending.len(),
                complete.len()
            ),
        };
        let c = f.head().correlation;
        assert!(
            f.head().kind == Kind::Response && f.error().is_none(),
            "answer to request {c}: {}",
            summary(&f)
        );
        assert_eq!(data_of(&f).len(), BODY, "echo of request {c}");
        assert_eq!(data_of(&f)[0], (c % 251) as u8, "echo of request {c}");
        assert!(
            pending.remove(&c),
            "request {c} answered twice or never sent"
        );
    }
    let _w = finish
        .await
        .expect("writer")
        .expect("finish the last request");
}

// ------------------------------------------------------------------ frame deadlines

/// Attack: after the hello, the head of a 1 MiB request, then a byte every 100 ms: the frame
/// must complete within `frame_timeout_ms` of its first byte, else control `DEADLINE` and
/// close. (Trickling keeps the idle rule quiet; only the frame deadline can end it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_frame_must_complete_within_frame_timeout() {
    let rig = rig(1, 1, limits(&[], &[("frame_timeout_ms", 800)])).await;
    let (s, mut rd, _) = raw_hello(rig.addr(), T1, "iso7a").await;
    let (mut r, mut w) = s.into_split();
    let mut h = Head::new(Kind::Request, Service::Interaction, ixn::ECHO);
    h.tenant = T1;
    h.correlation = 2;
    let mut start = BytesMut::from(&head_only(h, MIB as u32)[..]);
    start.extend_from_slice(&[0u8; 64]);
    w.write_all(&start).await.unwrap();
    // The bound of the attack, not a success condition: 6 s > 800 ms plus slack.
    let deadline = Instant::now() + Duration::from_secs(6);
    // The attacker's pace: one byte per 100 ms.
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let mut trickled = 0u32;
    let mut frames = Vec::new();
    let end = loop {
        tokio::select! {
            g = rd.next_no_hb(&mut r, deadline) => match g {
                Got::Frame(f) => frames.push(f),
                g => break g,
            },
            _ = pace.tick() => {
                // Errors are expected once the proxy closed.
                if w.write_all(&[0]).await.is_ok() {
                    trickled += 1;
                }
            }
        }
    };
    let deadline_err = frames
        .iter()
        .any(|f| is_control_error(f, ErrorCode::DEADLINE));
    assert!(
        deadline_err && matches!(end, Got::Closed),
        "a 1 MiB frame trickled a byte per 100 ms ({trickled} bytes) must end with control \
         ERROR DEADLINE and close (frame_timeout_ms = 800); got {:?}, then {}",
        frames.iter().map(summary).collect::<Vec<_>>(),
        if matches!(end, Got::Closed) {
            "close"
        } else {
            "nothing for 6 s"
        }
    );
}

/// Attack: before its hello, a connection announces a 64 KiB frame (over `hello_max_frame`,
/// default 16 KiB): control `FRAME_TOO_LARGE` and close at once, not a 2 MiB buffer held until
/// the handshake deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_before_hello_is_refused_at_once() {
    let rig = rig(1, 1, limits(&[], &[])).await;
    let mut s = TcpStream::connect(rig.addr()).await.unwrap();
    let mut h = Head::new(Kind::Request, Service::Control, control::HELLO);
    h.tenant = T1;
    h.correlation = 1;
    s.write_all(&head_only(h, 64 * 1024)).await.unwrap();
    let mut rd = Reader::new();
    let deadline = Instant::now() + STEP;
    let mut frames = Vec::new();
    let end = loop {
        match rd.next(&mut s, deadline).await {
            Got::Frame(f) => frames.push(f),
            g => break g,
        }
    };
    assert!(
        frames
            .iter()
            .any(|f| is_control_error(f, ErrorCode::FRAME_TOO_LARGE))
            && matches!(end, Got::Closed),
        "a 64 KiB frame before the hello (hello_max_frame 16 KiB): got {:?}, then {} (want \
         control ERROR FRAME_TOO_LARGE and close)",
        frames.iter().map(summary).collect::<Vec<_>>(),
        if matches!(end, Got::Closed) {
            "close"
        } else {
            "nothing within 5 s"
        }
    );
}

// ------------------------------------------------------------------ per-source cap

/// Connect from a given source address.
async fn connect_from(src: [u8; 4], to: SocketAddr) -> TestClient {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((src, 0))).unwrap();
    let s = sock.connect(to).await.expect("connect");
    s.set_nodelay(true).unwrap();
    TestClient::new(s)
}

/// Attack: one source address takes every desktop slot. With `max_desktops_per_source = 3`,
/// a 4th desktop from 127.0.0.1 gets control `OVERLOADED` and is closed; 127.0.0.2 is served;
/// a slot freed on 127.0.0.1 can be used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desktops_per_source_address_are_capped() {
    let rig = rig(1, 1, limits(&[], &[("max_desktops_per_source", 3)])).await;
    let mut three = Vec::new();
    for i in 0..3 {
        let mut c = connect_from([127, 0, 0, 1], rig.addr()).await;
        c.hello_ok(T1, &format!("iso9-{i}"), TOKEN1).await.unwrap();
        three.push(c);
    }
    let mut fourth = connect_from([127, 0, 0, 1], rig.addr()).await;
    // The proxy may refuse at once; a write into a closed connection is then no error here.
    let _ = fourth
        .send(Service::Control, control::HELLO, |w| {
            DesktopHello {
                version: 1,
                agent: "iso9-3",
                token: TOKEN1,
                reconnect: None,
                services: 0b110,
            }
            .write(w)
        })
        .await;
    let first = fourth
        .wait_for(STEP, |f| {
            f.head().kind == Kind::Control || f.head().msg_type == control::HELLO
        })
        .await;
    match &first {
        Ok(f) if is_control_error(f, ErrorCode::OVERLOADED) => {}
        Ok(f) => panic!(
            "a 4th desktop from 127.0.0.1 (max_desktops_per_source = 3): {} (want control \
             ERROR OVERLOADED and close)",
            summary(f)
        ),
        Err(e) => panic!("a 4th desktop from 127.0.0.1: no control ERROR OVERLOADED ({e:#})"),
    }
    assert!(
        fourth.closed_within(STEP).await.unwrap_or(true),
        "the refused desktop is closed"
    );
    // Another source is not affected.
    let mut other = connect_from([127, 0, 0, 2], rig.addr()).await;
    other
        .hello_ok(T1, "iso9-src2", TOKEN1)
        .await
        .expect("a desktop from 127.0.0.2 is accepted");
    proxy_support::echo_ok(&mut other, Service::Interaction, b"src2").await;
    // A slot freed on 127.0.0.1 is usable again, once the proxy noticed the departure.
    drop(three.pop());
    let end = Instant::now() + STEP * 2;
    loop {
        let mut c = connect_from([127, 0, 0, 1], rig.addr()).await;
        match c.hello(T1, "iso9-again", TOKEN1, 0b110).await {
            Ok(h) if h.error().is_none() => break,
            r => assert!(
                Instant::now() < end,
                "no slot on 127.0.0.1 after one of its desktops left: {:?}",
                r.map(|f| summary(&f))
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------ hello + request

/// A request written together with the hello (one write) is served once the hello succeeded,
/// answered after the hello's answer, instead of `INVALID_STATE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_in_the_hello_write_is_served_after_the_hello() {
    let rig = rig(1, 1, limits(&[], &[])).await;
    let mut s = TcpStream::connect(rig.addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut both = BytesMut::from(hello_frame(T1, "iso10", 1).as_bytes());
    both.extend_from_slice(echo_frame(T1, 2, b"with-the-hello").as_bytes());
    s.write_all(&both).await.unwrap();
    let mut rd = Reader::new();
    let deadline = Instant::now() + STEP;
    let mut answers = Vec::new();
    while answers.len() < 2 {
        match rd.next_no_hb(&mut s, deadline).await {
            Got::Frame(f) => answers.push(f),
            Got::Closed => break,
            Got::TimedOut => break,
        }
    }
    let echo = answers
        .iter()
        .position(|f| f.head().kind == Kind::Response && f.head().correlation == 2);
    let hello = answers
        .iter()
        .position(|f| f.head().kind == Kind::Response && f.head().correlation == 1);
    let Some(e) = echo else {
        panic!(
            "no answer to the request written with the hello: {:?}",
            answers.iter().map(summary).collect::<Vec<_>>()
        );
    };
    let ef = &answers[e];
    assert!(
        ef.error().is_none() && data_of(ef) == b"with-the-hello",
        "the request written in the same write as the hello: {} (want its echo)",
        summary(ef)
    );
    let h = hello.expect("the hello is answered");
    assert!(
        answers[h].error().is_none(),
        "hello: {}",
        summary(&answers[h])
    );
    assert!(h < e, "the request is answered after the hello");
}
