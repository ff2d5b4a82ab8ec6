//! The simulated world: one proxy core, its desktops and its servers, one fake clock, and a
//! seeded random source that chooses every action and fault. Invariants are checked after
//! every step.

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use deskmux_proxy::config::Config;
use deskmux_proxy::core::{Core, DesktopId, Endpoint, Io, LinkId};
use deskmux_proxy::metrics::Metrics;

use crate::desktop::{Desktop, Habit};
use crate::server::{Intent, Server};

pub(crate) const TOPICS: [&str; 6] = [
    "queue:a", "queue:b", "queue:c", "queue:d", "queue:e", "stats",
];
pub(crate) const SOURCES: [[u8; 4]; 4] =
    [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3], [10, 0, 0, 4]];

/// What a run did (summed over runs for the report).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub steps: u64,
    pub desktops: u64,
    pub refused: u64,
    pub requests: u64,
    pub answers: u64,
    pub frames_to_desktops: u64,
    pub closed: u64,
    pub link_failures: u64,
    pub faults: u64,
    pub unicasts_blocked: u64,
    pub drains: u64,
    /// The core's own counts (`deskmux_proxy_errors` by kind, `deskmux_proxy_disconnects` by
    /// reason): which of its paths the faults reached.
    pub paths: BTreeMap<String, u64>,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.desktops += o.desktops;
        self.refused += o.refused;
        self.requests += o.requests;
        self.answers += o.answers;
        self.frames_to_desktops += o.frames_to_desktops;
        self.closed += o.closed;
        self.link_failures += o.link_failures;
        self.faults += o.faults;
        self.unicasts_blocked += o.unicasts_blocked;
        self.drains += o.drains;
        for (k, v) in &o.paths {
            *self.paths.entry(k.clone()).or_default() += v;
        }
    }
}

/// The configuration the simulated proxy runs with: small limits, so that caps, backlogs and
/// budgets are reached often.
pub fn config() -> Config {
    let toml = r#"
link_secret = "sim-secret"
[limits]
max_desktops = 40
max_desktops_per_source = 14
max_in_flight = 4
max_frame = 65536
hello_max_frame = 2048
handshake_ms = 3000
heartbeat_ms = 1000
request_timeout_ms = 4000
out_queue_frames = 64
out_queue_bytes = 131072
link_queue_bytes = 262144
worker_queue_bytes = 1048576
frame_timeout_ms = 2000
link_frame_timeout_ms = 1500
max_subscriptions = 4
drain_grace_ms = 3000
link_backoff_min_ms = 50
link_backoff_max_ms = 500
[[upstream]]
name = "a"
service = ["interaction", "ucs"]
addr = "127.0.0.1:1"
links = 2
[[upstream]]
name = "b"
service = ["interaction", "ucs"]
addr = "127.0.0.1:2"
links = 2
"#;
    let mut c = Config::from_toml(toml).expect("sim config");
    c.normalize();
    c
}

/// One simulated world.
pub struct World {
    pub(crate) rng: fastrand::Rng,
    pub(crate) now: Instant,
    pub(crate) core: Core,
    pub(crate) cfg: Config,
    pub(crate) desktops: Vec<Desktop>,
    pub(crate) by_slot: BTreeMap<u32, usize>,
    pub(crate) servers: Vec<Server>,
    /// Links whose last write was partial: told writable on the next round.
    pub(crate) blocked_links: Vec<LinkId>,
    pub(crate) intents: BTreeMap<u64, Intent>,
    pub(crate) next_nonce: u64,
    /// Answer holding and oversized answers, per server, toggled by faults.
    pub(crate) hold: Vec<bool>,
    pub(crate) big: Vec<bool>,
    pub(crate) draining: bool,
    pub(crate) finished: bool,
    pub(crate) max_frame_seen: usize,
    pub stats: Stats,
    registry: prometheus_client::registry::Registry,
    /// Nonces of every echo that reached a server.
    reached: std::collections::HashSet<u64>,
}

impl World {
    pub fn new(seed: u64) -> World {
        let cfg = config();
        let now = Instant::now();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut registry);
        let core = Core::new(0, &cfg, now, seed, metrics);
        let n = core.links().len();
        World {
            rng: fastrand::Rng::with_seed(seed),
            now,
            core,
            cfg,
            desktops: Vec::new(),
            by_slot: BTreeMap::new(),
            servers: (0..n).map(|_| Server::new()).collect(),
            blocked_links: Vec::new(),
            intents: BTreeMap::new(),
            next_nonce: 1,
            hold: vec![false; n],
            big: vec![false; n],
            draining: false,
            finished: false,
            max_frame_seen: 0,
            stats: Stats::default(),
            registry,
            reached: std::collections::HashSet::new(),
        }
    }

    /// Run `steps` random steps, then a quiet phase in which everything must be answered.
    ///
    /// # Errors
    /// The first invariant that failed, with the step.
    pub fn run(&mut self, steps: u64) -> Result<(), String> {
        let res = self.run_steps(steps);
        self.count_paths();
        res
    }

    /// Read the core's error and disconnect counters into `stats.paths`.
    fn count_paths(&mut self) {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            return;
        }
        for line in text.lines() {
            let (name, rest) = match line.split_once('{') {
                Some(x) => x,
                None => continue,
            };
            let family = match name {
                "deskmux_proxy_errors_total" => "error",
                "deskmux_proxy_disconnects_total" => "disconnect",
                _ => continue,
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let kind = labels.split('"').nth(1).unwrap_or("?");
            if let Ok(v) = value.parse::<f64>() {
                *self
                    .stats
                    .paths
                    .entry(format!("{family}:{kind}"))
                    .or_default() += v as u64;
            }
        }
    }

    fn run_steps(&mut self, steps: u64) -> Result<(), String> {
        // Let the links come up first.
        for _ in 0..20 {
            self.advance(Duration::from_millis(60));
            self.pump()?;
        }
        for step in 0..steps {
            self.stats.steps += 1;
            self.step(step, steps)
                .map_err(|e| format!("step {step}: {e}"))?;
            self.pump().map_err(|e| format!("step {step}: {e}"))?;
            self.check().map_err(|e| format!("step {step}: {e}"))?;
            if self.finished {
                return self.check_finished();
            }
        }
        self.quiesce()
    }

    pub(crate) fn chance(&mut self, per_mille: u32) -> bool {
        self.rng.u32(0..1000) < per_mille
    }

    pub(crate) fn advance(&mut self, d: Duration) {
        self.now += d;
        self.core.handle_timeout(self.now);
    }

    pub(crate) fn open_desktops(&self) -> Vec<usize> {
        self.desktops
            .iter()
            // A desktop that reads acts once its hello is answered; one that never reads
            // cannot know, and floods right behind its hello.
            .filter(|d| {
                !d.closed
                    && (d.sid.is_some() || d.habit == Habit::NeverReads)
                    && !d.eof
                    && d.doomed.is_none()
            })
            .map(|d| d.n)
            .collect()
    }

    // ------------------------------------------------------------------ moving bytes

    /// Carry out I/O, writes and reads until nothing moves (bounded).
    fn pump(&mut self) -> Result<(), String> {
        for _ in 0..200 {
            let mut moved = false;
            moved |= self.io()?;
            moved |= self.transmit()?;
            moved |= self.servers_send();
            moved |= self.desktops_send();
            moved |= self.desktops_read()?;
            self.core.handle_timeout(self.now);
            if self.core.drained(self.now) && !self.finished {
                self.core.finish(self.now);
                self.finished = true;
                moved = true;
            }
            if !moved {
                return Ok(());
            }
        }
        Ok(())
    }

    fn io(&mut self) -> Result<bool, String> {
        let mut moved = false;
        while let Some(io) = self.core.poll_io() {
            moved = true;
            match io {
                Io::Connect { link, .. } => {
                    let i = link.index as usize;
                    if self.chance(50) {
                        self.core.link_lost(self.now, link, "sim: connect refused");
                    } else {
                        self.servers[i].connect(link);
                        self.hold[i] = false;
                        self.big[i] = false;
                        self.core.link_connected(self.now, link);
                    }
                }
                Io::CloseLink(link) => {
                    let s = &mut self.servers[link.index as usize];
                    if s.link == Some(link) {
                        s.disconnect();
                    }
                }
                Io::Close(id) => self.closed(id)?,
                Io::Read(_) => {}
            }
        }
        Ok(moved)
    }

    /// The proxy closed a desktop: a half-closed desktop must have had every request it sent
    /// answered first, unless it was told why it is being closed.
    fn closed(&mut self, id: DesktopId) -> Result<(), String> {
        let Some(n) = self.by_slot.remove(&id.slot) else {
            return Err(format!("close for unknown desktop {id:?}"));
        };
        let d = &mut self.desktops[n];
        if d.id != id {
            return Err(format!("close for {id:?} hit desktop {:?}", d.id));
        }
        // What the proxy wrote before closing is still readable.
        let _ = d.read(&mut self.max_frame_seen)?;
        d.closed = true;
        self.stats.closed += 1;
        if d.eof
            && !d.stopped_reading
            && d.doomed.is_none()
            && !d.going_away
            && d.to_send.is_empty()
            && !d.outstanding.is_empty()
        {
            return Err(format!(
                "desktop {n} half-closed and was closed with {} requests unanswered: {:?}\n{:#?}",
                d.outstanding.len(),
                d.outstanding,
                d.log
            ));
        }
        Ok(())
    }

    fn transmit(&mut self) -> Result<bool, String> {
        let mut moved = false;
        for link in std::mem::take(&mut self.blocked_links) {
            self.core.writable(Endpoint::Link(link));
        }
        while let Some(ep) = self.core.poll_transmit() {
            match ep {
                Endpoint::Desktop(id) => {
                    let Some(&n) = self.by_slot.get(&id.slot) else {
                        continue;
                    };
                    let d = &mut self.desktops[n];
                    let room = d.kernel_cap.saturating_sub(d.kernel.len());
                    let mut iov = [IoSlice::new(&[]); 64];
                    let k = self.core.desktop_slices(id, &mut iov);
                    let mut w = 0;
                    for s in &iov[..k] {
                        let take = s.len().min(room - w);
                        d.kernel.extend_from_slice(&s[..take]);
                        w += take;
                        if w == room {
                            break;
                        }
                    }
                    if w > 0 {
                        moved = true;
                        self.core.desktop_written(self.now, id, w);
                    }
                }
                Endpoint::Link(link) => {
                    let i = link.index as usize;
                    if self.servers[i].link != Some(link) {
                        continue;
                    }
                    let mut iov = [IoSlice::new(&[]); 64];
                    let k = self.core.link_slices(link, &mut iov);
                    let mut buf = BytesMut::new();
                    for s in &iov[..k] {
                        buf.extend_from_slice(s);
                    }
                    if buf.is_empty() {
                        continue;
                    }
                    // Sometimes the socket takes only part of it.
                    let w = if self.rng.u32(0..10) == 0 {
                        self.rng.usize(0..=buf.len())
                    } else {
                        buf.len()
                    };
                    if w < buf.len() {
                        self.blocked_links.push(link);
                    }
                    if w > 0 {
                        moved = true;
                        let (hold, big) = (self.hold[i], self.big[i]);
                        self.servers[i]
                            .receive(&buf[..w], hold, big)
                            .map_err(|e| format!("server {i}: {e}"))?;
                        self.core.link_written(self.now, link, w);
                    }
                }
            }
        }
        Ok(moved)
    }

    fn servers_send(&mut self) -> bool {
        let mut moved = false;
        for i in 0..self.servers.len() {
            let Some(link) = self.servers[i].link else {
                continue;
            };
            if self.servers[i].out.is_empty() {
                continue;
            }
            let len = self.servers[i].out.len();
            let n = if self.rng.bool() {
                len
            } else {
                self.rng.usize(1..=len)
            };
            let chunk: Bytes = self.servers[i].out.split_to(n).freeze();
            moved = true;
            self.core.link_data(self.now, link, &chunk);
        }
        moved
    }

    fn desktops_send(&mut self) -> bool {
        let mut moved = false;
        let slots: Vec<(u32, usize)> = self.by_slot.iter().map(|(s, n)| (*s, *n)).collect();
        for (_, n) in slots {
            let id = self.desktops[n].id;
            if self.desktops[n].to_send.is_empty() {
                if self.desktops[n].eof && !self.desktops[n].closed {
                    // The stream ends after its last byte.
                    if self.core.poll_read(id) {
                        self.core.desktop_eof(self.now, id);
                        moved = true;
                    }
                }
                continue;
            }
            if !self.core.poll_read(id) {
                continue;
            }
            let len = self.desktops[n].to_send.len();
            let k = if self.rng.bool() {
                len.min(65536)
            } else {
                self.rng.usize(1..=len.min(65536))
            };
            let chunk = self.desktops[n].to_send.split_to(k).freeze();
            moved = true;
            self.core.desktop_data(self.now, id, &chunk);
        }
        moved
    }

    fn desktops_read(&mut self) -> Result<bool, String> {
        let mut moved = false;
        let slots: Vec<usize> = self.by_slot.values().copied().collect();
        for n in slots {
            let d = &mut self.desktops[n];
            if d.habit == Habit::NeverReads || d.kernel.is_empty() {
                continue;
            }
            let replies = d.read(&mut self.max_frame_seen)?;
            moved = true;
            for r in replies {
                // A desktop that shut its sending side, or stopped mid-frame, sends nothing
                // more (its heartbeat answers would complete the frame it left unfinished).
                if !d.eof && d.doomed.is_none() {
                    d.to_send.extend_from_slice(&r);
                }
            }
            for (nonce, h) in std::mem::take(&mut d.unicasts) {
                let Some(intent) = self.intents.get(&nonce) else {
                    return Err(format!("desktop {n}: unicast with unknown nonce {nonce}"));
                };
                if !intent.legit || intent.tenant != d.tenant || Some(intent.session) != d.sid {
                    return Err(format!(
                        "desktop {n} (tenant {}, session {:?}) got a unicast meant for {intent:?}: {h:?}",
                        d.tenant, d.sid
                    ));
                }
            }
            // Room in its socket again: the proxy may write.
            self.core.writable(Endpoint::Desktop(d.id));
        }
        Ok(moved)
    }

    // ------------------------------------------------------------------ invariants

    fn check(&mut self) -> Result<(), String> {
        // An echo answered "not sent" must not have reached any server.
        for sv in &mut self.servers {
            self.reached.extend(sv.echoed.drain(..));
        }
        for d in &mut self.desktops {
            for (nonce, code) in d.not_sent.drain(..) {
                if self.reached.contains(&nonce) {
                    return Err(format!(
                        "desktop {} was told {code} (not sent) for an echo a server received",
                        d.n
                    ));
                }
            }
        }
        if let Err(e) = self.core.audit() {
            // Name the desktops the message mentions, with what they sent and got.
            let mut report = e.clone();
            for d in &self.desktops {
                if let Some(sid) = d.sid
                    && e.contains(&format!("{sid:x}"))
                {
                    report.push_str(&format!(
                        "\ndesktop {} (tenant {}): {:#?}",
                        d.n, d.tenant, d.log
                    ));
                }
            }
            return Err(report);
        }
        let max = self.cfg.limits.max_frame as usize;
        if self.max_frame_seen > max {
            return Err(format!(
                "a desktop got a {} byte frame, over max_frame {max}",
                self.max_frame_seen
            ));
        }
        Ok(())
    }

    /// Stop the faults, let every desktop read, run the clock past every deadline: every
    /// request of a live desktop must then have its one answer.
    fn quiesce(&mut self) -> Result<(), String> {
        for d in &mut self.desktops {
            d.habit = Habit::Reads;
        }
        for i in 0..self.servers.len() {
            self.hold[i] = false;
            self.big[i] = false;
            self.servers[i].hung = false;
            self.servers[i].release();
        }
        let until =
            self.now + Duration::from_millis(u64::from(self.cfg.limits.request_timeout_ms) + 3000);
        while self.now < until {
            for i in 0..self.servers.len() {
                self.servers[i].release();
            }
            self.advance(Duration::from_millis(50));
            self.pump().map_err(|e| format!("quiet phase: {e}"))?;
            self.check().map_err(|e| format!("quiet phase: {e}"))?;
            if self.finished {
                return self.check_finished();
            }
        }
        for d in &self.desktops {
            if d.closed || d.doomed.is_some() || d.going_away {
                continue;
            }
            if !d.to_send.is_empty() {
                return Err(format!(
                    "desktop {} still has {} bytes the proxy never read",
                    d.n,
                    d.to_send.len()
                ));
            }
            if !d.settled() {
                return Err(format!(
                    "desktop {} has requests never answered: {:?}",
                    d.n, d.outstanding
                ));
            }
        }
        self.stats.answers += self.desktops.iter().map(|d| d.answers).sum::<u64>();
        self.stats.frames_to_desktops += self.desktops.iter().map(|d| d.frames).sum::<u64>();
        let blocked = self.intents.values().filter(|i| !i.legit).count() as u64;
        self.stats.unicasts_blocked += blocked;
        Ok(())
    }

    /// After a drain finished: every desktop is gone and nothing is held.
    fn check_finished(&mut self) -> Result<(), String> {
        for _ in 0..50 {
            self.advance(Duration::from_millis(100));
            self.pump()?;
        }
        self.core.audit()?;
        let left: Vec<usize> = self.by_slot.values().copied().collect();
        if !left.is_empty() || self.core.snapshot().desktops > 0 {
            // Desktops that never read keep their last frames queued until the close flush
            // runs out; after it every one must be gone.
            return Err(format!("drain finished but desktops remain: {left:?}"));
        }
        self.stats.answers += self.desktops.iter().map(|d| d.answers).sum::<u64>();
        self.stats.frames_to_desktops += self.desktops.iter().map(|d| d.frames).sum::<u64>();
        Ok(())
    }
}
