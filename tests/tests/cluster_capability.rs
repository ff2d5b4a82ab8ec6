//! Routing by capability (the seeds' URS round robin): SUBMITs naming a queue go round robin
//! among the Interaction Servers advertising that queue; when one dies, its SUBMITs that were
//! never written are resubmitted to another with the queue, the written ones get LINK_LOST,
//! and nothing is duplicated (every request has exactly one answer; the survivor records
//! exactly the submits it acknowledged).

mod proxy_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{ErrorCode, Kind, Service};
use deskmux_tests::TestClient;
use proxy_support::*;

/// A direct desktop on a server, subscribed to `queue:NAME`.
async fn watcher(addr: SocketAddr, queue: &str) -> TestClient {
    let mut c = TestClient::connect_hello(addr, T1, "watch", TOKEN1)
        .await
        .unwrap();
    let r = c
        .request(Service::Interaction, ixn::SUBSCRIBE, |w| {
            w.str(key::TOPIC, &format!("queue:{queue}"))?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
    c
}

/// `submitted` events seen by a watcher within `quiet` of silence.
async fn submitted(c: &mut TestClient, quiet: Duration) -> usize {
    let mut n = 0;
    while let Ok(f) = c.event(ixn::QUEUE_EVENT, quiet).await {
        if f.body().str("event").ok() == Some("submitted") {
            n += 1;
        }
    }
    n
}

/// A `SUBMIT` with `pad` bytes of properties, in values of at most 15,000 bytes (a server
/// refuses values over 16 KiB and lists over 64 KiB).
async fn submit(c: &mut TestClient, queue: &str, pad: usize) -> u64 {
    c.send(Service::Interaction, ixn::SUBMIT, |w| {
        w.str(key::QUEUE, queue)?;
        w.list(key::PROPS, |w| {
            let mut left = pad;
            let mut i = 0;
            while left > 0 || i == 0 {
                let n = left.min(15_000);
                w.str(&format!("pad{i}"), &"x".repeat(n))?;
                left -= n;
                i += 1;
            }
            Ok(())
        })?;
        Ok(())
    })
    .await
    .unwrap()
}

fn metric(admin: SocketAddr, name: &str, label: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_round_robin_by_queue_and_unsent_ones_move() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r1, a1) = start_core_with(dir.path(), "r1", "127.0.0.1:0", "role = \"ixn\"");
    let (_r2, a2) = start_core_with(dir.path(), "r2", "127.0.0.1:0", "role = \"ixn\"");
    let cfg = dir.path().join("proxy.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
workers = 1
link_secret = "{SECRET}"
plaintext_links = true

[clusters.urs]
capability_key = "queue"

[[upstream]]
name = "r1"
cluster = "urs"
service = "interaction"
capabilities = ["sales"]
addr = "{a1}"
links = 1

[[upstream]]
name = "r2"
cluster = "urs"
service = "interaction"
capabilities = ["sales", "vip"]
addr = "{a2}"
links = 1
"#
        ),
    )
    .unwrap();
    let proxy = start_proxy(cfg);
    let mut w1 = watcher(a1, "sales").await;
    let mut w2 = watcher(a2, "sales").await;
    let mut v1 = watcher(a1, "vip").await;
    let mut v2 = watcher(a2, "vip").await;
    let mut media = desktop(proxy.addr, T1).await;

    // Round robin among the instances advertising the queue.
    for _ in 0..6 {
        let corr = submit(&mut media, "sales", 8).await;
        let r = media.response(corr, Duration::from_secs(5)).await.unwrap();
        assert!(r.error().is_none(), "{:?}", r.error());
    }
    for _ in 0..3 {
        let corr = submit(&mut media, "vip", 8).await;
        let r = media.response(corr, Duration::from_secs(5)).await.unwrap();
        assert!(r.error().is_none(), "{:?}", r.error());
    }
    let q = Duration::from_millis(300);
    assert_eq!(submitted(&mut w1, q).await, 3);
    assert_eq!(submitted(&mut w2, q).await, 3);
    assert_eq!(submitted(&mut v1, q).await, 0, "r1 does not advertise vip");
    assert_eq!(submitted(&mut v2, q).await, 3);
    let corr = submit(&mut media, "nobody", 8).await;
    let r = media.response(corr, Duration::from_secs(5)).await.unwrap();
    assert_eq!(code(&r), Some(ErrorCode::NO_ROUTE));

    // r1 hangs (SIGSTOP): its half of a burst of large submits fills the socket buffers and
    // then the proxy's link queue (never written). r1 is then killed: the written ones get
    // LINK_LOST, the unwritten ones are resubmitted to r2.
    r1.signal("STOP").unwrap();
    // 60,000 bytes each (under the server's 64 KiB property cap), 140 per instance: more than
    // the socket buffers between the proxy and a stopped r1 hold.
    let n = 280;
    let mut corrs = Vec::new();
    for _ in 0..n {
        corrs.push(submit(&mut media, "sales", 60_000).await);
    }
    // r2's half is answered (r1, stopped, answers none): the proxy has routed them all.
    let mut answered = HashMap::new();
    while answered.len() < n / 2 {
        let f = media
            .wait_for(Duration::from_secs(30), |f| {
                f.head().kind == Kind::Response
                    && f.error().is_none()
                    && corrs.contains(&f.head().correlation)
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "only {} of r2's {} submits answered: {e:#}",
                    answered.len(),
                    n / 2
                )
            });
        answered.insert(f.head().correlation, f);
    }
    r1.kill();
    let (mut ok, mut lost) = (0, 0);
    for corr in corrs {
        let r = match answered.remove(&corr) {
            Some(r) => r,
            None => media
                .response(corr, Duration::from_secs(20))
                .await
                .expect("every submit is answered"),
        };
        match code(&r) {
            None => ok += 1,
            Some(ErrorCode::LINK_LOST) => lost += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let resubmitted = metric(proxy.admin, "deskmux_proxy_errors", "resubmitted_unsent");
    println!("capability burst: {n} submits, ok {ok}, LINK_LOST {lost}, resubmitted {resubmitted}");
    assert_eq!(ok + lost, n, "exactly one answer each");
    assert!(
        resubmitted > 0.0,
        "some submits were still queued in the proxy"
    );
    assert!(lost > 0, "some were written to the hung r1");
    // No duplicate: r2 recorded exactly the submits that were acknowledged.
    assert_eq!(submitted(&mut w2, Duration::from_millis(1000)).await, ok);
}
