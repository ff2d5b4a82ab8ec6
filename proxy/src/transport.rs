//! The desktop listener and every socket option in one place.
//!
//! [`TcpTransport`] is the listening socket; [`DesktopTransport`] adds optional TLS
//! ([`crate::tls`]). Every desktop is a [`DesktopStream`]: plain TCP, TLS, or the stream of a
//! QUIC connection ([`crate::quic`], whose endpoint the worker drives itself; its streams
//! register with mio as no-ops and get their readiness from the endpoint). The core sees no
//! difference between the three.
//!
//! Sockets: the desktop port is bound with `SO_REUSEPORT` by every worker (the kernel spreads
//! new connections over them), with an explicit backlog; accepted desktops and upstream links
//! get `TCP_NODELAY` (frames are coalesced by the proxy's own vectored writes, so Nagle only
//! adds latency).

use std::io;
use std::net::SocketAddr;

use mio::event::Source;
use socket2::{Domain, Protocol, Socket, Type};

/// Desktops over TCP.
#[derive(Debug)]
pub struct TcpTransport {
    listener: mio::net::TcpListener,
}

impl TcpTransport {
    /// Bind `addr` with `SO_REUSEPORT` and listen with `backlog`.
    ///
    /// # Errors
    /// Socket, bind or listen failure.
    pub fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpTransport> {
        let s = reuseport_socket(addr)?;
        s.listen(backlog)?;
        s.set_nonblocking(true)?;
        let std: std::net::TcpListener = s.into();
        Ok(TcpTransport {
            listener: mio::net::TcpListener::from_std(std),
        })
    }
}

delegate_source!(TcpTransport, listener);

impl TcpTransport {
    /// Accept one TCP connection (with `TCP_NODELAY`); `Ok(None)` when none is pending.
    ///
    /// # Errors
    /// An accept error (other than would-block).
    pub fn accept_tcp(&mut self) -> io::Result<Option<(mio::net::TcpStream, SocketAddr)>> {
        match self.listener.accept() {
            Ok((s, a)) => {
                // Best effort: a failure here leaves Nagle on, which is only slower.
                let _ = s.set_nodelay(true);
                Ok(Some((s, a)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl TcpTransport {
    /// The bound address.
    ///
    /// # Errors
    /// The socket has no address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A desktop connection accepted on the TCP port: plain, or TLS when `[tls]` is configured.
#[derive(Debug)]
pub enum DesktopStream {
    /// Plain TCP.
    Plain(mio::net::TcpStream),
    /// TLS over TCP (boxed: the rustls state is a few KiB, plain desktops stay small).
    Tls(Box<crate::tls::TlsStream>),
    /// The desktop stream of a QUIC connection (no file descriptor).
    Quic(crate::quic::QuicStream),
}

impl DesktopStream {
    /// Closing: end the sending side after what is queued below the frames (TLS records), so
    /// the peer reads everything and then an end of stream. `Ok(false)` while TLS records
    /// still wait for the socket. A QUIC stream finishes itself when dropped.
    ///
    /// # Errors
    /// A socket error.
    pub fn close_write(&mut self) -> io::Result<bool> {
        match self {
            DesktopStream::Plain(s) => s.shutdown(std::net::Shutdown::Write).map(|()| true),
            DesktopStream::Tls(s) => s.close_write(),
            DesktopStream::Quic(_) => Ok(true),
        }
    }
}

impl io::Read for DesktopStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            DesktopStream::Plain(s) => s.read(buf),
            DesktopStream::Tls(s) => s.read(buf),
            DesktopStream::Quic(s) => s.read(buf),
        }
    }
}

impl io::Write for DesktopStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            DesktopStream::Plain(s) => s.write(buf),
            DesktopStream::Tls(s) => s.write(buf),
            DesktopStream::Quic(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            DesktopStream::Plain(s) => s.write_vectored(bufs),
            DesktopStream::Tls(s) => s.write_vectored(bufs),
            DesktopStream::Quic(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            DesktopStream::Plain(s) => s.flush(),
            DesktopStream::Tls(s) => s.flush(),
            DesktopStream::Quic(s) => s.flush(),
        }
    }
}

impl Source for DesktopStream {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        match self {
            DesktopStream::Plain(s) => s.register(registry, token, interests),
            DesktopStream::Tls(s) => s.register(registry, token, interests),
            DesktopStream::Quic(s) => s.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        match self {
            DesktopStream::Plain(s) => s.reregister(registry, token, interests),
            DesktopStream::Tls(s) => s.reregister(registry, token, interests),
            DesktopStream::Quic(s) => s.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        match self {
            DesktopStream::Plain(s) => s.deregister(registry),
            DesktopStream::Tls(s) => s.deregister(registry),
            DesktopStream::Quic(s) => s.deregister(registry),
        }
    }
}

/// Desktops over TCP, optionally with TLS (rustls, sans-IO: see [`crate::tls`]).
#[derive(Debug)]
pub struct DesktopTransport {
    /// The listening socket.
    tcp: TcpTransport,
    /// With `[tls]`: the configuration (certificate) for connections accepted from now on;
    /// replaced by [`Transport::set_tls_config`] when a SIGHUP rotates the certificate.
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl DesktopTransport {
    /// Wrap a bound TCP listener; with `tls`, every accepted connection starts a TLS handshake.
    pub fn new(
        tcp: TcpTransport,
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    ) -> DesktopTransport {
        DesktopTransport { tcp, tls }
    }
}

delegate_source!(DesktopTransport, tcp);

/// The listening socket's descriptor, for a driver that accepts through io_uring.
impl std::os::fd::AsRawFd for DesktopTransport {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.tcp.listener.as_raw_fd()
    }
}

impl DesktopTransport {
    /// Accept one connection (starting its TLS handshake with `[tls]`); `Ok(None)` when
    /// none is pending.
    ///
    /// # Errors
    /// An accept error (other than would-block).
    pub fn accept(&mut self) -> io::Result<Option<(DesktopStream, SocketAddr)>> {
        loop {
            let Some((s, peer)) = self.tcp.accept_tcp()? else {
                return Ok(None);
            };
            let Some(cfg) = &self.tls else {
                return Ok(Some((DesktopStream::Plain(s), peer)));
            };
            match crate::tls::TlsStream::new(s, cfg.clone(), peer) {
                Ok(t) => return Ok(Some((DesktopStream::Tls(Box::new(t)), peer))),
                Err(e) => tracing::warn!(%peer, error = %e, "tls session setup failed"),
            }
        }
    }

    /// The bound address.
    ///
    /// # Errors
    /// The socket has no address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Use `cfg` for the TLS handshakes of connections accepted from now on (a certificate
    /// rotated by SIGHUP); connections already accepted keep the session they have. Returns
    /// `false`, changing nothing, when this listener does not speak TLS.
    pub fn set_tls_config(&mut self, cfg: std::sync::Arc<rustls::ServerConfig>) -> bool {
        match &mut self.tls {
            Some(current) => {
                // Each accepted connection holds its own `Arc` of the configuration it started
                // with, so this only affects handshakes that begin after it.
                *current = cfg;
                true
            }
            None => false,
        }
    }
}

fn reuseport_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Fail if another process already serves `addr` (TCP, and UDP too with `udp`): every worker
/// binds with `SO_REUSEPORT`, which would otherwise let a second proxy (a double start, a
/// stale unit) share the port silently and take a share of the desktops. The probe binds
/// without `SO_REUSEPORT`, so it conflicts with any socket listening there, ours or not; with
/// `SO_REUSEADDR`, so that connections of an earlier run in `TIME_WAIT` do not count. Port 0
/// is always free.
///
/// # Errors
/// `AddrInUse` (or another bind failure), naming the address and the protocol.
pub fn ensure_port_free(addr: SocketAddr, udp: bool) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let named = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("{what} {addr}: {e} (is another proxy already running on it?)"),
        )
    };
    let tcp = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    tcp.set_reuse_address(true)?;
    tcp.bind(&addr.into()).map_err(|e| named("tcp", e))?;
    if udp {
        let u = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        u.bind(&addr.into()).map_err(|e| named("udp", e))?;
    }
    Ok(())
}

/// Bind (but do not listen on) `addr` with `SO_REUSEPORT`: the supervisor holds this socket so
/// that port 0 resolves to one port that every worker then binds, and so that the port stays
/// reserved while a worker restarts. A socket that never listens gets no connections.
///
/// # Errors
/// Socket or bind failure.
pub fn reserve_port(addr: SocketAddr) -> io::Result<(Socket, SocketAddr)> {
    let s = reuseport_socket(addr)?;
    let local = s
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an inet address"))?;
    Ok((s, local))
}

/// An upstream link's connection: plain TCP (with the explicit opt-in) or TLS, the proxy
/// being the client ([`crate::link_tls`]).
#[derive(Debug)]
pub enum LinkStream {
    /// Plain TCP.
    Plain(mio::net::TcpStream),
    /// TLS over TCP (boxed: the rustls state is a few KiB).
    Tls(Box<crate::tls::TlsStream<rustls::ClientConnection>>),
}

impl LinkStream {
    /// The TCP socket underneath (connect progress: `take_error`, `peer_addr`).
    pub fn tcp(&self) -> &mio::net::TcpStream {
        match self {
            LinkStream::Plain(s) => s,
            LinkStream::Tls(s) => s.tcp(),
        }
    }
}

impl io::Read for LinkStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            LinkStream::Plain(s) => s.read(buf),
            LinkStream::Tls(s) => s.read(buf),
        }
    }
}

impl io::Write for LinkStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            LinkStream::Plain(s) => s.write(buf),
            LinkStream::Tls(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            LinkStream::Plain(s) => s.write_vectored(bufs),
            LinkStream::Tls(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            LinkStream::Plain(s) => s.flush(),
            LinkStream::Tls(s) => s.flush(),
        }
    }
}

impl Source for LinkStream {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        match self {
            LinkStream::Plain(s) => s.register(registry, token, interests),
            LinkStream::Tls(s) => s.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        match self {
            LinkStream::Plain(s) => s.reregister(registry, token, interests),
            LinkStream::Tls(s) => s.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        match self {
            LinkStream::Plain(s) => s.deregister(registry),
            LinkStream::Tls(s) => s.deregister(registry),
        }
    }
}

/// Start a non-blocking connect to an upstream, with `TCP_NODELAY`.
///
/// # Errors
/// Socket creation failure (a refused connection shows up later, on the first event).
pub fn connect_upstream(addr: SocketAddr) -> io::Result<mio::net::TcpStream> {
    let s = mio::net::TcpStream::connect(addr)?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_shared() {
        let (_hold, addr) = reserve_port("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(addr.port(), 0);
        let a = TcpTransport::bind(addr, 16).unwrap();
        let b = TcpTransport::bind(addr, 16).unwrap();
        assert_eq!(a.local_addr().unwrap(), b.local_addr().unwrap());
    }
}
