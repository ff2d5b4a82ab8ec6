//! The proxy's configuration: one TOML file, every field documented with its default.
//!
//! It is its own module so that the defaults live in one place ([`Config::default`],
//! [`Limits::default`] and [`EXAMPLE_CONFIG`]) and so that the command line (`--listen`,
//! `--admin`, `--workers`, `--upstream`) can override a few fields after the file is read.
//! `proxy --check-config` parses and validates a file and exits.
//!
//! ```toml
//! listen = "127.0.0.1:7200"        # desktop port; port 0 picks a free port (shared by workers)
//! admin = "127.0.0.1:7290"         # admin HTTP (/metrics, /health, /status); port 0 = any
//! workers = 2                      # worker processes sharing the port with SO_REUSEPORT
//! link_secret = "deskmux-link-secret"  # presented in LINK_HELLO to every upstream
//! backlog = 4096                   # listen backlog
//!
//! [limits]
//! max_desktops = 19000             # desktops per worker (fd cap 20000 - links/admin headroom)
//! max_in_flight = 256              # requests in flight per desktop (TOO_MANY_IN_FLIGHT past it)
//! max_frame = 2097152              # largest frame (head + body) accepted from a desktop
//! handshake_ms = 10000             # the whole hello must complete within this
//! heartbeat_ms = 5000              # heartbeat interval; 3 silent intervals close a desktop
//! request_timeout_ms = 30000       # no answer upstream within this: TIMEOUT (outcome unknown)
//! out_queue_frames = 4096          # frames queued towards one desktop before SLOW_CONSUMER
//! out_queue_bytes = 8388608        # bytes queued towards one desktop before SLOW_CONSUMER
//! link_queue_bytes = 67108864      # bytes queued on one link before new requests get OVERLOADED
//! drain_grace_ms = 5000            # SIGTERM: how long in-flight requests may take
//! go_away_reconnect_ms = 1000      # reconnect_ms announced to desktops in GO_AWAY
//! link_backoff_min_ms = 100        # first link reconnect delay (doubles, with ±50 % jitter)
//! link_backoff_max_ms = 5000       # largest link reconnect delay
//!
//! [[upstream]]
//! name = "core-1"                  # instance name, for logs and metrics
//! service = ["interaction", "ucs"] # one or several: "interaction"/"ixn", "ucs", or a number
//! addr = "127.0.0.1:7100"
//! links = 2                        # links per worker to this instance (the fan-out)
//! ```

use std::net::SocketAddr;

use serde::Deserialize;

/// A commented example configuration (printed by `proxy --example-config`).
pub const EXAMPLE_CONFIG: &str = r#"# deskmux proxy configuration (see proxy/src/config.rs for every field and its default)
listen = "127.0.0.1:7200"
admin = "127.0.0.1:7290"
workers = 2
link_secret = "deskmux-link-secret"

[limits]
max_desktops = 19000
max_in_flight = 256
heartbeat_ms = 5000

[[upstream]]
name = "core-1"
service = ["interaction", "ucs"]
addr = "127.0.0.1:7100"
links = 2
"#;

/// A service byte, written in TOML as `"interaction"` (or `"ixn"`), `"ucs"`, or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceId(pub u8);

impl<'de> Deserialize<'de> for ServiceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u8),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(ServiceId(n)),
            Raw::Name(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl std::str::FromStr for ServiceId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "interaction" | "ixn" => Ok(ServiceId(1)),
            "ucs" => Ok(ServiceId(2)),
            other => other
                .parse::<u8>()
                .map(ServiceId)
                .map_err(|_| format!("unknown service {other:?} (interaction, ucs or a number)")),
        }
    }
}

/// One service or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(ServiceId),
    Many(Vec<ServiceId>),
}

fn services_de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ServiceId>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

fn default_links() -> u16 {
    2
}

/// One upstream server instance.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Instance name, for logs and metrics. Default: the address.
    #[serde(default)]
    pub name: String,
    /// Services this instance serves (`service = "ucs"` or `service = ["interaction", "ucs"]`).
    #[serde(rename = "service", deserialize_with = "services_de")]
    pub services: Vec<ServiceId>,
    /// Address of the server.
    pub addr: SocketAddr,
    /// Links each worker keeps to this instance (the fan-out). Default 2.
    #[serde(default = "default_links")]
    pub links: u16,
}

impl Upstream {
    /// Parse a command-line override `SERVICE[,SERVICE]=ADDR` (e.g. `ixn,ucs=127.0.0.1:7100`).
    ///
    /// # Errors
    /// A bad service name or address.
    pub fn parse_override(s: &str) -> Result<Upstream, String> {
        let (svc, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("upstream override {s:?}: expected SERVICE=ADDR"))?;
        let services = svc
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<ServiceId>, String>>()?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("upstream override {s:?}: {e}"))?;
        Ok(Upstream {
            name: format!("{svc}@{addr}"),
            services,
            addr,
            links: default_links(),
        })
    }
}

/// Per-desktop and per-worker limits. All can be changed by SIGHUP.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Desktops per worker; past it a new connection gets OVERLOADED and is closed. Default
    /// 19000: one process may hold 20,000 files, and links, the admin port and the listener
    /// need some.
    pub max_desktops: usize,
    /// Requests one desktop may have in flight; more get TOO_MANY_IN_FLIGHT. Default 256.
    pub max_in_flight: u32,
    /// Largest frame (head + body) accepted from a desktop, bytes. Default 2 MiB.
    pub max_frame: u32,
    /// The whole desktop hello must complete within this (ms), not reset per byte. Default 10000.
    pub handshake_ms: u32,
    /// Heartbeat interval announced to desktops (ms); silent for 3 intervals closes. Default 5000.
    pub heartbeat_ms: u32,
    /// A request unanswered upstream for this long gets TIMEOUT (ms). Default 30000.
    pub request_timeout_ms: u32,
    /// Frames queued towards one desktop before it is a slow consumer. Default 4096.
    pub out_queue_frames: usize,
    /// Bytes queued towards one desktop before it is a slow consumer. Default 8 MiB.
    pub out_queue_bytes: usize,
    /// Bytes queued on one link before new requests get OVERLOADED. Default 64 MiB.
    pub link_queue_bytes: usize,
    /// SIGTERM drain: how long in-flight requests may take before they are failed (ms). Default 5000.
    pub drain_grace_ms: u32,
    /// `reconnect_ms` announced to desktops in GO_AWAY. Default 1000.
    pub go_away_reconnect_ms: u32,
    /// First link reconnect delay (ms); it doubles per failure, with ±50 % jitter. Default 100.
    pub link_backoff_min_ms: u32,
    /// Largest link reconnect delay (ms). Default 5000.
    pub link_backoff_max_ms: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_desktops: 19_000,
            max_in_flight: 256,
            max_frame: 2 * 1024 * 1024,
            handshake_ms: 10_000,
            heartbeat_ms: 5000,
            request_timeout_ms: 30_000,
            out_queue_frames: 4096,
            out_queue_bytes: 8 * 1024 * 1024,
            link_queue_bytes: 64 * 1024 * 1024,
            drain_grace_ms: 5000,
            go_away_reconnect_ms: 1000,
            link_backoff_min_ms: 100,
            link_backoff_max_ms: 5000,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Desktop listen address. Default `127.0.0.1:7200`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Admin HTTP address. Default `127.0.0.1:7290`; port 0 picks a free port.
    pub admin: SocketAddr,
    /// Worker processes. Default 2.
    pub workers: usize,
    /// Link secret presented to every upstream. Default `deskmux-link-secret`.
    pub link_secret: String,
    /// Listen backlog. Default 4096.
    pub backlog: i32,
    /// Limits.
    pub limits: Limits,
    /// Upstream instances. Default: none (every hello gets UNAVAILABLE).
    pub upstream: Vec<Upstream>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7200)),
            admin: SocketAddr::from(([127, 0, 0, 1], 7290)),
            workers: 2,
            link_secret: "deskmux-link-secret".into(),
            backlog: 4096,
            limits: Limits::default(),
            upstream: Vec::new(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config: reading {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse (the cause, with line and column, is the source).
    #[error("config: not a valid configuration")]
    Parse(#[from] toml::de::Error),
    /// A value is out of range or inconsistent.
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Parse and validate a TOML document.
    ///
    /// # Errors
    /// [`ConfigError`] on bad TOML or invalid values.
    pub fn from_toml(s: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(s)?;
        c.validate()?;
        Ok(c)
    }

    /// Read, parse and validate a file.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let s = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        Config::from_toml(&s)
    }

    /// Check ranges and consistency.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let l = &self.limits;
        if l.max_frame < 1024 {
            return bad("limits.max_frame must be at least 1024".into());
        }
        if l.heartbeat_ms == 0 || l.handshake_ms == 0 || l.request_timeout_ms == 0 {
            return bad(
                "limits: heartbeat_ms, handshake_ms, request_timeout_ms must be > 0".into(),
            );
        }
        if l.max_in_flight == 0 || l.out_queue_frames == 0 || l.out_queue_bytes == 0 {
            return bad("limits: max_in_flight and out_queue_* must be > 0".into());
        }
        if l.max_in_flight > 65_535 {
            return bad("limits.max_in_flight must be at most 65535".into());
        }
        if l.link_backoff_min_ms == 0 || l.link_backoff_max_ms < l.link_backoff_min_ms {
            return bad("limits: 0 < link_backoff_min_ms <= link_backoff_max_ms".into());
        }
        if self.workers == 0 || self.workers > 64 {
            return bad("workers must be between 1 and 64".into());
        }
        if self.upstream.len() > 64 {
            return bad("at most 64 upstream instances".into());
        }
        for u in &self.upstream {
            if u.links == 0 || u.links > 64 {
                return bad(format!("upstream {}: links must be 1..=64", u.name));
            }
            if u.services.is_empty() {
                return bad(format!("upstream {}: no service", u.name));
            }
            if u.services.iter().any(|s| s.0 == 0) {
                return bad(format!(
                    "upstream {}: service 0 is control, not routable",
                    u.name
                ));
            }
        }
        Ok(())
    }

    /// Fill in defaults that depend on other fields (instance names).
    pub fn normalize(&mut self) {
        for u in &mut self.upstream {
            if u.name.is_empty() {
                u.name = u.addr.to_string();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses() {
        let c = Config::from_toml(EXAMPLE_CONFIG).unwrap();
        assert_eq!(c.upstream.len(), 1);
        assert_eq!(c.upstream[0].services, vec![ServiceId(1), ServiceId(2)]);
        assert_eq!(c.limits.max_in_flight, 256);
        assert_eq!(c.limits.out_queue_frames, 4096);
    }

    #[test]
    fn single_service_and_numbers() {
        let c = Config::from_toml(
            "[[upstream]]\nservice = \"ucs\"\naddr = \"127.0.0.1:1\"\n[[upstream]]\nservice = 9\naddr = \"127.0.0.1:2\"\nlinks = 1",
        )
        .unwrap();
        assert_eq!(c.upstream[0].services, vec![ServiceId(2)]);
        assert_eq!(c.upstream[1].services, vec![ServiceId(9)]);
        assert_eq!(c.upstream[0].links, 2);
    }

    #[test]
    fn rejects_bad() {
        assert!(Config::from_toml("bogus = 1").is_err());
        assert!(Config::from_toml("[limits]\nmax_frame = 10").is_err());
        assert!(
            Config::from_toml("[[upstream]]\nservice = \"nope\"\naddr = \"127.0.0.1:1\"").is_err()
        );
        assert!(Config::from_toml("[[upstream]]\nservice = 0\naddr = \"127.0.0.1:1\"").is_err());
    }

    #[test]
    fn override_parses() {
        let u = Upstream::parse_override("ixn,ucs=127.0.0.1:7100").unwrap();
        assert_eq!(u.services, vec![ServiceId(1), ServiceId(2)]);
        assert!(Upstream::parse_override("ixn").is_err());
    }
}
