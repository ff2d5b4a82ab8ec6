//! Private support for the `gms_*` tests: a core-server with `[gms]` groups, a service
//! account's API key, and a small blocking HTTP/JSON client; [`site`]: a GMS site for the
//! load tests (its counters, the audit of its data file).
#![allow(dead_code)]

pub mod site;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use deskmux_tests::Proc;
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(10);

/// A running core-server with the GMS API.
pub struct Gms {
    pub proc: Proc,
    pub http: SocketAddr,
    pub key: String,
    pub config: std::path::PathBuf,
}

/// Write a config with `groups` (TOML `[[gms.groups]]` blocks) into `dir` and make a
/// service account `mobile-gw` of tenant 1 (and 2), returning the config path and its key.
pub fn setup(dir: &Path, groups: &str) -> (std::path::PathBuf, String) {
    let cfg = dir.join("core.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\ndb = \"{}\"\n\n[gms]\nhttp_listen = \"127.0.0.1:0\"\nexpiry_sweep_ms = 100\n{groups}\n[[tenants]]\nid = 1\nname = \"acme\"\n\n[[tenants]]\nid = 2\nname = \"globex\"\n",
            dir.join("core.db").display()
        ),
    )
    .unwrap();
    let out = deskmux_tests::creds::run(
        &cfg,
        &["add", "--tenant", "1", "--agent", "mobile-gw", "--api-key"],
        "",
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("dmk_"))
        .expect("an API key printed")
        .to_string();
    (cfg, key)
}

impl Gms {
    pub fn start(cfg: &Path, key: &str) -> Gms {
        let mut proc = Proc::spawn_env(
            "core-server",
            &["--config", cfg.to_str().unwrap()],
            &[("RUST_LOG", "error")],
        )
        .unwrap();
        proc.listening(WAIT).expect("core-server listening");
        let http = proc
            .wait_line("GMS_HTTP ", WAIT)
            .expect("GMS_HTTP line")
            .parse()
            .unwrap();
        Gms {
            proc,
            http,
            key: key.to_string(),
            config: cfg.to_path_buf(),
        }
    }

    /// POST `body` as the service account; (status, JSON answer).
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        post_as(self.http, path, "mobile-gw", &self.key, body)
    }

    pub fn book(&self, group: &str, caller: &str, data: &[(&str, &str)]) -> (u16, Value) {
        let user_data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        self.post(
            "/gms/v1/tenants/1/access",
            &serde_json::json!({"group": group, "caller": caller, "user_data": user_data}),
        )
    }

    pub fn match_call(
        &self,
        number: &str,
        caller: Option<&str>,
        code: Option<&str>,
    ) -> (u16, Value) {
        self.post(
            "/gms/v1/tenants/1/match",
            &serde_json::json!({"number": number, "caller": caller, "code": code}),
        )
    }
}

/// One HTTP/1.0 POST with a JSON body and the account headers. Status 0: no answer (the
/// server is gone: refused, reset), which a caller that kills the server expects.
pub fn post_as(
    addr: SocketAddr,
    path: &str,
    account: &str,
    key: &str,
    body: &Value,
) -> (u16, Value) {
    let body = body.to_string();
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, Value::Null);
    };
    s.set_read_timeout(Some(WAIT)).ok();
    let sent = write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nX-Deskmux-Account: {account}\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if sent.is_err() {
        return (0, Value::Null);
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let (head, text) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, serde_json::from_str(text).unwrap_or(Value::Null))
}
