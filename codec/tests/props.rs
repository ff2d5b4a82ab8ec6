//! Property tests for the codec: what is encoded decodes back equal, however the bytes are cut
//! up on the way, and no input at all can make the decoder or the body reader panic or reserve
//! memory past the frame limit.

use bytes::BytesMut;
use deskmux_codec::msg;
use deskmux_codec::{
    BodyError, BodyRef, BodyWriter, DecodeState, Flags, Frame, FrameDecoder, FrameError, HEAD_LEN,
    Head, Kind, Service, Value, encode_with,
};
use proptest::prelude::*;

/// A body item tree, the model the codec's output is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tree {
    Int(i64),
    Str(String),
    Bin(Vec<u8>),
    List(Vec<(String, Tree)>),
    /// Type bytes 0x05..=0xFF: unknown to this version, kept as raw bytes.
    Unknown(u8, Vec<u8>),
}

/// Keys are at most 255 bytes; 40 chars of up to 4 bytes each stay well under.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z_]{1,12}",
        any::<String>().prop_map(|s| s.chars().take(40).collect()),
    ]
}

fn arb_leaf() -> impl Strategy<Value = Tree> {
    prop_oneof![
        any::<i64>().prop_map(Tree::Int),
        any::<String>().prop_map(Tree::Str),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Tree::Bin),
        (0x05u8..=0xFF, proptest::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(t, b)| Tree::Unknown(t, b)),
    ]
}

/// Item lists with lists nested up to 16 deep, the most §3 allows.
fn arb_items() -> impl Strategy<Value = Vec<(String, Tree)>> {
    let tree = arb_leaf().prop_recursive(16, 128, 6, |inner| {
        proptest::collection::vec((arb_key(), inner), 0..6).prop_map(Tree::List)
    });
    proptest::collection::vec((arb_key(), tree), 0..8)
}

fn has_unknown(items: &[(String, Tree)]) -> bool {
    items.iter().any(|(_, t)| match t {
        Tree::Unknown(..) => true,
        Tree::List(inner) => has_unknown(inner),
        _ => false,
    })
}

/// Write through the writer's own API only (`list` with a closure). Unknown types cannot be
/// written this way, so callers use it only on subtrees without them.
fn write_known(w: &mut BodyWriter<'_>, items: &[(String, Tree)]) -> Result<(), BodyError> {
    for (k, t) in items {
        match t {
            Tree::Int(n) => {
                w.int(k, *n);
            }
            Tree::Str(s) => {
                w.str(k, s)?;
            }
            Tree::Bin(b) => {
                w.bin(k, b)?;
            }
            Tree::List(inner) => {
                w.list(k, |w| write_known(w, inner))?;
            }
            Tree::Unknown(..) => unreachable!("write_known is only used without unknown types"),
        }
    }
    Ok(())
}

/// Write any tree: lists holding unknown types are built aside and added with `raw_list`,
/// others through the closure API, so both writer paths are exercised.
fn write_items(dst: &mut BytesMut, items: &[(String, Tree)]) {
    for (k, t) in items {
        match t {
            Tree::Unknown(ty, b) => {
                dst.extend_from_slice(&[u8::try_from(k.len()).expect("short key")]);
                dst.extend_from_slice(k.as_bytes());
                dst.extend_from_slice(&[*ty]);
                dst.extend_from_slice(&u32::try_from(b.len()).expect("short").to_be_bytes());
                dst.extend_from_slice(b);
            }
            Tree::List(inner) if has_unknown(inner) => {
                let mut aside = BytesMut::new();
                write_items(&mut aside, inner);
                BodyWriter::new(dst).raw_list(k, &aside).expect("fits");
            }
            _ => write_known(
                &mut BodyWriter::new(dst),
                std::slice::from_ref(&(k.clone(), t.clone())),
            )
            .expect("fits"),
        }
    }
}

fn to_tree(v: Value<'_>) -> Result<Tree, BodyError> {
    Ok(match v {
        Value::Int(n) => Tree::Int(n),
        Value::Str(s) => Tree::Str(s.to_string()),
        Value::Bin(b) => Tree::Bin(b.to_vec()),
        Value::List(l) => Tree::List(read_items(l)?),
        Value::Unknown(t, b) => Tree::Unknown(t, b.to_vec()),
    })
}

fn read_items(body: BodyRef<'_>) -> Result<Vec<(String, Tree)>, BodyError> {
    body.iter()
        .map(|item| {
            let (k, v) = item?;
            Ok((k.to_string(), to_tree(v)?))
        })
        .collect()
}

fn arb_head() -> impl Strategy<Value = Head> {
    (
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u16>(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(kind, service, flags, msg_type, tenant, correlation, session)| {
                let mut h = Head::new(Kind::from_u8(kind), Service::from_u8(service), msg_type);
                h.flags = Flags(flags);
                h.tenant = tenant;
                h.correlation = correlation;
                h.session = session;
                h
            },
        )
}

fn encode(head: Head, items: &[(String, Tree)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    write_items(&mut body, items);
    Frame::with_body(head, &body)
        .expect("small")
        .as_bytes()
        .to_vec()
}

/// Decode all of `stream`, fed in chunks of the sizes `sizes` gives.
fn decode_chunked(
    dec: &mut FrameDecoder,
    stream: &[u8],
    sizes: &mut dyn Iterator<Item = usize>,
) -> Result<Vec<Frame>, FrameError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = sizes
            .next()
            .unwrap_or(usize::MAX)
            .clamp(1, stream.len() - at);
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        while let Some(f) = dec.decode(&mut buf)? {
            out.push(f);
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    assert_eq!(dec.state(), DecodeState::Head, "decoder stopped mid-frame");
    Ok(out)
}

/// Frame all of `stream` with [`FrameDecoder::next_frame`], fed in chunks; checks that the
/// buffer never holds more than what was fed (nothing reserved for announced bodies).
fn next_frame_chunked(stream: &[u8], sizes: &mut dyn Iterator<Item = usize>) -> Vec<Frame> {
    let mut dec = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = sizes
            .next()
            .unwrap_or(usize::MAX)
            .clamp(1, stream.len() - at);
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        while let Some(f) = dec.next_frame(&mut buf).expect("valid") {
            out.push(f);
        }
    }
    assert!(buf.is_empty() && !dec.in_frame());
    out
}

/// Touch every part of a body that a receiver might: the full walk, lookups, the typed views.
fn walk_body(body: BodyRef<'_>) {
    let _ = body.validate();
    for item in body.iter() {
        if let Ok((_, Value::List(l))) = item {
            let _ = l.iter().count();
        }
    }
    let _ = body.get("");
    let _ = body.int(msg::key::CODE);
    let _ = body.opt_str(msg::key::MESSAGE);
    let _ = body.opt_bin(msg::key::DATA);
    let _ = body.opt_list(msg::key::PROPS);
    let _ = msg::DesktopHello::read(body);
    let _ = msg::ServerHello::read(body);
    let _ = msg::LinkHello::read(body);
    let _ = msg::LinkHelloAck::read(body);
    let _ = msg::GoAway::read(body);
    let _ = msg::ErrorBody::read(body);
}

/// Mostly-valid heads with any length, then anything: random bytes alone almost never get
/// past the magic and version, so the length check would go untested.
fn arb_wire() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600),
        (
            arb_head(),
            prop_oneof![0u32..64, 0u32..5000, any::<u32>()],
            proptest::collection::vec(any::<u8>(), 0..600),
        )
            .prop_map(|(mut h, len, tail)| {
                h.body_len = len;
                let mut v = h.to_bytes().to_vec();
                v.extend_from_slice(&tail);
                v
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn head_roundtrip(head in arb_head(), body_len in any::<u32>()) {
        let mut h = head;
        h.body_len = body_len;
        prop_assert_eq!(Head::parse(&h.to_bytes()), Ok(Some(h)));
    }

    #[test]
    fn body_tree_roundtrip(items in arb_items(), pick in any::<prop::sample::Index>()) {
        let mut buf = BytesMut::new();
        write_items(&mut buf, &items);
        let body = BodyRef::new(&buf);
        prop_assert_eq!(body.validate(), Ok(()));
        prop_assert_eq!(read_items(body), Ok(items.clone()));
        // §3: keys may repeat and a lookup returns the first.
        if !items.is_empty() {
            let key = &items[pick.index(items.len())].0;
            let first = items.iter().find(|(k, _)| k == key).map(|(_, t)| t.clone());
            let found = body.get(key).expect("valid body").map(to_tree).transpose();
            prop_assert_eq!(found, Ok(first));
        }
    }

    #[test]
    fn frame_roundtrip(head in arb_head(), items in arb_items()) {
        let wire = encode(head, &items);
        let mut buf = BytesMut::from(&wire[..]);
        let frame = FrameDecoder::default().decode(&mut buf).expect("valid").expect("whole");
        prop_assert!(buf.is_empty());
        let mut want = head;
        want.body_len = u32::try_from(wire.len() - HEAD_LEN).expect("small");
        prop_assert_eq!(*frame.head(), want);
        prop_assert_eq!(read_items(frame.body()), Ok(items.clone()));

        // encode_with writes the same bytes straight into a buffer that already holds data.
        let mut dst = BytesMut::from(&b"prefix"[..]);
        let written = encode_with(head, &mut dst, |w| {
            // The closure API cannot write unknown types; failing instead checks that
            // encode_with rolls the buffer back on error.
            if has_unknown(&items) {
                return Err(BodyError::TooLong);
            }
            write_known(w, &items)
        });
        match written {
            Ok(h) => {
                prop_assert_eq!(h, want);
                prop_assert_eq!(&dst[..6], b"prefix");
                prop_assert_eq!(&dst[6..], &wire[..]);
            }
            // On error encode_with must leave the buffer as it was.
            Err(_) => prop_assert_eq!(&dst[..], b"prefix"),
        }
    }

    #[test]
    fn restamp_changes_only_the_ids(head in arb_head(), items in arb_items(),
                                    corr in any::<u64>(), session in any::<u64>()) {
        let wire = encode(head, &items);
        let mut buf = BytesMut::from(&wire[..]);
        let mut frame = FrameDecoder::default().decode(&mut buf).expect("valid").expect("whole");
        frame.set_correlation(corr);
        frame.set_session(session);
        let mut want = *frame.head();
        want.correlation = corr;
        want.session = session;
        prop_assert_eq!(*frame.head(), want);
        let bytes = frame.freeze();
        prop_assert_eq!(Head::parse(&bytes), Ok(Some(want)));
        prop_assert_eq!(&bytes[..16], &wire[..16]);
        prop_assert_eq!(&bytes[HEAD_LEN..], &wire[HEAD_LEN..]);
    }

    #[test]
    fn chunking_does_not_change_the_frames(
        frames in proptest::collection::vec((arb_head(), arb_items()), 1..6),
        sizes in proptest::collection::vec(1usize..200, 1..64),
    ) {
        let mut stream = Vec::new();
        for (h, items) in &frames {
            stream.extend_from_slice(&encode(*h, items));
        }
        let whole = decode_chunked(&mut FrameDecoder::default(), &stream,
                                   &mut std::iter::once(usize::MAX)).expect("valid");
        let bytewise = decode_chunked(&mut FrameDecoder::default(), &stream,
                                      &mut std::iter::repeat(1)).expect("valid");
        let chunked = decode_chunked(&mut FrameDecoder::default(), &stream,
                                     &mut sizes.iter().copied().cycle()).expect("valid");
        prop_assert_eq!(whole.len(), frames.len());
        prop_assert_eq!(&whole, &bytewise);
        prop_assert_eq!(&whole, &chunked);
        // The non-reserving API frames the stream exactly as `decode` does.
        let peeked = next_frame_chunked(&stream, &mut sizes.iter().copied().cycle());
        prop_assert_eq!(&whole, &peeked);
        for (f, (h, items)) in whole.iter().zip(&frames) {
            let mut want = *h;
            want.body_len = f.head().body_len;
            prop_assert_eq!(*f.head(), want);
            prop_assert_eq!(read_items(f.body()), Ok(items.clone()));
        }
    }

    #[test]
    fn any_bytes_never_panic_or_overreserve(
        wire in arb_wire(),
        sizes in proptest::collection::vec(1usize..100, 1..16),
        small in any::<bool>(),
    ) {
        // A large limit next to small inputs: any reservation driven by an announced length
        // that was not checked first would show as capacity far beyond what was fed in.
        let max = if small { 4096 } else { 1 << 20 };
        let mut dec = FrameDecoder::new(max);
        let mut buf = BytesMut::new();
        let mut sizes = sizes.iter().copied().cycle();
        let mut at = 0;
        'feed: while at < wire.len() {
            let n = sizes.next().unwrap_or(1).min(wire.len() - at);
            buf.extend_from_slice(&wire[at..at + n]);
            at += n;
            loop {
                let cap_before = buf.capacity();
                match dec.decode(&mut buf) {
                    Ok(Some(f)) => {
                        prop_assert!(f.len() <= max);
                        prop_assert_eq!(f.len(), HEAD_LEN + f.head().body_len as usize);
                        prop_assert_eq!(Head::parse(f.as_bytes()), Ok(Some(*f.head())));
                        walk_body(f.body());
                    }
                    Ok(None) => {
                        // Growth is only ever towards one checked frame: at most the limit, or
                        // the allocator's doubling of what the buffer already had.
                        prop_assert!(buf.capacity() <= max.max(2 * cap_before),
                            "capacity {} after decode, limit {max}, before {cap_before}",
                            buf.capacity());
                        break;
                    }
                    Err(e) => {
                        prop_assert_eq!(buf.capacity(), cap_before, "reserved before failing");
                        let framing_lost = matches!(e, FrameError::BadMagic(_)
                            | FrameError::UnsupportedVersion(_)
                            | FrameError::FrameTooLarge { .. });
                        prop_assert!(framing_lost, "unexpected error {:?}", e);
                        break 'feed;
                    }
                }
            }
        }
        prop_assert!(buf.capacity() <= max.max(2 * wire.len()).max(64),
            "capacity {} for {} input bytes", buf.capacity(), wire.len());
    }

    #[test]
    fn any_body_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        walk_body(BodyRef::new(&bytes));
        // Iteration ends: either it runs to the end or stops after its first error.
        let items: Vec<_> = BodyRef::new(&bytes).iter().collect();
        let errors = items.iter().filter(|r| r.is_err()).count();
        prop_assert!(errors <= 1);
        if errors == 1 {
            prop_assert!(items.last().expect("nonempty").is_err());
        }
    }
}

/// The limit is inclusive, and is checked from the head alone, before any body byte arrives.
#[test]
fn limit_is_inclusive_and_checked_from_the_head() {
    let mut h = Head::new(Kind::Request, Service::Ucs, msg::ucs::HISTORY_INSERT);
    h.body_len = 4096 - 32;
    let mut buf = BytesMut::from(&h.to_bytes()[..]);
    let mut dec = FrameDecoder::new(4096);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert!(
        buf.capacity() >= 4096,
        "the checked frame's room is reserved"
    );
    buf.extend_from_slice(&vec![0u8; 4096 - 32]);
    let f = dec.decode(&mut buf).expect("valid").expect("complete");
    assert_eq!(f.len(), 4096);

    h.body_len += 1;
    let mut buf = BytesMut::from(&h.to_bytes()[..]);
    assert!(matches!(
        FrameDecoder::new(4096).decode(&mut buf),
        Err(FrameError::FrameTooLarge {
            len: 4097,
            max: 4096
        })
    ));
}
