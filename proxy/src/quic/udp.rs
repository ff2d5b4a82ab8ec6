//! The endpoint's UDP socket, in batches: `recvmmsg` (with GRO where the kernel coalesces)
//! on receive, and on send every datagram of one driver round queued, then sent as few
//! `sendmsg` calls as GSO allows, across connections.
//!
//! quinn-udp does the system calls (it has the `unsafe` this crate forbids). It batches
//! receives (`recvmmsg`, [`quinn_udp::BATCH_SIZE`] at a time) but sends one [`Transmit`] per
//! call: one destination, several equal-sized segments (GSO). So the send queue groups the
//! round's datagrams by destination (keeping their order), and each run of equal-sized ones is one GSO send. Connections
//! behind one address (many desktops behind one NAT, or a load generator's shared client
//! sockets) then share system calls; datagrams to distinct addresses still cost a `sendmsg`
//! each (`sendmmsg` across destinations is not in quinn-udp).

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tracing::debug;

/// Largest UDP payload one receive slot holds (GRO may put several datagrams in it).
const SLOT: usize = 65_536;
/// Most bytes one GSO send carries (the kernel's limit is 64 KiB of UDP payload).
const MAX_GSO_BYTES: usize = 60_000;
/// Queued bytes past which a round's datagrams are sent without waiting for its end.
const FLUSH_BYTES: usize = 1 << 20;

/// One datagram queued for sending: `len` bytes at `at` in the queue's buffer.
#[derive(Clone, Copy)]
struct Queued {
    to: SocketAddr,
    at: u32,
    len: u16,
}

/// The socket (quinn-udp's state for it: GSO/GRO support found at start).
pub(super) struct Socket {
    socket: mio::net::UdpSocket,
    state: UdpSocketState,
}

/// Receive slots for one `recvmmsg` batch.
pub(super) struct RecvBufs {
    slots: Vec<u8>,
    meta: Vec<RecvMeta>,
}

/// The datagrams of one driver round, waiting to be sent in batches.
#[derive(Default)]
pub(super) struct SendQueue {
    out: Vec<u8>,
    queued: Vec<Queued>,
    /// One GSO send's segments, back to back.
    run: Vec<u8>,
}

/// A received buffer: one datagram, or several of `stride` bytes (GRO).
pub(super) struct Received<'a> {
    pub(super) from: SocketAddr,
    pub(super) dst_ip: Option<IpAddr>,
    pub(super) data: &'a [u8],
    pub(super) stride: usize,
}

impl Socket {
    /// Wrap a bound non-blocking socket.
    ///
    /// # Errors
    /// The socket's options cannot be read or set.
    pub(super) fn new(socket: std::net::UdpSocket) -> io::Result<Socket> {
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Socket {
            socket: mio::net::UdpSocket::from_std(socket),
            state,
        })
    }

    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Receive one batch; `Ok(n)`: buffers `0..n` of `rx` are filled.
    ///
    /// # Errors
    /// Would-block when nothing is pending, or a socket error.
    pub(super) fn recv(&self, rx: &mut RecvBufs) -> io::Result<usize> {
        let mut bufs: Vec<IoSliceMut<'_>> =
            rx.slots.chunks_mut(SLOT).map(IoSliceMut::new).collect();
        self.state
            .recv((&self.socket).into(), &mut bufs, &mut rx.meta)
    }

    fn send(&self, t: &Transmit<'_>) {
        // A full socket buffer drops the datagrams: QUIC's loss recovery resends them.
        if let Err(e) = self.state.send((&self.socket).into(), t)
            && e.kind() != io::ErrorKind::WouldBlock
        {
            debug!(error = %e, to = %t.destination, "udp send");
        }
    }
}

delegate_source!(Socket, socket);

impl RecvBufs {
    pub(super) fn new() -> RecvBufs {
        let batch = quinn_udp::BATCH_SIZE;
        RecvBufs {
            slots: vec![0u8; SLOT * batch],
            meta: vec![RecvMeta::default(); batch],
        }
    }

    /// Received buffer `i` of the last [`Socket::recv`].
    pub(super) fn received(&self, i: usize) -> Received<'_> {
        let m = &self.meta[i];
        Received {
            from: m.addr,
            dst_ip: m.dst_ip,
            data: &self.slots[i * SLOT..i * SLOT + m.len],
            stride: m.stride.max(1),
        }
    }
}

impl SendQueue {
    /// Queue a datagram; sent by [`SendQueue::flush`] (or at once when the queue is large).
    pub(super) fn queue(&mut self, sock: &Socket, to: SocketAddr, data: &[u8]) {
        let (Ok(at), Ok(len)) = (u32::try_from(self.out.len()), u16::try_from(data.len())) else {
            // A datagram never exceeds 64 KiB, and the queue is flushed long before 4 GiB.
            return;
        };
        self.out.extend_from_slice(data);
        self.queued.push(Queued { to, at, len });
        if self.out.len() >= FLUSH_BYTES {
            self.flush(sock);
        }
    }

    /// Send everything queued: consecutive datagrams to one address as GSO sends of
    /// equal-sized segments (the last of each may be shorter).
    pub(super) fn flush(&mut self, sock: &Socket) {
        if self.queued.is_empty() {
            return;
        }
        // Stable, by destination only: one connection's datagrams keep their order (reordered
        // packets would look lost to the peer and make it acknowledge at once).
        self.queued.sort_by_key(|q| q.to);
        let max_segments = sock.state.max_gso_segments().max(1);
        let q = &self.queued;
        let mut i = 0;
        while i < q.len() {
            let first = q[i];
            let seg = usize::from(first.len);
            self.run.clear();
            let mut n = 0;
            while let Some(d) = q.get(i) {
                let len = usize::from(d.len);
                if d.to != first.to
                    || len > seg
                    || n == max_segments
                    || self.run.len() + len > MAX_GSO_BYTES
                {
                    break;
                }
                let at = d.at as usize;
                self.run.extend_from_slice(&self.out[at..at + len]);
                n += 1;
                i += 1;
                if len < seg {
                    // A shorter segment can only be the last.
                    break;
                }
            }
            sock.send(&Transmit {
                destination: first.to,
                ecn: None,
                contents: &self.run,
                segment_size: (n > 1).then_some(seg),
                src_ip: None,
            });
        }
        self.queued.clear();
        self.out.clear();
    }
}
