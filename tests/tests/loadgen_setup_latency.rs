//! Every session's set-up is measured, not only in storms: the connect time and the hello
//! round trip of each desktop are in the JSON (`connect_us`, `hello_us`) and in the table,
//! ramp included (most desktops connect before the measured window).

mod loadgen_support;
mod proxy_support;

use loadgen_support::*;
use proxy_support::*;

#[test]
fn connect_and_hello_latency_of_every_session() {
    let st = stack(1, 1, "");
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path(), 20);
    let json = dir.path().join("out.json");
    let mut args = short_run(&st.proxy.addr.to_string(), &creds, 20);
    args.extend(["--json".into(), json.to_str().unwrap().into()]);
    let r = run(&strs(&args), dir.path());
    assert_eq!(r.code, Some(0), "{r:?}");
    let v = read_json(&json);
    assert_eq!(v["clients"]["connected"], 20, "{v:#}");
    assert_eq!(v["clients"]["reconnects"], 0, "{v:#}");
    for k in ["connect_us", "hello_us"] {
        let p = &v[k];
        assert_eq!(p["count"], 20, "one per session: {k} {v:#}");
        let (p50, max) = (p["p50"].as_f64().unwrap(), p["max"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= max, "{k}: {p}");
        // Loopback to a local proxy: well under the 10 s connect timeout.
        assert!(max < 10_000_000.0, "{k}: {p}");
    }
    for row in ["connect (sessions)", "hello (sessions)"] {
        let line = r
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(row))
            .unwrap_or_else(|| panic!("no {row:?} row:\n{}", r.stdout));
        assert!(
            line.split_whitespace().any(|w| w == "20"),
            "{row}: count 20 expected: {line}"
        );
    }
}
