//! Several database connections per instance (`[storage] connections`, PostgreSQL): one DB
//! worker (lane) per connection. Checked against a real PostgreSQL server: each session's
//! operations run on one lane, in the order they were submitted; the sessions are spread
//! over every lane; what one lane acknowledged, another reads; and a lane that is fenced
//! stops the instance (its owner told, whichever lane saw it).

// The one way the tests start a PostgreSQL server, shared with the whole-server tests.
#[path = "../../tests/pg.rs"]
mod pg;

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deskmux_core_server::db::{Db, Finish, Stopped, Work};
use deskmux_core_server::storage::postgres::PgStore;
use deskmux_core_server::storage::{Store, StoreError};

const WAIT: Duration = Duration::from_secs(20);
const LANES: usize = 3;

/// What each operation saw: (session, its sequence number, the lane's thread, committed).
type Seen = Arc<Mutex<Vec<(u64, u32, String, bool)>>>;

/// An operation of `session` numbered `n` that creates a contact named after both, and on
/// its answer records where it ran and whether it was committed.
fn op(session: u64, n: u32, seen: &Seen, done: &mpsc::Sender<()>) -> Work {
    let (seen, done) = (seen.clone(), done.clone());
    Box::new(move |s: &mut dyn Store| -> Finish {
        let lane = std::thread::current().name().unwrap_or("").to_string();
        let v = format!("s{session}-{n}");
        let made = s.contact_create(1, v.as_bytes(), &[("k".into(), v.clone())]);
        Box::new(move |committed: Result<(), &StoreError>| {
            let ok = committed.is_ok() && made.is_ok();
            seen.lock().unwrap().push((session, n, lane, ok));
            let _ = done.send(());
        })
    })
}

fn lanes_on(url: &str) -> Vec<Box<dyn Store>> {
    (0..LANES)
        .map(|_| Box::new(PgStore::connect(url).unwrap()) as Box<dyn Store>)
        .collect()
}

#[test]
fn postgres_lanes_keep_each_sessions_order_and_share_their_commits() {
    let pg = pg::PgServer::start();
    let url = pg.create("lanes");
    let db = Db::start_lanes(lanes_on(&url), 16, (10_000, usize::MAX), Box::new(|_| {})).unwrap();
    assert_eq!(db.lanes(), LANES);
    let seen: Seen = Arc::default();
    let (done_tx, done) = mpsc::channel();
    let (sessions, per) = (12u64, 20u32);
    // Interleaved, as a proxy link's sessions arrive.
    for n in 0..per {
        for session in 1..=sessions {
            db.try_submit_for(session, op(session, n, &seen, &done_tx), None, 0)
                .unwrap();
        }
    }
    let total = (sessions * u64::from(per)) as usize;
    let until = Instant::now() + WAIT;
    for i in 0..total {
        let left = until.saturating_duration_since(Instant::now());
        assert!(
            done.recv_timeout(left).is_ok(),
            "{i} of {total} answered within {WAIT:?}"
        );
    }
    let seen = seen.lock().unwrap();
    assert!(seen.iter().all(|s| s.3), "every operation committed");
    let mut lanes_used = BTreeSet::new();
    for session in 1..=sessions {
        let mine: Vec<_> = seen.iter().filter(|s| s.0 == session).collect();
        let order: Vec<u32> = mine.iter().map(|s| s.1).collect();
        assert_eq!(
            order,
            (0..per).collect::<Vec<_>>(),
            "session {session} answered in order"
        );
        let lanes: BTreeSet<&str> = mine.iter().map(|s| s.2.as_str()).collect();
        assert_eq!(lanes.len(), 1, "session {session} on one lane: {lanes:?}");
        lanes_used.extend(lanes.into_iter().map(str::to_string));
    }
    assert_eq!(
        lanes_used.len(),
        LANES,
        "the sessions spread over every lane: {lanes_used:?}"
    );
    // Acknowledged on its lane, read on another (a fresh connection reads them too).
    let (read_tx, read) = mpsc::channel();
    let reader: Work = Box::new(move |s: &mut dyn Store| -> Finish {
        let found = s
            .contact_find(1, "k", "s1-19", 0, 10, usize::MAX)
            .map(|v| v.len());
        Box::new(move |_| {
            let _ = read_tx.send(found.ok());
        })
    });
    // Session 1's lane is 1 % 3; session 2's is another.
    db.try_submit_for(2, reader, None, 0).unwrap();
    assert_eq!(read.recv_timeout(WAIT).unwrap(), Some(1));
    let mut fresh = PgStore::connect(&url).unwrap();
    assert_eq!(
        fresh
            .contact_find(1, "k", "s12-19", 0, 10, usize::MAX)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_fenced_lane_stops_the_instance_once() {
    let pg = pg::PgServer::start();
    let url = pg.create("fencedlanes");
    let mut stores = lanes_on(&url);
    // Every lane holds the instance's fencing epoch (as every connection holds its leases).
    for s in &mut stores {
        s.fence_acquire().unwrap();
    }
    let (stop_tx, stopped) = mpsc::channel();
    let db = Db::start_lanes(
        stores,
        16,
        (10_000, usize::MAX),
        Box::new(move |why| {
            let _ = stop_tx.send(matches!(why, Stopped::Fenced(_)));
        }),
    )
    .unwrap();
    // Only the last store's epoch is current: lanes 0 and 1 are fenced at their next batch.
    let seen: Seen = Arc::default();
    let (done_tx, done) = mpsc::channel();
    for session in [0u64, 1, 2] {
        db.try_submit_for(session, op(session, 0, &seen, &done_tx), None, 0)
            .unwrap();
    }
    for _ in 0..3 {
        done.recv_timeout(WAIT).expect("every operation answered");
    }
    // (Told once whichever lane stops first: `on_stop` is an `FnOnce` the lanes share.)
    assert_eq!(
        stopped.recv_timeout(WAIT),
        Ok(true),
        "the owner is told: fenced"
    );
    let seen = seen.lock().unwrap();
    let committed: Vec<u64> = seen.iter().filter(|s| s.3).map(|s| s.0).collect();
    assert_eq!(committed, [2], "only the current lane committed: {seen:?}");
    drop(db);
}
