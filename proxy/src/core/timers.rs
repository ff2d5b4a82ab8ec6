//! The clock's work, once per tick: link connects, handshakes, heartbeats and liveness,
//! request timeouts, desktop deadlines and heartbeats, and the close-flush limit.

use std::time::{Duration, Instant};

use deskmux_codec::msg;
use deskmux_codec::{ErrorCode, Head, Kind, Service, empty_frame};

use super::desktop::{Phase, STALLED, Timer};
use super::ids::Owner;
use super::{CLOSE_FLUSH, Core, link};
use crate::error::{Disconnect, ProxyError};

impl Core {
    pub(super) fn tick_links(&mut self, now: Instant) {
        let draining = self.draining.is_some();
        let timeout_us = self.limits.request_timeout_ms.saturating_mul(1000);
        let timeout = Duration::from_millis(u64::from(self.limits.request_timeout_ms));
        let now_us = self.us(now);
        for i in 0..self.links.len() {
            match self.links[i].tick(now, &self.limits, draining) {
                link::LinkTick::None => {}
                link::LinkTick::Connect => self.connect_link(now, i),
                link::LinkTick::Fail(why) => self.fail_link(now, i, why),
                tick @ (link::LinkTick::Heartbeat | link::LinkTick::Timeouts) => {
                    if tick == link::LinkTick::Heartbeat {
                        let h = Head::new(Kind::Request, Service::Control, msg::control::HEARTBEAT);
                        let id = self.track(now, i, Owner::Internal, &h, false);
                        let mut f = empty_frame(h);
                        f.set_correlation(id);
                        self.push_link_control(now, i, f.freeze(), id);
                    }
                    // The search walks every slot: tens of thousands per link. It runs every
                    // sixteenth of the timeout (at least every tick), so a request is
                    // answered TIMEOUT at most 1/16 of the timeout late.
                    if now < self.links[i].next_expiry {
                        continue;
                    }
                    self.links[i].next_expiry = now + (timeout / 16).max(super::TICK);
                    for id in self.links[i].ids.expired(now_us, timeout_us) {
                        if let Some(p) = self.links[i].ids.take(id) {
                            self.answer_pending(
                                now,
                                i,
                                p,
                                ProxyError::upstream(
                                    ErrorCode::TIMEOUT,
                                    "no answer from upstream in time",
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    pub(super) fn tick_desktops(&mut self, now: Instant) {
        let now_ms = self.ms(now);
        let now_us = self.us(now);
        let close_ms = CLOSE_FLUSH.as_millis() as u32;
        // Input budgets: an idle desktop's is kept at the clock (see `Desktop::paid_us`), and
        // one held back for its budget is read again once it is back under.
        let mut paid_off = Vec::new();
        for (slot, d) in &mut self.desktops {
            if (d.paid_us.wrapping_sub(now_us) as i32) < 0 {
                d.paid_us = now_us;
            }
            if d.has(STALLED) {
                paid_off.push(slot);
            }
        }
        for slot in paid_off {
            if self.may_read(slot) {
                self.unstall(now, slot);
            }
        }
        let mut due = Vec::new();
        for (slot, d) in &self.desktops {
            match d.timer(now_ms, &self.limits, close_ms, d.has(STALLED)) {
                Timer::None => {}
                t => due.push((slot, t)),
            }
        }
        for (slot, t) in due {
            match t {
                Timer::None => {}
                Timer::Deadline(m) => self.fail_desktop(
                    now,
                    slot,
                    ProxyError::desktop(ErrorCode::DEADLINE, m),
                    Disconnect::Deadline,
                ),
                Timer::Heartbeat => {
                    let mut h = Head::new(Kind::Request, Service::Control, msg::control::HEARTBEAT);
                    h.correlation = u64::MAX;
                    self.deliver(now, slot, empty_frame(h).freeze());
                }
                Timer::Drop => self.remove_desktop(slot, true),
            }
        }
    }

    /// Refresh each instance's session and alias counts (for its state and `/status`).
    pub(super) fn count_sessions(&mut self) {
        let mut per_inst = vec![(0u64, 0u64); self.router.instances.len()];
        for (_, d) in &self.desktops {
            if !matches!(d.phase, Phase::Open | Phase::Opening) {
                continue;
            }
            for b in d.bindings.iter().filter(|b| b.service != 0) {
                let l = &self.links[b.link as usize];
                if l.generation == b.link_gen
                    && let Some(e) = per_inst.get_mut(l.instance)
                {
                    e.1 += 1;
                }
            }
            for (link, g) in d.links() {
                let l = &self.links[link as usize];
                if l.generation == g
                    && let Some(e) = per_inst.get_mut(l.instance)
                {
                    e.0 += 1;
                }
            }
        }
        for (i, (sessions, aliases)) in per_inst.into_iter().enumerate() {
            self.router.instances[i].sessions = sessions;
            self.router.instances[i].aliases = aliases;
        }
    }
}
