//! Partitioned routing (the seeds' SMS subsets) over real servers: two UCS instances own the
//! phone-number prefixes 0-4 and 5-9; a desktop gets a session on each, and every
//! `CONTACT_IDENTIFY` goes to the instance owning its `phone` key; a request without the key
//! is refused (MALFORMED) rather than sent anywhere.

mod proxy_support;

use std::net::SocketAddr;

use deskmux_codec::msg::{key, ucs};
use deskmux_codec::{ErrorCode, Frame, Service};
use deskmux_tests::TestClient;
use proxy_support::*;

async fn identify(c: &mut TestClient, phone: &str) -> Frame {
    c.request(Service::Ucs, ucs::CONTACT_IDENTIFY, |w| {
        w.str(key::PHONE, phone)?;
        Ok(())
    })
    .await
    .unwrap()
}

/// Whether the UCS at `addr` already knew `phone` (asked directly; creates it otherwise).
async fn known_on(addr: SocketAddr, phone: &str) -> bool {
    let mut c = TestClient::connect_hello(addr, T1, "checker", TOKEN1)
        .await
        .unwrap();
    let r = identify(&mut c, phone).await;
    assert!(r.error().is_none(), "{:?}", r.error());
    r.body().int(key::CREATED).unwrap() == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_go_to_their_partition() {
    let dir = tempfile::tempdir().unwrap();
    let (_u1, a1) = start_core_with(dir.path(), "u1", "127.0.0.1:0", "role = \"ucs\"");
    let (_u2, a2) = start_core_with(dir.path(), "u2", "127.0.0.1:0", "role = \"ucs\"");
    let cfg = dir.path().join("proxy.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
workers = 1
link_secret = "{SECRET}"
plaintext_links = true

[clusters.ucs]
partition_key = "phone"
key_space = "0123456789"
partitions = [
  {{ instance = "u1", prefixes = ["0", "1", "2", "3", "4"] }},
  {{ instance = "u2", prefixes = ["5", "6", "7", "8", "9"] }},
]

[[upstream]]
name = "u1"
cluster = "ucs"
service = "ucs"
addr = "{a1}"
links = 1

[[upstream]]
name = "u2"
cluster = "ucs"
service = "ucs"
addr = "{a2}"
links = 1
"#
        ),
    )
    .unwrap();
    let proxy = start_proxy(cfg);
    let mut d = desktop(proxy.addr, T1).await;
    for p in ["0100", "4999", "5000", "9123"] {
        let r = identify(&mut d, p).await;
        assert!(r.error().is_none(), "{p}: {:?}", r.error());
        assert_eq!(r.body().int(key::CREATED).unwrap(), 1, "{p}");
    }
    assert!(known_on(a1, "0100").await && known_on(a1, "4999").await);
    assert!(known_on(a2, "5000").await && known_on(a2, "9123").await);
    assert!(!known_on(a2, "0100").await, "0100 must not be on u2");
    assert!(!known_on(a1, "9123").await, "9123 must not be on u1");
    // No key, or a key outside the key space: refused, not sent.
    let r = d
        .request(Service::Ucs, ucs::CONTACT_GET, |w| {
            w.int(key::CONTACT, 1);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(code(&r), Some(ErrorCode::MALFORMED));
    assert_eq!(
        code(&identify(&mut d, "+33").await),
        Some(ErrorCode::MALFORMED)
    );
}
