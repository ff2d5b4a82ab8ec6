//! TLS desktops (tokio-rustls over TCP), the trust store shared with QUIC (the certificates
//! of the PEM file given with `--ca`), and the self-signed certificate `demo` makes.
//!
//! A TLS desktop is a TCP desktop whose byte stream is wrapped in TLS (1.2 or 1.3, ALPN
//! `deskmux/1`); it costs one file descriptor like plain TCP, so TLS runs shard over processes
//! by the open-file limit as TCP runs do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::client::ClientError;

/// The root store: every certificate in the PEM file `ca`.
///
/// # Errors
/// Unreadable file, no certificate in it, or a certificate the store refuses.
pub fn roots(ca: &Path) -> Result<rustls::RootCertStore, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("--ca {}: {e}", ca.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    if certs.is_empty() {
        return Err(format!("--ca {}: no certificate in the file", ca.display()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    }
    Ok(roots)
}

/// A rustls client configuration trusting the certificates in `ca`, offering ALPN
/// `deskmux/1`, speaking `versions` (TLS over TCP: 1.2 and 1.3; QUIC: 1.3 only).
///
/// # Errors
/// Bad `--ca` file, or versions the crypto provider cannot do.
pub fn client_config(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![deskmux_codec::ALPN.to_vec()];
    Ok(cfg)
}

/// What a thread needs to open TLS desktops.
#[derive(Clone)]
pub struct TlsClient {
    /// The connector (client configuration: trust `--ca`, ALPN `deskmux/1`).
    connector: tokio_rustls::TlsConnector,
    /// Server name checked against the site's certificate (and sent as SNI).
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client trusting the certificates in `ca`, expecting `server_name`.
    ///
    /// # Errors
    /// Bad `--ca` file or server name.
    pub fn new(ca: &Path, server_name: &str) -> Result<TlsClient, String> {
        let cfg = client_config(ca, rustls::DEFAULT_VERSIONS)?;
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("--server-name {server_name}: {e}"))?;
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            name,
        })
    }

    /// Connect over TCP (from `src` if given) and complete the TLS handshake.
    ///
    /// # Errors
    /// Connect failure, handshake failure (the error says why), or timeout.
    pub async fn connect(
        &self,
        site: SocketAddr,
        src: Option<SocketAddr>,
        timeout: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ClientError> {
        let tcp = crate::client::connect_tcp(site, src, timeout).await?;
        tokio::time::timeout(timeout, self.connector.connect(self.name.clone(), tcp))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| ClientError::Tls(e.to_string()))
    }
}

/// A self-signed certificate for `names`, written as `dir/proxy.crt` and `dir/proxy.key`
/// (PEM); returns their paths. Used by `demo` to give the proxy a TLS/QUIC certificate
/// and loadgen the same file as `--ca`.
///
/// # Errors
/// Generation or write failure.
pub fn self_signed(dir: &Path, names: &[&str]) -> Result<(PathBuf, PathBuf), String> {
    let ck = rcgen::generate_simple_self_signed(
        names.iter().map(|s| (*s).to_string()).collect::<Vec<_>>(),
    )
    .map_err(|e| format!("certificate: {e}"))?;
    let cert = dir.join("proxy.crt");
    let key = dir.join("proxy.key");
    std::fs::write(&cert, ck.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
    std::fs::write(&key, ck.signing_key.serialize_pem())
        .map_err(|e| format!("{}: {e}", key.display()))?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusts_a_certificate_file_and_refuses_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _key) = self_signed(dir.path(), &["localhost"]).unwrap();
        assert!(TlsClient::new(&cert, "localhost").is_ok());
        let e = TlsClient::new(&cert, "not a name!").unwrap_err();
        assert!(e.contains("--server-name"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(roots(&empty).unwrap_err().contains("no certificate"));
        assert!(
            roots(&dir.path().join("missing.pem"))
                .unwrap_err()
                .contains("missing.pem")
        );
    }
}
