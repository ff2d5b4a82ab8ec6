//! deskmux loadgen: simulated desktops speaking PROTOCOL.md, with honest measurement.
//!
//! - [`client`]: the reusable desktop client (site list, retry with backoff and jitter, hello,
//!   login, allocation-free frame reader), over TCP, TLS ([`tls`]: tokio-rustls) or QUIC
//!   ([`quic`]: quinn endpoints, several UDP sockets per thread);
//! - [`scenario`]: what desktops do (`ping`, `agent`, `supervisor`, `storm`, `callback`);
//! - [`recorder`]: coordinated-omission-corrected HdrHistograms per worker, merged;
//! - [`counts`]: requests written by message type, to reconcile with the proxy's counters;
//! - [`gms`]: the `callback` scenario's bookings (matched, wrong, expired, leaked);
//! - [`timer`]: precise per-thread timers (timerfd), so loadgen's own clock stays out of the
//!   figures;
//! - [`verify`]: correlation and content checks, lost/wrong/duplicate, event sequence gaps;
//! - [`shard`]: worker processes by open-file limit, source addresses over 127.0.0.x;
//! - [`engine`]: per-core event loops; [`stats`]: their connection and event counts;
//!   [`runner`]: sharding over processes and progress;
//! - [`shortfall`]: whether a run sent the load it was asked for (unsent requests, rate);
//! - [`report`]: the summary, JSON, HDR interval log; [`table`]: the terminal table;
//!   [`html`]: the HTML report; [`outputs`]: where they go, checked before the run;
//! - [`exit`]: the exit codes; [`spread`]: `--repeat` figures; [`diff`]: two saved results;
//! - [`demo`]: core-server + proxy on loopback.
#![forbid(unsafe_code)]

pub mod args;
pub mod client;
pub mod config;
pub mod counts;
pub mod demo;
pub mod diff;
pub mod engine;
pub mod exit;
pub mod gms;
pub mod html;
pub mod outputs;
pub mod quic;
pub mod recorder;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod shard;
pub mod shortfall;
pub mod spread;
pub mod stats;
pub mod table;
pub mod timer;
pub mod tls;
pub mod verify;
