//! criterion benchmarks of the codec, for 64 B, 1 KiB and 64 KiB frames, each measured next to
//! a plain memcpy of the same bytes in the same run, so that the ratio to the machine's
//! physical limit shows. Every case goes through ~1 MiB of frames per iteration and reports
//! `Throughput::Bytes`; frames/s follow from the frame count (see benches/RESULTS.md).
//!
//! Run: `cargo bench -p deskmux-benches --bench codec -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use deskmux_benches::{SIZES, frames_per_stream, head, stream, write_body};
use deskmux_codec::msg::key;
use deskmux_codec::{DEFAULT_MAX_FRAME_LEN, Frame, FrameDecoder, HEAD_LEN, Head, encode_with};

fn codec(c: &mut Criterion) {
    for (name, len) in SIZES {
        let n = frames_per_stream(len);
        let wire = stream(len, n);
        let mut g = c.benchmark_group(format!("codec-{name}"));
        g.throughput(Throughput::Bytes(wire.len() as u64));

        // The physical limit: moving the same bytes once, into memory already faulted in.
        g.bench_function("memcpy", |b| {
            let mut dst = vec![0u8; wire.len()];
            b.iter(|| {
                dst.copy_from_slice(black_box(&wire));
                black_box(&dst);
            });
        });

        // What a proxy routes by: the head alone, hopping from frame to frame.
        g.bench_function("head_parse", |b| {
            b.iter(|| {
                let wire = black_box(&wire[..]);
                let mut at = 0;
                let mut sum = 0u64;
                while at < wire.len() {
                    let h = Head::parse(&wire[at..]).expect("valid").expect("head");
                    sum = sum.wrapping_add(h.correlation ^ h.session);
                    at += HEAD_LEN + h.body_len as usize;
                }
                sum
            });
        });

        // The decoder splitting frames off a filled read buffer (refilling it is setup, not
        // timed: a socket read does that).
        g.bench_function("decode", |b| {
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| {
                    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
                    let mut sum = 0u64;
                    while let Some(f) = dec.decode(buf).expect("valid") {
                        sum = sum.wrapping_add(f.head().correlation);
                    }
                    sum
                },
                BatchSize::LargeInput,
            );
        });

        // Decode plus what a receiver does before acting: validate the whole body (UTF-8 of
        // every str included) and look a key up.
        g.bench_function("decode_walk", |b| {
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| {
                    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
                    let mut sum = 0i64;
                    while let Some(f) = dec.decode(buf).expect("valid") {
                        let body = f.body();
                        body.validate().expect("valid body");
                        sum = sum.wrapping_add(body.int(key::INTERACTION).expect("int"));
                    }
                    sum
                },
                BatchSize::LargeInput,
            );
        });

        // Encoding straight into a reused write buffer.
        g.bench_function("encode_with", |b| {
            let mut dst = BytesMut::with_capacity(wire.len());
            b.iter(|| {
                dst.clear();
                for i in 0..n {
                    encode_with(head(i as u64), &mut dst, |w| write_body(w, len)).expect("encode");
                }
                black_box(dst.len())
            });
        });

        // Encoding each frame into its own new buffer (one allocation per frame, and growth
        // past the 96 bytes Frame::build starts with).
        g.bench_function("build", |b| {
            b.iter(|| {
                for i in 0..n {
                    black_box(Frame::build(head(i as u64), |w| write_body(w, len)).expect("build"));
                }
            });
        });
        g.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
