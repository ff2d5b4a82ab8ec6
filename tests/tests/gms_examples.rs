//! The GMS documentation works as written: the README's configuration block starts a server,
//! its curl example books a number and matches the call, and every path and status the
//! OpenAPI description lists is one the server has.

mod gms_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use gms_support::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The block of `lang` right after `marker` in the README.
fn block_after(marker: &str, lang: &str) -> String {
    let text = std::fs::read_to_string(repo().join("core-server/README.md")).unwrap();
    let rest = text.split(marker).nth(1).expect("marker in README");
    let start = rest.find(&format!("```{lang}")).expect("block");
    let body = &rest[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_string()
}

#[test]
fn the_readme_curl_example_books_and_matches() {
    let dir = tempfile::tempdir().unwrap();
    // The README's configuration, on free ports and a data file in the temp dir.
    let cfg_text = block_after("## GMS: access numbers and call matching", "toml")
        .replace("127.0.0.1:7100", "127.0.0.1:0")
        .replace("127.0.0.1:7110", "127.0.0.1:0");
    let cfg = dir.path().join("gms.toml");
    std::fs::write(
        &cfg,
        format!(
            "db = \"{}\"\n{cfg_text}",
            dir.path().join("core.db").display()
        ),
    )
    .unwrap();
    let out = deskmux_tests::creds::run(
        &cfg,
        &["add", "--tenant", "1", "--agent", "mobile-gw", "--api-key"],
        "",
    )
    .unwrap();
    assert!(out.status.success());
    let key = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("dmk_"))
        .unwrap()
        .to_string();
    let g = Gms::start(&cfg, &key);
    let script = block_after("<!-- gms-curl-example -->", "sh");
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("GMS", g.http.to_string())
        .env("KEY", &key)
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .replace("}{", "}\n{")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0]["number"].as_str().unwrap().starts_with("+1555000"));
    assert_eq!(lines[1]["user_data"]["reason"], "billing", "{stdout}");
}

#[test]
fn the_openapi_description_lists_what_the_server_serves() {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("core-server/gms-openapi.json")).unwrap(),
    )
    .expect("the OpenAPI description is JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let dir = tempfile::tempdir().unwrap();
    let (cfg, key) = setup(
        dir.path(),
        "[[gms.groups]]\ntenant = 1\nname = \"g\"\nnumbers = [\"+1\"]\n",
    );
    let g = Gms::start(&cfg, &key);
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 2);
    for (path, ops) in paths {
        let path = path.replace("{tenant}", "1");
        // An empty body: the route exists and answers 400 (which the description lists),
        // not 404 or 405.
        let (st, _) = g.post(&path, &serde_json::json!({}));
        assert_eq!(st, 400, "{path}");
        let listed = ops["post"]["responses"].as_object().unwrap();
        for code in ["400", "401", "404", "503"] {
            assert!(listed.contains_key(code), "{path} does not list {code}");
        }
    }
}
