//! The key figures of a result, and their spread over repeated runs (`--repeat N`). One run
//! of a benchmark on a shared machine says little about the next; the spread (min, median,
//! max) says whether a difference between two results is larger than the noise. `diff`
//! compares the same figures.

use serde::Serialize;
use serde_json::Value;

/// A key figure: its name, where it is in a summary's JSON, and whether more is better.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    /// Name (the key of `spread` and of `diff`'s rows).
    pub name: &'static str,
    /// JSON pointer into a summary.
    pub pointer: &'static str,
    /// Higher is better (throughput), else lower is (latency, CPU, errors).
    pub higher_is_better: bool,
}

/// The figures compared across runs and results. `server_*`/`proxy_*` exist only in `demo`
/// and `compare` results (the stack's CPU).
pub const FIGURES: &[Figure] = &[
    fig("throughput_rps", "/throughput_rps", true),
    fig("latency_p50_us", "/latency_us/p50", false),
    fig("latency_p99_us", "/latency_us/p99", false),
    fig("latency_p999_us", "/latency_us/p999", false),
    fig("uncorrected_p99_us", "/latency_uncorrected_us/p99", false),
    fig("connect_p99_us", "/connect_us/p99", false),
    fig("hello_p99_us", "/hello_us/p99", false),
    fig(
        "loadgen_cpu_us_per_request",
        "/loadgen_cpu_us_per_request",
        false,
    ),
    fig(
        "server_cpu_us_per_request",
        "/server/server_cpu_us_per_request",
        false,
    ),
    fig(
        "proxy_cpu_us_per_request",
        "/server/proxy_cpu_us_per_request",
        false,
    ),
    fig("errors", "/requests/errors", false),
    fig("lost", "/requests/lost", false),
    fig("wrong", "/requests/wrong", false),
    fig("unsent", "/requests/unsent", false),
];

const fn fig(name: &'static str, pointer: &'static str, higher_is_better: bool) -> Figure {
    Figure {
        name,
        pointer,
        higher_is_better,
    }
}

/// min, median and max of one figure over the runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (`None` when empty).
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            min: v[0],
            median,
            max: v[n - 1],
        })
    }
}

/// The spread of every key figure present in `runs` (summaries as JSON), in [`FIGURES`]
/// order.
pub fn spread(runs: &[Value]) -> Vec<(&'static str, Spread)> {
    FIGURES
        .iter()
        .filter_map(|f| {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.pointer(f.pointer).and_then(Value::as_f64))
                .collect();
            Spread::of(&v).map(|s| (f.name, s))
        })
        .collect()
}

/// The document `--json` gets for repeated runs: `runs[]` (each a summary) and
/// `spread.<figure>.{min, median, max}`.
pub fn document(runs: Vec<Value>) -> Value {
    let spread: serde_json::Map<String, Value> = spread(&runs)
        .into_iter()
        .map(|(k, s)| {
            (
                k.to_string(),
                serde_json::to_value(s).unwrap_or(Value::Null),
            )
        })
        .collect();
    serde_json::json!({ "repeat": runs.len(), "runs": runs, "spread": spread })
}

/// The spread as a table for the terminal.
pub fn table(runs: &[Value]) -> String {
    let mut o = format!(
        "spread over {} runs:\n  {:<28} {:>12} {:>12} {:>12}\n",
        runs.len(),
        "figure",
        "min",
        "median",
        "max"
    );
    for (name, s) in spread(runs) {
        o.push_str(&format!(
            "  {name:<28} {:>12.1} {:>12.1} {:>12.1}\n",
            s.min, s.median, s.max
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_min_median_max_and_skips_absent_figures() {
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Some(Spread {
                min: 1.0,
                median: 2.0,
                max: 3.0
            })
        );
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        let runs = vec![
            serde_json::json!({"throughput_rps": 100.0, "latency_us": {"p99": 7.0}}),
            serde_json::json!({"throughput_rps": 300.0, "latency_us": {"p99": 5.0}}),
            serde_json::json!({"throughput_rps": 200.0, "latency_us": {"p99": 6.0}}),
        ];
        let s = spread(&runs);
        assert_eq!(s[0].0, "throughput_rps");
        assert_eq!(s[0].1.median, 200.0);
        assert!(!s.iter().any(|(k, _)| *k == "server_cpu_us_per_request"));
        let d = document(runs);
        assert_eq!(d["spread"]["latency_p99_us"]["max"], 7.0);
        assert_eq!(d["runs"].as_array().unwrap().len(), 3);
    }
}
