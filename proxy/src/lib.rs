//! The deskmux desktop proxy: tens of thousands of desktop connections multiplexed over a few
//! upstream links per server.
//!
//! # Design
//!
//! - **Processes.** `proxy` is a supervisor ([`supervisor`]) that re-executes itself as N
//!   workers (`--worker-index i`). Every worker binds the desktop port with `SO_REUSEPORT` and
//!   owns its own links, so one command passes the per-process fd cap and uses every core;
//!   a dead worker is restarted with backoff.
//! - **A sans-IO core, a thin driver** (the shape of quinn-proto and quinn). [`core`] holds
//!   every rule of a worker: desktop sessions, link state machines, routing through
//!   [`router`], the link id slabs, shared subscriptions, outbound queues and byte budgets. It
//!   owns no socket and reads no clock: bytes and time are handed in, writes, timers and I/O
//!   requests are polled out. [`worker`] is the mio event loop around it: sockets, readiness,
//!   TLS ([`tls`]) and QUIC ([`quic`]) plumbing. A seeded simulation (`proxy/tests/sim.rs`)
//!   drives the core through millions of steps with faults and checks its invariants at
//!   every one.
//! - **One event loop per worker**, on mio: desktops and links are slab entries of one
//!   thread. This was chosen for memory: an idle desktop is a compact
//!   [`core::desktop::Desktop`] plus its socket, with no buffer held while idle. Measured:
//!   ≈200–264 B of RSS per idle desktop (8,000 in one worker; 100,000 over 7 workers of
//!   one command), against ≈1 KiB for a bare tokio task per connection (`proxy/README.md`).
//! - **Two drivers, one core.** [`worker`] on mio (epoll readiness) is the default and
//!   serves every transport. With the `uring` feature and `[worker] driver = "uring"`, the
//!   same worker runs its loop on io_uring instead (`src/uring/`): multishot accept and
//!   receive into a worker-wide ring of provided buffers (so an idle desktop still holds no
//!   buffer), vectored sends of shared frame handles, and one `io_uring_enter` per round for
//!   every submission and wait. It drives plain TCP desktops and links only; the
//!   configuration check keeps TLS and QUIC on mio. It is the crate's only unsafe code
//!   (`uring/ring.rs`, each block with why the memory outlives the operation). mio stays the
//!   default: uring saved CPU at 1 request in flight and cost more at 16, in the same run
//!   (`benches/RESULTS.md`, issue 17).
//! - **Hot path.** Frames are framed out of a worker-wide arena (`split_to`, no copy),
//!   restamped in place (`set_correlation`, `set_session`) and queued as `Bytes`; each socket
//!   with queued frames gets one vectored write per round. Broadcast events are fanned out as
//!   one shared `Bytes`.
//! - **Isolation.** One desktop's fault stays with that desktop: a desktop at its in-flight
//!   cap or with a backlog is simply not read (backpressure), a frame must complete within
//!   a deadline, subscriptions and answers carry generations, and what comes back is checked
//!   against the link, session and tenant it must belong to. Links are shared by tenants
//!   fairly (deficit round robin) and an oversized answer is skipped by its length rather
//!   than costing the link.
//! - **Transports.** Desktops arrive over TCP, TLS over TCP, or QUIC (one connection with one
//!   bidirectional stream, no file descriptor). All kinds are the same to the core
//!   ([`transport::DesktopStream`]).
//! - **Operations.** TOML [`config`], `--check-config`, admin HTTP ([`admin`], axum) with
//!   Prometheus [`metrics`] and [`status`], SIGTERM drain (GO_AWAY, grace, exit), SIGHUP
//!   reload.
// `deny`, not `forbid`: the io_uring driver (`uring/ring.rs`, feature `uring`) allows it
// in that one file, where operations outlive the calls that queue them.
#![deny(unsafe_code)]
#![warn(missing_docs)]

/// `impl mio::event::Source for $ty` by handing every call to its field `$field`: the
/// listeners, TLS streams and UDP endpoint all register the one socket they wrap.
macro_rules! delegate_source {
    ($ty:ty, $field:ident) => {
        impl mio::event::Source for $ty {
            fn register(
                &mut self,
                registry: &mio::Registry,
                token: mio::Token,
                interests: mio::Interest,
            ) -> std::io::Result<()> {
                mio::event::Source::register(&mut self.$field, registry, token, interests)
            }

            fn reregister(
                &mut self,
                registry: &mio::Registry,
                token: mio::Token,
                interests: mio::Interest,
            ) -> std::io::Result<()> {
                mio::event::Source::reregister(&mut self.$field, registry, token, interests)
            }

            fn deregister(&mut self, registry: &mio::Registry) -> std::io::Result<()> {
                mio::event::Source::deregister(&mut self.$field, registry)
            }
        }
    };
}

pub mod admin;
pub mod config;
pub mod core;
pub mod error;
pub mod link_tls;
pub mod metrics;
pub mod partition;
pub mod quic;
pub mod router;
pub mod status;
pub mod supervisor;
pub mod tls;
pub mod transport;
pub mod worker;
