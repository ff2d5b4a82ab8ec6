//! The binary's commands that drive load: one run against given sites or a started stack, its
//! outputs, and `--repeat`. Kept out of the library because it reports with `anyhow` and
//! prints; [`stacks`] holds `compare` and `transports`, [`callback`] the GMS demo.

pub mod callback;
pub mod stacks;

use std::net::SocketAddr;

use anyhow::{Context, Result, anyhow};
use deskmux_loadgen::args::LoadArgs;
use deskmux_loadgen::config::{RunConfig, Transport};
use deskmux_loadgen::demo::{self, Stack};
use deskmux_loadgen::exit::{self, UsageError};
use deskmux_loadgen::outputs::{self, Output};
use deskmux_loadgen::report::{self, Summary};
use deskmux_loadgen::{runner, shard, spread};

/// How `demo`, `compare` and `transports` set up the stack they start.
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// Proxy worker processes.
    #[arg(long, default_value_t = 2)]
    pub proxy_workers: usize,
    /// core-server `outbound_queue`: frames queued towards one connection (a proxy link too)
    /// before the server closes it as a slow consumer. Default: the server's (8192).
    #[arg(long)]
    pub server_outbound_queue: Option<usize>,
    /// The proxy's desktop heartbeat interval, ms (idle desktops heartbeat at half of it;
    /// three silent intervals close one).
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_ms: u32,
    /// The proxy's links to core-server in plain TCP (loopback, with the proxy's explicit
    /// `plaintext_links` opt-in). Default: TLS links (core-server's port speaks TLS with a
    /// self-signed certificate the proxy trusts as its link CA; benches/LINK_TLS.md has the
    /// cost).
    #[arg(long)]
    pub plaintext_links: bool,
}

impl StackArgs {
    /// The stack options for `load`'s desktops over `transport`: through the proxy unless
    /// `direct`; for QUIC the proxy takes QUIC (and plain TCP), for TLS its TCP port speaks
    /// TLS. The stack imports `load`'s credentials file when it names one (the desktops log in
    /// with it), else writes its own.
    pub fn opts(&self, direct: bool, transport: Transport, load: &LoadArgs) -> demo::StackOpts {
        demo::StackOpts {
            agents: load.desktops.unwrap_or(1000),
            proxy_workers: (!direct).then_some(self.proxy_workers),
            server_outbound_queue: self.server_outbound_queue,
            quic: transport == Transport::Quic,
            tls: transport == Transport::Tls,
            heartbeat_ms: self.heartbeat_ms,
            link_tls: !self.plaintext_links,
            gms: None,
            credentials: load.credentials.clone(),
        }
    }
}

/// Check the outputs before anything runs (a path that cannot be written is a usage error).
/// `per_run`: one HTML report and HDR log per run, so neither may be stdout.
pub fn check_outputs(load: &LoadArgs, per_run: bool) -> Result<()> {
    outputs::check_all(
        load.json.as_ref(),
        load.html.as_ref(),
        load.hdr_log.as_ref(),
        per_run,
    )
    .map_err(|e| UsageError(e.to_string()).into())
}

/// Print a report for a person: on stdout, unless one of the outputs is stdout (then stdout
/// carries only that output, and this goes to stderr).
pub fn say(load: &LoadArgs, text: &str) {
    let stdout_taken = [&load.json, &load.html, &load.hdr_log]
        .iter()
        .any(|o| matches!(o, Some(Output::Stdout)));
    if stdout_taken {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
}

/// Run `load` `--repeat` times with `one`; report each run, the spread, write the JSON, and
/// return the exit code (the gravest run's). A run stopped by Ctrl-C ends the series.
pub fn runs(load: &LoadArgs, mut one: impl FnMut(&LoadArgs) -> Result<Summary>) -> Result<u8> {
    let n = load.repeat.max(1);
    let mut all = Vec::new();
    for k in 1..=n {
        // Each run's JSON is written below, once for all; `l.json` stays set so that its
        // table avoids stdout when the JSON goes there.
        let mut l = load.clone();
        if n > 1 {
            eprintln!("== run {k} of {n} ==");
            let tag = format!("run{k}");
            l.html = l.html.map(|o| o.suffixed(&tag));
            l.hdr_log = l.hdr_log.map(|o| o.suffixed(&tag));
        }
        let s = one(&l)?;
        let stopped = s.stopped_early;
        all.push(s);
        if stopped {
            break;
        }
    }
    let values = all
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    if n > 1 {
        say(load, &spread::table(&values));
    }
    if let Some(o) = &load.json {
        let doc = if n > 1 {
            spread::document(values)
        } else {
            values.into_iter().next().unwrap_or_default()
        };
        o.write(serde_json::to_string_pretty(&doc)?.as_bytes())
            .with_context(|| format!("writing {o}"))?;
    }
    let code = exit::worst(all.iter().map(|s| exit::verdict(s, load.strict)));
    if code == exit::CONNECT {
        eprintln!("loadgen: no desktop connected; see the samples above");
    }
    Ok(code)
}

/// The run configuration of `load` against `sites` (inconsistent options are usage errors).
pub fn config(load: &LoadArgs, sites: Vec<SocketAddr>) -> Result<RunConfig> {
    load.to_config(sites).map_err(|e| UsageError(e).into())
}

/// One run against running sites.
pub fn run_sites(load: &LoadArgs, sites: &[SocketAddr]) -> Result<Summary> {
    let mut cfg = config(load, sites.to_vec())?;
    // Fix the start here, not inside `run`: the summary and the HDR log's start time are
    // written from this copy.
    runner::schedule(&mut cfg);
    let out = runner::run(cfg.clone(), load.quiet).map_err(|e| anyhow!(e))?;
    finish(&cfg, out, load, |_| None)
}

/// Merge a run's results, print its table, write its HTML report and HDR log (the JSON is
/// written by [`runs`] or the caller); `server` gives the stack's figures from the summary.
pub fn finish(
    cfg: &RunConfig,
    out: runner::RunOutput,
    load: &LoadArgs,
    server: impl FnOnce(&Summary) -> Option<serde_json::Value>,
) -> Result<Summary> {
    let (summary, rec) = summarize(cfg, out, server)?;
    emit(cfg, load, summary, &rec)
}

/// Merge a run's results into its summary (with the stack's figures from `server`) and the
/// merged recorder.
pub fn summarize(
    cfg: &RunConfig,
    out: runner::RunOutput,
    server: impl FnOnce(&Summary) -> Option<serde_json::Value>,
) -> Result<(Summary, report::Recorder)> {
    let (mut summary, rec) = report::aggregate(cfg, &out.shards).map_err(|e| anyhow!(e))?;
    summary.timeline = report::timeline(&out.timeline);
    summary.server = server(&summary);
    Ok((summary, rec))
}

/// Print a summary's table, write its HTML report and HDR log.
pub fn emit(
    cfg: &RunConfig,
    load: &LoadArgs,
    summary: Summary,
    rec: &report::Recorder,
) -> Result<Summary> {
    say(load, &report::table(&summary));
    if let Some(o) = &load.hdr_log {
        o.write(&report::hdr_log(cfg, rec)?)
            .with_context(|| format!("writing {o}"))?;
    }
    if let Some(o) = &load.html {
        o.write(report::html(&summary, rec).as_bytes())
            .with_context(|| format!("writing {o}"))?;
    }
    Ok(summary)
}

/// Run `load` against a fresh stack; returns the summary.
pub fn run_on_stack(load: &LoadArgs, stack: &StackArgs, direct: bool) -> Result<Summary> {
    let stack =
        Stack::start_with(&stack.opts(direct, load.transport, load)).map_err(|e| anyhow!(e))?;
    let s = drive(&stack, load)?;
    drop(stack);
    Ok(s)
}

/// Run `load` against a running `stack` (QUIC desktops trust the stack's own certificate
/// unless `--ca` says otherwise); returns the summary.
pub fn drive(stack: &Stack, load: &LoadArgs) -> Result<Summary> {
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
    let mut cfg = config(load, vec![target])?;
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
    let out = runner::run(cfg.clone(), load.quiet);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let out = out.map_err(|e| anyhow!(e))?;
    let cpu = sampler
        .join()
        .map_err(|_| anyhow!("cpu sampler panicked"))?;
    finish(&cfg, out, load, |s| {
        Some(demo::server_json(
            via,
            &cpu,
            s.measured_s,
            s.requests.measured,
        ))
    })
}

/// A number from the summary's `server` object (stack CPU figures; 0 when absent).
pub fn server_figure(s: &Summary, k: &str) -> f64 {
    s.server
        .as_ref()
        .and_then(|v| v.get(k))
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0)
}

/// `a / b`, or 0 when `b` is not positive.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Keep a direct run under the server's open-file limit.
pub fn cap_direct(cfg: &mut RunConfig, server_pid: u32) {
    let limit = shard::nofile_limit_of(server_pid).unwrap_or(1024);
    let cap = limit.saturating_sub(500).max(1);
    if cfg.desktops > cap {
        eprintln!("loadgen: direct run capped at {cap} desktops (server open-file limit {limit})");
        cfg.desktops = cap;
    }
}
