//! End-to-end: the loadgen binary against an in-process fake server speaking just enough of
//! PROTOCOL.md (hello, login, heartbeat, echo), honest or deliberately faulty. Checks the
//! JSON keys, the sharding over worker processes, that a lost or wrong answer makes the run
//! exit with its own code (4, not the usage code 2), and that requests a stall at the end of the window kept from being sent are
//! counted, not dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use deskmux_codec::msg::{self, ServerHello};
use deskmux_codec::{
    ErrorCode, Frame, FrameDecoder, Head, Kind, Service, control_error, encode_with, error_response,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    /// Never answer every n-th echo.
    Drop(u64),
    /// Answer every n-th echo with a flipped payload byte.
    Corrupt(u64),
    /// After n echoes on a connection, announce its upstream session lost (control
    /// `ERROR LINK_LOST`, as the proxy does when a primary dies) and answer every later echo on
    /// it with `LINK_LOST_UNSENT`.
    LinkLostAfter(u64),
    /// Stop answering (and reading) on every connection for `for_ms`, starting `after_ms` after
    /// the first echo arrived.
    Freeze {
        after_ms: u64,
        for_ms: u64,
    },
}

async fn serve(listener: TcpListener, fault: Fault) {
    let counter = Arc::new(AtomicU64::new(0));
    let sessions = Arc::new(AtomicU64::new(1));
    // When the first echo arrived (the freeze is timed from it).
    let first_echo: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let counter = counter.clone();
        let sessions = sessions.clone();
        let first_echo = first_echo.clone();
        tokio::spawn(async move {
            let _ = sock.set_nodelay(true);
            let mut dec = FrameDecoder::default();
            let mut rbuf = BytesMut::with_capacity(4096);
            let mut out = BytesMut::new();
            // Echoes answered on this connection, for `Fault::LinkLostAfter`.
            let mut echoes = 0u64;
            loop {
                match sock.read_buf(&mut rbuf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                while let Ok(Some(f)) = dec.decode(&mut rbuf) {
                    let h = *f.head();
                    if h.kind != Kind::Request {
                        continue;
                    }
                    let mut rh = h;
                    rh.kind = Kind::Response;
                    match (h.service, h.msg_type) {
                        (Service::Control, msg::control::HELLO) => {
                            let sh = ServerHello {
                                session: sessions.fetch_add(1, Ordering::Relaxed),
                                max_frame: 1 << 21,
                                heartbeat_ms: 5000,
                                max_in_flight: 256,
                            };
                            encode_with(rh, &mut out, |w| sh.write(w)).unwrap();
                        }
                        (Service::Interaction, msg::ixn::ECHO) => {
                            first_echo.get_or_init(Instant::now);
                            if let Fault::LinkLostAfter(k) = fault {
                                echoes += 1;
                                if echoes > k {
                                    let e = error_response(&h, ErrorCode::LINK_LOST_UNSENT, "gone");
                                    out.extend_from_slice(e.as_bytes());
                                    continue;
                                }
                            }
                            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                            let mut body = f.body_bytes().to_vec();
                            match fault {
                                Fault::Drop(k) if n.is_multiple_of(k) => continue,
                                Fault::Corrupt(k) if n.is_multiple_of(k) => {
                                    if let Some(b) = body.last_mut() {
                                        *b ^= 0xFF;
                                    }
                                }
                                _ => {}
                            }
                            out.extend_from_slice(Frame::with_body(rh, &body).unwrap().as_bytes());
                            if fault == Fault::LinkLostAfter(echoes) {
                                let notice = control_error(
                                    h.session,
                                    ErrorCode::LINK_LOST,
                                    "upstream session lost; reconnect",
                                );
                                out.extend_from_slice(notice.as_bytes());
                            }
                        }
                        _ => {
                            // Login, heartbeat: empty answer.
                            let mut e: Head = rh;
                            e.body_len = 0;
                            out.extend_from_slice(&e.to_bytes());
                        }
                    }
                }
                if let (Fault::Freeze { after_ms, for_ms }, Some(t0)) = (fault, first_echo.get()) {
                    let from = *t0 + Duration::from_millis(after_ms);
                    let until = from + Duration::from_millis(for_ms);
                    let now = Instant::now();
                    if now >= from && now < until {
                        tokio::time::sleep_until(until.into()).await;
                    }
                }
                if !out.is_empty() {
                    if sock.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
            }
        });
    }
}

fn start(fault: Fault) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            serve(l, fault).await;
        });
    });
    (rx.recv().unwrap(), h)
}

/// A credentials file (the fake server accepts any): two tenants, ten agents.
fn credentials(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("creds.tsv");
    let lines: String = (0..10)
        .map(|i| format!("{}\tfake-{i}\tpassword-{i}\n", 1 + i % 2))
        .collect();
    std::fs::write(&p, lines).unwrap();
    p
}

fn run_loadgen(addr: SocketAddr, extra: &[&str]) -> (i32, serde_json::Value) {
    run_loadgen_for(addr, "1", "1", extra)
}

/// [`run_loadgen`] with `duration` and `drain` seconds.
fn run_loadgen_for(
    addr: SocketAddr,
    duration: &str,
    drain: &str,
    extra: &[&str],
) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let html = dir.path().join("out.html");
    let hlog = dir.path().join("out.hlog");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("run")
        .arg("--credentials")
        .arg(credentials(dir.path()))
        .args([
            "--site",
            &addr.to_string(),
            "-q",
            "--ramp",
            "0.3",
            "--warmup",
            "0.3",
        ])
        .args(["--duration", duration, "--drain", drain, "--threads", "1"])
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .arg("--hdr-log")
        .arg(&hlog)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap_or_default())
        .unwrap_or_else(|e| panic!("no json ({e}); stdout {stdout} stderr {stderr}"));
    assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));
    assert!(
        std::fs::read_to_string(&hlog)
            .unwrap()
            .contains("StartTime")
    );
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn honest_server_passes_with_sharding() {
    let (addr, _h) = start(Fault::None);
    // 60 desktops at 25 per process: 3 worker processes, results merged.
    // 20 per source address: 127.0.0.2, .3 and .4, explicit source ports.
    let (code, v) = run_loadgen(
        addr,
        &[
            "-n",
            "60",
            "--per-process",
            "25",
            "--per-source",
            "20",
            "--window",
            "2",
        ],
    );
    assert_eq!(v["shards"], 3, "{v:#}");
    assert_eq!(v["clients"]["target"], 60);
    assert_eq!(v["clients"]["connected"], 60, "{v:#}");
    assert_eq!(v["clients"]["failed"], 0);
    assert_eq!(v["requests"]["lost"], 0, "{v:#}");
    assert_eq!(v["requests"]["wrong"], 0);
    assert!(v["requests"]["ok"].as_u64().unwrap() > 100);
    assert!(v["throughput_rps"].as_f64().unwrap() > 0.0);
    assert!(v["latency_us"]["p99"].as_f64().unwrap() > 0.0);
    for k in ["p50", "p999", "max"] {
        assert!(v["latency_us"][k].is_number());
    }
    assert!(v["events"]["received"].is_number() && v["events"]["gaps"].is_number());
    assert!(v["loadgen_saturated"].is_boolean());
    assert!(v["loadgen_cpu_percent"].is_number());
    assert_eq!(code, 0, "{v:#}");
}

#[test]
fn open_loop_honest() {
    let (addr, _h) = start(Fault::None);
    let (code, v) = run_loadgen(addr, &["-n", "20", "--rate", "2000"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["load_model"], "open");
    let tput = v["throughput_rps"].as_f64().unwrap();
    assert!(tput > 1500.0 && tput < 2500.0, "throughput {tput}");
    assert!(v["send_lag_us"]["count"].as_u64().unwrap() > 0);
    // Every request due in the 1 s window (2,000 at 2,000 req/s, give or take one per desktop
    // for where its schedule falls) was sent; the target was met.
    let r = &v["requests"];
    let due = r["due"].as_u64().unwrap();
    assert!((1980..=2020).contains(&due), "due {due}: {v:#}");
    assert_eq!(r["unsent"], 0, "{v:#}");
    assert_eq!(v["target_missed"], false, "{v:#}");
    let ratio = v["achieved_over_target"].as_f64().unwrap();
    assert!(
        (0.99..=1.01).contains(&ratio),
        "achieved/target {ratio}: {v:#}"
    );
    // Everything written, by type: the echoes the run measures and one login per desktop.
    assert_eq!(r["by_type"]["echo"], r["sent"], "{v:#}");
    assert_eq!(r["by_type"]["agent_login"], 20, "{v:#}");
    assert_eq!(
        r["by_service"]["interaction"].as_u64().unwrap(),
        r["sent"].as_u64().unwrap() + 20,
        "{v:#}"
    );
    // The event-loop thread's CPU over the window was measured (it once read 0 when the
    // desktops finished before the ticker's first tick after the window).
    assert!(
        v["loadgen_thread_busy_max"].as_f64().unwrap() > 0.0,
        "{v:#}"
    );
}

#[test]
fn a_stall_across_the_end_of_the_window_is_counted_not_dropped() {
    // 5 desktops at 2,000 req/s; the server stops answering 1.8 s after the first echo, for
    // 2 s. The window runs from 0.6 s to 3.6 s after the start, so the stall covers its last
    // ~1.8 s and ends after it: each desktop's 64 requests in flight wait ~2 s, and the
    // requests that fall due behind them are never sent before the window ends.
    let (addr, _h) = start(Fault::Freeze {
        after_ms: 1800,
        for_ms: 2000,
    });
    let (code, v) = run_loadgen_for(addr, "3", "4", &["-n", "5", "--rate", "2000"]);
    let r = &v["requests"];
    let (due, unsent) = (r["due"].as_u64().unwrap(), r["unsent"].as_u64().unwrap());
    assert!((5990..=6010).contains(&due), "due {due}: {v:#}");
    assert!(unsent > 0, "{v:#}");
    // Nothing was lost: the requests in flight were answered after the stall, in the drain.
    assert_eq!(r["lost"], 0, "{v:#}");
    // The unsent requests are in the corrected histogram, with at least (end - intended).
    let measured = r["measured"].as_u64().unwrap();
    assert_eq!(
        v["latency_us"]["count"].as_u64().unwrap(),
        measured + unsent,
        "{v:#}"
    );
    assert!(
        v["latency_us"]["p99"].as_f64().unwrap() >= 1_000_000.0,
        "corrected p99 under 1 s: {v:#}"
    );
    // And the run says so.
    assert_eq!(v["target_missed"], true, "{v:#}");
    let reasons = v["target_missed_reasons"].to_string();
    assert!(reasons.contains("never sent"), "{reasons}");
    assert!(v["achieved_over_target"].as_f64().unwrap() < 0.99, "{v:#}");
    assert_eq!(
        code, 0,
        "a missed target is flagged, not a verification failure: {v:#}"
    );
}

#[test]
fn lost_answers_fail_the_run() {
    let (addr, _h) = start(Fault::Drop(50));
    let (code, v) = run_loadgen(addr, &["-n", "10", "--window", "4"]);
    assert!(v["requests"]["lost"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(v["verification_failed"], true);
    assert_eq!(code, i32::from(deskmux_loadgen::exit::LOST_OR_WRONG));
}

#[test]
fn wrong_answers_fail_the_run() {
    let (addr, _h) = start(Fault::Corrupt(100));
    let (code, v) = run_loadgen(addr, &["-n", "10"]);
    assert!(v["requests"]["wrong"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(v["requests"]["lost"], 0);
    assert_eq!(code, i32::from(deskmux_loadgen::exit::LOST_OR_WRONG));
}

#[test]
fn dead_site_fails_over_to_the_next() {
    let (addr, _h) = start(Fault::None);
    // A port nobody listens on first: half the desktops start there, fail, back off and move on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("run")
        .arg("--credentials")
        .arg(credentials(dir.path()))
        .args([
            "--site",
            &dead_addr.to_string(),
            "--site",
            &addr.to_string(),
        ])
        .args([
            "-q",
            "-n",
            "20",
            "--ramp",
            "0.2",
            "--warmup",
            "0.5",
            "--duration",
            "1",
        ])
        .args(["--backoff-base-ms", "20", "--threads", "1"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["clients"]["connected"], 20, "{v:#}");
    assert_eq!(v["clients"]["failed"], 0);
    assert!(
        v["clients"]["failed_attempts"].as_u64().unwrap() >= 10,
        "{v:#}"
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn lost_upstream_session_makes_desktops_reconnect() {
    // Each connection serves 20 echoes, then says its upstream session is gone. A desktop must
    // stop sending on it and reconnect (as after GO_AWAY); one that keeps sending only collects
    // LINK_LOST_UNSENT errors and never succeeds again.
    let (addr, _h) = start(Fault::LinkLostAfter(20));
    let (code, v) = run_loadgen(addr, &["-n", "10", "--no-login"]);
    assert_eq!(v["requests"]["lost"], 0, "{v:#}");
    assert_eq!(v["requests"]["wrong"], 0, "{v:#}");
    let reconnects = v["clients"]["reconnects"].as_u64().unwrap();
    assert!(
        reconnects >= 10,
        "every desktop reconnects at least once: {v:#}"
    );
    // More successes than 10 desktops x 20 echoes: work went on after reconnecting.
    assert!(v["requests"]["ok"].as_u64().unwrap() > 200, "{v:#}");
    assert_eq!(code, 0, "{v:#}");
}
