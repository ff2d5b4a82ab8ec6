//! The deskmux desktop proxy: tens of thousands of desktop connections multiplexed over a few
//! upstream links per server.
//!
//! # Design
//!
//! - **Processes.** `proxy` is a supervisor ([`supervisor`]) that re-executes itself as N
//!   workers (`--worker-index i`). Every worker binds the desktop port with `SO_REUSEPORT` and
//!   owns its own links, so one command passes the per-process fd cap and uses every core;
//!   a dead worker is restarted with backoff.
//! - **One event loop per worker** ([`worker`]), on mio: desktops and links are slab entries
//!   of one thread. This was chosen for memory: an idle desktop is a compact [`session::Desktop`]
//!   plus its socket, with no buffer held while idle. Measured: ≈200 B of RSS per idle desktop
//!   (8,000 in one worker; 54,000 over 4 workers of one command), against ≈1 KiB for a bare
//!   tokio task per connection (details and commands in `proxy/README.md`).
//! - **Sans-IO cores**, unit-tested without sockets: [`session`] (hello order, tenant check,
//!   in-flight cap, bounded outbound queue), [`link`] (the id slab, generations, LINK_LOST vs
//!   LINK_LOST_UNSENT), [`router`] (instance states running / unavailable / backup / stopped /
//!   disabled / drained; round robin or least outstanding per cluster; sticky aliases; warm
//!   standby pairs; tenant → UCS routing; partitions; capabilities), [`partition`] (prefix
//!   tables with overlap/gap validation), [`fanout`] (one upstream subscription per
//!   (link, tenant, topic)).
//! - **Hot path.** Frames are decoded with `FrameDecoder` out of a worker-wide arena
//!   (`split_to`, no copy), restamped in place (`set_correlation`, `set_session`) and queued as
//!   `Bytes`; each socket with queued frames gets one vectored write per wake-up. Broadcast
//!   events are fanned out as one shared `Bytes`.
//! - **Ids.** A desktop's session id is `generation << 32 | slot`; it is also its upstream
//!   session id on every link. Link correlation ids are `slot generation << 32 | slot` in the
//!   link's id slab. Generations make stale answers (after timeouts, disconnects, link
//!   reconnects) miss, so ids never cross between desktops.
//! - **Upstream sessions.** A desktop hello becomes a `SESSION_OPEN` (carrying the hello body)
//!   on one link of each instance serving the services asked for; the proxy answers with its
//!   own server hello once all are accepted, or passes the refusal back and closes. On
//!   disconnect it sends `SESSION_CLOSE`. When a link dies, in-flight requests get `LINK_LOST`
//!   / `LINK_LOST_UNSENT`, and desktops whose sessions lived on it get a control `ERROR`
//!   (`LINK_LOST`); their later requests to that service get `LINK_LOST_UNSENT` until the
//!   client reconnects (no transparent re-open: server-side state is gone).
//!   Hellos are verified by the server every time (no cache of answers): the session must be
//!   opened upstream anyway.
//! - **Transports.** Desktops arrive over TCP, TLS over TCP ([`tls`]: rustls driven sans-IO in
//!   the loop, optional `[tls]`), or QUIC ([`quic`]: quinn-proto driven sans-IO in the loop, one
//!   `SO_REUSEPORT` UDP socket per worker on the same port number, optional `[quic]`). A QUIC
//!   desktop is one connection with one bidirectional stream carrying the framed protocol
//!   (responses and events on that stream, in order); it holds no file descriptor, so QUIC
//!   desktops are not bounded by the fd limit. All kinds share the same session logic and
//!   upstream links ([`transport::DesktopStream`]).
//! - **Operations.** TOML [`config`], `--check-config`, admin HTTP ([`admin`], axum) with
//!   Prometheus [`metrics`], SIGTERM drain (GO_AWAY, grace, exit), SIGHUP reload.
#![forbid(unsafe_code)]
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
pub mod error;
pub mod fanout;
pub mod link;
pub mod metrics;
pub mod partition;
pub mod quic;
pub mod router;
pub mod session;
pub mod supervisor;
pub mod tls;
pub mod transport;
pub mod worker;
