//! A desktop's session survives its proxy (PROTOCOL.md §4.6): a proxy killed with SIGKILL,
//! and a proxy drained with SIGTERM, during agent work. The desktop resumes through the other
//! proxy with its resume token: no second login, the unicast events sent meanwhile arrive
//! once and in order, and a keyed SUBMIT retried across the gap is applied once.

mod proxy_support;

use std::net::SocketAddr;
use std::time::Duration;

use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{BodyError, BodyWriter, Frame, Service};
use deskmux_tests::client::TestClient;
use proxy_support::*;

const WAIT: Duration = Duration::from_secs(10);

fn useq(f: &Frame) -> i64 {
    f.body().int(key::USEQ).expect("useq")
}

fn int(f: &Frame, k: &'static str) -> i64 {
    assert!(f.error().is_none(), "unexpected error {:?}", f.error());
    f.body().int(k).unwrap_or_else(|e| panic!("key {k}: {e}"))
}

async fn ixn(
    c: &mut TestClient,
    ty: u16,
    body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
) -> Frame {
    c.request(Service::Interaction, ty, body)
        .await
        .expect("answer")
}

async fn ok(
    c: &mut TestClient,
    ty: u16,
    body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
) -> Frame {
    let f = ixn(c, ty, body).await;
    assert!(f.error().is_none(), "type {ty:#x}: {:?}", f.error());
    f
}

async fn change(media: &mut TestClient, id: i64, v: &str) {
    ok(media, ixn::CHANGE_PROPERTIES, |w| {
        w.int(key::INTERACTION, id);
        w.list(key::PROPS, |w| w.str("note", v).map(drop)).map(drop)
    })
    .await;
}

/// Two proxies in front of one core-server, each in its own directory.
struct Two {
    _dir: tempfile::TempDir,
    _core: deskmux_tests::Proc,
    a: Proxy,
    b: Proxy,
}

fn two() -> Two {
    let dir = tempfile::tempdir().unwrap();
    let (core, core_addr) = start_core(dir.path(), "core1", "127.0.0.1:0");
    let mut proxies = Vec::new();
    for name in ["a", "b"] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let cfg = proxy_config(
            &d,
            &[("[\"interaction\", \"ucs\"]", core_addr)],
            1,
            1,
            "drain_grace_ms = 2000\n",
        );
        proxies.push(start_proxy(cfg));
    }
    let b = proxies.pop().unwrap();
    let a = proxies.pop().unwrap();
    Two {
        _dir: dir,
        _core: core,
        a,
        b,
    }
}

/// A logged-in, ready agent "a1" on `addr` that owns an interaction `media` submitted: the
/// desktop, its resume and reconnect tokens, and the interaction. It has seen useq 1.
async fn agent_with_work(
    addr: SocketAddr,
    media: &mut TestClient,
) -> (TestClient, String, String, i64) {
    let mut a = TestClient::connect(addr).await.unwrap();
    let hello = a.hello(T1, "a1", TOKEN1, 0b110).await.unwrap();
    assert!(hello.error().is_none(), "{:?}", hello.error());
    let b = hello.body();
    let resume = b
        .str(key::RESUME)
        .expect("the proxy passes the resume token on")
        .to_string();
    let reconnect = b.str(key::RECONNECT).unwrap().to_string();
    assert_eq!(b.int(key::RESUME_GRACE_MS).unwrap(), 30_000);
    ok(&mut a, ixn::AGENT_LOGIN, |_| Ok(())).await;
    ok(&mut a, ixn::AGENT_READY, |_| Ok(())).await;
    let id = int(
        &ok(media, ixn::SUBMIT, |w| w.str(key::QUEUE, "q").map(drop)).await,
        key::INTERACTION,
    );
    let inv = a.event(ixn::INVITE, WAIT).await.unwrap();
    assert_eq!(useq(&inv), 1);
    ok(&mut a, ixn::ACCEPT, |w| {
        w.int(key::INTERACTION, id);
        Ok(())
    })
    .await;
    (a, resume, reconnect, id)
}

/// After the loss: resume through `addr`, check the replay and the keyed retry, and that the
/// session is the agent's with no new login.
async fn resume_and_check(
    addr: SocketAddr,
    resume: &str,
    reconnect: &str,
    media: &mut TestClient,
    id: i64,
    keyed_first: i64,
) {
    let mut a2 = TestClient::connect(addr).await.unwrap();
    let r = a2
        .hello_resume(T1, "a1", resume, Some(reconnect), 2)
        .await
        .unwrap();
    assert!(r.error().is_none(), "resume refused: {:?}", r.error());
    assert_eq!(
        r.body().int(key::REPLAYED).unwrap(),
        1,
        "one event was missed"
    );
    let f = a2.event(ixn::PROPERTIES_CHANGED, WAIT).await.unwrap();
    assert_eq!(useq(&f), 3, "the missed event, replayed");
    assert_eq!(f.head().session, a2.session);
    // The next event is the next one: nothing twice, nothing lost.
    change(media, id, "after").await;
    assert_eq!(
        useq(&a2.event(ixn::PROPERTIES_CHANGED, WAIT).await.unwrap()),
        4
    );
    // No second login: the agent is still logged in on this session.
    ok(&mut a2, ixn::AGENT_NOT_READY, |_| Ok(())).await;
    // The keyed SUBMIT, retried: the first answer; the next id shows nothing was created.
    let again = int(
        &ok(&mut a2, ixn::SUBMIT, |w| {
            w.str(key::QUEUE, "q2")?;
            w.str(key::IDEM_KEY, "submit-1").map(drop)
        })
        .await,
        key::INTERACTION,
    );
    assert_eq!(again, keyed_first, "answered from memory");
    let next = int(
        &ok(&mut a2, ixn::SUBMIT, |w| w.str(key::QUEUE, "q2").map(drop)).await,
        key::INTERACTION,
    );
    assert_eq!(next, keyed_first + 1, "applied once");
}

/// Work, a keyed SUBMIT answered, an event seen (useq 2), then the agent's proxy goes with
/// `lose` and an event is sent meanwhile (useq 3); the agent resumes through `other`.
async fn survive(lose: impl FnOnce(), via: SocketAddr, other: SocketAddr) {
    let mut media = TestClient::connect_hello(other, T1, "media", TOKEN1)
        .await
        .unwrap();
    let (mut a, resume, reconnect, id) = agent_with_work(via, &mut media).await;
    let first = int(
        &ok(&mut a, ixn::SUBMIT, |w| {
            w.str(key::QUEUE, "q2")?;
            w.str(key::IDEM_KEY, "submit-1").map(drop)
        })
        .await,
        key::INTERACTION,
    );
    change(&mut media, id, "seen").await;
    assert_eq!(
        useq(&a.event(ixn::PROPERTIES_CHANGED, WAIT).await.unwrap()),
        2
    );
    lose();
    assert!(a.closed_within(WAIT).await.unwrap(), "the proxy is gone");
    change(&mut media, id, "missed").await;
    resume_and_check(other, &resume, &reconnect, &mut media, id, first).await;
}

/// SIGKILL to the proxy's worker processes and its supervisor: nothing of the proxy runs
/// on, so nothing is drained or closed in order; the server sees its links drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_mid_work_loses_nothing() {
    let mut t = two();
    let (via, other) = (t.a.addr, t.b.addr);
    let proc_ = &mut t.a.proc;
    survive(
        move || {
            let pid = proc_.pid().expect("proxy running");
            let workers = std::process::Command::new("pgrep")
                .args(["-P", &pid.to_string()])
                .output()
                .expect("pgrep");
            let workers = String::from_utf8_lossy(&workers.stdout).to_string();
            assert!(
                !workers.trim().is_empty(),
                "the proxy runs worker processes"
            );
            for w in workers.split_whitespace() {
                let st = std::process::Command::new("kill")
                    .args(["-KILL", w])
                    .status()
                    .expect("kill");
                assert!(st.success());
            }
            proc_.kill();
        },
        via,
        other,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_drained_mid_work_hands_its_desktops_over() {
    let t = two();
    let (via, other) = (t.b.addr, t.a.addr);
    let proc_ = &t.b.proc;
    survive(move || proc_.signal("TERM").unwrap(), via, other).await;
}
