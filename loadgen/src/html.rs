//! The HTML report: one self-contained page with the table, latency over time and by
//! percentile as inline SVG plots (no scripts, no external files), and the JSON summary. Kept
//! apart from [`crate::report`], which computes what it shows.

use std::fmt::Write as _;
use std::time::SystemTime;

use hdrhistogram::Histogram;

use crate::recorder::Recorder;
use crate::report::{Interval, Summary, table};

fn svg_polyline(points: &[(f64, f64)], color: &str) -> String {
    let mut s = format!("<polyline fill='none' stroke='{color}' stroke-width='1.5' points='");
    for (x, y) in points {
        let _ = write!(s, "{x:.1},{y:.1} ");
    }
    s.push_str("'/>");
    s
}

/// A log-scale y axis mapping µs to pixels.
fn log_y(v: f64, lo: f64, hi: f64, h: f64) -> f64 {
    let v = v.max(lo);
    let f = (v.ln() - lo.ln()) / (hi.ln() - lo.ln()).max(1e-9);
    h - f * h
}

fn y_ticks(lo: f64, hi: f64, w: f64, h: f64, left: f64, top: f64) -> String {
    let mut s = String::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    // Gridlines at 1, 2 and 5 of each decade, so a chart that spans less than one decade
    // still has a scale.
    let ticks = std::iter::from_fn(|| {
        let d = decade;
        decade *= 10.0;
        (d <= hi * 1.0001).then_some([d, 2.0 * d, 5.0 * d])
    });
    for t in ticks.flatten() {
        if t >= lo * 0.9999 && t <= hi * 1.0001 {
            let y = top + log_y(t, lo, hi, h);
            let label = if t >= 1e6 {
                format!("{} s", t / 1e6)
            } else if t >= 1e3 {
                format!("{} ms", t / 1e3)
            } else {
                format!("{t} µs")
            };
            let _ = write!(
                s,
                "<line x1='{left}' x2='{}' y1='{y:.1}' y2='{y:.1}' stroke='#ddd'/>\
                 <text x='{}' y='{:.1}' font-size='10' text-anchor='end'>{label}</text>",
                left + w,
                left - 4.0,
                y + 3.0
            );
        }
    }
    s
}

/// The self-contained HTML report: latency over time and the percentile distribution.
pub fn html(s: &Summary, rec: &Recorder) -> String {
    let (w, h, left, top) = (760.0, 260.0, 60.0, 20.0);
    // Latency over time.
    let iv = &s.latency_over_time;
    let lo = iv
        .iter()
        .map(|i| i.p50)
        .filter(|v| *v > 0.0)
        .fold(f64::MAX, f64::min)
        .min(s.latency_us.p50.max(1.0))
        .max(1.0);
    let hi = iv
        .iter()
        .map(|i| i.max)
        .fold(s.latency_us.max, f64::max)
        .max(lo * 10.0);
    // Whole decades at both ends, so the lowest and highest gridlines are labelled.
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil());
    let n = iv.len().max(2) as f64 - 1.0;
    let series = |f: &dyn Fn(&Interval) -> f64| -> Vec<(f64, f64)> {
        iv.iter()
            .enumerate()
            .filter(|(_, i)| i.count > 0)
            .map(|(k, i)| (left + k as f64 / n * w, top + log_y(f(i), lo, hi, h)))
            .collect()
    };
    let mut over_time = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}'>",
        w + left + 20.0,
        h + top + 40.0
    );
    over_time.push_str(&y_ticks(lo, hi, w, h, left, top));
    over_time.push_str(&svg_polyline(&series(&|i| i.p50), "#2a7"));
    over_time.push_str(&svg_polyline(&series(&|i| i.p99), "#e80"));
    over_time.push_str(&svg_polyline(&series(&|i| i.max), "#c22"));
    let _ = write!(
        over_time,
        "<text x='{left}' y='{}' font-size='11'>seconds into the window (0 – {:.0} s); \
         <tspan fill='#2a7'>p50</tspan> <tspan fill='#e80'>p99</tspan> \
         <tspan fill='#c22'>max</tspan> per {} ms interval</text></svg>",
        top + h + 25.0,
        s.duration_s,
        rec.window.interval_ns / 1_000_000
    );
    // Percentile distribution: x = log10(1/(1-q)), as HdrHistogram plots do.
    let mut dist = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}'>",
        w + left + 20.0,
        h + top + 40.0
    );
    let xmax = 5.0; // up to 99.999 %
    let curve = |hist: &Histogram<u64>| -> Vec<(f64, f64)> {
        let mut pts = Vec::new();
        if hist.is_empty() {
            return pts;
        }
        for k in 0..=200 {
            let x = k as f64 / 200.0 * xmax;
            let q = 1.0 - 10f64.powf(-x);
            let v = hist.value_at_quantile(q) as f64 / 1000.0;
            pts.push((left + x / xmax * w, top + log_y(v, lo, hi, h)));
        }
        pts
    };
    dist.push_str(&y_ticks(lo, hi, w, h, left, top));
    for (k, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = left + k as f64 / xmax * w;
        let _ = write!(
            dist,
            "<line x1='{x:.1}' x2='{x:.1}' y1='{top}' y2='{}' stroke='#eee'/>\
             <text x='{x:.1}' y='{}' font-size='10' text-anchor='middle'>{label}</text>",
            top + h,
            top + h + 12.0
        );
    }
    dist.push_str(&svg_polyline(&curve(&rec.corrected), "#c22"));
    dist.push_str(&svg_polyline(&curve(&rec.uncorrected), "#27c"));
    let _ = write!(
        dist,
        "<text x='{left}' y='{}' font-size='11'>percentile; \
         <tspan fill='#c22'>corrected (from intended send time)</tspan>, \
         <tspan fill='#27c'>uncorrected</tspan></text></svg>",
        top + h + 30.0
    );
    let esc = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;");
    let json = serde_json::to_string_pretty(s).unwrap_or_default();
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>deskmux loadgen report</title>\
         <style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f6f6f6;padding:1em}}</style>\
         </head><body><h1>deskmux loadgen — {}</h1><pre>{}</pre>\
         <h2>Latency over time</h2>{over_time}<h2>Latency by percentile</h2>{dist}\
         <h2>JSON</h2><pre>{}</pre><p>Generated {:?}</p></body></html>",
        esc(&s.scenario),
        esc(&table(s)),
        esc(&json),
        SystemTime::now()
    )
}
