//! Request timeouts against a scripted fake upstream (a link peer written here): a request the
//! server sits on gets `TIMEOUT` (outcome unknown), and the server's late answer is dropped:
//! it never reaches the desktop twice, nor another desktop whose request reused the slot.

mod proxy_support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use deskmux_codec::msg::{LinkHelloAck, Role, ServerHello, ServiceState, State, control, key};
use deskmux_codec::{ErrorCode, Flags, Frame, FrameDecoder, Kind, Service};
use proxy_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A fake Interaction Server: acks link hellos and session opens, echoes requests at once,
/// except bodies starting with "slow", which it answers after `delay`.
async fn fake_upstream(delay: Duration) -> SocketAddr {
    fake_upstream_in(delay, State::Running).await
}

async fn fake_upstream_in(delay: Duration, state: State) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (mut rd, wr) = s.into_split();
                let wr = std::sync::Arc::new(tokio::sync::Mutex::new(wr));
                let mut buf = BytesMut::new();
                let mut dec = FrameDecoder::default();
                loop {
                    while let Ok(Some(f)) = dec.decode(&mut buf) {
                        let h = *f.head();
                        let mut r = h;
                        r.kind = Kind::Response;
                        let out = match (h.kind, h.service, h.msg_type) {
                            (Kind::Request, Service::Control, control::LINK_HELLO) => {
                                let ack = LinkHelloAck {
                                    max_frame: 1 << 21,
                                    heartbeat_ms: 60_000,
                                    state: ServiceState {
                                        state,
                                        role: Role::Primary,
                                        instance: "fake",
                                    },
                                };
                                Frame::build(r, |w| ack.write(w)).unwrap()
                            }
                            (Kind::Request, Service::Control, control::SESSION_OPEN) => {
                                let sh = ServerHello {
                                    session: h.session,
                                    max_frame: 1 << 21,
                                    heartbeat_ms: 60_000,
                                    max_in_flight: 256,
                                };
                                Frame::build(r, |w| sh.write(w)).unwrap()
                            }
                            (Kind::Request, Service::Interaction, _) => {
                                Frame::with_body(r, f.body_bytes()).unwrap()
                            }
                            _ => continue,
                        };
                        let slow = f
                            .body()
                            .bin(key::DATA)
                            .is_ok_and(|d| d.starts_with(b"slow"));
                        let wr = wr.clone();
                        tokio::spawn(async move {
                            if slow {
                                tokio::time::sleep(delay).await;
                            }
                            let _ = wr.lock().await.write_all(out.as_bytes()).await;
                        });
                    }
                    match rd.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_then_late_answer_never_crosses() {
    let fake = fake_upstream(Duration::from_millis(900)).await;
    let dir = tempfile::tempdir().unwrap();
    // One link, so that the second desktop's requests reuse the timed-out request's slot.
    let cfg = proxy_config(
        dir.path(),
        &[("\"interaction\"", fake)],
        1,
        1,
        "request_timeout_ms = 300\n",
    );
    let proxy = start_proxy(cfg);
    let mut a = deskmux_tests::TestClient::connect(proxy.addr)
        .await
        .unwrap();
    let h = a.hello(T1, "a", "any", 0b010).await.unwrap();
    assert!(h.error().is_none(), "{:?}", h.error());
    let mut b = deskmux_tests::TestClient::connect(proxy.addr)
        .await
        .unwrap();
    assert!(
        b.hello(T1, "b", "any", 0b010)
            .await
            .unwrap()
            .error()
            .is_none()
    );

    let t0 = std::time::Instant::now();
    let r = echo(&mut a, Service::Interaction, b"slow-a").await;
    assert_eq!(code(&r), Some(ErrorCode::TIMEOUT));
    assert!(t0.elapsed() < Duration::from_millis(900));
    assert!(r.head().flags.has(Flags::ERROR));
    // B's requests now reuse the freed slot (same index, new generation) while the late
    // answer to A's request arrives.
    for i in 0..40 {
        let body = format!("b-{i}");
        let r = echo(&mut b, Service::Interaction, body.as_bytes()).await;
        assert!(r.error().is_none());
        let got = r.body().bin(key::DATA).unwrap();
        assert_eq!(got, body.as_bytes(), "B got someone else's answer");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // A never gets a second answer for its timed-out request.
    let extra = a
        .wait_for(Duration::from_millis(300), |f| {
            f.head().kind == Kind::Response
        })
        .await;
    assert!(
        extra.is_err(),
        "late answer leaked: {:?}",
        extra.map(|f| *f.head())
    );
    assert!(b.backlog().iter().all(|f| f.head().kind != Kind::Response));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_unavailable_server_gets_no_new_sessions() {
    let fake = fake_upstream_in(Duration::ZERO, State::Unavailable).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(dir.path(), &[("\"interaction\"", fake)], 1, 1, "");
    let proxy = start_proxy(cfg);
    let mut a = deskmux_tests::TestClient::connect(proxy.addr)
        .await
        .unwrap();
    let h = a.hello(T1, "a", "any", 0b010).await.unwrap();
    assert_eq!(code(&h), Some(ErrorCode::SERVICE_UNAVAILABLE));
}
