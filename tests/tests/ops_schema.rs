//! The data file's schema is versioned (`PRAGMA user_version`): a file from before versioning
//! (or from an older core-server) is migrated when it is opened and keeps its data; a file
//! written by a newer core-server is refused at start, with a message saying so, and left as
//! it was.

mod core_server_support;

use core_server_support::*;
use deskmux_codec::msg::{key, ucs};
use deskmux_tests::Proc;

fn user_version(db: &std::path::Path) -> u32 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_file_from_before_versioning_is_migrated_and_keeps_its_data() {
    if deskmux_tests::storage_mode::sqlite_only(
        "the SQLite file's user_version; PostgreSQL's schema versions: core-server's storage_backends::postgres_migrates_once_and_refuses_a_newer_schema",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "");
    let db = dir.path().join("core.db");
    let latest = user_version(&db);
    assert!(latest >= 2, "a new file is stamped with the latest version");
    let mut s = Server::start(&cfg, &[]);
    let mut c = Client::desktop(s.addr, T1, "writer", TOKEN1);
    let r = ok(c.ucs(ucs::CONTACT_CREATE, |w| {
        props(w, key::ATTRS, &[("name", "kept across the upgrade")])
    }));
    let contact = int(&r, key::CONTACT);
    s.kill9();

    // As a core-server from before versioning (and before per-agent credentials) left it.
    let old = rusqlite::Connection::open(&db).unwrap();
    old.execute_batch("DROP TABLE credentials; DROP TABLE auth_meta; PRAGMA user_version = 0;")
        .unwrap();
    drop(old);
    // Opening it (here `creds import`, as an operator provisioning the upgraded server would)
    // migrates it: the credentials tables exist again.
    deskmux_tests::creds::provision_named(&cfg, &[(T1, TOKEN1), (T2, TOKEN2)])
        .expect("provision agents on the migrated file");
    assert_eq!(user_version(&db), latest);
    let mut s = Server::start(&cfg, &[]);
    let mut c = Client::desktop(s.addr, T1, "writer", TOKEN1);
    let g = ok(c.ucs(ucs::CONTACT_GET, |w| {
        w.int(key::CONTACT, contact);
        Ok(())
    }));
    assert_eq!(
        g.body().list(key::ATTRS).unwrap().str("name").unwrap(),
        "kept across the upgrade"
    );
    s.kill9();
}

#[test]
fn a_file_from_a_newer_core_server_is_refused() {
    if deskmux_tests::storage_mode::sqlite_only(
        "the SQLite file's user_version; PostgreSQL's schema versions: core-server's storage_backends::postgres_migrates_once_and_refuses_a_newer_schema",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "");
    let db = dir.path().join("core.db");
    let newer = user_version(&db) + 5;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(&format!("PRAGMA user_version = {newer}"))
        .unwrap();
    let mut p = Proc::spawn_env(
        "core-server",
        &["--config", cfg.to_str().unwrap()],
        &[("RUST_LOG", "error")],
    )
    .unwrap();
    let code = p
        .wait_exit(WAIT)
        .expect("core-server exits rather than serve a newer file");
    assert_ne!(code, Some(0));
    assert!(p.stdout_lines().iter().all(|l| !l.starts_with("LISTENING")));
    assert_eq!(user_version(&db), newer, "the file is left as it was");
}
