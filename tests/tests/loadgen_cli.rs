//! loadgen's inputs and outputs as a person types them: `--json -` puts the summary on stdout
//! (and the table on stderr) instead of a file named `-`; `--site` takes a host name; the
//! duration options take `500ms`, `2m`, `1m30s` as well as bare seconds.

mod loadgen_support;
mod proxy_support;

use loadgen_support::*;
use proxy_support::*;

#[test]
fn json_dash_writes_the_summary_to_stdout() {
    let st = stack(1, 1, "");
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path(), 4);
    let mut args = short_run(&st.proxy.addr.to_string(), &creds, 4);
    args.extend(["--json".into(), "-".into()]);
    let r = run(&strs(&args), dir.path());
    assert_eq!(r.code, Some(0), "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("stdout is not the JSON summary ({e}):\n{}", r.stdout));
    assert_eq!(v["clients"]["connected"], 4, "{v:#}");
    assert!(v["requests"]["ok"].as_u64().unwrap() > 0, "{v:#}");
    assert!(
        r.stderr.contains("verification passed"),
        "table on stderr: {r:?}"
    );
    assert!(
        !dir.path().join("-").exists(),
        "a file named '-' was written"
    );
}

#[test]
fn host_names_and_human_durations() {
    let st = stack(1, 1, "");
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path(), 4);
    let json = dir.path().join("out.json");
    let site = format!("localhost:{}", st.proxy.addr.port());
    let args = [
        "run",
        "--credentials",
        creds.to_str().unwrap(),
        "--site",
        &site,
        "-n",
        "4",
        "--threads",
        "1",
        "--ramp",
        "500ms",
        "--warmup",
        "0.25s",
        "--duration",
        "1s",
        "--drain",
        "0m3s",
        "--connect-timeout",
        "1m",
        "-q",
        "--json",
        json.to_str().unwrap(),
    ];
    let r = run(&args, dir.path());
    assert_eq!(r.code, Some(0), "{r:?}");
    let v = read_json(&json);
    assert_eq!(v["ramp_s"], 0.5, "{v:#}");
    assert_eq!(v["warmup_s"], 0.25, "{v:#}");
    assert_eq!(v["duration_s"], 1.0, "{v:#}");
    assert_eq!(
        v["sites"][0],
        format!("127.0.0.1:{}", st.proxy.addr.port()),
        "localhost resolved to its IPv4 address: {v:#}"
    );
    assert_eq!(v["clients"]["connected"], 4, "{v:#}");
    assert_eq!(v["verification_failed"], false, "{v:#}");
}
