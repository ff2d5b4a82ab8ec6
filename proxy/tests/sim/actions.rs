//! What can happen in one step of the simulated world: desktop actions, server actions and
//! faults, operator input, and the clock. Each step picks one by weight from the seed.

use std::net::IpAddr;
use std::time::Duration;

use deskmux_codec::msg::{control, ixn};
use deskmux_codec::{Head, Kind, Service, empty_frame};
use deskmux_proxy::error::Disconnect;

use crate::desktop::{Desktop, Habit};
use crate::world::{SOURCES, TOPICS, World};

impl World {
    pub(crate) fn step(&mut self, step: u64, steps: u64) -> Result<(), String> {
        let roll = self.rng.u32(0..1000);
        match roll {
            0..100 => self.new_desktop(),
            100..400 => self.desktop_requests(),
            400..420 => self.desktop_malformed(),
            420..440 => self.desktop_half_close(),
            440..455 => self.desktop_vanish(),
            455..465 => self.desktop_trickle(),
            465..475 => self.desktop_leave(),
            475..600 => self.publish(),
            600..650 => self.unicast(),
            650..700 => self.server_release(),
            700..730 => self.server_fault(),
            730..737 => self.link_drop(),
            737..741 => self.link_stall(),
            741..745 => self.server_close_session(),
            745..748 => self.reload(),
            748..751 => self.toggle_instance(),
            _ => {
                let ms = if self.chance(10) {
                    self.rng.u64(1000..8000)
                } else {
                    self.rng.u64(0..80)
                };
                self.advance(Duration::from_millis(ms));
            }
        }
        if !self.draining && step > steps * 9 / 10 && self.rng.u32(0..steps.max(1) as u32) < 3 {
            self.draining = true;
            self.stats.drains += 1;
            self.core.start_drain(self.now);
        }
        Ok(())
    }

    pub(crate) fn new_desktop(&mut self) {
        let ip: IpAddr = SOURCES[self.rng.usize(0..SOURCES.len())].into();
        let fd = self.rng.bool();
        let id = match self.core.accept(self.now, ip, fd) {
            Ok(id) => id,
            Err(_) => {
                self.stats.refused += 1;
                return;
            }
        };
        self.stats.desktops += 1;
        let n = self.desktops.len();
        let tenant = self.rng.u32(1..4);
        let habit = if self.chance(40) {
            Habit::NeverReads
        } else {
            Habit::Reads
        };
        let mut d = Desktop::new(n, id, tenant, habit, self.rng.usize(4096..65536));
        let token = if self.chance(50) {
            "wrong".to_string()
        } else {
            format!("tok-{tenant}")
        };
        let services = [2u64, 4, 6, 6][self.rng.usize(0..4)];
        d.hello(&token, services);
        // Some pipeline requests right behind the hello (same write).
        if self.chance(300) {
            d.echo(Service::Interaction, 10);
            d.subscribe(TOPICS[self.rng.usize(0..TOPICS.len())]);
        }
        if token == "wrong" {
            d.doomed = Some("hello refused".into());
        }
        self.by_slot.insert(id.slot, n);
        self.desktops.push(d);
    }

    pub(crate) fn pick_open(&mut self) -> Option<usize> {
        let open = self.open_desktops();
        if open.is_empty() {
            return None;
        }
        Some(open[self.rng.usize(0..open.len())])
    }

    pub(crate) fn desktop_requests(&mut self) {
        let Some(n) = self.pick_open() else {
            return;
        };
        if self.desktops[n].habit == Habit::NeverReads {
            // A desktop that never reads floods: big answers pile up for it until it is held
            // back, then it is a slow consumer or is evicted for the worker's budget.
            let k = self.rng.usize(8..40);
            for _ in 0..k {
                let size = self.rng.usize(1000..12000);
                self.desktops[n].echo(Service::Ucs, size);
                self.stats.requests += 1;
            }
            return;
        }
        let k = self.rng.usize(1..8);
        for _ in 0..k {
            let r = self.rng.u32(0..100);
            let topic = TOPICS[self.rng.usize(0..TOPICS.len())];
            let size = if self.rng.u32(0..50) == 0 {
                self.rng.usize(4000..30000)
            } else {
                self.rng.usize(0..300)
            };
            let service = if self.rng.bool() {
                Service::Interaction
            } else {
                Service::Ucs
            };
            let d = &mut self.desktops[n];
            match r {
                0..55 => d.echo(service, size),
                55..75 => d.subscribe(topic),
                75..90 => d.unsubscribe(topic),
                90..95 => d.heartbeat(),
                _ => d.spoof_tenant(d.tenant % 3 + 1),
            }
            self.stats.requests += 1;
        }
    }

    pub(crate) fn desktop_malformed(&mut self) {
        let Some(n) = self.pick_open() else {
            return;
        };
        self.stats.faults += 1;
        let kind = self.rng.u32(0..4);
        let d = &mut self.desktops[n];
        match kind {
            0 => d.raw(b"XX\x01\x01garbage that is not a frame", "bad magic"),
            1 => {
                let mut h = Head::new(Kind::Request, Service::Interaction, ixn::ECHO);
                h.tenant = d.tenant;
                h.body_len = 1 << 20;
                d.raw(&h.to_bytes(), "oversized frame");
            }
            2 => {
                // An unknown kind: answered with a control error, the connection stays.
                let mut h = Head::new(Kind::Unknown(9), Service::Interaction, ixn::ECHO);
                h.tenant = d.tenant;
                d.to_send.extend_from_slice(empty_frame(h).as_bytes());
            }
            _ => {
                // An event from a desktop: a protocol error, the connection stays.
                let mut h = Head::new(Kind::Event, Service::Interaction, ixn::INVITE);
                h.tenant = d.tenant;
                d.to_send.extend_from_slice(empty_frame(h).as_bytes());
            }
        }
    }

    pub(crate) fn desktop_half_close(&mut self) {
        if let Some(n) = self.pick_open() {
            self.desktops[n].eof = true;
        }
    }

    pub(crate) fn desktop_vanish(&mut self) {
        if let Some(n) = self.pick_open() {
            let d = &mut self.desktops[n];
            d.closed = true;
            self.by_slot.remove(&d.id.slot);
            self.stats.closed += 1;
            self.core.desktop_lost(self.now, d.id, Disconnect::IoError);
        }
    }

    pub(crate) fn desktop_trickle(&mut self) {
        if let Some(n) = self.pick_open() {
            self.stats.faults += 1;
            let d = &mut self.desktops[n];
            let mut h = Head::new(Kind::Request, Service::Interaction, ixn::ECHO);
            h.tenant = d.tenant;
            h.body_len = 1000;
            let mut b = h.to_bytes().to_vec();
            b.extend_from_slice(&[0; 10]);
            d.raw(&b, "frame never completed");
        }
    }

    pub(crate) fn desktop_leave(&mut self) {
        if let Some(n) = self.pick_open() {
            let d = &mut self.desktops[n];
            let mut h = Head::new(Kind::Control, Service::Control, control::SESSION_CLOSE);
            h.tenant = d.tenant;
            d.raw(empty_frame(h).as_bytes(), "left");
        }
    }

    pub(crate) fn live_servers(&self) -> Vec<usize> {
        (0..self.servers.len())
            .filter(|i| self.servers[*i].link.is_some())
            .collect()
    }

    pub(crate) fn pick_server(&mut self) -> Option<usize> {
        let live = self.live_servers();
        if live.is_empty() {
            return None;
        }
        Some(live[self.rng.usize(0..live.len())])
    }

    pub(crate) fn publish(&mut self) {
        let Some(i) = self.pick_server() else {
            return;
        };
        let wrong = if self.chance(30) {
            self.stats.faults += 1;
            Some(self.rng.u32(1..4))
        } else {
            None
        };
        let pick = self.rng.usize(0..64);
        self.servers[i].publish(pick, wrong);
    }

    pub(crate) fn unicast(&mut self) {
        let Some(i) = self.pick_server() else {
            return;
        };
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        let s = &self.servers[i];
        let roll = self.rng.u32(0..10);
        let (session, tenant) = if roll < 6 && !s.sessions.is_empty() {
            // A correct event to one of the link's sessions.
            let k = self.rng.usize(0..s.sessions.len());
            let (sid, t) = s
                .sessions
                .iter()
                .nth(k)
                .map(|(a, b)| (*a, *b))
                .unwrap_or((0, 1));
            (sid, t)
        } else {
            // A fault: another tenant stamped on a real session, or a session of another
            // link, or of a desktop that left.
            self.stats.faults += 1;
            let any: Vec<(u64, u32)> = self
                .desktops
                .iter()
                .filter_map(|d| d.sid.map(|s| (s, d.tenant)))
                .collect();
            if any.is_empty() {
                return;
            }
            let (sid, t) = any[self.rng.usize(0..any.len())];
            let t = if self.rng.bool() { t % 3 + 1 } else { t };
            (sid, t)
        };
        let intent = self.servers[i].unicast(session, tenant, nonce);
        self.intents.insert(nonce, intent);
    }

    pub(crate) fn server_release(&mut self) {
        if let Some(i) = self.pick_server() {
            self.hold[i] = self.chance(300);
            self.servers[i].release();
        }
    }

    pub(crate) fn server_fault(&mut self) {
        let Some(i) = self.pick_server() else {
            return;
        };
        self.stats.faults += 1;
        match self.rng.u32(0..5) {
            0 => {
                let corr = self.rng.u64(..);
                let t = self.rng.u32(1..4);
                self.servers[i].stray_answer(corr, t, self.rng.u64(..));
            }
            1 => self.servers[i].duplicate_held(),
            2 => self.servers[i].corrupt_held_tenant(self.rng.u32(1..4)),
            3 => self.big[i] = !self.big[i],
            _ => self.hold[i] = true,
        }
    }

    pub(crate) fn link_drop(&mut self) {
        let Some(i) = self.pick_server() else {
            return;
        };
        if let Some(link) = self.servers[i].link {
            self.stats.link_failures += 1;
            self.servers[i].disconnect();
            self.core
                .link_lost(self.now, link, "sim: connection dropped");
        }
    }

    pub(crate) fn link_stall(&mut self) {
        let Some(i) = self.pick_server() else {
            return;
        };
        self.stats.faults += 1;
        match self.rng.u32(0..3) {
            0 => self.servers[i].stall(self.rng.u32(100..100_000)),
            1 => self.servers[i].garbage(),
            _ => self.servers[i].hung = true,
        }
    }

    pub(crate) fn server_close_session(&mut self) {
        if let Some(i) = self.pick_server() {
            let pick = self.rng.usize(0..64);
            self.servers[i].close_session(pick);
        }
    }

    pub(crate) fn reload(&mut self) {
        let mut cfg = self.cfg.clone();
        cfg.limits.max_in_flight = self.rng.u32(1..8);
        cfg.limits.max_subscriptions = self.rng.u32(1..6);
        self.core.reload(self.now, &cfg);
        self.cfg = cfg;
    }

    pub(crate) fn toggle_instance(&mut self) {
        let name = if self.rng.bool() { "a" } else { "b" };
        let off = self.rng.bool();
        self.core.set_disabled(name, off);
    }
}
