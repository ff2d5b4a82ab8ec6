//! Registered files for the io_uring driver: each desktop and link socket is also put in the
//! ring's table of registered files, and its operations name it by slot (`Sock::Fixed`), so
//! that a submission skips the kernel's lookup in the process's file table (and the file
//! reference count taken and dropped with it).
//!
//! The socket itself stays an ordinary descriptor owned by the worker (the core's accept
//! needs its peer address, a refused desktop gets a frame written to it, closing desktops
//! linger with `shutdown`): the table holds a second reference, given up when the connection
//! is closed ([`Files::close_desktop`], [`Files::close_link`]). The table's slots follow the
//! driver's own numbering: links first (link index `i` → slot `i`), then desktops (core slot
//! `s` → slot `LINK_SLOTS + s`); a connection whose number falls outside the table uses its
//! plain descriptor. The environment variable `DESKMUX_URING_REGISTERED_FILES=off`, or a
//! kernel that refuses the table, leaves every connection on plain descriptors.

use std::io;
use std::os::fd::RawFd;

use tracing::warn;

use super::ring::{Ring, Sock};

/// Table slots kept for links (a worker has one link per upstream instance).
const LINK_SLOTS: u32 = 256;
/// The largest table asked for (the kernel's own cap is 1 << 20; a slot costs it 8 bytes).
const MAX_TABLE: u64 = 1 << 20;
/// The switch for benchmarks and for kernels where registered files misbehave.
pub(super) const ENV_SWITCH: &str = "DESKMUX_URING_REGISTERED_FILES";

/// Which connections use the ring's table of registered files.
#[derive(Debug)]
pub(super) struct Files {
    /// Slots in the registered table; 0: no table, plain descriptors only.
    size: u32,
}

impl Files {
    /// Plain descriptors only.
    pub(super) fn off() -> Files {
        Files { size: 0 }
    }

    /// Whether the environment turns registered files off (`off`, `0`, `false`, `no`).
    pub(super) fn disabled_by_env() -> bool {
        std::env::var(ENV_SWITCH).is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "off" | "0" | "false" | "no"
            )
        })
    }

    /// A table for the links and `max_desktops` desktops, at most `fd_limit` slots (the kernel
    /// refuses a table larger than `RLIMIT_NOFILE`).
    ///
    /// # Errors
    /// The kernel refused the table (before 5.19, or a limit): the caller goes on with
    /// [`Files::off`].
    pub(super) fn register(
        ring: &mut Ring,
        max_desktops: usize,
        fd_limit: Option<u64>,
    ) -> io::Result<Files> {
        let want = (max_desktops as u64).saturating_add(u64::from(LINK_SLOTS));
        let size = want.min(fd_limit.unwrap_or(MAX_TABLE)).min(MAX_TABLE) as u32;
        ring.register_files(size)?;
        Ok(Files { size })
    }

    /// Slots in the table (0: none).
    pub(super) fn size(&self) -> u32 {
        self.size
    }

    fn desktop_slot(&self, slot: u32) -> Option<u32> {
        slot.checked_add(LINK_SLOTS).filter(|&t| t < self.size)
    }

    fn link_slot(&self, index: u16) -> Option<u32> {
        Some(u32::from(index)).filter(|&t| t < LINK_SLOTS && t < self.size)
    }

    /// How operations name desktop `slot`'s socket `fd`.
    pub(super) fn desktop(&self, slot: u32, fd: RawFd) -> Sock {
        self.desktop_slot(slot).map_or(Sock::Fd(fd), Sock::Fixed)
    }

    /// How operations name link `index`'s socket `fd`.
    pub(super) fn link(&self, index: u16, fd: RawFd) -> Sock {
        self.link_slot(index).map_or(Sock::Fd(fd), Sock::Fixed)
    }

    /// Put a new desktop's socket in its slot (before any operation names it).
    ///
    /// # Errors
    /// The kernel refused the update: the caller closes the desktop (its operations would name
    /// an empty slot).
    pub(super) fn open_desktop(&self, ring: &mut Ring, slot: u32, fd: RawFd) -> io::Result<()> {
        match self.desktop_slot(slot) {
            Some(t) => ring.set_file(t, fd),
            None => Ok(()),
        }
    }

    /// Put a new link's socket in its slot (before any operation names it).
    ///
    /// # Errors
    /// As [`Files::open_desktop`].
    pub(super) fn open_link(&self, ring: &mut Ring, index: u16, fd: RawFd) -> io::Result<()> {
        match self.link_slot(index) {
            Some(t) => ring.set_file(t, fd),
            None => Ok(()),
        }
    }

    /// Give up the table's reference to a closed desktop's socket, so that closing the
    /// descriptor closes the connection.
    pub(super) fn close_desktop(&self, ring: &mut Ring, slot: u32) {
        if let Some(t) = self.desktop_slot(slot) {
            Self::clear(ring, t);
        }
    }

    /// As [`Files::close_desktop`], for a link.
    pub(super) fn close_link(&self, ring: &mut Ring, index: u16) {
        if let Some(t) = self.link_slot(index) {
            Self::clear(ring, t);
        }
    }

    fn clear(ring: &mut Ring, t: u32) {
        if let Err(e) = ring.set_file(t, -1) {
            // The socket stays open until the slot is reused (which replaces it).
            warn!(error = %e, slot = t, "io_uring: registered file not released");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::super::ring::BufRing;
    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    /// A ring with a ring of 8 provided buffers (group 0) and a table for 4 desktops; `None`
    /// (the test is skipped, saying so) where io_uring is unavailable.
    fn ring_with_files() -> Option<(Ring, BufRing, Files)> {
        let Ok(mut ring) = Ring::new(64) else {
            eprintln!("io_uring unavailable here: test skipped");
            return None;
        };
        let bufs = BufRing::new(0, 8, 256);
        ring.register(&bufs).unwrap();
        let files = Files::register(&mut ring, 4, None).unwrap();
        Some((ring, bufs, files))
    }

    /// Wait (bounded) for the completion with user data `ud`; its result and flags.
    fn wait_for(ring: &mut Ring, ud: u64) -> (i32, u32) {
        let mut out = Vec::new();
        for _ in 0..500 {
            ring.submit_and_wait(Some(Duration::from_millis(20)))
                .unwrap();
            ring.reap(&mut out);
            if let Some(&(_, res, flags)) = out.iter().find(|c| c.0 == ud) {
                return (res, flags);
            }
        }
        panic!("no completion for {ud}");
    }

    #[test]
    fn slots_map_links_then_desktops_and_fall_back_past_the_table() {
        let f = Files {
            size: LINK_SLOTS + 10,
        };
        assert_eq!(f.link(0, 7), Sock::Fixed(0));
        assert_eq!(f.link(255, 7), Sock::Fixed(255));
        assert_eq!(f.link(256, 7), Sock::Fd(7));
        assert_eq!(f.desktop(0, 9), Sock::Fixed(LINK_SLOTS));
        assert_eq!(f.desktop(9, 9), Sock::Fixed(LINK_SLOTS + 9));
        assert_eq!(f.desktop(10, 9), Sock::Fd(9));
        assert_eq!(f.desktop(u32::MAX, 9), Sock::Fd(9));
        let off = Files::off();
        assert_eq!(off.link(0, 3), Sock::Fd(3));
        assert_eq!(off.desktop(0, 3), Sock::Fd(3));
    }

    /// The lifetime rule: a registered slot keeps the socket open after its descriptor is
    /// closed, until the slot is cleared; and a cleared slot no longer reaches it.
    #[test]
    fn a_slot_holds_the_socket_until_cleared() {
        let Some((mut ring, bufs, files)) = ring_with_files() else {
            return;
        };
        let (ours, mut peer) = pair();
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        files.open_desktop(&mut ring, 2, ours.as_raw_fd()).unwrap();
        let sock = files.desktop(2, ours.as_raw_fd());
        assert_eq!(sock, Sock::Fixed(LINK_SLOTS + 2));
        drop(ours);

        // Closed descriptor, registered slot: the connection still works through the slot.
        peer.write_all(b"ping").unwrap();
        ring.recv_multi(sock, bufs.group(), 1).unwrap();
        let (res, flags) = wait_for(&mut ring, 1);
        assert_eq!(res, 4, "received through the registered slot");
        let bid = io_uring::cqueue::buffer_select(flags).unwrap();
        assert_eq!(bufs.get(bid, 4), b"ping");
        ring.cancel(1, 2).unwrap();
        wait_for(&mut ring, 2);
        peer.set_nonblocking(true).unwrap();
        let mut b = [0u8; 8];
        let open = peer.read(&mut b).map_err(|e| e.kind());
        assert_eq!(open, Err(io::ErrorKind::WouldBlock), "slot keeps it open");

        // Cleared: the peer sees the close, and the slot reaches nothing.
        files.close_desktop(&mut ring, 2);
        peer.set_nonblocking(false).unwrap();
        assert_eq!(peer.read(&mut b).unwrap(), 0, "peer sees EOF once cleared");
        ring.poll_out(sock, 3).unwrap();
        assert_eq!(wait_for(&mut ring, 3).0, -libc::EBADF);
    }

    /// Entries queued before a slot is given to another socket still reach the one they were
    /// queued for.
    #[test]
    fn queued_entries_reach_the_slots_old_socket() {
        let Some((mut ring, bufs, files)) = ring_with_files() else {
            return;
        };
        let (old, mut old_peer) = pair();
        let (new, mut new_peer) = pair();
        files.open_desktop(&mut ring, 0, old.as_raw_fd()).unwrap();
        let sock = files.desktop(0, old.as_raw_fd());
        // Queued, not yet submitted, when the slot changes hands.
        ring.recv_multi(sock, bufs.group(), 10).unwrap();
        files.close_desktop(&mut ring, 0);
        files.open_desktop(&mut ring, 0, new.as_raw_fd()).unwrap();
        old_peer.write_all(b"old").unwrap();
        let (res, flags) = wait_for(&mut ring, 10);
        assert_eq!(res, 3, "the receive queued for the old socket reads it");
        let bid = io_uring::cqueue::buffer_select(flags).unwrap();
        assert_eq!(bufs.get(bid, 3), b"old");
        // And the slot now reaches the new socket.
        new_peer.write_all(b"new!").unwrap();
        ring.recv_multi(files.desktop(0, new.as_raw_fd()), bufs.group(), 11)
            .unwrap();
        let (res, flags) = wait_for(&mut ring, 11);
        assert_eq!(res, 4);
        let bid = io_uring::cqueue::buffer_select(flags).unwrap();
        assert_eq!(bufs.get(bid, 4), b"new!");
    }
}
