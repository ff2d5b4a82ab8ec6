//! Multi-site failover: two independent sites, each its own core-server and proxy with no
//! state shared, and loadgen's desktop client holding both in its site list. Killing site A
//! (proxy and server, SIGKILL) under load sends every desktop to site B.

mod proxy_support;

use std::time::Duration;

use deskmux_tests::Proc;
use proxy_support::*;

#[test]
fn desktops_fail_over_to_the_other_site() {
    let mut a = stack(1, 2, "");
    let b = stack(1, 2, "");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    const N: u64 = 40;
    let n = N.to_string();
    let (sa, sb) = (a.proxy.addr.to_string(), b.proxy.addr.to_string());
    let creds = deskmux_tests::creds::loadgen_file(dir.path(), T1, TOKEN1, N as usize).unwrap();
    let token = creds.display().to_string();
    let mut lg = Proc::spawn(
        "loadgen",
        &[
            "run",
            "--site",
            &sa,
            "--site",
            &sb,
            "-n",
            &n,
            "--credentials",
            &token,
            "--no-login",
            "--rate",
            "400",
            "--ramp",
            "0.5",
            "--warmup",
            "0.5",
            "--duration",
            "6",
            "--threads",
            "1",
            "-q",
            "--json",
            json.to_str().unwrap(),
        ],
    )
    .unwrap();
    // Wait until all desktops are connected, some of them to site A.
    assert!(
        wait_until(Duration::from_secs(15), || {
            let on_a = status(a.proxy.admin)["desktops"].as_u64().unwrap_or(0);
            let on_b = status(b.proxy.admin)["desktops"].as_u64().unwrap_or(0);
            on_a > 0 && on_a + on_b == N
        }),
        "desktops did not spread over both sites"
    );
    // Site A dies: proxy and server.
    a.proxy.proc.kill();
    a.core.kill();
    // Every desktop comes back, on site B.
    assert!(
        wait_until(
            Duration::from_secs(15),
            || status(b.proxy.admin)["desktops"].as_u64() == Some(N)
        ),
        "not every desktop reached site B: {}",
        status(b.proxy.admin)["desktops"]
    );
    let _ = lg.wait_exit(Duration::from_secs(30));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("loadgen json")).unwrap();
    assert_eq!(v["requests"]["wrong"], 0, "{v:#}");
    assert!(v["clients"]["reconnects"].as_u64().unwrap() >= 1, "{v:#}");
    // A desktop whose site died with a request in flight never gets that answer (window 1:
    // at most one each); everything else is answered.
    assert!(v["requests"]["lost"].as_u64().unwrap() <= N, "{v:#}");
    let ok = v["requests"]["ok"].as_u64().unwrap();
    assert!(ok > 0, "{v:#}");
    eprintln!(
        "site failover: ok {ok}, lost {}, errors {}, reconnects {}",
        v["requests"]["lost"], v["requests"]["errors"], v["clients"]["reconnects"]
    );
}
