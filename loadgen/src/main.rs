//! `loadgen`: simulated deskmux desktops. Subcommands: `run` (against given sites), `demo`
//! (start core-server + proxy on loopback and drive 25,000 desktops through the proxy),
//! `compare` (the same load direct and through the proxy, with ratios), `transports` (the same
//! load over TCP and over QUIC through one proxy, with ratios), `diff` (two saved results).
//! The exit codes are in [`deskmux_loadgen::exit`].
#![forbid(unsafe_code)]

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::{Parser, Subcommand};
use deskmux_loadgen::args::LoadArgs;
use deskmux_loadgen::config::Scenario;
use deskmux_loadgen::exit::{self, ConnectError, UsageError};
use deskmux_loadgen::outputs::Output;
use deskmux_loadgen::{args, diff, runner, shard};

use cli::StackArgs;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Simulated deskmux desktops with honest measurement",
    after_help = exit::HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Drive desktops against running sites (a proxy or a server).
    #[command(after_help = exit::HELP)]
    Run {
        /// Target site `HOST:PORT`, an IP address or a host name (repeatable, in failover
        /// order).
        #[arg(long = "site", required = true)]
        sites: Vec<String>,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Start core-server and proxy from this workspace on loopback, drive desktops through
    /// the proxy, print the summary.
    #[command(after_help = exit::HELP)]
    Demo {
        /// Bypass the proxy: drive core-server directly.
        #[arg(long)]
        direct: bool,
        #[command(flatten)]
        stack: StackArgs,
        #[command(flatten)]
        callback: cli::callback::CallbackArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Run the same load direct and through the proxy; print throughput, server CPU per request
    /// and p99 ratios. Desktops are capped under the server's open-file limit.
    #[command(after_help = exit::HELP)]
    Compare {
        #[command(flatten)]
        stack: StackArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// The same load over TCP and QUIC through one proxy (both on the same port number), then
    /// over TLS through a second proxy whose TCP port speaks TLS; print throughput, proxy CPU
    /// per request and p99 of each, and the ratios to TCP.
    #[command(after_help = exit::HELP)]
    Transports {
        #[command(flatten)]
        stack: StackArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Compare two saved results (`--json` files of `run` or `demo`, one run or `--repeat`):
    /// throughput, latency percentiles, CPU per request and errors of each, with B/A ratios.
    #[command(after_help = exit::HELP)]
    Diff {
        /// The baseline result.
        a: PathBuf,
        /// The result compared with it.
        b: PathBuf,
        /// Also write the comparison as JSON here (`-`: stdout).
        #[arg(long)]
        json: Option<Output>,
    },
    /// Internal: run one shard of a sharded run (started by the parent loadgen, which writes
    /// the configuration and the credentials on its stdin).
    #[command(hide = true)]
    Shard {
        /// `i/N`.
        #[arg(long)]
        shard: String,
    },
}

fn real_main() -> Result<u8> {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap exits 2 on a usage error and 0 for --help/--version, as loadgen does.
            e.exit();
        }
    };
    match cli.cmd {
        Cmd::Shard { shard } => {
            let (i, n) = shard::parse_shard(&shard).map_err(|e| anyhow!(e))?;
            let cfg =
                runner::decode_shard_input(std::io::stdin().lock()).map_err(|e| anyhow!(e))?;
            runner::shard_main(cfg, i, n).map_err(|e| anyhow!(e))?;
            Ok(exit::OK)
        }
        Cmd::Run { sites, load } => {
            cli::check_outputs(&load, load.repeat > 1)?;
            // Resolve once: every repeated run goes to the same addresses.
            let sites = args::resolve_sites(&sites).map_err(ConnectError)?;
            cli::runs(&load, |l| cli::run_sites(l, &sites))
        }
        Cmd::Demo {
            direct,
            stack,
            callback,
            mut load,
        } => {
            cli::check_outputs(&load, load.repeat > 1)?;
            load.desktops.get_or_insert(25_000);
            if load.scenario == Scenario::Callback {
                return cli::runs(&load, |l| cli::callback::run(l, &stack, &callback, direct));
            }
            cli::runs(&load, |l| cli::run_on_stack(l, &stack, direct))
        }
        Cmd::Transports { load, .. } | Cmd::Compare { load, .. }
            if load.scenario == Scenario::Callback =>
        {
            Err(UsageError(
                "the callback scenario runs with `demo` (GMS sites and the leak check) or `run`"
                    .into(),
            )
            .into())
        }
        Cmd::Transports { stack, load } => cli::stacks::transports(&stack, load),
        Cmd::Compare { stack, load } => cli::stacks::compare(&stack, load),
        Cmd::Diff { a, b, json } => {
            if let Some(o) = &json {
                o.check().map_err(|e| UsageError(e.to_string()))?;
            }
            let read = |p: &PathBuf| diff::read(p).map_err(|e| UsageError(e.to_string()));
            let (va, vb) = (read(&a)?, read(&b)?);
            let rows = diff::diff(&va, &vb);
            if rows.is_empty() {
                return Err(UsageError("no figure in common to compare".into()).into());
            }
            let text = diff::table(&a.display().to_string(), &b.display().to_string(), &rows);
            if json == Some(Output::Stdout) {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
            if let Some(o) = json {
                let doc = serde_json::json!({
                    "a": a.display().to_string(),
                    "b": b.display().to_string(),
                    "figures": rows,
                });
                o.write(serde_json::to_string_pretty(&doc)?.as_bytes())?;
            }
            Ok(exit::OK)
        }
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            let code = if e.downcast_ref::<UsageError>().is_some() {
                exit::USAGE
            } else if e.downcast_ref::<ConnectError>().is_some() {
                exit::CONNECT
            } else {
                exit::FAILURE
            };
            ExitCode::from(code)
        }
    }
}
