//! Precise per-thread timers, so that loadgen's own clock stays out of its figures.
//!
//! Tokio's timers have a 1 ms resolution: an open-loop desktop that sleeps to its next send
//! with them wakes on the next millisecond tick, and its send lag (p50 ≈ 1 ms) went into every
//! corrected latency, ten times the round trip it was measuring. Here each event-loop thread
//! keeps its own timer heap and one `timerfd` (nanosecond resolution, and unlike `epoll_wait`'s
//! timeout no timer slack), registered in the thread's tokio reactor: the loop sleeps in
//! `epoll_wait` until the earliest deadline, not to the next millisecond. To absorb the
//! kernel's wake-up latency the timerfd is armed [`SPIN_NS`] early and the last stretch is
//! spun on the clock — a few µs of CPU per wake-up, not a busy loop.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use slab::Slab;
use tokio::io::unix::AsyncFd;

use crate::engine::Clock;

/// How early the timerfd fires before a deadline; the rest is spun on the clock. Covers the
/// wake-up latency of an idle core (tens of µs in a VM) for most wake-ups.
pub const SPIN_NS: u64 = 20_000;

/// One sleeper's registration.
///
/// A sleeper has at most one live heap entry, at `queued`. Moving the deadline later (a
/// desktop's heartbeat deadline moves with every write) only updates `deadline`: the entry
/// is re-queued when it comes up. Only an earlier deadline pushes a new entry, which makes the
/// old one stale. So a busy closed-loop desktop costs no heap push per request.
#[derive(Debug)]
struct Entry {
    /// Identity of this registration: a reused slot gets another, so older entries are stale.
    generation: u64,
    /// Run time to wake at.
    deadline: u64,
    /// Deadline of the live heap entry (`u64::MAX`: none; it fired).
    queued: u64,
    /// Who to wake.
    waker: Option<Waker>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (deadline, slot, generation), earliest first; stale entries are skipped when popped.
    heap: BinaryHeap<Reverse<(u64, usize, u64)>>,
    /// Live sleepers.
    slots: Slab<Entry>,
    /// Next generation number (never reused).
    next_gen: u64,
    /// The deadline the timerfd is armed for (`u64::MAX`: not armed).
    armed: u64,
}

/// One event-loop thread's timers.
#[derive(Debug)]
pub struct Timers {
    clock: Clock,
    fd: AsyncFd<File>,
    inner: RefCell<Inner>,
}

impl Timers {
    /// Timers on `clock`, registered with the current tokio runtime (call inside it).
    ///
    /// # Errors
    /// The timerfd could not be created or registered.
    pub fn new(clock: Clock) -> std::io::Result<Rc<Timers>> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // `new` is deprecated for the safe-looking registration of a `T` whose fd could be
        // closed or swapped behind the reactor's back; `register` says so with `unsafe`, which
        // this crate forbids. Here `T` is a `File` that owns its fd and that the `AsyncFd` owns:
        // the fd stays open and the same until the `AsyncFd` drops, which is that contract.
        #[allow(deprecated)]
        let fd = AsyncFd::new(File::from(fd))?;
        Ok(Rc::new(Timers {
            clock,
            fd,
            inner: RefCell::new(Inner {
                armed: u64::MAX,
                ..Inner::default()
            }),
        }))
    }

    /// A sleep until run time `deadline`; move it with [`Sleep::reset`].
    pub fn sleep_until(self: &Rc<Self>, deadline: u64) -> Sleep {
        let mut inner = self.inner.borrow_mut();
        let generation = inner.next_gen;
        inner.next_gen += 1;
        let slot = inner.slots.insert(Entry {
            generation,
            deadline,
            queued: deadline,
            waker: None,
        });
        inner.heap.push(Reverse((deadline, slot, generation)));
        self.arm(&mut inner, deadline);
        Sleep {
            timers: self.clone(),
            slot,
        }
    }

    /// Program the timerfd for `deadline` if that is earlier than what it waits for.
    fn arm(&self, inner: &mut Inner, deadline: u64) {
        if deadline >= inner.armed {
            return;
        }
        inner.armed = deadline;
        let now = self.clock.now_ns();
        // A zero value would disarm the timer: at least 1 ns.
        let wait = deadline.saturating_sub(SPIN_NS).saturating_sub(now).max(1);
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: (wait / 1_000_000_000) as _,
                tv_nsec: (wait % 1_000_000_000) as _,
            },
        };
        // Cannot fail for a valid timerfd and value; if it did, the deadline would be served
        // at the next arming, so a failure is not worth stopping the run for.
        let _ = timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec);
    }

    /// Run the timers: wait for the timerfd, wake every sleeper whose deadline has come, arm
    /// for the next one. Spawn once per thread; it never returns.
    pub async fn drive(self: Rc<Self>) {
        let mut buf = [0u8; 8];
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                return;
            };
            // The expiration count; its value does not matter. Once read, the timerfd is not
            // readable until it expires again (armed below, which the reactor then reports).
            let r = self.fd.get_ref().read(&mut buf);
            ready.clear_ready();
            if matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
                continue;
            }
            self.fire();
        }
    }

    /// Wake the sleepers that are due (spinning up to [`SPIN_NS`] for the earliest one) and
    /// arm the timerfd for the next.
    fn fire(&self) {
        let mut woken = Vec::new();
        {
            let mut inner = self.inner.borrow_mut();
            inner.armed = u64::MAX;
            let mut now = self.clock.now_ns();
            while let Some(&Reverse((deadline, slot, generation))) = inner.heap.peek() {
                let Some(e) = inner
                    .slots
                    .get_mut(slot)
                    .filter(|e| e.generation == generation && e.queued == deadline)
                else {
                    inner.heap.pop();
                    continue;
                };
                if e.deadline != deadline {
                    // Moved later since it was queued: queue it at its deadline now.
                    let later = e.deadline;
                    e.queued = later;
                    inner.heap.pop();
                    inner.heap.push(Reverse((later, slot, generation)));
                    continue;
                }
                if deadline > now {
                    if deadline - now > SPIN_NS {
                        break;
                    }
                    // The timerfd fired early on purpose: spin the last stretch.
                    while now < deadline {
                        std::hint::spin_loop();
                        now = self.clock.now_ns();
                    }
                }
                inner.heap.pop();
                let e = &mut inner.slots[slot];
                e.queued = u64::MAX;
                if let Some(w) = e.waker.take() {
                    woken.push(w);
                }
            }
            if let Some(&Reverse((deadline, _, _))) = inner.heap.peek() {
                self.arm(&mut inner, deadline);
            }
        }
        // Outside the borrow: a woken task may reset its sleep from its poll.
        for w in woken {
            w.wake();
        }
    }
}

/// A sleep on a thread's [`Timers`]. Unpin; reusable with [`Sleep::reset`].
#[derive(Debug)]
pub struct Sleep {
    timers: Rc<Timers>,
    slot: usize,
}

impl Sleep {
    /// Move the deadline to run time `deadline`.
    pub fn reset(&mut self, deadline: u64) {
        let t = &*self.timers;
        let mut inner = t.inner.borrow_mut();
        let e = &mut inner.slots[self.slot];
        e.deadline = deadline;
        if deadline >= e.queued {
            // The live entry comes up first and re-queues it (see `Entry`).
            return;
        }
        e.queued = deadline;
        let generation = e.generation;
        inner.heap.push(Reverse((deadline, self.slot, generation)));
        t.arm(&mut inner, deadline);
    }

    /// The deadline.
    pub fn deadline(&self) -> u64 {
        self.timers.inner.borrow().slots[self.slot].deadline
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let t = &*self.timers;
        let mut inner = t.inner.borrow_mut();
        let e = &mut inner.slots[self.slot];
        if t.clock.now_ns() >= e.deadline {
            return Poll::Ready(());
        }
        match &mut e.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        // Its heap entries become stale and are skipped.
        self.timers.inner.borrow_mut().slots.remove(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sleeps wake in deadline order, after their deadline, whatever order they were set in;
    /// a reset sleep wakes at its new deadline only; a dropped one never does.
    #[test]
    fn sleeps_wake_in_order_after_their_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let clock = Clock::new(crate::engine::unix_ns());
            let timers = Timers::new(clock).unwrap();
            let driver = tokio::task::spawn_local(timers.clone().drive());
            let t0 = clock.now_ns();
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for (k, ms) in [(0u64, 30u64), (1, 10), (2, 20), (3, 5)] {
                let timers = timers.clone();
                let order = order.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    let mut s = timers.sleep_until(t0 + 2_000_000);
                    // Moved later (its entry re-queues when it comes up), then to the real
                    // deadline: neither earlier one may wake it early.
                    s.reset(t0 + 1_000_000_000);
                    s.reset(t0 + ms * 1_000_000);
                    (&mut s).await;
                    let now = clock.now_ns();
                    assert!(now >= s.deadline(), "woke before its deadline");
                    order.borrow_mut().push(k);
                }));
            }
            // Dropped before its deadline: never wakes anyone, and does not disturb the rest.
            drop(timers.sleep_until(t0 + 15_000_000));
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(*order.borrow(), vec![3, 1, 2, 0]);
            assert!(clock.now_ns() - t0 < 1_000_000_000);
            driver.abort();
        });
    }
}
