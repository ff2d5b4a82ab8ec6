//! Bounded admission to the engine and the DB worker (`engine_queue`, `db_queue`).
//!
//! Each queue is one channel, so that everything sent to the engine (a session opening, its
//! requests, its close) is handled in the order it was sent, but only *requests* are counted
//! against the cap: a request that finds its queue full is answered `OVERLOADED` (not sent)
//! at once by its sender, before anything changed. What must not be lost goes in uncounted:
//! sessions opening and closing, a link closing, a proxy dropping a link's subscription (it
//! does not retry it), and an interaction whose write was committed (`Submitted`). Those are
//! bounded by other means: one open and one close per session, one link close per link,
//! one `Submitted` per write in flight.
//!
//! The count is a [`Gauge`]: senders add one per queued request, the receiver takes one off
//! per request it takes out of the channel. It counts bytes too (`engine_queue_bytes`,
//! `db_queue_bytes`): a count alone would let 131,072 requests of 2 MiB each hold 256 GiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::ixn::Input;

/// How many counted items wait in a queue, and how many bytes they hold, against caps.
#[derive(Debug)]
pub struct Gauge {
    queued: AtomicUsize,
    cap: usize,
    bytes: AtomicUsize,
    byte_cap: usize,
    /// Items refused because the queue was full.
    pub refused: AtomicU64,
}

impl Gauge {
    /// A gauge admitting `cap` items at a time, while they hold under `byte_cap` bytes.
    pub fn new(cap: usize, byte_cap: usize) -> Gauge {
        Gauge {
            queued: AtomicUsize::new(0),
            cap: cap.max(1),
            bytes: AtomicUsize::new(0),
            byte_cap: byte_cap.max(1),
            refused: AtomicU64::new(0),
        }
    }

    /// Count one more item of `bytes` if the queue is under both caps; false (and counted as
    /// refused) if it is full. An item is admitted while the bytes queued are under the cap,
    /// so the bytes may pass it by one item's size per sender.
    pub fn try_take(&self, bytes: usize) -> bool {
        let ok = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .is_ok();
        let ok = ok && {
            let fits = self
                .bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                    (b < self.byte_cap).then_some(b.saturating_add(bytes))
                })
                .is_ok();
            if !fits {
                self.queued.fetch_sub(1, Ordering::AcqRel);
            }
            fits
        };
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Count one more item of `bytes` whatever the caps (it was admitted already, see
    /// [`Gauge::has_room`]).
    pub fn force(&self, bytes: usize) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// One item of `bytes` left the queue.
    pub fn done(&self, bytes: usize) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes of items that left the queue (counted out with [`Gauge::done`]`(0)`) are given
    /// back: for work whose memory is held after it left, until it is finished.
    pub fn release(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Whether an item would be admitted now (false is counted as a refusal). For a single
    /// consumer that then sends with [`Gauge::force`]: others may fill the queue in between,
    /// so it may pass the caps by what that one sender adds.
    pub fn has_room(&self) -> bool {
        let ok = self.queued.load(Ordering::Acquire) < self.cap
            && self.bytes.load(Ordering::Acquire) < self.byte_cap;
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Items queued now.
    pub fn depth(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Bytes the queued items hold now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

/// What the engine publishes about itself, for the admin `stats` command.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Subscriptions held (sessions' and links').
    pub subs: AtomicU64,
    /// Of them, held by proxy links.
    pub link_subs: AtomicU64,
    /// Distinct (tenant, topic) subscribed.
    pub sub_topics: AtomicU64,
    /// Subscriptions the engine's table has room for without growing (what it holds in
    /// memory, whether used or not).
    pub sub_slots: AtomicU64,
    /// Sessions detached from their connection, since start (PROTOCOL.md §4.6).
    pub sessions_detached: AtomicU64,
    /// Sessions resumed, since start.
    pub sessions_resumed: AtomicU64,
    /// Resumes refused, since start.
    pub resumes_refused: AtomicU64,
    /// Detached sessions ended when their grace ran out, since start.
    pub detached_expired: AtomicU64,
    /// Detached sessions ended because their events overflowed, since start.
    pub detached_overflowed: AtomicU64,
    /// Bytes of unicast events kept for replay, now.
    pub replay_bytes: AtomicU64,
    /// Sessions the engine holds now, attached or detached.
    pub sessions: AtomicU64,
    /// Of them, detached (kept for a resume), now.
    pub detached_sessions: AtomicU64,
}

/// One input on the engine's channel, and whether it was counted.
#[derive(Debug)]
pub struct Queued {
    input: Input,
    /// Bytes it was counted for; `None`: not counted (a control input).
    counted: Option<usize>,
}

/// Why a request was not queued for the engine.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: `OVERLOADED`.
    Full,
    /// The engine is gone.
    Stopped,
}

/// The engine's inbox, sending side. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineTx {
    tx: mpsc::UnboundedSender<Queued>,
    gauge: Arc<Gauge>,
    stats: Arc<EngineStats>,
}

/// The engine's inbox, receiving side.
#[derive(Debug)]
pub struct EngineRx {
    rx: mpsc::UnboundedReceiver<Queued>,
    gauge: Arc<Gauge>,
}

/// An engine inbox admitting `cap` requests at a time, while they hold under `byte_cap` bytes.
pub fn engine_channel(cap: usize, byte_cap: usize) -> (EngineTx, EngineRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let gauge = Arc::new(Gauge::new(cap, byte_cap));
    (
        EngineTx {
            tx,
            gauge: gauge.clone(),
            stats: Arc::new(EngineStats::default()),
        },
        EngineRx { rx, gauge },
    )
}

impl EngineTx {
    /// Queue an input that must not be lost (see the module docs); false if the engine is
    /// gone.
    pub fn control(&self, input: Input) -> bool {
        self.tx
            .send(Queued {
                input,
                counted: None,
            })
            .is_ok()
    }

    /// Queue a request, if the queue has room.
    ///
    /// # Errors
    /// [`Refused::Full`] at the cap, [`Refused::Stopped`] if the engine is gone.
    pub fn request(&self, input: Input) -> Result<(), Refused> {
        let bytes = match &input {
            Input::Request(_, f, _) => f.as_bytes().len(),
            _ => 0,
        };
        if !self.gauge.try_take(bytes) {
            return Err(Refused::Full);
        }
        let sent = self.tx.send(Queued {
            input,
            counted: Some(bytes),
        });
        if sent.is_err() {
            self.gauge.done(bytes);
            return Err(Refused::Stopped);
        }
        Ok(())
    }

    /// The request count and its cap.
    pub fn gauge(&self) -> &Gauge {
        &self.gauge
    }

    /// What the engine publishes about itself.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }
}

impl EngineRx {
    /// Take up to `limit` inputs into `out`, waiting for at least one; 0 when every sender is
    /// gone.
    pub async fn recv_many(&mut self, out: &mut Vec<Input>, limit: usize) -> usize {
        let mut got = Vec::with_capacity(limit.min(64));
        let n = self.rx.recv_many(&mut got, limit).await;
        out.extend(got.into_iter().map(|q| self.take(q)));
        n
    }

    /// Take one input, blocking the thread (tests, outside the runtime).
    pub fn blocking_recv(&mut self) -> Option<Input> {
        let q = self.rx.blocking_recv()?;
        Some(self.take(q))
    }

    fn take(&self, q: Queued) -> Input {
        if let Some(bytes) = q.counted {
            self.gauge.done(bytes);
        }
        q.input
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_requests_but_never_controls() {
        let (tx, mut rx) = engine_channel(2, usize::MAX);
        assert_eq!(tx.request(Input::LinkClosed(1)), Ok(()));
        assert_eq!(tx.request(Input::LinkClosed(2)), Ok(()));
        assert_eq!(tx.request(Input::LinkClosed(3)), Err(Refused::Full));
        assert_eq!(tx.gauge().refused.load(Ordering::Relaxed), 1);
        // Closes always get in, and in order.
        assert!(tx.control(Input::LinkClosed(4)));
        assert_eq!(tx.gauge().depth(), 2);
        let ids: Vec<u64> = std::iter::from_fn(|| match rx.rx.try_recv() {
            Ok(q) => match rx.take(q) {
                Input::LinkClosed(id) => Some(id),
                _ => None,
            },
            Err(_) => None,
        })
        .collect();
        assert_eq!(ids, [1, 2, 4]);
        // Taking them out made room again.
        assert_eq!(tx.gauge().depth(), 0);
        assert_eq!(tx.request(Input::LinkClosed(5)), Ok(()));
    }

    #[test]
    fn has_room_then_force_passes_the_cap_by_one_at_most() {
        let g = Gauge::new(1, usize::MAX);
        assert!(g.has_room());
        assert!(g.try_take(0));
        assert!(!g.has_room());
        g.force(0);
        assert_eq!(g.depth(), 2);
        g.done(0);
        g.done(0);
        assert!(g.try_take(0));
    }

    /// Bytes are a cap of their own: few large items fill the queue as many small ones do,
    /// and a refusal by bytes leaves the count as it was.
    #[test]
    fn large_items_fill_the_queue_by_bytes() {
        let g = Gauge::new(100, 1000);
        assert!(g.try_take(600));
        // Under the byte cap when it arrives: admitted, passing the cap by its size at most.
        assert!(g.try_take(600));
        assert_eq!(g.bytes(), 1200);
        assert!(!g.try_take(1));
        assert!(!g.has_room());
        assert_eq!((g.depth(), g.refused.load(Ordering::Relaxed)), (2, 2));
        g.done(600);
        assert!(g.try_take(10));
        assert_eq!((g.depth(), g.bytes()), (2, 610));
    }
}
