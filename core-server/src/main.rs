//! The `core-server` binary: parse the command line, load the config, serve.
//!
//! Prints `LISTENING <addr>` on stdout once the listener is bound (tests parse it; port 0
//! works), and `ROLE backup` / `ROLE primary` for a standby and its takeover.
//!
//! `core-server creds ...` manages agent credentials in the data file (see [`creds`]); secrets
//! are read from stdin, never from the command line.

mod creds;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use deskmux_core_server::config::{Config, DEFAULT_CONFIG, Role};
use deskmux_core_server::server::Server;

/// Interaction Server and/or UCS speaking the deskmux protocol.
#[derive(Debug, Parser)]
#[command(name = "core-server", version)]
struct Cli {
    /// TOML configuration file (see `--default-config`). Without it the embedded demo
    /// configuration is used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override `listen` (e.g. 127.0.0.1:0).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Override `role`: ixn, ucs or both.
    #[arg(long)]
    role: Option<Role>,
    /// Override `db` (the SQLite data file).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Override `instance`.
    #[arg(long)]
    instance: Option<String>,
    /// Start even though `link_secret` is shorter than 32 bytes (tests and demos only).
    #[arg(long)]
    allow_weak_link_secret: bool,
    /// Override `invite_timeout_ms`.
    #[arg(long)]
    invite_timeout_ms: Option<u32>,
    /// Override `heartbeat_ms`.
    #[arg(long)]
    heartbeat_ms: Option<u32>,
    /// Override `admin_listen` (the admin line protocol address).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Start as a warm standby: wait for the data file's lock, then take over.
    #[arg(long)]
    standby: bool,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// With `--check-config`: another site's configuration; GMS pools that share a number
    /// with its groups are refused (a dialled number must lead to one site's booking).
    /// May be given several times.
    #[arg(long, requires = "check_config")]
    other_site: Vec<PathBuf>,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    default_config: bool,
    /// Log lines on stderr: `plain` text (colours only on a terminal) or `json`, one object
    /// per line, for a log collector. The level comes from `RUST_LOG` (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

/// Log to stderr in `format`; ANSI colours only when stderr is a terminal, so that files and
/// journald get plain text.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Plain => b.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Manage agent credentials in the database (the config's `[storage]`, or its `db` file,
    /// or `--db`).
    Creds {
        #[command(subcommand)]
        op: creds::Op,
    },
    /// GMS bookings in the database (the config's `[storage]`, or its `db` file, or `--db`):
    /// `audit` prints what it holds as JSON (read-only).
    Gms {
        #[command(subcommand)]
        op: deskmux_core_server::gms::audit::Op,
    },
    /// The database itself: `copy-from-sqlite FILE` brings an SQLite data file (not in use)
    /// into the configuration's PostgreSQL database, which must be empty.
    Storage {
        #[command(subcommand)]
        op: deskmux_core_server::storage::copy::Op,
    },
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let text = match &cli.config {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => DEFAULT_CONFIG.to_string(),
    };
    let mut cfg = Config::from_toml(&text)?;
    cfg.resolve_db()?;
    cfg.read_secret_files()?;
    if let Some(v) = cli.listen {
        cfg.listen = v;
    }
    if let Some(v) = cli.role {
        cfg.role = v;
    }
    if let Some(v) = &cli.db {
        // A path on the command line is the shell's: relative to the working directory.
        cfg.db = std::path::absolute(v).with_context(|| format!("--db {}", v.display()))?;
    }
    if let Some(v) = &cli.instance {
        cfg.instance = v.clone();
    }
    if let Some(v) = cli.invite_timeout_ms {
        cfg.invite_timeout_ms = v;
    }
    if let Some(v) = cli.heartbeat_ms {
        cfg.heartbeat_ms = v;
    }
    if let Some(v) = cli.admin_listen {
        cfg.admin_listen = Some(v);
    }
    cfg.standby |= cli.standby;
    cfg.validate()?;
    Ok(cfg)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.default_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    let cfg = load(&cli)?;
    if let Some(Cmd::Creds { op }) = &cli.cmd {
        return creds::run(&cfg.location(), op);
    }
    if let Some(Cmd::Storage { op }) = &cli.cmd {
        let copied = deskmux_core_server::storage::copy::run(&cfg.location(), op)?;
        for (table, n) in copied {
            println!("{table:<14} {n} rows");
        }
        println!("copied into {}", cfg.location().describe());
        return Ok(());
    }
    if let Some(Cmd::Gms { op }) = &cli.cmd {
        return deskmux_core_server::gms::audit::run(&cfg.location(), op)
            .map_err(anyhow::Error::msg);
    }
    if let Some(why) = cfg.weak_link_secret()
        && !cli.allow_weak_link_secret
    {
        anyhow::bail!("refusing to start: {why}");
    }
    if cli.check_config {
        // The files the configuration names are read too, so that a path that is wrong or a
        // certificate that does not fit its key is found now rather than at the next start.
        if let Some(t) = &cfg.tls {
            deskmux_core_server::tls::acceptor(t).map_err(anyhow::Error::msg)?;
        }
        if let Some(p) = &cfg.admin_token_file {
            let t =
                std::fs::read(p).with_context(|| format!("admin_token_file {}", p.display()))?;
            anyhow::ensure!(
                t.trim_ascii().len() >= deskmux_core_server::config::MIN_SECRET_LEN,
                "admin_token_file {}: shorter than {} bytes",
                p.display(),
                deskmux_core_server::config::MIN_SECRET_LEN
            );
        }
        for other in &cli.other_site {
            let text = std::fs::read_to_string(other)
                .with_context(|| format!("reading {}", other.display()))?;
            let theirs = Config::from_toml(&text).with_context(|| other.display().to_string())?;
            if let (Some(a), Some(b)) = (&cfg.gms, &theirs.gms) {
                let shared = a.shared_with(b);
                anyhow::ensure!(
                    shared.is_empty(),
                    "GMS pools share numbers with {}: {}",
                    other.display(),
                    shared
                        .iter()
                        .map(|(t, n)| format!("{n} (tenant {t})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        println!("{}", cfg.summary());
        return Ok(());
    }
    init_logs(cli.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let server = Server::bind(cfg).await?;
        if let Some(p) = &cli.config {
            server.set_config_path(p.clone());
        }
        let addr = server.local_addr()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "LISTENING {addr}")?;
        if let Some(a) = server.admin_addr() {
            writeln!(out, "ADMIN {a}")?;
        }
        if let Some(a) = server.http_addr() {
            writeln!(out, "HTTP {a}")?;
        }
        if let Some(a) = server.gms_http_addr() {
            writeln!(out, "GMS_HTTP {a}")?;
        }
        out.flush()?;
        drop(out);
        server.run().await?;
        Ok(())
    })
}
