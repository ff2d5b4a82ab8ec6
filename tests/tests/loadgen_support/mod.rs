//! Private support for the `loadgen_*` integration tests: the real loadgen binary, run with a
//! bounded wait and its stdout and stderr captured, against a real stack (see
//! `proxy_support`).
#![allow(dead_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::proxy_support::{T1, TOKEN1, http_get};

/// What a finished loadgen said.
#[derive(Debug)]
pub struct Ran {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

/// A started loadgen whose output is being collected.
pub struct Running {
    pub child: Child,
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Start loadgen with `args` in `cwd`.
pub fn start(args: &[&str], cwd: &Path) -> Running {
    let mut child = Command::new(deskmux_tests::procs::bin_path("loadgen"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadgen (cargo build --workspace --bins first)");
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    Running { child, out, err }
}

impl Running {
    /// Wait at most `timeout` for the exit (killed after it, and the test fails).
    pub fn finish(mut self, timeout: Duration) -> Ran {
        let Some(st) = deskmux_tests::wait_child(&mut self.child, timeout) else {
            let err = self.err.join().unwrap_or_default();
            panic!("loadgen still running after {timeout:?}; stderr:\n{err}");
        };
        let code = st.code();
        Ran {
            code,
            stdout: self.out.join().unwrap_or_default(),
            stderr: self.err.join().unwrap_or_default(),
        }
    }
}

/// Run loadgen with `args` in `cwd`, at most 120 s.
pub fn run(args: &[&str], cwd: &Path) -> Ran {
    start(args, cwd).finish(Duration::from_secs(120))
}

/// A credentials file for `n` provisioned agents of tenant 1, in `dir`.
pub fn credentials(dir: &Path, n: usize) -> PathBuf {
    deskmux_tests::creds::loadgen_file(dir, T1, TOKEN1, n).expect("credentials file")
}

/// `run` arguments for a short, quiet, one-thread run of `n` desktops against `site`.
pub fn short_run(site: &str, creds: &Path, n: usize) -> Vec<String> {
    let mut args = vec!["run".to_string(), "--site".to_string(), site.to_string()];
    args.extend(short_load(creds, n));
    args
}

/// The load options of [`short_run`] (credentials, `n` desktops, one thread, a 0.3 s ramp
/// and warm-up, 1 s measured, 3 s drain, quiet), for any subcommand.
pub fn short_load(creds: &Path, n: usize) -> Vec<String> {
    [
        "--credentials",
        creds.to_str().expect("utf-8 path"),
        "-n",
        &n.to_string(),
        "--threads",
        "1",
        "--ramp",
        "0.3",
        "--warmup",
        "0.3",
        "--duration",
        "1",
        "--drain",
        "3",
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Borrow a `Vec<String>` as arguments.
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Parse a JSON file loadgen wrote.
pub fn read_json(p: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", p.display()))
}

/// `deskmux_proxy_requests_total` summed over services and workers.
pub fn proxy_requests(admin: SocketAddr) -> u64 {
    let (_, body) = http_get(admin, "/metrics");
    body.lines()
        .filter(|l| l.starts_with("deskmux_proxy_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
