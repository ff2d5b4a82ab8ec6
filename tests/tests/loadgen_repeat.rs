//! `--repeat N` runs the same load N times: each run is reported (its table, its own HTML
//! report), then the spread — min, median and max of the key figures — on the terminal and in
//! the JSON (`runs[]`, `spread.<figure>`).

mod loadgen_support;
mod proxy_support;

use loadgen_support::*;
use proxy_support::*;

#[test]
fn repeated_runs_and_their_spread() {
    let st = stack(1, 1, "");
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path(), 4);
    let json = dir.path().join("out.json");
    let html = dir.path().join("report.html");
    let mut args = short_run(&st.proxy.addr.to_string(), &creds, 4);
    args.extend(
        [
            "--repeat",
            "3",
            "--json",
            json.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let r = run(&strs(&args), dir.path());
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(
        r.stdout.matches("verification passed").count(),
        3,
        "one table per run: {}",
        r.stdout
    );
    assert!(r.stdout.contains("spread over 3 runs"), "{}", r.stdout);
    for k in 1..=3 {
        assert!(
            dir.path().join(format!("report-run{k}.html")).exists(),
            "no report of run {k}"
        );
    }
    let v = read_json(&json);
    let runs = v["runs"].as_array().expect("runs[]");
    assert_eq!(runs.len(), 3, "{v:#}");
    let mut tput: Vec<f64> = runs
        .iter()
        .map(|r| r["throughput_rps"].as_f64().unwrap())
        .collect();
    assert!(tput.iter().all(|t| *t > 0.0), "{tput:?}");
    tput.sort_by(f64::total_cmp);
    let s = &v["spread"]["throughput_rps"];
    assert_eq!(s["min"].as_f64().unwrap(), tput[0], "{s}");
    assert_eq!(s["median"].as_f64().unwrap(), tput[1], "{s}");
    assert_eq!(s["max"].as_f64().unwrap(), tput[2], "{s}");
    for k in [
        "latency_p50_us",
        "latency_p99_us",
        "latency_p999_us",
        "lost",
    ] {
        assert!(
            v["spread"][k]["median"].is_number(),
            "no spread of {k}: {v:#}"
        );
    }
}
