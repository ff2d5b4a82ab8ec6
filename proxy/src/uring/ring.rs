//! The unsafe edge of the io_uring driver, kept in one file: the ring (submission entries
//! point at memory the kernel uses after `push` returns), the ring of provided receive
//! buffers (memory shared with the kernel), and adopting the file descriptors the kernel
//! accepts. Everything else in `uring` is safe code over these three. The table of
//! registered files is managed here too (safe calls, but its ordering rule belongs with the
//! ring: see [`Ring::set_file`]).
//!
//! Why unsafe at all: the crate forbids it everywhere else, and the guide allows it only for a
//! measured win documented where used. An io_uring operation runs after the call that queued
//! it returns, so the compiler cannot check that what it reads or writes outlives it; each
//! block below says what keeps it alive.
#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use bytes::Bytes;
use io_uring::types::{BufRingEntry, Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

/// Where an operation finds its socket: a plain descriptor (the kernel looks it up in the
/// process's file table at each submission), or a slot of the ring's table of registered
/// files (looked up in the ring's own array, without the file reference count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sock {
    Fd(RawFd),
    Fixed(u32),
}

/// Build opcode `$op` on `$sock` (the crate takes either kind through a sealed trait, so each
/// kind is a separate call).
macro_rules! on_sock {
    ($sock:expr, $op:path $(, $arg:expr)*) => {
        match $sock {
            Sock::Fd(fd) => <$op>::new(Fd(fd) $(, $arg)*).build(),
            Sock::Fixed(slot) => <$op>::new(Fixed(slot) $(, $arg)*).build(),
        }
    };
}

/// One vectored send in flight: the frames (shared `Bytes`, cloned from the core's queue)
/// and the `iovec`s pointing into them. The driver keeps it in a slab until its completion
/// arrives, whatever happens to the connection in between, so the kernel never reads freed
/// memory.
pub(super) struct SendBufs {
    chunks: Vec<Bytes>,
    iov: Vec<libc::iovec>,
}

impl SendBufs {
    /// Empty, with room for `n` frames.
    pub(super) fn with_capacity(n: usize) -> SendBufs {
        SendBufs {
            chunks: Vec::with_capacity(n),
            iov: Vec::with_capacity(n),
        }
    }

    /// The frames to send (filled by the core).
    pub(super) fn chunks_mut(&mut self) -> &mut Vec<Bytes> {
        &mut self.chunks
    }

    /// Frames to send.
    pub(super) fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Bytes to send.
    pub(super) fn total(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// Point the iovecs at the chunks (after they are filled; they must not change until
    /// the send completes).
    fn build_iov(&mut self) {
        self.iov.clear();
        self.iov.extend(self.chunks.iter().map(|c| libc::iovec {
            iov_base: c.as_ptr() as *mut libc::c_void,
            iov_len: c.len(),
        }));
    }
}

/// The ring, with a submission that never fails for lack of room (it submits what is queued
/// and retries).
pub(super) struct Ring {
    ring: IoUring,
}

impl Ring {
    /// A ring with `entries` submission slots and a completion queue four times as large.
    ///
    /// # Errors
    /// io_uring unavailable (old kernel, seccomp, `kernel.io_uring_disabled`).
    pub(super) fn new(entries: u32) -> io::Result<Ring> {
        // Submit-all: a submission that fails to prepare completes with its error instead of
        // leaving the entries behind it in the queue, so a submit empties the queue (which
        // `set_file` relies on).
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_submit_all()
            .setup_cqsize(entries * 4)
            .build(entries)?;
        Ok(Ring { ring })
    }

    fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built by this file's methods points only at memory that
            // outlives the operation (see each caller); the others carry no pointer.
            let pushed = unsafe { self.ring.submission().push(e) };
            if pushed.is_ok() {
                return Ok(());
            }
            // Full: hand the queued entries to the kernel and try again.
            self.ring.submit()?;
        }
    }

    /// A multishot accept on `fd` (new sockets non-blocking, close-on-exec).
    pub(super) fn accept_multi(&mut self, fd: RawFd, ud: u64) -> io::Result<()> {
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        let e = opcode::AcceptMulti::new(Fd(fd))
            .flags(flags)
            .build()
            .user_data(ud);
        self.push(&e)
    }

    /// A multishot receive on `sock` into the provided buffers of `group`. No pointer: the
    /// kernel picks a buffer of that [`BufRing`] for each completion.
    pub(super) fn recv_multi(&mut self, sock: Sock, group: u16, ud: u64) -> io::Result<()> {
        let e = on_sock!(sock, opcode::RecvMulti, group).user_data(ud);
        self.push(&e)
    }

    /// A one-shot poll for `sock` writable (a link's connect finishing).
    pub(super) fn poll_out(&mut self, sock: Sock, ud: u64) -> io::Result<()> {
        let e = on_sock!(sock, opcode::PollAdd, libc::POLLOUT as u32).user_data(ud);
        self.push(&e)
    }

    /// Cancel the operation with user data `target`; the cancel's own completion carries `ud`.
    pub(super) fn cancel(&mut self, target: u64, ud: u64) -> io::Result<()> {
        let e = opcode::AsyncCancel::new(target).build().user_data(ud);
        self.push(&e)
    }

    /// A vectored send of `bufs` on `sock`.
    ///
    /// The caller keeps `bufs` (and so its heap blocks: the frames and the iovec array) alive
    /// and unchanged until this operation's completion is reaped: the driver stores it in its
    /// slab of sends under `ud` and removes it only then (also when the connection was closed
    /// meanwhile: the kernel holds its own reference to the socket until the send ends).
    pub(super) fn writev(&mut self, sock: Sock, bufs: &mut SendBufs, ud: u64) -> io::Result<()> {
        bufs.build_iov();
        let (iov, n) = (bufs.iov.as_ptr(), bufs.iov.len() as u32);
        let e = on_sock!(sock, opcode::Writev, iov, n).user_data(ud);
        self.push(&e)
    }

    /// An empty table of `n` registered files (then filled one slot at a time by
    /// [`Ring::set_file`]).
    ///
    /// # Errors
    /// The kernel refused: before 5.19 (no sparse tables), or `n` above `RLIMIT_NOFILE`.
    pub(super) fn register_files(&mut self, n: u32) -> io::Result<()> {
        self.ring.submitter().register_files_sparse(n)
    }

    /// Put `fd` in slot `slot` of the table of registered files, or empty the slot (`fd` -1).
    /// The slot holds its own reference to the socket: it stays open, whatever happens to
    /// `fd`, until the slot is emptied or replaced, which is why closing a connection must
    /// come here.
    ///
    /// An entry already queued names its socket by slot and the kernel looks the slot up when
    /// the entry is submitted, so everything queued is submitted first: those entries reach
    /// the slot's previous socket (an operation in flight keeps the file it was issued with),
    /// and none meant for a closed connection reaches the next one put in its slot.
    ///
    /// # Errors
    /// The submission or the update failed; or the queue could not be emptied (the kernel
    /// was busy), and then the slot is left as it was.
    pub(super) fn set_file(&mut self, slot: u32, fd: RawFd) -> io::Result<()> {
        if !self.ring.submission().is_empty() {
            self.ring.submit()?;
            if !self.ring.submission().is_empty() {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
        }
        self.ring.submitter().register_files_update(slot, &[fd])?;
        Ok(())
    }

    /// Submit everything queued and wait for one completion or `timeout` (`None`: do not wait).
    /// A timeout or a signal is not an error.
    ///
    /// # Errors
    /// The `io_uring_enter` failure.
    pub(super) fn submit_and_wait(
        &mut self,
        timeout: Option<std::time::Duration>,
    ) -> io::Result<()> {
        let res = match timeout {
            None => self.ring.submit(),
            Some(t) => {
                let ts = Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Move the completions out (user data, result, flags).
    pub(super) fn reap(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        let cq = self.ring.completion();
        out.extend(cq.map(|c: cqueue::Entry| (c.user_data(), c.result(), c.flags())));
    }

    /// Register `bufs` as the provided buffers of its group.
    ///
    /// # Errors
    /// The kernel refused (before 5.19: no buffer rings).
    pub(super) fn register(&mut self, bufs: &BufRing) -> io::Result<()> {
        // SAFETY: the ring's memory is a page-aligned block of `entries` entries owned by
        // `bufs`, which the driver keeps for the whole life of the ring (both live in the
        // driver and are dropped together, the ring first: see `Uring`'s field order).
        unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                bufs.ring as u64,
                bufs.entries,
                bufs.group,
                0,
            )
        }
    }
}

/// Receive buffers shared with the kernel (one buffer group): `entries` buffers of `size`
/// bytes, and the ring through which they are handed to it. The kernel takes one per receive completion; the
/// driver gives it back ([`BufRing::recycle`]) once the core has taken the bytes (copied
/// into its framing arena) or, for a desktop held back, when it is read later. No desktop
/// holds a buffer while idle: the buffers belong to the worker.
pub(super) struct BufRing {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    data: *mut u8,
    data_layout: Layout,
    entries: u16,
    size: usize,
    group: u16,
    /// Our copy of the tail (the kernel reads the shared one).
    tail: u16,
}

impl BufRing {
    /// `entries` (a power of two, at most 32768) buffers of `size` bytes, buffer group `group`.
    pub(super) fn new(group: u16, entries: u16, size: usize) -> BufRing {
        assert!(entries.is_power_of_two(), "buffer ring size");
        let ring_layout =
            Layout::from_size_align(usize::from(entries) * size_of::<BufRingEntry>(), 4096)
                .expect("buffer ring layout");
        let data_layout =
            Layout::from_size_align(usize::from(entries) * size, 4096).expect("buffer layout");
        // SAFETY: both layouts have a non-zero size. The blocks are freed in `Drop`, after
        // the ring that uses them is gone.
        let (ring, data) = unsafe { (alloc_zeroed(ring_layout), alloc_zeroed(data_layout)) };
        if ring.is_null() || data.is_null() {
            std::alloc::handle_alloc_error(ring_layout);
        }
        let mut b = BufRing {
            ring: ring.cast(),
            ring_layout,
            data,
            data_layout,
            entries,
            size,
            group,
            tail: 0,
        };
        for bid in 0..entries {
            b.push(bid);
        }
        b.publish();
        b
    }

    fn push(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `idx` < `entries`, inside the ring block. The kernel reads an entry only
        // between the head and the published tail; this one is past the published tail, so
        // only this thread touches it. Fields are set one by one: entry 0's `resv` is the
        // shared tail and must not be overwritten.
        unsafe {
            let e = &mut *self.ring.add(idx);
            e.set_addr(self.data.add(usize::from(bid) * self.size) as u64);
            e.set_len(self.size as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail is the `resv` field of entry 0, a u16 inside the ring block,
        // naturally aligned; the kernel reads it concurrently, hence the atomic store
        // (release: the entries written before it are visible to the kernel first).
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// The `len` bytes the kernel received into buffer `bid` (from a completion's flags).
    pub(super) fn get(&self, bid: u16, len: usize) -> &[u8] {
        assert!(
            bid < self.entries && len <= self.size,
            "buffer id from the kernel"
        );
        // SAFETY: in bounds (checked above). The kernel wrote this buffer before posting the
        // completion that named it and does not touch it again until it is recycled, which
        // takes `&mut self` (so no slice from here is alive then).
        unsafe { std::slice::from_raw_parts(self.data.add(usize::from(bid) * self.size), len) }
    }

    /// Give buffer `bid` back to the kernel.
    pub(super) fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    /// The group's id (for receives).
    pub(super) fn group(&self) -> u16 {
        self.group
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the ring that used them was dropped
        // before (field order of `Uring`), so the kernel no longer writes them.
        unsafe {
            dealloc(self.ring.cast(), self.ring_layout);
            dealloc(self.data, self.data_layout);
        }
    }
}

/// Own a socket the kernel accepted for us (a multishot accept's result).
pub(super) fn adopt(fd: RawFd) -> std::net::TcpStream {
    // SAFETY: a non-negative accept result is a new descriptor that nothing else in this
    // process knows of; the returned stream is its only owner and closes it.
    std::net::TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) })
}
