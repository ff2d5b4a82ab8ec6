//! `loadgen diff A.json B.json`: two saved results side by side with ratios, so a change
//! (a new build, a setting) is judged on the figures rather than by eye. Either file may be
//! one run's summary or a `--repeat` document, whose medians are compared.

use serde_json::Value;

use crate::spread::FIGURES;

/// Why two results cannot be compared.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// A file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not JSON.
    #[error("{path}: not JSON: {source}")]
    Json {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A file is JSON but no loadgen result.
    #[error("{0}: not a loadgen result (no throughput_rps, latency_us or spread)")]
    NotAResult(String),
}

/// One compared figure.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    /// Figure name (see [`FIGURES`]).
    pub figure: &'static str,
    /// Its value in A.
    pub a: f64,
    /// Its value in B.
    pub b: f64,
    /// B / A (`None` when A is 0).
    pub ratio: Option<f64>,
    /// B is better than A by more than 1 % (`None`: the same within 1 %, or no ratio).
    pub better: Option<bool>,
}

/// Read a result file.
///
/// # Errors
/// Unreadable, not JSON, or not a loadgen result.
pub fn read(path: &std::path::Path) -> Result<Value, DiffError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DiffError::Read {
        path: name.clone(),
        source,
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|source| DiffError::Json {
        path: name.clone(),
        source,
    })?;
    if v.get("throughput_rps").is_none() && v.get("spread").is_none() {
        return Err(DiffError::NotAResult(name));
    }
    Ok(v)
}

/// A figure of a result: the summary's value, or for a `--repeat` document the median.
fn figure(v: &Value, name: &str, pointer: &str) -> Option<f64> {
    match v.get("spread") {
        Some(s) => s.get(name)?.get("median")?.as_f64(),
        None => v.pointer(pointer)?.as_f64(),
    }
}

/// Compare the figures present in both.
pub fn diff(a: &Value, b: &Value) -> Vec<Row> {
    FIGURES
        .iter()
        .filter_map(|f| {
            let (x, y) = (figure(a, f.name, f.pointer)?, figure(b, f.name, f.pointer)?);
            let ratio = (x != 0.0).then(|| y / x);
            let better = ratio.and_then(|r| {
                if (r - 1.0).abs() <= 0.01 {
                    None
                } else {
                    Some((r > 1.0) == f.higher_is_better)
                }
            });
            Some(Row {
                figure: f.name,
                a: x,
                b: y,
                ratio,
                better,
            })
        })
        .collect()
}

/// The rows as a table.
pub fn table(a_name: &str, b_name: &str, rows: &[Row]) -> String {
    let mut o = format!("A = {a_name}\nB = {b_name}\n");
    o.push_str(&format!(
        "  {:<28} {:>14} {:>14} {:>9}\n",
        "figure", "A", "B", "B/A"
    ));
    for r in rows {
        let ratio = r.ratio.map_or("-".to_string(), |x| format!("{x:.3}×"));
        let mark = match r.better {
            Some(true) => "  better",
            Some(false) => "  worse",
            None => "",
        };
        o.push_str(&format!(
            "  {:<28} {:>14.1} {:>14.1} {:>9}{mark}\n",
            r.figure, r.a, r.b, ratio
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_direction() {
        let a = serde_json::json!({"throughput_rps": 1000.0, "latency_us": {"p99": 200.0},
            "requests": {"errors": 0}});
        let b = serde_json::json!({"throughput_rps": 1500.0, "latency_us": {"p99": 100.0},
            "requests": {"errors": 3}});
        let rows = diff(&a, &b);
        let get = |n: &str| rows.iter().find(|r| r.figure == n).unwrap().clone();
        assert_eq!(get("throughput_rps").ratio, Some(1.5));
        assert_eq!(get("throughput_rps").better, Some(true));
        assert_eq!(get("latency_p99_us").ratio, Some(0.5));
        assert_eq!(get("latency_p99_us").better, Some(true));
        assert_eq!(get("errors").ratio, None, "no ratio to zero");
        let rep = serde_json::json!({"spread": {"throughput_rps": {"median": 500.0}}});
        assert_eq!(
            diff(&a, &rep)[0].ratio,
            Some(0.5),
            "medians of a --repeat document"
        );
        assert!(table("a", "b", &rows).contains("1.500×"));
    }
}
