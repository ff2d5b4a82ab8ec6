//! Reading the ```` ```vector ```` blocks out of PROTOCOL.md §11 into [`Vector`]s. Kept apart
//! from the checks and the generator so that the block format of §11 (its table of `key:`
//! lines) is read in one place, and the parser can be tested on its own (a parser that skipped
//! a malformed block would make a vector pass by not being checked).

use std::collections::{BTreeMap, HashSet};

/// The head fields an `expect: frame` line names, as plain numbers (independent of `Head`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExpectHead {
    pub(crate) kind: u8,
    pub(crate) service: u8,
    pub(crate) flags: u8,
    pub(crate) msg_type: u16,
    pub(crate) body_len: u32,
    pub(crate) tenant: u32,
    pub(crate) correlation: u64,
    pub(crate) session: u64,
}

/// What decoding the input must give (the `expect:` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expect {
    Frame(ExpectHead),
    Error(String),
    NeedMore,
}

/// What walking the body must give (the `body:` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyExpect {
    Valid,
    Error(String),
}

/// One vector block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vector {
    pub(crate) name: String,
    pub(crate) input: Vec<u8>,
    pub(crate) expect: Expect,
    pub(crate) body: Option<BodyExpect>,
    pub(crate) items: Option<String>,
}

/// The contents of every ```` ```vector ```` fenced block, with the line it starts on.
fn vector_blocks(md: &str) -> Result<Vec<(usize, Vec<&str>)>, String> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, Vec<&str>)> = None;
    for (i, line) in md.lines().enumerate() {
        let lineno = i + 1;
        match &mut current {
            None if line.trim() == "```vector" => current = Some((lineno, Vec::new())),
            None => {}
            Some(_) if line.trim() == "```" => blocks.extend(current.take()),
            Some((_, lines)) => lines.push(line),
        }
    }
    if let Some((start, _)) = current {
        return Err(format!(
            "vector block opened on line {start} is never closed"
        ));
    }
    Ok(blocks)
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("bad number {s:?}: {e}"))
}

fn parse_head_fields(s: &str) -> Result<ExpectHead, String> {
    let mut fields = BTreeMap::new();
    for pair in s.split_whitespace() {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, got {pair:?}"))?;
        if fields.insert(k, parse_u64(v)?).is_some() {
            return Err(format!("field {k} given twice"));
        }
    }
    let mut take = |k: &str, max: u64| -> Result<u64, String> {
        let v = fields
            .remove(k)
            .ok_or_else(|| format!("missing field {k}"))?;
        if v > max {
            return Err(format!("field {k}={v} out of range"));
        }
        Ok(v)
    };
    // Each `as` below is exact: `take` has checked the range.
    let head = ExpectHead {
        kind: take("kind", 0xFF)? as u8,
        service: take("service", 0xFF)? as u8,
        flags: take("flags", 0xFF)? as u8,
        msg_type: take("type", 0xFFFF)? as u16,
        body_len: take("body_len", u64::from(u32::MAX))? as u32,
        tenant: take("tenant", u64::from(u32::MAX))? as u32,
        correlation: take("correlation", u64::MAX)?,
        session: take("session", u64::MAX)?,
    };
    if let Some(k) = fields.keys().next() {
        return Err(format!("unknown field {k}"));
    }
    Ok(head)
}

/// Fill `slot` with the value of a `key:` line that may stand once in a block.
fn once<T>(slot: &mut Option<T>, value: T, key: &str) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("two {key}: lines"));
    }
    Ok(())
}

fn parse_vector(lines: &[&str]) -> Result<Vector, String> {
    let mut name = None;
    let mut hex_text = String::new();
    let mut saw_hex = false;
    let mut expect = None;
    let mut body = None;
    let mut items = None;
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("line without `key:` {line:?}"))?;
        let v = v.trim();
        match k.trim() {
            "name" => once(&mut name, v.to_string(), "name")?,
            "hex" => {
                saw_hex = true;
                hex_text.push_str(v);
            }
            "expect" => {
                let e = if v == "need-more" {
                    Expect::NeedMore
                } else if let Some(e) = v.strip_prefix("error ") {
                    Expect::Error(e.trim().to_string())
                } else if let Some(f) = v.strip_prefix("frame ") {
                    Expect::Frame(parse_head_fields(f)?)
                } else {
                    return Err(format!("unknown expect {v:?}"));
                };
                once(&mut expect, e, "expect")?;
            }
            "body" => {
                let b = if v == "valid" {
                    BodyExpect::Valid
                } else if let Some(e) = v.strip_prefix("error ") {
                    BodyExpect::Error(e.trim().to_string())
                } else {
                    return Err(format!("unknown body check {v:?}"));
                };
                once(&mut body, b, "body")?;
            }
            "items" => once(&mut items, v.to_string(), "items")?,
            // Free text for readers; never checked.
            "note" => {}
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    let name = name.ok_or("missing name:")?;
    if !saw_hex {
        return Err(format!("{name}: missing hex:"));
    }
    let input = hex::decode(&hex_text).map_err(|e| format!("{name}: bad hex: {e}"))?;
    let expect = expect.ok_or_else(|| format!("{name}: missing expect:"))?;
    if !matches!(expect, Expect::Frame(_)) && (body.is_some() || items.is_some()) {
        return Err(format!("{name}: body:/items: only go with `expect: frame`"));
    }
    if items.is_some() && body != Some(BodyExpect::Valid) {
        return Err(format!("{name}: items: needs `body: valid`"));
    }
    Ok(Vector {
        name,
        input,
        expect,
        body,
        items,
    })
}

/// Every vector block of `md`, in order; an error names the first block that is not well
/// formed (or a name used twice).
pub(crate) fn parse_vectors(md: &str) -> Result<Vec<Vector>, String> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (line, block) in vector_blocks(md)? {
        let v = parse_vector(&block).map_err(|e| format!("vector block on line {line}: {e}"))?;
        if !names.insert(v.name.clone()) {
            return Err(format!("duplicate vector name {}", v.name));
        }
        out.push(v);
    }
    Ok(out)
}
