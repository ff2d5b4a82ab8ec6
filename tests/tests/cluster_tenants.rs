//! Tenant routing: each tenant's UCS work goes only to its configured UCS instance
//! (`[[tenant]] id = .., ucs = ".."`); a desktop of tenant A stamping tenant B's id never
//! reaches B's server; SIGHUP applies a changed mapping to new sessions without a restart
//! (existing sessions keep their instance).

mod proxy_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use deskmux_codec::msg::{key, ucs};
use deskmux_codec::{ErrorCode, Service};
use deskmux_tests::TestClient;
use proxy_support::*;

fn write_cfg(path: &Path, ixn: SocketAddr, a: SocketAddr, b: SocketAddr, t1: &str, t2: &str) {
    std::fs::write(
        path,
        format!(
            r#"listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
workers = 2
link_secret = "{SECRET}"
plaintext_links = true

[[upstream]]
name = "ixn"
service = "interaction"
addr = "{ixn}"
links = 1

[[upstream]]
name = "ucs-a"
service = "ucs"
addr = "{a}"
links = 1

[[upstream]]
name = "ucs-b"
service = "ucs"
addr = "{b}"
links = 1

[[tenant]]
id = 1
ucs = "{t1}"

[[tenant]]
id = 2
ucs = "{t2}"
"#
        ),
    )
    .unwrap();
}

async fn create(d: &mut TestClient, email: &str) -> deskmux_codec::Frame {
    d.request(Service::Ucs, ucs::CONTACT_CREATE, |w| {
        w.list(key::ATTRS, |w| {
            w.str("email", email)?;
            Ok(())
        })?;
        Ok(())
    })
    .await
    .unwrap()
}

/// How many contacts of `tenant` with this email the UCS server at `addr` holds (asked
/// directly, not through the proxy).
async fn count_on(addr: SocketAddr, tenant: u32, email: &str) -> usize {
    let token = if tenant == T2 { TOKEN2 } else { TOKEN1 };
    let mut c = TestClient::connect_hello(addr, tenant, "checker", token)
        .await
        .unwrap();
    let r = c
        .request(Service::Ucs, ucs::CONTACT_SEARCH, |w| {
            w.str(key::KEY, "email")?;
            w.str(key::VALUE, email)?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(r.error().is_none(), "search: {:?}", r.error());
    r.body().list(key::CONTACTS).unwrap().iter().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_reach_only_their_ucs_and_reload_remaps() {
    let dir = tempfile::tempdir().unwrap();
    let (_ixn, ixn) = start_core_with(dir.path(), "ixn", "127.0.0.1:0", "role = \"ixn\"");
    let (_ua, a) = start_core_with(dir.path(), "ua", "127.0.0.1:0", "role = \"ucs\"");
    let (_ub, b) = start_core_with(dir.path(), "ub", "127.0.0.1:0", "role = \"ucs\"");
    let cfg = dir.path().join("proxy.toml");
    write_cfg(&cfg, ixn, a, b, "ucs-a", "ucs-b");
    let proxy = start_proxy(cfg.clone());

    // Several desktops per tenant (spread over both workers): each tenant's contacts land on
    // its own UCS only.
    let mut t1 = Vec::new();
    let mut t2 = Vec::new();
    for k in 0..4 {
        let mut d1 = desktop(proxy.addr, T1).await;
        assert!(create(&mut d1, &format!("a{k}@x")).await.error().is_none());
        t1.push(d1);
        let mut d2 = desktop(proxy.addr, T2).await;
        assert!(create(&mut d2, &format!("b{k}@x")).await.error().is_none());
        t2.push(d2);
    }
    for k in 0..4 {
        assert_eq!(count_on(a, T1, &format!("a{k}@x")).await, 1);
        assert_eq!(count_on(b, T1, &format!("a{k}@x")).await, 0);
        assert_eq!(count_on(b, T2, &format!("b{k}@x")).await, 1);
        assert_eq!(count_on(a, T2, &format!("b{k}@x")).await, 0);
    }

    // Spoofing: a tenant-1 desktop stamps tenant 2 on a UCS request: refused by the proxy,
    // never forwarded; nothing appears on tenant 2's server (or anywhere).
    let d = &mut t1[0];
    d.tenant = T2;
    let r = create(d, "spoof@x").await;
    assert_eq!(code(&r), Some(ErrorCode::TENANT_MISMATCH));
    d.tenant = T1;
    assert_eq!(count_on(b, T2, "spoof@x").await, 0);
    assert_eq!(count_on(a, T2, "spoof@x").await, 0);
    assert_eq!(count_on(a, T1, "spoof@x").await, 0);
    // Claiming tenant 2 in the hello with tenant 1's credentials: refused.
    let mut c = TestClient::connect(proxy.addr).await.unwrap();
    let h = c.hello(T2, "spoofer", TOKEN1, 0b100).await.unwrap();
    assert_eq!(code(&h), Some(ErrorCode::AUTH_FAILED));

    // SIGHUP: tenant 1 now maps to ucs-b. New sessions follow; existing ones keep ucs-a.
    write_cfg(&cfg, ixn, a, b, "ucs-b", "ucs-b");
    proxy.proc.signal("HUP").unwrap();
    let admin = proxy.admin;
    assert!(wait_until(Duration::from_secs(5), || {
        let st = status(admin);
        st["workers"]
            .as_array()
            .is_some_and(|w| w.iter().all(|w| w["status"]["reloads"].as_u64() >= Some(1)))
    }));
    for k in 0..4 {
        let mut d = desktop(proxy.addr, T1).await;
        assert!(create(&mut d, &format!("new{k}@x")).await.error().is_none());
        assert_eq!(count_on(b, T1, &format!("new{k}@x")).await, 1);
        assert_eq!(count_on(a, T1, &format!("new{k}@x")).await, 0);
    }
    assert!(create(&mut t1[1], "old@x").await.error().is_none());
    assert_eq!(count_on(a, T1, "old@x").await, 1, "existing alias kept");
}
