//! QUIC desktops (quinn): the client endpoints of one event-loop thread, the client TLS
//! configuration, and connecting one desktop.
//!
//! A QUIC desktop is one QUIC connection (TLS 1.3, ALPN `deskmux/1`) whose single
//! bidirectional stream carries the framed protocol exactly as a TCP socket does — requests,
//! responses and events, in order (see the proxy's `quic.rs`). It costs no file descriptor:
//! each thread owns a few UDP sockets ([`EndpointSet`]) and spreads its desktops over them, so
//! the proxy sees `threads × quic_sockets` source ports and its `SO_REUSEPORT` workers share
//! the load, while the loadgen process stays far under its open-file limit.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::{ClientConfig, Endpoint, EndpointConfig, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::client::ClientError;

/// Kernel buffer asked for each client UDP socket: thousands of desktops share one, and a
/// burst of answers must not overflow it (the kernel caps it at `net.core.rmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// Idle timeout of a client connection. Desktops send heartbeats on their stream well inside
/// the proxy's idle rule (3 heartbeats), so this only ends connections the proxy forgot.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The client configuration: trust the certificates in the PEM file `ca`, offer ALPN
/// `deskmux/1`, open no streams towards us, TLS 1.3 only (QUIC).
///
/// # Errors
/// Unreadable PEM file, no certificate in it, or a certificate the root store refuses.
pub fn client_config(ca: &Path) -> Result<ClientConfig, String> {
    let tls = crate::tls::client_config(ca, &[&rustls::version::TLS13])?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| format!("quic tls: {e}"))?;
    let mut cc = ClientConfig::new(Arc::new(crypto));
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(IDLE_TIMEOUT).map_err(|e| format!("quic idle: {e}"))?,
        ))
        // A desktop's stream carries a few KB at most: small windows keep the client's
        // per-connection buffering (and the proxy's send buffering) bounded.
        .stream_receive_window(VarInt::from_u32(256 * 1024))
        .receive_window(VarInt::from_u32(512 * 1024))
        .send_window(512 * 1024);
    cc.transport_config(Arc::new(t));
    Ok(cc)
}

/// The source address of client socket `k` (of all threads): spread over 127.0.0.2.. when the
/// sites are on loopback, so the proxy sees many source addresses and ports; the wildcard
/// otherwise (the kernel picks the route).
pub fn socket_source(k: usize, loopback: bool) -> SocketAddr {
    if loopback {
        let octet = crate::shard::FIRST_SOURCE_OCTET as usize
            + k % (crate::shard::MAX_SOURCE_OCTET - crate::shard::FIRST_SOURCE_OCTET + 1) as usize;
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet as u8)), 0)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    }
}

/// One thread's client endpoints (one UDP socket each); desktops are spread over them.
#[derive(Debug)]
pub struct EndpointSet {
    /// The endpoints; desktop `gid` uses `eps[gid % len]`.
    eps: Vec<Endpoint>,
    /// Server name checked against the site's certificate.
    server_name: String,
}

impl EndpointSet {
    /// `n` endpoints with `cfg`, the `k`-th bound to `sources(k)`. Must run inside the
    /// thread's tokio runtime (quinn spawns each endpoint's driver task on it).
    ///
    /// # Errors
    /// A socket could not be created or bound.
    pub fn bind(
        n: usize,
        cfg: &ClientConfig,
        server_name: &str,
        sources: impl Fn(usize) -> SocketAddr,
    ) -> io::Result<EndpointSet> {
        let runtime = quinn::default_runtime()
            .ok_or_else(|| io::Error::other("quic: no tokio runtime on this thread"))?;
        let mut eps = Vec::with_capacity(n);
        for k in 0..n.max(1) {
            let src = sources(k);
            let sock = Socket::new(Domain::for_address(src), Type::DGRAM, Some(Protocol::UDP))?;
            let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
            let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
            sock.bind(&src.into())?;
            let mut ep = Endpoint::new(
                EndpointConfig::default(),
                None,
                sock.into(),
                runtime.clone(),
            )?;
            ep.set_default_client_config(cfg.clone());
            eps.push(ep);
        }
        Ok(EndpointSet {
            eps,
            server_name: server_name.to_string(),
        })
    }

    /// The endpoint desktop `gid` uses.
    pub fn for_desktop(&self, gid: u64) -> &Endpoint {
        &self.eps[(gid % self.eps.len() as u64) as usize]
    }

    /// Close every connection (application code 0, "done") and wait up to `grace` for the
    /// closes to be sent, so the proxy ends the desktops at once rather than at its idle
    /// timeout.
    pub async fn close(&self, grace: Duration) {
        for e in &self.eps {
            e.close(VarInt::from_u32(0), b"done");
        }
        let all = futures::future::join_all(self.eps.iter().map(Endpoint::wait_idle));
        let _ = tokio::time::timeout(grace, all).await;
    }

    /// Connect desktop `gid` to `site`: QUIC + TLS handshake, then open its stream. The stream
    /// is announced to the proxy by the first bytes written (the hello).
    ///
    /// # Errors
    /// Handshake failure (the error says why: certificate, ALPN, refused), or timeout.
    pub async fn connect(
        &self,
        gid: u64,
        site: SocketAddr,
        timeout: Duration,
    ) -> Result<QuicConn, ClientError> {
        let ep = self.for_desktop(gid);
        let connecting = ep
            .connect(site, &self.server_name)
            .map_err(|e| ClientError::Quic(e.to_string()))?;
        let fut = async {
            let conn = connecting
                .await
                .map_err(|e| ClientError::Quic(e.to_string()))?;
            let (send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| ClientError::Quic(e.to_string()))?;
            Ok(QuicConn { conn, send, recv })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout)?
    }
}

/// A QUIC desktop's connection and its one stream.
#[derive(Debug)]
pub struct QuicConn {
    /// The connection (kept so that it is closed when the desktop is dropped).
    pub conn: quinn::Connection,
    /// Requests and heartbeat answers go out here.
    pub send: quinn::SendStream,
    /// Responses, events and heartbeats come in here.
    pub recv: quinn::RecvStream,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_over_loopback_addresses() {
        let a = socket_source(0, true);
        let b = socket_source(1, true);
        assert_eq!(a.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(b.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(a.port(), 0);
        // Wraps inside 127.0.0.2..=254.
        assert_eq!(socket_source(253, true).ip(), a.ip());
        assert!(socket_source(5, false).ip().is_unspecified());
    }

    #[test]
    fn client_config_reads_a_certificate_and_refuses_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _key) = crate::tls::self_signed(dir.path(), &["localhost"]).unwrap();
        assert!(client_config(&cert).is_ok());
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = client_config(&empty).unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let e = client_config(&dir.path().join("missing.pem")).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
