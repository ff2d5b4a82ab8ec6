//! `demo -s callback`: one or two GMS sites on loopback (each a core-server with a `[gms]` pool
//! per tenant, behind its own proxy), simulated mobile clients over them, optionally site A
//! killed (`kill -9`, server and proxy) mid-run; then the leak check against the databases.
//!
//! The leak check, per site, once the run is over: wait until every booking has been matched
//! or has expired and been swept, reading the server's `gms_booked`/`gms_matched`/`gms_expired`
//! counters (a site killed during the run is restarted first, so that its own sweep expires
//! what it held); stop the server; audit its data file (`core-server gms audit`: bookings ever
//! made, rows left). A balance of the counters counts only once nothing can be booked any
//! more: at once when loadgen got every answer, else after the server's `request_timeout_ms`,
//! until which a request loadgen gave up on may still wait in its queue and run.
//! A site that ran throughout must account for every booking: `made = matched + expired +
//! remaining`, with `remaining = 0`. Anything else is reported as leaked and fails the run.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use deskmux_loadgen::args::{LoadArgs, parse_secs};
use deskmux_loadgen::demo::{self, GmsStack, Stack};
use deskmux_loadgen::engine;
use deskmux_loadgen::gms::{LeakCheck, SiteAudit};
use deskmux_loadgen::report::Summary;
use deskmux_loadgen::runner;

use super::{StackArgs, config, emit, summarize};

/// `demo` options of the callback scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct CallbackArgs {
    /// Callback: access numbers in each tenant's pool (the demo's credentials alternate
    /// tenants 1 and 2). Smaller than the numbers held at once (rate x think time per tenant,
    /// plus the abandoned bookings until they expire), requests find the pool exhausted; a pool
    /// nearly full costs the server a scan of its bookings per request.
    #[arg(long, default_value_t = 10_000)]
    pub pool: u64,
    /// Callback: how long a booking holds its number without a call (the group's
    /// `booking_ttl_ms`; a duration, at least 1 s). The leak check waits this long after the
    /// run.
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    pub booking_ttl: f64,
    /// Callback: GMS sites (1 or 2), each a core-server behind its own proxy, with pools that
    /// do not intersect; clients get `--site` for each and start spread over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub gms_sites: u8,
    /// Callback: kill site A (its core-server and proxy, `kill -9`) this long after the run
    /// starts (a duration from the start of the ramp). Needs `--gms-sites 2`.
    #[arg(long, value_parser = parse_secs)]
    pub kill_site_a_after: Option<f64>,
}

/// How often the leak check polls the servers' counters.
const POLL: Duration = Duration::from_millis(200);

/// Run the callback demo once; the summary, with its leak check.
pub fn run(load: &LoadArgs, stack: &StackArgs, cb: &CallbackArgs, direct: bool) -> Result<Summary> {
    if cb.kill_site_a_after.is_some() && cb.gms_sites < 2 {
        return Err(deskmux_loadgen::exit::UsageError(
            "--kill-site-a-after needs --gms-sites 2 (a site to fail over to)".into(),
        )
        .into());
    }
    if cb.booking_ttl < 1.0 {
        return Err(
            deskmux_loadgen::exit::UsageError("--booking-ttl must be at least 1s".into()).into(),
        );
    }
    if let Some(k) = cb.kill_site_a_after
        && k >= load.ramp + load.warmup + load.duration
    {
        return Err(deskmux_loadgen::exit::UsageError(format!(
            "--kill-site-a-after {k} s is not before the end of the window ({} s after the start)",
            load.ramp + load.warmup + load.duration
        ))
        .into());
    }
    let ttl_ms = (cb.booking_ttl * 1000.0) as u64;
    let sweep_ms = 200;
    let mut stacks: Vec<Stack> = Vec::new();
    for site in 0..cb.gms_sites {
        let mut o = stack.opts(direct, load.transport, load);
        o.gms = Some(GmsStack {
            group: load.group.clone(),
            pool: cb.pool,
            ttl_ms,
            sweep_ms,
            site,
        });
        // Both sites provision the same agents: the file given, or the first site's.
        if let Some(first) = stacks.first() {
            o.credentials
                .get_or_insert_with(|| first.credentials.clone());
        }
        stacks.push(Stack::start_with(&o).map_err(|e| anyhow!(e))?);
    }
    let mut load = load.clone();
    if load.credentials.is_none() {
        load.credentials = Some(stacks[0].credentials.clone());
    }
    let targets = stacks
        .iter()
        .map(Stack::target)
        .collect::<Result<Vec<SocketAddr>, String>>()
        .map_err(|e| anyhow!(e))?;
    let mut cfg = config(&load, targets.clone())?;
    if direct {
        super::cap_direct(&mut cfg, stacks[0].server.pid());
    }
    eprintln!(
        "loadgen: {} callback clients over {} site(s) {:?}, pool {} per tenant and site, think {} s, booking expiry {} s ({} shard(s))",
        cfg.desktops,
        stacks.len(),
        targets,
        cb.pool,
        cfg.think_s,
        cb.booking_ttl,
        runner::shards_for(&cfg)
    );
    runner::schedule(&mut cfg);
    let killer = cb.kill_site_a_after.map(|after| {
        let site_a = &stacks[0];
        let mut pids = vec![site_a.server.pid()];
        if let Some(p) = &site_a.proxy {
            pids.extend(demo::process_tree(p.pid()));
        }
        let at = cfg.start_unix_ns + (after * 1e9) as u64;
        std::thread::spawn(move || {
            let now = engine::unix_ns();
            if at > now {
                std::thread::sleep(Duration::from_nanos(at - now));
            }
            demo::kill_hard(&pids);
            eprintln!("demo: site A killed (kill -9: pids {pids:?}) at {after} s");
        })
    });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The CPU of the last site: with two, the one that runs throughout.
    let measured = stacks.last().ok_or_else(|| anyhow!("no site"))?;
    let sampler = demo::sample_cpu(
        &cfg,
        measured.server.pid(),
        measured.proxy.as_ref().map(|p| p.pid()),
        done.clone(),
    );
    let out = runner::run(cfg.clone(), load.quiet);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let out = out.map_err(|e| anyhow!(e))?;
    let killed = killer.map(|k| k.join().is_ok()).unwrap_or(false);
    let cpu = sampler
        .join()
        .map_err(|_| anyhow!("cpu sampler panicked"))?;
    let via = if direct { "direct" } else { "proxy" };
    let (mut summary, rec) = summarize(&cfg, out, |s| {
        let mut v = demo::server_json(via, &cpu, s.measured_s, s.requests.measured);
        if stacks.len() > 1 {
            v["note"] = "CPU figures are site B's".into();
        }
        Some(v)
    })?;
    // Requests loadgen gave up on (lost, or interrupted by a dying connection) may still wait
    // in a server's queue and be run until their deadline (`request_timeout_ms`): only after
    // it can nothing be booked any more. With every request answered, nothing waits.
    let unanswered =
        summary.requests.lost + summary.gms.as_ref().map_or(0, |g| g.counts.interrupted);
    let quiet = Instant::now()
        + if unanswered > 0 {
            Duration::from_millis(demo::REQUEST_TIMEOUT_MS)
        } else {
            Duration::ZERO
        };
    let mut audits = Vec::new();
    for (i, st) in stacks.iter_mut().enumerate() {
        let was_killed = killed && i == 0;
        let name = format!("site {i} ({})", targets[i]);
        let a = audit_site(st, was_killed, quiet, ttl_ms, sweep_ms, name)
            .with_context(|| format!("leak check of site {i}"))?;
        audits.push(a);
    }
    summary.set_leak_check(LeakCheck::of(audits));
    emit(&cfg, &load, summary, &rec)
}

/// The leak check of one site (see the module's documentation).
///
/// `quiet`: from then on no request can book anything on a site that ran throughout; a
/// balance of its counters (booked = matched + expired) seen after it is final.
fn audit_site(
    st: &mut Stack,
    killed: bool,
    quiet: Instant,
    ttl_ms: u64,
    sweep_ms: u64,
    site: String,
) -> Result<SiteAudit> {
    let mut note = String::new();
    let mut from = quiet;
    if killed {
        st.server = demo::start_server(&st.core_config, true).map_err(|e| anyhow!(e))?;
        from = Instant::now();
        note = "killed during the run; restarted after it, so that its sweep expired what it held \
                (its counters restarted at 0)"
            .into();
    }
    let http = st.server.addr("HTTP").map_err(|e| anyhow!(e))?;
    // Every booking is made before `quiet` (or before the restart): by then plus its expiry
    // and two sweeps, each has been matched or swept.
    let deadline = from + Duration::from_millis(ttl_ms + 2 * sweep_ms) + Duration::from_secs(2);
    let mut counters = gms_counters(http)?;
    while Instant::now() < deadline {
        // A site that ran throughout is done as soon as it holds nothing for good; a
        // restarted one waits for the expiry of what it held.
        if !killed && Instant::now() >= quiet && counters.0 == counters.1 + counters.2 {
            break;
        }
        std::thread::sleep(POLL);
        counters = gms_counters(http)?;
    }
    let (_, matched, expired) = counters;
    st.server.stop();
    let a = db_audit(&st.core_config)?;
    let (server_matched, server_expired, unaccounted) = if killed {
        (None, None, None)
    } else {
        (
            Some(matched),
            Some(expired),
            Some(a.made as i64 - matched as i64 - expired as i64 - a.remaining as i64),
        )
    };
    Ok(SiteAudit {
        site,
        made: a.made,
        remaining: a.remaining,
        remaining_live: a.remaining_live,
        server_matched,
        server_expired,
        unaccounted,
        note,
    })
}

/// What `core-server gms audit` prints (the fields used here).
#[derive(Debug, serde::Deserialize)]
struct DbAudit {
    made: u64,
    remaining: u64,
    remaining_live: u64,
}

/// `core-server --config CFG gms audit` on a stopped server's data file.
fn db_audit(cfg: &Path) -> Result<DbAudit> {
    let out = Command::new(demo::bin_dir().join("core-server"))
        .arg("--config")
        .arg(cfg)
        .args(["gms", "audit"])
        .stdin(Stdio::null())
        .output()
        .context("core-server gms audit")?;
    if !out.status.success() {
        bail!(
            "core-server gms audit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("core-server gms audit output")
}

/// The server's (booked, matched, expired) GMS counters, from its `/metrics`.
fn gms_counters(http: SocketAddr) -> Result<(u64, u64, u64)> {
    let text = http_get(http, "/metrics")?;
    let get = |name: &str| -> Result<u64> {
        let key = format!("deskmux_core_gms_{name}_total ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .ok_or_else(|| anyhow!("no {key}in the server's /metrics"))
    };
    Ok((get("booked")?, get("matched")?, get("expired")?))
}

/// A plain HTTP/1.0 GET on loopback; the body.
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (_, body) = buf
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{addr}{path}: no HTTP answer"))?;
    Ok(body.to_string())
}
