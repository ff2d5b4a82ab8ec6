//! Latency recording with no I/O: coordinated-omission-corrected latency (from the *intended*
//! send time, as wrk2 does), uncorrected latency (from the actual send) and send lag, in
//! HdrHistograms kept per worker thread and merged — percentiles are never averaged.
//!
//! Times are nanoseconds on a run-wide clock (see [`crate::engine::Clock`]); only requests whose
//! intended time falls in the measurement window (after ramp-up and warm-up, before the end)
//! are recorded. The corrected latencies are also kept per interval for the HDR interval log and
//! the latency-over-time plot.
//!
//! A request that fell due inside the window but was never sent (the run ended while it waited
//! behind the in-flight cap or behind loadgen itself) is recorded too, by
//! [`Recorder::record_unsent`]: it enters the corrected histogram with the lower bound of its
//! latency, window end minus intended time, so a stall at the end of a run cannot hide by
//! keeping requests unsent.
//!
//! Connection set-up is recorded apart, whenever it happens (most desktops connect during the
//! ramp, before the window): the connect time (TCP connect, plus the TLS or QUIC handshake) and
//! the hello round trip of every successful attempt, reconnects included, so that slow
//! sessions show outside storms too.

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

/// Highest latency a histogram holds (60 s); larger values are clamped.
pub const MAX_NS: u64 = 60_000_000_000;
/// Significant digits kept (0.1 % resolution).
pub const SIGFIGS: u8 = 3;

/// A fresh histogram with the recorder's bounds.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, SIGFIGS).expect("static histogram bounds are valid")
}

/// The measurement window, in run-clock nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First intended time recorded (ramp-up and warm-up are before it).
    pub start_ns: u64,
    /// First intended time no longer recorded.
    pub end_ns: u64,
    /// Length of one interval of the interval log.
    pub interval_ns: u64,
}

impl Window {
    /// Whether a request intended at `t` is measured.
    pub fn contains(&self, t: u64) -> bool {
        t >= self.start_ns && t < self.end_ns
    }

    /// The interval index of intended time `t` (which must be in the window).
    pub fn interval(&self, t: u64) -> usize {
        ((t - self.start_ns) / self.interval_ns.max(1)) as usize
    }

    /// Number of intervals in the window.
    pub fn intervals(&self) -> usize {
        (self.end_ns - self.start_ns).div_ceil(self.interval_ns.max(1)) as usize
    }

    /// Measured length in seconds.
    pub fn secs(&self) -> f64 {
        (self.end_ns - self.start_ns) as f64 / 1e9
    }
}

/// One worker's latency histograms.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// The window recorded.
    pub window: Window,
    /// Response time minus intended send time (coordinated omission corrected).
    pub corrected: Histogram<u64>,
    /// Response time minus actual send time.
    pub uncorrected: Histogram<u64>,
    /// Actual minus intended send time: how late loadgen sent.
    pub send_lag: Histogram<u64>,
    /// Corrected latency per interval of the window.
    pub intervals: Vec<Histogram<u64>>,
    /// Requests due inside the window that were never sent: window end minus intended time.
    pub unsent: Histogram<u64>,
    /// Connect time of each session (any time in the run).
    pub connect: Histogram<u64>,
    /// Hello round trip of each session (any time in the run).
    pub hello: Histogram<u64>,
    /// From a session's drop to its desktop's next session, resumed or not (any time in the
    /// run): how long a desktop was away.
    pub back: Histogram<u64>,
}

impl Recorder {
    /// An empty recorder for `window`.
    pub fn new(window: Window) -> Recorder {
        Recorder {
            window,
            corrected: new_hist(),
            uncorrected: new_hist(),
            send_lag: new_hist(),
            intervals: Vec::new(),
            unsent: new_hist(),
            connect: new_hist(),
            hello: new_hist(),
            back: new_hist(),
        }
    }

    /// Record one session's set-up: its connect time and its hello round trip, ns.
    pub fn record_setup(&mut self, connect_ns: u64, hello_ns: u64) {
        self.connect.saturating_record(connect_ns.max(1));
        self.hello.saturating_record(hello_ns.max(1));
    }

    /// Record one answered request: intended send time, actual send time, answer time.
    /// Returns whether it fell in the window. No allocation except the first record of each
    /// interval.
    pub fn record(&mut self, intended: u64, sent: u64, recv: u64) -> bool {
        if !self.window.contains(intended) {
            return false;
        }
        let corrected = recv.saturating_sub(intended).max(1);
        let uncorrected = recv.saturating_sub(sent).max(1);
        let lag = sent.saturating_sub(intended).max(1);
        self.corrected.saturating_record(corrected);
        self.uncorrected.saturating_record(uncorrected);
        self.send_lag.saturating_record(lag);
        let i = self.window.interval(intended);
        if self.intervals.len() <= i {
            self.intervals.resize_with(i + 1, new_hist);
        }
        self.intervals[i].saturating_record(corrected);
        true
    }

    /// Record one request that fell due at `intended` and was never sent before the window
    /// ended. Its latency is unknown but at least `window end - intended`: that lower bound goes
    /// into the corrected histograms (not the uncorrected one or the send lag: nothing was
    /// sent) and into [`Recorder::unsent`]. Returns whether `intended` was in the window.
    pub fn record_unsent(&mut self, intended: u64) -> bool {
        if !self.window.contains(intended) {
            return false;
        }
        let late = self.window.end_ns.saturating_sub(intended).max(1);
        self.corrected.saturating_record(late);
        self.unsent.saturating_record(late);
        let i = self.window.interval(intended);
        if self.intervals.len() <= i {
            self.intervals.resize_with(i + 1, new_hist);
        }
        self.intervals[i].saturating_record(late);
        true
    }

    /// Requests answered and recorded (unsent ones are not counted here).
    pub fn count(&self) -> u64 {
        self.uncorrected.len()
    }

    /// Add another worker's histograms (counts are summed, never percentiles averaged).
    pub fn merge(&mut self, other: &Recorder) {
        // Same bounds everywhere, so `add` cannot fail; clamp defensively if it did.
        let _ = self.corrected.add(&other.corrected);
        let _ = self.uncorrected.add(&other.uncorrected);
        let _ = self.send_lag.add(&other.send_lag);
        let _ = self.unsent.add(&other.unsent);
        let _ = self.connect.add(&other.connect);
        let _ = self.hello.add(&other.hello);
        let _ = self.back.add(&other.back);
        if self.intervals.len() < other.intervals.len() {
            self.intervals.resize_with(other.intervals.len(), new_hist);
        }
        for (a, b) in self.intervals.iter_mut().zip(&other.intervals) {
            let _ = a.add(b);
        }
    }

    /// Serialize (V2 format, hex) for a worker process's result on stdout.
    pub fn to_wire(&self) -> RecorderWire {
        RecorderWire {
            corrected: hist_to_hex(&self.corrected),
            uncorrected: hist_to_hex(&self.uncorrected),
            send_lag: hist_to_hex(&self.send_lag),
            intervals: self.intervals.iter().map(hist_to_hex).collect(),
            unsent: hist_to_hex(&self.unsent),
            connect: hist_to_hex(&self.connect),
            hello: hist_to_hex(&self.hello),
            back: hist_to_hex(&self.back),
        }
    }

    /// Rebuild from [`Recorder::to_wire`].
    ///
    /// # Errors
    /// Bad hex or a corrupt histogram.
    pub fn from_wire(window: Window, w: &RecorderWire) -> Result<Recorder, String> {
        Ok(Recorder {
            window,
            corrected: hist_from_hex(&w.corrected)?,
            uncorrected: hist_from_hex(&w.uncorrected)?,
            send_lag: hist_from_hex(&w.send_lag)?,
            intervals: w
                .intervals
                .iter()
                .map(|h| hist_from_hex(h))
                .collect::<Result<_, _>>()?,
            unsent: hist_from_hex(&w.unsent)?,
            connect: hist_from_hex(&w.connect)?,
            hello: hist_from_hex(&w.hello)?,
            back: hist_from_hex(&w.back)?,
        })
    }
}

/// A recorder's histograms, serialized.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RecorderWire {
    /// Corrected latency.
    pub corrected: String,
    /// Uncorrected latency.
    pub uncorrected: String,
    /// Send lag.
    pub send_lag: String,
    /// Corrected latency per interval.
    pub intervals: Vec<String>,
    /// Unsent requests' lateness.
    #[serde(default)]
    pub unsent: String,
    /// Connect times.
    #[serde(default)]
    pub connect: String,
    /// Hello round trips.
    #[serde(default)]
    pub hello: String,
    /// Drop to next session.
    #[serde(default)]
    pub back: String,
}

/// V2-serialize a histogram and hex-encode it.
pub fn hist_to_hex(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    if V2Serializer::new().serialize(h, &mut buf).is_err() {
        buf.clear();
    }
    let mut s = String::with_capacity(buf.len() * 2);
    for b in buf {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// Decode [`hist_to_hex`]; an empty string gives an empty histogram.
///
/// # Errors
/// Bad hex or a corrupt histogram.
pub fn hist_from_hex(s: &str) -> Result<Histogram<u64>, String> {
    if s.is_empty() {
        return Ok(new_hist());
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err("odd hex length".into());
    }
    let nib = |c: u8| -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err("bad hex".into()),
        }
    };
    let mut raw = Vec::with_capacity(bytes.len() / 2);
    for pair in bytes.chunks(2) {
        raw.push(nib(pair[0])? << 4 | nib(pair[1])?);
    }
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &raw[..])
        .map_err(|e| format!("histogram: {e:?}"))?;
    // Re-home into the standard bounds so merges never fail.
    let mut out = new_hist();
    out.add(&h).map_err(|e| format!("histogram: {e:?}"))?;
    Ok(out)
}

/// Percentile summary in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// 50th percentile.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// 99.99th percentile.
    pub p9999: f64,
    /// Largest value.
    pub max: f64,
}

impl Percentiles {
    /// Summarize a nanosecond histogram in microseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            p9999: us(h.value_at_quantile(0.9999)),
            max: us(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn window() -> Window {
        Window {
            start_ns: 1000 * MS,
            end_ns: 11_000 * MS,
            interval_ns: 1000 * MS,
        }
    }

    /// An open-loop schedule (one request per ms) against a server that answers in 0.5 ms but
    /// stalls for 100 ms once. A closed-loop or uncorrected recorder sees one slow request;
    /// the corrected recorder sees every request whose intended time fell in the stall.
    #[test]
    fn coordinated_omission_is_corrected() {
        let mut r = Recorder::new(window());
        let mut server_free = 0u64;
        let stall_at = 5000 * MS;
        let mut stalled = false;
        for k in 0..12_000u64 {
            let intended = k * MS;
            // The desktop sends when it can: not before the previous answer (one in flight).
            let sent = intended.max(server_free);
            let mut service = MS / 2;
            if !stalled && sent >= stall_at {
                service = 100 * MS;
                stalled = true;
            }
            let recv = sent + service;
            server_free = recv;
            r.record(intended, sent, recv);
        }
        // Only the window's 10 000 requests are recorded (warm-up and tail excluded).
        assert_eq!(r.count(), 10_000);
        let c = Percentiles::of(&r.corrected);
        let u = Percentiles::of(&r.uncorrected);
        let lag = Percentiles::of(&r.send_lag);
        // Uncorrected: a single 100 ms outlier; p99 stays at the 0.5 ms service time.
        assert!((u.p99 - 500.0).abs() < 5.0, "uncorrected p99 {}", u.p99);
        assert!(u.max >= 99_000.0);
        // Corrected: the ~200 requests due during the stall and its catch-up waited → p99 far
        // above the service time, a ramp of latencies from ~100 ms down.
        assert!(c.p99 > 40_000.0, "corrected p99 {}", c.p99);
        assert!(c.max >= 100_000.0);
        assert!(c.p50 <= 550.0, "corrected p50 {}", c.p50);
        // Send lag shows the requests that waited behind the stall.
        assert!(lag.max >= 98_000.0);
        // The stall is in the interval of t = 5 s (index 4 of the window starting at 1 s).
        assert_eq!(r.intervals.len(), 10);
        assert!(r.intervals[4].max() >= 100 * MS);
        assert!(r.intervals[3].max() < 2 * MS);
    }

    #[test]
    fn window_excludes_warmup_and_after_end() {
        let mut r = Recorder::new(window());
        assert!(!r.record(999 * MS, 999 * MS, 1000 * MS));
        assert!(r.record(1000 * MS, 1000 * MS, 1001 * MS));
        assert!(!r.record(11_000 * MS, 11_000 * MS, 11_001 * MS));
        // Intended inside, answered after the end: recorded (drain).
        assert!(r.record(10_999 * MS, 10_999 * MS, 12_000 * MS));
        assert_eq!(r.count(), 2);
    }

    #[test]
    fn merge_sums_counts_and_keeps_exact_percentiles() {
        // Worker A: 900 fast requests; worker B: 100 slow ones. The merged p50 must be fast and
        // the p95 slow — averaging the workers' percentiles would give neither.
        let mut a = Recorder::new(window());
        let mut b = Recorder::new(window());
        for i in 0..900u64 {
            let t = 1000 * MS + i * MS;
            a.record(t, t, t + 100_000); // 100 µs
        }
        for i in 0..100u64 {
            let t = 3000 * MS + i * MS;
            b.record(t, t, t + 50 * MS); // 50 ms
        }
        let mut m = Recorder::new(window());
        m.merge(&a);
        m.merge(&b);
        assert_eq!(m.count(), 1000);
        let p = Percentiles::of(&m.corrected);
        assert!((p.p50 - 100.0).abs() < 1.0, "p50 {}", p.p50);
        assert!(m.corrected.value_at_quantile(0.95) >= 49 * MS);
        assert!(p.max >= 49_900.0);
        // Intervals merge index by index.
        assert_eq!(m.intervals.len(), 3);
        assert_eq!(m.intervals[0].len(), 900);
        assert_eq!(m.intervals[2].len(), 100);
        // Round trip through the wire format used between processes.
        let w = m.to_wire();
        let back = Recorder::from_wire(window(), &w).unwrap();
        assert_eq!(back.corrected, m.corrected);
        assert_eq!(back.intervals.len(), 3);
        assert_eq!(back.intervals[2], m.intervals[2]);
        let mut twice = back.clone();
        twice.merge(&back);
        assert_eq!(twice.count(), 2000);
        assert_eq!(
            twice.corrected.value_at_quantile(0.5),
            m.corrected.value_at_quantile(0.5)
        );
    }

    /// A stall across the end of the window: the requests due in its last second were never
    /// sent. They must weigh in the corrected figures with at least (end - intended), not
    /// vanish, while the answered count and the uncorrected figures ignore them.
    #[test]
    fn unsent_requests_count_in_the_corrected_histogram() {
        let w = window();
        let mut r = Recorder::new(w);
        // 9 s of answered requests (1 per ms, 100 µs each), then 1 s due and never sent.
        for k in 0..9000u64 {
            let t = w.start_ns + k * MS;
            r.record(t, t, t + 100_000);
        }
        for k in 9000..10_000u64 {
            assert!(r.record_unsent(w.start_ns + k * MS));
        }
        assert!(
            !r.record_unsent(w.end_ns),
            "after the window: not due in it"
        );
        assert_eq!(r.count(), 9000);
        assert_eq!(r.corrected.len(), 10_000);
        assert_eq!(r.unsent.len(), 1000);
        assert!(Percentiles::of(&r.uncorrected).p99 < 101.0);
        // 10 % of the requests waited 0-1 s: the p99 is the lateness of the 100th from the
        // end, ~900 ms; the p95 ~500 ms.
        let c = Percentiles::of(&r.corrected);
        assert!(c.p99 > 850_000.0, "corrected p99 {}", c.p99);
        assert!(c.max >= 999_000.0, "corrected max {}", c.max);
        assert_eq!(r.intervals[9].len(), 1000);
        let back = Recorder::from_wire(w, &r.to_wire()).unwrap();
        assert_eq!(back.unsent, r.unsent);
    }

    #[test]
    fn empty_and_bad_wire() {
        assert!(hist_from_hex("").unwrap().is_empty());
        assert!(hist_from_hex("zz").is_err());
        assert!(hist_from_hex("abc").is_err());
        assert_eq!(Percentiles::of(&new_hist()), Percentiles::default());
    }
}
