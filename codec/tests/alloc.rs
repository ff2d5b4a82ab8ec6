//! Counts heap allocations on the forwarding path, to hold the codec to its zero-copy claim:
//! parsing a head and re-stamping ids never allocates, and decoding frames out of a filled
//! read buffer costs one allocation for the whole buffer (its promotion to a shared buffer),
//! none per frame.
//!
//! Counting is switched on per thread, so the test harness's own threads (and the output
//! capture) cannot add to the counts.

// A `#[global_allocator]` must implement the `unsafe` trait `GlobalAlloc`; the workspace denies
// unsafe code, and this test file is the one documented exception. The impl only counts and
// forwards every call unchanged to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use deskmux_codec::head::{restamp_correlation, restamp_session};
use deskmux_codec::msg::{self, key};
use deskmux_codec::{Frame, FrameDecoder, Head, Kind, Service, encode_with};

struct Counting;

/// Allocations and reallocations made while counting was on, on any counting thread.
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // `const` init and no destructor: reading it can never allocate or fail, even inside the
    // allocator itself.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counter and the thread-local flag never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocs_in<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCS.load(Ordering::Relaxed) - before, r)
}

fn sample_frame(corr: u64) -> Frame {
    let mut head = Head::new(Kind::Request, Service::Interaction, msg::ixn::SUBMIT);
    head.tenant = 7;
    head.correlation = corr;
    Frame::build(head, |w| {
        w.str(key::QUEUE, "sales")?;
        w.list(key::PROPS, |w| {
            w.str("channel", "chat")?;
            w.str("lang", "fr")?;
            Ok(())
        })?;
        w.bin(key::DATA, &[0xAB; 200])?;
        Ok(())
    })
    .expect("small frame")
}

// One #[test] on purpose: the counter is global, and each step's count is taken on this
// thread only, so the steps run one after another here.
#[test]
fn forwarding_path_allocations() {
    // The counter must see allocations at all, or every zero below would prove nothing.
    let (n, v) = allocs_in(|| vec![1u8; 100]);
    assert_eq!(n, 1, "the counting allocator does not count");
    drop(v);

    // 1. Head parse + re-stamp of correlation and session on raw bytes: nothing.
    let mut raw = sample_frame(1).as_bytes().to_vec();
    let (n, parsed) = allocs_in(|| {
        let h = Head::parse(&raw).expect("valid").expect("whole head");
        restamp_correlation(&mut raw, h.correlation + 1000);
        restamp_session(&mut raw, 77);
        Head::parse(&raw).expect("valid").expect("whole head")
    });
    assert_eq!(n, 0, "head parse + restamp allocated");
    assert_eq!((parsed.correlation, parsed.session), (1001, 77));

    // 2. Many frames from one filled read buffer: decode, walk the body, restamp, freeze.
    const FRAMES: usize = 1000;
    let mut wire = BytesMut::new();
    for i in 0..FRAMES {
        wire.extend_from_slice(sample_frame(i as u64).as_bytes());
    }
    // What a connection's read buffer looks like: one Vec-backed BytesMut.
    let mut buf = BytesMut::with_capacity(wire.len());
    buf.extend_from_slice(&wire);
    let mut dec = FrameDecoder::default();
    let mut out = Vec::with_capacity(FRAMES);

    // The first split promotes the Vec-backed buffer to a shared one: one allocation (the
    // shared header, not a copy of the data).
    let (first, ()) = allocs_in(|| {
        let mut f = dec.decode(&mut buf).expect("valid").expect("whole");
        f.set_correlation(5_000);
        f.set_session(77);
        out.push(f.freeze());
    });
    let (rest, ()) = allocs_in(|| {
        for _ in 1..FRAMES {
            let mut f = dec.decode(&mut buf).expect("valid").expect("whole");
            f.body().validate().expect("valid body");
            assert_eq!(f.body().str(key::QUEUE), Ok("sales"));
            let corr = f.head().correlation;
            f.set_correlation(corr + 5_000);
            f.set_session(77);
            out.push(f.freeze());
        }
    });
    eprintln!(
        "decode: first frame {first} allocation(s), next {} frames {rest}",
        FRAMES - 1
    );
    assert_eq!(
        first, 1,
        "promotion to a shared buffer should cost exactly one allocation"
    );
    assert_eq!(rest, 0, "decoding from a filled buffer allocated per frame");
    assert!(buf.is_empty());
    assert_eq!(out.len(), FRAMES);
    // The frozen frames are the restamped wire bytes, sharing the read buffer's memory.
    let h = Head::parse(&out[999]).expect("valid").expect("head");
    assert_eq!((h.correlation, h.session), (999 + 5_000, 77));
    assert_eq!(&out[999][32..], &wire[999 * out[0].len() + 32..]);

    // 3. Encoding into a reused buffer that has room: nothing.
    let mut dst = BytesMut::with_capacity(64 * 1024);
    let (n, ()) = allocs_in(|| {
        for i in 0..100u64 {
            dst.clear();
            let mut head = Head::new(Kind::Response, Service::Ucs, msg::ucs::CONTACT_GET);
            head.correlation = i;
            encode_with(head, &mut dst, |w| {
                w.int(key::CONTACT, 12345);
                w.list(key::ATTRS, |w| {
                    w.str("name", "Zoë Martin")?;
                    Ok(())
                })?;
                Ok(())
            })
            .expect("small");
        }
    });
    assert_eq!(n, 0, "encoding into a buffer with room allocated");
}
