//! The exposition around the registry: `process_*` families read from `/proc/self`, small
//! hand-written families (the supervisor's), the choice between OpenMetrics and the
//! Prometheus text format 0.0.4 by `Accept`, and the conversion to 0.0.4.
//!
//! prometheus-client only writes OpenMetrics; scrapers and tools that ask for `text/plain`
//! (or ask for nothing) get 0.0.4, which differs in little: no `# EOF` or `# UNIT`, counters
//! are typed under their `_total` name, no `_created` samples.

use std::fmt::Write as _;

/// Content type of OpenMetrics text.
pub const CONTENT_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format.
pub const CONTENT_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header prefers OpenMetrics over the text format: only when it names
/// `application/openmetrics-text` with a quality above that of `text/plain` (or `*/*`).
/// No header: text.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for part in accept.split(',') {
        let mut it = part.split(';');
        let media = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = it
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    om > 0.0 && om > text
}

/// OpenMetrics text (one registry's or a merge's) as text format 0.0.4.
pub fn to_text_format(om: &str) -> String {
    let mut types: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for l in om.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                types.insert(n, t);
            }
        }
    }
    let mut out = String::with_capacity(om.len());
    for l in om.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") || l.is_empty() {
            continue;
        }
        for (prefix, is_type) in [("# HELP ", false), ("# TYPE ", true)] {
            if let Some(rest) = l.strip_prefix(prefix) {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let (name, tail) = match types.get(name).copied() {
                    Some("counter") if is_type => (format!("{name}_total"), "counter"),
                    Some("counter") => (format!("{name}_total"), tail),
                    Some("info") if is_type => (format!("{name}_info"), "gauge"),
                    Some("info") => (format!("{name}_info"), tail),
                    Some("stateset") if is_type => (name.to_string(), "gauge"),
                    Some("gaugehistogram") if is_type => (name.to_string(), "histogram"),
                    Some("unknown") if is_type => (name.to_string(), "untyped"),
                    _ => (name.to_string(), tail),
                };
                let _ = writeln!(out, "{prefix}{name} {tail}");
            }
        }
        if l.starts_with('#') {
            continue;
        }
        let name = l.split(['{', ' ']).next().unwrap_or("");
        if name.ends_with("_created") {
            continue;
        }
        // An exemplar (` # {...} v`) is OpenMetrics only.
        let sample = l.split(" # ").next().unwrap_or(l);
        out.push_str(sample);
        out.push('\n');
    }
    out
}

/// One hand-written family in OpenMetrics text: `# HELP`, `# TYPE` and its samples (labels
/// already rendered, `""` for none). A counter's samples get `_total`.
pub fn counter_family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: &[(String, f64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let suffix = if kind == "counter" { "_total" } else { "" };
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{suffix}{labels} {v}");
    }
}

/// This process's `process_*` families in OpenMetrics text (labels `labels`, rendered, e.g.
/// `{worker="0"}` or `""`): CPU seconds, open and maximum file descriptors, resident and
/// virtual memory, start time. What `/proc/self` cannot tell is left out.
pub fn process_families(labels: &str) -> String {
    let mut out = String::new();
    let one = |v: f64| vec![(labels.to_string(), v)];
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces, so split after its `)`).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // USER_HZ: 100 on every Linux architecture the proxy builds for (the ABI fixes it).
    const TICKS: f64 = 100.0;
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // stat(5): utime is field 14, stime 15, starttime 22; `fields` starts at field 3.
    if let (Some(u), Some(s)) = (field(11), field(12)) {
        counter_family(
            &mut out,
            "process_cpu_seconds",
            "counter",
            "User and system CPU time spent, seconds",
            &one((u + s) / TICKS),
        );
    }
    if let Some(start) = field(19)
        && let Some(btime) = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|b| b.trim().parse::<f64>().ok())
        })
    {
        counter_family(
            &mut out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, seconds",
            &one(btime + start / TICKS),
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries.
        let n = dir.count().saturating_sub(1);
        counter_family(
            &mut out,
            "process_open_fds",
            "gauge",
            "Open file descriptors",
            &one(n as f64),
        );
    }
    if let Some(crate::config::FdLimit(n)) = crate::config::FdLimit::of_this_process() {
        counter_family(
            &mut out,
            "process_max_fds",
            "gauge",
            "The open-file limit (RLIMIT_NOFILE, soft)",
            &one(n as f64),
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|k| k * 1024.0)
    };
    if let Some(rss) = kb("VmRSS:") {
        counter_family(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory, bytes",
            &one(rss),
        );
    }
    if let Some(vm) = kb("VmSize:") {
        counter_family(
            &mut out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory, bytes",
            &one(vm),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_picks_the_format() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
        // Prometheus' own scrape header prefers OpenMetrics.
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        )));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text;q=0.1,text/plain;version=0.0.4"
        )));
    }

    #[test]
    fn converts_counters_and_drops_openmetrics_only_lines() {
        let om = "# HELP x Xs.\n# TYPE x counter\nx_total{a=\"1\"} 2\nx_created{a=\"1\"} 1.5\n# HELP g G.\n# TYPE g gauge\n# UNIT g bytes\ng 1 # {t=\"1\"} 1\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP x_total Xs.\n# TYPE x_total counter\nx_total{a=\"1\"} 2\n# HELP g G.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn process_families_read_proc() {
        let p = process_families("{worker=\"0\"}");
        for f in [
            "process_cpu_seconds_total{worker=\"0\"}",
            "process_open_fds{worker=\"0\"}",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_max_fds",
        ] {
            assert!(p.contains(f), "{f} missing: {p}");
        }
        // The start time is this test process's: in the past, and not long ago.
        let start: f64 = p
            .lines()
            .find_map(|l| l.strip_prefix("process_start_time_seconds{worker=\"0\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
    }
}
