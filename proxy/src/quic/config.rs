//! The QUIC server configuration: TLS 1.3 with ALPN `deskmux/1`, and transport settings sized
//! for what a desktop needs (one bidirectional stream of small frames), not quinn-proto's
//! bulk-transfer defaults.

use std::sync::Arc;

use quinn_proto::{IdleTimeout, ServerConfig, TransportConfig, VarInt};

use super::QuicSettings;

/// Flow-control credit of the desktop stream (and of the connection). It is a limit, not an
/// allocation (an idle connection's memory does not depend on it: `quic_idle_memory`), but
/// it bounds what a client can make quinn-proto buffer while the worker does not read it
/// (a desktop whose upstream link pushes back): quinn's default is 1.25 MB per stream. The
/// window re-opens as the worker reads, so larger frames (up to the 2 MiB frame limit) still
/// pass, in several round trips.
const STREAM_WINDOW: u32 = 256 * 1024;
/// What one connection may have unacknowledged in flight from the proxy (events to a slow
/// desktop beyond this wait in the desktop's queue, under the slow-consumer rules).
const SEND_WINDOW: u64 = 512 * 1024;

/// Build the quinn-proto server configuration: TLS 1.3 with ALPN `deskmux/1`, one
/// bidirectional stream per connection, the idle timeout.
///
/// # Errors
/// Unreadable certificate or key, or a rustls configuration QUIC cannot use.
pub fn server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    s: &QuicSettings,
) -> Result<ServerConfig, String> {
    let mut sc = ServerConfig::with_crypto(crypto_config(cert, key)?);
    sc.transport_config(Arc::new(transport(s)?));
    sc.max_incoming(s.max_handshakes.max(1));
    Ok(sc)
}

/// The transport settings of a desktop connection.
///
/// # Errors
/// An idle timeout QUIC cannot express.
pub fn transport(s: &QuicSettings) -> Result<TransportConfig, String> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(s.idle).map_err(|e| format!("quic idle timeout: {e}"))?,
        ))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(STREAM_WINDOW))
        .send_window(SEND_WINDOW)
        // No unreliable datagrams: the protocol has none.
        .datagram_receive_buffer_size(None)
        .datagram_send_buffer_size(0);
    Ok(t)
}

/// The TLS part of the QUIC server configuration: the certificate chain and key (TLS 1.3
/// only, ALPN `deskmux/1`). Separate from [`server_config`] so that a SIGHUP can swap the
/// certificate and keep everything else of the endpoint's configuration.
///
/// # Errors
/// Unreadable certificate or key, a key that does not match the certificate, or a rustls
/// configuration QUIC cannot use.
pub fn crypto_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<dyn quinn_proto::crypto::ServerConfig>, String> {
    let certs = crate::tls::load_certs(cert)?;
    let key = crate::tls::load_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("quic tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("quic: certificate/key {}: {e}", cert.display()))?;
    tls.alpn_protocols = vec![crate::tls::ALPN.to_vec()];
    let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("quic tls: {e}"))?;
    Ok(Arc::new(crypto))
}
