//! `loadgen diff A.json B.json` compares two saved results figure by figure (throughput,
//! latency percentiles, CPU per request, errors) with B/A ratios, on the terminal or as JSON;
//! a file that is no loadgen result is a usage error.

mod loadgen_support;
mod proxy_support;

use loadgen_support::*;
use proxy_support::*;

#[test]
fn diff_of_two_saved_results() {
    let st = stack(1, 1, "");
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path(), 4);
    let a = dir.path().join("a.json");
    let mut args = short_run(&st.proxy.addr.to_string(), &creds, 4);
    args.extend(["--json".into(), a.to_str().unwrap().into()]);
    let r = run(&strs(&args), dir.path());
    assert_eq!(r.code, Some(0), "{r:?}");
    // B: the same result with twice the throughput and half the p99.
    let mut v = read_json(&a);
    let tput = v["throughput_rps"].as_f64().unwrap();
    let p99 = v["latency_us"]["p99"].as_f64().unwrap();
    assert!(tput > 0.0 && p99 > 0.0, "{v:#}");
    v["throughput_rps"] = (tput * 2.0).into();
    v["latency_us"]["p99"] = (p99 / 2.0).into();
    let b = dir.path().join("b.json");
    std::fs::write(&b, serde_json::to_string(&v).unwrap()).unwrap();

    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    let r = run(&["diff", a_s, b_s], dir.path());
    assert_eq!(r.code, Some(0), "{r:?}");
    let row = |name: &str| {
        r.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row:\n{}", r.stdout))
            .to_string()
    };
    assert!(row("throughput_rps").contains("2.000×"), "{}", r.stdout);
    assert!(row("throughput_rps").contains("better"), "{}", r.stdout);
    assert!(row("latency_p99_us").contains("0.500×"), "{}", r.stdout);
    assert!(row("latency_p50_us").contains("1.000×"), "{}", r.stdout);
    for f in [
        "latency_p999_us",
        "loadgen_cpu_us_per_request",
        "errors",
        "lost",
    ] {
        row(f);
    }

    let r = run(&["diff", a_s, b_s, "--json", "-"], dir.path());
    assert_eq!(r.code, Some(0), "{r:?}");
    let d: serde_json::Value = serde_json::from_str(&r.stdout).expect("diff JSON on stdout");
    let fig = d["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["figure"] == "throughput_rps")
        .unwrap()
        .clone();
    assert_eq!(fig["ratio"], 2.0, "{d:#}");
    assert_eq!(fig["a"].as_f64().unwrap(), tput, "{d:#}");

    std::fs::write(dir.path().join("other.json"), "{\"x\": 1}").unwrap();
    let r = run(&["diff", a_s, "other.json"], dir.path());
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("not a loadgen result"), "{r:?}");
}
