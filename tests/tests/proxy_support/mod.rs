//! Private support for the `proxy_*` integration tests: real `core-server` and `proxy`
//! processes on loopback with temp configs, driven by `deskmux_tests::TestClient`.
#![allow(dead_code)]

pub mod cases;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deskmux_codec::msg::{ixn, key, ucs};
use deskmux_codec::{ErrorCode, Frame, Service};
use deskmux_tests::{Proc, TestClient};
use tempfile::TempDir;

pub const T1: u32 = 1;
pub const T2: u32 = 2;
pub const TOKEN1: &str = "tok-acme";
pub const TOKEN2: &str = "tok-globex";
pub const SECRET: &str = "proxy-test-secret-0123456789abcdef";
pub const START: Duration = Duration::from_secs(20);

/// Write a core-server config in `dir` (listen on `listen`).
pub fn core_config(dir: &Path, name: &str, listen: &str) -> PathBuf {
    core_config_with(dir, name, listen, "")
}

/// As [`core_config`], with extra top-level TOML lines (e.g. `role = "ucs"`).
pub fn core_config_with(dir: &Path, name: &str, listen: &str, extra: &str) -> PathBuf {
    let had_db = dir.join(format!("{name}.db")).exists();
    let cfg = format!(
        r#"{extra}
listen = "{listen}"
db = "{db}"
instance = "{name}"
link_secret = "{SECRET}"
heartbeat_ms = 60000
invite_timeout_ms = 30000
shutdown_grace_ms = 300

[[tenants]]
id = 1
name = "acme"

[[tenants]]
id = 2
name = "globex"
"#,
        db = dir.join(format!("{name}.db")).display()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, cfg).expect("write core config");
    // Once per data file: a test that rewrites the config (to restart with other settings)
    // keeps the agents it has, and a full disk stays full.
    if !had_db {
        deskmux_tests::creds::provision(&p, &[(T1, TOKEN1), (T2, TOKEN2)])
            .expect("provision agents");
    }
    p
}

/// Start a core-server; returns it and its address.
pub fn start_core(dir: &Path, name: &str, listen: &str) -> (Proc, SocketAddr) {
    start_core_with(dir, name, listen, "")
}

/// Start a core-server with extra config lines.
pub fn start_core_with(dir: &Path, name: &str, listen: &str, extra: &str) -> (Proc, SocketAddr) {
    let cfg = core_config_with(dir, name, listen, extra);
    let mut p = Proc::spawn("core-server", &["--config", cfg.to_str().unwrap_or("")])
        .expect("spawn core-server");
    let addr = p.listening(START).expect("core-server listening");
    (p, addr)
}

/// Write a proxy config: one upstream serving both services (`links` links), `limits` TOML
/// lines appended under `[limits]`.
pub fn proxy_config(
    dir: &Path,
    upstreams: &[(&str, SocketAddr)],
    workers: usize,
    links: u16,
    limits: &str,
) -> PathBuf {
    // Loopback links in plain TCP by explicit choice (the proxy refuses them otherwise). A
    // test that wants TLS links appends a `[link_tls]` section: it makes every upstream TLS,
    // and the opt-in then permits nothing.
    let links_security = "plaintext_links = true\n";
    let mut s = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworkers = {workers}\nlink_secret = \"{SECRET}\"\n{links_security}\n[limits]\n{limits}\n"
    );
    for (i, (svc, addr)) in upstreams.iter().enumerate() {
        s.push_str(&format!(
            "\n[[upstream]]\nname = \"up{i}\"\nservice = {svc}\naddr = \"{addr}\"\nlinks = {links}\n"
        ));
    }
    let p = dir.join("proxy.toml");
    std::fs::write(&p, s).expect("write proxy config");
    p
}

/// A running proxy: process, desktop address, admin address.
pub struct Proxy {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
}

pub fn start_proxy(config: PathBuf) -> Proxy {
    let mut proc = Proxy::spawn(&config);
    let addr = proc.listening(START).expect("proxy listening");
    let admin = proc
        .wait_line("ADMIN ", START)
        .expect("proxy admin")
        .parse()
        .expect("admin addr");
    Proxy {
        proc,
        addr,
        admin,
        config,
    }
}

impl Proxy {
    fn spawn(config: &Path) -> Proc {
        Proc::spawn_env(
            "proxy",
            &["--config", config.to_str().unwrap_or("")],
            &[("RUST_LOG", "warn")],
        )
        .expect("spawn proxy")
    }
}

/// The standard stack: one core-server (both roles), one proxy in front.
pub struct Stack {
    pub dir: TempDir,
    pub core: Proc,
    pub core_addr: SocketAddr,
    pub proxy: Proxy,
}

pub fn stack(workers: usize, links: u16, limits: &str) -> Stack {
    stack_in(
        tempfile::tempdir().expect("tempdir"),
        workers,
        links,
        limits,
        "",
    )
}

/// As [`stack`], in `dir` (which may already hold e.g. certificates), with `extra` TOML
/// appended to the proxy's config (a `[tls]` or `[quic]` section).
pub fn stack_in(dir: TempDir, workers: usize, links: u16, limits: &str, extra: &str) -> Stack {
    let (core, core_addr) = start_core(dir.path(), "core1", "127.0.0.1:0");
    let cfg = proxy_config(
        dir.path(),
        &[("[\"interaction\", \"ucs\"]", core_addr)],
        workers,
        links,
        limits,
    );
    append_toml(&cfg, extra);
    let proxy = start_proxy(cfg);
    Stack {
        dir,
        core,
        core_addr,
        proxy,
    }
}

/// Append `extra` TOML (e.g. a `[tls]` section) to a config file.
pub fn append_toml(cfg: &Path, extra: &str) {
    if extra.is_empty() {
        return;
    }
    let mut s = std::fs::read_to_string(cfg).expect("read config");
    s.push('\n');
    s.push_str(extra);
    std::fs::write(cfg, s).expect("write config");
}

/// Minimal blocking HTTP GET (admin port).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

pub fn status(admin: SocketAddr) -> serde_json::Value {
    let (_, body) = http_get(admin, "/status");
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

pub use deskmux_tests::wait_until;

/// [`wait_until`] for async tests: the polling (blocking admin reads, the back-off between
/// them) runs on a blocking thread, so it holds no runtime worker the desktops need.
pub async fn wait_until_async(timeout: Duration, f: impl FnMut() -> bool + Send + 'static) -> bool {
    tokio::task::spawn_blocking(move || wait_until(timeout, f))
        .await
        .expect("wait_until_async: the polling thread panicked")
}

pub async fn desktop(addr: SocketAddr, tenant: u32) -> TestClient {
    let token = if tenant == T2 { TOKEN2 } else { TOKEN1 };
    let n = usize::try_from(fastid()).unwrap_or(0);
    TestClient::connect_hello(addr, tenant, &deskmux_tests::creds::agent(n), token)
        .await
        .expect("hello through proxy")
}

fn fastid() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    u64::from(std::process::id()) * 1_000_000 + N.fetch_add(1, Ordering::Relaxed)
}

pub async fn echo(c: &mut TestClient, service: Service, data: &[u8]) -> Frame {
    let t = if service == Service::Ucs {
        ucs::ECHO
    } else {
        ixn::ECHO
    };
    c.request(service, t, |w| {
        w.bin(key::DATA, data)?;
        Ok(())
    })
    .await
    .expect("echo")
}

/// One echo of `data` through `service` that must come back intact; `Err` says what differed
/// (for tests that count failures rather than stop at the first).
pub async fn try_echo(c: &mut TestClient, service: Service, data: &[u8]) -> anyhow::Result<()> {
    let t = if service == Service::Ucs {
        ucs::ECHO
    } else {
        ixn::ECHO
    };
    let r = c
        .request(service, t, |w| {
            w.bin(key::DATA, data)?;
            Ok(())
        })
        .await?;
    anyhow::ensure!(r.error().is_none(), "echo error: {:?}", r.error());
    anyhow::ensure!(r.body().bin(key::DATA)? == data, "echo payload differs");
    Ok(())
}

/// [`try_echo`] that panics on any failure.
pub async fn echo_ok(c: &mut TestClient, service: Service, data: &[u8]) {
    try_echo(c, service, data).await.expect("echo");
}

pub fn code(f: &Frame) -> Option<ErrorCode> {
    f.error().map(|(c, _)| c)
}

/// Closed-loop 64-byte echoes on `c` until `stop`, `depth` in flight at a time; every answer
/// must be a success. Returns how many were answered (for the measurement tests).
pub async fn echo_until(c: &mut TestClient, depth: usize, stop: Instant) -> u64 {
    let mut n = 0u64;
    let payload = [7u8; 64];
    let mut corrs = Vec::with_capacity(depth);
    while Instant::now() < stop {
        for _ in 0..depth {
            let corr = c
                .send(Service::Interaction, ixn::ECHO, |w| {
                    w.bin(key::DATA, &payload)?;
                    Ok(())
                })
                .await
                .unwrap();
            corrs.push(corr);
        }
        for corr in corrs.drain(..) {
            let r = c.response(corr, Duration::from_secs(10)).await.unwrap();
            assert!(r.error().is_none());
            n += 1;
        }
    }
    n
}

/// The sum over workers of `deskmux_proxy_quic_total{what="<what>"}` (events: retries,
/// refused, accepted, failed) or `deskmux_proxy_quic_connections{what="<what>"}` (now:
/// desktops, handshaking) in a `/metrics` text.
pub fn quic_metric(m: &str, what: &str) -> u64 {
    m.lines()
        .filter(|l| {
            (l.starts_with("deskmux_proxy_quic_total{")
                || l.starts_with("deskmux_proxy_quic_connections{"))
                && l.contains(&format!("what=\"{what}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Run the proxy on `cfg` and wait (bounded) for it to exit; its exit status and stderr.
/// A proxy still running after 15 s (it accepted the configuration) is killed: `None`.
pub fn run_to_exit(cfg: &Path, args: &[&str]) -> (Option<std::process::ExitStatus>, String) {
    run_bin_to_exit("proxy", cfg, args)
}

/// As [`run_to_exit`], for binary `bin` (`proxy`, `core-server`).
pub fn run_bin_to_exit(
    bin: &str,
    cfg: &Path,
    args: &[&str],
) -> (Option<std::process::ExitStatus>, String) {
    let mut child = std::process::Command::new(deskmux_tests::bin_path(bin))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
    let status = deskmux_tests::wait_child(&mut child, Duration::from_secs(15));
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (status, err)
}

/// Start a proxy on `config` through `sh -c`, so that `prelude` (e.g. `ulimit -n 256`) runs
/// first, with `args` added and its stderr appended to `log` (the ops tests read the log
/// lines). Its stdout is read as [`start_proxy`] reads it.
pub fn start_proxy_logged(config: PathBuf, prelude: &str, args: &[&str], log: &Path) -> Proxy {
    let script = format!("{prelude}\nexec \"$0\" \"$@\" 2>>\"$PROXY_LOG\"");
    let bin = deskmux_tests::bin_path("proxy");
    let mut argv = vec![
        "-c",
        script.as_str(),
        bin.to_str().unwrap_or(""),
        "--config",
        config.to_str().unwrap_or(""),
    ];
    argv.extend_from_slice(args);
    let log_s = log.to_str().unwrap_or("");
    let mut proc = Proc::spawn_env(
        "/bin/sh",
        &argv,
        &[("PROXY_LOG", log_s), ("RUST_LOG", "info")],
    )
    .expect("spawn proxy");
    let addr = proc.listening(START).expect("proxy listening");
    let admin = proc
        .wait_line("ADMIN ", START)
        .expect("proxy admin")
        .parse()
        .expect("admin addr");
    Proxy {
        proc,
        addr,
        admin,
        config,
    }
}

/// A GET on the admin port with an `Accept` header: status code, `Content-Type`, body.
pub fn http_get_accept(addr: SocketAddr, path: &str, accept: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: x\r\nAccept: {accept}\r\n\r\n"
    )
    .expect("write");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (code, ctype, body.to_string())
}

/// The sum of the samples of `name` (exactly that name, any labels) in a metrics text.
pub fn sample_sum(m: &str, name: &str) -> Option<f64> {
    let v: Vec<f64> = m
        .lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// The text of a log file (empty while it does not exist).
pub fn log_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}
