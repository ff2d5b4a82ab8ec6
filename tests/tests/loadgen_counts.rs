//! loadgen's request counts reconcile with the proxy's: every request a run writes through a
//! real proxy (logins included, which `requests.sent` leaves out) is in the JSON's
//! `requests.by_type`, and their sum per service equals the change of the proxy's
//! `deskmux_proxy_requests_total{service}` over the run — for the ping scenario and for the
//! agent mix, whose steps span both services.

mod proxy_support;

use std::net::SocketAddr;
use std::time::Duration;

use deskmux_tests::Proc;
use proxy_support::*;

/// `deskmux_proxy_requests_total{service=...}` summed over the workers (supervisor's merged
/// `/metrics`).
fn proxy_requests(admin: SocketAddr, service: &str) -> u64 {
    let (_, body) = http_get(admin, "/metrics");
    let label = format!("service=\"{service}\"");
    body.lines()
        .filter(|l| l.starts_with("deskmux_proxy_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Run loadgen against `site` with `args`; returns its summary (exit code 0 checked).
fn run(site: SocketAddr, n: usize, args: &[&str]) -> serde_json::Value {
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("out.json");
    let creds = deskmux_tests::creds::loadgen_file(out.path(), T1, TOKEN1, n).unwrap();
    let (site, n) = (site.to_string(), n.to_string());
    let mut all = vec![
        "run",
        "--credentials",
        creds.to_str().unwrap(),
        "--site",
        &site,
        "-n",
        &n,
        "--threads",
        "1",
        "--ramp",
        "0.5",
        "--warmup",
        "0.5",
        "--drain",
        "3",
        "-q",
        "--json",
        json.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let mut lg = Proc::spawn("loadgen", &all).unwrap();
    let code = lg.wait_exit(Duration::from_secs(60)).unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("loadgen json")).unwrap();
    assert_eq!(code, Some(0), "{v:#}");
    v
}

/// Run loadgen and check its per-service counts against the proxy's counter changes.
fn reconciles(st: &Stack, n: usize, args: &[&str]) -> serde_json::Value {
    let admin = st.proxy.admin;
    let before = ["interaction", "ucs"].map(|s| proxy_requests(admin, s));
    let v = run(st.proxy.addr, n, args);
    let by_service = &v["requests"]["by_service"];
    let want = ["interaction", "ucs"].map(|s| by_service[s].as_u64().unwrap_or(0));
    // Every request was answered (checked by the exit code and `lost` below), so the proxy
    // counted them all before answering; the wait only covers the metrics scrape.
    let mut got = [0; 2];
    let matched = wait_until(Duration::from_secs(10), || {
        got = [0, 1]
            .map(|i| proxy_requests(admin, ["interaction", "ucs"][i]).saturating_sub(before[i]));
        got == want
    });
    assert!(
        matched,
        "proxy counted {got:?} (interaction, ucs), loadgen reports {want:?}: {v:#}"
    );
    assert_eq!(v["requests"]["lost"], 0, "{v:#}");
    // The per-type counts are what the per-service ones sum.
    let by_type = v["requests"]["by_type"].as_object().unwrap();
    let non_control: u64 = by_type
        .iter()
        .filter(|(k, _)| !k.contains("heartbeat") && *k != "other_control")
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(non_control, want.iter().sum::<u64>(), "{v:#}");
    v
}

#[test]
fn per_type_counts_equal_the_proxys_request_counter() {
    let st = stack(2, 1, "");
    // Ping, logged in: echoes plus one AGENT_LOGIN per desktop.
    let v = reconciles(&st, 40, &["--rate", "400", "--duration", "2"]);
    let r = &v["requests"];
    assert_eq!(r["by_type"]["agent_login"], 40, "{v:#}");
    assert_eq!(r["by_type"]["echo"], r["sent"], "{v:#}");
    assert!(r["sent"].as_u64().unwrap() >= 700, "{v:#}");
    // The agent mix: steps over both services, submits from media servers.
    let v = reconciles(
        &st,
        40,
        &[
            "-s",
            "agent",
            "--submit-rate",
            "20",
            "--media-share",
            "0.1",
            "--duration",
            "3",
        ],
    );
    let t = &v["requests"]["by_type"];
    for k in ["agent_login", "agent_ready", "submit"] {
        assert!(t[k].as_u64().unwrap_or(0) > 0, "no {k}: {v:#}");
    }
    assert!(
        v["requests"]["by_service"]["ucs"].as_u64().unwrap_or(0) > 0,
        "{v:#}"
    );
}

/// An open loop the stack cannot keep up with: one media server asked for 20,000 submits a
/// second, one in flight. The submits still owed when the window closes are counted unsent
/// (the target missed, said so), not sent into the drain; an invite still queued then is
/// left alone. So the drain's end finds no request just sent, and nothing counts as lost
/// that the stack did not lose.
#[test]
fn submits_owed_at_the_end_are_unsent_not_lost() {
    let st = stack(2, 1, "");
    let v = run(
        st.proxy.addr,
        10,
        &[
            "-s",
            "agent",
            "--submit-rate",
            "20000",
            "--media-share",
            "0.1",
            "--duration",
            "2",
        ],
    );
    let r = &v["requests"];
    assert_eq!(r["lost"], 0, "{v:#}");
    assert_eq!(r["wrong"], 0, "{v:#}");
    assert!(r["unsent"].as_u64().unwrap() > 0, "{v:#}");
    assert!(r["by_type"]["submit"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(v["target_missed"], true, "{v:#}");
}
