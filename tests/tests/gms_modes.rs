//! GMS over its HTTP/JSON API, against a real core-server: each locking mode (a pool with
//! locking, round robin and random; no locking with access codes; no locking matched by the
//! caller's number), exhaustion in the not-sent class, the match releasing the number, and
//! the account check.

mod gms_support;

use std::collections::HashSet;

use gms_support::*;
use serde_json::json;

const GROUPS: &str = r#"
[[gms.groups]]
tenant = 1
name = "pool"
selection = "round_robin"
numbers = ["+15550001", "+15550002", "+15550003"]

[[gms.groups]]
tenant = 1
name = "random"
numbers = ["+15551001", "+15551002"]
code_len = 4

[[gms.groups]]
tenant = 1
name = "shared"
locking = "none"
numbers = ["+15552000"]
code_len = 6

[[gms.groups]]
tenant = 1
name = "shared-by-caller"
locking = "none"
numbers = ["+15553000"]
"#;

fn start() -> (tempfile::TempDir, Gms) {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, key) = setup(dir.path(), GROUPS);
    let g = Gms::start(&cfg, &key);
    (dir, g)
}

#[test]
fn a_pool_locks_each_number_until_matched_then_gives_it_again() {
    let (_d, g) = start();
    // Round robin: the three numbers in turn, each once.
    let mut got = Vec::new();
    for i in 0..3 {
        let (code, b) = g.book(
            "pool",
            &format!("+44700000000{i}"),
            &[("order", &i.to_string())],
        );
        assert_eq!(code, 201, "{b}");
        assert!(b["code"].is_null(), "no code asked for: {b}");
        got.push(b["number"].as_str().unwrap().to_string());
    }
    assert_eq!(got, ["+15550001", "+15550002", "+15550003"]);
    // Exhausted: not sent, so the client may ask the other site.
    let (code, b) = g.book("pool", "+447000000009", &[]);
    assert_eq!(code, 503, "{b}");
    assert_eq!(b["retry"], "not_sent");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("no free access number"),
        "{b}"
    );
    // The switch matches the second call: the number and the caller find the request.
    let (code, m) = g.match_call("+15550002", Some("+447000000001"), None);
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["group"], "pool");
    assert_eq!(m["caller"], "+447000000001");
    assert_eq!(m["user_data"], json!({"order": "1"}));
    // Matched once: the booking is gone, and its number free again.
    let (code, _) = g.match_call("+15550002", Some("+447000000001"), None);
    assert_eq!(code, 404);
    let (code, b) = g.book("pool", "+447000000010", &[]);
    assert_eq!(code, 201, "{b}");
    assert_eq!(b["number"], "+15550002");
    // A call to a booked number from another caller takes nobody's data.
    let (code, _) = g.match_call("+15550001", Some("+449999999999"), None);
    assert_eq!(code, 404);
    let (code, m) = g.match_call("+15550001", Some("+447000000000"), None);
    assert_eq!(code, 200, "{m}");
}

#[test]
fn a_random_pool_with_codes_matches_by_number_and_code() {
    let (_d, g) = start();
    let (c1, a) = g.book("random", "+447100000001", &[("k", "a")]);
    let (c2, b) = g.book("random", "+447100000002", &[("k", "b")]);
    assert_eq!((c1, c2), (201, 201), "{a} {b}");
    let numbers: HashSet<&str> = [a["number"].as_str().unwrap(), b["number"].as_str().unwrap()]
        .into_iter()
        .collect();
    assert_eq!(
        numbers.len(),
        2,
        "a pool never gives one number twice: {a} {b}"
    );
    let code = a["code"].as_str().unwrap();
    assert_eq!(code.len(), 4);
    assert!(code.chars().all(|c| c.is_ascii_digit()));
    // The wrong code matches nothing; the right one does, from any caller.
    let wrong = if code == "0000" { "1111" } else { "0000" };
    let (st, _) = g.match_call(a["number"].as_str().unwrap(), None, Some(wrong));
    assert_eq!(st, 404);
    let (st, m) = g.match_call(
        a["number"].as_str().unwrap(),
        Some("+440000000000"),
        Some(code),
    );
    assert_eq!(st, 200, "{m}");
    assert_eq!(m["user_data"], json!({"k": "a"}));
}

#[test]
fn without_locking_one_number_serves_many_told_apart_by_code_or_caller() {
    let (_d, g) = start();
    let mut booked = Vec::new();
    for i in 0..20 {
        let (st, b) = g.book(
            "shared",
            &format!("+4472000000{i:02}"),
            &[("i", &i.to_string())],
        );
        assert_eq!(st, 201, "{b}");
        assert_eq!(b["number"], "+15552000");
        booked.push((i, b["code"].as_str().unwrap().to_string()));
    }
    let codes: HashSet<&String> = booked.iter().map(|(_, c)| c).collect();
    assert_eq!(
        codes.len(),
        20,
        "codes are unique among one number's bookings"
    );
    // Matched in reverse order, each by its code: each returns its own request.
    for (i, code) in booked.iter().rev() {
        let (st, m) = g.match_call("+15552000", None, Some(code));
        assert_eq!(st, 200, "{m}");
        assert_eq!(m["user_data"], json!({"i": i.to_string()}));
    }
    // Without codes, the caller's number tells them apart.
    for i in 0..3 {
        let (st, _) = g.book(
            "shared-by-caller",
            &format!("+44730000000{i}"),
            &[("i", &i.to_string())],
        );
        assert_eq!(st, 201);
    }
    let (st, m) = g.match_call("+15553000", Some("+447300000001"), None);
    assert_eq!(st, 200, "{m}");
    assert_eq!(m["user_data"], json!({"i": "1"}));
    let (st, _) = g.match_call("+15553000", None, None);
    assert_eq!(st, 400, "a match needs a caller or a code");
}

#[test]
fn the_account_is_checked_and_requests_are_validated() {
    let (_d, g) = start();
    let body = json!({"group": "pool", "caller": "+44"});
    let (st, b) = post_as(
        g.http,
        "/gms/v1/tenants/1/access",
        "mobile-gw",
        "dmk_wrong",
        &body,
    );
    assert_eq!((st, b["retry"].as_str()), (401, Some("rejected")));
    let (st, _) = post_as(g.http, "/gms/v1/tenants/1/access", "nobody", &g.key, &body);
    assert_eq!(st, 401);
    // The key is tenant 1's: tenant 2's groups are out of its reach.
    let (st, _) = post_as(
        g.http,
        "/gms/v1/tenants/2/access",
        "mobile-gw",
        &g.key,
        &body,
    );
    assert_eq!(st, 401);
    let (st, b) = g.book("no-such-group", "+44", &[]);
    assert_eq!(st, 404, "{b}");
    let (st, b) = g.post(
        "/gms/v1/tenants/1/access",
        &json!({"group": "pool", "caller": ""}),
    );
    assert_eq!(st, 400, "{b}");
    let (st, b) = g.post(
        "/gms/v1/tenants/1/access",
        &json!({"group": "pool", "caller": "+44", "user_data": {"n": 1}}),
    );
    assert_eq!(st, 400, "{b}");
    let (st, b) = g.post(
        "/gms/v1/tenants/1/access",
        &json!({"group": "pool", "caller": "+44", "extra": 1}),
    );
    assert_eq!(st, 400, "unknown fields are refused: {b}");
}

/// Sites keep pools that do not intersect (the seed's advice): `--check-config` with the
/// other sites' configurations refuses a pool that shares a number with one of them.
#[test]
fn check_config_refuses_pools_shared_with_another_site() {
    let dir = tempfile::tempdir().unwrap();
    let site = |name: &str, numbers: &str| {
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "listen = \"127.0.0.1:0\"\ndb = \"{}\"\n[gms]\n[[gms.groups]]\ntenant = 1\nname = \"cb\"\nnumbers = [{numbers}]\n[[tenants]]\nid = 1\nname = \"acme\"\n",
                dir.path().join(format!("{name}.db")).display()
            ),
        )
        .unwrap();
        p
    };
    let a = site("a", "\"+1001\", \"+1002\"");
    let b = site("b", "\"+2001\", \"+1002\"");
    let c = site("c", "\"+2001\", \"+2002\"");
    let check = |other: &std::path::Path| {
        std::process::Command::new(deskmux_tests::bin_path("core-server"))
            .args([
                "--config",
                a.to_str().unwrap(),
                "--check-config",
                "--other-site",
            ])
            .arg(other)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let out = check(&b);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("+1002 (tenant 1)"), "{err}");
    assert!(check(&c).status.success());
}
