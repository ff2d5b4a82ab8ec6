//! The storage contract ([`Store`]) checked the same way against both backends: SQLite (a temp
//! file) and PostgreSQL (a real server, started for the test). Each check runs against each,
//! so a backend that differs in any of them fails here rather than in a whole-system test.

// The one way the tests start a PostgreSQL server, shared with the whole-server tests.
#[path = "../../tests/pg.rs"]
mod pg;

use deskmux_core_server::auth::creds::{CredError, CredStore, Kind};
use deskmux_core_server::db::{Db, Finish, Stopped};
use deskmux_core_server::storage::config::Location;
use deskmux_core_server::storage::postgres::PgStore;
use deskmux_core_server::storage::sqlite::SqliteStore;
use deskmux_core_server::storage::{BookingRow, IxnRow, IxnState, Store, StoreError};

fn pairs(k: &str, v: &str) -> Vec<(String, String)> {
    vec![(k.to_string(), v.to_string())]
}

/// Every check, on stores opened by `open` (a second call opens a second store on the same
/// data, as a second instance would).
fn contract(open: &mut dyn FnMut() -> Box<dyn Store>) {
    let mut s = open();
    s.fence_acquire().unwrap();
    // Contacts, tenant-scoped, committed.
    s.begin().unwrap();
    s.fence_check().unwrap();
    let a = s
        .contact_create(1, b"attrs-a", &pairs("email", "a@x"))
        .unwrap();
    let b = s
        .contact_create(2, b"attrs-b", &pairs("email", "a@x"))
        .unwrap();
    s.commit().unwrap();
    assert_eq!(
        s.contact_get(1, a).unwrap().as_deref(),
        Some(&b"attrs-a"[..])
    );
    assert_eq!(
        s.contact_get(2, a).unwrap(),
        None,
        "another tenant's contact is not found"
    );
    assert_eq!(
        s.contact_get(2, b).unwrap().as_deref(),
        Some(&b"attrs-b"[..])
    );
    let found = s.contact_find(1, "email", "a@x", 0, 10, 1 << 20).unwrap();
    assert_eq!(found.iter().map(|c| c.id).collect::<Vec<_>>(), [a]);
    assert_eq!(
        s.contact_find(2, "email", "a@x", 0, 10, 1 << 20)
            .unwrap()
            .len(),
        1
    );
    // An operation rolled back to its savepoint leaves the others of its transaction.
    s.begin().unwrap();
    s.savepoint().unwrap();
    let kept = s.contact_create(1, b"kept", &pairs("k", "1")).unwrap();
    s.release().unwrap();
    s.savepoint().unwrap();
    let undone = s.contact_create(1, b"undone", &pairs("k", "2")).unwrap();
    s.rollback_to().unwrap();
    assert!(s.in_transaction());
    s.commit().unwrap();
    assert!(s.contact_get(1, kept).unwrap().is_some());
    assert!(s.contact_get(1, undone).unwrap().is_none());
    // Update, history, paging, delete.
    s.begin().unwrap();
    assert!(
        s.contact_put(1, a, b"attrs-a2", &pairs("email", "new@x"))
            .unwrap()
    );
    assert!(!s.contact_put(2, a, b"no", &[]).unwrap(), "not in tenant 2");
    let h1 = s
        .history_insert(1, a, 7, "first", "text one", 10)
        .unwrap()
        .unwrap();
    let h2 = s
        .history_insert(1, a, 8, "second", "text two", 11)
        .unwrap()
        .unwrap();
    assert_eq!(s.history_insert(2, a, 9, "x", "y", 12).unwrap(), None);
    s.commit().unwrap();
    assert!(
        s.contact_find(1, "email", "a@x", 0, 10, 1 << 20)
            .unwrap()
            .is_empty()
    );
    let page = s.history_list(1, a, None, 1, 1 << 20).unwrap().unwrap();
    assert_eq!(page.iter().map(|h| h.id).collect::<Vec<_>>(), [h2]);
    let next = s
        .history_list(1, a, Some(h2), 10, 1 << 20)
        .unwrap()
        .unwrap();
    assert_eq!(next.iter().map(|h| h.id).collect::<Vec<_>>(), [h1]);
    assert_eq!(s.content_get(1, h1).unwrap().as_deref(), Some("text one"));
    assert_eq!(s.content_get(2, h1).unwrap(), None);
    s.begin().unwrap();
    assert!(s.contact_delete(1, a).unwrap());
    s.commit().unwrap();
    assert_eq!(
        s.content_get(1, h1).unwrap(),
        None,
        "history goes with its contact"
    );
    // Interactions.
    s.begin().unwrap();
    for (id, state) in [
        (5u64, IxnState::Queued),
        (6, IxnState::Owned),
        (7, IxnState::Completed),
    ] {
        s.ixn_put(&IxnRow {
            id,
            tenant: 3,
            queue: "q".into(),
            props: vec![1, 2],
            state,
            owner: (state == IxnState::Owned).then(|| "agent".into()),
            qpos: id as i64,
        })
        .unwrap();
    }
    s.commit().unwrap();
    let open_rows = s.ixn_load().unwrap();
    assert_eq!(open_rows.iter().map(|r| r.id).collect::<Vec<_>>(), [5, 6]);
    assert_eq!(open_rows[1].owner.as_deref(), Some("agent"));
    assert!(
        s.ixn_max_id().unwrap() >= 7,
        "new ids go above the stored ones"
    );
    // GMS bookings: live ones count, expired ones do not and are removed.
    s.begin().unwrap();
    let row = |number: &str, expires_us: i64| BookingRow {
        id: 0,
        tenant: 1,
        group: "g".into(),
        number: number.into(),
        code: Some("1234".into()),
        caller: "+44".into(),
        user_data: vec![9],
        booked_us: 1,
        expires_us,
    };
    let live = s.gms_book(&row("+1", 1_000)).unwrap();
    s.gms_book(&row("+2", 100)).unwrap();
    s.commit().unwrap();
    s.begin().unwrap();
    assert_eq!(
        s.gms_in_use(1, "g", 500).unwrap(),
        [("+1".to_string(), Some("1234".to_string()))]
    );
    let mine = s.gms_for_number(1, "+1", 500).unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        (mine[0].id, mine[0].user_data.as_slice()),
        (live, &[9u8][..])
    );
    assert!(s.gms_for_number(2, "+1", 500).unwrap().is_empty());
    assert_eq!(s.gms_expire(500).unwrap(), 1);
    assert!(s.gms_release(live).unwrap());
    assert!(!s.gms_release(live).unwrap());
    s.commit().unwrap();
    assert_eq!(s.gms_count(None).unwrap(), 0);

    // A second instance on the same data sees what the first committed, and once it takes
    // the data over, the first may write no more.
    let mut other = open();
    assert!(other.contact_get(1, kept).unwrap().is_some());
    other.fence_acquire().unwrap();
    s.begin().unwrap();
    let fenced = s.fence_check();
    s.rollback();
    assert!(matches!(fenced, Err(StoreError::Fenced(_))), "{fenced:?}");
    other.begin().unwrap();
    other.fence_check().unwrap();
    other.commit().unwrap();
}

#[test]
fn sqlite_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    contract(&mut || Box::new(SqliteStore::open(&path).unwrap()) as Box<dyn Store>);
}

#[test]
fn postgres_keeps_the_contract() {
    let pg = pg::PgServer::start();
    let url = pg.create("contract");
    contract(&mut || Box::new(PgStore::connect(&url).unwrap()) as Box<dyn Store>);
}

#[test]
fn postgres_migrates_once_and_refuses_a_newer_schema() {
    let pg = pg::PgServer::start();
    let url = pg.create("schema");
    drop(PgStore::connect(&url).unwrap());
    drop(PgStore::connect(&url).unwrap());
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let v: i64 = c
        .query_one("SELECT version FROM deskmux_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, 4);
    assert_eq!(
        c.query_one("SELECT count(*) FROM deskmux_schema", &[])
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    c.batch_execute("UPDATE deskmux_schema SET version = 99")
        .unwrap();
    let e = PgStore::connect(&url).unwrap_err().to_string();
    assert!(e.contains("newer than this core-server knows"), "{e}");
}

/// On PostgreSQL a takeover (`fence_acquire`) waits for the batch the old primary is running
/// to end, and the old primary's next batch is fenced: no batch of the old one commits after
/// the new one has its epoch, so what the new one then loads is final.
#[test]
fn postgres_takeover_waits_for_the_batch_in_flight() {
    let pg = pg::PgServer::start();
    let url = pg.create("takeover");
    let mut old = PgStore::connect(&url).unwrap();
    old.fence_acquire().unwrap();
    old.begin().unwrap();
    old.fence_check().unwrap();
    let id = old.contact_create(1, b"late", &pairs("k", "late")).unwrap();
    let url2 = url.clone();
    let newer = std::thread::spawn(move || {
        let mut s = PgStore::connect(&url2).unwrap();
        s.fence_acquire().unwrap();
        s
    });
    // Wait (bounded) until the takeover is blocked on the old batch's lock.
    let mut blocked = false;
    for _ in 0..1000 {
        let waiting = pg.psql(
            "takeover",
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
        );
        if waiting == "1" {
            blocked = true;
            break;
        }
        assert!(
            !newer.is_finished(),
            "the takeover did not wait for the batch"
        );
        std::thread::yield_now();
    }
    assert!(blocked, "the takeover never waited on the batch's lock");
    old.commit().unwrap();
    let mut newer = newer.join().unwrap();
    assert_eq!(
        newer.contact_get(1, id).unwrap().as_deref(),
        Some(&b"late"[..]),
        "the batch that was in flight is there for the new primary to load"
    );
    old.begin().unwrap();
    assert!(matches!(old.fence_check(), Err(StoreError::Fenced(_))));
    old.rollback();
}

/// The credential store keeps the same contract on both backends.
fn creds_contract(at: &Location) {
    let mut s = CredStore::open_at(at).unwrap();
    assert_eq!(s.get(1, "a").unwrap(), None);
    s.put(1, "a", Kind::Password, "h1").unwrap();
    let c = s.get(1, "a").unwrap().unwrap();
    assert_eq!(
        (c.kind, c.generation, c.disabled),
        (Kind::Password, 1, false)
    );
    assert_eq!(s.get(2, "a").unwrap(), None, "tenants are apart");
    s.set_disabled(1, "a", true).unwrap();
    let c = s.get(1, "a").unwrap().unwrap();
    assert_eq!((c.generation, c.disabled), (2, true));
    s.put(1, "a", Kind::ApiKey, "h2").unwrap();
    let c = s.get(1, "a").unwrap().unwrap();
    assert_eq!((c.kind, c.generation, c.disabled), (Kind::ApiKey, 3, false));
    assert!(matches!(
        s.set_disabled(1, "nobody", true),
        Err(CredError::NotFound { .. })
    ));
    assert!(s.put(0, "x", Kind::Password, "h").is_err());
    s.in_transaction(|s| s.put(2, "b", Kind::Password, "h3"))
        .unwrap();
    let r = s.in_transaction(|s| {
        s.put(2, "c", Kind::Password, "h4")?;
        Err::<(), _>(CredError::Invalid("stop".into()))
    });
    assert!(r.is_err());
    assert_eq!(s.get(2, "c").unwrap(), None, "rolled back");
    let all = s.list(None).unwrap();
    assert_eq!(
        all.iter()
            .map(|l| (l.tenant, l.agent.as_str(), l.generation))
            .collect::<Vec<_>>(),
        [(1, "a", 3), (2, "b", 1)]
    );
    assert_eq!(s.list(Some(2)).unwrap().len(), 1);
    // One token key for every store on the same data (a second instance signs alike).
    let k1 = s.token_key().unwrap();
    let k2 = CredStore::open_at(at).unwrap().token_key().unwrap();
    assert_eq!(k1.len(), 32);
    assert_eq!(k1, k2);
    // A second store sees the first one's committed changes at once (logins read afresh).
    let mut other = CredStore::open_at(at).unwrap();
    assert_eq!(other.get(2, "b").unwrap().map(|c| c.generation), Some(1));
}

#[test]
fn sqlite_credentials_keep_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    creds_contract(&Location::Sqlite {
        path: dir.path().join("c.db"),
        opts: Default::default(),
    });
}

#[test]
fn postgres_credentials_keep_the_contract() {
    let pg = pg::PgServer::start();
    let url = pg.create("creds");
    creds_contract(&Location::Postgres(Box::new(url.parse().unwrap())));
}

/// The DB worker's group commit keeps its promises on both backends (`open` opens a store on
/// the same data, as another connection or instance would):
/// - operations queued together run in one transaction, and one that fails is rolled back
///   alone (its savepoint), the others committed;
/// - an operation is told `Ok` only once its transaction is committed: another connection
///   sees its write from inside the `Finish` callback;
/// - a newer fencing epoch stops the worker before it writes anything more.
fn group_commit(open: &mut dyn FnMut() -> Box<dyn Store>) {
    use std::sync::mpsc;
    use std::time::Duration;

    let wait = Duration::from_secs(20);
    let mut first = open();
    first.fence_acquire().unwrap();
    let (stop_tx, stopped) = mpsc::channel();
    let db = Db::start_with(
        first,
        64,
        (1024, usize::MAX),
        Box::new(move |why| {
            let _ = stop_tx.send(matches!(why, Stopped::Fenced(_)));
        }),
    )
    .unwrap();
    // Opened first: a SQLite store migrates on open, which waits for the write lock.
    let observer = std::sync::Arc::new(std::sync::Mutex::new(open()));
    // Hold the worker inside a batch, so that the next operations queue up together.
    let (started_tx, started) = mpsc::channel();
    let (release, held) = mpsc::channel::<()>();
    assert!(db.submit(
        Box::new(move |_s: &mut dyn Store| -> Finish {
            let _ = started_tx.send(());
            let _ = held.recv();
            Box::new(|_| {})
        }),
        None,
        0
    ));
    started.recv_timeout(wait).unwrap();
    let (tx, answered) = mpsc::channel();
    for (v, fail) in [("gc-a", false), ("gc-b", true), ("gc-c", false)] {
        let (tx, observer) = (tx.clone(), observer.clone());
        assert!(db.submit(
            Box::new(move |s: &mut dyn Store| -> Finish {
                let id = s.contact_create(9, v.as_bytes(), &pairs("gc", v)).unwrap();
                if fail {
                    // An operation may not commit: the worker's store refuses it.
                    assert!(s.commit().is_err());
                }
                Box::new(move |r| {
                    // Committed before told: another connection sees it now. (By its attributes: SQLite
                    // may give a rolled-back row's id to the next row.)
                    let seen = observer.lock().unwrap().contact_get(9, id).unwrap();
                    let seen = seen.as_deref() == Some(v.as_bytes());
                    let _ = tx.send((v, r.is_ok(), seen));
                })
            }),
            None,
            0
        ));
    }
    release.send(()).unwrap();
    let mut got: Vec<_> = (0..3)
        .map(|_| answered.recv_timeout(wait).unwrap())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("gc-a", true, true),
            ("gc-b", false, false),
            ("gc-c", true, true)
        ]
    );
    // Another instance takes the data over: the worker stops before its next write.
    open().fence_acquire().unwrap();
    let (tx, answered) = mpsc::channel();
    assert!(db.submit(
        Box::new(move |s: &mut dyn Store| -> Finish {
            let _ = s.contact_create(9, b"gc-late", &pairs("gc", "gc-late"));
            Box::new(move |r| {
                let _ = tx.send(r.map_err(StoreError::nothing_applied));
            })
        }),
        None,
        0
    ));
    assert_eq!(answered.recv_timeout(wait).unwrap(), Err(true));
    assert!(stopped.recv_timeout(wait).unwrap(), "stopped as fenced");
    let found = observer
        .lock()
        .unwrap()
        .contact_find(9, "gc", "gc-late", 0, 10, 1 << 20)
        .unwrap();
    assert!(found.is_empty(), "the fenced write was applied");
}

#[test]
fn sqlite_group_commit_keeps_its_promises() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    group_commit(&mut || Box::new(SqliteStore::open(&path).unwrap()) as Box<dyn Store>);
}

#[test]
fn postgres_group_commit_keeps_its_promises() {
    let pg = pg::PgServer::start();
    let url = pg.create("groupcommit");
    group_commit(&mut || Box::new(PgStore::connect(&url).unwrap()) as Box<dyn Store>);
}

/// The lease table of instance `who` on `cfg`'s database, with leases of `lease`.
fn pg_leases(
    cfg: &postgres::Config,
    who: &str,
    lease: std::time::Duration,
) -> deskmux_core_server::storage::lease::Leases {
    deskmux_core_server::storage::lease::Leases::new(
        deskmux_core_server::storage::postgres::connect(cfg).unwrap(),
        who.into(),
        lease,
    )
}

/// Take `tenants` with `leases` once another holder's leases have expired: a bounded poll
/// of that condition (20 s, every 20 ms: nothing tells a waiter when a lease lapses),
/// failing with `what`.
fn take_once_free(
    leases: &mut deskmux_core_server::storage::lease::Leases,
    tenants: &[u32],
    lock_wait: std::time::Duration,
    what: &str,
) -> deskmux_core_server::storage::lease::Held {
    use std::time::{Duration, Instant};
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(h) = leases.try_take(tenants, lock_wait).unwrap() {
            return h;
        }
        assert!(Instant::now() < end, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Tenant leases on PostgreSQL: all of an instance's tenants or none; renewed only while
/// ours; taken by another once expired, which fences the old holder's store; and each
/// instance's interaction ids in a block of its own.
#[test]
fn postgres_tenant_leases_fence_the_old_owner() {
    use std::time::Duration;

    let pg = pg::PgServer::start();
    let url = pg.create("leases");
    let cfg: postgres::Config = url.parse().unwrap();
    drop(PgStore::open(&cfg).unwrap()); // migrated
    let lease = Duration::from_millis(400);
    let leases = |who: &str| pg_leases(&cfg, who, lease);
    let (mut a, mut b) = (leases("a"), leases("b"));
    let wait = Duration::from_millis(100);
    let held_a = a
        .try_take(&[1, 2], wait)
        .unwrap()
        .expect("free leases taken");
    assert_eq!(held_a.tenants, [1, 2]);
    assert_eq!(b.try_take(&[2, 3], wait).unwrap(), None, "tenant 2 is a's");
    assert_eq!(
        pg.psql(
            "leases",
            "SELECT count(*) FROM tenant_lease WHERE tenant = 3"
        ),
        "0",
        "a refused take leaves nothing"
    );
    let held_c = b.try_take(&[3], wait).unwrap().expect("tenant 3 is free");
    a.renew(&held_a).unwrap();
    let mut store_a = PgStore::open(&cfg).unwrap();
    store_a.hold_leases(held_a.clone());
    store_a.begin().unwrap();
    store_a.fence_check().unwrap();
    store_a.commit().unwrap();
    // a stops renewing: once expired, b takes them (bounded poll of the condition).
    let held_b = take_once_free(&mut b, &[1, 2], wait, "the expired leases were never taken");
    assert!(held_b.epochs.iter().zip(&held_a.epochs).all(|(b, a)| b > a));
    assert!(matches!(a.renew(&held_a), Err(StoreError::Fenced(_))));
    b.renew(&held_b).unwrap();
    b.renew(&held_c).unwrap();
    assert_eq!(a.owners(&[1, 2, 3]).unwrap(), ["b"]);
    // Released (a graceful stop), a lease is free at once, for anyone; taken again, it has a
    // newer epoch still.
    b.release(&held_c).unwrap();
    assert!(a.owners(&[3]).unwrap().is_empty());
    let held_c2 = a
        .try_take(&[3], wait)
        .unwrap()
        .expect("a released lease is free");
    assert!(held_c2.epochs[0] > held_c.epochs[0]);
    assert!(matches!(b.renew(&held_c), Err(StoreError::Fenced(_))));
    store_a.begin().unwrap();
    assert!(matches!(store_a.fence_check(), Err(StoreError::Fenced(_))));
    store_a.rollback();
    let mut store_b = PgStore::open(&cfg).unwrap();
    store_b.hold_leases(held_b);
    store_b.begin().unwrap();
    store_b.fence_check().unwrap();
    store_b.commit().unwrap();
    // Interaction ids: a block each, far apart.
    let (ida, idb) = (store_a.ixn_max_id().unwrap(), store_b.ixn_max_id().unwrap());
    assert!(ida.abs_diff(idb) >= 1 << 32, "{ida} {idb}");
}

/// Pages on both backends: a search or a history list stops at its byte budget (the row that
/// passes it is the last one read) and goes on from its cursor; contacts are tenant-scoped
/// and deleted only in their tenant.
fn paging(s: &mut dyn Store) {
    s.begin().unwrap();
    let kv = pairs("k", "v");
    let ids: Vec<i64> = (0..5)
        .map(|_| s.contact_create(1, &[0u8; 100], &kv).unwrap())
        .collect();
    for i in 0..5 {
        s.history_insert(1, ids[0], 0, &"s".repeat(100), &i.to_string(), 1)
            .unwrap()
            .unwrap();
    }
    s.commit().unwrap();
    // 250 bytes: the third row passes the budget and is the last one read.
    let got = s.contact_find(1, "k", "v", 0, 100, 250).unwrap();
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..3]);
    let got = s.contact_find(1, "k", "v", ids[2], 100, 10_000).unwrap();
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), ids[3..]);
    assert!(
        s.contact_find(2, "k", "v", 0, 100, 10_000)
            .unwrap()
            .is_empty()
    );
    let all = s
        .history_list(1, ids[0], None, 100, 10_000)
        .unwrap()
        .unwrap();
    assert_eq!(all.len(), 5);
    let page = s.history_list(1, ids[0], None, 100, 150).unwrap().unwrap();
    assert_eq!(page.len(), 2);
    let rest = s
        .history_list(1, ids[0], Some(page[1].id), 100, 10_000)
        .unwrap()
        .unwrap();
    assert_eq!(rest, all[2..]);
    s.begin().unwrap();
    assert!(!s.contact_delete(2, ids[4]).unwrap(), "not in tenant 2");
    assert!(s.contact_delete(1, ids[4]).unwrap());
    s.commit().unwrap();
    assert_eq!(s.contact_get(1, ids[4]).unwrap(), None);
}

#[test]
fn sqlite_pages_keep_their_budget() {
    let dir = tempfile::tempdir().unwrap();
    paging(&mut SqliteStore::open(&dir.path().join("p.db")).unwrap());
}

#[test]
fn postgres_pages_keep_their_budget() {
    let pg = pg::PgServer::start();
    let url = pg.create("paging");
    paging(&mut PgStore::connect(&url).unwrap());
}

/// The DB worker's queue on both backends (`open` opens a store on the same data):
/// - a full queue refuses work without running it, and admits again once it has room;
/// - work still queued past its deadline is not run: it is told `Expired` (nothing
///   applied), and the work around it runs as usual;
/// - a panic on the worker is reported.
fn worker_queue(open: &mut dyn FnMut() -> Box<dyn Store>) {
    use deskmux_core_server::db::Work;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let wait = Duration::from_secs(20);
    let mut s = open();
    s.fence_acquire().unwrap();
    let db = Db::start_with(s, 8, (1, usize::MAX), Box::new(|_| {})).unwrap();
    // Hold the worker inside a batch, so that what comes next waits in the queue.
    let hold = |db: &Db| {
        let (started_tx, started) = mpsc::channel();
        let (release, held) = mpsc::channel::<()>();
        let work: Work = Box::new(move |_s: &mut dyn Store| -> Finish {
            let _ = started_tx.send(());
            let _ = held.recv();
            Box::new(|_| {})
        });
        assert!(db.try_submit(work, None, 0).is_ok());
        started.recv_timeout(wait).unwrap();
        release
    };
    let (tx, answered) = mpsc::channel();
    let op = |v: &'static str| -> Work {
        let tx = tx.clone();
        Box::new(move |s: &mut dyn Store| -> Finish {
            let r = s.contact_create(1, v.as_bytes(), &pairs("q", v));
            let expired = matches!(r, Err(StoreError::Expired));
            let r = r.is_ok();
            Box::new(move |c| {
                let c_expired = matches!(c, Err(StoreError::Expired));
                let _ = tx.send((v, r && c.is_ok(), expired && c_expired));
            })
        })
    };
    let release = hold(&db);
    assert!(db.try_submit(op("queued"), None, 0).is_ok());
    assert_eq!(
        db.try_submit(op("refused"), None, 0),
        Err(deskmux_core_server::db::Full { stopped: false })
    );
    assert_eq!(db.gauge().refused.load(Ordering::Relaxed), 1);
    release.send(()).unwrap();
    assert_eq!(
        answered.recv_timeout(wait).unwrap(),
        ("queued", true, false)
    );
    assert!(db.try_submit(op("later"), None, 0).is_ok());
    // In order: the refused operation, had it run, would have answered before this one.
    assert_eq!(answered.recv_timeout(wait).unwrap(), ("later", true, false));
    drop(db);

    let mut s = open();
    s.fence_acquire().unwrap();
    let (stop_tx, stopped) = mpsc::channel();
    let db = Db::start_with(
        s,
        8,
        (16, usize::MAX),
        Box::new(move |why| {
            let _ = stop_tx.send(match why {
                Stopped::Panicked(m) => m.clone(),
                other => format!("{other}"),
            });
        }),
    )
    .unwrap();
    let release = hold(&db);
    // Its deadline has passed by the time the worker takes it (the worker is held).
    let later = Instant::now() + Duration::from_secs(3600);
    assert!(db.try_submit(op("late"), Some(Instant::now()), 0).is_ok());
    assert!(db.try_submit(op("in time"), Some(later), 0).is_ok());
    release.send(()).unwrap();
    assert_eq!(answered.recv_timeout(wait).unwrap(), ("late", false, true));
    assert_eq!(
        answered.recv_timeout(wait).unwrap(),
        ("in time", true, false)
    );
    assert_eq!(db.stats.expired.load(Ordering::Relaxed), 1);
    let mut reader = open();
    let n = |s: &mut Box<dyn Store>, v| s.contact_find(1, "q", v, 0, 10, 1 << 20).unwrap().len();
    assert_eq!((n(&mut reader, "late"), n(&mut reader, "in time")), (0, 1));
    assert!(db.submit(
        Box::new(|_s: &mut dyn Store| -> Finish {
            panic!("boom");
        }),
        None,
        0
    ));
    assert_eq!(stopped.recv_timeout(wait).unwrap(), "boom");
}

#[test]
fn sqlite_worker_queue_keeps_its_promises() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    worker_queue(&mut || Box::new(SqliteStore::open(&path).unwrap()) as Box<dyn Store>);
}

#[test]
fn postgres_worker_queue_keeps_its_promises() {
    let pg = pg::PgServer::start();
    let url = pg.create("worker");
    worker_queue(&mut || Box::new(PgStore::connect(&url).unwrap()) as Box<dyn Store>);
}

/// `core-server gms audit` on both backends: bookings ever made (a released id still counts:
/// ids are never reused), rows left, and of them those not expired.
fn gms_audit(s: &mut dyn Store, at: &Location) {
    use deskmux_core_server::gms::audit::audit_at;

    let row = |n: &str, expires_us| BookingRow {
        id: 0,
        tenant: 1,
        group: "cb".into(),
        number: n.into(),
        code: None,
        caller: "+1".into(),
        user_data: Vec::new(),
        booked_us: 1,
        expires_us,
    };
    assert_eq!(audit_at(at, 100).unwrap().made, 0, "no booking yet");
    s.begin().unwrap();
    let a = s.gms_book(&row("+1", 50)).unwrap();
    s.gms_book(&row("+2", 500)).unwrap();
    let c = s.gms_book(&row("+3", 500)).unwrap();
    assert!(s.gms_release(a).unwrap());
    assert!(s.gms_release(c).unwrap());
    s.commit().unwrap();
    let got = audit_at(at, 100).unwrap();
    // The last id was released: `made` still counts it.
    assert_eq!((got.made, got.remaining, got.remaining_live), (3, 1, 1));
    assert_eq!(got.groups, vec![(1, "cb".to_string(), 1)]);
    assert_eq!(audit_at(at, 1000).unwrap().remaining_live, 0);
}

#[test]
fn sqlite_gms_audit_counts_bookings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.db");
    let mut s = SqliteStore::open(&path).unwrap();
    gms_audit(
        &mut s,
        &Location::Sqlite {
            path,
            opts: Default::default(),
        },
    );
    let none = Location::Sqlite {
        path: dir.path().join("none.db"),
        opts: Default::default(),
    };
    assert!(deskmux_core_server::gms::audit::audit_at(&none, 0).is_err());
}

#[test]
fn postgres_gms_audit_counts_bookings() {
    let pg = pg::PgServer::start();
    let url = pg.create("audit");
    let mut s = PgStore::connect(&url).unwrap();
    gms_audit(&mut s, &Location::Postgres(Box::new(url.parse().unwrap())));
}

/// An owner paused in the middle of a batch (its lease rows held `FOR SHARE`, its transaction
/// open) does not hold a taker off for good: with `limit_idle_in_transaction`, PostgreSQL ends
/// the paused session, the taker takes the expired leases, and the owner's batch commits
/// nothing.
#[test]
fn postgres_a_paused_batch_does_not_hold_the_takeover_off() {
    use std::time::Duration;

    let pg = pg::PgServer::start();
    let url = pg.create("paused");
    let cfg: postgres::Config = url.parse().unwrap();
    let lease = Duration::from_millis(400);
    let leases = |who: &str| pg_leases(&cfg, who, lease);
    drop(PgStore::open(&cfg).unwrap()); // migrated
    let mut a = leases("a");
    let held = a
        .try_take(&[1], lease / 4)
        .unwrap()
        .expect("free lease taken");
    let mut owner = PgStore::open(&cfg).unwrap();
    owner.hold_leases(held);
    owner.limit_idle_in_transaction(lease / 2).unwrap();
    // The batch starts (its lease rows read FOR SHARE), writes, and the owner stops there.
    owner.begin().unwrap();
    owner.fence_check().unwrap();
    owner
        .contact_create(1, b"paused", &pairs("k", "paused"))
        .unwrap();
    let mut b = leases("b");
    let taken = take_once_free(
        &mut b,
        &[1],
        lease / 4,
        "the paused batch held the takeover off",
    );
    assert_eq!(taken.tenants, [1]);
    // Resumed, the owner commits nothing: its session is gone.
    assert!(owner.commit().is_err());
    let mut reader = PgStore::connect(&url).unwrap();
    assert!(
        reader
            .contact_find(1, "k", "paused", 0, 10, 1 << 20)
            .unwrap()
            .is_empty()
    );
}
