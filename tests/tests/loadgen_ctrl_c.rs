//! Ctrl-C (SIGINT) stops a run early and reports it over the window actually measured: the
//! throughput of a run planned for five minutes and stopped after a few seconds is its answers
//! divided by those seconds, not by five minutes.

mod loadgen_support;
mod proxy_support;

use std::time::{Duration, Instant};

use loadgen_support::*;
use proxy_support::*;

#[test]
fn sigint_reports_over_the_measured_window() {
    let st = stack(1, 1, "");
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path(), 10);
    let json = dir.path().join("out.json");
    let site = st.proxy.addr.to_string();
    let before = proxy_requests(st.proxy.admin);
    let began = Instant::now();
    let lg = start(
        &[
            "run",
            "--credentials",
            creds.to_str().unwrap(),
            "--site",
            &site,
            "-n",
            "10",
            "--threads",
            "1",
            "--ramp",
            "0",
            "--warmup",
            "0",
            "--duration",
            "300",
            "--drain",
            "3",
            "-q",
            "--json",
            json.to_str().unwrap(),
        ],
        dir.path(),
    );
    // The window starts at once (no ramp, no warm-up): wait until the proxy has answered a
    // good number of its requests.
    assert!(
        wait_until(Duration::from_secs(30), || proxy_requests(st.proxy.admin)
            >= before + 2_000),
        "loadgen sent too little"
    );
    let st_kill = std::process::Command::new("kill")
        .args(["-INT", &lg.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st_kill.success());
    let r = lg.finish(Duration::from_secs(30));
    // Everything from the start to the exit: more than the window loadgen measured.
    let wall = began.elapsed().as_secs_f64();
    assert_eq!(r.code, Some(0), "{r:?}");
    let v = read_json(&json);
    assert_eq!(v["stopped_early"], true, "{v:#}");
    let measured = v["requests"]["measured"].as_f64().unwrap();
    let tput = v["throughput_rps"].as_f64().unwrap();
    assert!(measured >= 1_000.0, "{v:#}");
    assert!(
        tput >= measured / wall,
        "throughput {tput} divides by more than the run lasted ({wall} s)"
    );
    let secs = v["measured_s"].as_f64().unwrap();
    assert!(
        secs > 0.0 && secs < wall,
        "measured {secs} s of {wall} s: {v:#}"
    );
    assert!(
        (tput - measured / secs).abs() <= 1e-6 * tput.max(1.0),
        "throughput {tput} is not {measured} / {secs} s"
    );
    assert!(
        r.stdout.contains("STOPPED EARLY") && r.stdout.contains("s measured (of 300.0 s planned)"),
        "{}",
        r.stdout
    );
}
