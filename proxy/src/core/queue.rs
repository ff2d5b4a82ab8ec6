//! Outbound queues: frames waiting for one socket, as shared `Bytes`, handed to the driver as
//! `IoSlice`s for one vectored write.
//!
//! - [`OutQueue`] is a desktop's: one FIFO, bounded in frames and bytes (the slow-consumer rule).
//! - [`LinkQueue`] is a link's. Many tenants share a link, so one tenant's burst must not sit in
//!   front of every other tenant's requests: requests wait in one lane per tenant, and lanes
//!   are drained by deficit round robin (each turn a lane may send up to [`QUANTUM`] bytes, and
//!   a frame larger than that waits for its lane's deficit to grow). The proxy's own frames
//!   (link hello, heartbeats, `SESSION_CLOSE`, unsubscribes) go before any lane: they keep the
//!   link alive and must never wait behind a burst. Frames picked for writing move to a
//!   *staged* FIFO whose order is final: its front may be partly written already.
//!
//! Every queued link frame carries its link correlation id next to its bytes ([`Queued`]), so
//! "which requests were completely written" never depends on parallel queues kept in step.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::IoSlice;

use bytes::Bytes;

/// Bytes a lane may send per round-robin turn.
pub const QUANTUM: usize = 16 * 1024;
/// Frames staged for writing at a time (one vectored write takes at most this many).
pub const STAGE: usize = 64;

/// Why a frame could not be queued towards a desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("outbound queue overflow: slow consumer")]
pub struct Overflow;

/// Frames waiting for a desktop socket. `off` is how much of the front frame is written.
///
/// A desktop usually has one frame queued at a time (an answer, one broadcast event), so one
/// frame is held without a heap allocation ([`Frames::One`]): a broadcast to 20,000
/// subscribers is then 20,000 reference-count increments, not 20,000 allocations and frees.
/// The counters are `u32` so that the queue is no larger than a bare `VecDeque` plus two
/// `usize`s were (an idle desktop's size is a budget, `Desktop`'s test); `push` refuses what
/// would not fit them, which is far past any configurable bound.
#[derive(Debug, Default)]
pub struct OutQueue {
    q: Frames,
    bytes: u32,
    off: u32,
}

/// The frames of an [`OutQueue`], front first.
#[derive(Debug, Default)]
enum Frames {
    #[default]
    Empty,
    One(Bytes),
    /// Two or more.
    Many(VecDeque<Bytes>),
}

impl OutQueue {
    /// Queue a frame, enforcing `max_frames` and `max_bytes`.
    ///
    /// # Errors
    /// [`Overflow`]: the consumer is too slow; the caller disconnects it.
    pub fn push(&mut self, b: Bytes, max_frames: usize, max_bytes: usize) -> Result<(), Overflow> {
        let max_bytes = max_bytes.min(u32::MAX as usize);
        if self.len() >= max_frames || self.bytes as usize + b.len() > max_bytes {
            return Err(Overflow);
        }
        self.push_unbounded(b);
        Ok(())
    }

    /// Queue a frame whatever the bounds (the last error frame of a desktop being closed).
    pub fn push_unbounded(&mut self, b: Bytes) {
        self.bytes = self
            .bytes
            .saturating_add(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.q = match std::mem::take(&mut self.q) {
            Frames::Empty => Frames::One(b),
            Frames::One(a) => {
                let mut q = VecDeque::with_capacity(4);
                q.push_back(a);
                q.push_back(b);
                Frames::Many(q)
            }
            Frames::Many(mut q) => {
                q.push_back(b);
                Frames::Many(q)
            }
        };
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        matches!(self.q, Frames::Empty)
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        match &self.q {
            Frames::Empty => 0,
            Frames::One(_) => 1,
            Frames::Many(q) => q.len(),
        }
    }

    /// Bytes queued (the front frame counted whole).
    pub fn bytes(&self) -> usize {
        self.bytes as usize
    }

    /// Fill `iov` with the unwritten bytes, front first; returns the slices used.
    pub fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let off = self.off as usize;
        match &self.q {
            Frames::Empty => 0,
            Frames::One(b) => match iov.first_mut() {
                Some(s) => {
                    *s = IoSlice::new(&b[off..]);
                    1
                }
                None => 0,
            },
            Frames::Many(q) => {
                let mut n = 0;
                for (k, b) in q.iter().take(iov.len()).enumerate() {
                    iov[k] = IoSlice::new(if k == 0 { &b[off..] } else { b });
                    n += 1;
                }
                n
            }
        }
    }

    /// Push shared handles to the unwritten bytes (at most `max` frames) onto `out`, for a
    /// driver whose write completes later (io_uring): the handles keep the bytes alive
    /// whatever happens to the queue meanwhile. Returns how many were pushed.
    pub fn chunks(&self, out: &mut Vec<Bytes>, max: usize) -> usize {
        let off = self.off as usize;
        match &self.q {
            Frames::Empty => 0,
            Frames::One(b) => {
                if max == 0 {
                    return 0;
                }
                out.push(b.slice(off..));
                1
            }
            Frames::Many(q) => {
                for (k, b) in q.iter().take(max).enumerate() {
                    out.push(if k == 0 { b.slice(off..) } else { b.clone() });
                }
                q.len().min(max)
            }
        }
    }

    /// Account for `n` written bytes; returns the bytes of the frames completed (which leave
    /// the queue). Frees the queue's memory once it is empty, so an idle desktop holds none.
    pub fn consume(&mut self, n: usize) -> usize {
        let mut n = n;
        let mut freed = 0usize;
        let off = self.off as usize;
        match &mut self.q {
            Frames::Empty => {}
            Frames::One(b) => {
                if n >= b.len() - off {
                    freed = b.len();
                    self.off = 0;
                    self.q = Frames::Empty;
                } else {
                    self.off += n as u32;
                }
            }
            Frames::Many(q) => {
                while n > 0 {
                    let Some(front) = q.front() else { break };
                    let left = front.len() - self.off as usize;
                    if n >= left {
                        n -= left;
                        freed += front.len();
                        self.off = 0;
                        q.pop_front();
                    } else {
                        self.off += n as u32;
                        n = 0;
                    }
                }
                if q.len() <= 1 {
                    self.q = q.pop_front().map_or(Frames::Empty, Frames::One);
                }
            }
        }
        self.bytes -= freed as u32;
        freed
    }

    /// Drop everything except a partly written front frame (which must be finished for
    /// anything after it to be readable); returns the bytes freed.
    pub fn truncate_to_partial(&mut self) -> usize {
        let before = self.bytes;
        let front = match std::mem::take(&mut self.q) {
            Frames::Empty => None,
            Frames::One(b) => Some(b),
            Frames::Many(mut q) => q.pop_front(),
        };
        let kept = front.filter(|_| self.off > 0);
        self.bytes = kept.as_ref().map_or(0, |b| b.len() as u32);
        self.q = kept.map_or(Frames::Empty, Frames::One);
        (before - self.bytes) as usize
    }
}

/// One frame queued on a link, with the link correlation id of the request it carries (0:
/// nobody waits for an answer, e.g. `SESSION_CLOSE` or a heartbeat answer).
#[derive(Debug, Clone)]
pub struct Queued {
    /// The encoded frame.
    pub bytes: Bytes,
    /// Its link correlation id, or 0.
    pub id: u64,
    /// Queued in a tenant lane (counted in `request_bytes`).
    lane: bool,
}

impl Queued {
    /// A frame and its link correlation id (0: nobody waits for an answer).
    pub fn new(bytes: Bytes, id: u64) -> Queued {
        Queued {
            bytes,
            id,
            lane: false,
        }
    }
}

/// Hashes a tenant id with one multiplication (Fibonacci hashing): lanes are looked up for
/// every request, and tenant ids are authenticated, not chosen to collide.
#[derive(Debug, Default, Clone, Copy)]
struct TenantHasher(u64);

impl Hasher for TenantHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Debug, Default)]
struct Lane {
    q: VecDeque<Queued>,
    deficit: usize,
}

/// A link's write queue: control first, then tenant lanes by deficit round robin.
#[derive(Debug, Default)]
pub struct LinkQueue {
    /// Picked for writing, in final order; the front may be partly written (`off`).
    staged: VecDeque<Queued>,
    off: usize,
    /// The proxy's own frames.
    control: VecDeque<Queued>,
    /// Desktop requests, one lane per tenant.
    lanes: HashMap<u32, Lane, BuildHasherDefault<TenantHasher>>,
    /// Tenants whose lane holds frames, in turn order.
    active: VecDeque<u32>,
    /// Everything queued (staged included), bytes.
    bytes: usize,
    /// Desktop requests queued and not yet fully written, bytes (what the link cap bounds).
    request_bytes: usize,
}

impl LinkQueue {
    /// Queue one of the proxy's own frames (goes before any tenant's requests).
    pub fn push_control(&mut self, q: Queued) {
        self.bytes += q.bytes.len();
        self.control.push_back(q);
    }

    /// Queue a desktop request of `tenant`.
    pub fn push_request(&mut self, tenant: u32, mut q: Queued) {
        q.lane = true;
        self.bytes += q.bytes.len();
        self.request_bytes += q.bytes.len();
        let lane = self.lanes.entry(tenant).or_default();
        if lane.q.is_empty() {
            self.active.push_back(tenant);
        }
        lane.q.push_back(q);
    }

    /// Bytes queued (all kinds).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Desktop request bytes queued.
    pub fn request_bytes(&self) -> usize {
        self.request_bytes
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Move frames into the staged FIFO: all control frames, then lanes in turn, each turn
    /// adding [`QUANTUM`] to the lane's deficit and taking the frames that fit in it.
    fn stage(&mut self) {
        while self.staged.len() < STAGE
            && let Some(q) = self.control.pop_front()
        {
            self.staged.push_back(q);
        }
        while self.staged.len() < STAGE
            && let Some(t) = self.active.pop_front()
        {
            let Some(lane) = self.lanes.get_mut(&t) else {
                continue;
            };
            lane.deficit += QUANTUM;
            while self.staged.len() < STAGE
                && let Some(front) = lane.q.front()
                && front.bytes.len() <= lane.deficit
            {
                lane.deficit -= front.bytes.len();
                if let Some(q) = lane.q.pop_front() {
                    self.staged.push_back(q);
                }
            }
            if lane.q.is_empty() {
                // An idle lane keeps no credit (DRR) and no memory.
                self.lanes.remove(&t);
            } else {
                self.active.push_back(t);
            }
        }
    }

    /// Fill `iov` with the next bytes to write; returns the slices used.
    pub fn slices<'a>(&'a mut self, iov: &mut [IoSlice<'a>]) -> usize {
        self.stage();
        let mut n = 0;
        for (k, q) in self.staged.iter().take(iov.len()).enumerate() {
            iov[k] = IoSlice::new(if k == 0 {
                &q.bytes[self.off..]
            } else {
                &q.bytes
            });
            n += 1;
        }
        n
    }

    /// Like [`OutQueue::chunks`]: shared handles to the next bytes to write.
    pub fn chunks(&mut self, out: &mut Vec<Bytes>, max: usize) -> usize {
        self.stage();
        for (k, q) in self.staged.iter().take(max).enumerate() {
            out.push(if k == 0 {
                q.bytes.slice(self.off..)
            } else {
                q.bytes.clone()
            });
        }
        self.staged.len().min(max)
    }

    /// Account for `n` written bytes; returns the bytes of the frames completely written
    /// (which leave the queue: what is still in it when the link fails was not sent).
    pub fn consume(&mut self, mut n: usize) -> usize {
        let mut freed = 0;
        while n > 0 {
            let Some(front) = self.staged.front() else {
                break;
            };
            let left = front.bytes.len() - self.off;
            if n < left {
                self.off += n;
                break;
            }
            n -= left;
            self.off = 0;
            if let Some(q) = self.staged.pop_front() {
                freed += q.bytes.len();
                if q.lane {
                    self.request_bytes -= q.bytes.len();
                }
            }
        }
        self.bytes -= freed;
        freed
    }

    /// The link is gone: every frame not completely written (a partly written one included:
    /// the server cannot have read all of it), and the bytes freed.
    pub fn take_all(&mut self) -> (Vec<Queued>, usize) {
        let mut out: Vec<Queued> = self.staged.drain(..).collect();
        out.extend(self.control.drain(..));
        for (_, lane) in self.lanes.drain() {
            out.extend(lane.q);
        }
        self.active.clear();
        self.off = 0;
        self.request_bytes = 0;
        (out, std::mem::take(&mut self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(tenant: u32, k: u64, len: usize) -> Queued {
        Queued::new(Bytes::from(vec![tenant as u8; len]), k)
    }

    /// Write everything, one vectored write at a time; the ids of the requests, in the order
    /// they were completely written.
    fn write_all(l: &mut LinkQueue) -> Vec<u64> {
        let mut ids = Vec::new();
        loop {
            let mut iov = [IoSlice::new(&[]); STAGE];
            let n = l.slices(&mut iov);
            if n == 0 {
                return ids;
            }
            let len: usize = iov[..n].iter().map(|s| s.len()).sum();
            // Everything staged is written by this write, in staged order.
            let written: Vec<u64> = l.staged.iter().map(|q| q.id).collect();
            l.consume(len);
            ids.extend(written.into_iter().filter(|id| *id != 0));
        }
    }

    #[test]
    fn desktop_queue_bounds_and_frees() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abcd"), 2, 100).unwrap();
        q.push(Bytes::from_static(b"ef"), 2, 100).unwrap();
        assert_eq!(q.push(Bytes::from_static(b"g"), 2, 100), Err(Overflow));
        assert_eq!(q.consume(3), 0);
        let mut iov = [IoSlice::new(&[]); 4];
        let n = q.slices(&mut iov);
        assert_eq!((n, &*iov[0], &*iov[1]), (2, &b"d"[..], &b"ef"[..]));
        assert_eq!(q.consume(3), 6);
        assert!(q.is_empty() && q.bytes() == 0);
        let mut q = OutQueue::default();
        assert_eq!(q.push(Bytes::from(vec![0; 101]), 10, 100), Err(Overflow));
    }

    #[test]
    fn one_frame_is_held_without_allocation_and_the_queue_stays_small() {
        // `Desktop`'s size budget counts on this.
        assert!(std::mem::size_of::<OutQueue>() <= 48);
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abc"), 4, 100).unwrap();
        assert!(matches!(q.q, Frames::One(_)));
        assert_eq!(q.consume(1), 0, "partly written");
        q.push(Bytes::from_static(b"de"), 4, 100).unwrap();
        let mut iov = [IoSlice::new(&[]); 4];
        let n = q.slices(&mut iov);
        assert_eq!((n, &*iov[0], &*iov[1]), (2, &b"bc"[..], &b"de"[..]));
        assert_eq!(q.consume(3), 3, "the front frame completed");
        assert!(matches!(q.q, Frames::One(_)), "back to one frame: no heap");
        assert_eq!((q.len(), q.bytes()), (1, 2));
        let mut iov = [IoSlice::new(&[]); 4];
        let n = q.slices(&mut iov);
        assert_eq!((n, &*iov[0]), (1, &b"e"[..]));
        q.push(Bytes::from_static(b"fg"), 4, 100).unwrap();
        assert_eq!(
            q.truncate_to_partial(),
            2,
            "only the partly written front stays"
        );
        assert_eq!((q.len(), q.bytes()), (1, 2));
        assert_eq!(q.consume(1), 2);
        assert!(q.is_empty() && q.bytes() == 0);
        // Nothing written yet: truncating drops everything.
        q.push(Bytes::from_static(b"hi"), 4, 100).unwrap();
        assert_eq!(q.truncate_to_partial(), 2);
        assert!(q.is_empty());
        // The bounds count the held frame.
        q.push(Bytes::from_static(b"j"), 1, 100).unwrap();
        assert_eq!(q.push(Bytes::from_static(b"k"), 1, 100), Err(Overflow));
        assert_eq!(q.push(Bytes::from_static(b"k"), 4, 1), Err(Overflow));
    }

    #[test]
    fn control_first_then_tenants_take_turns() {
        let mut l = LinkQueue::default();
        // Tenant 1 bursts 100 requests of 8 KiB, then tenant 2 sends one.
        for k in 0..100 {
            l.push_request(1, q(1, 1000 + k, 8 * 1024));
        }
        l.push_request(2, q(2, 2000, 100));
        l.push_control(q(0, 0, 32));
        let ids = write_all(&mut l);
        // The control frame (id 0) is not reported; tenant 2's request is written after at
        // most one quantum of tenant 1's (two 8 KiB frames), not after all 100.
        let pos = ids.iter().position(|i| *i == 2000).unwrap();
        assert!(pos <= 2, "tenant 2 waited behind {pos} frames");
        assert_eq!(ids.len(), 101);
        assert!(l.is_empty() && l.request_bytes() == 0);
    }

    #[test]
    fn big_frames_wait_for_their_deficit_and_partial_writes_keep_order() {
        let mut l = LinkQueue::default();
        l.push_request(1, q(1, 1, 40 * 1024));
        l.push_request(2, q(2, 2, 10));
        let mut iov = [IoSlice::new(&[]); STAGE];
        let n = l.slices(&mut iov);
        // Tenant 1's 40 KiB frame needs three turns of credit; tenant 2's goes first.
        assert_eq!(iov[..n][0].len(), 10);
        l.consume(5);
        assert_eq!(l.staged.len(), 2, "partly written: still queued");
        // The partly written frame stays first whatever else is queued meanwhile.
        l.push_control(q(0, 0, 32));
        let mut iov = [IoSlice::new(&[]); STAGE];
        let n = l.slices(&mut iov);
        assert_eq!(iov[..n][0].len(), 5);
        assert_eq!(write_all(&mut l), vec![2, 1]);
    }

    #[test]
    fn failure_returns_everything_unwritten() {
        let mut l = LinkQueue::default();
        l.push_request(1, q(1, 7, 100));
        l.push_request(2, q(2, 8, 100));
        let mut iov = [IoSlice::new(&[]); STAGE];
        let _ = l.slices(&mut iov);
        l.consume(50);
        let (left, freed) = l.take_all();
        let mut ids: Vec<u64> = left.iter().map(|q| q.id).collect();
        ids.sort_unstable();
        assert_eq!((ids, freed), (vec![7, 8], 200));
        assert!(l.is_empty());
    }
}
