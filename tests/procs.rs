//! Real processes for tests: locate the workspace binaries, start them, wait for the line on
//! stdout that says where they listen, and kill them when the handle drops.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long [`Proc::wait_line`] waits, once the process exited, for the rest of its stdout
/// (normally there at once; longer only if a process it started still holds the pipe).
const EXIT_READ: Duration = Duration::from_secs(5);

/// Path of a workspace binary (`core-server`, `proxy`, `loadgen`) next to the test executable.
///
/// Test executables live in `target/<profile>/deps/`; binaries in `target/<profile>/`.
/// `DESKMUX_BIN_DIR` overrides the directory. The README's test command builds the binaries
/// (`cargo build --workspace --bins`) before `cargo test`.
pub fn bin_path(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("DESKMUX_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    profile_dir.join(name)
}

/// A running child process, killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Proc {
    /// The child; `None` once killed or waited for.
    child: Option<Child>,
    /// Every line the child printed on stdout so far, collected by a reader thread.
    lines: Arc<Mutex<Vec<String>>>,
    /// Set by the reader thread once the child's stdout is closed (every line is in `lines`).
    stdout_closed: Arc<AtomicBool>,
    /// The binary's name, for error messages.
    name: String,
}

impl Proc {
    /// Start `bin` (a name for [`bin_path`]) with `args`; stderr goes to the test's stderr.
    ///
    /// # Errors
    /// The binary is missing or cannot start.
    pub fn spawn(bin: &str, args: &[&str]) -> Result<Proc> {
        Self::spawn_env(bin, args, &[])
    }

    /// As [`Proc::spawn`], with extra environment variables.
    ///
    /// A `core-server` started with `--config` runs on the backend the tests are run with
    /// (see [`crate::storage_mode`]).
    ///
    /// # Errors
    /// The binary is missing or cannot start.
    pub fn spawn_env(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Proc> {
        if bin == "core-server"
            && let Some(config) = crate::storage_mode::config_arg(args)
        {
            crate::storage_mode::prepare(std::path::Path::new(config));
        }
        let path = bin_path(bin);
        if !path.exists() {
            bail!(
                "{} not found: run `cargo build --workspace --bins` first",
                path.display()
            );
        }
        let mut cmd = Command::new(&path);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout_closed = Arc::new(AtomicBool::new(false));
        let (sink, closed) = (lines.clone(), stdout_closed.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut v) = sink.lock() {
                    v.push(line);
                }
            }
            closed.store(true, Ordering::Release);
        });
        Ok(Proc {
            child: Some(child),
            lines,
            stdout_closed,
            name: bin.to_string(),
        })
    }

    /// Wait (at most `timeout`) for a stdout line starting with `prefix`; return the rest of it,
    /// trimmed. Lines already seen count, so call order does not matter.
    ///
    /// # Errors
    /// Timeout, or the process exited first.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(rest) = self.find_line(prefix) {
                return Ok(rest);
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                // The line may have been printed just before the exit: wait until the reader
                // has seen the end of stdout (bounded: a process it started may still hold it).
                let end = Instant::now() + EXIT_READ;
                while !self.stdout_closed.load(Ordering::Acquire) && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if let Some(rest) = self.find_line(prefix) {
                    return Ok(rest);
                }
                bail!("{} exited ({status}) before printing {prefix:?}", self.name);
            }
            if Instant::now() >= deadline {
                bail!("{} did not print {prefix:?} within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn find_line(&self, prefix: &str) -> Option<String> {
        let lines = self.lines.lock().ok()?;
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_string()))
    }

    /// Wait for `LISTENING <addr>` and parse the address.
    ///
    /// # Errors
    /// Timeout, early exit, or an unparseable address.
    pub fn listening(&mut self, timeout: Duration) -> Result<std::net::SocketAddr> {
        let s = self.wait_line("LISTENING ", timeout)?;
        let first = s.split_whitespace().next().unwrap_or("");
        first
            .parse()
            .with_context(|| format!("bad LISTENING address {s:?}"))
    }

    /// All stdout lines so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The child's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Send a signal (e.g. `libc::SIGTERM`) via the `kill` command.
    ///
    /// # Errors
    /// The process is gone or `kill` failed.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let pid = self.pid().context("process already reaped")?;
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()?;
        if !st.success() {
            bail!("kill -{sig} {pid} failed");
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait (at most `timeout`) for the process to exit by itself; returns its exit code.
    ///
    /// # Errors
    /// Timeout (the process is then killed).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let Some(c) = self.child.as_mut() else {
            bail!("{} was already reaped", self.name)
        };
        match wait_child(c, timeout) {
            Some(st) => {
                self.child = None;
                Ok(st.code())
            }
            None => {
                self.child = None;
                bail!("{} did not exit within {timeout:?}", self.name)
            }
        }
    }
}

/// Wait (at most `timeout`) for `child` to exit by itself: its status, or `None` after it was
/// killed at the timeout. The one bounded wait for a child's exit in the tests: std has no
/// wait with a timeout, so it polls `try_wait`, every 20 ms.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait (at most `timeout`) until `f` holds, checking it every 50 ms: whether it did. The one
/// bounded wait for a condition in the tests (a poll interval, not a synchronisation: the
/// condition is what is waited for).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
