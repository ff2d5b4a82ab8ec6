//! A GMS site for the load tests (`gms_sites`, `loadgen_callback`): a core-server with a pool
//! of its own per tenant 1, its HTTP admin port (`/metrics` has the GMS counters), the
//! numbered test agents provisioned, and the `core-server gms audit` of its data file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deskmux_tests::Proc;
use serde_json::Value;

const START: Duration = Duration::from_secs(20);

/// The test agents' password in tenant 1 (`deskmux_tests::creds::provision`).
pub const TOKEN1: &str = "tok-acme";

/// A running site.
pub struct Site {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub http: SocketAddr,
    pub config: PathBuf,
}

/// The numbers of site `site`'s pool: disjoint from every other site's.
pub fn numbers(site: u8, pool: usize) -> Vec<String> {
    (0..pool).map(|i| format!("+1800{site}{i:05}")).collect()
}

/// Write site `site`'s configuration into `dir` (pool of `pool` numbers in group `callback` of
/// tenant 1, bookings held `ttl_ms`) and provision the numbered agents of tenant 1.
pub fn configure(dir: &Path, site: u8, pool: usize, ttl_ms: u64) -> PathBuf {
    let list = numbers(site, pool)
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let cfg = dir.join("core.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\ninstance = \"site-{site}\"\ndb = \"{}\"\n\n\
             [gms]\nexpiry_sweep_ms = 100\n\n[[gms.groups]]\ntenant = 1\nname = \"callback\"\n\
             booking_ttl_ms = {ttl_ms}\nnumbers = [{list}]\n\n[[tenants]]\nid = 1\nname = \"acme\"\n",
            dir.join("core.db").display()
        ),
    )
    .unwrap();
    deskmux_tests::creds::provision(&cfg, &[(1, TOKEN1)]).expect("provision agents");
    cfg
}

impl Site {
    /// Start the server of `config`.
    pub fn start(config: &Path) -> Site {
        let mut proc = Proc::spawn_env(
            "core-server",
            &["--config", config.to_str().unwrap()],
            &[("RUST_LOG", "error")],
        )
        .unwrap();
        let addr = proc.listening(START).expect("core-server listening");
        let http = proc
            .wait_line("HTTP ", START)
            .expect("HTTP line")
            .parse()
            .unwrap();
        Site {
            proc,
            addr,
            http,
            config: config.to_path_buf(),
        }
    }

    /// A GMS counter of the server (`booked`, `matched`, `expired`, ...).
    pub fn counter(&self, name: &str) -> u64 {
        let body = http_get(self.http, "/metrics");
        let key = format!("deskmux_core_gms_{name}_total ");
        body.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {key}in /metrics:\n{body}")) as u64
    }
}

/// `core-server --config CONFIG gms audit`: the data file's bookings (`made`, `remaining`,
/// `remaining_live`).
pub fn audit(config: &Path) -> Value {
    let out = std::process::Command::new(deskmux_tests::procs::bin_path("core-server"))
        .arg("--config")
        .arg(config)
        .args(["gms", "audit"])
        .output()
        .expect("core-server gms audit");
    assert!(
        out.status.success(),
        "gms audit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("audit JSON")
}

/// A plain HTTP/1.0 GET; the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}
