//! The flooder of `quic_flood`: real client Initials replayed from many UDP sockets, the
//! answers they get counted, and what the worker's own counters and `/proc` say about it.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::proxy_support::*;

/// Flood sources: 127.0.0.2 ..= 127.0.0.20, this many sockets each.
pub const SOCKETS_PER_IP: usize = 4;
/// Bound on how long the worker may take to become idle once a flood stopped.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on how long a flood may take to reach its target. A deadline for a condition, not a
/// speed requirement: it only catches a worker that stopped answering.
pub const FLOOD_DEADLINE: Duration = Duration::from_secs(180);

pub fn flood_sockets() -> Vec<UdpSocket> {
    let mut v = Vec::new();
    for ip in 2..=20u8 {
        for _ in 0..SOCKETS_PER_IP {
            let s = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, ip), 0)).expect("bind 127.0.0.x");
            s.set_nonblocking(true).expect("nonblocking");
            v.push(s);
        }
    }
    v
}

/// The proxy under the flood: its worker's QUIC address (the UDP port is the desktop port's
/// number) and the admin port whose counters say how far the worker got.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub to: SocketAddr,
    pub admin: SocketAddr,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct FloodReport {
    /// Initials sent (accepted by the kernel).
    pub sent: u64,
    /// Datagrams that came back.
    pub answers: u64,
    /// Of those, Retry packets (long header type 3).
    pub retries: u64,
    pub took: Duration,
    /// When it started and ended.
    pub start: Option<Instant>,
    pub end: Option<Instant>,
    /// CPU time of the flooding thread, in clock ticks.
    pub cpu: u64,
    /// Whether the flood's condition was met (rather than [`FLOOD_DEADLINE`] passing).
    pub reached: bool,
}

/// Read and count every answer waiting on the flood's sockets.
pub fn receive(socks: &[UdpSocket], r: &mut FloodReport) {
    let mut rbuf = [0u8; 2048];
    for s in socks {
        while let Ok(n) = s.recv(&mut rbuf) {
            r.answers += 1;
            if n > 0 && rbuf[0] & 0xf0 == 0xf0 {
                r.retries += 1;
            }
        }
    }
}

/// Send Initials round-robin over `socks`, at most `limit` of them, keeping at most `window`
/// unanswered (`None`: no window, as fast as the sender goes), until `done` says the flood has
/// done its job (or [`FLOOD_DEADLINE`] passed: `reached` is then false). Answers are read and
/// counted, never acted on; the late ones are collected until every Initial is answered or the
/// worker is idle.
pub fn flood(
    socks: &[UdpSocket],
    initials: &[Vec<u8>],
    t: Target,
    window: Option<u64>,
    limit: u64,
    mut done: impl FnMut(&FloodReport) -> bool,
) -> FloodReport {
    let t0 = Instant::now();
    let cpu0 = cpu_ticks("thread-self");
    let mut r = FloodReport::default();
    let mut i = 0usize;
    let give_up = t0 + FLOOD_DEADLINE;
    loop {
        receive(socks, &mut r);
        if done(&r) {
            r.reached = true;
            break;
        }
        if Instant::now() >= give_up {
            break;
        }
        let room = window.map_or(u64::MAX, |w| {
            w.saturating_sub(r.sent.saturating_sub(r.answers))
        });
        if room == 0 || r.sent >= limit {
            // Back-off while the window is full: the next look is for the worker's answers.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let burst = room.min(256).min(limit - r.sent);
        for _ in 0..burst {
            let s = &socks[i % socks.len()];
            let p = &initials[(i / socks.len() + i) % initials.len()];
            i += 1;
            if s.send_to(p, t.to).is_ok() {
                r.sent += 1;
            }
        }
    }
    // Late answers: until every Initial is answered (the windowed flood), or, when the kernel
    // dropped some (the burst), until the worker has dealt with everything it received.
    let end = Instant::now() + SETTLE_DEADLINE;
    loop {
        receive(socks, &mut r);
        if r.answers >= r.sent || Instant::now() >= end {
            break;
        }
        if worker_idle(t) {
            // Its answers went out before its counters moved: they are in our sockets.
            receive(socks, &mut r);
            break;
        }
    }
    r.took = t0.elapsed();
    r.start = Some(t0);
    r.end = Some(Instant::now());
    r.cpu = cpu_ticks("thread-self") - cpu0;
    r
}

/// Bytes waiting in the receive queue of the worker's QUIC socket (bound to `at`, or to the
/// wildcard address on its port), from `/proc/net/udp`; `None` if there is no such socket.
pub fn udp_rx_queue(at: SocketAddr) -> Option<u64> {
    let ip = match at.ip() {
        std::net::IpAddr::V4(v4) => u32::from_le_bytes(v4.octets()),
        std::net::IpAddr::V6(_) => return None,
    };
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let mut found = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(queues)) = (f.get(1), f.get(4)) else {
            continue;
        };
        let Some((a, p)) = local.split_once(':') else {
            continue;
        };
        let a = u32::from_str_radix(a, 16).ok();
        if u16::from_str_radix(p, 16).ok() != Some(at.port()) || !(a == Some(ip) || a == Some(0)) {
            continue;
        }
        let rx = queues
            .split(':')
            .nth(1)
            .and_then(|q| u64::from_str_radix(q, 16).ok())
            .unwrap_or(0);
        *found.get_or_insert(0) += rx;
    }
    found
}

/// Whether the worker is done with every Initial it was sent: its UDP receive queue is empty
/// (it has read every datagram the kernel kept) and the counters that move when it answers an
/// Initial (Retries, refusals, acceptances) did not move over one publish tick (it has
/// answered what it read).
pub fn worker_idle(t: Target) -> bool {
    if udp_rx_queue(t.to) != Some(0) {
        // Back-off between two looks at the queue.
        std::thread::sleep(Duration::from_millis(10));
        return false;
    }
    let a = Quic::read(t.admin).answered();
    // The worker publishes its counters every 100 ms tick: look again after one.
    std::thread::sleep(Duration::from_millis(150));
    a == Quic::read(t.admin).answered() && udp_rx_queue(t.to) == Some(0)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Quic {
    pub retries: u64,
    pub refused: u64,
    pub accepted: u64,
    pub failed: u64,
    pub desktops: u64,
    /// The proxy's own `handshaking` gauge.
    pub handshaking_now: u64,
}

impl Quic {
    pub fn read(admin: SocketAddr) -> Quic {
        let m = http_get(admin, "/metrics").1;
        Quic {
            retries: quic_metric(&m, "retries"),
            refused: quic_metric(&m, "refused"),
            accepted: quic_metric(&m, "accepted"),
            failed: quic_metric(&m, "failed"),
            desktops: quic_metric(&m, "desktops"),
            handshaking_now: quic_metric(&m, "handshaking"),
        }
    }

    /// The counters that move when the worker answers an Initial.
    pub fn answered(&self) -> (u64, u64, u64) {
        (self.retries, self.refused, self.accepted)
    }

    /// Connections handshaking now: accepted, not failed, no desktop stream yet (valid while
    /// no desktop leaves), and the proxy's own gauge: the larger of the two.
    pub fn handshaking(&self) -> i64 {
        (self.accepted as i64 - self.failed as i64 - self.desktops as i64)
            .max(self.handshaking_now as i64)
    }
}

/// A flood's look at the worker's counters, at most every 50 ms (the flood loop asks for one
/// far more often; the worker publishes every 100 ms anyway).
pub struct Looks {
    pub admin: SocketAddr,
    pub next: Instant,
}

impl Looks {
    pub fn new(admin: SocketAddr) -> Looks {
        Looks {
            admin,
            next: Instant::now(),
        }
    }

    pub fn look(&mut self) -> Option<Quic> {
        let now = Instant::now();
        if now < self.next {
            return None;
        }
        self.next = now + Duration::from_millis(50);
        Some(Quic::read(self.admin))
    }
}

/// The counters once they show `desktops` QUIC desktops, all of them accepted.
pub fn published(admin: SocketAddr, desktops: u64) -> Quic {
    let ok = wait_until(Duration::from_secs(20), || {
        let q = Quic::read(admin);
        q.desktops == desktops && q.accepted == desktops
    });
    let q = Quic::read(admin);
    assert!(ok, "{desktops} QUIC desktops expected: {q:?}");
    q
}

/// The counters once the worker is idle (see [`worker_idle`]); fails if it never is.
pub fn settled(t: Target) -> Quic {
    let end = Instant::now() + SETTLE_DEADLINE;
    while !worker_idle(t) {
        assert!(
            Instant::now() < end,
            "the worker was still busy {SETTLE_DEADLINE:?} after the flood: {:?}, {:?} bytes queued",
            Quic::read(t.admin),
            udp_rx_queue(t.to)
        );
    }
    Quic::read(t.admin)
}

/// utime + stime of a process, in clock ticks (100 per second on Linux).
pub fn cpu_ticks(pid: impl std::fmt::Display) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

pub fn proc_kib(pid: u64, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Reads the counters and the worker's RSS every 100 ms (the worker publishes its counters
/// every 100 ms tick) while the flood runs; what it saw so far is shared, so that a flood can
/// wait for it.
pub struct Sampler {
    pub stop: Arc<AtomicBool>,
    pub seen: Arc<Mutex<Samples>>,
    pub thread: std::thread::JoinHandle<()>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Samples {
    pub n: usize,
    pub max_rss_kib: u64,
    pub max_handshaking: i64,
    /// Largest value of the proxy's `handshaking` gauge seen.
    pub max_gauge: u64,
}

impl Sampler {
    pub fn start(admin: SocketAddr, pid: u64) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Samples::default()));
        let (s, out) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let q = Quic::read(admin);
                let rss = proc_kib(pid, "VmRSS:");
                if let Ok(mut o) = out.lock() {
                    o.n += 1;
                    o.max_handshaking = o.max_handshaking.max(q.handshaking());
                    o.max_gauge = o.max_gauge.max(q.handshaking_now);
                    o.max_rss_kib = o.max_rss_kib.max(rss);
                }
                // The sampling period (one publish tick); nothing waits on it.
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler { stop, seen, thread }
    }

    /// What the sampler has seen so far.
    pub fn seen(seen: &Mutex<Samples>) -> Samples {
        seen.lock().map(|s| *s).unwrap_or_default()
    }

    pub fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler");
        Sampler::seen(&self.seen)
    }
}
