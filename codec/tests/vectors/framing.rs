//! Vectors for framing (PROTOCOL.md §2): input that is not yet a frame (the decoder waits for
//! more), and input that loses framing (bad magic, bad version, a frame over the maximum).
//! Kept apart from the frame and body vectors: none of these is a whole frame, and most are
//! made from the bytes of vector `request-ixn-echo`, which this module cuts or spoils.

use deskmux_codec::msg;
use deskmux_codec::{HEAD_LEN, Kind, Service};

use crate::check::MAX_FRAME;
use crate::generate::{Gen, head};
use crate::parse::Expect;

/// `bytes` with the byte at `at` set to `value`: a frame spoiled in one place.
pub(crate) fn with_byte(bytes: &[u8], at: usize, value: u8) -> Vec<u8> {
    let mut spoiled = bytes.to_vec();
    spoiled[at] = value;
    spoiled
}

/// The vectors of this module, in their order in PROTOCOL.md §11.
pub(crate) fn add(g: &mut Gen) {
    let bytes = g.input_of("request-ixn-echo").to_vec();
    g.bytes(
        "truncated-head-1",
        "one byte of a head",
        bytes[..1].to_vec(),
        Expect::NeedMore,
    );
    g.bytes(
        "truncated-head-31",
        "31 of the 32 head bytes",
        bytes[..HEAD_LEN - 1].to_vec(),
        Expect::NeedMore,
    );
    g.bytes(
        "truncated-body",
        "request-ixn-echo without its last byte",
        bytes[..bytes.len() - 1].to_vec(),
        Expect::NeedMore,
    );

    // §2: "A receiver checks the announced length against its maximum frame size before it
    // buffers the body; a larger frame loses framing."
    let mut at_max = head(
        Kind::Request,
        Service::Ucs,
        msg::ucs::HISTORY_INSERT,
        7,
        48,
        1001,
    );
    at_max.body_len = u32::try_from(MAX_FRAME - HEAD_LEN).expect("small");
    g.bytes(
        "head-of-frame-at-max",
        "head announcing 4064 body bytes: 4096 in all, exactly the maximum, so it is accepted",
        at_max.to_bytes().to_vec(),
        Expect::NeedMore,
    );
    let mut over = at_max;
    over.body_len += 1;
    g.bytes(
        "too-large-by-one",
        "head announcing 4065 body bytes: 4097 in all, one over the maximum",
        over.to_bytes().to_vec(),
        Expect::Error("FrameTooLarge".into()),
    );
    over.body_len = u32::MAX;
    g.bytes(
        "too-large-u32-max",
        "head announcing 0xffffffff body bytes",
        over.to_bytes().to_vec(),
        Expect::Error("FrameTooLarge".into()),
    );

    // §2: "A frame whose first two bytes are not 0x44 0x4D is not a deskmux frame: framing is
    // lost and the connection is closed."
    g.bytes(
        "bad-magic",
        "request-ixn-echo with magic 0x44 0x4e",
        with_byte(&bytes, 1, 0x4E),
        Expect::Error("BadMagic".into()),
    );
    g.bytes(
        "bad-magic-http",
        "an HTTP request sent to a deskmux port",
        b"GET / HTTP/1.1\r\nHost: deskmux\r\n\r\n".to_vec(),
        Expect::Error("BadMagic".into()),
    );
    g.bytes(
        "bad-magic-early",
        "two garbage bytes: refused at once, without waiting for a whole head",
        b"GE".to_vec(),
        Expect::Error("BadMagic".into()),
    );

    // §2: "A receiver closes on any version byte it does not speak, since a later version may
    // lay out the head differently."
    for v in [0u8, 2, 0xFF] {
        let (name, note) = match v {
            0 => ("bad-version-0", "request-ixn-echo with version 0"),
            2 => ("bad-version-2", "request-ixn-echo with version 2"),
            _ => ("bad-version-255", "request-ixn-echo with version 255"),
        };
        let bad = with_byte(&bytes, 2, v);
        g.bytes(name, note, bad, Expect::Error("UnsupportedVersion".into()));
    }
}
