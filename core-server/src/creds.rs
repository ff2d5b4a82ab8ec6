//! `core-server creds`: add, import, list, disable, enable and rotate agent credentials.
//!
//! Secrets come from stdin, never from the command line (where `ps` and shell history would
//! show them). Generated API keys are printed once, on stdout, and only their hash is kept.

use std::io::{BufRead, Write};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use deskmux_core_server::auth::creds::{CredStore, Kind, Listed};
use deskmux_core_server::auth::secret::{self, Argon2Cost, Secret};
use deskmux_core_server::storage::config::Location;

/// Shortest password accepted (NIST SP 800-63B's minimum).
const MIN_PASSWORD: usize = 8;

#[derive(Debug, Subcommand)]
pub enum Op {
    /// Add an agent. Its password is read from stdin (one line); with --api-key a key is
    /// generated and printed instead.
    Add(One),
    /// Replace an existing agent's password (stdin) or API key (--api-key). Reconnect tokens
    /// handed out before stop working.
    Rotate(One),
    /// Add or replace many agents: stdin lines `TENANT<TAB>AGENT<TAB>PASSWORD`, one
    /// transaction.
    Import(Cost),
    /// List credentials (never their hashes).
    List {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<u32>,
    },
    /// Refuse every login of an agent, and its reconnect tokens.
    Disable(Who),
    /// Allow an agent again.
    Enable(Who),
}

#[derive(Debug, Args)]
pub struct Who {
    /// Tenant id.
    #[arg(long)]
    tenant: u32,
    /// Agent id.
    #[arg(long)]
    agent: String,
}

#[derive(Debug, Args)]
pub struct Cost {
    /// argon2id memory, KiB (default 19456: OWASP's recommendation).
    #[arg(long, default_value_t = Argon2Cost::default().m_kib)]
    argon2_m_kib: u32,
    /// argon2id passes.
    #[arg(long, default_value_t = Argon2Cost::default().t)]
    argon2_t: u32,
    /// argon2id lanes.
    #[arg(long, default_value_t = Argon2Cost::default().p)]
    argon2_p: u32,
}

impl Cost {
    fn cost(&self) -> Argon2Cost {
        Argon2Cost {
            m_kib: self.argon2_m_kib,
            t: self.argon2_t,
            p: self.argon2_p,
        }
    }
}

#[derive(Debug, Args)]
pub struct One {
    #[command(flatten)]
    who: Who,
    /// A service account: generate an API key (printed once) instead of reading a password.
    #[arg(long)]
    api_key: bool,
    #[command(flatten)]
    cost: Cost,
}

fn read_password() -> anyhow::Result<Secret> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let pw = line.trim_end_matches(['\n', '\r']);
    if pw.len() < MIN_PASSWORD {
        bail!("the password (stdin) must be at least {MIN_PASSWORD} bytes");
    }
    Ok(Secret::new(pw))
}

/// The hash to store for `one`, and the API key to print if one was generated.
fn new_hash(one: &One) -> anyhow::Result<(Kind, String, Option<Secret>)> {
    if one.api_key {
        let k = secret::new_api_key()?;
        Ok((Kind::ApiKey, secret::hash_api_key(&k)?, Some(k)))
    } else {
        let pw = read_password()?;
        Ok((
            Kind::Password,
            secret::hash_password(&pw, one.cost.cost())?,
            None,
        ))
    }
}

fn print_key(k: Option<Secret>) -> anyhow::Result<()> {
    if let Some(k) = k {
        let mut out = std::io::stdout().lock();
        out.write_all(k.expose())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn print_list(rows: &[Listed]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "tenant\tagent\tkind\tgeneration\tstate\tupdated_us")?;
    for r in rows {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}",
            r.tenant,
            r.agent,
            r.kind.name(),
            r.generation,
            if r.disabled { "disabled" } else { "enabled" },
            r.updated_us
        )?;
    }
    Ok(())
}

/// Parse one import line: `TENANT<TAB>AGENT<TAB>PASSWORD`.
fn import_line(n: usize, line: &str) -> anyhow::Result<(u32, String, Secret)> {
    let mut it = line.splitn(3, '\t');
    let (Some(t), Some(a), Some(p)) = (it.next(), it.next(), it.next()) else {
        bail!("line {n}: expected TENANT<TAB>AGENT<TAB>PASSWORD");
    };
    let t: u32 = t
        .trim()
        .parse()
        .with_context(|| format!("line {n}: bad tenant"))?;
    if p.len() < MIN_PASSWORD {
        bail!("line {n}: the password must be at least {MIN_PASSWORD} bytes");
    }
    Ok((t, a.to_string(), Secret::new(p)))
}

/// Run one `creds` operation on the database at `at` (the configuration's).
pub fn run(at: &Location, op: &Op) -> anyhow::Result<()> {
    let mut store = CredStore::open_at(at)?;
    match op {
        Op::Add(one) => {
            if store.get(one.who.tenant, &one.who.agent)?.is_some() {
                bail!(
                    "tenant {} agent {:?} exists; use `creds rotate`",
                    one.who.tenant,
                    one.who.agent
                );
            }
            let (kind, hash, key) = new_hash(one)?;
            store.put(one.who.tenant, &one.who.agent, kind, &hash)?;
            print_key(key)?;
        }
        Op::Rotate(one) => {
            if store.get(one.who.tenant, &one.who.agent)?.is_none() {
                bail!(
                    "no credential for tenant {} agent {:?}; use `creds add`",
                    one.who.tenant,
                    one.who.agent
                );
            }
            let (kind, hash, key) = new_hash(one)?;
            store.put(one.who.tenant, &one.who.agent, kind, &hash)?;
            print_key(key)?;
        }
        Op::Import(cost) => {
            let cost = cost.cost();
            let mut rows = Vec::new();
            for (i, line) in std::io::stdin().lock().lines().enumerate() {
                let line = line.context("reading stdin")?;
                if line.is_empty() {
                    continue;
                }
                let (t, a, pw) = import_line(i + 1, &line)?;
                rows.push((t, a, secret::hash_password(&pw, cost)?));
            }
            let n = rows.len();
            store.in_transaction(|s| {
                for (t, a, h) in &rows {
                    s.put(*t, a, Kind::Password, h)?;
                }
                Ok(())
            })?;
            eprintln!("imported {n} credentials");
        }
        Op::List { tenant } => print_list(&store.list(*tenant)?)?,
        Op::Disable(w) => store.set_disabled(w.tenant, &w.agent, true)?,
        Op::Enable(w) => store.set_disabled(w.tenant, &w.agent, false)?,
    }
    Ok(())
}
