//! The desktop client library: connect to one of several sites with retry, backoff and jitter,
//! over TCP, TLS or QUIC ([`Conn`]), send the hello, log in; then read frames from a small reusable
//! buffer without allocating.
//!
//! It is deliberately small and reusable: loadgen's scenarios use it for tens of thousands of
//! desktops per process (one tokio task each on a current-thread runtime per core), and other
//! tools can use it for a single desktop.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use deskmux_codec::msg::{self, DesktopHello, ServerHello};
use deskmux_codec::{
    BodyError, BodyWriter, ErrorCode, Flags, FrameDecoder, FrameError, HEAD_LEN, Head, Kind, Peek,
    Service, encode_with,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// Who a desktop is: tenant, agent id, credential and the services it wants.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// Tenant claimed in the hello's head.
    pub tenant: u32,
    /// Agent (or media-server) id.
    pub agent: String,
    /// Password (or API key).
    pub token: String,
    /// A reconnect token from an earlier server hello, presented instead of the password.
    pub reconnect: Option<String>,
    /// A session to resume (PROTOCOL.md §4.6): its resume token and the last unicast `useq`
    /// received. Presented with the reconnect token or password, which servers that keep no
    /// sessions check instead.
    pub resume: Option<(String, u64)>,
    /// Services mask (`1 << service`): 2 = Interaction, 4 = UCS, 6 = both.
    pub services: u64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("tenant", &self.tenant)
            .field("agent", &self.agent)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

/// Exponential backoff with optional jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Spread delays ("equal jitter": half fixed, half random), so that a storm of reconnects
    /// is smeared out instead of arriving in synchronized waves.
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_secs(2),
            jitter: true,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0 = the first retry); `rnd` is uniform in
    /// [0, 1). Pure, so it is testable.
    pub fn delay(&self, attempt: u32, rnd: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        if self.jitter {
            exp / 2 + exp.mul_f64(rnd.clamp(0.0, 1.0) / 2.0)
        } else {
            exp
        }
    }
}

/// Why a desktop could not get a session.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error (refused, reset, no ports, …).
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer answered with an error frame.
    #[error("refused: {} (0x{:04x}) {message}", code.name(), code.0)]
    Refused {
        /// The error code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The peer broke the protocol (framing lost, unexpected frame, bad body).
    #[error("protocol: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// QUIC connect or handshake failure (certificate, ALPN, refused, ...).
    #[error("quic: {0}")]
    Quic(String),
    /// TLS handshake failure (certificate, ALPN, protocol version, ...).
    #[error("tls: {0}")]
    Tls(String),
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

impl From<BodyError> for ClientError {
    fn from(e: BodyError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

/// Open a TCP connection, optionally from source address `src` (bound before connecting, to
/// spread over 127.0.0.x), with Nagle off.
///
/// # Errors
/// Socket errors, or [`ClientError::Timeout`].
pub async fn connect_tcp(
    site: SocketAddr,
    src: Option<SocketAddr>,
    timeout: Duration,
) -> Result<TcpStream, ClientError> {
    let sock = if site.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(a) = src {
        // SO_REUSEADDR: a port whose last connection is in TIME_WAIT may be bound again.
        sock.set_reuseaddr(true)?;
        sock.bind(a)?;
    }
    // Small kernel buffers: a desktop's traffic is tiny and there are tens of thousands.
    let _ = sock.set_recv_buffer_size(64 * 1024);
    let _ = sock.set_send_buffer_size(64 * 1024);
    let stream = tokio::time::timeout(timeout, sock.connect(site))
        .await
        .map_err(|_| ClientError::Timeout)??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A desktop's connection: a TCP socket, a TLS session over one, or a QUIC connection's one
/// bidirectional stream. All carry the same framed byte stream.
#[derive(Debug)]
pub enum Conn {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (boxed: the rustls state is large).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// QUIC (boxed: the quinn handles are much larger than a `TcpStream`).
    Quic(Box<crate::quic::QuicConn>),
}

impl Conn {
    /// Write all of `buf` (for QUIC: into the stream's send buffer).
    ///
    /// # Errors
    /// The connection is gone.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(buf).await,
            Conn::Tls(s) => {
                s.write_all(buf).await?;
                // Records rustls could not hand to the socket yet go out now.
                s.flush().await
            }
            Conn::Quic(q) => q.send.write_all(buf).await.map_err(io::Error::from),
        }
    }
}

/// Frames from a byte stream, read into one small reusable buffer. Frames are handed out as
/// `(Head, &body)` borrowed from the buffer: no allocation per frame. Framing (magic, version,
/// the size limit, where a frame ends) is the codec's [`FrameDecoder::peek`], the same
/// reading the proxy and the servers use; its decoder state lives as long as the connection,
/// so a head is parsed once however many reads its body takes.
#[derive(Debug)]
pub struct FrameReader {
    /// Buffer; `start..end` holds unread bytes.
    buf: Vec<u8>,
    /// Start of unread bytes.
    start: usize,
    /// End of unread bytes.
    end: usize,
    /// Largest frame accepted, and the state of the frame being read.
    dec: FrameDecoder,
}

impl FrameReader {
    /// A reader with an initial buffer of `cap` bytes (it grows only for a larger frame).
    pub fn new(cap: usize, max_frame: usize) -> FrameReader {
        FrameReader {
            buf: vec![0; cap.max(HEAD_LEN * 2)],
            start: 0,
            end: 0,
            dec: FrameDecoder::new(max_frame),
        }
    }

    /// The next complete frame in the buffer, if any.
    ///
    /// # Errors
    /// Framing is lost (bad magic or version, frame over the maximum).
    pub fn next_frame(&mut self) -> Result<Option<(Head, &[u8])>, FrameError> {
        match self.dec.peek(&self.buf[self.start..self.end])? {
            Peek::Partial { frame_len } => {
                // Make room for the whole frame at the front of the buffer.
                if let Some(total) = frame_len
                    && self.buf.len() - self.start < total
                {
                    self.compact();
                    if self.buf.len() < total {
                        self.buf.resize(total, 0);
                    }
                }
                Ok(None)
            }
            Peek::Frame { head, len } => {
                let body = self.start + HEAD_LEN..self.start + len;
                self.start += len;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                Ok(Some((head, &self.buf[body])))
            }
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Read what the socket has without waiting. A short read (less than the free space) also
    /// clears the socket's readiness, so that the caller's next attempt costs no `read` syscall that
    /// would only return `EAGAIN` — one syscall less per request. Tokio's readiness ticks make
    /// this safe: data that arrives after the read sets readiness again.
    ///
    /// # Errors
    /// Socket errors, including `WouldBlock` when nothing is ready.
    pub fn try_read_once(&mut self, stream: &TcpStream) -> io::Result<usize> {
        use std::io::Read;
        let dst = self.room();
        let space = dst.len();
        let mut got = 0usize;
        let r = stream.try_io(tokio::io::Interest::READABLE, || {
            let sock = socket2::SockRef::from(stream);
            let n = (&*sock).read(dst)?;
            got = n;
            if n > 0 && n < space {
                // Drained: report WouldBlock so tokio clears the readiness.
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {
                self.end += got;
                Ok(got)
            }
            Ok(n) => {
                self.end += n;
                Ok(n)
            }
            Err(e) => Err(e),
        }
    }

    /// Make room at the end of the buffer (compact, then grow up to the frame limit).
    fn room(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() {
            self.compact();
            if self.end == self.buf.len() {
                let n = self.buf.len() * 2;
                self.buf
                    .resize(n.min(self.dec.max_frame_len().max(self.buf.len() + 1)), 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Read what `conn` has without waiting (TCP: [`FrameReader::try_read_once`]). `Ok(0)`:
    /// the peer closed.
    ///
    /// # Errors
    /// Connection errors, including `WouldBlock` when nothing is ready.
    pub fn try_read_conn(&mut self, conn: &mut Conn) -> io::Result<usize> {
        use futures::FutureExt;
        match conn {
            Conn::Tcp(s) => self.try_read_once(s),
            Conn::Tls(s) => {
                use tokio::io::AsyncReadExt;
                // tokio-rustls reads are cancel-safe: decrypted bytes stay in rustls.
                let dst = self.room();
                match s.read(dst).now_or_never() {
                    None => Err(io::ErrorKind::WouldBlock.into()),
                    Some(r) => {
                        let n = r?;
                        self.end += n;
                        Ok(n)
                    }
                }
            }
            Conn::Quic(q) => {
                // quinn's `read` is cancel-safe: polled once, nothing is lost if it is pending.
                let dst = self.room();
                match q.recv.read(dst).now_or_never() {
                    None => Err(io::ErrorKind::WouldBlock.into()),
                    Some(r) => {
                        let n = r.map_err(io::Error::from)?.unwrap_or(0);
                        self.end += n;
                        Ok(n)
                    }
                }
            }
        }
    }

    /// Wait until `conn` has bytes and read them. Cancel-safe. `Ok(0)`: the peer closed.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn read_conn(&mut self, conn: &mut Conn) -> io::Result<usize> {
        match conn {
            Conn::Tcp(s) => loop {
                // The stream's own reader waker slot, not `readable()`: that future joins
                // (and on drop leaves) a locked waiter list each time, and a desktop polls it
                // once per request, from its one task.
                std::future::poll_fn(|cx| s.poll_read_ready(cx)).await?;
                match self.try_read_once(s) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return r,
                }
            },
            Conn::Tls(s) => {
                use tokio::io::AsyncReadExt;
                let dst = self.room();
                let n = s.read(dst).await?;
                self.end += n;
                Ok(n)
            }
            Conn::Quic(q) => {
                let dst = self.room();
                let n = q
                    .recv
                    .read(dst)
                    .await
                    .map_err(io::Error::from)?
                    .unwrap_or(0);
                self.end += n;
                Ok(n)
            }
        }
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }
}

/// Encode a request (kind request, flags clear, session 0) into `dst`; returns its head.
///
/// # Errors
/// A body encoding error.
pub fn encode_request(
    dst: &mut bytes::BytesMut,
    service: Service,
    msg_type: u16,
    tenant: u32,
    corr: u64,
    body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
) -> Result<Head, BodyError> {
    let mut head = Head::new(Kind::Request, service, msg_type);
    head.tenant = tenant;
    head.correlation = corr;
    encode_with(head, dst, body)
}

/// The answer to a heartbeat request `req` (same ids, kind response, empty body).
pub fn heartbeat_answer(req: &Head) -> [u8; HEAD_LEN] {
    let mut h = *req;
    h.kind = Kind::Response;
    h.flags = Flags::default();
    h.body_len = 0;
    h.to_bytes()
}

/// One connected desktop with a session. Its `Debug` leaves out the reconnect token, which
/// logs in as the agent.
pub struct Desktop {
    /// The connection.
    pub conn: Conn,
    /// Its frame reader.
    pub reader: FrameReader,
    /// Session parameters from the server hello.
    pub hello: ServerHello,
    /// The tenant the session belongs to.
    pub tenant: u32,
    /// Index of the site (in the list given to [`connect_sites`]) it is connected to.
    pub site: usize,
    /// The reconnect token the server hello carried, for the next hello.
    pub reconnect: Option<String>,
    /// The resume token the server hello carried (PROTOCOL.md §4.6), if the site offers one.
    pub resume: Option<String>,
    /// `Some(n)`: the hello resumed a session, and `n` replayed events follow it.
    pub replayed: Option<u64>,
    /// How long the successful attempt took to connect (TCP connect, plus the TLS or QUIC
    /// handshake).
    pub connect_time: Duration,
    /// How long its hello took, sent to answered.
    pub hello_time: Duration,
}

impl std::fmt::Debug for Desktop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desktop")
            .field("conn", &self.conn)
            .field("tenant", &self.tenant)
            .field("site", &self.site)
            .field("connect_time", &self.connect_time)
            .field("hello_time", &self.hello_time)
            .finish_non_exhaustive()
    }
}

/// Correlation ids at or above this are used by the client library itself (hello, login,
/// heartbeats), so they never collide with a scenario's own ids.
pub const CLIENT_CORR_BASE: u64 = 1 << 62;

/// Send one request and wait for its response (same correlation id), answering heartbeats and
/// handing every other frame to `other`. Returns the response's head; its body is copied into
/// `body_out` (cleared first).
///
/// # Errors
/// I/O, framing, timeout or closed connection. An error *response* is returned as `Ok`; check
/// its head's `ERROR` flag.
pub async fn call(
    stream: &mut Conn,
    reader: &mut FrameReader,
    request: &[u8],
    timeout: Duration,
    body_out: &mut Vec<u8>,
    mut other: impl FnMut(&Head, &[u8]),
) -> Result<Head, ClientError> {
    let corr = Head::parse(request)?
        .ok_or_else(|| ClientError::Protocol("short request".into()))?
        .correlation;
    stream.write_all(request).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        while let Some((head, body)) = reader.next_frame()? {
            if head.kind == Kind::Response && head.correlation == corr {
                body_out.clear();
                body_out.extend_from_slice(body);
                return Ok(head);
            }
            if head.kind == Kind::Request
                && head.service == Service::Control
                && head.msg_type == msg::control::HEARTBEAT
            {
                let ans = heartbeat_answer(&head);
                stream.write_all(&ans).await?;
                continue;
            }
            other(&head, body);
        }
        let n = tokio::time::timeout_at(deadline, reader.read_conn(stream))
            .await
            .map_err(|_| ClientError::Timeout)??;
        if n == 0 {
            return Err(ClientError::Closed);
        }
    }
}

/// The error carried by an error response, as a [`ClientError::Refused`].
pub fn refused(body: &[u8]) -> ClientError {
    match msg::ErrorBody::read(deskmux_codec::BodyRef::new(body)) {
        Ok(e) => ClientError::Refused {
            code: e.code,
            message: e.message.to_string(),
        },
        Err(e) => ClientError::Protocol(format!("unreadable error body: {e}")),
    }
}

/// Send the desktop hello on a fresh connection and wait for the server hello.
///
/// # Errors
/// I/O, timeout, or [`ClientError::Refused`] (e.g. `AUTH_FAILED`).
pub async fn hello(
    stream: &mut Conn,
    reader: &mut FrameReader,
    id: &Identity,
    timeout: Duration,
) -> Result<HelloOut, ClientError> {
    let mut req = bytes::BytesMut::with_capacity(256);
    let h = DesktopHello {
        version: 1,
        agent: &id.agent,
        token: if id.reconnect.is_some() {
            ""
        } else {
            &id.token
        },
        reconnect: id.reconnect.as_deref(),
        services: id.services,
    };
    encode_request(
        &mut req,
        Service::Control,
        msg::control::HELLO,
        id.tenant,
        CLIENT_CORR_BASE,
        |w| {
            h.write(w)?;
            match &id.resume {
                Some((token, last_event)) => msg::Resume {
                    token,
                    last_event: *last_event,
                }
                .write(w),
                None => Ok(()),
            }
        },
    )?;
    let mut body = Vec::new();
    let head = call(stream, reader, &req, timeout, &mut body, |_, _| {}).await?;
    if head.flags.has(Flags::ERROR) {
        return Err(refused(&body));
    }
    if head.msg_type != msg::control::HELLO {
        return Err(ClientError::Protocol(format!(
            "hello answered with type {:#06x}",
            head.msg_type
        )));
    }
    let b = deskmux_codec::BodyRef::new(&body);
    Ok(HelloOut {
        hello: ServerHello::read(b)?,
        reconnect: b.opt_str(msg::key::RECONNECT)?.map(str::to_string),
        resume: b.opt_str(msg::key::RESUME)?.map(str::to_string),
        replayed: b
            .opt_int(msg::key::REPLAYED)?
            .map(|n| u64::try_from(n).unwrap_or(0)),
    })
}

/// What a server hello said.
#[derive(Debug)]
pub struct HelloOut {
    /// The session's parameters.
    pub hello: ServerHello,
    /// Its reconnect token.
    pub reconnect: Option<String>,
    /// Its resume token.
    pub resume: Option<String>,
    /// Set when the hello resumed a session: the number of events replayed after it.
    pub replayed: Option<u64>,
}

/// Log the agent in (`AGENT_LOGIN` with `place`).
///
/// # Errors
/// I/O, timeout, or [`ClientError::Refused`].
pub async fn login(d: &mut Desktop, place: &str, timeout: Duration) -> Result<(), ClientError> {
    let mut req = bytes::BytesMut::with_capacity(64);
    encode_request(
        &mut req,
        Service::Interaction,
        msg::ixn::AGENT_LOGIN,
        d.tenant,
        CLIENT_CORR_BASE + 1,
        |w| {
            w.str(msg::key::PLACE, place)?;
            Ok(())
        },
    )?;
    let mut body = Vec::new();
    let head = call(
        &mut d.conn,
        &mut d.reader,
        &req,
        timeout,
        &mut body,
        |_, _| {},
    )
    .await?;
    if head.flags.has(Flags::ERROR) {
        return Err(refused(&body));
    }
    Ok(())
}

/// Options for [`connect_sites`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Per-attempt connect + hello timeout.
    pub timeout: Duration,
    /// Backoff between attempts.
    pub backoff: Backoff,
    /// Give up after this many attempts (0: never, until `deadline`).
    pub max_attempts: u32,
    /// Read buffer size per desktop.
    pub read_buf: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            max_attempts: 0,
            read_buf: 1024,
        }
    }
}

/// Where a desktop's connections come from: a source address and, per connection attempt, a
/// source port (see [`crate::shard::source_port`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePlan {
    /// Source address (127.0.0.x).
    pub ip: IpAddr,
    /// The desktop's global id.
    pub id: u64,
    /// Desktops per source address.
    pub per_source: u64,
    /// Ephemeral port range.
    pub range: (u16, u16),
}

impl SourcePlan {
    /// Source for connection attempt `attempt`.
    pub fn addr(&self, attempt: u64) -> SocketAddr {
        SocketAddr::new(
            self.ip,
            crate::shard::source_port(self.id, attempt, self.per_source, self.range),
        )
    }
}

/// How a desktop reaches a site.
#[derive(Debug, Clone, Copy)]
pub enum Via<'a> {
    /// TCP, from the [`SourcePlan`]'s address and port if given.
    Tcp(Option<SourcePlan>),
    /// TLS over TCP, from the [`SourcePlan`] like TCP.
    Tls(Option<SourcePlan>, &'a crate::tls::TlsClient),
    /// QUIC, over the endpoint this desktop (`gid`) is assigned in the set.
    Quic(&'a crate::quic::EndpointSet, u64),
}

/// Connect and say hello, trying `sites` in order from `first`: when a site fails, the next
/// attempt goes to the next site, after a backoff delay. Returns the desktop and the number of
/// failed attempts before it. `generation` counts this desktop's earlier attempts (it picks
/// the TCP source port).
///
/// # Errors
/// The last attempt's error, after `max_attempts` attempts or at `deadline`.
#[allow(clippy::too_many_arguments)]
pub async fn connect_sites(
    sites: &[SocketAddr],
    first: usize,
    via: Via<'_>,
    generation: &mut u64,
    id: &Identity,
    opts: &ConnectOptions,
    deadline: tokio::time::Instant,
) -> Result<(Desktop, u32), (ClientError, u32)> {
    let mut attempt: u32 = 0;
    // A refused reconnect token (expired, rotated) falls back to the password at once.
    let mut id = std::borrow::Cow::Borrowed(id);
    loop {
        let site = (first + attempt as usize) % sites.len().max(1);
        let gen_now = *generation;
        *generation += 1;
        let res = async {
            let began = std::time::Instant::now();
            let mut stream = match via {
                Via::Tcp(src) => Conn::Tcp(
                    connect_tcp(sites[site], src.map(|p| p.addr(gen_now)), opts.timeout).await?,
                ),
                Via::Tls(src, tls) => Conn::Tls(Box::new(
                    tls.connect(sites[site], src.map(|p| p.addr(gen_now)), opts.timeout)
                        .await?,
                )),
                Via::Quic(eps, gid) => {
                    Conn::Quic(Box::new(eps.connect(gid, sites[site], opts.timeout).await?))
                }
            };
            let connected = std::time::Instant::now();
            let mut reader = FrameReader::new(opts.read_buf, deskmux_codec::DEFAULT_MAX_FRAME_LEN);
            let h = hello(&mut stream, &mut reader, &id, opts.timeout).await?;
            Ok::<_, ClientError>(Desktop {
                connect_time: connected - began,
                hello_time: connected.elapsed(),
                conn: stream,
                reader,
                hello: h.hello,
                tenant: id.tenant,
                site,
                reconnect: h.reconnect,
                resume: h.resume,
                replayed: h.replayed,
            })
        }
        .await;
        match res {
            Ok(d) => return Ok((d, attempt)),
            Err(ClientError::Refused { code, .. })
                if code == ErrorCode::AUTH_FAILED && id.reconnect.is_some() =>
            {
                id.to_mut().reconnect = None;
            }
            // The session could not be resumed (it ended): a fresh hello at once (§4.6).
            Err(ClientError::Refused { code, .. })
                if code == ErrorCode::RESUME_REFUSED && id.resume.is_some() =>
            {
                id.to_mut().resume = None;
            }
            Err(e) => {
                let delay = opts.backoff.delay(attempt, fastrand::f64());
                attempt += 1;
                let give_up = (opts.max_attempts > 0 && attempt >= opts.max_attempts)
                    || tokio::time::Instant::now() + delay >= deadline
                    || matches!(e, ClientError::Refused { code, .. } if code == ErrorCode::AUTH_FAILED);
                if give_up {
                    return Err((e, attempt));
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: false,
        };
        assert_eq!(b.delay(0, 0.7), Duration::from_millis(100));
        assert_eq!(b.delay(2, 0.7), Duration::from_millis(400));
        assert_eq!(b.delay(10, 0.7), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX, 0.7), Duration::from_secs(1));
        let j = Backoff { jitter: true, ..b };
        assert_eq!(j.delay(2, 0.0), Duration::from_millis(200));
        assert_eq!(j.delay(2, 1.0), Duration::from_millis(400));
        let d = j.delay(2, 0.5);
        assert!(d > Duration::from_millis(200) && d < Duration::from_millis(400));
    }

    #[test]
    fn reader_splits_frames_and_grows_for_big_ones() {
        let mut buf = bytes::BytesMut::new();
        encode_request(&mut buf, Service::Interaction, 1, 1, 5, |w| {
            w.bin("data", &[7u8; 300])?;
            Ok(())
        })
        .unwrap();
        encode_request(&mut buf, Service::Ucs, 1, 1, 6, |_| Ok(())).unwrap();
        let mut r = FrameReader::new(64, 4096);
        // Feed by hand (no socket): copy into the buffer as try_read would.
        let mut fed = 0;
        let mut got = Vec::new();
        while got.len() < 2 {
            while let Some((h, b)) = r.next_frame().unwrap() {
                got.push((h.correlation, b.len()));
            }
            if fed < buf.len() {
                if r.end == r.buf.len() {
                    r.compact();
                }
                let room = r.buf.len() - r.end;
                let n = room.min(buf.len() - fed).min(50);
                r.buf[r.end..r.end + n].copy_from_slice(&buf[fed..fed + n]);
                r.end += n;
                fed += n;
            }
        }
        assert_eq!(got, vec![(5, 310), (6, 0)]);
        assert_eq!(r.buffered(), 0);
    }
}
