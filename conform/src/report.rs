//! What a rule saw and how it was judged, and the report printed for people: each rule's
//! section, PASS, FAIL or SKIP, and what was sent and received, so that the implementer of a
//! failing peer can see the exchange without a packet capture.

use crate::wire::{Got, Site, hex_of};

/// A rule of PROTOCOL.md that the suite checks.
pub struct Rule {
    /// The section that states it, e.g. `§5.2`.
    pub section: &'static str,
    /// Its short name.
    pub name: &'static str,
    /// The rule, in one line.
    pub text: &'static str,
    /// Run it against a site.
    pub run: fn(&Site, &mut Check) -> anyhow::Result<()>,
}

/// The record of one rule's run.
#[derive(Debug, Default)]
pub struct Check {
    lines: Vec<String>,
    fails: Vec<String>,
    skip: Option<String>,
}

/// A rule's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The peer did what the rule says.
    Pass,
    /// It did not (or the rule could not be run against it).
    Fail,
    /// The rule does not apply to this peer (e.g. link rules without a link secret).
    Skip,
}

impl Check {
    /// Note bytes sent.
    pub fn sent(&mut self, what: &str, bytes: &[u8]) {
        self.lines.push(format!("sent: {what}: {}", hex_of(bytes)));
    }

    /// Note what came back, and give it back to the rule.
    pub fn got(&mut self, g: Got) -> Got {
        self.lines.push(format!("got:  {}", g.describe()));
        g
    }

    /// Note a free-form observation.
    pub fn note(&mut self, s: impl Into<String>) {
        self.lines.push(format!("note: {}", s.into()));
    }

    /// The rule holds only if `ok`; `what` says what was expected.
    pub fn expect(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.fails.push(what.into());
        }
    }

    /// The rule does not apply here.
    pub fn skip(&mut self, why: impl Into<String>) {
        self.skip = Some(why.into());
    }

    /// The verdict, given the rule's own result.
    pub fn verdict(&mut self, r: anyhow::Result<()>) -> Verdict {
        if let Err(e) = r {
            self.fails.push(format!("{e:#}"));
        }
        if !self.fails.is_empty() {
            Verdict::Fail
        } else if self.skip.is_some() {
            Verdict::Skip
        } else {
            Verdict::Pass
        }
    }

    /// The report's lines for this rule (after its head line).
    pub fn lines(&self) -> Vec<String> {
        let mut out = self.lines.clone();
        if let Some(s) = &self.skip {
            out.push(format!("skip: {s}"));
        }
        out.extend(self.fails.iter().map(|f| format!("FAIL: expected {f}")));
        out
    }
}

/// Run `rules` against `site`, print the report, and say how many failed.
pub fn run(site: &Site, rules: &[Rule], only: Option<&str>) -> (usize, usize, usize) {
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    for r in rules {
        if only.is_some_and(|o| !r.name.contains(o)) {
            continue;
        }
        let mut c = Check::default();
        let res = (r.run)(site, &mut c);
        let v = c.verdict(res);
        let tag = match v {
            Verdict::Pass => {
                pass += 1;
                "PASS"
            }
            Verdict::Fail => {
                fail += 1;
                "FAIL"
            }
            Verdict::Skip => {
                skip += 1;
                "SKIP"
            }
        };
        println!("{tag} {:<7} {:<34} {}", r.section, r.name, r.text);
        for l in c.lines() {
            println!("       {l}");
        }
    }
    println!("{pass} passed, {fail} failed, {skip} skipped");
    (pass, fail, skip)
}
