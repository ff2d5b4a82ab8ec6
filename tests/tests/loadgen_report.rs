//! loadgen's HTML report, rendered by a real headless browser (Debian's chromium; `.ci/run`
//! installs it): plots of throughput, connections and errors over the run and of latency,
//! every axis labelled with ticks, the uncorrected latency curve drawn over its own values
//! rather than flat on the axis floor, and the TARGET MISSED / SATURATED warnings shown in
//! full, not cut off.
//!
//! The browser runs a small script appended to a copy of the report that measures the laid-out
//! page and writes what it found into the DOM, which `--dump-dom` prints.

mod loadgen_support;
mod proxy_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use loadgen_support::*;
use proxy_support::*;

/// Measures the laid-out report; the result goes into `<pre id='check'>`.
const CHECK: &str = r#"<script>
(function () {
  const r = { plots: {}, warnings: [], viewport: document.documentElement.clientWidth };
  for (const id of ['throughput', 'connections', 'errors', 'latency-over-time',
                    'latency-by-percentile']) {
    const svg = document.getElementById(id);
    if (!svg) { r.plots[id] = null; continue; }
    const lines = [...svg.querySelectorAll('polyline')];
    r.plots[id] = {
      lines: lines.length,
      points: Math.max(0, ...lines.map(p => p.points.numberOfItems)),
      xticks: [...svg.querySelectorAll('.x-tick')].map(t => t.textContent),
      yticks: [...svg.querySelectorAll('.y-tick')].map(t => t.textContent),
      xlabel: (svg.querySelector('.x-label') || {}).textContent || '',
      ylabel: (svg.querySelector('.y-label') || {}).textContent || '',
      right: svg.getBoundingClientRect().right,
    };
  }
  const u = document.querySelector('#latency-by-percentile polyline.uncorrected');
  r.uncorrected_height = u ? u.getBBox().height : -1;
  r.uncorrected_points = u ? u.points.numberOfItems : 0;
  for (const w of document.querySelectorAll('.warning')) {
    const b = w.getBoundingClientRect();
    r.warnings.push({ text: w.textContent, scroll: w.scrollWidth, client: w.clientWidth,
                      right: b.right, visible: b.width > 0 && b.height > 0 });
  }
  const t = document.getElementById('table');
  r.table_overflow = t ? t.scrollWidth - t.clientWidth : -1;
  const pre = document.createElement('pre');
  pre.id = 'check';
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
})();
</script>"#;

/// The chromium binary: fails the test when missing (CI installs it; see `.ci/run`).
fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser"] {
        if Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return c;
        }
    }
    panic!("chromium is not installed: `apt-get install chromium` (.ci/run does)");
}

/// Render `report` (a loadgen HTML report) with the check script; returns what it measured.
fn render(report: &Path, work: &Path) -> serde_json::Value {
    let page = std::fs::read_to_string(report).expect("report");
    assert!(page.contains("</body>"), "not a full page");
    let checked = work.join(format!(
        "checked-{}",
        report.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &checked,
        page.replace("</body>", &format!("{CHECK}</body>")),
    )
    .unwrap();
    let profile = work.join(format!("profile-{}", std::process::id()));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1200,4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", checked.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    if deskmux_tests::wait_child(&mut child, Duration::from_secs(90)).is_none() {
        panic!("chromium did not finish in 90 s");
    }
    let dom = reader.join().unwrap();
    let found = dom
        .split("<pre id=\"check\">")
        .nth(1)
        .and_then(|s| s.split("</pre>").next())
        .unwrap_or_else(|| panic!("the check did not run; DOM:\n{dom}"));
    let json = found
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn report_of(site: &str, dir: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let creds = credentials(dir, 4);
    let html = dir.join(name);
    let mut args = short_run(site, &creds, 4);
    args.extend(["--html".into(), html.to_str().unwrap().into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let r = run(&strs(&args), dir);
    assert_eq!(r.code, Some(0), "{r:?}");
    html
}

#[test]
fn plots_axes_and_curves_in_a_real_browser() {
    let st = stack(1, 1, "");
    let dir = tempfile::tempdir().unwrap();
    // Open loop at a rate it holds: the corrected and uncorrected curves both have data.
    let html = report_of(
        &st.proxy.addr.to_string(),
        dir.path(),
        "open.html",
        &["--rate", "400", "--interval-ms", "200"],
    );
    let r = render(&html, dir.path());
    for id in [
        "throughput",
        "connections",
        "errors",
        "latency-over-time",
        "latency-by-percentile",
    ] {
        let p = &r["plots"][id];
        assert!(p.is_object(), "no {id} plot: {r:#}");
        assert!(p["lines"].as_u64().unwrap() >= 1, "{id}: {p}");
        assert!(p["points"].as_u64().unwrap() >= 2, "{id} has no curve: {p}");
        assert!(
            p["xticks"].as_array().unwrap().len() >= 3,
            "{id}: x ticks {p}"
        );
        assert!(
            p["yticks"].as_array().unwrap().len() >= 2,
            "{id}: y ticks {p}"
        );
        assert!(!p["xlabel"].as_str().unwrap().is_empty(), "{id}: x label");
        assert!(!p["ylabel"].as_str().unwrap().is_empty(), "{id}: y label");
    }
    assert!(
        r["plots"]["throughput"]["xlabel"]
            .as_str()
            .unwrap()
            .contains("seconds"),
        "{r:#}"
    );
    assert!(
        r["plots"]["latency-by-percentile"]["xticks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "99.9%"),
        "{r:#}"
    );
    assert!(r["uncorrected_points"].as_u64().unwrap() > 100, "{r:#}");
    assert!(
        r["uncorrected_height"].as_f64().unwrap() > 5.0,
        "the uncorrected curve is flat: {r:#}"
    );
    assert!(
        r["table_overflow"].as_f64().unwrap() <= 0.0,
        "the table is cut off: {r:#}"
    );
}

#[test]
fn warnings_are_shown_in_full() {
    let st = stack(1, 1, "");
    let dir = tempfile::tempdir().unwrap();
    // Four desktops cannot send a million requests a second: TARGET MISSED, with a long reason.
    let html = report_of(
        &st.proxy.addr.to_string(),
        dir.path(),
        "missed.html",
        &["--rate", "1000000"],
    );
    let r = render(&html, dir.path());
    let w = r["warnings"].as_array().unwrap();
    let missed = w
        .iter()
        .find(|x| x["text"].as_str().unwrap().starts_with("TARGET MISSED"))
        .unwrap_or_else(|| panic!("no TARGET MISSED warning: {r:#}"));
    for x in w {
        assert_eq!(x["visible"], true, "{x}");
        assert!(
            x["scroll"].as_f64().unwrap() <= x["client"].as_f64().unwrap(),
            "cut off: {x}"
        );
        assert!(
            x["right"].as_f64().unwrap() <= r["viewport"].as_f64().unwrap(),
            "past the page's edge: {x}"
        );
    }
    assert!(
        missed["text"].as_str().unwrap().contains("never sent"),
        "the reason is there in full: {missed}"
    );
    assert!(r["table_overflow"].as_f64().unwrap() <= 0.0, "{r:#}");
}
