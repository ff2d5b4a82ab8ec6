//! GMS bookings are safe: acknowledged only once durable (a `kill -9` in the middle of a
//! stream of bookings loses none that was acknowledged), the last free number asked for by
//! two clients at once goes to exactly one, and expiry frees numbers and leaves no booking
//! behind, while an expired booking is never matched.

mod gms_support;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use gms_support::*;

#[test]
fn the_last_free_number_goes_to_exactly_one_of_two_concurrent_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, key) = setup(
        dir.path(),
        "[[gms.groups]]\ntenant = 1\nname = \"one\"\nnumbers = [\"+15559999\"]\n",
    );
    let g = Arc::new(Gms::start(&cfg, &key));
    for round in 0..10 {
        let outcomes: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|i| {
                    let g = g.clone();
                    s.spawn(move || g.book("one", &format!("+44{round}{i}"), &[]))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<_> = outcomes.iter().filter(|(c, _)| *c == 201).collect();
        let lost: Vec<_> = outcomes.iter().filter(|(c, _)| *c == 503).collect();
        assert_eq!(
            (won.len(), lost.len()),
            (1, 1),
            "round {round}: {outcomes:?}"
        );
        // Free it again for the next round: the winner's call is matched.
        let caller = won[0].1["booking"].as_i64().map(|_| ());
        assert!(caller.is_some());
        let winner_caller = (0..2)
            .map(|i| format!("+44{round}{i}"))
            .find(|c| g.match_call("+15559999", Some(c), None).0 == 200);
        assert!(
            winner_caller.is_some(),
            "round {round}: the winner's booking matches"
        );
    }
}

#[test]
fn acknowledged_bookings_survive_kill_9_in_the_middle_of_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let numbers: Vec<String> = (0..400).map(|i| format!("\"+1556{i:04}\"")).collect();
    let (cfg, key) = setup(
        dir.path(),
        &format!(
            "[[gms.groups]]\ntenant = 1\nname = \"big\"\nbooking_ttl_ms = 3600000\nnumbers = [{}]\n",
            numbers.join(", ")
        ),
    );
    let mut g = Gms::start(&cfg, &key);
    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let http = g.http;
    let key2 = key.clone();
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let acked = acked.clone();
            let key = key2.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    let caller = format!("+44{t}{i:03}");
                    let body = serde_json::json!({"group": "big", "caller": caller, "user_data": {"t": t.to_string()}});
                    let (st, b) = post_as(http, "/gms/v1/tenants/1/access", "mobile-gw", &key, &body);
                    if st != 201 {
                        // The server died: what was not acknowledged is of unknown outcome.
                        return;
                    }
                    acked
                        .lock()
                        .unwrap()
                        .push((b["number"].as_str().unwrap().to_string(), caller));
                }
            })
        })
        .collect();
    // Kill once some bookings are acknowledged, while the others are still being made.
    let end = Instant::now() + WAIT;
    while acked.lock().unwrap().len() < 40 {
        assert!(Instant::now() < end, "no bookings acknowledged");
        std::thread::yield_now();
    }
    g.proc.kill();
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 40 && acked.len() < 400,
        "{} acknowledged",
        acked.len()
    );
    let g = Gms::start(&cfg, &key);
    for (number, caller) in &acked {
        let (st, m) = g.match_call(number, Some(caller), None);
        assert_eq!(
            st, 200,
            "acknowledged booking {number} for {caller} lost: {m}"
        );
    }
}

#[test]
fn expiry_frees_numbers_leaves_no_rows_and_is_never_matched() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, key) = setup(
        dir.path(),
        "[[gms.groups]]\ntenant = 1\nname = \"short\"\nbooking_ttl_ms = 1000\nnumbers = [\"+15557001\", \"+15557002\"]\n",
    );
    let g = Gms::start(&cfg, &key);
    let (a, ba) = g.book("short", "+4401", &[]);
    let (b, _) = g.book("short", "+4402", &[]);
    assert_eq!((a, b), (201, 201));
    assert_eq!(g.book("short", "+4403", &[]).0, 503, "both numbers booked");
    // Once they expire the pool hands numbers out again.
    let end = Instant::now() + WAIT;
    loop {
        let (st, _) = g.book("short", "+4404", &[]);
        if st == 201 {
            break;
        }
        assert_eq!(st, 503);
        assert!(Instant::now() < end, "the bookings never expired");
        std::thread::yield_now();
    }
    // The expired booking of +4401 is not matched (its number may be booked again by now,
    // for +4404, whose caller differs).
    let (st, _) = g.match_call(ba["number"].as_str().unwrap(), Some("+4401"), None);
    assert_eq!(st, 404);
    // And the sweep removes expired rows: only live bookings stay in the data file.
    if deskmux_tests::storage_mode::sqlite_only("the rows left are counted in the SQLite file") {
        return;
    }
    let db = dir.path().join("core.db");
    let end = Instant::now() + WAIT;
    loop {
        let rows: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM gms_bookings", [], |r| r.get(0))
            .unwrap();
        if rows <= 1 {
            break;
        }
        assert!(
            Instant::now() < end,
            "{rows} booking rows linger after expiry"
        );
        std::thread::yield_now();
    }
}
