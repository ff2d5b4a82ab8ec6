//! The passwords loadgen logs desktops in with never show in `ps`: a sharded run re-executes
//! loadgen as worker processes, which get their configuration and credentials down a stdin
//! pipe — their command line and environment carry neither the passwords nor the file they
//! came from.

mod loadgen_support;
mod proxy_support;

use std::time::Duration;

use loadgen_support::*;
use proxy_support::*;

/// Children of `pid` (from /proc/PID/task/*/children).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    out
}

#[test]
fn shards_get_no_credentials_in_argv_or_environment() {
    let st = stack(1, 1, "");
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path(), 10);
    let json = dir.path().join("out.json");
    let site = st.proxy.addr.to_string();
    // 10 desktops at 5 per process: two shard processes.
    let lg = start(
        &[
            "run",
            "--credentials",
            creds.to_str().unwrap(),
            "--site",
            &site,
            "-n",
            "10",
            "--per-process",
            "5",
            "--threads",
            "1",
            "--ramp",
            "0.5",
            "--warmup",
            "0.5",
            "--duration",
            "3",
            "--drain",
            "3",
            "-q",
            "--json",
            json.to_str().unwrap(),
        ],
        dir.path(),
    );
    let pid = lg.child.id();
    let mut seen = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            for c in children(pid) {
                let cmdline = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
                let environ = std::fs::read(format!("/proc/{c}/environ")).unwrap_or_default();
                // Only after the exec: between fork and exec a child still shows the
                // parent's command line.
                let execed = cmdline.windows(14).any(|w| w == b"shard\0--shard\0");
                if execed && !seen.iter().any(|(p, _, _)| *p == c) {
                    seen.push((c, cmdline, environ));
                }
            }
            seen.len() >= 2
        }),
        "the two shard processes did not show up: {seen:?}"
    );
    let creds_path = creds.to_str().unwrap();
    for (c, cmdline, environ) in &seen {
        let cmdline = String::from_utf8_lossy(cmdline).replace('\0', " ");
        let environ = String::from_utf8_lossy(environ).replace('\0', " ");
        assert!(cmdline.contains("shard"), "pid {c}: {cmdline}");
        for (what, text) in [("command line", &cmdline), ("environment", &environ)] {
            assert!(
                !text.contains(TOKEN1),
                "pid {c}: the password in its {what}: {text}"
            );
            assert!(
                !text.contains(creds_path),
                "pid {c}: the credentials file in its {what}: {text}"
            );
            assert!(
                !text.contains(&site),
                "pid {c}: the run's configuration in its {what}: {text}"
            );
        }
    }
    let r = lg.finish(Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "{r:?}");
    let v = read_json(&json);
    assert_eq!(v["shards"], 2, "{v:#}");
    assert_eq!(
        v["clients"]["connected"], 10,
        "the shards logged in with what came down the pipe: {v:#}"
    );
    assert_eq!(v["verification_failed"], false, "{v:#}");
}

/// `loadgen demo --credentials FILE` logs its desktops in with that file, so the demo's
/// core-server must hold those agents: it imports the file instead of writing its own (here
/// every desktop of tenant 1, which the demo's own file never is: it alternates tenants).
#[test]
fn demo_imports_the_credentials_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("mine.tsv");
    let lines: String = (0..12)
        .map(|i| format!("1\tmine-{i}\tpassword-of-mine-{i}-0123456789\n"))
        .collect();
    std::fs::write(&creds, lines).unwrap();
    let json = dir.path().join("out.json");
    let mut args = vec!["demo".to_string()];
    args.extend(short_load(&creds, 12));
    args.extend(["--json".to_string(), json.to_str().unwrap().to_string()]);
    let ran = run(&strs(&args), dir.path());
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let v = read_json(&json);
    assert_eq!(v["clients"]["connected"], 12, "{v:#}");
    assert_eq!(v["clients"]["login_failed"], 0, "{v:#}");
    assert_eq!(v["requests"]["by_type"]["agent_login"], 12, "{v:#}");
}
