//! Shared helpers for the codec benchmarks: frames of an exact wire size, and streams of them.
//!
//! A benchmark frame is what a proxy mostly carries: a UCS `HISTORY_INSERT` request whose body
//! is one `int` item and one `str` item holding text, padded so the whole frame (32-byte head
//! included) is exactly the size being measured. Text is ASCII, so walking the body runs
//! UTF-8 validation over every byte, as a receiver reading it must.
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use deskmux_codec::msg::{key, ucs};
use deskmux_codec::{BodyError, BodyWriter, Frame, HEAD_LEN, Head, Kind, Service};

/// The frame sizes measured: name and total wire length (head + body).
pub const SIZES: [(&str, usize); 3] = [("64B", 64), ("1KiB", 1024), ("64KiB", 64 * 1024)];

/// Roughly how many bytes of frames one benchmark iteration goes through: 1 MiB, enough to
/// amortise per-iteration overhead, small enough to stay cache-friendly like a read buffer.
pub const STREAM_BYTES: usize = 1 << 20;

/// Bytes a body spends on item overhead before the text: `int` item "interaction" (1 + 11 + 1
/// + 8) and the `str` item "text" head (1 + 4 + 1 + 4).
const BODY_OVERHEAD: usize = (1 + 11 + 1 + 8) + (1 + 4 + 1 + 4);

/// The smallest frame [`write_body`] can make.
pub const MIN_FRAME: usize = HEAD_LEN + BODY_OVERHEAD;

fn text(len: usize) -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    let t = TEXT.get_or_init(|| {
        "Customer asked about invoice 4711; agent explained the late fee and closed. "
            .chars()
            .cycle()
            .take(64 * 1024)
            .collect()
    });
    &t[..len]
}

/// The head of benchmark frame number `i`.
pub fn head(i: u64) -> Head {
    let mut h = Head::new(Kind::Request, Service::Ucs, ucs::HISTORY_INSERT);
    h.tenant = 7;
    h.correlation = i;
    h.session = 1001;
    h
}

/// Write the body that makes a frame exactly `frame_len` bytes long.
///
/// # Errors
/// Never for the sizes in [`SIZES`]; the signature matches the writer closures.
///
/// # Panics
/// If `frame_len` is below [`MIN_FRAME`] or above 64 KiB + [`MIN_FRAME`].
pub fn write_body(w: &mut BodyWriter<'_>, frame_len: usize) -> Result<(), BodyError> {
    w.int(key::INTERACTION, 555);
    w.str(key::TEXT, text(frame_len - MIN_FRAME))?;
    Ok(())
}

/// Benchmark frame number `i`, `frame_len` bytes long.
///
/// # Panics
/// As [`write_body`].
pub fn frame(i: u64, frame_len: usize) -> Frame {
    Frame::build(head(i), |w| write_body(w, frame_len)).expect("benchmark frame")
}

/// How many `frame_len`-byte frames make one stream.
pub fn frames_per_stream(frame_len: usize) -> usize {
    (STREAM_BYTES / frame_len).max(1)
}

/// `count` frames of `frame_len` bytes back to back, as a read buffer would hold them.
pub fn stream(frame_len: usize, count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame_len * count);
    for i in 0..count {
        out.extend_from_slice(frame(i as u64, frame_len).as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use deskmux_codec::FrameDecoder;

    #[test]
    fn frames_have_the_exact_size_and_decode() {
        for (_, len) in SIZES {
            let n = frames_per_stream(len);
            let wire = stream(len, n);
            assert_eq!(wire.len(), len * n);
            let mut buf = bytes::BytesMut::from(&wire[..]);
            let mut dec = FrameDecoder::default();
            let mut seen = 0;
            while let Some(f) = dec.decode(&mut buf).expect("valid") {
                assert_eq!(f.len(), len);
                f.body().validate().expect("valid body");
                assert_eq!(f.body().int(key::INTERACTION), Ok(555));
                seen += 1;
            }
            assert_eq!(seen, n);
        }
    }
}
