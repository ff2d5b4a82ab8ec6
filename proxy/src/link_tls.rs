//! TLS on upstream links: which links use it ([`Config::link_security`]), the explicit opt-in
//! plain TCP needs ([`Config::plaintext_link_refusal`]), and the rustls client configuration
//! ([`client_config`]). The stream itself is [`crate::tls::TlsStream`] with a
//! `rustls::ClientConnection`, driven by the worker like a desktop's.
//!
//! Why the opt-in: a link carries the link secret (in `LINK_HELLO`), every desktop's
//! credential (the hello, forwarded in `SESSION_OPEN`) and all tenant data. In plain TCP, and
//! without the proxy authenticating the server, whoever can read the path, or bind the
//! upstream address while core-server restarts, collects all of it. So a link is TLS, with
//! the server's certificate verified against a configured CA, unless the operator said plain
//! TCP is fine (a loopback or otherwise private path).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::config::{Config, Upstream};
use crate::tls::{ALPN, load_certs, load_key};

/// How one upstream's links are encrypted: the files named, and the name the server's
/// certificate must carry. Paths only: no key material (this is `Debug` and may be logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkTlsSettings {
    /// PEM file of the CA(s) the server's certificate must chain to.
    pub ca: PathBuf,
    /// The name checked against the server's certificate.
    pub server_name: ServerName<'static>,
    /// Client certificate chain and key (mutual TLS), if any.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl Config {
    /// How upstream `u`'s links are secured: `Ok(None)` plain TCP, `Ok(Some)` TLS with these
    /// settings (the upstream's own fields first, then `[link_tls]`'s).
    ///
    /// # Errors
    /// Inconsistent fields: TLS without a CA, half a client certificate, a bad
    /// `server_name`, or TLS settings on a plain link.
    pub fn link_security(&self, u: &Upstream) -> Result<Option<LinkTlsSettings>, String> {
        let name = if u.name.is_empty() {
            u.addr.to_string()
        } else {
            u.name.clone()
        };
        let global = self.link_tls.clone().unwrap_or_default();
        let on = u.tls.unwrap_or(self.link_tls.is_some() || u.ca.is_some());
        if !on {
            let named = u.ca.is_some()
                || u.server_name.is_some()
                || u.client_cert.is_some()
                || u.client_key.is_some();
            if named {
                return Err(format!(
                    "upstream {name}: ca, server_name, client_cert and client_key need a TLS link, and this one is plain TCP (tls = false)"
                ));
            }
            return Ok(None);
        }
        let Some(ca) = u.ca.clone().or(global.ca) else {
            return Err(format!(
                "upstream {name}: a TLS link needs a ca (on the upstream or in [link_tls])"
            ));
        };
        let cert = u.client_cert.clone().or(global.client_cert);
        let key = u.client_key.clone().or(global.client_key);
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "upstream {name}: client_cert and client_key go together"
                ));
            }
        };
        let server_name = match &u.server_name {
            Some(s) => ServerName::try_from(s.clone())
                .map_err(|e| format!("upstream {name}: server_name {s:?}: {e}"))?,
            None => ServerName::IpAddress(u.addr.ip().into()),
        };
        Ok(Some(LinkTlsSettings {
            ca,
            server_name,
            client,
        }))
    }

    /// Why the proxy must not start with this configuration, if some upstream's links would
    /// be plain TCP without `plaintext_links = true` or `tls = false` on that upstream.
    pub fn plaintext_link_refusal(&self) -> Option<String> {
        if self.plaintext_links {
            return None;
        }
        let plain: Vec<String> = self
            .upstream
            .iter()
            .filter(|u| u.tls.is_none() && matches!(self.link_security(u), Ok(None)))
            .map(|u| u.name.clone())
            .collect();
        (!plain.is_empty()).then(|| {
            format!(
                "upstream {} would use plain TCP links (link secret, credentials and tenant data readable on the wire): configure [link_tls] (or tls = true and ca on the upstream), or opt in with plaintext_links = true, tls = false on the upstream, or --plaintext-links",
                plain.join(", ")
            )
        })
    }

    /// Upstreams whose links are plain TCP to an address that is not loopback (a warning at
    /// start: the opt-in was given, but the path leaves the host).
    pub fn plaintext_links_off_host(&self) -> Vec<&Upstream> {
        self.upstream
            .iter()
            .filter(|u| matches!(self.link_security(u), Ok(None)) && !is_loopback(u.addr.ip()))
            .collect()
    }

    /// Build the client configuration of every TLS upstream (the files must load).
    ///
    /// # Errors
    /// The first upstream whose settings or files cannot be used.
    pub fn check_link_tls_files(&self) -> Result<(), String> {
        for u in &self.upstream {
            if let Some(s) = self.link_security(u)? {
                client_config(&s).map_err(|e| format!("upstream {}: {e}", u.name))?;
            }
        }
        Ok(())
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => v.is_loopback(),
        IpAddr::V6(v) => v.is_loopback() || v.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

/// The rustls client configuration of a link: TLS 1.2 and 1.3 (ring), the server verified
/// against `s.ca` (webpki: chain, validity, name), ALPN `deskmux/1` offered, the client
/// certificate presented if configured. Session resumption (rustls' in-memory cache) makes a
/// reconnecting link's handshake cheaper.
///
/// # Errors
/// Unreadable files, no certificate in the CA file, a CA the store rejects, or a client key
/// not matching its certificate.
pub fn client_config(s: &LinkTlsSettings) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(&s.ca).map_err(|e| ca_err(&s.ca, &e))? {
        roots
            .add(c)
            .map_err(|e| ca_err(&s.ca, &format!("not a usable CA: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("link tls: {e}"))?
        .with_root_certificates(roots);
    let mut cfg = match &s.client {
        Some((cert, key)) => b
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| format!("client_cert/client_key {}: {e}", cert.display()))?,
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

fn ca_err(path: &Path, e: &str) -> String {
    format!("ca {}: {e}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> Config {
        let mut c: Config = toml::from_str(toml).unwrap();
        c.normalize();
        c
    }

    const UP: &str = "[[upstream]]\nname = \"a\"\nservice = \"ixn\"\naddr = \"10.0.0.1:7100\"\n";

    #[test]
    fn plain_without_opt_in_is_refused() {
        let c = cfg(UP);
        assert!(c.plaintext_link_refusal().unwrap().contains("upstream a"));
        assert_eq!(c.plaintext_links_off_host().len(), 1);
        let c = cfg(&format!("plaintext_links = true\n{UP}"));
        assert_eq!(c.plaintext_link_refusal(), None);
        let c = cfg(&format!("{UP}tls = false\n"));
        assert_eq!(c.plaintext_link_refusal(), None);
        let c = cfg(&UP.replace("10.0.0.1", "127.0.0.1"));
        assert!(c.plaintext_links_off_host().is_empty());
    }

    #[test]
    fn tls_from_section_or_upstream() {
        let c = cfg(&format!("[link_tls]\nca = \"ca.pem\"\n{UP}"));
        let s = c.link_security(&c.upstream[0]).unwrap().unwrap();
        assert_eq!(s.ca, PathBuf::from("ca.pem"));
        assert_eq!(
            s.server_name,
            ServerName::IpAddress("10.0.0.1".parse::<IpAddr>().unwrap().into())
        );
        assert_eq!(c.plaintext_link_refusal(), None);
        let c = cfg(&format!(
            "{UP}ca = \"own.pem\"\nserver_name = \"core.example\"\n"
        ));
        let s = c.link_security(&c.upstream[0]).unwrap().unwrap();
        assert_eq!(s.ca, PathBuf::from("own.pem"));
        assert_eq!(s.server_name.to_str(), "core.example");
        // tls = false beats [link_tls].
        let c = cfg(&format!("[link_tls]\nca = \"ca.pem\"\n{UP}tls = false\n"));
        assert_eq!(c.link_security(&c.upstream[0]).unwrap(), None);
    }

    #[test]
    fn inconsistent_settings_are_errors() {
        let c = cfg(&format!("{UP}tls = true\n"));
        assert!(c.link_security(&c.upstream[0]).unwrap_err().contains("ca"));
        let c = cfg(&format!("{UP}tls = false\nca = \"x\"\n"));
        assert!(c.link_security(&c.upstream[0]).is_err());
        let c = cfg(&format!("{UP}ca = \"x\"\nclient_cert = \"c\"\n"));
        assert!(
            c.link_security(&c.upstream[0])
                .unwrap_err()
                .contains("together")
        );
        let c = cfg(&format!("{UP}ca = \"x\"\nserver_name = \"bad name!\"\n"));
        assert!(c.link_security(&c.upstream[0]).is_err());
    }
}
