//! `--payload BYTES` sets the size of each ping request's `ECHO` payload: the bytes really go
//! over the wire (counted by a relay between loadgen and the proxy), every answer is checked
//! to its last byte, and a payload too small to be unique is refused.

mod loadgen_support;
mod proxy_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use loadgen_support::*;
use proxy_support::*;

/// Copy `from` to `to`, counting the bytes into `n`, until either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream, n: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                n.fetch_add(k as u64, Ordering::Relaxed);
                if to.write_all(&buf[..k]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// A TCP relay to `target`; returns its address and the bytes counted each way
/// (towards the target, back from it).
fn relay(target: SocketAddr) -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (u, d) = (up.clone(), down.clone());
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { break };
            let Ok(s) = TcpStream::connect(target) else {
                continue;
            };
            let (c2, s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
            let (u, d) = (u.clone(), d.clone());
            std::thread::spawn(move || pump(c, s, u));
            std::thread::spawn(move || pump(s2, c2, d));
        }
    });
    (addr, up, down)
}

#[test]
fn payload_bytes_go_over_the_wire_and_come_back_checked() {
    let st = stack(1, 1, "");
    let (site, up, down) = relay(st.proxy.addr);
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path(), 4);
    let json = dir.path().join("out.json");
    let mut args = short_run(&site.to_string(), &creds, 4);
    args.extend(
        [
            "--payload",
            "20000",
            "--rate",
            "200",
            "--json",
            json.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let r = run(&strs(&args), dir.path());
    assert_eq!(r.code, Some(0), "{r:?}");
    let v = read_json(&json);
    assert_eq!(v["verification_failed"], false, "{v:#}");
    let echoes = v["requests"]["by_type"]["echo"].as_u64().unwrap();
    let ok = v["requests"]["ok"].as_u64().unwrap();
    assert!(echoes >= 100 && ok == echoes, "{v:#}");
    let (up, down) = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
    assert!(
        up >= echoes * 20_000 && up < echoes * 20_200 + 100_000,
        "{up} bytes sent for {echoes} echoes of 20,000 bytes"
    );
    assert!(
        down >= ok * 20_000,
        "{down} bytes back for {ok} answers of 20,000 bytes"
    );

    // Under 16 bytes a payload cannot carry its request's identity.
    let mut args = short_run(&site.to_string(), &creds, 4);
    args.extend(["--payload".into(), "15".into()]);
    let r = run(&strs(&args), dir.path());
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("16"), "{r:?}");
}
