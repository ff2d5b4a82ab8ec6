//! A small async desktop for tests: hello, requests matched by correlation id, events queued
//! while waiting for responses, and raw byte injection for malformed-input tests. It runs over
//! any async byte stream: plain TCP ([`TestClient::connect`]), TLS or a QUIC stream pair
//! ([`TestClient::new`], with the connectors in `secure_client`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use deskmux_codec::msg::{self, DesktopHello, ServerHello};
use deskmux_codec::{BodyError, BodyWriter, Frame, FrameDecoder, Head, Kind, Service};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Default time a test waits for any one frame.
pub const WAIT: Duration = Duration::from_secs(5);

/// A byte stream a desktop can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One desktop connection (direct to a server, or to a proxy).
pub struct TestClient {
    /// The connection: TCP, TLS or a QUIC stream pair.
    stream: Box<dyn Io>,
    /// Bytes read but not yet decoded.
    rbuf: BytesMut,
    /// The real codec, so tests exercise exactly what production decodes.
    decoder: FrameDecoder,
    /// Next correlation id to use.
    next_corr: u64,
    /// Tenant stamped on every request (the authenticated one after `hello`).
    pub tenant: u32,
    /// Session id from the server hello.
    pub session: u64,
    /// Frames that arrived while waiting for something else (events, other responses).
    backlog: VecDeque<Frame>,
}

impl std::fmt::Debug for TestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestClient")
            .field("tenant", &self.tenant)
            .field("session", &self.session)
            .finish()
    }
}

impl TestClient {
    /// Connect over TCP.
    ///
    /// # Errors
    /// Connection refused, or no connection within [`WAIT`].
    pub async fn connect(addr: SocketAddr) -> Result<TestClient> {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .context("connect timeout")??;
        stream.set_nodelay(true)?;
        Ok(TestClient::new(stream))
    }

    /// A desktop over an already connected stream (TLS, QUIC, ...).
    pub fn new(stream: impl Io + 'static) -> TestClient {
        TestClient {
            stream: Box::new(stream),
            rbuf: BytesMut::with_capacity(16 * 1024),
            decoder: FrameDecoder::new(16 * 1024 * 1024),
            next_corr: 1,
            tenant: 0,
            session: 0,
            backlog: VecDeque::new(),
        }
    }

    /// Connect and complete a hello; fails if the hello is refused.
    ///
    /// # Errors
    /// Connection or hello failure.
    pub async fn connect_hello(
        addr: SocketAddr,
        tenant: u32,
        agent: &str,
        token: &str,
    ) -> Result<TestClient> {
        let mut c = TestClient::connect(addr).await?;
        c.hello_ok(tenant, agent, token).await?;
        Ok(c)
    }

    /// Hello for both services (`0b110`); fails if it is refused.
    ///
    /// # Errors
    /// I/O, timeout or refusal.
    pub async fn hello_ok(&mut self, tenant: u32, agent: &str, token: &str) -> Result<()> {
        let resp = self.hello(tenant, agent, token, 0b110).await?;
        if let Some((code, m)) = resp.error() {
            bail!("hello refused: {code} {m}");
        }
        Ok(())
    }

    /// Send a desktop hello and wait for its answer (server hello or error). On success the
    /// client's tenant and session are set.
    ///
    /// # Errors
    /// I/O or timeout.
    pub async fn hello(
        &mut self,
        tenant: u32,
        agent: &str,
        token: &str,
        services: u64,
    ) -> Result<Frame> {
        self.tenant = tenant;
        let hello = DesktopHello {
            version: 1,
            agent,
            token,
            reconnect: None,
            services,
        };
        let resp = self
            .request(Service::Control, msg::control::HELLO, |w| hello.write(w))
            .await?;
        if resp.error().is_none() {
            let sh = ServerHello::read(resp.body()).context("server hello body")?;
            self.session = sh.session;
        }
        Ok(resp)
    }

    /// Send a desktop hello presenting a reconnect token instead of a password.
    ///
    /// # Errors
    /// I/O or timeout.
    pub async fn hello_reconnect(
        &mut self,
        tenant: u32,
        agent: &str,
        token: &str,
    ) -> Result<Frame> {
        self.tenant = tenant;
        let hello = DesktopHello {
            version: 1,
            agent,
            token: "",
            reconnect: Some(token),
            services: 0b110,
        };
        let resp = self
            .request(Service::Control, msg::control::HELLO, |w| hello.write(w))
            .await?;
        if resp.error().is_none() {
            let sh = ServerHello::read(resp.body()).context("server hello body")?;
            self.session = sh.session;
        }
        Ok(resp)
    }

    /// Send a desktop hello that resumes a session (PROTOCOL.md §4.6): its resume token, the
    /// last unicast `useq` received, and a reconnect token for the services that keep no
    /// sessions.
    ///
    /// # Errors
    /// I/O or timeout.
    pub async fn hello_resume(
        &mut self,
        tenant: u32,
        agent: &str,
        resume: &str,
        reconnect: Option<&str>,
        last_event: u64,
    ) -> Result<Frame> {
        self.tenant = tenant;
        let hello = DesktopHello {
            version: 1,
            agent,
            token: "",
            reconnect,
            services: 0b110,
        };
        let r = msg::Resume {
            token: resume,
            last_event,
        };
        let resp = self
            .request(Service::Control, msg::control::HELLO, |w| {
                hello.write(w)?;
                r.write(w)
            })
            .await?;
        if resp.error().is_none() {
            let sh = ServerHello::read(resp.body()).context("server hello body")?;
            self.session = sh.session;
        }
        Ok(resp)
    }

    /// Send a request built by `body` and wait for the response with its correlation id.
    ///
    /// # Errors
    /// I/O, timeout, or a body encoding error.
    pub async fn request(
        &mut self,
        service: Service,
        msg_type: u16,
        body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
    ) -> Result<Frame> {
        let corr = self.send(service, msg_type, body).await?;
        self.response(corr, WAIT).await
    }

    /// Send a request without waiting; returns its correlation id.
    ///
    /// # Errors
    /// I/O or a body encoding error.
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
        self.send_raw(frame.as_bytes()).await?;
        Ok(corr)
    }

    /// Write raw bytes (for malformed-input tests).
    ///
    /// # Errors
    /// I/O.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        // TLS and QUIC streams buffer; TCP's flush is a no-op.
        self.stream.flush().await?;
        Ok(())
    }

    /// Wait for the response (kind `Response`) with correlation `corr`; other frames are kept.
    ///
    /// # Errors
    /// Timeout, connection closed, or a framing error.
    pub async fn response(&mut self, corr: u64, timeout: Duration) -> Result<Frame> {
        if let Some(i) = self.backlog.iter().position(|f| is_response(f, corr)) {
            if let Some(f) = self.backlog.remove(i) {
                return Ok(f);
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let f = self
                .read_frame(deadline)
                .await?
                .with_context(|| format!("connection closed waiting for response {corr}"))?;
            if is_response(&f, corr) {
                return Ok(f);
            }
            self.backlog.push_back(f);
        }
    }

    /// Wait for the next frame that `pred` accepts; other frames are kept.
    ///
    /// # Errors
    /// Timeout or connection closed.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Frame) -> bool,
    ) -> Result<Frame> {
        if let Some(i) = self.backlog.iter().position(&pred) {
            if let Some(f) = self.backlog.remove(i) {
                return Ok(f);
            }
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

    /// Wait for an event with message type `msg_type`.
    ///
    /// # Errors
    /// Timeout or connection closed.
    pub async fn event(&mut self, msg_type: u16, timeout: Duration) -> Result<Frame> {
        self.wait_for(timeout, |f| {
            f.head().kind == Kind::Event && f.head().msg_type == msg_type
        })
        .await
    }

    /// The next frame of any kind (backlog first); `Ok(None)` if the peer closed.
    ///
    /// # Errors
    /// Timeout or a framing error.
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<Option<Frame>> {
        if let Some(f) = self.backlog.pop_front() {
            return Ok(Some(f));
        }
        self.read_frame(tokio::time::Instant::now() + timeout).await
    }

    /// Frames received but not yet consumed.
    pub fn backlog(&self) -> &VecDeque<Frame> {
        &self.backlog
    }

    /// Whether the peer closed the connection within `timeout` (frames before the close are
    /// kept in the backlog).
    ///
    /// # Errors
    /// A framing error.
    pub async fn closed_within(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.read_frame(deadline).await {
                Ok(None) => return Ok(true),
                Ok(Some(f)) => self.backlog.push_back(f),
                Err(e) if e.to_string().contains("timed out") => return Ok(false),
                Err(e) if e.to_string().contains("reset") => return Ok(true),
                Err(e) => return Err(e),
            }
        }
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

fn is_response(f: &Frame, corr: u64) -> bool {
    f.head().kind == Kind::Response && f.head().correlation == corr
}
