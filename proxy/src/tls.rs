//! TLS over TCP, rustls driven sans-IO inside the worker's mio loop: desktops (the server
//! side) and upstream links (the client side, [`crate::link_tls`]).
//!
//! A [`TlsStream`] wraps a non-blocking `mio::net::TcpStream` and a
//! [`rustls::ServerConnection`] (a desktop) or [`rustls::ClientConnection`] (a link). It is a
//! plain `Read + Write + Source`, so the worker treats it like any other socket:
//!
//! - `read` returns decrypted bytes. It pulls TLS records from the socket until plaintext is
//!   available or the socket would block, processes them, and writes any handshake output
//!   (server flight, alerts) at once. A handshake failure (bad certificate, wrong ALPN,
//!   garbage) returns an `InvalidData` error after trying to send rustls' alert, and the worker
//!   closes only that desktop (or fails that link); it is logged once with the peer and the
//!   rustls reason.
//! - `write` / `write_vectored` first flush TLS records still waiting from an earlier write;
//!   while any remain it answers `WouldBlock` (so the rustls buffer never grows past one
//!   vectored write of frames). Otherwise it encrypts what it is given, tries to send the
//!   records, and reports the plaintext as written: records the socket did not take stay
//!   pending, and the socket's next writable edge makes the worker call `flush`, which sends
//!   them. The worker also waits for `flush` before dropping a closing desktop.
//!
//! A link writes its `LINK_HELLO` (which carries the link secret) as soon as TCP connects:
//! rustls holds plaintext written before the handshake completes and encrypts it only once the
//! server's certificate is verified, so the secret never reaches an unverified server.
//!
//! The whole desktop handshake (TLS + hello) is bounded by `limits.handshake_ms`, counted from
//! accept, exactly as for plain TCP. ALPN: the server offers `deskmux/1`; a client offering
//! only other protocols is refused with a `no_application_protocol` alert; a client offering no
//! ALPN at all is accepted (plain TLS tooling such as `openssl s_client` sends none).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::ops::DerefMut;
use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConnection, ConnectionCommon, ServerConnection, SideData};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::debug;

/// The ALPN protocol id of the deskmux protocol, version 1 (TLS over TCP and QUIC).
pub use deskmux_codec::ALPN;

/// Load a certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1 or
/// SEC1) and build the server configuration (TLS 1.2 and 1.3, ring, ALPN `deskmux/1`).
///
/// # Errors
/// Unreadable files, no certificate, no key, or a key that does not match the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: certificate/key {}: {e}", cert.display()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// Read a PEM certificate chain.
///
/// # Errors
/// Unreadable file or no certificate in it.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("tls.cert {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.cert {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("tls.cert {}: no CERTIFICATE in it", path.display()));
    }
    Ok(certs)
}

/// Read a PEM private key.
///
/// # Errors
/// Unreadable file or no key in it.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("tls.key {}: {e}", path.display()))
}

/// One TLS connection: a desktop's (`ServerConnection`, the default) or a link's
/// (`ClientConnection`).
#[derive(Debug)]
pub struct TlsStream<C = ServerConnection> {
    sock: mio::net::TcpStream,
    tls: C,
    peer: SocketAddr,
    /// The peer closed its side (TCP EOF).
    eof: bool,
}

impl TlsStream<ServerConnection> {
    /// Start the server side of a handshake on an accepted socket.
    ///
    /// # Errors
    /// rustls refused to create the connection (not expected with a valid configuration).
    pub fn new(
        sock: mio::net::TcpStream,
        cfg: Arc<rustls::ServerConfig>,
        peer: SocketAddr,
    ) -> io::Result<TlsStream> {
        let mut tls = ServerConnection::new(cfg).map_err(io::Error::other)?;
        // Plaintext queued before the handshake completes (a control error at most) is kept
        // whole; afterwards `write` only hands rustls new data once earlier records are sent.
        tls.set_buffer_limit(None);
        Ok(TlsStream {
            sock,
            tls,
            peer,
            eof: false,
        })
    }
}

impl TlsStream<ClientConnection> {
    /// Start the client side of a handshake on a socket connecting to `peer` (an upstream
    /// link); `cfg` holds the CA the server's certificate must chain to, `name` the name it
    /// must carry.
    ///
    /// # Errors
    /// rustls refused to create the connection (not expected with a valid configuration).
    pub fn connect(
        sock: mio::net::TcpStream,
        cfg: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
        peer: SocketAddr,
    ) -> io::Result<Self> {
        let mut tls = ClientConnection::new(cfg, name).map_err(io::Error::other)?;
        // The LINK_HELLO is written before the handshake completes: rustls keeps it (whole)
        // until the server is verified.
        tls.set_buffer_limit(None);
        Ok(TlsStream {
            sock,
            tls,
            peer,
            eof: false,
        })
    }

    /// The TCP socket (connect progress: `take_error`, `peer_addr`).
    pub fn tcp(&self) -> &mio::net::TcpStream {
        &self.sock
    }
}

impl<C, D> TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData + 'static,
{
    /// The negotiated ALPN protocol, once the handshake is done.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tls.alpn_protocol()
    }

    /// Closing: send the records still pending, then end the TCP stream's sending side.
    /// `Ok(false)` while records wait for the socket (call again when it may be writable).
    ///
    /// # Errors
    /// A socket error.
    pub fn close_write(&mut self) -> io::Result<bool> {
        if !self.send_pending()? {
            return Ok(false);
        }
        self.sock.shutdown(std::net::Shutdown::Write)?;
        Ok(true)
    }

    /// Send pending TLS records; `Ok(true)` once none remain, `Ok(false)` on would-block.
    fn send_pending(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

impl<C, D> Read for TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData + 'static,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.eof {
                        return Ok(0);
                    }
                }
                // The peer closed without close_notify: an EOF for the worker.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Best effort: rustls queued an alert that tells the client why.
                let _ = self.send_pending();
                let handshaking = self.tls.is_handshaking();
                // Debug only: a peer provokes these at will; the worker logs them at info, at
                // most once a second, with the count and the last source (`tls`).
                debug!(peer = %self.peer, error = %e, handshaking, "tls error; closing");
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake flights and key updates go out now; what the socket does not take
            // waits for its writable edge (the worker then calls `flush`).
            self.send_pending()?;
        }
    }
}

impl<C, D> Write for TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData + 'static,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if !self.send_pending()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tls.writer().write_vectored(bufs)?;
        self.send_pending()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.send_pending()? {
            Ok(())
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
}

// By hand: `delegate_source!` takes no generic parameters.
impl<C> mio::event::Source for TlsStream<C> {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.sock.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.sock.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        self.sock.deregister(registry)
    }
}
