//! The test vectors of PROTOCOL.md §11, read out of the document itself and checked against
//! the codec, so that the spec and the code cannot drift apart silently.
//!
//! The vectors are written by [`regenerate`] (an ignored test) from values listed in the
//! section modules below; the checks in [`protocol_md_vectors`] do not trust that generator:
//! head bytes are compared with a byte layout written out independently from the §2 table,
//! and bodies are decoded and rendered back to the `items:` text.
//!
//! One module a job: `parse` reads the vector blocks out of PROTOCOL.md, `check` checks one
//! against the codec, `generate` lays vectors out and writes them back as markdown; `frames`,
//! `bodies`, `framing`, `rules` and `resume` hold the vectors themselves, one part of the spec
//! each. This file holds only the tests.
//!
//! Regenerate after changing a vector:
//! `cargo test -p deskmux-codec --test vectors -- --ignored regenerate`

#[path = "vectors/bodies.rs"]
mod bodies;
#[path = "vectors/check.rs"]
mod check;
#[path = "vectors/frames.rs"]
mod frames;
#[path = "vectors/framing.rs"]
mod framing;
#[path = "vectors/generate.rs"]
mod generate;
#[path = "vectors/parse.rs"]
mod parse;
#[path = "vectors/resume.rs"]
mod resume;
#[path = "vectors/rules.rs"]
mod rules;

use check::check;
use generate::{all_vectors, with_generated};
use parse::{Expect, parse_vectors};

fn protocol_md_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../PROTOCOL.md")
}

#[test]
fn protocol_md_vectors() {
    let md = std::fs::read_to_string(protocol_md_path()).expect("read PROTOCOL.md");
    let vectors = parse_vectors(&md).unwrap_or_else(|e| panic!("PROTOCOL.md §11: {e}"));
    assert!(!vectors.is_empty(), "PROTOCOL.md holds no vector blocks");
    let mut failures = Vec::new();
    for v in &vectors {
        if let Err(e) = check(v) {
            failures.push(format!("{}: {e}", v.name));
        }
    }
    assert!(
        failures.is_empty(),
        "failing vectors:\n{}",
        failures.join("\n")
    );
    eprintln!("{} vectors checked", vectors.len());
}

#[test]
#[ignore = "rewrites PROTOCOL.md §11; run by hand after changing a vector"]
fn regenerate() {
    let path = protocol_md_path();
    let md = std::fs::read_to_string(&path).expect("read PROTOCOL.md");
    let new = with_generated(&md).expect("§11 markers");
    std::fs::write(&path, new).expect("write PROTOCOL.md");
}

/// The document holds exactly what the generator makes: nobody edited a vector by hand, and
/// the cross-checks inside `all_vectors` (typed writers vs documented bodies) ran.
#[test]
fn protocol_md_is_regenerated() {
    let md = std::fs::read_to_string(protocol_md_path()).expect("read PROTOCOL.md");
    let want = with_generated(&md).expect("§11 markers");
    assert!(
        md == want,
        "PROTOCOL.md §11 is stale: run `cargo test -p deskmux-codec --test vectors -- \
         --ignored regenerate`"
    );
}

// ---------------------------------------------------------------------------------------------
// The parser and checker themselves must reject what they should.
// ---------------------------------------------------------------------------------------------

#[test]
fn parser_rejects_bad_blocks() {
    let ok = "```vector\nname: a\nhex: 44\nexpect: need-more\n```\n";
    assert_eq!(parse_vectors(ok).map(|v| v.len()), Ok(1));
    for bad in [
        "```vector\nname: a\nexpect: need-more\n```\n",
        "```vector\nname: a\nhex: 4\nexpect: need-more\n```\n",
        "```vector\nname: a\nhex: 44\nexpect: maybe\n```\n",
        "```vector\nname: a\nhex: 44\nexpect: need-more\nbody: valid\n```\n",
        "```vector\nname: a\nhex: 44\nexpect: need-more\nwhat: x\n```\n",
        "```vector\nname: a\nhex: 44\nexpect: frame kind=1\n```\n",
        "```vector\nname: a\nhex: 44\nexpect: need-more\n",
        "```vector\nname: a\nhex: 44\nexpect: need-more\n```\n```vector\nname: a\nhex: 44\nexpect: need-more\n```\n",
    ] {
        assert!(parse_vectors(bad).is_err(), "accepted:\n{bad}");
    }
}

#[test]
fn checker_rejects_wrong_expectations() {
    let all = all_vectors();
    let (echo, _) = all
        .iter()
        .find(|(v, _)| v.name == "request-ixn-echo")
        .expect("echo vector");
    assert_eq!(check(echo), Ok(()));

    let mut wrong = echo.clone();
    if let Expect::Frame(h) = &mut wrong.expect {
        h.correlation += 1;
    }
    assert!(check(&wrong).is_err(), "wrong correlation accepted");

    let mut wrong = echo.clone();
    wrong.items = Some("\"data\"=bin:68656c6c6e".into());
    assert!(check(&wrong).is_err(), "wrong items accepted");

    let mut wrong = echo.clone();
    wrong.expect = Expect::Error("BadMagic".into());
    assert!(check(&wrong).is_err(), "frame taken for an error");

    let mut wrong = echo.clone();
    wrong.input.push(0);
    assert!(check(&wrong).is_err(), "trailing byte accepted");
}
