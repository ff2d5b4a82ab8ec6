//! `compare` and `transports`: the same load on differently set-up stacks, with ratios.

use anyhow::{Context, Result, anyhow};
use deskmux_loadgen::args::LoadArgs;
use deskmux_loadgen::config::Transport;
use deskmux_loadgen::demo::Stack;
use deskmux_loadgen::exit;
use deskmux_loadgen::report::Summary;
use deskmux_loadgen::shard;

use super::{StackArgs, check_outputs, drive, ratio, run_on_stack, server_figure};

/// `compare`: the same load direct and through the proxy, capped to what a direct run holds.
pub fn compare(stack: &StackArgs, mut load: LoadArgs) -> Result<u8> {
    check_outputs(&load, true)?;
    let probe = Stack::start(None).map_err(|e| anyhow!(e))?;
    let limit = shard::nofile_limit_of(probe.server.pid()).unwrap_or(1024);
    drop(probe);
    let cap = limit.saturating_sub(500).max(1);
    let n = load.desktops.unwrap_or(cap).min(cap);
    if load.desktops.is_some_and(|d| d > cap) {
        eprintln!("loadgen: compare capped at {cap} desktops (server open-file limit {limit})");
    }
    load.desktops = Some(n);
    let for_run = |tag: &str| {
        let mut l = load.clone();
        l.html = l.html.as_ref().map(|o| o.suffixed(tag));
        l.hdr_log = l.hdr_log.as_ref().map(|o| o.suffixed(tag));
        l
    };
    eprintln!("== direct ==");
    let d = run_on_stack(&for_run("direct"), stack, true)?;
    eprintln!("== through the proxy ==");
    let p = run_on_stack(&for_run("proxy"), stack, false)?;
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
    let text = format!(
        "compare ({} desktops): proxy/direct throughput {:.2}×, server CPU per request {:.2}×, p99 {:.2}×\n  \
         direct: {:.0} req/s, server {:.2} µs cpu/req, p99 {:.0} µs | proxy: {:.0} req/s, server {:.2} µs cpu/req, proxy {:.2} µs cpu/req, p99 {:.0} µs",
        n,
        ratio(p.throughput_rps, d.throughput_rps),
        ratio(
            g(&p, "server_cpu_us_per_request"),
            g(&d, "server_cpu_us_per_request")
        ),
        ratio(p.latency_us.p99, d.latency_us.p99),
        d.throughput_rps,
        g(&d, "server_cpu_us_per_request"),
        d.latency_us.p99,
        p.throughput_rps,
        g(&p, "server_cpu_us_per_request"),
        g(&p, "proxy_cpu_us_per_request"),
        p.latency_us.p99
    );
    super::say(&load, &text);
    if let Some(o) = &load.json {
        o.write(serde_json::to_string_pretty(&cmp)?.as_bytes())
            .with_context(|| format!("writing {o}"))?;
    }
    Ok(exit::worst(
        [&d, &p].iter().map(|s| exit::verdict(s, load.strict)),
    ))
}

/// `transports`: the same load over TCP then QUIC through one stack, then over TLS through a
/// second stack whose proxy speaks TLS on its TCP port (a `[tls]` port speaks only TLS); with
/// ratios to TCP.
pub fn transports(stack: &StackArgs, load: LoadArgs) -> Result<u8> {
    check_outputs(&load, true)?;
    let run = |st: &Stack, t: Transport| {
        let mut l = load.clone();
        l.transport = t;
        l.html = l.html.as_ref().map(|o| o.suffixed(t.as_str()));
        l.hdr_log = l.hdr_log.as_ref().map(|o| o.suffixed(t.as_str()));
        eprintln!("== over {} ==", t.as_str());
        let s = drive(st, &l);
        // Let the proxy finish closing the desktops of the run before the next one starts.
        std::thread::sleep(std::time::Duration::from_secs(2));
        s
    };
    let (tcp, quic) = {
        let st = Stack::start_with(&stack.opts(false, Transport::Quic, &load))
            .map_err(|e| anyhow!(e))?;
        (run(&st, Transport::Tcp)?, run(&st, Transport::Quic)?)
    };
    let tls = {
        let st =
            Stack::start_with(&stack.opts(false, Transport::Tls, &load)).map_err(|e| anyhow!(e))?;
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
    let mut text = format!(
        "transports ({} desktops each; tcp and quic through one proxy, tls through a second):",
        tcp.clients.target
    );
    for (name, s) in [("tcp", &tcp), ("tls", &tls), ("quic", &quic)] {
        text.push_str(&format!(
            "\n  {name:4}: {:.0} req/s ({:.2}× tcp), proxy {:.2} µs cpu/req ({:.2}× tcp), server {:.2} µs cpu/req, p99 {:.0} µs ({:.2}× tcp), lost {}, connected {}/{}",
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
        ));
    }
    super::say(&load, &text);
    if let Some(o) = &load.json {
        let cmp = serde_json::json!({
            "tcp": tcp,
            "tls": tls,
            "quic": quic,
            "ratios_quic_over_tcp": ratios(&quic),
            "ratios_tls_over_tcp": ratios(&tls),
        });
        o.write(serde_json::to_string_pretty(&cmp)?.as_bytes())
            .with_context(|| format!("writing {o}"))?;
    }
    Ok(exit::worst(
        [&tcp, &tls, &quic]
            .iter()
            .map(|s| exit::verdict(s, load.strict)),
    ))
}
