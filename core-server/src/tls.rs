//! TLS on the listen port (`[tls]`): the rustls server configuration, and the handshake of one
//! accepted connection (bounded by `handshake_timeout_ms`, like the hello that follows it).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::Tls;

/// What [`crate::conn::serve_tls`] needs: the acceptor, and whether links must present a
/// client certificate (`client_ca` set).
#[derive(Clone)]
pub struct Acceptor {
    /// The rustls server side.
    pub inner: tokio_rustls::TlsAcceptor,
    /// `client_ca` is set: `LINK_HELLO` needs a verified client certificate.
    pub links_need_cert: bool,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("links_need_cert", &self.links_need_cert)
            .finish_non_exhaustive()
    }
}

/// Build the acceptor of `[tls]`: TLS 1.2 and 1.3 (ring), ALPN `deskmux/1`, the certificate
/// and key, and with `client_ca` a verifier that checks any client certificate presented
/// against it (presenting one stays optional at the TLS level: direct desktops have none;
/// links are held to it at `LINK_HELLO`).
///
/// # Errors
/// Unreadable files, no certificate or key, a key not matching the certificate, a CA file
/// without a usable CA.
pub fn acceptor(t: &Tls) -> Result<Acceptor, String> {
    let certs = load_certs(&t.cert, "tls.cert")?;
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .map_err(|e| format!("tls.key {}: {e}", t.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let b = match &t.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca, "tls.client_ca")? {
                roots
                    .add(c)
                    .map_err(|e| format!("tls.client_ca {}: {e}", ca.display()))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("tls.client_ca {}: {e}", ca.display()))?;
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    let mut cfg = b
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: certificate/key {}: {e}", t.cert.display()))?;
    cfg.alpn_protocols = vec![deskmux_codec::ALPN.to_vec()];
    Ok(Acceptor {
        inner: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
        links_need_cert: t.client_ca.is_some(),
    })
}

fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no CERTIFICATE in it", path.display()));
    }
    Ok(certs)
}
