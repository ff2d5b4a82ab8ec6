//! UCS scaled out: two core-server processes running UCS only (`role = "ucs"`) share one
//! PostgreSQL database, both active (UCS-only instances take no instance lock on PostgreSQL),
//! each over three connections of its own (`[storage] connections = 3`).
//! A write acknowledged by one is read by the other at once, asked directly and through a
//! proxy cluster that balances desktops over both; with one instance killed, the proxy's new
//! sessions go to the other, which serves everything both wrote.
//!
//! The Interaction Server keeps tenants' queues and agents in memory, so it is not run here:
//! two instances on one database would both act for every tenant (see `core_server_postgres`
//! for its one-primary-and-a-standby form on PostgreSQL).

mod core_server_support;
mod proxy_support;

use std::net::SocketAddr;
use std::time::Duration;

use core_server_support::pg::PgServer;
use core_server_support::{SECRET, Server, T1, TOKEN1, write_config_pg};
use deskmux_codec::msg::{key, ucs};
use deskmux_codec::{Frame, Service};
use deskmux_tests::TestClient;
use proxy_support::{start_proxy, status, wait_until_async};

async fn desktop(addr: SocketAddr, agent: &str) -> TestClient {
    TestClient::connect_hello(addr, T1, agent, TOKEN1)
        .await
        .expect("hello")
}

fn ok(f: Frame) -> Frame {
    assert!(f.error().is_none(), "refused: {:?}", f.error());
    f
}

async fn create(c: &mut TestClient, email: &str) -> i64 {
    let f = c
        .request(Service::Ucs, ucs::CONTACT_CREATE, |w| {
            w.list(key::ATTRS, |w| {
                w.str("email", email)?;
                Ok(())
            })?;
            Ok(())
        })
        .await
        .unwrap();
    ok(f).body().int(key::CONTACT).unwrap()
}

/// The contact's e-mail, as `c`'s instance reads it now (`None`: not found).
async fn email(c: &mut TestClient, id: i64) -> Option<String> {
    let f = c
        .request(Service::Ucs, ucs::CONTACT_GET, |w| {
            w.int(key::CONTACT, id);
            Ok(())
        })
        .await
        .unwrap();
    if f.error().is_some() {
        return None;
    }
    let attrs = f.body().list(key::ATTRS).unwrap();
    Some(attrs.str("email").unwrap().to_string())
}

async fn add_history(c: &mut TestClient, contact: i64, text: &str) -> i64 {
    let f = c
        .request(Service::Ucs, ucs::HISTORY_INSERT, |w| {
            w.int(key::CONTACT, contact);
            w.str(key::SUBJECT, "s")?;
            w.str(key::TEXT, text)?;
            Ok(())
        })
        .await
        .unwrap();
    ok(f).body().int(key::HISTORY).unwrap()
}

async fn content(c: &mut TestClient, history: i64) -> String {
    let f = c
        .request(Service::Ucs, ucs::CONTENT_GET, |w| {
            w.int(key::HISTORY, history);
            Ok(())
        })
        .await
        .unwrap();
    ok(f).body().str(key::TEXT).unwrap().to_string()
}

/// The proxy's `/status` entry of instance `name`: (state, sessions).
fn instance(admin: SocketAddr, name: &str) -> (String, u64) {
    let st = status(admin);
    let i = st["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name).cloned())
        .unwrap_or(serde_json::Value::Null);
    (
        i["state"].as_str().unwrap_or("").to_string(),
        i["sessions"].as_u64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ucs_instances_on_one_database_read_each_others_writes() {
    let pg = PgServer::start();
    pg.create("scale");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_pg(dir.path(), 5000, "role = \"ucs\"", &pg, "scale");
    // Each instance with three connections (lanes): sessions' work spread over them.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("[storage]\n", "[storage]\nconnections = 3\n"),
    )
    .unwrap();
    let mut u1 = Server::start(&cfg, &["--instance", "u1"]);
    let u2 = Server::start(&cfg, &["--instance", "u2"]);
    let conns = |who: &str| {
        pg.psql(
            "scale",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{who}'"),
        )
        .trim()
        .parse::<u32>()
        .unwrap()
    };
    assert!(
        conns("u1") >= 3 && conns("u2") >= 3,
        "three connections each"
    );

    // Directly: each reads what the other acknowledged, at once.
    let mut d1 = desktop(u1.addr, "a1").await;
    let mut d2 = desktop(u2.addr, "a2").await;
    let c = create(&mut d1, "one@x").await;
    assert_eq!(email(&mut d2, c).await.as_deref(), Some("one@x"));
    let h = add_history(&mut d2, c, "written on u2").await;
    assert_eq!(content(&mut d1, h).await, "written on u2");
    let f = d2
        .request(Service::Ucs, ucs::CONTACT_DELETE, |w| {
            w.int(key::CONTACT, c);
            Ok(())
        })
        .await
        .unwrap();
    ok(f);
    assert_eq!(
        email(&mut d1, c).await,
        None,
        "a delete on u2 is seen by u1"
    );

    // Through a proxy cluster of both: two desktops, one session on each instance.
    let proxy_cfg = dir.path().join("proxy.toml");
    std::fs::write(
        &proxy_cfg,
        format!(
            r#"listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
workers = 1
link_secret = "{SECRET}"
plaintext_links = true

[clusters.ucs]
balance = "round_robin"

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
"#,
            a1 = u1.addr,
            a2 = u2.addr
        ),
    )
    .unwrap();
    let proxy = start_proxy(proxy_cfg);
    let admin = proxy.admin;
    assert!(
        wait_until_async(Duration::from_secs(20), move || {
            instance(admin, "u1").0 == "running" && instance(admin, "u2").0 == "running"
        })
        .await,
        "both instances running behind the proxy"
    );
    let mut p1 = desktop(proxy.addr, "a3").await;
    let mut p2 = desktop(proxy.addr, "a4").await;
    assert!(
        wait_until_async(Duration::from_secs(20), move || {
            instance(admin, "u1").1 == 1 && instance(admin, "u2").1 == 1
        })
        .await,
        "the two desktops' sessions are on different instances"
    );
    let mut written = Vec::new();
    for i in 0..2 {
        let (w, r) = if i == 0 {
            (&mut p1, &mut p2)
        } else {
            (&mut p2, &mut p1)
        };
        let e = format!("proxied-{i}@x");
        let c = create(w, &e).await;
        assert_eq!(email(r, c).await.as_deref(), Some(e.as_str()));
        let h = add_history(w, c, &e).await;
        assert_eq!(content(r, h).await, e);
        written.push((c, e));
    }

    // One instance killed: a new desktop's session goes to the other, which serves all of it.
    u1.kill9();
    assert!(
        wait_until_async(Duration::from_secs(20), move || {
            instance(admin, "u1").0 != "running"
        })
        .await,
        "the proxy sees u1 gone"
    );
    let mut p3 = desktop(proxy.addr, "a2").await;
    for (c, e) in &written {
        assert_eq!(email(&mut p3, *c).await.as_deref(), Some(e.as_str()));
    }
    drop(u2);
}
