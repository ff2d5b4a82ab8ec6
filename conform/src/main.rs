//! `deskmux-conform`: the conformance suite of PROTOCOL.md, for anyone building a desktop
//! client's peer — a server or a proxy — in any language. It connects to a live site as a
//! desktop (and, with the link secret, as a proxy's link), runs every rule it knows, prints
//! each rule's section, PASS/FAIL/SKIP and what was sent and received, and exits non-zero if
//! any rule failed.
//!
//! The site must serve tenant `--tenant`'s agent `--agent` (its password in the environment
//! variable `DESKMUX_CONFORM_PASSWORD`: secrets never go on a command line, where `ps` shows
//! them) and route
//! both services (Interaction Server and UCS). A few rules write data: a contact, an
//! interaction in queue `conform-dup` and one in `conform-invite` (completed again).
#![forbid(unsafe_code)]

mod report;
mod rules;
mod wire;

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Run the PROTOCOL.md conformance suite against a live proxy or server.
#[derive(Debug, Parser)]
#[command(name = "deskmux-conform")]
struct Args {
    /// The site: host:port of a proxy's desktop port or a server's port.
    #[arg(long)]
    site: String,
    /// Speak TLS, trusting this CA (PEM).
    #[arg(long, value_name = "CA_PEM")]
    tls: Option<PathBuf>,
    /// The name to verify the site's certificate against (default: the host of --site).
    #[arg(long)]
    server_name: Option<String>,
    /// The tenant to log in to.
    #[arg(long, default_value_t = 1)]
    tenant: u32,
    /// An agent of that tenant.
    #[arg(long, default_value = "agent-0")]
    agent: String,

    /// The bound on each wait for the site, in ms.
    #[arg(long, default_value_t = 5000)]
    wait_ms: u64,
    /// Run only the rules whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// List the rules and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let all = rules::all();
    if a.list {
        for r in &all {
            println!("{:<7} {:<34} {}", r.section, r.name, r.text);
        }
        return Ok(());
    }
    let addr = a
        .site
        .to_socket_addrs()
        .with_context(|| format!("resolve {}", a.site))?
        .next()
        .with_context(|| format!("no address for {}", a.site))?;
    let tls = match &a.tls {
        None => None,
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("read {}", ca.display()))?
            {
                roots.add(c?)?;
            }
            let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            cfg.alpn_protocols = vec![deskmux_codec::ALPN.to_vec()];
            let host = a.server_name.clone().unwrap_or_else(|| {
                a.site
                    .rsplit_once(':')
                    .map_or(a.site.clone(), |(h, _)| h.to_string())
            });
            let name = ServerName::try_from(host).context("server name")?;
            Some((Arc::new(cfg), name))
        }
    };
    // Secrets from the environment only (see the module docs).
    let password = std::env::var("DESKMUX_CONFORM_PASSWORD")
        .context("set DESKMUX_CONFORM_PASSWORD to the agent's password")?;
    let link_secret = std::env::var("DESKMUX_CONFORM_LINK_SECRET")
        .ok()
        .filter(|s| !s.is_empty());
    let site = wire::Site {
        addr,
        tls,
        tenant: a.tenant,
        agent: a.agent,
        password,
        link_secret,
        wait: Duration::from_millis(a.wait_ms),
    };
    println!("deskmux-conform: {} ({} rules)", a.site, all.len());
    let (_, failed, _) = report::run(&site, &all, a.only.as_deref());
    if failed > 0 {
        bail!("{failed} rule(s) failed");
    }
    Ok(())
}
