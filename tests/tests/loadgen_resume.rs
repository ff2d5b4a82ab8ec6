//! loadgen's desktops resume their sessions (PROTOCOL.md §4.6): agent load through two
//! proxies, one of them killed with SIGKILL mid-run. Its desktops fail over to the other
//! proxy and take their sessions back with no second login; the report shows the resumes,
//! no unicast event lost or seen twice, and no wrong answer. With `--no-resume` the same
//! kill costs every desktop a fresh login.

mod proxy_support;

use std::net::SocketAddr;
use std::time::Duration;

use deskmux_tests::Proc;
use proxy_support::*;

/// `deskmux_proxy_requests_total` summed over services and workers.
fn proxy_requests(admin: SocketAddr) -> u64 {
    let (_, body) = http_get(admin, "/metrics");
    body.lines()
        .filter(|l| l.starts_with("deskmux_proxy_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// SIGKILL to a proxy's workers, then its supervisor.
fn kill_proxy(p: &mut Proxy) {
    let pid = p.proc.pid().expect("proxy running");
    let out = std::process::Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .expect("pgrep");
    for w in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", w])
            .status();
    }
    p.proc.kill();
}

/// Agent load on `n` desktops over proxies A then B; A is killed once it carried `busy`
/// requests. loadgen's JSON summary.
fn run_with_kill(extra: &[&str]) -> (Option<i32>, serde_json::Value, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (mut core, core_addr) = start_core_with(
        dir.path(),
        "core1",
        "127.0.0.1:0",
        "http_listen = \"127.0.0.1:0\"",
    );
    let http: SocketAddr = core
        .wait_line("HTTP ", START)
        .expect("core-server HTTP admin")
        .parse()
        .expect("HTTP address");
    let mut proxies = Vec::new();
    for name in ["a", "b"] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let cfg = proxy_config(&d, &[("[\"interaction\", \"ucs\"]", core_addr)], 1, 1, "");
        proxies.push(start_proxy(cfg));
    }
    let n = 40;
    let json = dir.path().join("out.json");
    let creds = deskmux_tests::creds::loadgen_file(dir.path(), T1, TOKEN1, n).unwrap();
    let (a, b) = (proxies[0].addr.to_string(), proxies[1].addr.to_string());
    let n_s = n.to_string();
    let mut args = vec![
        "run",
        "--credentials",
        creds.to_str().unwrap(),
        "--site",
        &a,
        "--site",
        &b,
        "-n",
        &n_s,
        "--threads",
        "1",
        "-s",
        "agent",
        "--submit-rate",
        "300",
        "--media-share",
        "0.1",
        "--ramp",
        "0.5",
        "--warmup",
        "0.5",
        "--duration",
        "6",
        "--drain",
        "3",
        "--backoff-base-ms",
        "20",
        "-q",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut lg = Proc::spawn("loadgen", &args).unwrap();
    // Half the desktops start on A (sites are spread by desktop id): kill it once it carries
    // agent work.
    let admin_a = proxies[0].admin;
    assert!(
        wait_until(Duration::from_secs(30), || proxy_requests(admin_a) >= 200),
        "no load through proxy A"
    );
    kill_proxy(&mut proxies[0]);
    let code = lg.wait_exit(Duration::from_secs(90)).unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("loadgen json")).unwrap();
    eprintln!(
        "exit {code:?}: clients {} requests.by_type {}",
        v["clients"], v["requests"]["by_type"]
    );
    // Sessions the server still holds once no desktop is attached any more (every one gone):
    // those it keeps for a resume.
    let gauge = |body: &str, name: &str| {
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|x| x as u64)
    };
    let mut n = u64::MAX;
    let settled = wait_until(Duration::from_secs(10), || {
        let (_, body) = http_get(http, "/metrics");
        let held = gauge(&body, "deskmux_core_sessions");
        let detached = gauge(&body, "deskmux_core_detached_sessions");
        n = detached.unwrap_or(u64::MAX);
        held.is_some() && held == detached
    });
    assert!(settled, "sessions still attached after loadgen exited");
    (code, v, n)
}

#[test]
fn desktops_resume_through_the_other_proxy() {
    let (code, v, detached) = run_with_kill(&[]);
    assert_eq!(code, Some(0), "nothing lost or wrong: {v:#}");
    let c = &v["clients"];
    let e = &v["events"];
    assert!(
        c["dropped"].as_u64().unwrap() > 0,
        "the kill dropped desktops: {v:#}"
    );
    assert_eq!(
        c["resumed"], c["reconnects"],
        "every reconnect resumed: {v:#}"
    );
    assert_eq!(c["resume_refused"], 0, "{v:#}");
    // The kill's detached sessions were resumed; at the end of the run every connected desktop
    // said goodbye, so the server keeps a session for a resume only for a desktop whose last
    // drop it did not come back from before the run ended (none, unless the machine is slow).
    // One more kind can be left: a desktop whose first hello went through proxy A just before
    // the kill got a session on the server, but never its answer; loadgen counts that as a
    // failed connection attempt (not a drop) and opens a fresh session through B, so the
    // server keeps the unanswered one detached for its grace. At most one per failed attempt.
    let away = c["dropped"].as_u64().unwrap() - c["reconnects"].as_u64().unwrap();
    let unanswered = c["failed_attempts"].as_u64().unwrap();
    assert!(
        detached >= away && detached <= away + unanswered,
        "sessions left detached on the server: {detached}, desktops away {away}, \
         failed attempts {unanswered}: {v:#}"
    );
    assert_eq!(
        v["back_after_drop_us"]["count"], c["dropped"],
        "each drop's time away is measured: {v:#}"
    );
    assert_eq!(c["login_failed"], 0, "{v:#}");
    assert_eq!(e["unicast_lost"], 0, "no unicast event lost: {v:#}");
    assert_eq!(e["unicast_duplicates"], 0, "none twice: {v:#}");
    assert_eq!(v["requests"]["wrong"], 0, "{v:#}");
    // Logins: one per agent, none after the kill (a login the kill cut off before its answer
    // is sent again, once).
    let logins = v["requests"]["by_type"]["agent_login"].as_u64().unwrap();
    let agents = 40 - 4; // --media-share 0.1: 4 media servers, which do not log in
    let cut_off = c["login_interrupted"].as_u64().unwrap();
    assert_eq!(logins, agents + cut_off, "no second login: {v:#}");
}

#[test]
fn without_resume_the_same_kill_costs_a_login_each() {
    let (_, v, _) = run_with_kill(&["--no-resume"]);
    let c = &v["clients"];
    assert_eq!(c["resumed"], 0, "{v:#}");
    let reconnects = c["reconnects"].as_u64().unwrap();
    assert!(reconnects > 0, "{v:#}");
    let logins = v["requests"]["by_type"]["agent_login"].as_u64().unwrap();
    assert!(logins > 36, "fresh logins after the kill: {v:#}");
}
