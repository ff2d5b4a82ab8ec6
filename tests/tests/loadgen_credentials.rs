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
