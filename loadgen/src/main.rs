//! `loadgen`: simulated deskmux desktops. Subcommands: `run` (against given sites), `demo`
//! (start core-server + proxy on loopback and drive 25,000 desktops through the proxy),
//! `compare` (the same load direct and through the proxy, with ratios), `transports` (the same
//! load over TCP and over QUIC through one proxy, with ratios).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use deskmux_loadgen::args::LoadArgs;
use deskmux_loadgen::config::{RunConfig, Transport};
use deskmux_loadgen::demo::{self, Stack};
use deskmux_loadgen::report::{self, Summary};
use deskmux_loadgen::{runner, shard};

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Simulated deskmux desktops with honest measurement"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Drive desktops against running sites (a proxy or a server).
    Run {
        /// Target site (repeatable, in failover order).
        #[arg(long = "site", required = true)]
        sites: Vec<SocketAddr>,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Start core-server and proxy from this workspace on loopback, drive desktops through
    /// the proxy, print the summary.
    Demo {
        /// Bypass the proxy: drive core-server directly.
        #[arg(long)]
        direct: bool,
        #[command(flatten)]
        stack: StackArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Run the same load direct and through the proxy; print throughput, server CPU per request
    /// and p99 ratios. Desktops are capped under the server's open-file limit.
    Compare {
        #[command(flatten)]
        stack: StackArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// The same load over TCP and QUIC through one proxy (both on the same port number), then
    /// over TLS through a second proxy whose TCP port speaks TLS; print throughput, proxy CPU
    /// per request and p99 of each, and the ratios to TCP.
    Transports {
        #[command(flatten)]
        stack: StackArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Internal: run one shard of a sharded run (started by the parent loadgen).
    #[command(hide = true)]
    Shard {
        /// `i/N`.
        #[arg(long)]
        shard: String,
        /// The run configuration.
        #[arg(long)]
        config_json: String,
    },
}

/// How `demo`, `compare` and `transports` set up the stack they start.
#[derive(Debug, Clone, clap::Args)]
struct StackArgs {
    /// Proxy worker processes.
    #[arg(long, default_value_t = 2)]
    proxy_workers: usize,
    /// core-server `outbound_queue`: frames queued towards one connection (a proxy link too)
    /// before the server closes it as a slow consumer. Default: the server's (8192).
    #[arg(long)]
    server_outbound_queue: Option<usize>,
    /// The proxy's desktop heartbeat interval, ms (idle desktops heartbeat at half of it;
    /// three silent intervals close one).
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u32,
    /// The proxy's links to core-server in plain TCP (loopback, with the proxy's explicit
    /// `plaintext_links` opt-in). Default: TLS links (core-server's port speaks TLS with a
    /// self-signed certificate the proxy trusts as its link CA; benches/LINK_TLS.md has the
    /// cost).
    #[arg(long)]
    plaintext_links: bool,
}

impl StackArgs {
    /// The stack options for desktops over `transport`: through the proxy unless `direct`; for
    /// QUIC the proxy takes QUIC (and plain TCP), for TLS its TCP port speaks TLS.
    fn opts(&self, direct: bool, transport: Transport, agents: Option<u64>) -> demo::StackOpts {
        demo::StackOpts {
            agents: agents.unwrap_or(1000),
            proxy_workers: (!direct).then_some(self.proxy_workers),
            server_outbound_queue: self.server_outbound_queue,
            quic: transport == Transport::Quic,
            tls: transport == Transport::Tls,
            heartbeat_ms: self.heartbeat_ms,
            link_tls: !self.plaintext_links,
        }
    }
}

fn finish(
    cfg: &RunConfig,
    shards: &[deskmux_loadgen::engine::ShardResult],
    load: &LoadArgs,
    server: Option<serde_json::Value>,
) -> Result<Summary> {
    let (mut summary, rec) = report::aggregate(cfg, shards).map_err(|e| anyhow!(e))?;
    summary.server = server;
    println!("{}", report::table(&summary));
    if let Some(p) = &load.json {
        std::fs::write(p, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &load.hdr_log {
        report::write_hdr_log(p, cfg, &rec).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &load.html {
        std::fs::write(p, report::html(&summary, &rec))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(summary)
}

/// Run `load` against a fresh stack; returns the summary.
fn run_on_stack(load: &LoadArgs, stack: &StackArgs, direct: bool) -> Result<Summary> {
    let stack = Stack::start_with(&stack.opts(direct, load.transport, load.desktops))
        .map_err(|e| anyhow!(e))?;
    let s = drive(&stack, load)?;
    drop(stack);
    Ok(s)
}

/// Run `load` against a running `stack` (QUIC desktops trust the stack's own certificate
/// unless `--ca` says otherwise); returns the summary.
fn drive(stack: &Stack, load: &LoadArgs) -> Result<Summary> {
    let mut load = load.clone();
    if load.transport != Transport::Tcp && load.ca.is_none() {
        load.ca.clone_from(&stack.ca);
    }
    if load.credentials.is_none() {
        load.credentials = Some(stack.credentials.clone());
    }
    let load = &load;
    let target = stack.target().map_err(|e| anyhow!(e))?;
    let via = if stack.proxy.is_some() {
        "proxy"
    } else {
        "direct"
    };
    let mut cfg = load.to_config(vec![target]).map_err(|e| anyhow!(e))?;
    if stack.proxy.is_none() {
        cap_direct(&mut cfg, stack.server.pid());
    }
    eprintln!(
        "loadgen: {} {} desktops {via} to {target} ({} shard(s))",
        cfg.desktops,
        cfg.transport.as_str(),
        runner::shards_for(&cfg)
    );
    runner::schedule(&mut cfg);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = demo::sample_cpu(
        &cfg,
        stack.server.pid(),
        stack.proxy.as_ref().map(|p| p.pid()),
        done.clone(),
    );
    let shards = runner::run(cfg.clone(), load.quiet);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let shards = shards.map_err(|e| anyhow!(e))?;
    let cpu = sampler
        .join()
        .map_err(|_| anyhow!("cpu sampler panicked"))?;
    let measured: u64 = report::aggregate(&cfg, &shards)
        .map_err(|e| anyhow!(e))?
        .0
        .requests
        .measured;
    let server = demo::server_json(via, &cpu, cfg.duration_s, measured);
    finish(&cfg, &shards, load, Some(server))
}

/// `dir/name-TAG.ext` for `dir/name.ext`.
fn suffixed(p: &std::path::Path, tag: &str) -> std::path::PathBuf {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match p.extension() {
        Some(e) => format!("{stem}-{tag}.{}", e.to_string_lossy()),
        None => format!("{stem}-{tag}"),
    };
    p.with_file_name(name)
}

/// A number from the summary's `server` object (stack CPU figures; 0 when absent).
fn server_figure(s: &Summary, k: &str) -> f64 {
    s.server
        .as_ref()
        .and_then(|v| v.get(k))
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0)
}

/// `a / b`, or 0 when `b` is not positive.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Keep a direct run under the server's open-file limit.
fn cap_direct(cfg: &mut RunConfig, server_pid: u32) {
    let limit = shard::nofile_limit_of(server_pid).unwrap_or(1024);
    let cap = limit.saturating_sub(500).max(1);
    if cfg.desktops > cap {
        eprintln!("loadgen: direct run capped at {cap} desktops (server open-file limit {limit})");
        cfg.desktops = cap;
    }
}

/// Exit code: 2 if verification failed, 3 if no desktop ever connected (nothing was
/// measured: wrong address, certificate, credentials...), 0 otherwise.
fn verdict(s: &Summary) -> ExitCode {
    if s.verification_failed {
        ExitCode::from(2)
    } else if s.clients.connected == 0 {
        eprintln!("loadgen: no desktop connected; see the samples above");
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Shard { shard, config_json } => {
            let (i, n) = shard::parse_shard(&shard).map_err(|e| anyhow!(e))?;
            let mut cfg: RunConfig = serde_json::from_str(&config_json)?;
            cfg.load_credentials().map_err(|e| anyhow!(e))?;
            runner::shard_main(cfg, i, n).map_err(|e| anyhow!(e))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { sites, load } => {
            let mut cfg = load.to_config(sites).map_err(|e| anyhow!(e))?;
            // Fix the start here, not inside `run`: the summary and the HDR log's start time
            // are written from this copy.
            runner::schedule(&mut cfg);
            let shards = runner::run(cfg.clone(), load.quiet).map_err(|e| anyhow!(e))?;
            let s = finish(&cfg, &shards, &load, None)?;
            Ok(verdict(&s))
        }
        Cmd::Demo {
            direct,
            stack,
            mut load,
        } => {
            load.desktops.get_or_insert(25_000);
            let s = run_on_stack(&load, &stack, direct)?;
            Ok(verdict(&s))
        }
        Cmd::Transports { stack, load } => transports(&stack, load),
        Cmd::Compare { stack, load } => {
            // Same load both ways: cap to what a direct run can hold.
            let mut load = load;
            let probe = Stack::start(None).map_err(|e| anyhow!(e))?;
            let limit = shard::nofile_limit_of(probe.server.pid()).unwrap_or(1024);
            drop(probe);
            let cap = limit.saturating_sub(500).max(1);
            let n = load.desktops.unwrap_or(cap).min(cap);
            if load.desktops.is_some_and(|d| d > cap) {
                eprintln!(
                    "loadgen: compare capped at {cap} desktops (server open-file limit {limit})"
                );
            }
            load.desktops = Some(n);
            let json = load.json.take();
            let html = load.html.take();
            let hdr = load.hdr_log.take();
            let for_run = |tag: &str| {
                let mut l = load.clone();
                l.html = html.as_deref().map(|p| suffixed(p, tag));
                l.hdr_log = hdr.as_deref().map(|p| suffixed(p, tag));
                l
            };
            eprintln!("== direct ==");
            let d = run_on_stack(&for_run("direct"), &stack, true)?;
            eprintln!("== through the proxy ==");
            let p = run_on_stack(&for_run("proxy"), &stack, false)?;
            let g = server_figure;
            let cmp = serde_json::json!({
                "desktops": n,
                "direct": d,
                "proxy": p,
                "ratios_proxy_over_direct": {
                    "throughput": ratio(p.throughput_rps, d.throughput_rps),
                    "server_cpu_per_request": ratio(g(&p, "server_cpu_us_per_request"), g(&d, "server_cpu_us_per_request")),
                    "p99": ratio(p.latency_us.p99, d.latency_us.p99),
                },
            });
            println!(
                "compare ({} desktops): proxy/direct throughput {:.2}×, server CPU per request {:.2}×, p99 {:.2}×",
                n,
                ratio(p.throughput_rps, d.throughput_rps),
                ratio(
                    g(&p, "server_cpu_us_per_request"),
                    g(&d, "server_cpu_us_per_request")
                ),
                ratio(p.latency_us.p99, d.latency_us.p99)
            );
            println!(
                "  direct: {:.0} req/s, server {:.2} µs cpu/req, p99 {:.0} µs | proxy: {:.0} req/s, server {:.2} µs cpu/req, proxy {:.2} µs cpu/req, p99 {:.0} µs",
                d.throughput_rps,
                g(&d, "server_cpu_us_per_request"),
                d.latency_us.p99,
                p.throughput_rps,
                g(&p, "server_cpu_us_per_request"),
                g(&p, "proxy_cpu_us_per_request"),
                p.latency_us.p99
            );
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&cmp)?)?;
            }
            if d.verification_failed || p.verification_failed {
                return Ok(ExitCode::from(2));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `transports`: the same load over TCP then QUIC through one stack, then over TLS through a
/// second stack whose proxy speaks TLS on its TCP port (a `[tls]` port speaks only TLS); with
/// ratios to TCP.
fn transports(stack: &StackArgs, mut load: LoadArgs) -> Result<ExitCode> {
    let json = load.json.take();
    let html = load.html.take();
    let hdr = load.hdr_log.take();
    let run = |st: &Stack, t: Transport| {
        let mut l = load.clone();
        l.transport = t;
        l.html = html.as_deref().map(|p| suffixed(p, t.as_str()));
        l.hdr_log = hdr.as_deref().map(|p| suffixed(p, t.as_str()));
        eprintln!("== over {} ==", t.as_str());
        let s = drive(st, &l);
        // Let the proxy finish closing the desktops of the run before the next one starts.
        std::thread::sleep(std::time::Duration::from_secs(2));
        s
    };
    let (tcp, quic) = {
        let st = Stack::start_with(&stack.opts(false, Transport::Quic, load.desktops))
            .map_err(|e| anyhow!(e))?;
        (run(&st, Transport::Tcp)?, run(&st, Transport::Quic)?)
    };
    let tls = {
        let st = Stack::start_with(&stack.opts(false, Transport::Tls, load.desktops))
            .map_err(|e| anyhow!(e))?;
        run(&st, Transport::Tls)?
    };
    let g = server_figure;
    let cpu = "proxy_cpu_us_per_request";
    let ratios = |s: &Summary| {
        serde_json::json!({
            "throughput": ratio(s.throughput_rps, tcp.throughput_rps),
            "proxy_cpu_per_request": ratio(g(s, cpu), g(&tcp, cpu)),
            "p99": ratio(s.latency_us.p99, tcp.latency_us.p99),
        })
    };
    println!(
        "transports ({} desktops each; tcp and quic through one proxy, tls through a second):",
        tcp.clients.target
    );
    for (name, s) in [("tcp", &tcp), ("tls", &tls), ("quic", &quic)] {
        println!(
            "  {name:4}: {:.0} req/s ({:.2}× tcp), proxy {:.2} µs cpu/req ({:.2}× tcp), server {:.2} µs cpu/req, p99 {:.0} µs ({:.2}× tcp), lost {}, connected {}/{}",
            s.throughput_rps,
            ratio(s.throughput_rps, tcp.throughput_rps),
            g(s, cpu),
            ratio(g(s, cpu), g(&tcp, cpu)),
            g(s, "server_cpu_us_per_request"),
            s.latency_us.p99,
            ratio(s.latency_us.p99, tcp.latency_us.p99),
            s.requests.lost,
            s.clients.connected,
            s.clients.target
        );
    }
    if let Some(path) = json {
        let cmp = serde_json::json!({
            "tcp": tcp,
            "tls": tls,
            "quic": quic,
            "ratios_quic_over_tcp": ratios(&quic),
            "ratios_tls_over_tcp": ratios(&tls),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&cmp)?)?;
    }
    if [&tcp, &tls, &quic].iter().any(|s| s.verification_failed) {
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
