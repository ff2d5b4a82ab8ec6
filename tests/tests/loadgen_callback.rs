//! loadgen's `callback` scenario end to end, as `loadgen demo -s callback` runs it: core-server
//! with a GMS pool per tenant behind a proxy that routes the `gms` service, simulated mobile
//! clients booking access numbers and matching the calls, then the leak check against the
//! data file. A run with a pool large enough matches every call with its own request, the
//! bookings whose call never comes expire, and nothing leaks; a pool smaller than the numbers
//! held at once reports the exhaustion, and still matches right and leaks nothing.

mod loadgen_support;
mod proxy_support;

use loadgen_support::{read_json, run, strs};

/// `demo -s callback` with `pool` numbers per tenant, `abandon` of the bookings never dialled;
/// the exit code, the JSON summary and what loadgen said.
fn demo(
    pool: u64,
    abandon: &str,
    dir: &std::path::Path,
) -> (Option<i32>, serde_json::Value, String) {
    let json = dir.join(format!("pool-{pool}.json"));
    let args: Vec<String> = [
        "demo",
        "-s",
        "callback",
        "--abandon",
        abandon,
        "-n",
        "60",
        "--pool",
        &pool.to_string(),
        "--rate",
        "100",
        "--think",
        "200ms",
        "--booking-ttl",
        "2s",
        "--threads",
        "1",
        "--proxy-workers",
        "1",
        "--ramp",
        "0.5",
        "--warmup",
        "0.5",
        "--duration",
        "3",
        "--drain",
        "2",
        "--json",
        json.to_str().unwrap(),
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let r = run(&strs(&args), dir);
    let v = if json.exists() {
        read_json(&json)
    } else {
        serde_json::Value::Null
    };
    (r.code, v, format!("{r:?}"))
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v.pointer(k)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no {k} in {v:#}"))
}

#[test]
fn every_call_matches_its_own_request_and_nothing_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let (code, v, r) = demo(200, "0.2", dir.path());
    assert_eq!(code, Some(0), "{r}");
    let booked = n(&v, "/gms/booked");
    let abandoned = n(&v, "/gms/abandoned");
    assert!(booked > 150, "{v:#}");
    assert!(abandoned > 0, "{v:#}");
    assert_eq!(
        n(&v, "/gms/matched") + abandoned,
        booked,
        "every booking dialled was matched: {v:#}"
    );
    assert_eq!(n(&v, "/gms/exhausted"), 0, "{v:#}");
    for k in ["wrong_matches", "lost_bookings", "double_booked", "expired"] {
        assert_eq!(n(&v, &format!("/gms/{k}")), 0, "{k}: {v:#}");
    }
    assert!(v["gms"]["matches_per_s"].as_f64().unwrap() > 0.0, "{v:#}");
    // Request and match latency, through the report's per-operation figures.
    assert!(n(&v, "/ops/access_request/count") > 0, "{v:#}");
    assert!(n(&v, "/ops/access_match/count") > 0, "{v:#}");
    // The data file: every booking made was matched, or expired (the abandoned ones), and
    // none is left.
    let site = &v["gms"]["leak_check"]["sites"][0];
    assert_eq!(n(&v, "/gms/leak_check/leaked"), 0, "{v:#}");
    assert_eq!(n(site, "/made"), booked, "{site}");
    assert_eq!(n(site, "/remaining"), 0, "{site}");
    assert_eq!(n(site, "/server_matched"), booked - abandoned, "{site}");
    assert_eq!(n(site, "/server_expired"), abandoned, "{site}");
    assert_eq!(site["unaccounted"].as_i64(), Some(0), "{site}");
}

#[test]
fn a_pool_smaller_than_the_demand_is_exhausted_and_still_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // 100 requests/s held ~0.2 s each: ~20 numbers held at once over two tenants, against 4
    // per tenant.
    let (code, v, r) = demo(4, "0", dir.path());
    assert_eq!(code, Some(0), "{r}");
    assert!(n(&v, "/gms/exhausted") > 0, "{v:#}");
    assert!(n(&v, "/gms/not_booked") > 0, "{v:#}");
    assert!(n(&v, "/gms/matched") > 0, "{v:#}");
    for k in ["wrong_matches", "lost_bookings", "double_booked"] {
        assert_eq!(n(&v, &format!("/gms/{k}")), 0, "{k}: {v:#}");
    }
    assert_eq!(n(&v, "/gms/leak_check/leaked"), 0, "{v:#}");
    assert_eq!(
        n(&v, "/gms/leak_check/sites/0/made"),
        n(&v, "/gms/booked"),
        "{v:#}"
    );
}
