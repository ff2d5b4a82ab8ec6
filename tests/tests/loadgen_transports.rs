//! loadgen drives QUIC and TLS desktops: through a real proxy (`[quic]`, rcgen certificate),
//! several UDP sockets per loadgen thread spread over the proxy's `SO_REUSEPORT` workers, every
//! request answered; a wrong CA fails every handshake with a certificate error; `loadgen
//! transports` runs the same load over TCP, TLS and QUIC.

mod proxy_support;

use std::time::Duration;

use deskmux_tests::Proc;
use deskmux_tests::secure_client::self_signed;
use proxy_support::*;

fn run_args<'a>(
    site: &'a str,
    ca: &'a str,
    n: &'a str,
    json: &'a str,
    credentials: &'a str,
) -> Vec<&'a str> {
    vec![
        "run",
        "--credentials",
        credentials,
        "--site",
        site,
        "--transport",
        "quic",
        "--ca",
        ca,
        "--quic-sockets",
        "16",
        "--threads",
        "1",
        "-n",
        n,
        "--no-login",
        "--rate",
        "400",
        "--ramp",
        "1",
        "--warmup",
        "0.5",
        "--duration",
        "4",
        "--drain",
        "3",
        "--connect-timeout",
        "3",
        "-q",
        "--json",
        json,
    ]
}

fn read_json(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).expect("loadgen json")).expect("json")
}

#[test]
fn quic_desktops_from_many_sockets_spread_over_workers_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "proxy").unwrap();
    let st = stack_in(dir, 2, 2, "", &cert.toml("quic"));
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("out.json");
    let hdr = out.path().join("latency.hlog");
    const N: u64 = 80;
    let (site, ca, n) = (
        st.proxy.addr.to_string(),
        cert.cert.display().to_string(),
        N.to_string(),
    );
    let creds = deskmux_tests::creds::loadgen_file(out.path(), T1, TOKEN1, N as usize).unwrap();
    let tenant = creds.display().to_string();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut args = run_args(&site, &ca, &n, json.to_str().unwrap(), &tenant);
    args.extend(["--hdr-log", hdr.to_str().unwrap()]);
    let mut lg = Proc::spawn("loadgen", &args).unwrap();
    // All desktops connected, on both workers: 16 client sockets (source ports) hash over the
    // two workers' UDP sockets.
    let mut per_worker = Vec::new();
    let spread = wait_until(Duration::from_secs(20), || {
        let s = status(st.proxy.admin);
        per_worker = s["workers"]
            .as_array()
            .map(|ws| {
                ws.iter()
                    .map(|w| w["status"]["desktops"].as_u64().unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default();
        per_worker.iter().sum::<u64>() == N
    });
    if !spread {
        let _ = lg.wait_exit(Duration::from_secs(40));
        panic!(
            "not all QUIC desktops connected: {per_worker:?}; loadgen: {:#}",
            read_json(&json)
        );
    }
    assert!(
        per_worker.len() == 2 && per_worker.iter().all(|&d| d > 0),
        "QUIC desktops did not spread over both workers: {per_worker:?}"
    );
    let code = lg.wait_exit(Duration::from_secs(40)).unwrap();
    let v = read_json(&json);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["transport"], "quic", "{v:#}");
    assert_eq!(v["clients"]["connected"], N, "{v:#}");
    assert_eq!(v["clients"]["failed"], 0, "{v:#}");
    assert_eq!(v["requests"]["lost"], 0, "{v:#}");
    assert_eq!(v["requests"]["wrong"], 0, "{v:#}");
    assert_eq!(v["requests"]["errors"], 0, "{v:#}");
    let ok = v["requests"]["ok"].as_u64().unwrap();
    assert!(ok >= 1000, "too few answers: {v:#}");
    // The HDR log's start time is the run's (it once said 3 s after the epoch).
    let log = std::fs::read_to_string(&hdr).unwrap();
    let start: f64 = log
        .lines()
        .find_map(|l| l.strip_prefix("#[StartTime: "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no StartTime in the HDR log: {log:.300}"));
    assert!(
        (start - started).abs() < 60.0,
        "HDR log start {start} is not the run's start (~{started})"
    );
    eprintln!("loadgen over quic: {ok} ok, per worker {per_worker:?}");
}

/// A short `loadgen run` over `transport` to a proxy whose certificate `ca` does not sign:
/// every desktop fails its handshake; returns the exit code and the summary.
fn run_untrusted(transport: &str, site: &str, ca: &str) -> (Option<i32>, serde_json::Value) {
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("out.json");
    let creds = deskmux_tests::creds::loadgen_file(out.path(), T1, TOKEN1, 5).unwrap();
    let tenant = creds.display().to_string();
    let mut args = run_args(site, ca, "5", json.to_str().unwrap(), &tenant);
    let t = args.iter().position(|a| *a == "--transport").unwrap();
    args[t + 1] = transport;
    // Short run: every attempt fails the same way.
    let d = args.iter().position(|a| *a == "--duration").unwrap();
    args[d + 1] = "1";
    let mut lg = Proc::spawn("loadgen", &args).unwrap();
    let code = lg.wait_exit(Duration::from_secs(40)).unwrap();
    (code, read_json(&json))
}

#[test]
fn a_certificate_loadgen_does_not_trust_fails_every_handshake_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "proxy").unwrap();
    let other = self_signed(dir.path(), "other").unwrap();
    let other_ca = other.cert.display().to_string();
    let quic = stack_in(dir, 1, 1, "", &cert.toml("quic"));
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "proxy").unwrap();
    let tls = stack_in(dir, 1, 1, "", &cert.toml("tls"));
    for (transport, st) in [("quic", &quic), ("tls", &tls)] {
        let (code, v) = run_untrusted(transport, &st.proxy.addr.to_string(), &other_ca);
        assert_eq!(
            code,
            Some(3),
            "{transport}: a run with no desktop connected must fail: {v:#}"
        );
        assert_eq!(v["clients"]["connected"], 0, "{transport}: {v:#}");
        assert_eq!(v["clients"]["failed"], 5, "{transport}: {v:#}");
        let samples = v["samples"].to_string();
        assert!(
            samples.contains(&format!("{transport}: "))
                && samples.to_lowercase().contains("certificate"),
            "{transport}: the failure should say the certificate is not trusted: {samples}"
        );
    }
    // The QUIC proxy is unaffected: a TCP desktop still works.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = deskmux_tests::TestClient::connect(quic.proxy.addr)
            .await
            .unwrap();
        c.hello_ok(T1, "tcp-after-bad-quic", TOKEN1).await.unwrap();
    });
}

#[test]
fn transports_runs_the_same_load_over_tcp_tls_and_quic() {
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("cmp.json");
    let mut lg = Proc::spawn(
        "loadgen",
        &[
            "transports",
            "--proxy-workers",
            "1",
            "-n",
            "50",
            "--threads",
            "1",
            "--quic-sockets",
            "4",
            "--ramp",
            "0.5",
            "--warmup",
            "0.5",
            "--duration",
            "2",
            "--drain",
            "3",
            "-q",
            "--json",
            json.to_str().unwrap(),
        ],
    )
    .unwrap();
    let code = lg.wait_exit(Duration::from_secs(90)).unwrap();
    let v = read_json(&json);
    assert_eq!(code, Some(0), "{v:#}");
    for t in ["tcp", "tls", "quic"] {
        let r = &v[t];
        assert_eq!(r["transport"], t, "{v:#}");
        assert_eq!(r["clients"]["connected"], 50, "{t}: {r:#}");
        assert_eq!(r["requests"]["lost"], 0, "{t}: {r:#}");
        assert_eq!(r["requests"]["wrong"], 0, "{t}: {r:#}");
        assert!(r["throughput_rps"].as_f64().unwrap() > 0.0, "{t}: {r:#}");
        assert!(
            r["server"]["proxy_cpu_us_per_request"].as_f64().unwrap() > 0.0,
            "{t}: {r:#}"
        );
    }
    for r in ["ratios_quic_over_tcp", "ratios_tls_over_tcp"] {
        let ratio = v[r]["throughput"].as_f64().unwrap();
        assert!(ratio > 0.0, "{r}: {v:#}");
    }
}
