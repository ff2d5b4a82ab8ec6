//! `proxy`: the deskmux desktop proxy binary (supervisor, or a worker with `--worker-index`).
//!
//! SIGHUP follows core-server's conventions: the configuration is read again (by the
//! supervisor, once); one that does not load is refused whole, its error naming the file,
//! line, column and key, and counted in `deskmux_proxy_config_reload_failures_total`; one
//! that loads is counted in `deskmux_proxy_config_reloads_total`, the keys it changes that
//! need a restart are named in a warning (and keep their running values), and the workers
//! apply the rest.

mod logging;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use deskmux_proxy::admin::{self, SupervisorState};
use deskmux_proxy::config::{
    Config, DesktopCap, EXAMPLE_CONFIG, FdLimit, Upstream, restart_needed,
};
use deskmux_proxy::metrics::{Metrics, Shared};
use deskmux_proxy::status::{Signals, Status};
use deskmux_proxy::supervisor::{self, Plan};
use deskmux_proxy::transport::{DesktopTransport, TcpTransport, ensure_port_free, reserve_port};
use deskmux_proxy::worker::{Worker, WorkerOpts};
use prometheus_client::registry::Registry;

/// The deskmux desktop proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (see `--example-config`). Without it, defaults apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Worker processes (overrides `workers`).
    #[arg(long)]
    workers: Option<usize>,
    /// Desktop listen address (overrides `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin HTTP address (overrides `admin`).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Extra upstream, `SERVICE[,SERVICE]=ADDR` (e.g. `ixn,ucs=127.0.0.1:7100`); repeatable.
    /// When given, these replace the file's `[[upstream]]` list.
    #[arg(long)]
    upstream: Vec<String>,
    /// Links per upstream for `--upstream` entries.
    #[arg(long)]
    links: Option<u16>,
    /// Parse and validate the configuration, print a summary (secrets redacted), and exit.
    #[arg(long)]
    check_config: bool,
    /// Log lines: `plain` (colour only on a terminal) or `json` (one object a line).
    #[arg(long, value_enum, default_value = "plain", env = "DESKMUX_LOG_FORMAT")]
    log_format: logging::LogFormat,
    /// Print an example configuration and exit.
    #[arg(long)]
    example_config: bool,
    /// Start even though `link_secret` is empty, short or a published example (tests only).
    #[arg(long)]
    allow_weak_link_secret: bool,
    /// I/O driver of the workers, `mio` or `uring` (overrides `[worker] driver`; the
    /// environment variable lets a benchmark pick it for a proxy another program starts).
    #[arg(long, env = "DESKMUX_PROXY_DRIVER")]
    driver: Option<deskmux_proxy::config::Driver>,
    /// Allow plain TCP links to upstreams that configure no TLS (sets `plaintext_links`).
    #[arg(long)]
    plaintext_links: bool,
    /// Internal: instances an operator disabled (passed by the supervisor to a worker).
    #[arg(long, hide = true)]
    disabled: Vec<String>,
    /// Internal: run as worker `i` (started by the supervisor).
    #[arg(long, hide = true)]
    worker_index: Option<usize>,
}

/// Read the configuration and apply the command-line overrides, then validate it (errors
/// name the file, line and key) and settle `limits.max_desktops` against the open-file
/// limit. With `cert_files`, the certificate files it names must load too; without (the
/// SIGHUP reload), they are left to the worker, which keeps its previous certificate when
/// they are bad.
fn load(cli: &Cli, cert_files: bool) -> Result<(Config, DesktopCap)> {
    let (mut cfg, src) = match &cli.config {
        Some(p) => {
            let (c, s) = Config::read(p)?;
            (c, Some(s))
        }
        None => (Config::default(), None),
    };
    if let Some(w) = cli.workers {
        cfg.workers = w;
    }
    if let Some(l) = cli.listen {
        cfg.listen = l;
    }
    if let Some(a) = cli.admin {
        cfg.admin = a;
    }
    if !cli.upstream.is_empty() {
        cfg.upstream = cli
            .upstream
            .iter()
            .map(|s| {
                Upstream::parse_override(s).map(|mut u| {
                    if let Some(n) = cli.links {
                        u.links = n;
                    }
                    u
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(anyhow::Error::msg)?;
    }
    if cli.plaintext_links {
        cfg.plaintext_links = true;
    }
    if let Some(d) = cli.driver {
        cfg.worker.driver = d;
    }
    cfg.normalize();
    let checked = if cert_files {
        cfg.validate()
    } else {
        cfg.validate_settings()
    };
    checked.map_err(|e| match &src {
        Some(s) => e.at(s),
        None => e,
    })?;
    // At start, `--check-config` and every SIGHUP: a link in plain TCP is a choice.
    if let Some(why) = cfg.plaintext_link_refusal() {
        bail!("refusing the configuration: {why}");
    }
    let cap = cfg.apply_fd_limit(FdLimit::of_this_process());
    Ok((cfg, cap))
}

/// Turn SIGTERM and SIGHUP into flags the process's loop polls. Installed here, once per
/// process, before any thread that could be signalled starts its work.
fn install_signals() -> Result<Arc<Signals>> {
    let signals = Arc::new(Signals::default());
    signal_hook::flag::register(signal_hook::consts::SIGTERM, signals.term.clone())
        .context("installing the SIGTERM handler")?;
    signal_hook::flag::register(signal_hook::consts::SIGHUP, signals.hup.clone())
        .context("installing the SIGHUP handler")?;
    Ok(signals)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log_format, cli.worker_index);
    if cli.example_config {
        print!("{EXAMPLE_CONFIG}");
        return Ok(());
    }
    let (cfg, cap) = load(&cli, true)?;
    if let Some(why) = cfg.weak_link_secret()
        && !cli.allow_weak_link_secret
    {
        bail!("refusing to start: {why} (or pass --allow-weak-link-secret)");
    }
    // Once, not once per worker (they inherit the limit and settle the same value).
    if cli.worker_index.is_none()
        && let Some(w) = cap.warning()
    {
        tracing::warn!("{w}");
    }
    if cli.check_config {
        let file = cli.config.as_ref().map_or_else(
            || "(no file: defaults)".to_string(),
            |p| p.display().to_string(),
        );
        println!("config ok: {file}");
        print!("{}", cfg.summary(&cap));
        return Ok(());
    }
    match cli.worker_index {
        Some(i) => run_worker(&cli, cfg, i),
        None => run_supervisor(&cli, cfg),
    }
}

fn run_worker(cli: &Cli, cfg: Config, index: usize) -> Result<()> {
    let mut registry = Registry::with_labels(
        [(Cow::Borrowed("worker"), Cow::Owned(index.to_string()))].into_iter(),
    );
    let metrics = Metrics::new(&mut registry);
    let status = Arc::new(Status::default());
    let signals = install_signals()?;
    let shared = Shared {
        registry: Arc::new(Mutex::new(registry)),
        status: status.clone(),
    };
    let admin_addr = admin::spawn("127.0.0.1:0".parse()?, admin::worker_app(shared))
        .context("worker admin server")?;
    println!("WORKER_ADMIN {admin_addr}");
    // The supervisor holds our stdin open; EOF means it died: drain and exit, like SIGTERM.
    let orphan = signals.clone();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while let Ok(n) = std::io::Read::read(&mut stdin, &mut sink) {
            if n == 0 {
                break;
            }
        }
        orphan
            .term
            .store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let tcp = TcpTransport::bind(cfg.listen, cfg.backlog)
        .with_context(|| format!("binding {}", cfg.listen))?;
    let tls = match &cfg.tls {
        Some(t) => Some(Arc::new(
            deskmux_proxy::tls::server_config(&t.cert, &t.key).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    let listener = DesktopTransport::new(tcp, tls);
    let quic = match cfg.quic_cert() {
        Some((cert, key)) => {
            let q = cfg.quic.clone().unwrap_or_default();
            let settings = deskmux_proxy::quic::QuicSettings {
                max_handshakes: q.max_handshakes,
                max_handshakes_per_source: q.max_handshakes_per_source,
                max_desktops: q.max_desktops,
                idle: Duration::from_millis(3 * u64::from(cfg.limits.heartbeat_ms)),
                retry: q.retry,
                handshake: Duration::from_millis(u64::from(cfg.limits.handshake_ms)),
            };
            let sc = deskmux_proxy::quic::server_config(&cert, &key, &settings)
                .map_err(anyhow::Error::msg)?;
            let ep = deskmux_proxy::quic::QuicEndpoint::bind(cfg.listen, sc, settings)
                .with_context(|| format!("binding udp {}", cfg.listen))?;
            println!("WORKER_QUIC {}", ep.local_addr()?);
            Some(ep)
        }
        None => None,
    };
    let reload_cli = Cli::parse();
    let reload: deskmux_proxy::worker::ReloadFn = Box::new(move || {
        load(&reload_cli, false)
            .map(|(c, _)| c)
            .map_err(|e| format!("{e:#}"))
    });
    let worker = Worker::new(
        WorkerOpts {
            index,
            config: cfg,
            reload: Some(reload),
            disabled: cli.disabled.clone(),
            quic,
        },
        listener,
        metrics,
        status,
        signals,
    )?;
    worker.run(|| println!("WORKER_READY {index}"))?;
    Ok(())
}

fn run_supervisor(cli: &Cli, cfg: Config) -> Result<()> {
    for u in cfg.plaintext_links_off_host() {
        tracing::warn!(
            upstream = %u.name,
            addr = %u.addr,
            "plaintext link to a non-loopback address: the link secret, desktops' credentials and tenant data cross the network readable (configure [link_tls])"
        );
    }
    // One proxy per port: before taking it, check nobody else serves it (see
    // `ensure_port_free`); the reserved socket and the workers then hold it.
    ensure_port_free(cfg.listen, cfg.quic_cert().is_some())
        .with_context(|| format!("address in use: {}", cfg.listen))?;
    let (_reserved, listen) =
        reserve_port(cfg.listen).with_context(|| format!("binding {}", cfg.listen))?;
    let signals = install_signals()?;
    let workers = Arc::new(Mutex::new(Vec::new()));
    let disabled = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let reloads = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let admin_addr = admin::spawn(
        cfg.admin,
        admin::supervisor_app(SupervisorState {
            workers: workers.clone(),
            listen,
            disabled: disabled.clone(),
            reloads: reloads.clone(),
        }),
    )
    .with_context(|| format!("admin server on {}", cfg.admin))?;
    println!("ADMIN {admin_addr}");
    let mut worker_args = Vec::new();
    if let Some(p) = &cli.config {
        worker_args.push("--config".to_string());
        worker_args.push(p.display().to_string());
    }
    for u in &cli.upstream {
        worker_args.push("--upstream".to_string());
        worker_args.push(u.clone());
    }
    if cli.allow_weak_link_secret {
        worker_args.push("--allow-weak-link-secret".to_string());
    }
    if cli.plaintext_links {
        worker_args.push("--plaintext-links".to_string());
    }
    worker_args.push("--log-format".to_string());
    worker_args.push(
        match cli.log_format {
            logging::LogFormat::Plain => "plain",
            logging::LogFormat::Json => "json",
        }
        .to_string(),
    );
    if let Some(n) = cli.links {
        worker_args.push("--links".to_string());
        worker_args.push(n.to_string());
    }
    let plan = Plan {
        workers: cfg.workers,
        listen,
        worker_args,
        grace: Duration::from_millis(u64::from(cfg.limits.drain_grace_ms)),
        disabled,
    };
    if plan.workers == 0 {
        bail!("no workers");
    }
    let mut on_hup = || match load(cli, false) {
        Ok((new, cap)) => {
            reloads.0.fetch_add(1, Ordering::Relaxed);
            let restart = restart_needed(&cfg, &new);
            if !restart.is_empty() {
                tracing::warn!(
                    "SIGHUP: {} changed and need a restart; not applied (still serving {} with {} workers, admin on {})",
                    restart.join(", "),
                    cfg.listen,
                    cfg.workers,
                    cfg.admin
                );
            }
            if let Some(w) = cap.warning() {
                tracing::warn!("SIGHUP: {w}");
            }
            tracing::info!("SIGHUP: configuration loaded; the workers apply it");
            Some(Duration::from_millis(u64::from(new.limits.drain_grace_ms)))
        }
        Err(e) => {
            reloads.1.fetch_add(1, Ordering::Relaxed);
            tracing::error!("SIGHUP: configuration not reloaded, keeping the running one: {e:#}");
            None
        }
    };
    let code = supervisor::run(
        &plan,
        &signals,
        &workers,
        || {
            println!("LISTENING {listen}");
        },
        &mut on_hup,
    )?;
    std::process::exit(code);
}
