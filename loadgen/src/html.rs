//! The HTML report: one self-contained page (no scripts, no external files) with the
//! warnings, the table, inline SVG plots — throughput, connections and errors over the whole
//! run, corrected latency over the window, latency by percentile — and the JSON summary. Kept
//! apart from [`crate::report`], which computes what it shows.
//!
//! Every plot has labelled axes with ticks. The percentile plot's scale covers both curves:
//! the uncorrected latency is often well under the corrected p50, and a scale taken from the
//! corrected curve alone pinned it flat at the axis floor.

use std::fmt::Write as _;
use std::time::SystemTime;

use hdrhistogram::Histogram;

use crate::recorder::Recorder;
use crate::report::{Summary, table};

/// Plot area and margins, px.
const W: f64 = 760.0;
const H: f64 = 220.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 44.0;

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}

fn polyline(points: &[(f64, f64)], color: &str, class: &str) -> String {
    let mut s = format!(
        "<polyline class='{class}' fill='none' stroke='{color}' stroke-width='1.5' points='"
    );
    for (x, y) in points {
        let _ = write!(s, "{x:.1},{y:.1} ");
    }
    s.push_str("'/>");
    s
}

/// Round tick values covering `lo..=hi`: steps of 1, 2 or 5 × 10^k, about five of them.
pub fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-6 && out.len() < 20 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

/// A number for a tick label: no needless decimals, k/M for large values.
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    let (x, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    };
    format!("{s}{suffix}")
}

/// A latency (µs) for a tick label.
fn fmt_us(t: f64) -> String {
    if t >= 1e6 {
        format!("{} s", fmt_num(t / 1e6))
    } else if t >= 1e3 {
        format!("{} ms", fmt_num(t / 1e3))
    } else {
        format!("{} µs", fmt_num(t))
    }
}

/// The x axis: ticks, their labels and the axis title.
fn x_axis(ticks: &[(f64, String)], title: &str) -> String {
    let mut s = format!(
        "<line x1='{LEFT}' x2='{}' y1='{}' y2='{}' stroke='#444'/>",
        LEFT + W,
        TOP + H,
        TOP + H
    );
    for (x, label) in ticks {
        let _ = write!(
            s,
            "<line x1='{x:.1}' x2='{x:.1}' y1='{TOP}' y2='{}' stroke='#eee'/>\
             <line x1='{x:.1}' x2='{x:.1}' y1='{}' y2='{}' stroke='#444'/>\
             <text class='tick x-tick' x='{x:.1}' y='{}' font-size='10' text-anchor='middle'>{}</text>",
            TOP + H,
            TOP + H,
            TOP + H + 4.0,
            TOP + H + 15.0,
            esc(label)
        );
    }
    let _ = write!(
        s,
        "<text class='axis-label x-label' x='{}' y='{}' font-size='11' text-anchor='middle'>{}</text>",
        LEFT + W / 2.0,
        TOP + H + 32.0,
        esc(title)
    );
    s
}

/// The y axis: ticks (pixel y, label), gridlines and the axis title.
fn y_axis(ticks: &[(f64, String)], title: &str) -> String {
    let mut s = format!(
        "<line x1='{LEFT}' x2='{LEFT}' y1='{TOP}' y2='{}' stroke='#444'/>",
        TOP + H
    );
    for (y, label) in ticks {
        let _ = write!(
            s,
            "<line x1='{LEFT}' x2='{}' y1='{y:.1}' y2='{y:.1}' stroke='#ddd'/>\
             <text class='tick y-tick' x='{}' y='{:.1}' font-size='10' text-anchor='end'>{}</text>",
            LEFT + W,
            LEFT - 4.0,
            y + 3.0,
            esc(label)
        );
    }
    let _ = write!(
        s,
        "<text class='axis-label y-label' font-size='11' text-anchor='middle' \
         transform='translate(14,{:.1}) rotate(-90)'>{}</text>",
        TOP + H / 2.0,
        esc(title)
    );
    s
}

fn svg_open(id: &str) -> String {
    format!(
        "<svg id='{id}' xmlns='http://www.w3.org/2000/svg' width='{}' height='{}'>",
        LEFT + W + 20.0,
        TOP + H + BOTTOM
    )
}

/// A legend line under a plot.
fn legend(items: &[(&str, &str)]) -> String {
    let mut s = String::from("<p class='legend'>");
    for (color, label) in items {
        let _ = write!(
            s,
            "<span style='color:{color}'>&#9632; {}</span> ",
            esc(label)
        );
    }
    s.push_str("</p>");
    s
}

/// One line series of a linear chart: CSS class, colour, (x, y) points in data units.
struct Series<'a> {
    class: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// A linear chart over x in `0..=x_max` seconds, y from 0; `shade` marks an x range (the
/// measured window).
fn linear_chart(
    id: &str,
    x_title: &str,
    y_title: &str,
    x_max: f64,
    series: &[Series<'_>],
    shade: Option<(f64, f64)>,
) -> String {
    let x_max = x_max.max(1e-3);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let y_ticks = nice_ticks(0.0, if y_max > 0.0 { y_max * 1.05 } else { 1.0 });
    let y_top = y_ticks.last().copied().unwrap_or(1.0).max(y_max).max(1e-9);
    let px = |x: f64| LEFT + x / x_max * W;
    let py = |y: f64| TOP + H - y / y_top * H;
    let mut s = svg_open(id);
    if let Some((a, b)) = shade {
        let (a, b) = (px(a.clamp(0.0, x_max)), px(b.clamp(0.0, x_max)));
        let _ = write!(
            s,
            "<rect class='window' x='{a:.1}' y='{TOP}' width='{:.1}' height='{H}' fill='#f3f7ff'/>",
            (b - a).max(0.0)
        );
    }
    s.push_str(&y_axis(
        &y_ticks
            .iter()
            .map(|t| (py(*t), fmt_num(*t)))
            .collect::<Vec<_>>(),
        y_title,
    ));
    s.push_str(&x_axis(
        &nice_ticks(0.0, x_max)
            .iter()
            .map(|t| (px(*t), fmt_num(*t)))
            .collect::<Vec<_>>(),
        x_title,
    ));
    for se in series {
        let pts: Vec<(f64, f64)> = se.points.iter().map(|(x, y)| (px(*x), py(*y))).collect();
        s.push_str(&polyline(&pts, se.color, se.class));
    }
    s.push_str("</svg>");
    s
}

/// A log-scale y position for `v` µs between `lo` and `hi`.
fn log_y(v: f64, lo: f64, hi: f64) -> f64 {
    let v = v.clamp(lo, hi);
    let f = (v.ln() - lo.ln()) / (hi.ln() - lo.ln()).max(1e-9);
    TOP + H - f * H
}

/// Log-scale ticks at 1, 2 and 5 of each decade within `lo..=hi`; at each decade only when
/// more than three decades would crowd the labels.
fn log_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    let steps: &[f64] = if hi / lo > 1e3 {
        &[1.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    while decade <= hi * 1.0001 {
        for t in steps.iter().map(|m| m * decade) {
            if t >= lo * 0.9999 && t <= hi * 1.0001 {
                out.push((log_y(t, lo, hi), fmt_us(t)));
            }
        }
        decade *= 10.0;
    }
    out
}

/// Whole decades around `lo..=hi` (µs, lo at least 1).
fn decades(lo: f64, hi: f64) -> (f64, f64) {
    let lo = 10f64.powf(lo.max(1.0).log10().floor());
    let hi = 10f64.powf(hi.max(lo * 10.0).log10().ceil());
    (lo, hi.max(lo * 10.0))
}

/// Smallest and largest recorded value of the histograms, µs (non-empty ones only).
fn hist_range(hists: &[&Histogram<u64>]) -> Option<(f64, f64)> {
    hists
        .iter()
        .filter(|h| !h.is_empty())
        .map(|h| (h.min() as f64 / 1000.0, h.max() as f64 / 1000.0))
        .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)))
}

/// Corrected latency per interval of the window, log scale.
fn latency_over_time(s: &Summary, rec: &Recorder) -> String {
    let iv = &s.latency_over_time;
    let lo = iv
        .iter()
        .filter(|i| i.count > 0)
        .map(|i| i.p50)
        .fold(f64::MAX, f64::min);
    let hi = iv.iter().map(|i| i.max).fold(0.0, f64::max);
    let (lo, hi) = decades(if lo == f64::MAX { 1.0 } else { lo }, hi);
    let step = rec.window.interval_ns as f64 / 1e9;
    let x_max = (iv.len() as f64 * step).max(step);
    let px = |k: usize| LEFT + (k as f64 + 0.5) * step / x_max * W;
    let series = |f: &dyn Fn(&crate::report::Interval) -> f64| -> Vec<(f64, f64)> {
        iv.iter()
            .enumerate()
            .filter(|(_, i)| i.count > 0)
            .map(|(k, i)| (px(k), log_y(f(i), lo, hi)))
            .collect()
    };
    let mut out = svg_open("latency-over-time");
    out.push_str(&y_axis(&log_ticks(lo, hi), "corrected latency"));
    out.push_str(&x_axis(
        &nice_ticks(0.0, x_max)
            .iter()
            .map(|t| (LEFT + t / x_max * W, fmt_num(*t)))
            .collect::<Vec<_>>(),
        "seconds into the measured window",
    ));
    out.push_str(&polyline(&series(&|i| i.p50), "#2a7", "p50"));
    out.push_str(&polyline(&series(&|i| i.p99), "#e80", "p99"));
    out.push_str(&polyline(&series(&|i| i.max), "#c22", "max"));
    out.push_str("</svg>");
    out.push_str(&legend(&[
        ("#2a7", "p50"),
        ("#e80", "p99"),
        (
            "#c22",
            &format!("max per {} ms interval", rec.window.interval_ns / 1_000_000),
        ),
    ]));
    out
}

/// Latency by percentile, log-log as HdrHistogram plots are: x = log10(1/(1-q)).
fn by_percentile(rec: &Recorder) -> String {
    let (lo, hi) = hist_range(&[&rec.corrected, &rec.uncorrected]).unwrap_or((1.0, 10.0));
    let (lo, hi) = decades(lo, hi);
    let xmax = 5.0; // up to 99.999 %
    let curve = |hist: &Histogram<u64>| -> Vec<(f64, f64)> {
        if hist.is_empty() {
            return Vec::new();
        }
        (0..=200)
            .map(|k| {
                let x = k as f64 / 200.0 * xmax;
                let q = 1.0 - 10f64.powf(-x);
                let v = hist.value_at_quantile(q) as f64 / 1000.0;
                (LEFT + x / xmax * W, log_y(v, lo, hi))
            })
            .collect()
    };
    let mut out = svg_open("latency-by-percentile");
    out.push_str(&y_axis(&log_ticks(lo, hi), "latency"));
    let ticks: Vec<(f64, String)> = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
        .map(|(k, l)| (LEFT + k as f64 / xmax * W, (*l).to_string()))
        .collect();
    out.push_str(&x_axis(&ticks, "percentile"));
    out.push_str(&polyline(&curve(&rec.corrected), "#c22", "corrected"));
    out.push_str(&polyline(&curve(&rec.uncorrected), "#27c", "uncorrected"));
    out.push_str("</svg>");
    out.push_str(&legend(&[
        ("#c22", "corrected (from the intended send time)"),
        ("#27c", "uncorrected (from the actual send)"),
    ]));
    out
}

/// Throughput, connections and errors over the whole run, from the timeline.
fn over_the_run(s: &Summary) -> String {
    let tl = &s.timeline;
    let x_max = tl
        .last()
        .map_or(0.0, |p| p.t_s)
        .max(s.ramp_s + s.warmup_s + s.duration_s);
    let window = Some((s.ramp_s + s.warmup_s, s.ramp_s + s.warmup_s + s.measured_s));
    let pts = |f: &dyn Fn(&crate::report::TimePoint) -> f64| -> Vec<(f64, f64)> {
        tl.iter().map(|p| (p.t_s, f(p))).collect()
    };
    let x_title = "seconds since the start (shaded: the measured window)";
    let mut out = String::new();
    out.push_str("<h2>Throughput over the run</h2>");
    out.push_str(&linear_chart(
        "throughput",
        x_title,
        "answers ok per second",
        x_max,
        &[Series {
            class: "ok-rps",
            color: "#27c",
            points: pts(&|p| p.ok_rps),
        }],
        window,
    ));
    out.push_str("<h2>Connections over the run</h2>");
    out.push_str(&linear_chart(
        "connections",
        x_title,
        "desktops",
        x_max,
        &[
            Series {
                class: "connected",
                color: "#2a7",
                points: pts(&|p| p.connected as f64),
            },
            Series {
                class: "failed",
                color: "#c22",
                points: pts(&|p| p.failed as f64),
            },
        ],
        window,
    ));
    out.push_str(&legend(&[
        ("#2a7", "connected"),
        ("#c22", "gave up connecting"),
    ]));
    out.push_str("<h2>Errors over the run</h2>");
    out.push_str(&linear_chart(
        "errors",
        x_title,
        "errors, lost and wrong per second",
        x_max,
        &[Series {
            class: "errors-per-s",
            color: "#c22",
            points: pts(&|p| p.errors_per_s),
        }],
        window,
    ));
    out
}

/// The warnings (saturated, target missed, stopped early, verification failed), each in full.
fn warnings(s: &Summary) -> String {
    let mut w = Vec::new();
    if s.loadgen_saturated {
        w.push(format!(
            "SATURATED: {}",
            s.loadgen_saturation_reasons.join("; ")
        ));
    }
    if s.target_missed {
        w.push(format!(
            "TARGET MISSED: {}",
            s.target_missed_reasons.join("; ")
        ));
    }
    if s.stopped_early {
        w.push(format!(
            "STOPPED EARLY (Ctrl-C): figures over the {:.1} s measured (of {:.1} s planned)",
            s.measured_s, s.duration_s
        ));
    }
    if s.verification_failed {
        w.push("VERIFICATION FAILED: requests lost or answered wrongly, or event gaps".into());
    }
    if w.is_empty() {
        return String::new();
    }
    let mut out = String::from("<div id='warnings'>");
    for x in w {
        let _ = write!(out, "<p class='warning'>{}</p>", esc(&x));
    }
    out.push_str("</div>");
    out
}

/// The self-contained HTML report.
pub fn html(s: &Summary, rec: &Recorder) -> String {
    let json = serde_json::to_string_pretty(s).unwrap_or_default();
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>deskmux loadgen report</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:900px}}\
         pre{{background:#f6f6f6;padding:1em;white-space:pre-wrap;overflow-wrap:anywhere}}\
         .warning{{background:#fee;border:1px solid #c22;padding:.5em;overflow-wrap:anywhere}}\
         .legend{{font-size:12px;margin:0 0 1em 70px}}</style>\
         </head><body><h1>deskmux loadgen — {}</h1>{}<pre id='table'>{}</pre>{}\
         <h2>Latency over the window</h2>{}<h2>Latency by percentile</h2>{}\
         <h2>JSON</h2><pre id='json'>{}</pre><p>Generated {:?}</p></body></html>",
        esc(&s.scenario),
        warnings(s),
        esc(&table(s)),
        over_the_run(s),
        latency_over_time(s, rec),
        by_percentile(rec),
        esc(&json),
        SystemTime::now()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(0.0, 37_000.0).len(), 4);
        assert_eq!(nice_ticks(0.0, 37_000.0)[1], 10_000.0);
        assert_eq!(fmt_num(20_000.0), "20k");
        assert_eq!(fmt_num(2.5), "2.5");
        assert_eq!(fmt_us(2000.0), "2 ms");
    }

    #[test]
    fn the_percentile_scale_covers_the_uncorrected_curve() {
        let w = crate::recorder::Window {
            start_ns: 0,
            end_ns: 1_000_000_000,
            interval_ns: 100_000_000,
        };
        let mut r = Recorder::new(w);
        // Sent 5 ms late, answered 200 µs after the send: the corrected latency is ~5.2 ms,
        // the uncorrected 200 µs — under the corrected p50's decade (1 ms).
        for i in 0..1000u64 {
            let t = i * 1_000_000;
            r.record(t, t + 5_000_000, t + 5_200_000 + i * 100);
        }
        let page = by_percentile(&r);
        let line = page
            .split("<polyline class='uncorrected'")
            .nth(1)
            .and_then(|x| x.split("points='").nth(1))
            .and_then(|x| x.split('\'').next())
            .unwrap();
        let ys: Vec<f64> = line
            .split_whitespace()
            .map(|p| p.split(',').nth(1).unwrap().parse().unwrap())
            .collect();
        assert!(
            ys.iter().all(|y| *y < TOP + H - 1.0),
            "the uncorrected curve sits on the axis floor: {ys:?}"
        );
        assert!(page.contains(">100 µs<"), "{page}");
    }
}
