//! Fuzz target: arbitrary bytes, fed in arbitrary chunks, through `FrameDecoder` with a small
//! limit, and every decoded frame's body walked in full. Besides "never panics", it checks
//! the invariants a proxy relies on: frames respect the limit, the head in the bytes is the
//! head returned, and a restamp changes the ids and nothing else.
#![no_main]

use bytes::BytesMut;
use deskmux_codec::{BodyRef, FrameDecoder, HEAD_LEN, Head, Value, msg};
use libfuzzer_sys::fuzz_target;

/// Small, so that the fuzzer reaches both sides of the limit with short inputs.
const MAX: usize = 4096;

fn walk(body: BodyRef<'_>, depth: usize) {
    for item in body.iter() {
        let Ok((_, v)) = item else { return };
        // Iterating does not enforce the depth limit (validate does); stop where it would.
        if let (Value::List(l), true) = (v, depth < 32) {
            walk(l, depth + 1);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size (1..=256), so the fuzzer explores how the stream is
    // cut as well as what it holds.
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut dec = FrameDecoder::new(MAX);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(mut f)) => {
                    assert!(f.len() <= MAX);
                    assert_eq!(f.len(), HEAD_LEN + f.head().body_len as usize);
                    assert_eq!(Head::parse(f.as_bytes()), Ok(Some(*f.head())));
                    let _ = f.body().validate();
                    walk(f.body(), 0);
                    let _ = f.body().get(msg::key::CODE);
                    let _ = msg::DesktopHello::read(f.body());
                    let _ = msg::LinkHelloAck::read(f.body());
                    let _ = f.error();
                    let before = f.as_bytes().to_vec();
                    f.set_correlation(!f.head().correlation);
                    f.set_session(!f.head().session);
                    let after = f.freeze();
                    assert_eq!(before[..16], after[..16]);
                    assert_eq!(before[HEAD_LEN..], after[HEAD_LEN..]);
                    assert_ne!(before[16..HEAD_LEN], after[16..HEAD_LEN]);
                }
                Ok(None) => break,
                // Framing lost: a real receiver closes the connection here.
                Err(_) => return,
            }
        }
        assert!(buf.capacity() <= MAX.max(2 * data.len()).max(64));
    }
    // Any bytes at all may also arrive as a body.
    let _ = BodyRef::new(data).validate();
    walk(BodyRef::new(data), 0);
});
