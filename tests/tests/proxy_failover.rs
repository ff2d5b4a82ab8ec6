//! Killing the upstream mid-load: every in-flight request gets an explicit answer (the
//! response, `LINK_LOST` if it was written, `LINK_LOST_UNSENT` if not), every desktop is told
//! its session is gone, and links reconnect with backoff once the server is back.

mod proxy_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{ErrorCode, Kind, Service};
use proxy_support::*;

fn metric(admin: std::net::SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_upstream_answers_every_request_and_links_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut core, core_addr) = start_core(dir.path(), "core1", "127.0.0.1:0");
    let cfg = proxy_config(
        dir.path(),
        &[("[\"interaction\", \"ucs\"]", core_addr)],
        1,
        2,
        "link_backoff_min_ms = 100\nlink_backoff_max_ms = 400\n",
    );
    let proxy = start_proxy(cfg);
    let stop = Arc::new(AtomicBool::new(false));
    // Desktops whose first window of requests was answered.
    let working = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for d in 0..8u32 {
        let addr = proxy.addr;
        let stop = stop.clone();
        let working = working.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = desktop(addr, T1).await;
            let (mut ok, mut lost, mut unsent, mut sent) = (0u32, 0u32, 0u32, 0u32);
            loop {
                let mut window = Vec::new();
                for k in 0..10 {
                    let corr = c
                        .send(Service::Interaction, ixn::ECHO, |w| {
                            w.bin(key::DATA, format!("d{d}-{k}").as_bytes())?;
                            Ok(())
                        })
                        .await
                        .unwrap();
                    window.push(corr);
                    sent += 1;
                }
                let mut failed = false;
                for corr in window {
                    // Exactly one answer per request, explicit.
                    let r = c.response(corr, Duration::from_secs(10)).await.unwrap();
                    match code(&r) {
                        None => ok += 1,
                        Some(ErrorCode::LINK_LOST) => {
                            lost += 1;
                            failed = true;
                        }
                        Some(ErrorCode::LINK_LOST_UNSENT) => {
                            unsent += 1;
                            failed = true;
                        }
                        other => panic!("unexpected answer {other:?}"),
                    }
                }
                if ok == 10 {
                    working.fetch_add(1, Ordering::Relaxed);
                }
                if failed || stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            // The desktop is told that its upstream session is gone.
            let notice = c
                .wait_for(Duration::from_secs(5), |f| {
                    f.head().kind == Kind::Control && code(f) == Some(ErrorCode::LINK_LOST)
                })
                .await;
            assert!(notice.is_ok(), "desktop {d}: no LINK_LOST notice");
            // Later requests on the lost session: not sent, safe to retry.
            let r = c
                .request(Service::Interaction, ixn::ECHO, |_| Ok(()))
                .await
                .unwrap();
            assert_eq!(code(&r), Some(ErrorCode::LINK_LOST_UNSENT));
            assert_eq!(ok + lost + unsent, sent);
            (ok, lost, unsent)
        }));
    }
    // Every desktop is at work (its first window answered) when the upstream dies.
    let end = Instant::now() + Duration::from_secs(20);
    while working.load(Ordering::Relaxed) < 8 {
        assert!(
            Instant::now() < end && !tasks.iter().any(|t| t.is_finished()),
            "only {} of 8 desktops at work",
            working.load(Ordering::Relaxed)
        );
        // Back-off between two looks.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    core.kill();
    let mut total_err = 0;
    for t in tasks {
        let (ok, lost, unsent) = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("desktop task finished")
            .unwrap();
        assert!(ok > 0);
        total_err += lost + unsent;
    }
    assert!(total_err >= 8, "every desktop saw its failure explicitly");
    stop.store(true, Ordering::Relaxed);

    // While the server is down the links keep retrying, spaced by backoff, not a busy loop:
    // wait for RETRIES more attempts, then check how long they took. With backoff (100 ms
    // doubling to 400 ms, each ±50 %), 5 attempts of one link take at least 50 + 100 + 200 +
    // 200 ms, so 10 over the 2 links come at most at ~18 per second; a busy loop makes
    // thousands. A slow machine only makes them slower.
    const RETRIES: f64 = 10.0;
    let admin = proxy.admin;
    let before = metric(admin, "deskmux_proxy_link_connects");
    let t0 = Instant::now();
    let retrying = wait_until_async(Duration::from_secs(30), move || {
        metric(admin, "deskmux_proxy_link_connects") - before >= RETRIES
    })
    .await;
    let during = metric(admin, "deskmux_proxy_link_connects") - before;
    let took = t0.elapsed();
    assert!(
        retrying,
        "{during} connects in {took:?}: links must keep retrying"
    );
    let rate = during / took.as_secs_f64();
    assert!(
        rate <= 30.0,
        "{during} connects in {took:?} ({rate:.0}/s): no backoff?"
    );

    // The server comes back on the same address: links reconnect, new desktops work.
    let (_core2, _) = start_core(dir.path(), "core1b", &core_addr.to_string());
    assert!(
        wait_until(Duration::from_secs(20), || {
            status(admin)["workers"][0]["status"]["links_up"].as_u64() == Some(2)
        }),
        "links did not come back"
    );
    let mut c = desktop(proxy.addr, T1).await;
    assert!(
        echo(&mut c, Service::Interaction, b"back")
            .await
            .error()
            .is_none()
    );
}
