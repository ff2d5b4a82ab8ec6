//! A blocking desktop connection made for judging a peer, not for using it: it sends exactly
//! the bytes a rule asks for (well formed or not), and reports everything that comes back —
//! frames, lost framing, a close, silence — with a bound on every wait, so that a peer that
//! breaks a rule yields a FAIL line rather than a hang.
//!
//! The peer's own heartbeat requests are answered here and never shown to a rule: they may
//! come at any time (§6), and a rule judges only the answers to what it sent.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use deskmux_codec::msg::{control, key};
use deskmux_codec::{
    BodyError, BodyWriter, Flags, Frame, FrameDecoder, FrameError, Head, Kind, Service,
};
use rustls::pki_types::ServerName;

/// Where and how to reach the peer under test, and who to log in as.
#[derive(Debug, Clone)]
pub struct Site {
    /// The peer's address.
    pub addr: SocketAddr,
    /// TLS: the client configuration (trusting the given CA) and the name to verify.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// The tenant of the agent below.
    pub tenant: u32,
    /// An agent of that tenant...
    pub agent: String,
    /// ...and its password.
    pub password: String,
    /// The link secret: link rules (§4.2, §4.3, §9) run only with it, against a server.
    pub link_secret: Option<String>,
    /// The bound on every single wait for the peer.
    pub wait: Duration,
}

/// One transport stream.
enum Io {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Tcp(s) => s,
            Io::Tls(s) => &s.sock,
        }
    }
}

/// What the peer did next.
#[derive(Debug)]
pub enum Got {
    /// A whole frame.
    Frame(Frame),
    /// The peer closed the connection (end of stream, or a reset).
    Closed,
    /// The peer's bytes are not deskmux frames.
    Lost(FrameError),
    /// Nothing within the bound.
    Silent,
}

impl Got {
    /// A one-line account for the report.
    pub fn describe(&self) -> String {
        match self {
            Got::Frame(f) => describe(f),
            Got::Closed => "connection closed".into(),
            Got::Lost(e) => format!("undecodable bytes: {e}"),
            Got::Silent => "nothing".into(),
        }
    }
}

/// A frame, as the report shows it.
pub fn describe(f: &Frame) -> String {
    let h = f.head();
    let kind = match h.kind {
        Kind::Request => "request".to_string(),
        Kind::Response => "response".to_string(),
        Kind::Event => "event".to_string(),
        Kind::Control => "control".to_string(),
        Kind::Unknown(k) => format!("kind {k}"),
    };
    let mut s = format!(
        "{kind} svc={} type={:#06x} flags={:#04x} tenant={} corr={} session={}",
        h.service.to_u8(),
        h.msg_type,
        h.flags.0,
        h.tenant,
        h.correlation,
        h.session
    );
    if let Some((code, m)) = f.error() {
        s.push_str(&format!(" {} {m:?}", code.name()));
    }
    s
}

/// A connection to the peer.
pub struct Conn {
    io: Io,
    buf: BytesMut,
    dec: FrameDecoder,
    wait: Duration,
    /// The session id the hello gave (0 before).
    pub session: u64,
    /// Every frame the peer sent, in order, as described (heartbeats included).
    pub seen: Vec<String>,
}

impl Conn {
    /// Connect (and do the TLS handshake, with `site.tls`).
    ///
    /// # Errors
    /// The connection or the handshake failed.
    pub fn open(site: &Site) -> Result<Conn> {
        let tcp = TcpStream::connect_timeout(&site.addr, site.wait)
            .with_context(|| format!("connect {}", site.addr))?;
        tcp.set_nodelay(true)?;
        let io = match &site.tls {
            None => Io::Tcp(tcp),
            Some((cfg, name)) => {
                let c = rustls::ClientConnection::new(cfg.clone(), name.clone())?;
                Io::Tls(Box::new(rustls::StreamOwned::new(c, tcp)))
            }
        };
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(64 * 1024),
            // Large: the suite observes what the peer sends, it does not police its size.
            dec: FrameDecoder::new(64 << 20),
            wait: site.wait,
            session: 0,
            seen: Vec::new(),
        })
    }

    /// Write `bytes` (all of them, or fail).
    ///
    /// # Errors
    /// The peer is gone.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.io.tcp().set_write_timeout(Some(self.wait))?;
        match &mut self.io {
            Io::Tcp(s) => s.write_all(bytes)?,
            Io::Tls(s) => {
                s.write_all(bytes)?;
                s.flush()?;
            }
        }
        Ok(())
    }

    /// Shut down the sending side (TLS: `close_notify` first), as a desktop that half-closes.
    ///
    /// # Errors
    /// The socket refused.
    pub fn half_close(&mut self) -> Result<()> {
        if let Io::Tls(s) = &mut self.io {
            s.conn.send_close_notify();
            s.flush()?;
        }
        self.io.tcp().shutdown(Shutdown::Write)?;
        Ok(())
    }

    /// The next frame from the peer (its heartbeat requests answered and skipped), or what
    /// happened instead, within the bound.
    pub fn next(&mut self) -> Got {
        let deadline = Instant::now() + self.wait;
        loop {
            match self.dec.next_frame(&mut self.buf) {
                Ok(Some(f)) => {
                    self.seen.push(describe(&f));
                    let h = *f.head();
                    if h.kind == Kind::Request
                        && h.service == Service::Control
                        && h.msg_type == control::HEARTBEAT
                    {
                        let mut a = h;
                        a.kind = Kind::Response;
                        a.flags = Flags::default();
                        if self.send(&a.to_bytes()).is_err() {
                            return Got::Closed;
                        }
                        continue;
                    }
                    return Got::Frame(f);
                }
                Ok(None) => {}
                Err(e) => return Got::Lost(e),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Silent;
            }
            if self.io.tcp().set_read_timeout(Some(left)).is_err() {
                return Got::Closed;
            }
            let mut chunk = [0u8; 16 * 1024];
            let r = match &mut self.io {
                Io::Tcp(s) => s.read(&mut chunk),
                Io::Tls(s) => s.read(&mut chunk),
            };
            match r {
                Ok(0) => return Got::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Got::Silent;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Got::Closed,
            }
        }
    }

    /// The next frame that is not an event (events may arrive at any time on a session with
    /// subscriptions or invitations; a rule about answers skips them).
    pub fn reply(&mut self) -> Got {
        // Bounded: each call to `next` waits at most the bound, and a peer sending events
        // forever still ends this after 10,000 of them.
        for _ in 0..10_000 {
            match self.next() {
                Got::Frame(f) if f.head().kind == Kind::Event => continue,
                other => return other,
            }
        }
        Got::Silent
    }

    /// Whether the peer closes the connection (after any frames still due), within the bound
    /// per frame; the frames read meanwhile are described into `seen`.
    pub fn closes(&mut self) -> bool {
        for _ in 0..10_000 {
            match self.next() {
                Got::Frame(_) => continue,
                Got::Closed => return true,
                Got::Lost(_) | Got::Silent => return false,
            }
        }
        false
    }

    /// Log in with `site`'s agent for `services` (correlation 1).
    ///
    /// # Errors
    /// Anything but a server hello came back.
    pub fn hello(&mut self, site: &Site, services: i64) -> Result<Frame> {
        self.send(&hello(site, 1, 1, services))?;
        match self.reply() {
            Got::Frame(f) if f.head().kind == Kind::Response && f.error().is_none() => {
                self.session = f.head().session;
                Ok(f)
            }
            other => bail!("hello refused: {}", other.describe()),
        }
    }

    /// A fresh connection with an open session for both services.
    ///
    /// # Errors
    /// No connection, or the hello was refused.
    pub fn session(site: &Site) -> Result<Conn> {
        let mut c = Conn::open(site)?;
        c.hello(site, 6)?;
        Ok(c)
    }
}

/// A frame's bytes (empty if the body could not be written, which only a body over 4 GiB
/// would cause; the rules write small ones).
pub fn frame(h: Head, body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>) -> Vec<u8> {
    Frame::build(h, body)
        .map(|f| f.as_bytes().to_vec())
        .unwrap_or_default()
}

/// A frame with the given raw body bytes.
pub fn raw(h: Head, body: &[u8]) -> Vec<u8> {
    Frame::with_body(h, body)
        .map(|f| f.as_bytes().to_vec())
        .unwrap_or_default()
}

/// A head with these fields, flags clear.
pub fn head(kind: Kind, service: Service, msg_type: u16, tenant: u32, corr: u64) -> Head {
    let mut h = Head::new(kind, service, msg_type);
    h.tenant = tenant;
    h.correlation = corr;
    h
}

/// A hello of `site`'s agent with protocol `version` and `services`.
pub fn hello(site: &Site, corr: u64, version: i64, services: i64) -> Vec<u8> {
    let h = head(
        Kind::Request,
        Service::Control,
        control::HELLO,
        site.tenant,
        corr,
    );
    frame(h, |w| {
        w.int(key::VERSION, version);
        w.str(key::AGENT, &site.agent)?;
        w.str(key::TOKEN, &site.password)?;
        w.int(key::SERVICES, services);
        Ok(())
    })
}

/// Body bytes: `depth` lists nested inside each other under key `l`, after `prefix` items.
pub fn deep(depth: usize, prefix: &[u8]) -> Vec<u8> {
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..depth {
        let mut item = vec![1, b'l', 0x04];
        item.extend_from_slice(&u32::try_from(inner.len()).unwrap_or(u32::MAX).to_be_bytes());
        item.extend_from_slice(&inner);
        inner = item;
    }
    let mut b = prefix.to_vec();
    b.extend_from_slice(&inner);
    b
}

/// Hex of `b`, cut at 48 bytes for the report.
pub fn hex_of(b: &[u8]) -> String {
    if b.len() > 48 {
        format!("{}… ({} bytes)", hex::encode(&b[..48]), b.len())
    } else {
        hex::encode(b)
    }
}
