//! GMS over the binary protocol (service 3, PROTOCOL.md §8.3): a desktop (or the switch side)
//! books a number with `ACCESS_REQUEST` and matches the call with `ACCESS_MATCH`, directly and
//! through a proxy that routes the `gms` service to core-server like the others; an exhausted
//! pool answers `UNAVAILABLE` (not sent: ask again later, or the other site).

mod core_server_support;
mod proxy_support;

use core_server_support::{Client, T1, TOKEN1, err, ok, write_config};
use deskmux_codec::msg::{DesktopHello, gms, key};
use deskmux_codec::{BodyError, BodyWriter, ErrorCode, RetryClass, Service};

const GROUPS: &str =
    "[gms]\n[[gms.groups]]\ntenant = 1\nname = \"cb\"\nnumbers = [\"+15550001\"]\ncode_len = 4\n";

/// Hello asking for the Interaction Server, UCS and GMS.
fn hello(agent: &str) -> DesktopHello<'_> {
    DesktopHello {
        version: 1,
        agent,
        token: TOKEN1,
        reconnect: None,
        services: Service::Interaction.mask_bit()
            | Service::Ucs.mask_bit()
            | Service::Gms.mask_bit(),
    }
}

fn request(w: &mut BodyWriter<'_>) -> Result<(), BodyError> {
    w.str(key::GROUP, "cb")?;
    w.str(key::CALLER, "+447700900001")?;
    w.list(key::USER_DATA, |l| l.str("reason", "billing").map(drop))?;
    Ok(())
}

#[test]
fn book_and_match_directly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, GROUPS);
    let s = core_server_support::Server::start(&cfg, &[]);
    let mut c = Client::connect(s.addr);
    ok(c.hello_as(T1, &hello("writer")));
    let r = ok(c.call(Service::Gms, gms::ACCESS_REQUEST, request));
    let b = r.body();
    assert_eq!(b.str(key::NUMBER).unwrap(), "+15550001");
    let code = b.str(key::ACCESS_CODE).unwrap().to_string();
    assert_eq!(code.len(), 4);
    assert!(b.int(key::EXPIRES_MS).unwrap() > 0);
    // The one number is booked: the next request is not sent, so it may go to the other site.
    let r = c.call(Service::Gms, gms::ACCESS_REQUEST, request);
    err(&r, ErrorCode::UNAVAILABLE);
    assert_eq!(ErrorCode::UNAVAILABLE.retry_class(), RetryClass::NotSent);
    // The switch matches the call by number and code.
    let m = ok(c.call(Service::Gms, gms::ACCESS_MATCH, |w| {
        w.str(key::NUMBER, "+15550001")?;
        w.str(key::ACCESS_CODE, &code)?;
        Ok(())
    }));
    let mb = m.body();
    assert_eq!(mb.str(key::CALLER).unwrap(), "+447700900001");
    assert_eq!(
        mb.list(key::USER_DATA).unwrap().str("reason").unwrap(),
        "billing"
    );
    let again = c.call(Service::Gms, gms::ACCESS_MATCH, |w| {
        w.str(key::NUMBER, "+15550001")?;
        w.str(key::ACCESS_CODE, &code)?;
        Ok(())
    });
    err(&again, ErrorCode::NOT_FOUND);
    // A session that did not ask for GMS in its hello may not use it.
    let mut plain = Client::desktop(s.addr, T1, "reader", TOKEN1);
    err(
        &plain.call(Service::Gms, gms::ACCESS_REQUEST, request),
        ErrorCode::INVALID_STATE,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn book_and_match_through_a_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let core_cfg = proxy_support::core_config(dir.path(), "core", "127.0.0.1:0");
    proxy_support::append_toml(&core_cfg, GROUPS);
    let mut core =
        deskmux_tests::Proc::spawn("core-server", &["--config", core_cfg.to_str().unwrap()])
            .unwrap();
    let core_addr = core.listening(proxy_support::START).unwrap();
    let cfg = proxy_support::proxy_config(
        dir.path(),
        &[("[\"interaction\", \"ucs\", \"gms\"]", core_addr)],
        1,
        1,
        "",
    );
    let proxy = proxy_support::start_proxy(cfg);
    let mut d = deskmux_tests::TestClient::connect(proxy.addr)
        .await
        .unwrap();
    let h = hello("agent-7");
    let r = d.hello(T1, h.agent, TOKEN1, h.services).await.unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
    let r = d
        .request(Service::Gms, gms::ACCESS_REQUEST, request)
        .await
        .unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
    let code = r.body().str(key::ACCESS_CODE).unwrap().to_string();
    let m = d
        .request(Service::Gms, gms::ACCESS_MATCH, |w| {
            w.str(key::NUMBER, "+15550001")?;
            w.str(key::ACCESS_CODE, &code)?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(m.error().is_none(), "{:?}", m.error());
    assert_eq!(
        m.body()
            .list(key::USER_DATA)
            .unwrap()
            .str("reason")
            .unwrap(),
        "billing"
    );
}
