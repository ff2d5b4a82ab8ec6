//! The `callback` scenario's checks against an in-process fake GMS server (hello, heartbeat,
//! `ACCESS_REQUEST`, `ACCESS_MATCH` over a small pool), honest or deliberately faulty: an
//! honest one passes; one that answers a match with another booking's request, or hands out a
//! number that is still booked, or forgets a booking before its expiry, fails the run with
//! exit 4 and the fault counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use deskmux_codec::msg::{self, ServerHello, gms, key};
use deskmux_codec::{ErrorCode, FrameDecoder, Head, Kind, Service, encode_with, error_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    /// Every 5th match returns the data of another live booking (or a made-up one).
    WrongMatch,
    /// Numbers are handed out without checking that they are free.
    NoLocking,
    /// Every 5th match answers `NOT_FOUND` although the booking is live.
    Forget,
}

/// A booking: (caller, user data token).
type Book = (String, String);

#[derive(Default)]
struct Pool {
    /// number → booking.
    held: HashMap<String, Book>,
    next: u64,
    matches: u64,
}

const POOL: u64 = 500;

fn book(pool: &Mutex<Pool>, fault: Fault, caller: &str, token: &str) -> Option<String> {
    let mut p = pool.lock().unwrap();
    let n = (0..POOL)
        .map(|i| format!("+1999{:04}", (p.next + i) % POOL))
        .find(|n| fault == Fault::NoLocking || !p.held.contains_key(n))?;
    p.next = (p.next + 1) % if fault == Fault::NoLocking { 3 } else { POOL };
    p.held
        .insert(n.clone(), (caller.to_string(), token.to_string()));
    Some(n)
}

/// The booking a match gets, if any.
fn take(pool: &Mutex<Pool>, fault: Fault, number: &str) -> Option<Book> {
    let mut p = pool.lock().unwrap();
    p.matches += 1;
    let faulty = p.matches.is_multiple_of(5);
    match fault {
        Fault::Forget if faulty => None,
        Fault::WrongMatch if faulty => {
            p.held.remove(number)?;
            Some(("+0".into(), "someone-else".into()))
        }
        _ => p.held.remove(number),
    }
}

async fn serve(listener: TcpListener, fault: Fault) {
    let pool = Arc::new(Mutex::new(Pool::default()));
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut dec = FrameDecoder::default();
            let mut rbuf = BytesMut::with_capacity(4096);
            let mut out = BytesMut::new();
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
                    let b = f.body();
                    match (h.service, h.msg_type) {
                        (Service::Control, msg::control::HELLO) => {
                            let sh = ServerHello {
                                session: 1,
                                max_frame: 1 << 21,
                                heartbeat_ms: 5000,
                                max_in_flight: 256,
                            };
                            encode_with(rh, &mut out, |w| sh.write(w)).unwrap();
                        }
                        (Service::Gms, gms::ACCESS_REQUEST) => {
                            let caller = b.str(key::CALLER).unwrap_or("").to_string();
                            let token = b
                                .list(key::USER_DATA)
                                .ok()
                                .and_then(|l| l.str("token").ok())
                                .unwrap_or("")
                                .to_string();
                            match book(&pool, fault, &caller, &token) {
                                Some(n) => encode_with(rh, &mut out, |w| {
                                    w.int(key::BOOKING, 1);
                                    w.str(key::NUMBER, &n)?;
                                    w.int(key::EXPIRES_MS, i64::MAX / 2);
                                    Ok(())
                                })
                                .map(drop)
                                .unwrap(),
                                None => out.extend_from_slice(
                                    error_response(
                                        &h,
                                        ErrorCode::UNAVAILABLE,
                                        "no free access number in group",
                                    )
                                    .as_bytes(),
                                ),
                            }
                        }
                        (Service::Gms, gms::ACCESS_MATCH) => {
                            let number = b.str(key::NUMBER).unwrap_or("").to_string();
                            match take(&pool, fault, &number) {
                                Some((caller, token)) => encode_with(rh, &mut out, |w| {
                                    w.int(key::BOOKING, 1);
                                    w.str(key::GROUP, "callback")?;
                                    w.str(key::CALLER, &caller)?;
                                    w.list(key::USER_DATA, |l| l.str("token", &token).map(drop))?;
                                    Ok(())
                                })
                                .map(drop)
                                .unwrap(),
                                None => out.extend_from_slice(
                                    error_response(&h, ErrorCode::NOT_FOUND, "no booking matches")
                                        .as_bytes(),
                                ),
                            }
                        }
                        _ => {
                            let mut e: Head = rh;
                            e.body_len = 0;
                            out.extend_from_slice(&e.to_bytes());
                        }
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

fn start(fault: Fault) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
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
    rx.recv().unwrap()
}

/// Run 20 callback clients against a fake server with `fault`: (exit code, JSON).
fn run(fault: Fault) -> (i32, serde_json::Value) {
    let addr = start(fault);
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds.tsv");
    let lines: String = (0..20)
        .map(|i| format!("1\tfake-{i}\tpassword-{i}\n"))
        .collect();
    std::fs::write(&creds, lines).unwrap();
    let json = dir.path().join("out.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["run", "-s", "callback", "-q", "--threads", "1", "-n", "20"])
        .arg("--credentials")
        .arg(&creds)
        .args(["--site", &addr.to_string()])
        .args(["--rate", "200", "--think", "50ms"])
        .args([
            "--ramp",
            "0.2",
            "--warmup",
            "0.2",
            "--duration",
            "1",
            "--drain",
            "1",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap_or_default())
        .unwrap_or_else(|e| {
            panic!(
                "no json ({e}); stderr {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (out.status.code().unwrap_or(-1), v)
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v["gms"][k]
        .as_u64()
        .unwrap_or_else(|| panic!("no gms.{k}: {v:#}"))
}

#[test]
fn an_honest_server_passes() {
    let (code, v) = run(Fault::None);
    assert_eq!(code, 0, "{v:#}");
    assert!(n(&v, "matched") > 50, "{v:#}");
    assert_eq!(n(&v, "matched"), n(&v, "booked"), "{v:#}");
    assert_eq!(v["verification_failed"], false);
}

#[test]
fn a_match_returning_another_request_fails_the_run() {
    let (code, v) = run(Fault::WrongMatch);
    assert_eq!(code, 4, "{v:#}");
    assert!(n(&v, "wrong_matches") > 0, "{v:#}");
    assert_eq!(v["verification_failed"], true);
}

#[test]
fn a_number_handed_out_twice_fails_the_run() {
    let (code, v) = run(Fault::NoLocking);
    assert_eq!(code, 4, "{v:#}");
    assert!(n(&v, "double_booked") > 0, "{v:#}");
}

#[test]
fn a_booking_forgotten_before_its_expiry_fails_the_run() {
    let (code, v) = run(Fault::Forget);
    assert_eq!(code, 4, "{v:#}");
    assert!(n(&v, "lost_bookings") > 0, "{v:#}");
}
