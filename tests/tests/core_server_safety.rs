//! core-server data safety, against real processes:
//! - a failed `BEGIN` fails its batch with nothing applied (another process holds the
//!   database's write lock for longer than the server's `busy_timeout`);
//! - disk full (`sqlite_max_page_count`): a write that does not fit fails whole, in a retry
//!   class other than "rejected", the writes around it still commit, reads go on;
//! - the standby lock is the data file itself: removing `<db>.lock`, or naming the data file
//!   through a symlink or a hard link, does not give a second primary;
//! - a fencing epoch in the database: a primary that finds a newer one stops writing and exits,
//!   and its standby takes over.
//!
//! The test plays the "other process" on the SQLite file with rusqlite, as an operator's tool or
//! a second server would.

mod core_server_support;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use core_server_support::*;
use deskmux_codec::msg::{ixn, key, ucs};
use deskmux_codec::{BodyError, BodyWriter, ErrorCode, Frame, Head, Kind, RetryClass, Service};
use deskmux_tests::Proc;

fn db_path(dir: &Path) -> PathBuf {
    dir.join("core.db")
}

fn attrs_body<'a>(
    attrs: &'a [(String, String)],
) -> impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError> + 'a {
    move |w| {
        w.list(key::ATTRS, |w| {
            for (k, v) in attrs {
                w.str(k, v)?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

fn one(k: &str, v: &str) -> Vec<(String, String)> {
    vec![(k.to_string(), v.to_string())]
}

/// Send a `CONTACT_CREATE` with correlation `corr` without waiting for its answer.
fn send_create(c: &mut Client, corr: u64, attrs: &[(String, String)]) {
    let mut h = Head::new(Kind::Request, Service::Ucs, ucs::CONTACT_CREATE);
    h.tenant = c.tenant;
    h.session = c.session;
    h.correlation = corr;
    let f = Frame::build(h, attrs_body(attrs)).expect("build");
    c.send_raw(f.as_bytes());
}

/// Read until every correlation in `want` is answered or `until` passes; with `first`, return
/// as soon as one answer is in.
fn collect(c: &mut Client, want: &[u64], until: Instant, first: bool) -> HashMap<u64, Frame> {
    let mut got = HashMap::new();
    while got.len() < want.len() && Instant::now() < until {
        if first && !got.is_empty() {
            break;
        }
        if let Some(f) = c.read_frame(Duration::from_millis(20))
            && f.head().kind == Kind::Response
            && want.contains(&f.head().correlation)
        {
            got.insert(f.head().correlation, f);
        }
    }
    got
}

/// How many contacts of the client's tenant have attribute `k` = `v`.
fn count(c: &mut Client, k: &str, v: &str) -> usize {
    let r = ok(c.ucs(ucs::CONTACT_SEARCH, |w| {
        w.str(key::KEY, k)?;
        w.str(key::VALUE, v)?;
        Ok(())
    }));
    r.body()
        .list(key::CONTACTS)
        .expect("contacts")
        .iter()
        .count()
}

/// Whether contact `id` exists (NOT_FOUND: no; anything else but success fails the test).
fn exists(c: &mut Client, id: i64) -> bool {
    let r = c.ucs(ucs::CONTACT_GET, |w| {
        w.int(key::CONTACT, id);
        Ok(())
    });
    match code(&r) {
        None => true,
        Some(ErrorCode::NOT_FOUND) => false,
        other => panic!("CONTACT_GET {id}: {other:?}"),
    }
}

/// A failed write must tell the client it may retry or that the outcome is unknown; "rejected"
/// would tell it the request itself is wrong, which it is not.
#[track_caller]
fn storage_failure(f: &Frame) -> ErrorCode {
    let c = code(f).expect("an error");
    assert_ne!(
        c.retry_class(),
        RetryClass::Rejected,
        "storage failure answered in the rejected class: {:?}",
        f.error()
    );
    c
}

/// Start another `core-server` on `cfg` with `args`. True if it refused to start (exited with
/// a failure), false if it began serving as a primary.
fn another_primary_refused(cfg: &Path, args: &[&str]) -> bool {
    let cfg = cfg.to_str().expect("utf-8 path");
    let mut all = vec!["--config", cfg];
    all.extend_from_slice(args);
    let mut p = Proc::spawn_env("core-server", &all, &[("RUST_LOG", "error")]).expect("spawn");
    match p.wait_line("LISTENING", WAIT) {
        Ok(_) => false,
        Err(_) => {
            let code = p.wait_exit(WAIT).expect("the refused instance exits");
            assert_ne!(code, Some(0), "a refused instance exits with a failure");
            true
        }
    }
}

#[test]
fn failed_begin_applies_nothing() {
    if deskmux_tests::storage_mode::sqlite_only(
        "a second process holds the SQLite file's write lock past sqlite_busy_timeout_ms; on PostgreSQL a lost connection is core_server_postgres::a_lost_database_connection_ends_the_process",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let busy = Duration::from_millis(1000);
    let cfg = write_config(
        dir.path(),
        5000,
        &format!("sqlite_busy_timeout_ms = {}\n", busy.as_millis()),
    );
    let mut s = Server::start(&cfg, &[]);
    let mut c = Client::desktop(s.addr, T1, "writer", TOKEN1);
    // The data file and its tables exist before the other process opens it.
    ok(c.ucs(ucs::CONTACT_CREATE, attrs_body(&one("warm", "up"))));
    let mut failures = 0;
    // A round can miss the case (the lock was released before the server's BEGIN gave up, on a
    // slow machine): then it is run again, a bounded number of times.
    for round in 0..3u64 {
        let other = rusqlite::Connection::open(db_path(dir.path())).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let corrs: Vec<u64> = (0..3).map(|i| 100_000 * (round + 1) + i).collect();
        for (i, corr) in corrs.iter().enumerate() {
            send_create(&mut c, *corr, &one("begin-test", &format!("{round}-{i}")));
        }
        let sent = Instant::now();
        // Hold the write lock until the server answers (a failed BEGIN is answered at once) or
        // for one and a half busy timeouts: long enough for the server's BEGIN to give up, short
        // enough that writes the server would then run outside a transaction (waiting for the
        // lock in turn) get it and land.
        let mut got = collect(&mut c, &corrs, sent + busy * 3 / 2, true);
        other.execute_batch("ROLLBACK").unwrap();
        drop(other);
        let rest: Vec<u64> = corrs
            .iter()
            .copied()
            .filter(|k| !got.contains_key(k))
            .collect();
        got.extend(collect(&mut c, &rest, Instant::now() + WAIT, false));
        assert_eq!(got.len(), corrs.len(), "every write is answered");
        for (i, corr) in corrs.iter().enumerate() {
            let present = count(&mut c, "begin-test", &format!("{round}-{i}"));
            match code(&got[corr]) {
                None => assert_eq!(present, 1, "an acknowledged write is stored"),
                Some(_) => {
                    let e = storage_failure(&got[corr]);
                    failures += 1;
                    assert_eq!(
                        present, 0,
                        "write {round}-{i} was answered {e} after a failed BEGIN, yet it was applied"
                    );
                }
            }
        }
        if failures > 0 {
            break;
        }
    }
    assert!(
        failures > 0,
        "the server's BEGIN never failed while another process held the write lock"
    );
    // The lock is free again: writes succeed.
    ok(c.ucs(ucs::CONTACT_CREATE, attrs_body(&one("after", "lock"))));
    s.kill9();
}

/// While another process holds the database's write lock, a write of the engine fails; the
/// answer comes after the server's busy timeout, so the test holds the lock until then.
fn failed_ixn_write(
    dir: &Path,
    c: &mut Client,
    ty: u16,
    body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
) {
    let other = rusqlite::Connection::open(db_path(dir)).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let r = c.ixn(ty, body);
    other.execute_batch("ROLLBACK").unwrap();
    storage_failure(&r);
}

/// An interaction write that fails changes nothing in memory either: the server goes on as the
/// database has it. (Before, memory changed first: a failed `ACCEPT` left an interaction owned
/// in memory and queued on disk, a failed `STOP_PROCESSING` dropped it from memory and freed
/// the agent, and a failed `CHANGE_PROPERTIES` kept the new properties and announced them.)
#[test]
fn a_failed_interaction_write_changes_nothing() {
    if deskmux_tests::storage_mode::sqlite_only(
        "a second process holds the SQLite file's write lock past sqlite_busy_timeout_ms",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 60_000, "sqlite_busy_timeout_ms = 200\n");
    let mut s = Server::start(&cfg, &[]);
    let mut a = Client::desktop(s.addr, T1, "a", TOKEN1);
    ok(a.ixn(ixn::AGENT_LOGIN, |_| Ok(())));
    ok(a.ixn(ixn::AGENT_READY, |_| Ok(())));
    let mut media = Client::desktop(s.addr, T1, "media", TOKEN1);
    let submit = |m: &mut Client| {
        let r = ok(m.ixn(ixn::SUBMIT, |w| {
            w.str(key::QUEUE, "q")?;
            props(w, key::PROPS, &[("k", "v1")])
        }));
        int(&r, key::INTERACTION)
    };
    let x = submit(&mut media);
    let on = |id: i64| {
        move |w: &mut BodyWriter<'_>| {
            w.int(key::INTERACTION, id);
            Ok(())
        }
    };
    let invited = |c: &mut Client, id: i64| {
        c.wait_for(WAIT, |f| {
            f.head().msg_type == ixn::INVITE && f.body().int(key::INTERACTION) == Ok(id)
        })
        .is_some()
    };
    assert!(invited(&mut a, x), "a is invited to {x}");

    // ACCEPT fails: still an invite, so accepting again works.
    failed_ixn_write(dir.path(), &mut a, ixn::ACCEPT, on(x));
    ok(a.ixn(ixn::ACCEPT, on(x)));

    // CHANGE_PROPERTIES fails: the properties are as before, and no event announced the
    // change that did not happen. The next change's event shows the whole list.
    failed_ixn_write(dir.path(), &mut a, ixn::CHANGE_PROPERTIES, |w| {
        w.int(key::INTERACTION, x);
        props(w, key::PROPS, &[("k", "v2")])
    });
    ok(a.ixn(ixn::CHANGE_PROPERTIES, |w| {
        w.int(key::INTERACTION, x);
        props(w, key::PROPS, &[("k2", "w")])
    }));
    let ev = a
        .event(ixn::PROPERTIES_CHANGED, WAIT)
        .expect("PROPERTIES_CHANGED");
    let l = ev.body().list(key::PROPS).unwrap();
    assert_eq!(
        (l.str("k").unwrap(), l.str("k2").unwrap()),
        ("v1", "w"),
        "the first PROPERTIES_CHANGED is the committed change, over the old properties"
    );

    // STOP_PROCESSING fails: a still owns x, so a new interaction is not offered to it, and
    // stopping x again works.
    failed_ixn_write(dir.path(), &mut a, ixn::STOP_PROCESSING, on(x));
    let y = submit(&mut media);
    ok(a.ixn(ixn::STOP_PROCESSING, on(x)));
    // Only now is a free: its next invite is y, and nothing was offered in between.
    let first = a
        .event(ixn::INVITE, WAIT)
        .expect("an invite once x is done");
    assert_eq!(int(&first, key::INTERACTION), y);

    // What the server holds is what a restarted server finds: y, offered to a again.
    s.kill9();
    let mut s = Server::start(&cfg, &[]);
    let mut a = Client::desktop(s.addr, T1, "a", TOKEN1);
    ok(a.ixn(ixn::AGENT_LOGIN, |_| Ok(())));
    ok(a.ixn(ixn::AGENT_READY, |_| Ok(())));
    assert!(invited(&mut a, y), "y survives the restart");
    err(&a.ixn(ixn::ACCEPT, on(x)), ErrorCode::NOT_FOUND);
    s.kill9();
}

/// A request still queued when its deadline (`request_timeout_ms`) passes is answered
/// `OVERLOADED` and not run. The DB worker is held inside a `BEGIN` that waits for another
/// process's write lock (`busy_timeout`, much longer than the deadline); a request sent then
/// waits in the queue behind it. Before deadlines it would have been run after the wait (here:
/// failed its own `BEGIN` in turn, after a second full `busy_timeout`).
#[test]
fn a_request_queued_past_its_deadline_is_not_run() {
    if deskmux_tests::storage_mode::sqlite_only(
        "the DB worker is stalled by holding the SQLite file's write lock from a second process; the deadline itself is checked on both backends in core-server's storage_backends",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        5000,
        "sqlite_busy_timeout_ms = 3000\nrequest_timeout_ms = 100\nhttp_listen = \"127.0.0.1:0\"\n",
    );
    let mut s = Server::start(&cfg, &[]);
    let http = http_addr(&mut s);
    let mut c = Client::desktop(s.addr, T1, "writer", TOKEN1);
    ok(c.ucs(ucs::CONTACT_CREATE, attrs_body(&one("warm", "up"))));
    let batches = |what: &str| {
        let (code, body) = core_server_support::http(http, "GET", "/metrics", None);
        assert_eq!(code, 200);
        sample(&body, what).unwrap_or_else(|| panic!("no {what} in {body}"))
    };
    let before = batches("deskmux_core_db_batches_total");
    let other = rusqlite::Connection::open(db_path(dir.path())).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    send_create(&mut c, 900_001, &one("deadline", "held"));
    // The worker has taken the first create's batch: it is inside BEGIN, waiting for the lock.
    let end = Instant::now() + WAIT;
    while batches("deskmux_core_db_batches_total") <= before {
        assert!(Instant::now() < end, "the worker never took the batch");
        std::thread::yield_now();
    }
    send_create(&mut c, 900_002, &one("deadline", "queued"));
    let got = collect(&mut c, &[900_001, 900_002], Instant::now() + WAIT, false);
    other.execute_batch("ROLLBACK").unwrap();
    drop(other);
    assert_eq!(got.len(), 2, "both are answered");
    storage_failure(&got[&900_001]);
    let (code, msg) = got[&900_002].error().expect("an error");
    assert_eq!(code, ErrorCode::OVERLOADED, "{msg}");
    assert!(msg.contains("request_timeout_ms"), "{msg}");
    assert_eq!(batches("deskmux_core_db_expired_total"), 1.0);
    assert_eq!(count(&mut c, "deadline", "queued"), 0, "not run");
    assert_eq!(count(&mut c, "deadline", "held"), 0, "its BEGIN failed");
    s.kill9();
}

/// The DB worker's queue is bounded in bytes too: while the worker is held inside a `BEGIN`
/// (another process has the write lock), large writes queue until they hold `db_queue_bytes`,
/// and the next is answered `OVERLOADED` at once, not run. (Counted in operations only,
/// 131,072 writes of 2 MiB could have queued.)
#[test]
fn the_db_queue_is_bounded_in_bytes() {
    if deskmux_tests::storage_mode::sqlite_only(
        "the DB worker is stalled by holding the SQLite file's write lock from a second process; the queue's bounds are checked on both backends in core-server's storage_backends",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        5000,
        "sqlite_busy_timeout_ms = 3000\nmax_frame = 131072\ndb_queue_bytes = 131072\nhttp_listen = \"127.0.0.1:0\"\n",
    );
    let mut s = Server::start(&cfg, &[]);
    let http = http_addr(&mut s);
    let mut c = Client::desktop(s.addr, T1, "writer", TOKEN1);
    ok(c.ucs(ucs::CONTACT_CREATE, attrs_body(&one("warm", "up"))));
    let metric = |what: &str| {
        let (code, body) = core_server_support::http(http, "GET", "/metrics", None);
        assert_eq!(code, 200);
        sample(&body, what).unwrap_or_else(|| panic!("no {what} in {body}"))
    };
    let before = metric("deskmux_core_db_batches_total");
    let other = rusqlite::Connection::open(db_path(dir.path())).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    // 100 values of 500 bytes: about 51 KiB a frame, under the 64 KiB attribute cap.
    let big = |tag: &str| -> Vec<(String, String)> {
        (0..100)
            .map(|i| (format!("{tag}{i:03}"), "v".repeat(500)))
            .collect()
    };
    send_create(&mut c, 800_001, &big("a"));
    let end = Instant::now() + WAIT;
    while metric("deskmux_core_db_batches_total") <= before {
        assert!(Instant::now() < end, "the worker never took the batch");
        std::thread::yield_now();
    }
    // The held batch counts ~51 KiB; two more queue (under 128 KiB when each arrives); the
    // fourth finds ~153 KiB and is refused.
    for (i, tag) in ["b", "c", "d"].into_iter().enumerate() {
        send_create(&mut c, 800_002 + i as u64, &big(tag));
    }
    let refused = c.wait_response(800_004);
    let (code, msg) = refused.error().expect("refused");
    assert_eq!(code, ErrorCode::OVERLOADED, "{msg}");
    assert!(msg.contains("db_queue"), "{msg}");
    assert!(metric("deskmux_core_db_queued_bytes") >= 150_000.0);
    other.execute_batch("ROLLBACK").unwrap();
    drop(other);
    let got = collect(
        &mut c,
        &[800_001, 800_002, 800_003],
        Instant::now() + WAIT,
        false,
    );
    assert_eq!(got.len(), 3, "the others are answered");
    assert_eq!(
        count(&mut c, "d000", &"v".repeat(500)),
        0,
        "the refused write is not run"
    );
    // Given back once their batch is finished (just after its answers are sent).
    let end = Instant::now() + WAIT;
    while metric("deskmux_core_db_queued_bytes") != 0.0 {
        assert!(Instant::now() < end, "queued bytes never went back to 0");
        std::thread::yield_now();
    }
    s.kill9();
}

/// Writes made by [`DiskFull`], to check after the fact that exactly the acknowledged ones exist.
#[derive(Default)]
struct Ledger {
    acked: BTreeSet<i64>,
    deleted: BTreeSet<i64>,
    failed: usize,
}

impl Ledger {
    /// Every contact id up to past the highest one acknowledged exists if and only if its create
    /// was acknowledged (and it was not deleted since).
    fn check(&self, c: &mut Client) {
        let top = self.acked.iter().max().copied().unwrap_or(0) + 20;
        for id in 1..=top {
            let want = self.acked.contains(&id) && !self.deleted.contains(&id);
            assert_eq!(
                exists(c, id),
                want,
                "contact {id}: acknowledged={} deleted={}",
                self.acked.contains(&id),
                self.deleted.contains(&id)
            );
        }
    }
}

/// Create a contact; record the outcome.
fn create(c: &mut Client, l: &mut Ledger, attrs: &[(String, String)]) -> Option<i64> {
    let r = c.ucs(ucs::CONTACT_CREATE, attrs_body(attrs));
    if r.error().is_some() {
        storage_failure(&r);
        l.failed += 1;
        return None;
    }
    let id = int(&r, key::CONTACT);
    l.acked.insert(id);
    Some(id)
}

/// Insert history texts of `len` bytes on `contact` until the store is full; returns how many fit.
fn fill(c: &mut Client, contact: i64, len: usize) -> usize {
    let text = "x".repeat(len);
    for n in 0..2000 {
        let r = c.ucs(ucs::HISTORY_INSERT, |w| {
            w.int(key::CONTACT, contact);
            w.str(key::SUBJECT, "fill")?;
            w.str(key::TEXT, &text)?;
            Ok(())
        });
        if r.error().is_some() {
            storage_failure(&r);
            return n;
        }
    }
    panic!("the store never filled up: is sqlite_max_page_count applied?");
}

fn big_attrs(tag: &str, pairs: usize) -> Vec<(String, String)> {
    (0..pairs)
        .map(|i| (format!("{tag}-{i}"), "v".repeat(512)))
        .collect()
}

#[test]
fn disk_full_fails_writes_whole_and_reads_go_on() {
    if deskmux_tests::storage_mode::sqlite_only("the full disk is SQLite's sqlite_max_page_count") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "sqlite_max_page_count = 64\n");
    let mut s = Server::start(&cfg, &[]);
    let mut c = Client::desktop(s.addr, T1, "writer", TOKEN1);
    let mut l = Ledger::default();
    let keep = create(&mut c, &mut l, &one("name", "keep")).expect("room at start");
    let kept_text = "kept history";
    let h = int(
        &ok(c.ucs(ucs::HISTORY_INSERT, |w| {
            w.int(key::CONTACT, keep);
            w.str(key::SUBJECT, "s")?;
            w.str(key::TEXT, kept_text)?;
            Ok(())
        })),
        key::HISTORY,
    );
    // Some room to give back later, then fill the rest.
    let spare = create(&mut c, &mut l, &one("name", "spare")).expect("room");
    for _ in 0..8 {
        ok(c.ucs(ucs::HISTORY_INSERT, |w| {
            w.int(key::CONTACT, spare);
            w.str(key::TEXT, &"s".repeat(4096))?;
            Ok(())
        }));
    }
    let filler = create(&mut c, &mut l, &one("name", "filler")).expect("room");
    assert!(fill(&mut c, filler, 4096) > 0, "4 KiB texts fit at first");
    fill(&mut c, filler, 256);
    // Full: a new contact with many attributes fails, whole.
    assert!(create(&mut c, &mut l, &big_attrs("full", 40)).is_none());
    l.check(&mut c);
    // Free some pages (about 8). Then bursts of pipelined creates: small ones around a big
    // one that does not fit (its contact row fits, its attributes do not). The burst's writes
    // share group commits with the big one: what is acknowledged must be there, what failed
    // must not, and the small writes after the big one must commit.
    ok(c.ucs(ucs::CONTACT_DELETE, |w| {
        w.int(key::CONTACT, spare);
        Ok(())
    }));
    l.deleted.insert(spare);
    let mut corr = 1_000_000u64;
    for (n, pairs) in [40usize, 30, 20, 12].into_iter().enumerate() {
        let mut burst = Vec::new();
        for i in 0..3 {
            burst.push(one("small", &format!("a{n}-{i}")));
        }
        burst.push(big_attrs(&format!("big{n}"), pairs));
        for i in 0..3 {
            burst.push(one("small", &format!("c{n}-{i}")));
        }
        let corrs: Vec<u64> = (0..burst.len() as u64).map(|i| corr + i).collect();
        corr += 100;
        for (k, attrs) in corrs.iter().zip(&burst) {
            send_create(&mut c, *k, attrs);
        }
        let got = collect(&mut c, &corrs, Instant::now() + WAIT, false);
        assert_eq!(got.len(), corrs.len(), "every write is answered");
        for (i, k) in corrs.iter().enumerate() {
            let r = &got[k];
            if r.error().is_some() {
                storage_failure(r);
                l.failed += 1;
                assert!(
                    i < 4,
                    "small write {i} after the big one ({pairs} pairs) failed: {:?}",
                    r.error()
                );
            } else {
                l.acked.insert(int(r, key::CONTACT));
            }
        }
    }
    // Nothing half-applied: exactly the acknowledged contacts exist, and none can be found by
    // an attribute of a write that failed.
    l.check(&mut c);
    for (n, pairs) in [40usize, 30, 20, 12].into_iter().enumerate() {
        let v = "v".repeat(512);
        let first = count(&mut c, &format!("big{n}-0"), &v);
        let last = count(&mut c, &format!("big{n}-{}", pairs - 1), &v);
        assert_eq!(
            first, last,
            "big contact {n} is searchable by all its attributes or none"
        );
    }
    // Reads are served while the store is full.
    let g = ok(c.ucs(ucs::CONTACT_GET, |w| {
        w.int(key::CONTACT, keep);
        Ok(())
    }));
    assert_eq!(
        g.body().list(key::ATTRS).unwrap().str("name").unwrap(),
        "keep"
    );
    let t = ok(c.ucs(ucs::CONTENT_GET, |w| {
        w.int(key::HISTORY, h);
        Ok(())
    }));
    assert_eq!(t.body().str(key::TEXT).unwrap(), kept_text);
    assert_eq!(count(&mut c, "name", "keep"), 1);
    // And what was committed is what a restarted server finds.
    s.kill9();
    let mut s = Server::start(&cfg, &[]);
    let mut c = Client::desktop(s.addr, T1, "reader", TOKEN1);
    l.check(&mut c);
    s.kill9();
}

#[test]
fn removing_the_lock_file_does_not_make_a_second_primary() {
    if deskmux_tests::storage_mode::sqlite_only("the standby lock is the SQLite data file's flock")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "");
    let mut p = Server::start(&cfg, &[]);
    let mut c = Client::desktop(p.addr, T1, "writer", TOKEN1);
    ok(c.ucs(ucs::CONTACT_CREATE, attrs_body(&one("before", "rm"))));
    // An operator "cleaning up a stale lock file".
    let mut lock = db_path(dir.path()).into_os_string();
    lock.push(".lock");
    match std::fs::remove_file(&lock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {lock:?}: {e}"),
    }
    assert!(
        another_primary_refused(&cfg, &["--instance", "core-2"]),
        "a second primary started on the data file after its lock file was removed"
    );
    // The first primary is unaffected.
    ok(c.ucs(ucs::CONTACT_CREATE, attrs_body(&one("after", "rm"))));
    p.kill9();
}

#[test]
fn another_name_for_the_data_file_is_refused() {
    if deskmux_tests::storage_mode::sqlite_only(
        "the standby lock is the SQLite data file's flock (symlinks, hard links)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "");
    let mut p = Server::start(&cfg, &[]);
    let mut c = Client::desktop(p.addr, T1, "writer", TOKEN1);
    ok(c.ucs(ucs::CONTACT_CREATE, attrs_body(&one("k", "v"))));
    let sym = dir.path().join("alias.db");
    std::os::unix::fs::symlink(db_path(dir.path()), &sym).unwrap();
    assert!(
        another_primary_refused(&cfg, &["--db", sym.to_str().unwrap()]),
        "a second primary started through a symlink to the data file"
    );
    let hard = dir.path().join("hard.db");
    std::fs::hard_link(db_path(dir.path()), &hard).unwrap();
    assert!(
        another_primary_refused(&cfg, &["--db", hard.to_str().unwrap()]),
        "a second primary started through a hard link to the data file"
    );
    ok(c.ucs(ucs::CONTACT_CREATE, attrs_body(&one("k", "v2"))));
    p.kill9();
}

#[test]
fn a_newer_epoch_stops_the_primary_and_its_standby_takes_over() {
    if deskmux_tests::storage_mode::sqlite_only(
        "the newer epoch is written into the SQLite file with rusqlite; on PostgreSQL: core_server_postgres::a_fenced_primary_commits_nothing_and_exits",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "");
    let mut p = Server::start(&cfg, &[]);
    let mut sb = Server::start(&cfg, &["--standby", "--instance", "core-2"]);
    sb.wait_line("ROLE backup");
    let mut c = Client::desktop(p.addr, T1, "writer", TOKEN1);
    let before = int(
        &ok(c.ucs(ucs::CONTACT_CREATE, attrs_body(&one("epoch", "old")))),
        key::CONTACT,
    );
    // What a newer primary does when it takes the data file over: bump the fencing epoch. (It
    // happens here behind the lock's back, as it would if the lock were lost, e.g. on a
    // filesystem that does not share locks between hosts.)
    let other = rusqlite::Connection::open(db_path(dir.path())).unwrap();
    let bumped = other
        .execute("UPDATE fence SET epoch = epoch + 1", [])
        .expect("the database has a fencing epoch");
    assert_eq!(bumped, 1);
    drop(other);
    // The old primary's next write is not applied: it answers with an error or is gone.
    let mut h = Head::new(Kind::Request, Service::Ucs, ucs::CONTACT_CREATE);
    h.tenant = c.tenant;
    h.session = c.session;
    h.correlation = 77_777;
    let f = Frame::build(h, attrs_body(&one("epoch", "stale"))).unwrap();
    c.send_raw(f.as_bytes());
    // It stops (exits with a failure), so its standby becomes the only primary.
    let code = p.exit_code(WAIT);
    assert!(
        code.is_some_and(|c| c != 0),
        "a fenced primary exits with a failure"
    );
    // Its answer, if it had time to send one before exiting, is already here (the socket is at
    // its end; the deadline only bounds the read).
    let answer = collect(
        &mut c,
        &[77_777],
        Instant::now() + Duration::from_secs(1),
        false,
    );
    if let Some(r) = answer.get(&77_777) {
        storage_failure(r);
    }
    sb.wait_line("ROLE primary");
    let mut c = Client::desktop(sb.addr, T1, "reader", TOKEN1);
    assert!(exists(&mut c, before));
    assert_eq!(
        count(&mut c, "epoch", "stale"),
        0,
        "the fenced write was applied"
    );
    ok(c.ucs(ucs::CONTACT_CREATE, attrs_body(&one("epoch", "new"))));
    sb.kill9();
}
