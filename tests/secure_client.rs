//! Encrypted desktops for tests: rcgen certificates, a tokio-rustls TLS connector, and
//! [`FrameClient`], a desktop over any async byte stream (TLS over TCP, or a QUIC stream pair)
//! with the same hello / request / event helpers as [`crate::TestClient`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use deskmux_codec::msg::{self, DesktopHello, ServerHello};
use deskmux_codec::{BodyError, BodyWriter, Frame, FrameDecoder, Head, Kind, Service};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::WAIT;

/// The deskmux ALPN id.
pub const ALPN: &[u8] = b"deskmux/1";

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

/// Any byte stream a desktop can speak over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A desktop over an arbitrary byte stream.
pub struct FrameClient {
    stream: Box<dyn Io>,
    rbuf: BytesMut,
    decoder: FrameDecoder,
    next_corr: u64,
    /// Tenant stamped on requests.
    pub tenant: u32,
    /// Session id from the server hello.
    pub session: u64,
    backlog: VecDeque<Frame>,
}

impl std::fmt::Debug for FrameClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameClient")
            .field("session", &self.session)
            .finish()
    }
}

impl FrameClient {
    /// Wrap a connected stream.
    pub fn new(stream: impl Io + 'static) -> FrameClient {
        FrameClient {
            stream: Box::new(stream),
            rbuf: BytesMut::with_capacity(16 * 1024),
            decoder: FrameDecoder::new(16 * 1024 * 1024),
            next_corr: 1,
            tenant: 0,
            session: 0,
            backlog: VecDeque::new(),
        }
    }

    /// Send a hello for services `0b110`; fails if refused.
    ///
    /// # Errors
    /// I/O, timeout or refusal.
    pub async fn hello(&mut self, tenant: u32, agent: &str, token: &str) -> Result<()> {
        self.tenant = tenant;
        let hello = DesktopHello {
            version: 1,
            agent,
            token,
            services: 0b110,
        };
        let resp = self
            .request(Service::Control, msg::control::HELLO, |w| hello.write(w))
            .await?;
        if let Some((code, m)) = resp.error() {
            bail!("hello refused: {code} {m}");
        }
        self.session = ServerHello::read(resp.body())
            .context("server hello")?
            .session;
        Ok(())
    }

    /// Send a request and wait for its response.
    ///
    /// # Errors
    /// I/O, timeout, body encoding.
    pub async fn request(
        &mut self,
        service: Service,
        msg_type: u16,
        body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
    ) -> Result<Frame> {
        let corr = self.send(service, msg_type, body).await?;
        self.wait_for(WAIT, |f| {
            f.head().kind == Kind::Response && f.head().correlation == corr
        })
        .await
    }

    /// Send a request without waiting; returns its correlation id.
    ///
    /// # Errors
    /// I/O or body encoding.
    pub async fn send(
        &mut self,
        service: Service,
        msg_type: u16,
        body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
    ) -> Result<u64> {
        let corr = self.next_corr;
        self.next_corr += 1;
        let mut head = Head::new(Kind::Request, service, msg_type);
        head.tenant = self.tenant;
        head.correlation = corr;
        let frame = Frame::build(head, body)?;
        self.stream.write_all(frame.as_bytes()).await?;
        self.stream.flush().await?;
        Ok(corr)
    }

    /// Wait for a frame `pred` accepts; others are kept.
    ///
    /// # Errors
    /// Timeout or close.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Frame) -> bool,
    ) -> Result<Frame> {
        if let Some(i) = self.backlog.iter().position(&pred)
            && let Some(f) = self.backlog.remove(i)
        {
            return Ok(f);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let f = self
                .read_frame(deadline)
                .await?
                .context("connection closed while waiting")?;
            if pred(&f) {
                return Ok(f);
            }
            self.backlog.push_back(f);
        }
    }

    /// Wait for an event of type `msg_type`.
    ///
    /// # Errors
    /// Timeout or close.
    pub async fn event(&mut self, msg_type: u16, timeout: Duration) -> Result<Frame> {
        self.wait_for(timeout, |f| {
            f.head().kind == Kind::Event && f.head().msg_type == msg_type
        })
        .await
    }

    async fn read_frame(&mut self, deadline: tokio::time::Instant) -> Result<Option<Frame>> {
        loop {
            if let Some(f) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(Some(f));
            }
            let n = match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf))
                .await
            {
                Err(_) => bail!("timed out waiting for a frame"),
                Ok(r) => r?,
            };
            if n == 0 {
                return Ok(None);
            }
        }
    }
}

/// A QUIC client endpoint (quinn, tokio) trusting `roots`, offering `alpn`.
///
/// # Errors
/// Socket or rustls configuration failure.
pub fn quic_endpoint(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> Result<quinn::Endpoint> {
    let crypto = client_config(roots, alpn)?;
    let qcc = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(qcc)));
    Ok(ep)
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
