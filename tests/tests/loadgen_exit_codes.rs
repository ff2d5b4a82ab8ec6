//! loadgen's exit codes tell the outcomes apart, as `loadgen --help` documents: 2 a usage
//! error (found before anything connects), 3 no site reachable, 5 a missed target under
//! `--strict` (0 without it). 4, lost or wrong answers, needs a server that misbehaves:
//! loadgen/tests/fake_server.rs checks it.

mod loadgen_support;
mod proxy_support;

use std::net::TcpListener;

use loadgen_support::*;
use proxy_support::*;

#[test]
fn help_documents_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [&["--help"][..], &["run", "--help"], &["demo", "--help"]] {
        let r = run(cmd, dir.path());
        assert_eq!(r.code, Some(0), "{r:?}");
        for line in [
            "Exit codes:",
            "2    usage error",
            "3    failure to connect",
            "4    requests lost",
            "5    with --strict",
        ] {
            assert!(
                r.stdout.contains(line),
                "{cmd:?} lacks {line:?}:\n{}",
                r.stdout
            );
        }
    }
}

#[test]
fn usage_errors_exit_2_before_anything_connects() {
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path(), 4);
    // A listener that would see loadgen's desktops if the run started.
    let site = TcpListener::bind("127.0.0.1:0").unwrap();
    site.set_nonblocking(true).unwrap();
    let addr = site.local_addr().unwrap().to_string();
    let mut base = short_run(&addr, &creds, 4);
    base.extend(["--connect-timeout".into(), "1".into()]);

    let bad_json = dir.path().join("no/such/dir/out.json");
    let mut args = base.clone();
    args.extend(["--json".into(), bad_json.display().to_string()]);
    let r = run(&strs(&args), dir.path());
    assert_eq!(r.code, Some(2), "unwritable --json: {r:?}");
    assert!(r.stderr.contains("out.json"), "the path is named: {r:?}");
    assert!(
        site.accept().is_err(),
        "a desktop connected: the output was checked after the run started"
    );

    let mut args = base.clone();
    args.extend(["--html".into(), dir.path().display().to_string()]);
    let r = run(&strs(&args), dir.path());
    assert_eq!(r.code, Some(2), "--html naming a directory: {r:?}");

    for (opt, val) in [("--duration", "ten"), ("--payload", "8"), ("-n", "0")] {
        let mut args = base.clone();
        args.extend([opt.into(), val.into()]);
        let r = run(&strs(&args), dir.path());
        assert_eq!(r.code, Some(2), "{opt} {val}: {r:?}");
    }
    assert!(site.accept().is_err(), "a desktop connected");
}

#[test]
fn an_unreachable_site_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path(), 2);
    // A name that cannot resolve (.invalid is reserved for that).
    let r = run(
        &strs(&short_run("no-such-site.invalid:7200", &creds, 2)),
        dir.path(),
    );
    assert_eq!(r.code, Some(3), "{r:?}");
    assert!(r.stderr.contains("no-such-site.invalid"), "{r:?}");
    // A port nobody listens on: every desktop fails.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut args = short_run(&closed.to_string(), &creds, 2);
    args.extend(["--connect-timeout".into(), "1".into()]);
    let r = run(&strs(&args), dir.path());
    assert_eq!(r.code, Some(3), "{r:?}");
}

#[test]
fn strict_fails_a_run_that_missed_its_target() {
    let st = stack(1, 1, "");
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path(), 2);
    let json = dir.path().join("out.json");
    // Two desktops cannot send a million requests a second: the target is missed.
    let mut args = short_run(&st.proxy.addr.to_string(), &creds, 2);
    args.extend(
        ["--rate", "1000000", "--json", json.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string()),
    );
    let r = run(&strs(&args), dir.path());
    let v = read_json(&json);
    assert_eq!(v["target_missed"], true, "{v:#}");
    assert_eq!(v["verification_failed"], false, "{v:#}");
    assert_eq!(
        r.code,
        Some(0),
        "without --strict a miss is reported only: {r:?}"
    );
    args.push("--strict".into());
    let r = run(&strs(&args), dir.path());
    assert_eq!(read_json(&json)["target_missed"], true);
    assert_eq!(r.code, Some(5), "{r:?}");
}
