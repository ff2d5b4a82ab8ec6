//! `demo` and `compare`: start `core-server` and `proxy` from this workspace (the binaries next
//! to the loadgen executable) with embedded configurations on loopback, wait for their
//! `LISTENING` lines, drive them, and kill them. `compare` runs the same load direct and
//! through the proxy and prints the ratios of throughput, server CPU per request and p99.
//! The proxy's links to core-server are TLS (core-server's port speaks TLS with a fresh rcgen
//! certificate, the proxy's link CA), as a deployment's should be; `--plaintext-links` makes
//! them plain TCP on loopback. Direct desktops always speak plain TCP to the server.
//!
//! Server figures added to the summary's `server` object: `via` (`direct`/`proxy`),
//! `server_cpu_percent`, `server_cpu_us_per_request`, `proxy_cpu_percent`,
//! `proxy_cpu_us_per_request`, `proxy_processes`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::engine::{self, process_cpu_ns};

/// `n` random bytes from the kernel, hex-encoded (link secrets and demo passwords).
///
/// # Errors
/// `/dev/urandom` unreadable.
pub fn random_hex(n: usize) -> Result<String, String> {
    use std::io::Read;
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The demo's core-server configuration (`listen` on any free port, data under `dir`).
pub fn core_config(dir: &Path, secret: &str) -> String {
    core_config_with(dir, None, secret)
}

/// Write the demo's credentials file in `dir` (mode 0600): `agents` lines
/// `TENANT<TAB>lg-<i><TAB>PASSWORD`, tenants 1 and 2 alternating, random passwords. It is both
/// what `core-server creds import` reads and loadgen's `--credentials`.
///
/// # Errors
/// I/O or randomness.
pub fn write_credentials(dir: &Path, agents: u64) -> Result<PathBuf, String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("credentials.tsv");
    let pool = random_hex(16 * 1024)?;
    let mut text = String::with_capacity(usize::try_from(agents).unwrap_or(0) * 32);
    for i in 0..agents {
        // 16 hex digits of the pool per agent, at an offset that differs for each (the pool is
        // 32 KiB of hex; 64 bits of it per password is plenty for a loopback demo).
        let off = usize::try_from((i * 16) % (pool.len() as u64 - 16)).unwrap_or(0);
        let pw = &pool[off..off + 16];
        text.push_str(&format!("{}\tlg-{i}\t{pw}{i:x}\n", 1 + i % 2));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Provision the credentials file into the server's data file the way an operator does:
/// `core-server --config CFG creds import`, with argon2id at its cheapest (m = 8 KiB, t = 1):
/// the demo logs 25,000 desktops in within its ramp, which the default cost (19 MiB, 2 passes,
/// tens of ms each) would turn into minutes of CPU. Production credentials use the default.
///
/// # Errors
/// The import failed.
pub fn import_credentials(bins: &Path, core_cfg: &Path, creds: &Path) -> Result<(), String> {
    let file = std::fs::File::open(creds).map_err(|e| format!("{}: {e}", creds.display()))?;
    let out = Command::new(bins.join("core-server"))
        .arg("--config")
        .arg(core_cfg)
        .args(["creds", "import", "--argon2-m-kib", "8", "--argon2-t", "1"])
        .stdin(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("core-server creds import: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "core-server creds import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// [`core_config`] with the server's per-connection `outbound_queue` (frames queued towards one
/// connection before the server closes it as a slow consumer) set, if `Some`; the server's
/// default (8192) otherwise. A proxy link carries the answers of thousands of desktops, so
/// pipelined runs through the proxy may need more (`--server-outbound-queue`).
pub fn core_config_with(dir: &Path, outbound_queue: Option<usize>, secret: &str) -> String {
    let oq = outbound_queue
        .map(|n| format!("outbound_queue = {n}\n"))
        .unwrap_or_default();
    format!(
        r#"# written by loadgen demo
listen = "127.0.0.1:0"
role = "both"
db = "{}"
instance = "demo-core-1"
link_secret = "{secret}"
heartbeat_ms = 5000
max_in_flight = 256
{oq}
[[tenants]]
id = 1
name = "acme"

[[tenants]]
id = 2
name = "globex"
"#,
        dir.join("core.db").display()
    )
}

/// How [`Stack::start_with`] sets up the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackOpts {
    /// A proxy with this many workers in front of the server; `None`: desktops go direct.
    pub proxy_workers: Option<usize>,
    /// core-server `outbound_queue` (see [`core_config_with`]); `None`: the server's default.
    pub server_outbound_queue: Option<usize>,
    /// The proxy also takes QUIC desktops (self-signed rcgen certificate, [`Stack::ca`]).
    pub quic: bool,
    /// The proxy's TCP port speaks TLS (only: plain TCP desktops cannot use it then), with the
    /// same certificate.
    pub tls: bool,
    /// The proxy's desktop `heartbeat_ms` (desktops heartbeat at half of it when idle; three
    /// silent intervals close one). Every idle desktop costs a round trip per half interval,
    /// which is what a QUIC desktop pays most for.
    pub heartbeat_ms: u32,
    /// Agents to provision (`lg-0` ..), one per desktop of the load.
    pub agents: u64,
    /// The proxy's links to core-server use TLS (the default): core-server's port speaks TLS
    /// (a self-signed rcgen certificate for 127.0.0.1, which the proxy trusts as its link CA).
    /// Only with a proxy (direct desktops speak plain TCP). Otherwise the links are plain TCP
    /// on loopback, with the proxy's explicit `plaintext_links` opt-in.
    pub link_tls: bool,
    /// GMS (`callback`): a `[gms]` resource group per tenant on the server, its HTTP admin
    /// port (for `/metrics`), and the proxy routes the `gms` service.
    pub gms: Option<GmsStack>,
    /// Import this credentials file instead of writing a new one (a second site provisions
    /// the first one's agents).
    pub credentials: Option<PathBuf>,
}

/// The demo server's `request_timeout_ms` (core-server's default): a request still queued
/// after this is not run.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// The `[gms]` section of a demo stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GmsStack {
    /// The resource group's name (one per tenant).
    pub group: String,
    /// Access numbers in each tenant's pool.
    pub pool: u64,
    /// `booking_ttl_ms`.
    pub ttl_ms: u64,
    /// `expiry_sweep_ms`.
    pub sweep_ms: u64,
    /// Which site this is (0, 1): it picks the numbers, so that the sites' pools do not
    /// intersect (the seed's advice, and `core-server --check-config --other-site`'s rule).
    pub site: u8,
}

/// The access numbers of `tenant`'s pool at `site`: `+1800` then site, tenant, index.
pub fn gms_numbers(site: u8, tenant: u32, pool: u64) -> Vec<String> {
    (0..pool)
        .map(|i| format!("+1800{site}{tenant}{i:07}"))
        .collect()
}

/// The server's `[gms]` section for `g`: a pool (locking, random) per tenant 1 and 2.
pub fn gms_section(g: &GmsStack) -> String {
    let mut out = format!("\n[gms]\nexpiry_sweep_ms = {}\n", g.sweep_ms);
    for tenant in [1u32, 2] {
        let numbers = gms_numbers(g.site, tenant, g.pool)
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(",");
        out.push_str(&format!(
            "\n[[gms.groups]]\ntenant = {tenant}\nname = \"{}\"\nlocking = \"pool\"\nbooking_ttl_ms = {}\nnumbers = [{numbers}]\n",
            g.group, g.ttl_ms
        ));
    }
    out
}

impl Default for StackOpts {
    fn default() -> Self {
        StackOpts {
            proxy_workers: Some(2),
            server_outbound_queue: None,
            quic: false,
            tls: false,
            heartbeat_ms: 5000,
            agents: 1000,
            link_tls: true,
            gms: None,
            credentials: None,
        }
    }
}

/// The demo's proxy configuration, pointing at `server`, with desktop heartbeats every
/// `heartbeat_ms`; with `tls = Some((cert, key))` its TCP port speaks TLS with that
/// certificate, with `quic = Some((cert, key))` it also takes QUIC desktops on the same port
/// number (UDP). With `link_ca = Some(ca)` its links are TLS, verifying the server against
/// `ca`; otherwise plain TCP on loopback, opted in with `plaintext_links = true`. With `gms` it
/// routes the `gms` service too.
#[allow(clippy::too_many_arguments)]
pub fn proxy_config(
    secret: &str,
    server: SocketAddr,
    workers: usize,
    heartbeat_ms: u32,
    tls: Option<(&Path, &Path)>,
    quic: Option<(&Path, &Path)>,
    link_ca: Option<&Path>,
    gms: bool,
) -> String {
    let services = if gms {
        r#"["interaction", "ucs", "gms"]"#
    } else {
        r#"["interaction", "ucs"]"#
    };
    let section = |name: &str, files: Option<(&Path, &Path)>| {
        files
            .map(|(c, k)| {
                format!(
                    "\n[{name}]\ncert = \"{}\"\nkey = \"{}\"\n",
                    c.display(),
                    k.display()
                )
            })
            .unwrap_or_default()
    };
    let quic = section("tls", tls) + &section("quic", quic);
    let links = match link_ca {
        Some(ca) => format!("\n[link_tls]\nca = \"{}\"\n", ca.display()),
        None => String::new(),
    };
    let plaintext = if link_ca.is_some() {
        ""
    } else {
        "# Loopback links in plain TCP, by choice (`loadgen demo --plaintext-links`).\nplaintext_links = true\n"
    };
    format!(
        r#"# written by loadgen demo
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
workers = {workers}
link_secret = "{secret}"
{plaintext}backlog = 8192

[limits]
max_in_flight = 256
heartbeat_ms = {heartbeat_ms}

[[upstream]]
name = "demo-core-1"
service = {services}
addr = "{server}"
links = 2
{quic}{links}"#
    )
}

/// Directory of the workspace binaries: `DESKMUX_BIN_DIR`, else the loadgen executable's.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DESKMUX_BIN_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

/// Pids of the stack processes started and not yet stopped, so that an abort (second Ctrl-C)
/// can still kill them — they run in their own process group.
static STARTED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// SIGKILL every stack process still running and its children (used on abort).
pub fn kill_started() {
    let pids: Vec<u32> = STARTED.lock().map(|v| v.clone()).unwrap_or_default();
    let mut all = Vec::new();
    for p in pids {
        all.extend(process_tree(p));
    }
    if !all.is_empty() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(all.iter().map(u32::to_string))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// SIGKILL `pids` (a site's processes, killed as a crash would).
pub fn kill_hard(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A child process, killed on drop.
#[derive(Debug)]
pub struct Proc {
    /// The child.
    child: Child,
    /// Name, for messages.
    pub name: String,
    /// Lines it printed with the prefixes waited for (prefix → rest of the line).
    pub announced: HashMap<String, String>,
}

impl Proc {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Start `bin` with `args` and wait until it printed a line starting with each of `want`.
    ///
    /// # Errors
    /// Missing binary, early exit, or no announcement within `timeout`.
    pub fn start(
        bin: &Path,
        args: &[&str],
        want: &[&str],
        timeout: Duration,
    ) -> Result<Proc, String> {
        let name = bin
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !bin.exists() {
            return Err(format!(
                "{} not found — build the workspace binaries first: \
                 cargo build --release --workspace --bins",
                bin.display()
            ));
        }
        // Own process group: a Ctrl-C at the terminal stops loadgen (which then reports and
        // stops these), not the server under test in the middle of the run.
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(bin)
            .process_group(0)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        if let Ok(mut v) = STARTED.lock() {
            v.push(child.id());
        }
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel::<String>();
        // Keep draining stdout for the child's whole life so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut p = Proc {
            child,
            name,
            announced: HashMap::new(),
        };
        let deadline = Instant::now() + timeout;
        while want.iter().any(|w| !p.announced.contains_key(*w)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    for w in want {
                        if let Some(rest) = line.strip_prefix(w) {
                            p.announced
                                .insert((*w).to_string(), rest.trim().to_string());
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(st)) = p.child.try_wait() {
                        return Err(format!("{} exited early: {st}", p.name));
                    }
                    if Instant::now() >= deadline {
                        return Err(format!("{} did not announce {want:?} in time", p.name));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = p.child.wait();
                    return Err(format!(
                        "{} closed stdout before announcing {want:?}",
                        p.name
                    ));
                }
            }
        }
        Ok(p)
    }

    /// The address announced after `prefix`.
    ///
    /// # Errors
    /// Not announced or not an address.
    pub fn addr(&self, prefix: &str) -> Result<SocketAddr, String> {
        self.announced
            .get(prefix)
            .ok_or_else(|| format!("{} did not announce {prefix}", self.name))?
            .parse()
            .map_err(|e| format!("{} announced a bad address: {e}", self.name))
    }
}

impl Proc {
    /// Stop the process and the children it started (the proxy's workers): SIGTERM, a grace
    /// period, then SIGKILL for whatever of that tree is left. Only these pids are signalled.
    pub fn stop(&mut self) {
        let pid = self.pid();
        if let Ok(mut v) = STARTED.lock() {
            v.retain(|p| *p != pid);
        }
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let tree = process_tree(pid);
        let signal = |sig: &str, pids: &[u32]| {
            if pids.is_empty() {
                return;
            }
            let _ = Command::new("kill")
                .arg(sig)
                .args(pids.iter().map(u32::to_string))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM", &[pid]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let left: Vec<u32> = tree[1..]
            .iter()
            .copied()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect();
        signal("-KILL", &left);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The processes of `pid` and its direct children (the proxy's workers), from `/proc`.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let ppid = stat[close + 2..]
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok());
            if ppid == Some(pid) {
                out.push(p);
            }
        }
    }
    out
}

/// CPU ns of a set of processes.
pub fn cpu_of(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| process_cpu_ns(*p)).sum()
}

/// core-server, and optionally a proxy in front of it, on loopback.
#[derive(Debug)]
pub struct Stack {
    /// Data directory (removed on drop).
    pub dir: PathBuf,
    /// The server.
    pub server: Proc,
    /// The proxy.
    pub proxy: Option<Proc>,
    /// With TLS or QUIC: the proxy's self-signed certificate (PEM), for loadgen's `--ca`.
    pub ca: Option<PathBuf>,
    /// The provisioned agents' credentials, for loadgen's `--credentials`.
    pub credentials: PathBuf,
    /// The server's configuration file (to restart it, or audit its data file).
    pub core_config: PathBuf,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(p) = self.proxy.take() {
            drop(p);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Stack {
    /// Start the server (and a proxy with `proxy_workers` workers, if `Some`).
    ///
    /// # Errors
    /// A process failed to start or announce itself.
    pub fn start(proxy_workers: Option<usize>) -> Result<Stack, String> {
        Self::start_with(&StackOpts {
            proxy_workers,
            ..StackOpts::default()
        })
    }

    /// Start the stack `o` describes.
    ///
    /// # Errors
    /// A process failed to start or announce itself, or QUIC without a proxy.
    pub fn start_with(o: &StackOpts) -> Result<Stack, String> {
        let (proxy_workers, server_outbound_queue) = (o.proxy_workers, o.server_outbound_queue);
        if (o.quic || o.tls) && proxy_workers.is_none() {
            return Err(
                "TLS and QUIC desktops need the proxy (the demo's core-server speaks TCP to desktops)".into(),
            );
        }
        // TLS links: only with a proxy (direct desktops speak plain TCP to the server).
        let link_tls = o.link_tls && proxy_workers.is_some();
        let dir = std::env::temp_dir().join(format!(
            "deskmux-demo-{}-{}",
            std::process::id(),
            engine::unix_ns() % 1_000_000
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let bins = bin_dir();
        let core_cfg = dir.join("core-server.toml");
        // A fresh random link secret per stack: nothing published in this repository opens a
        // link (both binaries refuse known and short secrets).
        let secret = random_hex(32)?;
        let mut core_text = core_config_with(&dir, server_outbound_queue, &secret);
        let link_ca = if link_tls {
            let cdir = dir.join("core-tls");
            std::fs::create_dir_all(&cdir).map_err(|e| format!("{}: {e}", cdir.display()))?;
            let (cert, key) = crate::tls::self_signed(&cdir, &["127.0.0.1", "localhost"])?;
            core_text.push_str(&format!(
                "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            ));
            Some(cert)
        } else {
            None
        };
        if let Some(g) = &o.gms {
            // The HTTP admin port: its /metrics has the GMS counters the leak check reads.
            core_text = format!(
                "http_listen = \"127.0.0.1:0\"\nrequest_timeout_ms = {REQUEST_TIMEOUT_MS}\n{core_text}{}",
                gms_section(g)
            );
        }
        std::fs::write(&core_cfg, core_text).map_err(|e| e.to_string())?;
        let credentials = match &o.credentials {
            Some(c) => c.clone(),
            None => write_credentials(&dir, o.agents.max(1))?,
        };
        import_credentials(&bins, &core_cfg, &credentials)?;
        let server = start_server(&core_cfg, o.gms.is_some())?;
        let server_addr = server.addr("LISTENING")?;
        eprintln!(
            "demo: core-server (pid {}) listening on {server_addr}",
            server.pid()
        );
        let mut ca = None;
        let proxy = match proxy_workers {
            None => None,
            Some(w) => {
                let pcfg = dir.join("proxy.toml");
                if o.quic || o.tls {
                    ca = Some(crate::tls::self_signed(&dir, &["localhost"])?);
                }
                let files = ca.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                let cfg = proxy_config(
                    &secret,
                    server_addr,
                    w,
                    o.heartbeat_ms,
                    files.filter(|_| o.tls),
                    files.filter(|_| o.quic),
                    link_ca.as_deref(),
                    o.gms.is_some(),
                );
                std::fs::write(&pcfg, cfg).map_err(|e| e.to_string())?;
                let arg = pcfg.to_string_lossy().into_owned();
                let p = Proc::start(
                    &bins.join("proxy"),
                    &["--config", &arg],
                    &["LISTENING", "ADMIN"],
                    Duration::from_secs(20),
                )?;
                eprintln!(
                    "demo: proxy (pid {}, {w} workers) listening on {}, admin {}",
                    p.pid(),
                    p.addr("LISTENING")?,
                    p.announced.get("ADMIN").cloned().unwrap_or_default()
                );
                Some(p)
            }
        };
        Ok(Stack {
            dir,
            server,
            proxy,
            ca: ca.map(|(c, _)| c),
            credentials,
            core_config: core_cfg,
        })
    }

    /// Where desktops connect: the proxy if there is one, else the server.
    ///
    /// # Errors
    /// Bad announcement.
    pub fn target(&self) -> Result<SocketAddr, String> {
        match &self.proxy {
            Some(p) => p.addr("LISTENING"),
            None => self.server.addr("LISTENING"),
        }
    }
}

/// Start core-server with the configuration `cfg` and wait for its `LISTENING` line (and
/// `HTTP`, its admin port, when `http`).
///
/// # Errors
/// It failed to start or announce itself.
pub fn start_server(cfg: &Path, http: bool) -> Result<Proc, String> {
    let arg = cfg.to_string_lossy().into_owned();
    let want: &[&str] = if http {
        &["LISTENING", "HTTP"]
    } else {
        &["LISTENING"]
    };
    Proc::start(
        &bin_dir().join("core-server"),
        &["--config", &arg],
        want,
        Duration::from_secs(20),
    )
}

/// CPU used by the server and proxy processes over the run's measurement window.
#[derive(Debug, Clone, Copy, Default)]
pub struct StackCpu {
    /// Server CPU ns in the window.
    pub server_ns: u64,
    /// Proxy (all processes) CPU ns in the window.
    pub proxy_ns: u64,
    /// Proxy processes counted.
    pub proxy_procs: usize,
}

/// Sample the stack's CPU at the window's start and end (a background thread; join it after
/// the run). `cfg.start_unix_ns` must be set.
pub fn sample_cpu(
    cfg: &crate::config::RunConfig,
    server: u32,
    proxy: Option<u32>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<StackCpu> {
    let clock = engine::Clock::new(cfg.start_unix_ns);
    let w = engine::window_of(cfg);
    std::thread::spawn(move || {
        // Until `t`, or until the run is over (stopped early).
        let wait = |t: u64| loop {
            let now = clock.now_ns();
            if now >= t || done.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_nanos((t - now).min(100_000_000)));
        };
        wait(w.start_ns);
        let proxies = proxy.map(process_tree).unwrap_or_default();
        let s0 = cpu_of(&[server]);
        let p0 = cpu_of(&proxies);
        wait(w.end_ns);
        StackCpu {
            server_ns: cpu_of(&[server]).saturating_sub(s0),
            proxy_ns: cpu_of(&proxies).saturating_sub(p0),
            proxy_procs: proxies.len(),
        }
    })
}

/// The `server` object of the summary.
pub fn server_json(via: &str, cpu: &StackCpu, window_s: f64, measured: u64) -> serde_json::Value {
    let per = |ns: u64| {
        if measured == 0 {
            0.0
        } else {
            ns as f64 / 1000.0 / measured as f64
        }
    };
    serde_json::json!({
        "via": via,
        "server_cpu_percent": cpu.server_ns as f64 / 1e9 / window_s.max(1e-9) * 100.0,
        "server_cpu_us_per_request": per(cpu.server_ns),
        "proxy_cpu_percent": cpu.proxy_ns as f64 / 1e9 / window_s.max(1e-9) * 100.0,
        "proxy_cpu_us_per_request": per(cpu.proxy_ns),
        "proxy_processes": cpu.proxy_procs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_plausible_toml() {
        let secret = random_hex(32).unwrap();
        assert_eq!(secret.len(), 64);
        assert_ne!(secret, random_hex(32).unwrap());
        let c: toml::Value = toml::from_str(&core_config(Path::new("/tmp/x"), &secret)).unwrap();
        assert_eq!(c["listen"].as_str(), Some("127.0.0.1:0"));
        assert_eq!(c["tenants"].as_array().unwrap().len(), 2);
        assert!(c.get("outbound_queue").is_none());
        let c: toml::Value = toml::from_str(&core_config_with(
            Path::new("/tmp/x"),
            Some(500_000),
            &secret,
        ))
        .unwrap();
        assert_eq!(c["outbound_queue"].as_integer(), Some(500_000));
        assert_eq!(c["tenants"].as_array().unwrap().len(), 2);
        let p: toml::Value = toml::from_str(&proxy_config(
            &secret,
            "127.0.0.1:7100".parse().unwrap(),
            2,
            5000,
            None,
            None,
            None,
            false,
        ))
        .unwrap();
        assert_eq!(p["upstream"][0]["addr"].as_str(), Some("127.0.0.1:7100"));
        assert_eq!(p["upstream"][0]["service"].as_array().unwrap().len(), 2);
        assert_eq!(p["link_secret"].as_str(), c["link_secret"].as_str());
        assert!(p.get("quic").is_none());
        assert!(p.get("tls").is_none());
        // Plain links on loopback only with the explicit opt-in.
        assert_eq!(p["plaintext_links"].as_bool(), Some(true));
        assert!(p.get("link_tls").is_none());
        let files = Some((Path::new("/d/proxy.crt"), Path::new("/d/proxy.key")));
        let q: toml::Value = toml::from_str(&proxy_config(
            &secret,
            "127.0.0.1:7100".parse().unwrap(),
            2,
            30_000,
            files,
            files,
            Some(Path::new("/d/core.crt")),
            true,
        ))
        .unwrap();
        assert_eq!(q["upstream"][0]["service"][2].as_str(), Some("gms"));
        assert_eq!(q["link_tls"]["ca"].as_str(), Some("/d/core.crt"));
        assert!(q.get("plaintext_links").is_none());
        assert_eq!(q["quic"]["cert"].as_str(), Some("/d/proxy.crt"));
        assert_eq!(q["limits"]["heartbeat_ms"].as_integer(), Some(30_000));
        assert_eq!(q["quic"]["key"].as_str(), Some("/d/proxy.key"));
        assert_eq!(q["tls"]["cert"].as_str(), Some("/d/proxy.crt"));
    }

    #[test]
    fn credentials_file_alternates_tenants_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = write_credentials(dir.path(), 5).unwrap();
        let creds = crate::config::read_credentials(&p).unwrap();
        assert_eq!(creds.len(), 5);
        assert_eq!(creds[0].tenant, 1);
        assert_eq!(creds[1].tenant, 2);
        assert_eq!(creds[3].agent, "lg-3");
        assert_ne!(creds[0].password, creds[1].password);
        assert!(creds.iter().all(|c| c.password.len() >= 16));
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn own_process_is_in_its_tree_and_has_cpu() {
        let me = std::process::id();
        assert_eq!(process_tree(me)[0], me);
        assert!(process_cpu_ns(me).is_some());
    }
}
