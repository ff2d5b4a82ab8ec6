//! Checking one [`Vector`] against the codec. Kept apart from the generator because the
//! checks must not trust it: head bytes are compared with a byte layout written out here from
//! the PROTOCOL.md §2 table, every input is decoded both all at once and one byte at a time,
//! and bodies are decoded and rendered back to the `items:` text by [`render`], which shares
//! only the quoting of strings ([`quote`]) with the generator's rendering of what it meant
//! to write.

use std::fmt::Write as _;

use bytes::BytesMut;
use deskmux_codec::{BodyError, BodyRef, Frame, FrameDecoder, FrameError, HEAD_LEN, Head, Value};

use crate::parse::{BodyExpect, Expect, ExpectHead, Vector};

/// Every vector is decoded with this limit (PROTOCOL.md §11).
pub(crate) const MAX_FRAME: usize = 4096;

/// The fields of `h` as an `expect: frame` line names them. The generator writes `expect:`
/// lines with it too; a field it misplaced would still be caught, by [`spec_head_bytes`].
pub(crate) fn head_fields(h: &Head) -> ExpectHead {
    ExpectHead {
        kind: h.kind.to_u8(),
        service: h.service.to_u8(),
        flags: h.flags.0,
        msg_type: h.msg_type,
        body_len: h.body_len,
        tenant: h.tenant,
        correlation: h.correlation,
        session: h.session,
    }
}

/// The head bytes that `e` must have, placed by hand from the PROTOCOL.md §2 table rather than
/// by `Head::encode`, so that a field misplaced in both encoder and parser is still caught.
fn spec_head_bytes(e: &ExpectHead) -> [u8; HEAD_LEN] {
    let mut b = [0u8; HEAD_LEN];
    b[0] = 0x44;
    b[1] = 0x4D;
    b[2] = 1;
    b[3] = e.kind;
    b[4] = e.service;
    b[5] = e.flags;
    b[6..8].copy_from_slice(&e.msg_type.to_be_bytes());
    b[8..12].copy_from_slice(&e.body_len.to_be_bytes());
    b[12..16].copy_from_slice(&e.tenant.to_be_bytes());
    b[16..24].copy_from_slice(&e.correlation.to_be_bytes());
    b[24..32].copy_from_slice(&e.session.to_be_bytes());
    b
}

fn frame_error_name(e: &FrameError) -> &'static str {
    match e {
        FrameError::BadMagic(_) => "BadMagic",
        FrameError::UnsupportedVersion(_) => "UnsupportedVersion",
        FrameError::FrameTooLarge { .. } => "FrameTooLarge",
        FrameError::Io(_) => "Io",
    }
}

fn body_error_name(e: &BodyError) -> &'static str {
    match e {
        BodyError::Truncated(_) => "Truncated",
        BodyError::Utf8(_) => "Utf8",
        BodyError::TooDeep(_) => "TooDeep",
        BodyError::Missing(_) => "Missing",
        BodyError::WrongType(_) => "WrongType",
        BodyError::TooLong => "TooLong",
    }
}

/// Quote a key or string for `items:`: `"` and `\` are escaped, everything else is verbatim.
pub(crate) fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Render a decoded body in the `items:` notation of PROTOCOL.md §11.
fn render(body: BodyRef<'_>) -> Result<String, BodyError> {
    let mut out = String::new();
    for (i, item) in body.iter().enumerate() {
        let (k, v) = item?;
        if i > 0 {
            out.push(' ');
        }
        quote(k, &mut out);
        out.push('=');
        match v {
            Value::Int(n) => write!(out, "int:{n}").unwrap_or(()),
            Value::Str(s) => {
                out.push_str("str:");
                quote(s, &mut out);
            }
            Value::Bin(b) => write!(out, "bin:{}", hex::encode(b)).unwrap_or(()),
            Value::List(l) => write!(out, "list:{{{}}}", render(l)?).unwrap_or(()),
            Value::Unknown(t, b) => write!(out, "type{t:02x}:{}", hex::encode(b)).unwrap_or(()),
        }
    }
    Ok(out)
}

/// Decode `input` all at once (returning the frame and how many bytes were left over), and
/// again one byte at a time: both ways must give the same frame or the same error.
type Decoded = Result<Option<(Frame, usize)>, FrameError>;

fn decode_both_ways(input: &[u8]) -> Result<Decoded, String> {
    let mut whole = BytesMut::from(input);
    let at_once = FrameDecoder::new(MAX_FRAME)
        .decode(&mut whole)
        .map(|f| f.map(|f| (f, whole.len())));

    let mut dec = FrameDecoder::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut trickled = Ok(None);
    for b in input {
        buf.extend_from_slice(&[*b]);
        trickled = dec.decode(&mut buf);
        if !matches!(trickled, Ok(None)) {
            break;
        }
    }
    let agree = match (&at_once, &trickled) {
        (Ok(Some((a, _))), Ok(Some(b))) => a == b,
        (Ok(None), Ok(None)) => true,
        (Err(a), Err(b)) => a == b,
        _ => false,
    };
    if !agree {
        return Err(format!(
            "all at once gave {at_once:?}, byte by byte gave {trickled:?}"
        ));
    }
    Ok(at_once)
}

/// Check one vector: `Ok` if the codec gives exactly what it says, else what differs.
pub(crate) fn check(v: &Vector) -> Result<(), String> {
    let got = decode_both_ways(&v.input)?;
    match (&v.expect, got) {
        (Expect::NeedMore, Ok(None)) => Ok(()),
        (Expect::Error(name), Err(e)) if frame_error_name(&e) == name => Ok(()),
        (Expect::Frame(e), Ok(Some((frame, rest)))) => {
            if rest != 0 {
                return Err(format!("{rest} bytes left after the frame"));
            }
            let got = head_fields(frame.head());
            if &got != e {
                return Err(format!("head {got:?}, expected {e:?}"));
            }
            if v.input[..HEAD_LEN] != spec_head_bytes(e) {
                return Err("head bytes differ from the §2 layout of the expected fields".into());
            }
            if frame.as_bytes() != v.input.as_slice() {
                return Err("decoded frame bytes differ from the input".into());
            }
            let validated = frame.body().validate();
            match (&v.body, validated) {
                (None, _) | (Some(BodyExpect::Valid), Ok(())) => {}
                (Some(BodyExpect::Error(name)), Err(e)) if body_error_name(&e) == name => {}
                (Some(want), got) => return Err(format!("body: want {want:?}, got {got:?}")),
            }
            if let Some(items) = &v.items {
                let rendered = render(frame.body()).map_err(|e| format!("render: {e}"))?;
                if &rendered != items {
                    return Err(format!("items differ:\n got: {rendered}\nwant: {items}"));
                }
            }
            Ok(())
        }
        (want, got) => Err(format!("want {want:?}, got {got:?}")),
    }
}
