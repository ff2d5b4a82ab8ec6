//! core-server on PostgreSQL (`[storage] backend = "postgres"`), against a real PostgreSQL
//! server started for each test: the representative behaviours of the SQLite suites, run
//! again on the other backend — logins from credentials imported with `creds import`, UCS
//! contacts, history and paging, the interaction life cycle, restart after kill -9, warm
//! standby (an advisory lock in the database, no shared file), fencing, and the password
//! never shown.

mod core_server_support;

use std::process::Command;

use core_server_support::pg::{LEASE_MS, PASSWORD, PgServer};
use core_server_support::*;
use deskmux_codec::msg::{ixn, key, ucs};
use deskmux_codec::{ErrorCode, Frame, Head, Kind, Service, Value};

fn create(c: &mut Client, attrs: &[(&str, &str)]) -> i64 {
    int(
        &ok(c.ucs(ucs::CONTACT_CREATE, |w| props(w, key::ATTRS, attrs))),
        key::CONTACT,
    )
}

/// The ids of a list answer's items, and its `next` cursor.
fn page(f: &Frame, list_key: &'static str, id_key: &'static str) -> (Vec<i64>, Option<i64>) {
    let ids = f
        .body()
        .list(list_key)
        .unwrap()
        .iter()
        .map(|i| match i.unwrap() {
            (_, Value::List(item)) => item.int(id_key).unwrap(),
            other => panic!("item {other:?}"),
        })
        .collect();
    (ids, f.body().opt_int(key::NEXT).unwrap())
}

/// A desktop on the instance at `addr` once it serves: a standby answers `UNAVAILABLE` until
/// it has taken over (bounded).
fn serving(addr: std::net::SocketAddr) -> Client {
    let mut served = None;
    deskmux_tests::wait_until(WAIT, || {
        let mut c = Client::connect(addr);
        match code(&c.hello(T1, "reader", TOKEN1)) {
            None => served = Some(c),
            Some(ErrorCode::UNAVAILABLE) => {}
            other => panic!("hello refused: {other:?}"),
        }
        served.is_some()
    });
    served.unwrap_or_else(|| panic!("the instance did not serve within {WAIT:?}"))
}

/// Run `core-server ARGS` to its end (bounded); (success, stdout, stderr). Its output is a
/// few lines, well under a pipe's buffer, so it is read once it has exited.
fn run(args: &[&str]) -> (bool, String, String) {
    use std::io::Read;
    let mut child = Command::new(bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run core-server");
    let st = deskmux_tests::wait_child(&mut child, WAIT * 3).expect("core-server ends");
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (st.success(), out, err)
}

fn count(pg: &PgServer, db: &str, sql: &str) -> i64 {
    pg.psql(db, sql).parse().expect("a count")
}

/// `--check-config` names the backend and where it is, never the password; a wrong password
/// fails the start with an error that does not carry it either; nothing is written to the
/// SQLite path (`db`) and no data directory is needed.
#[test]
fn the_backend_is_chosen_in_the_config_and_the_password_never_shown() {
    let pg = PgServer::start();
    pg.create("shown");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_pg(dir.path(), 5000, "", &pg, "shown");
    let cfg_s = cfg.to_str().unwrap();
    let (good, out, err) = run(&["--config", cfg_s, "--check-config"]);
    assert!(good, "{err}");
    let want = format!(
        "postgres deskmux@127.0.0.1:{}/shown (password from ",
        pg.port
    );
    assert!(out.contains(&want), "{out}");
    assert!(!out.contains(PASSWORD) && !err.contains(PASSWORD));
    // The agents were imported into PostgreSQL by `creds import` (write_config_pg).
    assert!(count(&pg, "shown", "SELECT count(*) FROM credentials") > 0);
    let (good, out, err) = run(&["--config", cfg_s, "creds", "list", "--tenant", "1"]);
    assert!(good, "{err}");
    assert!(out.contains("\ta\tpassword\t"), "{out}");
    // A wrong password: the start fails, saying why, without the password.
    let wrong = "wrong-password-not-to-be-logged";
    std::fs::write(dir.path().join("pg.password"), wrong).unwrap();
    let (good, _, err) = run(&["--config", cfg_s, "--listen", "127.0.0.1:0"]);
    assert!(!good, "started with a wrong password");
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains(wrong), "{err}");
    assert!(
        !dir.path().join("core.db").exists(),
        "no SQLite file on PostgreSQL"
    );
    // An inline password is refused: the configuration holds no secret.
    let text = std::fs::read_to_string(&cfg).unwrap() + "password = \"inline\"\n";
    std::fs::write(&cfg, text).unwrap();
    let (good, _, err) = run(&["--config", cfg_s, "--check-config"]);
    assert!(!good && err.contains("password"), "{err}");
}

/// Logins, UCS (contacts, identify, search and history with paging, contents, delete) and an
/// interaction's life cycle ending in history, all on PostgreSQL.
#[test]
fn logins_ucs_paging_and_interactions() {
    let pg = PgServer::start();
    pg.create("core");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_pg(dir.path(), 5000, "", &pg, "core");
    let s = Server::start(&cfg, &[]);
    let mut refused = Client::connect(s.addr);
    assert_eq!(
        code(&refused.hello(T1, "a", "not-the-password")),
        Some(ErrorCode::AUTH_FAILED)
    );
    let mut c = Client::desktop(s.addr, T1, "a1", TOKEN1);
    let ann = create(&mut c, &[("first", "Ann"), ("email", "ann@x.org")]);
    ok(c.ucs(ucs::CONTACT_UPDATE, |w| {
        w.int(key::CONTACT, ann);
        props(w, key::ATTRS, &[("first", ""), ("last", "Lee")])
    }));
    let g = ok(c.ucs(ucs::CONTACT_GET, |w| {
        w.int(key::CONTACT, ann);
        Ok(())
    }));
    let attrs = g.body().list(key::ATTRS).unwrap();
    assert_eq!(
        (attrs.str("email").unwrap(), attrs.str("last").unwrap()),
        ("ann@x.org", "Lee")
    );
    assert!(attrs.opt_str("first").unwrap().is_none());
    let r = ok(c.ucs(ucs::CONTACT_IDENTIFY, |w| {
        w.str(key::EMAIL, "ann@x.org")?;
        Ok(())
    }));
    assert_eq!((int(&r, key::CONTACT), int(&r, key::CREATED)), (ann, 0));
    // Another tenant does not see it.
    let mut other = Client::desktop(s.addr, T2, "a1", TOKEN2);
    err(
        &other.ucs(ucs::CONTACT_GET, |w| {
            w.int(key::CONTACT, ann);
            Ok(())
        }),
        ErrorCode::NOT_FOUND,
    );
    // Search pages: 5 contacts, 2 a page, linked by next/after, none lost or repeated.
    let oslo: Vec<i64> = (0..5)
        .map(|i| create(&mut c, &[("city", "Oslo"), ("n", &i.to_string())]))
        .collect();
    let (mut found, mut after) = (Vec::new(), None);
    for _ in 0..10 {
        let f = ok(c.ucs(ucs::CONTACT_SEARCH, |w| {
            w.str(key::KEY, "city")?;
            w.str(key::VALUE, "Oslo")?;
            w.int(key::LIMIT, 2);
            if let Some(a) = after {
                w.int(key::AFTER, a);
            }
            Ok(())
        }));
        let (ids, next) = page(&f, key::CONTACTS, key::CONTACT);
        found.extend(ids);
        after = next;
        if after.is_none() {
            break;
        }
    }
    assert_eq!(found, oslo);
    // History pages, newest first, and contents.
    let hist: Vec<i64> = (0..3)
        .map(|i| {
            int(
                &ok(c.ucs(ucs::HISTORY_INSERT, |w| {
                    w.int(key::CONTACT, ann);
                    w.str(key::SUBJECT, &format!("s{i}"))?;
                    w.str(key::TEXT, &format!("text {i}"))?;
                    Ok(())
                })),
                key::HISTORY,
            )
        })
        .collect();
    let list = |c: &mut Client, after: Option<i64>| {
        page(
            &ok(c.ucs(ucs::HISTORY_LIST, |w| {
                w.int(key::CONTACT, ann);
                w.int(key::LIMIT, 2);
                if let Some(a) = after {
                    w.int(key::AFTER, a);
                }
                Ok(())
            })),
            key::ITEMS,
            key::HISTORY,
        )
    };
    let (first, next) = list(&mut c, None);
    assert_eq!(first, [hist[2], hist[1]]);
    let (rest, end) = list(&mut c, next);
    assert_eq!((rest, end), (vec![hist[0]], None));
    let t = ok(c.ucs(ucs::CONTENT_GET, |w| {
        w.int(key::HISTORY, hist[1]);
        Ok(())
    }));
    assert_eq!(t.body().str(key::TEXT).unwrap(), "text 1");
    // An interaction: submitted, invited, accepted, completed into the contact's history.
    let mut media = Client::desktop(s.addr, T1, "media", TOKEN1);
    let mut a = agent(s.addr, "a");
    ok(a.ixn(ixn::AGENT_READY, |_| Ok(())));
    let id = submit(&mut media, "sales");
    let inv = a.event(ixn::INVITE, WAIT).expect("invite");
    assert_eq!(int(&inv, key::INTERACTION), id);
    ok(a.ixn(ixn::ACCEPT, with_ixn(id)));
    ok(a.ixn(ixn::STOP_PROCESSING, |w| {
        w.int(key::INTERACTION, id);
        w.int(key::CONTACT, ann);
        Ok(())
    }));
    let (newest, _) = list(&mut c, None);
    assert_eq!(newest.len(), 2);
    assert!(newest[0] > hist[2], "the completion wrote history");
    // Delete takes the history with it. Everything above is in PostgreSQL.
    ok(c.ucs(ucs::CONTACT_DELETE, |w| {
        w.int(key::CONTACT, ann);
        Ok(())
    }));
    assert_eq!(
        count(&pg, "core", "SELECT count(*) FROM history"),
        0,
        "history went with its contact"
    );
    assert_eq!(count(&pg, "core", "SELECT count(*) FROM contacts"), 5);
    assert_eq!(
        count(
            &pg,
            "core",
            "SELECT count(*) FROM interactions WHERE state = 2"
        ),
        1
    );
}

/// kill -9, then a restart on the same database: every acknowledged write is there, queued
/// interactions come back in order, an owned one stays owned, ids do not collide.
#[test]
fn restart_after_kill9_keeps_state() {
    let pg = PgServer::start();
    pg.create("durable");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_pg(dir.path(), 5000, "", &pg, "durable");
    let mut s = Server::start(&cfg, &[]);
    let mut media = Client::desktop(s.addr, T1, "media", TOKEN1);
    let queued: Vec<i64> = (0..3).map(|_| submit(&mut media, "q")).collect();
    let mut a = agent(s.addr, "a");
    ok(a.ixn(ixn::AGENT_READY, |_| Ok(())));
    let owned = int(
        &a.event(ixn::INVITE, WAIT).expect("invite"),
        key::INTERACTION,
    );
    assert_eq!(owned, queued[0]);
    ok(a.ixn(ixn::ACCEPT, with_ixn(owned)));
    ok(a.ixn(ixn::AGENT_NOT_READY, |_| Ok(())));
    let mut w = Client::desktop(s.addr, T1, "writer", TOKEN1);
    let acked: Vec<i64> = (0..20)
        .map(|i| create(&mut w, &[("seq", &i.to_string())]))
        .collect();
    s.kill9();
    drop((media, a, w));
    // The killed instance's lock is released once PostgreSQL sees its connection close:
    // started as a standby, the new instance waits for that rather than racing it, and
    // serves once it has the lock (at once, or after `ROLE backup`).
    let s = Server::start(&cfg, &["--standby"]);
    let mut r = serving(s.addr);
    for id in &acked {
        ok(r.ucs(ucs::CONTACT_GET, |b| {
            b.int(key::CONTACT, *id);
            Ok(())
        }));
    }
    let mut b = agent(s.addr, "b");
    ok(b.ixn(ixn::AGENT_READY, |_| Ok(())));
    for want in &queued[1..] {
        let inv = b.event(ixn::INVITE, WAIT).expect("invite after restart");
        assert_eq!(int(&inv, key::INTERACTION), *want);
        ok(b.ixn(ixn::ACCEPT, with_ixn(*want)));
        ok(b.ixn(ixn::STOP_PROCESSING, with_ixn(*want)));
    }
    err(
        &b.ixn(ixn::STOP_PROCESSING, with_ixn(owned)),
        ErrorCode::INVALID_STATE,
    );
    let mut a = agent(s.addr, "a");
    ok(a.ixn(ixn::STOP_PROCESSING, with_ixn(owned)));
    let mut media = Client::desktop(s.addr, T1, "media", TOKEN1);
    assert!(submit(&mut media, "q") > *queued.iter().max().unwrap());
}

/// Warm standby with nothing shared but the database: the two instances have their own
/// directories (no file to lock). A second primary is refused (the tenants' leases are held);
/// the standby takes the tenants over once the killed primary's leases expire, within the
/// lease time (plus the standby's poll), and serves what it left.
#[test]
fn a_standby_takes_the_tenants_over_when_their_leases_expire() {
    let pg = PgServer::start();
    pg.create("pair");
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg1 = write_config_pg(d1.path(), 5000, "", &pg, "pair");
    let cfg2 = write_config_pg(d2.path(), 5000, "", &pg, "pair");
    let mut p = Server::start(&cfg1, &[]);
    let (good, _, err) = run(&["--config", cfg2.to_str().unwrap()]);
    assert!(!good, "a second primary started");
    assert!(err.contains("is locked by another instance"), "{err}");
    let mut sb = Server::start(&cfg2, &["--standby", "--instance", "core-2"]);
    sb.wait_line("ROLE backup");
    let mut media = Client::desktop(p.addr, T1, "media", TOKEN1);
    let ixn_id = submit(&mut media, "q");
    let c = create(&mut media, &[("email", "sb@x")]);
    let t0 = std::time::Instant::now();
    p.kill9();
    sb.wait_line("ROLE primary");
    let took = t0.elapsed();
    eprintln!("takeover after kill -9: {took:?} (lease_ms {LEASE_MS})");
    assert!(
        took < std::time::Duration::from_millis(2 * LEASE_MS),
        "the takeover took {took:?}, lease_ms {LEASE_MS}"
    );
    let mut r = Client::desktop(sb.addr, T1, "reader", TOKEN1);
    let g = ok(r.ucs(ucs::CONTACT_GET, |b| {
        b.int(key::CONTACT, c);
        Ok(())
    }));
    assert_eq!(
        g.body().list(key::ATTRS).unwrap().str("email").unwrap(),
        "sb@x"
    );
    let mut a = agent(sb.addr, "a");
    ok(a.ixn(ixn::AGENT_READY, |_| Ok(())));
    let inv = a
        .event(ixn::INVITE, WAIT)
        .expect("invite on the new primary");
    assert_eq!(int(&inv, key::INTERACTION), ixn_id);
}

/// A primary whose tenants were taken over (newer lease epochs, as a standby that took their
/// leases writes) commits nothing more: its next write is refused with nothing applied (or
/// its lease renewal finds them taken first), and it exits.
#[test]
fn a_fenced_primary_commits_nothing_and_exits() {
    let pg = PgServer::start();
    pg.create("fenced");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_pg(dir.path(), 5000, "", &pg, "fenced");
    let mut s = Server::start(&cfg, &[]);
    let mut c = Client::desktop(s.addr, T1, "writer", TOKEN1);
    create(&mut c, &[("email", "before@x")]);
    // What a standby does when it takes the tenants over: raise their leases' epochs.
    pg.psql("fenced", "UPDATE tenant_lease SET epoch = epoch + 1");
    let mut h = Head::new(Kind::Request, Service::Ucs, ucs::CONTACT_CREATE);
    h.tenant = c.tenant;
    h.session = c.session;
    h.correlation = 77_777;
    let f = Frame::build(h, |w| props(w, key::ATTRS, &[("email", "after@x")])).unwrap();
    c.send_raw(f.as_bytes());
    assert_eq!(
        s.exit_code(WAIT),
        Some(1),
        "a fenced primary exits with a failure"
    );
    // Its answer, if it had time to send one before exiting, is already here (the socket is
    // at its end; the deadline only bounds the read): an error, never an acknowledgement.
    let answer = c.wait_for(std::time::Duration::from_secs(1), |f| {
        f.head().correlation == 77_777
    });
    if let Some(r) = answer {
        assert!(r.error().is_some(), "a fenced write was acknowledged");
    }
    let n = |v: &str| {
        count(
            &pg,
            "fenced",
            &format!("SELECT count(*) FROM contact_attrs WHERE value = '{v}'"),
        )
    };
    assert_eq!((n("before@x"), n("after@x")), (1, 0));
}

/// An instance whose connections to PostgreSQL are cut (the database restarted, a network
/// cut) does not go on refusing every request: the next write is refused unapplied and the
/// process exits, to be restarted (or replaced by its standby).
#[test]
fn a_lost_database_connection_ends_the_process() {
    let pg = PgServer::start();
    pg.create("lost");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_pg(dir.path(), 5000, "", &pg, "lost");
    let mut s = Server::start(&cfg, &[]);
    let mut c = Client::desktop(s.addr, T1, "writer", TOKEN1);
    create(&mut c, &[("email", "before@x")]);
    let cut = pg.psql(
        "lost",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'test-core'",
    );
    assert_ne!(cut, "0", "the instance's connections were found");
    let mut h = Head::new(Kind::Request, Service::Ucs, ucs::CONTACT_CREATE);
    h.tenant = c.tenant;
    h.session = c.session;
    h.correlation = 88_888;
    let f = Frame::build(h, |w| props(w, key::ATTRS, &[("email", "after@x")])).unwrap();
    c.send_raw(f.as_bytes());
    assert_eq!(
        s.exit_code(WAIT),
        Some(1),
        "the instance exits with a failure"
    );
    let answer = c.wait_for(std::time::Duration::from_secs(1), |f| {
        f.head().correlation == 88_888
    });
    if let Some(r) = answer {
        assert!(
            r.error().is_some(),
            "a write was acknowledged without its database"
        );
    }
    assert_eq!(
        count(
            &pg,
            "lost",
            "SELECT count(*) FROM contact_attrs WHERE value = 'after@x'"
        ),
        0
    );
}

/// The Interaction Server partitioned by tenant: two primaries on one database, each owning
/// the lease of its own tenant, each serving its tenant's interactions with ids of its own; a
/// third instance for a tenant already owned is refused.
#[test]
fn the_interaction_server_is_partitioned_by_tenant() {
    let pg = PgServer::start();
    pg.create("parts");
    let (d1, d2, d3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = Server::start(&write_config_pg_tenant(d1.path(), &pg, "parts", T1), &[]);
    let b = Server::start(&write_config_pg_tenant(d2.path(), &pg, "parts", T2), &[]);
    let (good, _, err) = run(&[
        "--config",
        write_config_pg_tenant(d3.path(), &pg, "parts", T1)
            .to_str()
            .unwrap(),
    ]);
    assert!(!good, "a second owner of tenant 1 started");
    assert!(err.contains("is locked by another instance"), "{err}");
    // Each serves its own tenant, and only it.
    let mut wrong = Client::connect(a.addr);
    assert!(
        code(&wrong.hello(T2, "a1", TOKEN2)).is_some(),
        "tenant 2 on a"
    );
    let mut m1 = Client::desktop(a.addr, T1, "media", TOKEN1);
    let mut m2 = Client::desktop(b.addr, T2, "media", TOKEN2);
    let i1 = submit(&mut m1, "q");
    let i2 = ok(m2.ixn(ixn::SUBMIT, |w| {
        w.str(key::QUEUE, "q")?;
        props(w, key::PROPS, &[("k", "v")])
    }));
    let i2 = int(&i2, key::INTERACTION);
    assert!(
        i1.abs_diff(i2) >= 1 << 32,
        "ids from blocks of their own: {i1} {i2}"
    );
    let mut ag = agent(a.addr, "a");
    ok(ag.ixn(ixn::AGENT_READY, |_| Ok(())));
    let inv = ag.event(ixn::INVITE, WAIT).expect("invite on a");
    assert_eq!(int(&inv, key::INTERACTION), i1);
    assert_eq!(
        pg.psql(
            "parts",
            "SELECT string_agg(tenant::text, ',' ORDER BY tenant) FROM tenant_lease \
             WHERE expires_us > 0"
        ),
        "1,2"
    );
    assert_eq!(
        count(
            &pg,
            "parts",
            "SELECT count(DISTINCT owner) FROM tenant_lease"
        ),
        2,
        "two owners"
    );
}

/// An owner that was paused (SIGSTOP: a long GC, a VM freeze, a network cut) past its lease
/// loses its tenants to the standby; resumed, it commits nothing more and exits.
#[test]
fn a_paused_owner_is_fenced_once_its_tenants_are_taken() {
    let pg = PgServer::start();
    pg.create("paused");
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut p = Server::start(&write_config_pg(d1.path(), 5000, "", &pg, "paused"), &[]);
    let mut sb = Server::start(
        &write_config_pg(d2.path(), 5000, "", &pg, "paused"),
        &["--standby", "--instance", "core-2"],
    );
    sb.wait_line("ROLE backup");
    let mut c = Client::desktop(p.addr, T1, "writer", TOKEN1);
    create(&mut c, &[("email", "before@x")]);
    p.signal("STOP");
    sb.wait_line("ROLE primary");
    let mut h = Head::new(Kind::Request, Service::Ucs, ucs::CONTACT_CREATE);
    h.tenant = c.tenant;
    h.session = c.session;
    h.correlation = 99_999;
    let f = Frame::build(h, |w| props(w, key::ATTRS, &[("email", "paused@x")])).unwrap();
    c.send_raw(f.as_bytes());
    p.signal("CONT");
    assert_eq!(
        p.exit_code(WAIT),
        Some(1),
        "the old owner exits with a failure"
    );
    let answer = c.wait_for(std::time::Duration::from_secs(1), |f| {
        f.head().correlation == 99_999
    });
    if let Some(r) = answer {
        assert!(r.error().is_some(), "the old owner acknowledged a write");
    }
    let n = |v: &str| {
        count(
            &pg,
            "paused",
            &format!("SELECT count(*) FROM contact_attrs WHERE value = '{v}'"),
        )
    };
    assert_eq!((n("before@x"), n("paused@x")), (1, 0));
    // The new owner serves.
    let mut r = Client::desktop(sb.addr, T1, "reader", TOKEN1);
    create(&mut r, &[("email", "after@x")]);
}

/// On PostgreSQL the Interaction Server's tenants are those it leased at start: a reload that
/// drops one keeps serving it (the change needs a restart, and says so), where on SQLite the
/// reload applies it at once (`core_server_auth`).
#[test]
fn a_reload_does_not_change_leased_tenants() {
    let pg = PgServer::start();
    pg.create("reload");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_pg(
        dir.path(),
        5000,
        "http_listen = \"127.0.0.1:0\"",
        &pg,
        "reload",
    );
    let mut s = Server::start(&cfg, &[]);
    let admin = http_addr(&mut s);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[[tenants]]\nid = 2\nname = \"globex\"\n", "");
    std::fs::write(&cfg, text).unwrap();
    s.signal("HUP");
    let reloads = || {
        sample(
            &http(admin, "GET", "/metrics", None).1,
            "deskmux_core_config_reloads_total",
        )
    };
    assert!(
        deskmux_tests::wait_until(WAIT, || reloads() == Some(1.0)),
        "the reload never happened"
    );
    ok(Client::connect(s.addr).hello(T2, "a1", TOKEN2));
}

/// A primary stopped gracefully lets its tenants' leases go, so a restart takes them at once;
/// one killed (kill -9) leaves them to expire, and a restart under the same instance name
/// waits them out and serves (as on SQLite, where the kernel drops a dead process's lock),
/// while another instance is refused at once.
#[test]
fn a_restart_takes_its_own_leases_back() {
    let pg = PgServer::start();
    pg.create("restart");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_pg(dir.path(), 5000, "", &pg, "restart");
    let live = || {
        count(
            &pg,
            "restart",
            "SELECT count(*) FROM tenant_lease \
             WHERE expires_us > (extract(epoch from clock_timestamp()) * 1000000)::bigint",
        )
    };
    let mut s = Server::start(&cfg, &[]);
    assert_eq!(live(), 2, "both tenants leased");
    s.signal("TERM");
    assert_eq!(s.exit_code(WAIT), Some(0));
    assert_eq!(live(), 0, "a graceful stop released the leases");
    let mut s = Server::start(&cfg, &[]);
    let mut w = Client::desktop(s.addr, T1, "writer", TOKEN1);
    let id = create(&mut w, &[("email", "restart@x")]);
    let (good, _, err) = run(&["--config", cfg.to_str().unwrap(), "--instance", "other"]);
    assert!(!good, "another instance started on leased tenants");
    assert!(err.contains("is locked by another instance"), "{err}");
    s.kill9();
    assert_eq!(
        live(),
        2,
        "a killed primary's leases live on until they expire"
    );
    let s = Server::start(&cfg, &[]);
    let mut r = Client::desktop(s.addr, T1, "reader", TOKEN1);
    ok(r.ucs(ucs::CONTACT_GET, |b| {
        b.int(key::CONTACT, id);
        Ok(())
    }));
}

/// An SQLite site moves to PostgreSQL with its data: `core-server storage copy-from-sqlite`
/// copies the data file (refused while a core-server uses it, and into a database that is not
/// empty); core-server on PostgreSQL then logs the same agents in (a reconnect token of the
/// SQLite server included), serves the contacts and history, recovers the queued
/// interaction, and hands out ids above the copied ones.
#[test]
fn an_sqlite_data_file_is_copied_into_postgres() {
    if deskmux_tests::storage_mode::sqlite_only("the source of the copy is an SQLite file") {
        return;
    }
    let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sq_cfg = write_config(src_dir.path(), 5000, "");
    let file = src_dir.path().join("core.db");
    let mut sq = Server::start(&sq_cfg, &[]);
    // A reconnect token handed out on SQLite (its key is copied too).
    let token = ok(Client::connect(sq.addr).hello(T1, "writer", TOKEN1))
        .body()
        .str(key::RECONNECT)
        .expect("a reconnect token")
        .to_string();
    let mut c = Client::desktop(sq.addr, T1, "writer", TOKEN1);
    let contact = create(&mut c, &[("email", "moved@x")]);
    let history = int(
        &ok(c.ucs(ucs::HISTORY_INSERT, |w| {
            w.int(key::CONTACT, contact);
            w.str(key::SUBJECT, "s")?;
            w.str(key::TEXT, "kept across the move")?;
            Ok(())
        })),
        key::HISTORY,
    );
    let queued = submit(&mut c, "q");

    let pg = PgServer::start();
    pg.create("moved");
    let pg_cfg = dst_dir.path().join("core.toml");
    std::fs::write(
        &pg_cfg,
        format!(
            "{}\n{}",
            std::fs::read_to_string(&sq_cfg).unwrap(),
            pg.storage_toml(dst_dir.path(), "moved")
        ),
    )
    .unwrap();
    let copy = |pg_cfg: &std::path::Path| {
        run(&[
            "--config",
            pg_cfg.to_str().unwrap(),
            "storage",
            "copy-from-sqlite",
            file.to_str().unwrap(),
        ])
    };
    let (good, _, err) = copy(&pg_cfg);
    assert!(!good, "copied a file in use");
    assert!(err.contains("is using it"), "{err}");
    // (Nothing was written: the copy below would find the target not empty.)

    sq.kill9();
    let (good, out, err) = copy(&pg_cfg);
    assert!(good, "{err}");
    assert!(out.contains("contacts       1 rows"), "{out}");
    assert!(out.contains("interactions   1 rows"), "{out}");
    assert!(
        count(&pg, "moved", "SELECT count(*) FROM credentials") > 0,
        "{out}"
    );
    let (good, _, err) = copy(&pg_cfg);
    assert!(!good, "copied twice");
    assert!(err.contains("not empty"), "{err}");

    let p = Server::start(&pg_cfg, &[]);
    let with_token = deskmux_codec::msg::DesktopHello {
        version: 1,
        agent: "writer",
        token: "",
        reconnect: Some(&token),
        services: 6,
    };
    ok(Client::connect(p.addr).hello_as(T1, &with_token));
    let mut r = Client::desktop(p.addr, T1, "reader", TOKEN1);
    let g = ok(r.ucs(ucs::CONTACT_GET, |b| {
        b.int(key::CONTACT, contact);
        Ok(())
    }));
    assert_eq!(
        g.body().list(key::ATTRS).unwrap().str("email").unwrap(),
        "moved@x"
    );
    let text = ok(r.ucs(ucs::CONTENT_GET, |b| {
        b.int(key::HISTORY, history);
        Ok(())
    }));
    assert_eq!(text.body().str(key::TEXT).unwrap(), "kept across the move");
    assert!(create(&mut r, &[("email", "new@x")]) > contact, "ids go on");
    let mut a = agent(p.addr, "a");
    ok(a.ixn(ixn::AGENT_READY, |_| Ok(())));
    let inv = a
        .event(ixn::INVITE, WAIT)
        .expect("the copied queued interaction is offered");
    assert_eq!(int(&inv, key::INTERACTION), queued);
    assert!(
        submit(&mut c_on(p.addr), "q") > queued,
        "new interaction ids above the copied"
    );
}

/// A media desktop of tenant 1 on `addr`.
fn c_on(addr: std::net::SocketAddr) -> Client {
    Client::desktop(addr, T1, "media", TOKEN1)
}
