//! The Interaction Server partitioned by tenant, behind one proxy: two core-server instances
//! on one PostgreSQL database, each holding the lease of one tenant (so each can serve only
//! that tenant), and a proxy whose tenant routing (`[[tenant]] interaction = "..."`) opens
//! each tenant's interaction sessions on its owner. Desktops of both tenants log in, submit
//! and get their invites through the one proxy. The same proxy without the routing balances
//! sessions over both instances, and the instance that does not own a tenant refuses it:
//! that is what the routing is for.

mod core_server_support;
mod proxy_support;

use std::net::SocketAddr;
use std::path::Path;

use core_server_support::pg::PgServer;
use core_server_support::*;
use deskmux_codec::msg::{ixn, key};
use proxy_support::{start_proxy, status};

/// A proxy config over the two instances (interaction only), with `tenants` appended.
fn proxy_config(dir: &Path, a: SocketAddr, b: SocketAddr, tenants: &str) -> std::path::PathBuf {
    let p = dir.join("proxy.toml");
    std::fs::write(
        &p,
        format!(
            r#"listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
workers = 1
link_secret = "{SECRET}"
plaintext_links = true

[[upstream]]
name = "ixn-a"
service = "interaction"
addr = "{a}"
links = 1

[[upstream]]
name = "ixn-b"
service = "interaction"
addr = "{b}"
links = 1
{tenants}"#
        ),
    )
    .unwrap();
    p
}

/// Sessions the proxy has open on instance `name` (`/status`), `None` until it is running.
fn sessions(admin: SocketAddr, name: &str) -> Option<u64> {
    let st = status(admin);
    let i = st["instances"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)?
        .clone();
    (i["state"] == "running").then(|| i["sessions"].as_u64())?
}

/// Both instances running behind the proxy (bounded).
fn both_running(admin: SocketAddr) {
    assert!(
        deskmux_tests::wait_until(WAIT, || {
            sessions(admin, "ixn-a").is_some() && sessions(admin, "ixn-b").is_some()
        }),
        "both instances running behind the proxy: {}",
        status(admin)
    );
}

#[test]
fn tenant_routing_sends_each_tenant_to_the_instance_owning_it() {
    let pg = PgServer::start();
    pg.create("parts");
    let (d1, d2, dp) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = Server::start(&write_config_pg_tenant(d1.path(), &pg, "parts", T1), &[]);
    let b = Server::start(&write_config_pg_tenant(d2.path(), &pg, "parts", T2), &[]);

    let pinned = "\n[[tenant]]\nid = 1\ninteraction = \"ixn-a\"\n\n\
                  [[tenant]]\nid = 2\ninteraction = \"ixn-b\"\n";
    let proxy = start_proxy(proxy_config(dp.path(), a.addr, b.addr, pinned));
    both_running(proxy.admin);
    let mut ids = Vec::new();
    for (tenant, token) in [(T1, TOKEN1), (T2, TOKEN2), (T1, TOKEN1), (T2, TOKEN2)] {
        // An agent ready, a media server submitting: the invite reaches the agent, all
        // through the proxy, on the instance that leases the tenant.
        let mut agent = Client::desktop(proxy.addr, tenant, "a", token);
        ok(agent.ixn(ixn::AGENT_LOGIN, |w| {
            w.str(key::PLACE, "p")?;
            Ok(())
        }));
        ok(agent.ixn(ixn::AGENT_READY, |_| Ok(())));
        let mut media = Client::desktop(proxy.addr, tenant, "media", token);
        let id = submit(&mut media, "q");
        let inv = agent
            .event(ixn::INVITE, WAIT)
            .unwrap_or_else(|| panic!("tenant {tenant}: no invite for {id}"));
        assert_eq!(int(&inv, key::INTERACTION), id, "tenant {tenant}");
        ok(agent.ixn(ixn::ACCEPT, with_ixn(id)));
        ok(agent.ixn(ixn::STOP_PROCESSING, with_ixn(id)));
        ok(agent.ixn(ixn::AGENT_LOGOUT, |_| Ok(())));
        ids.push((tenant, id));
    }
    // Each instance draws interaction ids from blocks of its own: the two tenants' ids come
    // from different instances.
    let of = |t: u32| -> Vec<i64> {
        ids.iter()
            .filter(|(tenant, _)| *tenant == t)
            .map(|(_, id)| *id)
            .collect()
    };
    let (t1, t2) = (of(T1), of(T2));
    assert!(
        t1[0].abs_diff(t2[0]) >= 1 << 32,
        "ids from the two instances' blocks: {ids:?}"
    );
    assert!(t1[0].abs_diff(t1[1]) < 1 << 32, "{ids:?}");

    // Without the routing the proxy balances: of two hellos of tenant 2 in a row, round
    // robin puts one on ixn-a, which does not own the tenant and refuses it.
    drop(proxy);
    let dq = tempfile::tempdir().unwrap();
    let unpinned = start_proxy(proxy_config(dq.path(), a.addr, b.addr, ""));
    both_running(unpinned.admin);
    let refused = (0..2)
        .filter(|_| {
            let mut c = Client::connect(unpinned.addr);
            code(&c.hello(T2, "a", TOKEN2)).is_some()
        })
        .count();
    assert_eq!(refused, 1, "one hello of two balanced onto ixn-a");
}
