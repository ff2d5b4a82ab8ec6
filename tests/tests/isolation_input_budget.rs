//! One desktop's input is read at its byte budget (`limits.desktop_read_bytes_per_s`, after a
//! burst of two `max_frame`s), so that a desktop sending large frames flat out cannot take the
//! link it shares with thousands of others: everything it sends is forwarded and walked by the
//! server before anything can refuse it (benches/RESULTS.md, merge bomb: without a budget,
//! other tenants' p99 rose 8×).

mod proxy_support;

use std::time::{Duration, Instant};

use deskmux_codec::Service;
use deskmux_codec::msg::ixn;
use proxy_support::*;

/// The proxy reads a desktop (at most 64 KiB at a time) only while it is within its budget,
/// and resumes one held back at most a tick after it is under again, so by time t it has read
/// at most the burst, plus rate × t, plus 64 KiB: 13 frames of 60 KiB (about 780 KiB) at
/// 256 KiB/s after a 256 KiB burst take at least (780 − 256 − 64) / 256 = 1.8 s. Without the
/// budget they take milliseconds. Another desktop is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_is_read_at_its_byte_budget() {
    let st = stack(
        1,
        1,
        "max_frame = 131072\nhello_max_frame = 16384\ndesktop_read_bytes_per_s = 262144\n",
    );
    let mut heavy = desktop(st.proxy.addr, T1).await;
    let mut other = desktop(st.proxy.addr, T1).await;
    let payload = vec![0x5au8; 60 * 1024];
    let t0 = Instant::now();
    let sender = tokio::spawn(async move {
        let mut corrs = Vec::new();
        for _ in 0..13 {
            let c = heavy
                .send(Service::Interaction, ixn::ECHO, |w| {
                    w.bin("data", &payload)?;
                    Ok(())
                })
                .await
                .unwrap();
            corrs.push(c);
        }
        for c in corrs {
            let r = heavy.response(c, Duration::from_secs(30)).await.unwrap();
            assert!(r.error().is_none(), "{:?}", r.error());
        }
    });
    // Served while the heavy one is held to its budget.
    echo_ok(&mut other, Service::Interaction, b"not held back").await;
    sender.await.unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1750),
        "13 frames of 60 KiB were read in {took:?}, over the budget"
    );
}
