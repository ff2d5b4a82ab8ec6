//! `core-server`: the upstream servers — a multi-tenant Interaction Server and UCS — speaking
//! PROTOCOL.md over TCP to desktops (direct connections) and proxies (links), over an embedded
//! SQLite database.
//!
//! Modules, one job each:
//! - [`config`]: the TOML configuration and its defaults;
//! - [`admin`]: the operator's line protocol (service state, shutdown);
//! - [`http`]: the operator's HTTP port (`/metrics`, `/health`, `/status`, token-guarded controls);
//! - [`auth`]: who gets in: agent credentials, reconnect tokens, lockout;
//! - [`server`]: start-up (primary / warm standby), accept loop, signals;
//! - [`conn`]: one connection (direct or link): handshakes, session routing, echo, writer;
//! - [`ixn`]: the Interaction Server engine (agents, queues, invites, subscriptions);
//! - [`ucs`]: the UCS requests (contacts, history), paged to `max_frame`;
//! - [`limits`]: caps on lists and sizes from the wire, and the property-list merge;
//! - [`subs`]: the engine's subscriptions and their indexes;
//! - [`queue`]: bounded admission to the engine and the DB worker (`OVERLOADED` when full);
//! - [`db`]: the DB worker thread and its group commit;
//! - [`storage`]: the storage trait and its SQLite backend;
//! - [`lock`]: the standby lock (the only `unsafe`, one `flock` call);
//! - [`wire`]: outbound queues and frame-building helpers;
//! - [`lograte`]: rate limits on the log lines peers can provoke.
#![deny(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod conn;
pub mod db;
pub mod http;
pub mod ixn;
pub mod limits;
pub mod lock;
pub mod lograte;
pub mod queue;
pub mod server;
pub mod storage;
pub mod subs;
pub mod tls;
pub mod ucs;
pub mod wire;
