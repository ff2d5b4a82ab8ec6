//! Killing the upstream mid-load: every in-flight request gets an explicit answer (the
//! response, `LINK_LOST` if it was written, `LINK_LOST_UNSENT` if not), every desktop is told
//! its session is gone, and links reconnect with backoff once the server is back.

mod proxy_support;

use std::time::Duration;

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
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for d in 0..8u32 {
        let addr = proxy.addr;
        let stop = stop.clone();
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
                if failed || stop.load(std::sync::atomic::Ordering::Relaxed) {
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
    tokio::time::sleep(Duration::from_millis(400)).await;
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
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    // Down for a second: reconnect attempts are spaced by backoff, not a busy loop.
    let before = metric(proxy.admin, "deskmux_proxy_link_connects");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = metric(proxy.admin, "deskmux_proxy_link_connects") - before;
    assert!(during <= 30.0, "{during} connects in 1 s: no backoff?");
    assert!(
        during >= 2.0,
        "{during} connects in 1 s: links must keep retrying"
    );

    // The server comes back on the same address: links reconnect, new desktops work.
    let (_core2, _) = start_core(dir.path(), "core1b", &core_addr.to_string());
    let admin = proxy.admin;
    assert!(
        wait_until(Duration::from_secs(10), || {
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
