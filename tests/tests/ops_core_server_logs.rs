//! core-server's logs as an operator's collector sees them: `--log-format json` writes one
//! JSON object per line with no terminal colour codes (stderr is a pipe here), and the lines a
//! peer can provoke (here: links refused for a bad secret) are rate-limited, with the number
//! held back reported on a later line (`suppressed`), so a guessing loop cannot flood the log
//! and nothing vanishes without a count.

mod core_server_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use core_server_support::*;
use deskmux_codec::ErrorCode;

#[test]
fn json_lines_without_colour_and_refusals_rate_limited_with_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "");
    let mut child = Command::new(bin())
        .args(["--config", cfg.to_str().unwrap(), "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let addr: std::net::SocketAddr = first
        .trim()
        .strip_prefix("LISTENING ")
        .unwrap_or_else(|| panic!("{first}"))
        .parse()
        .unwrap();

    // Refused links until a line reports held-back ones (a second window has begun), bounded.
    let refused_lines = |lines: &[String]| -> Vec<serde_json::Value> {
        lines
            .iter()
            .map(|l| {
                assert!(!l.contains('\u{1b}'), "colour code in {l:?}");
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
            })
            .filter(|v| {
                v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("link refused"))
            })
            .collect()
    };
    let end = Instant::now() + WAIT;
    let mut attempts = 0u64;
    loop {
        let r = Client::connect(addr).link_hello(b"not-the-secret-not-the-secret-000");
        err(&r, ErrorCode::AUTH_FAILED);
        attempts += 1;
        let seen = refused_lines(&lines.lock().unwrap());
        if seen
            .iter()
            .any(|v| v["fields"]["suppressed"].as_u64() > Some(0))
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "no line ever reported held-back refusals"
        );
    }
    let seen = refused_lines(&lines.lock().unwrap());
    let held: u64 = seen
        .iter()
        .map(|v| v["fields"]["suppressed"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        (seen.len() as u64) < attempts,
        "{} lines for {attempts} refusals",
        seen.len()
    );
    // Every refusal so far is a line or counted in one (the last ones may still be held).
    assert!(seen.len() as u64 + held <= attempts);
    assert!(held > 0);
    let _ = child.kill();
    let _ = child.wait();
}
