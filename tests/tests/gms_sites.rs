//! Two GMS sites (independent core-servers with pools that do not intersect), loadgen's
//! `callback` clients over both (`--site A --site B`), and site A killed with `kill -9` in the
//! middle of the run: the clients retry site B for their requests, calls are still matched
//! there, every match returns its own request, no number is handed to two clients at once, and
//! each booking takes effect once (site B's own counters and data file agree with what the
//! clients were told, booking for booking and match for match).

mod gms_support;
mod loadgen_support;
mod proxy_support;

use std::time::Duration;

use gms_support::site::{self, Site};
use loadgen_support::{read_json, start, strs};

#[test]
fn a_site_killed_mid_run_fails_over_and_matches_stay_right() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    // Pools big enough for the load: exhaustion is not what this test is about.
    let (ca, cb) = (
        site::configure(&da, 0, 200, 30_000),
        site::configure(&db, 1, 200, 30_000),
    );
    // The two sites' pools do not intersect, as `--check-config --other-site` requires.
    let check = std::process::Command::new(deskmux_tests::procs::bin_path("core-server"))
        .args(["--config", ca.to_str().unwrap(), "--check-config"])
        .args(["--other-site", cb.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let mut a = Site::start(&ca);
    let b = Site::start(&cb);
    let creds = deskmux_tests::creds::loadgen_file(dir.path(), 1, site::TOKEN1, 40).unwrap();
    let json = dir.path().join("out.json");
    let args: Vec<String> = [
        "run",
        "-s",
        "callback",
        "--credentials",
        creds.to_str().unwrap(),
        "--site",
        &a.addr.to_string(),
        "--site",
        &b.addr.to_string(),
        "-n",
        "40",
        "--threads",
        "1",
        "--rate",
        "100",
        "--think",
        "200ms",
        "--ramp",
        "0.5",
        "--warmup",
        "0.5",
        "--duration",
        "6",
        "--drain",
        "3",
        "--connect-timeout",
        "2",
        "--json",
        json.to_str().unwrap(),
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let lg = start(&strs(&args), dir.path());
    // Kill site A once it has matched calls (the run is under way on both sites).
    assert!(
        deskmux_tests::wait_until(Duration::from_secs(30), || a.counter("matched") >= 20),
        "site A matched nothing in 30 s"
    );
    let booked_a_before = a.counter("booked");
    a.proc.kill();
    let matched_b_at_kill = b.counter("matched");
    let r = lg.finish(Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "{r:?}");
    let v = read_json(&json);
    let g = &v["gms"];
    let n = |k: &str| g[k].as_u64().unwrap_or_else(|| panic!("no gms.{k}: {g:#}"));
    // Every match returned its own request; nothing was lost or double-booked.
    assert_eq!(n("wrong_matches"), 0, "{g:#}");
    assert_eq!(n("lost_bookings"), 0, "{g:#}");
    assert_eq!(n("double_booked"), 0, "{g:#}");
    assert_eq!(v["requests"]["wrong"].as_u64(), Some(0), "{v:#}");
    // Clients of site A retried site B, and B kept matching after A died.
    assert!(n("retried_other_site") > 0, "{g:#}");
    let sites = g["sites"].as_array().unwrap();
    let (booked_b, matched_b) = (
        sites[1]["booked"].as_u64().unwrap(),
        sites[1]["matched"].as_u64().unwrap(),
    );
    assert!(
        b.counter("matched") > matched_b_at_kill,
        "no match on site B after site A was killed"
    );
    // The effect happened once: site B booked exactly what its clients were told it booked,
    // and matched each of those bookings once (B never failed, so no answer went missing).
    assert_eq!(b.counter("booked"), booked_b, "{g:#}");
    assert_eq!(b.counter("matched"), matched_b, "{g:#}");
    let left_b = booked_b - matched_b;
    let mut b = b;
    b.proc.kill();
    let audit_b = site::audit(&b.config);
    assert_eq!(audit_b["made"].as_u64(), Some(booked_b), "{audit_b}");
    assert_eq!(
        audit_b["remaining"].as_u64(),
        Some(left_b),
        "site B's data file holds exactly its unmatched bookings: {audit_b} {g:#}"
    );
    // Site A's acknowledged bookings survived the kill -9 in its data file.
    let audit_a = site::audit(&a.config);
    let booked_a = sites[0]["booked"].as_u64().unwrap();
    assert!(
        audit_a["made"].as_u64().unwrap() >= booked_a.max(booked_a_before),
        "site A lost acknowledged bookings: {audit_a} {g:#}"
    );
}
