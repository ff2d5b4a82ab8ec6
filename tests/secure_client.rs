//! Encrypted desktops for tests: rcgen certificates, a tokio-rustls TLS connector, and
//! [`FrameClient`], which is [`crate::TestClient`] over a TLS or QUIC stream.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::client::WAIT;

/// The deskmux ALPN id.
pub use deskmux_codec::ALPN;

/// A self-signed certificate for `localhost` / `127.0.0.1`, written as PEM files.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// Certificate PEM file.
    pub cert: PathBuf,
    /// Private key PEM file.
    pub key: PathBuf,
    /// The certificate (DER), for a client's root store.
    pub der: CertificateDer<'static>,
}

impl TestCert {
    /// A proxy config section (`tls` or `quic`) naming these files.
    pub fn toml(&self, section: &str) -> String {
        format!(
            "[{section}]\ncert = \"{}\"\nkey = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// Generate a self-signed certificate (rcgen) and write `NAME.crt` / `NAME.key` into `dir`.
///
/// # Errors
/// Generation or file write failure.
pub fn self_signed(dir: &Path, name: &str) -> Result<TestCert> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.signing_key.serialize_pem())?;
    Ok(TestCert {
        cert,
        key,
        der: ck.cert.der().clone(),
    })
}

/// A rustls client configuration trusting `roots` and offering `alpn`.
///
/// # Errors
/// A root the store rejects.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// Connect over TCP and complete a TLS handshake (server name `localhost`).
///
/// # Errors
/// Connect failure, or the handshake failed (the error says why: unknown issuer, alert, ...).
pub async fn tls_connect(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .context("connect timeout")??;
    tcp.set_nodelay(true)?;
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = ServerName::try_from("localhost")?;
    let s = tokio::time::timeout(WAIT, conn.connect(name, tcp))
        .await
        .context("tls handshake timeout")??;
    Ok(s)
}

/// A desktop over an encrypted stream: the same client as plain TCP.
pub type FrameClient = crate::TestClient;

/// A QUIC client endpoint (quinn, tokio) trusting `roots`, offering `alpn`.
///
/// # Errors
/// Socket or rustls configuration failure.
pub fn quic_endpoint(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> Result<quinn::Endpoint> {
    quic_endpoint_at("127.0.0.1:0".parse()?, roots, alpn)
}

/// As [`quic_endpoint`], bound to `bind` (another 127.0.0.0/8 source address).
///
/// # Errors
/// Socket or rustls configuration failure.
pub fn quic_endpoint_at(
    bind: SocketAddr,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<quinn::Endpoint> {
    let crypto = client_config(roots, alpn)?;
    let qcc = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)?;
    let mut ep = quinn::Endpoint::client(bind)?;
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(qcc)));
    Ok(ep)
}

/// `n` valid, distinct client Initials (UDP payloads, 1200 bytes each) for a server holding
/// `cert`, made by quinn-proto: a peer that sends them and never goes on opens `n` handshakes.
///
/// # Panics
/// If quinn-proto makes something other than a QUIC v1 Initial.
pub fn client_initials(cert: &TestCert, n: usize) -> Vec<Vec<u8>> {
    let crypto = client_config(std::slice::from_ref(&cert.der), &[ALPN]).expect("rustls");
    let qcc = quinn_proto::crypto::rustls::QuicClientConfig::try_from(crypto).expect("quic tls");
    let cc = quinn_proto::ClientConfig::new(Arc::new(qcc));
    let mut ep = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    // The server address is not part of the packet.
    let server: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let now = std::time::Instant::now();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (_, mut conn) = ep
            .connect(now, cc.clone(), server, "localhost")
            .expect("connect");
        let mut buf = Vec::new();
        let t = conn.poll_transmit(now, 1, &mut buf).expect("an Initial");
        buf.truncate(t.size);
        // Long header, type Initial, QUIC v1; padded to the 1200-byte minimum.
        assert_eq!(buf[0] & 0xf0, 0xc0, "not an Initial");
        assert_eq!(&buf[1..5], &1u32.to_be_bytes());
        assert!(buf.len() >= 1200, "{}", buf.len());
        out.push(buf);
    }
    out
}

/// Connect a QUIC desktop: handshake, open the desktop's one bidirectional stream.
///
/// # Errors
/// Handshake failure (the error says why), or timeout.
pub async fn quic_connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<(quinn::Connection, FrameClient)> {
    let conn = tokio::time::timeout(WAIT, ep.connect(addr, "localhost")?)
        .await
        .context("quic handshake timeout")??;
    let (send, recv) = conn.open_bi().await?;
    Ok((conn, FrameClient::new(tokio::io::join(recv, send))))
}
