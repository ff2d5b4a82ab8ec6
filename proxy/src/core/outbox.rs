//! Frames towards desktops, and desktops leaving.
//!
//! Everything queued for a desktop goes through [`Outboxes::push`]: its queue bounds and the
//! worker's budget decide there whether it is queued or the desktop is a slow consumer. A
//! desktop that leaves, for whatever reason, goes through `close_desktop` (servers told,
//! subscriptions left, bytes released) and is removed once its last frames were handed to the
//! driver (`settle`), so that an error frame sent before a close is read before it.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use deskmux_codec::msg;
use deskmux_codec::{
    ErrorCode, Frame, Head, Kind, Service, control_error, empty_frame, error_response,
};
use slab::Slab;
use tracing::debug;

use super::budget::Budget;
use super::desktop::{self, Desktop, Phase};
use super::{Core, DIRTY, DesktopId, Endpoint, FD, Io, LinkState};
use crate::config::Limits;
use crate::error::{Disconnect, ProxyError};

impl Core {
    /// Start closing a desktop: tell the servers, leave subscriptions, stop reading; it is
    /// dropped once its queue is handed over (or after [`CLOSE_FLUSH`]).
    pub(super) fn close_desktop(&mut self, now: Instant, slot: usize, why: Disconnect) {
        let now_ms = self.ms(now);
        let Some(d) = self.desktops.get(slot) else {
            return;
        };
        if d.phase == Phase::Closing {
            return;
        }
        debug!(
            sid = d.sid,
            reason = why.name(),
            source = ?self.sources.ip(d.source),
            tenant = d.tenant,
            "closing"
        );
        if why == Disconnect::TlsError {
            let tenant = d.tenant;
            self.note_failure(slot, "tls", tenant);
        }
        let Some(d) = self.desktops.get_mut(slot) else {
            return;
        };
        self.reconnect.remove(&d.sid);
        self.resume.remove(&d.sid);
        if let Some((_, n)) = self.early.remove(&d.sid) {
            self.budget.sub(n);
        }
        self.agents.remove(&d.sid);
        let was = d.phase;
        if was == Phase::Open {
            self.metrics.sessions.dec();
        }
        d.phase = Phase::Closing;
        // The close deadline counts from now.
        d.accepted_ms = now_ms;
        let held = d.rx.take().map_or(0, |rx| rx.buf.len());
        self.budget.sub(held);
        let sid = d.sid;
        let tenant = d.tenant;
        let subs = std::mem::take(&mut d.subs);
        let links: Vec<(u16, u32)> = d.links().collect();
        self.metrics.disconnect(why.name());
        for key in subs {
            if let Some(r) = self.fanout.leave(key, sid) {
                self.unsubscribe_upstream(now, r);
            }
        }
        if matches!(was, Phase::Open | Phase::Opening) {
            for (link, generation) in links {
                let l = link as usize;
                if self.links[l].state == LinkState::Up && self.links[l].generation == generation {
                    let mut h =
                        Head::new(Kind::Control, Service::Control, msg::control::SESSION_CLOSE);
                    h.tenant = tenant;
                    h.session = sid;
                    // §4.6: a desktop lost (or sent away by a drain) may resume its session
                    // through any proxy; one that left, or was refused, may not.
                    let f = if why.keeps_session() {
                        Frame::build(h, |w| {
                            w.int(msg::key::DETACH, 1);
                            Ok(())
                        })
                        .map_or_else(|_| empty_frame(h).freeze(), Frame::freeze)
                    } else {
                        empty_frame(h).freeze()
                    };
                    self.push_link_control(now, l, f, 0);
                }
            }
        }
        self.closing.push(slot);
    }

    /// Remove a desktop; `tell`: emit [`Io::Close`] (the driver still holds its socket).
    pub(super) fn remove_desktop(&mut self, slot: usize, tell: bool) {
        let Some(d) = self.desktops.try_remove(slot) else {
            return;
        };
        self.corrs.remove(&d.sid);
        self.reconnect.remove(&d.sid);
        self.resume.remove(&d.sid);
        if let Some((_, n)) = self.early.remove(&d.sid) {
            self.budget.sub(n);
        }
        self.agents.remove(&d.sid);
        self.budget
            .sub(d.out.bytes() + d.rx.as_ref().map_or(0, |rx| rx.buf.len()));
        self.sources.release(d.source);
        if d.has(FD) {
            self.fd_desktops -= 1;
        }
        self.metrics.desktops.dec();
        if tell {
            self.io.push_back(Io::Close(DesktopId::from_sid(d.sid)));
        }
    }

    /// After every input: take the held frames of the desktops something woke (answers
    /// freed their slots, their session opened), then drop the closing desktops whose queue
    /// is handed over.
    ///
    /// Waking is deferred to here, never done inside the handling of an answer: a desktop's
    /// next frames may change the very subscription or link whose answers are being handed
    /// out (an `UNSUBSCRIBE` behind the `SUBSCRIBE` just answered), and they must see its
    /// state after all its waiters were answered.
    pub(super) fn settle(&mut self, now: Instant) {
        let mut rounds = 0;
        while !self.woken.is_empty() && rounds < 64 {
            rounds += 1;
            let woken = std::mem::take(&mut self.woken);
            for slot in woken {
                self.unstall(now, slot);
            }
        }
        while let Some(slot) = self.closing.pop() {
            if self
                .desktops
                .get(slot)
                .is_some_and(|d| d.phase == Phase::Closing && d.out.is_empty())
            {
                self.remove_desktop(slot, true);
            }
        }
    }

    /// A desktop that shut its sending side is closed once every request it sent (buffered
    /// ones included) is answered.
    pub(super) fn finish_eof(&mut self, now: Instant, slot: usize) {
        let Some(d) = self.desktops.get(slot) else {
            return;
        };
        if !d.has(desktop::EOF) || d.phase == Phase::Closing {
            return;
        }
        let waiting_hello = d.phase == Phase::Opening;
        // Whole frames still held back: they will be taken as answers free their slots.
        let held_frames = d.rx.as_ref().is_some_and(|rx| {
            let mut dec = deskmux_codec::FrameDecoder::new(rx.dec.max_frame_len());
            matches!(dec.peek(&rx.buf), Ok(deskmux_codec::Peek::Frame { .. }))
        });
        if d.in_flight == 0 && !waiting_hello && !held_frames {
            self.close_desktop(now, slot, Disconnect::Eof);
        }
    }

    /// Queue a control error for a desktop and close it.
    pub(super) fn fail_desktop(
        &mut self,
        now: Instant,
        slot: usize,
        e: ProxyError,
        why: Disconnect,
    ) {
        let Some(d) = self.desktops.get_mut(slot) else {
            return;
        };
        if d.phase == Phase::Closing {
            return;
        }
        self.metrics.error(e.code.name());
        let tenant = d.tenant;
        self.note_failure(slot, e.code.name(), tenant);
        let Some(d) = self.desktops.get_mut(slot) else {
            return;
        };
        // §5.1: an error that ends the connection is about the connection, not a session: it
        // carries session 0, as core-server's do.
        let f = control_error(0, e.code, e.message).freeze();
        self.budget.add(f.len());
        d.out.push_unbounded(f);
        self.mark_desktop_dirty(slot);
        self.close_desktop(now, slot, why);
    }

    /// The desktop read too slowly: its queue is dropped (but a frame already partly written,
    /// which must be finished for the error after it to be readable), it is told why, and it
    /// is closed.
    pub(super) fn slow_consumer(&mut self, now: Instant, slot: usize) {
        let Some(d) = self.desktops.get_mut(slot) else {
            return;
        };
        if d.phase == Phase::Closing {
            return;
        }
        let freed = d.out.truncate_to_partial();
        self.budget.sub(freed);
        self.fail_desktop(
            now,
            slot,
            ProxyError::desktop(
                ErrorCode::SLOW_CONSUMER,
                "outbound queue overflow: disconnected",
            ),
            Disconnect::SlowConsumer,
        );
    }

    /// Queue `b` to a desktop. A desktop over its queue bounds, or with a backlog when the
    /// worker budget has no room, is a slow consumer. Returns whether it was queued.
    pub(super) fn deliver(&mut self, now: Instant, slot: usize, b: Bytes) -> bool {
        // At the hard limit, the largest backlogs (desktops that do not read) go first, so
        // that a desktop which reads is not the one closed for a burst of answers.
        if !self.budget.fits(b.len()) && self.desktops.get(slot).is_some_and(|d| !d.out.is_empty())
        {
            self.make_room(now, b.len(), true);
        }
        match self.try_deliver(now, slot, b) {
            Delivery::Queued => true,
            Delivery::Gone => false,
            Delivery::Slow => {
                self.slow_consumer(now, slot);
                false
            }
        }
    }

    /// Room for `n` more bytes of new work (a request, a hello, a partial frame that grows)
    /// below the budget's high-water mark. When the worker is over it, the desktops that
    /// hold the most while not reading (their queue is past half its bounds) are slow
    /// consumers and are closed first, largest first, so that desktops which read are not
    /// refused because of those that do not. `hard`: only the hard limit must hold (bytes
    /// of a frame already begun). False if there is still no room: the caller answers
    /// `OVERLOADED`.
    pub(super) fn make_room(&mut self, now: Instant, n: usize, hard: bool) -> bool {
        let room = |b: &Budget| if hard { b.fits(n) } else { b.admits(n) };
        while !room(&self.budget) {
            // One scan finds the largest backlog; a scan that found none is not repeated
            // before the next tick (each would cost a pass over every desktop).
            if self.no_victim_until.is_some_and(|t| now < t) {
                return false;
            }
            let victim = self
                .desktops
                .iter()
                .filter(|(_, d)| d.phase != Phase::Closing && d.out_backlogged(&self.limits))
                .max_by_key(|(_, d)| d.out.bytes())
                .map(|(slot, _)| slot);
            let Some(slot) = victim else {
                self.no_victim_until = Some(now + super::TICK);
                return false;
            };
            self.metrics.error("evicted_for_budget");
            self.slow_consumer(now, slot);
        }
        true
    }

    pub(super) fn try_deliver(&mut self, now: Instant, slot: usize, b: Bytes) -> Delivery {
        let now_ms = self.ms(now);
        let mut to = Outboxes {
            desktops: &mut self.desktops,
            budget: &mut self.budget,
            dirty: &mut self.dirty,
            limits: &self.limits,
        };
        to.push(now_ms, slot, b)
    }

    /// Answer the request `req` of a desktop with an error. Once its session is open, an
    /// answer carries the session's tenant (PROTOCOL.md §2), also when the request claimed
    /// another.
    pub(super) fn reply_error(&mut self, now: Instant, slot: usize, req: &Head, e: ProxyError) {
        self.metrics.error(e.code.name());
        self.note_failure(slot, e.code.name(), req.tenant);
        // §2.3: once open, an answer carries the session's tenant and id, whatever the
        // request claimed.
        let mut req = *req;
        if let Some(d) = self.desktops.get(slot)
            && d.phase == Phase::Open
        {
            req.tenant = d.tenant;
            req.session = d.sid;
        }
        let f = error_response(&req, e.code, e.message);
        self.deliver(now, slot, f.freeze());
    }
}

/// What happened to a frame offered to a desktop.
pub(super) enum Delivery {
    Queued,
    Gone,
    Slow,
}

/// The desktops' outbound queues with what bounds them: borrowed apart from the rest of the
/// core, so that one broadcast event can be queued to every subscriber while the fan-out
/// table is borrowed.
pub(super) struct Outboxes<'a> {
    pub(super) desktops: &'a mut Slab<Desktop>,
    pub(super) budget: &'a mut Budget,
    pub(super) dirty: &'a mut VecDeque<Endpoint>,
    pub(super) limits: &'a Limits,
}

impl Outboxes<'_> {
    /// Queue a broadcast frame to session `sid`, if its desktop is still the one in the
    /// session's slot (a subscriber list can name a session that left). The shared frame is
    /// only reference-counted for a desktop that takes it: no copy, no allocation.
    pub(super) fn push_to_session(&mut self, now_ms: u32, sid: u64, b: &Bytes) -> Delivery {
        let slot = (sid & 0xFFFF_FFFF) as usize;
        if self.desktops.get(slot).is_none_or(|d| d.sid != sid) {
            return Delivery::Gone;
        }
        self.push(now_ms, slot, b.clone())
    }

    /// Queue `b` to the desktop in `slot`: over its queue bounds, or with a backlog when the
    /// worker budget has no room, it is a slow consumer.
    pub(super) fn push(&mut self, now_ms: u32, slot: usize, b: Bytes) -> Delivery {
        let Some(d) = self.desktops.get_mut(slot) else {
            return Delivery::Gone;
        };
        if d.phase == Phase::Closing {
            return Delivery::Gone;
        }
        if !self.budget.fits(b.len()) && !d.out.is_empty() {
            return Delivery::Slow;
        }
        let len = b.len();
        if d.out
            .push(b, self.limits.out_queue_frames, self.limits.out_queue_bytes)
            .is_err()
        {
            return Delivery::Slow;
        }
        d.last_tx_ms = now_ms;
        self.budget.add(len);
        if !d.has(DIRTY) {
            d.flags |= DIRTY;
            self.dirty
                .push_back(Endpoint::Desktop(DesktopId::from_sid(d.sid)));
        }
        Delivery::Queued
    }
}
