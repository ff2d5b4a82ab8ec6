//! Request timeouts against a scripted fake upstream (a link peer written here): a request the
//! server sits on gets `TIMEOUT` (outcome unknown), and the server's late answer is dropped:
//! it never reaches the desktop twice, nor another desktop whose request reused the slot.
//!
//! The fake server holds the answers the test tells it to and writes them when the test
//! releases them, so "late" is an order of events, not a delay.

mod proxy_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use deskmux_codec::msg::{LinkHelloAck, Role, ServerHello, ServiceState, State, control, key};
use deskmux_codec::{ErrorCode, Flags, Frame, FrameDecoder, Kind, Service};
use proxy_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;

/// The proxy's request timeout in the first test. A request the fake server holds is answered
/// `TIMEOUT` after it; one the test releases must be released within it (the test does so at
/// once: a few local steps).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(2000);

type Writer = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

/// Answers the fake server holds back (requests whose payload starts with "hold"), until the
/// test releases them.
#[derive(Default)]
struct Held {
    answers: Mutex<Vec<(Vec<u8>, Frame, Writer)>>,
}

impl Held {
    /// Whether the answer to the request with payload `data` is held.
    fn holds(&self, data: &[u8]) -> bool {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .any(|(d, _, _)| d.as_slice() == data)
    }

    /// Wait (bounded) until the request with payload `data` has reached the server.
    async fn wait_holds(&self, data: &[u8]) {
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while !self.holds(data) {
            assert!(
                std::time::Instant::now() < end,
                "request {:?} never reached the server",
                String::from_utf8_lossy(data)
            );
            // Back-off between two looks.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Write the held answer to the request with payload `data` (returns once written).
    async fn release(&self, data: &[u8]) {
        let (out, wr) = {
            let mut held = self.answers.lock().unwrap();
            let i = held
                .iter()
                .position(|(d, _, _)| d.as_slice() == data)
                .expect("no such answer held");
            let (_, out, wr) = held.remove(i);
            (out, wr)
        };
        wr.lock()
            .await
            .write_all(out.as_bytes())
            .await
            .expect("write the held answer");
    }
}

/// A fake Interaction Server: acks link hellos and session opens, echoes requests at once,
/// except those whose payload starts with "hold": their answers wait in `held`.
async fn fake_upstream(held: Arc<Held>) -> SocketAddr {
    fake_upstream_in(State::Running, held).await
}

async fn fake_upstream_in(state: State, held: Arc<Held>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let held = held.clone();
            tokio::spawn(async move {
                let (mut rd, wr) = s.into_split();
                let wr: Writer = Arc::new(tokio::sync::Mutex::new(wr));
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
                        let data = f.body().bin(key::DATA).map(<[u8]>::to_vec);
                        if let Ok(d) = data
                            && d.starts_with(b"hold")
                        {
                            held.answers.lock().unwrap().push((d, out, wr.clone()));
                            continue;
                        }
                        let _ = wr.lock().await.write_all(out.as_bytes()).await;
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

/// Send an echo of `data` without waiting for its answer; its correlation id.
async fn send_echo(c: &mut deskmux_tests::TestClient, data: &[u8]) -> u64 {
    c.send(Service::Interaction, deskmux_codec::msg::ixn::ECHO, |w| {
        w.bin(key::DATA, data)?;
        Ok(())
    })
    .await
    .expect("send echo")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_then_late_answer_never_crosses() {
    let held = Arc::new(Held::default());
    let fake = fake_upstream(held.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    // One link, so that the second desktop's requests reuse the timed-out request's slot.
    let cfg = proxy_config(
        dir.path(),
        &[("\"interaction\"", fake)],
        1,
        1,
        &format!("request_timeout_ms = {}\n", REQUEST_TIMEOUT.as_millis()),
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

    // The server sits on A's request (it holds the answer): the proxy answers TIMEOUT.
    let corr = send_echo(&mut a, b"hold-a").await;
    let r = a
        .response(corr, REQUEST_TIMEOUT + Duration::from_secs(20))
        .await
        .expect("an answer to A's request");
    assert_eq!(code(&r), Some(ErrorCode::TIMEOUT), "{:?}", r.error());
    assert!(r.head().flags.has(Flags::ERROR));
    held.wait_holds(b"hold-a").await;
    // B's request reuses the freed slot (same index, new generation) and the server holds it
    // too; the late answer to A's request arrives while B's request holds the slot.
    let corr_b = send_echo(&mut b, b"hold-b").await;
    held.wait_holds(b"hold-b").await;
    held.release(b"hold-a").await;
    held.release(b"hold-b").await;
    let r = b.response(corr_b, Duration::from_secs(20)).await.unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
    assert_eq!(
        r.body().bin(key::DATA).unwrap(),
        b"hold-b",
        "B got someone else's answer"
    );
    // More of B's requests through the slot, answered at once.
    for i in 0..40 {
        let body = format!("b-{i}");
        let r = echo(&mut b, Service::Interaction, body.as_bytes()).await;
        assert!(r.error().is_none());
        let got = r.body().bin(key::DATA).unwrap();
        assert_eq!(got, body.as_bytes(), "B got someone else's answer");
    }
    // A never gets a second answer for its timed-out request: the proxy read the late answer
    // from the link before the answer to A's next request, so anything it sent A for it
    // would come first.
    let r = echo(&mut a, Service::Interaction, b"a-after").await;
    assert!(r.error().is_none(), "{:?}", r.error());
    assert_eq!(r.body().bin(key::DATA).unwrap(), b"a-after");
    assert!(
        a.backlog().iter().all(|f| f.head().kind != Kind::Response),
        "late answer leaked: {:?}",
        a.backlog().iter().map(|f| *f.head()).collect::<Vec<_>>()
    );
    assert!(b.backlog().iter().all(|f| f.head().kind != Kind::Response));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_unavailable_server_gets_no_new_sessions() {
    let fake = fake_upstream_in(State::Unavailable, Arc::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(dir.path(), &[("\"interaction\"", fake)], 1, 1, "");
    let proxy = start_proxy(cfg);
    let mut a = deskmux_tests::TestClient::connect(proxy.addr)
        .await
        .unwrap();
    let h = a.hello(T1, "a", "any", 0b010).await.unwrap();
    assert_eq!(code(&h), Some(ErrorCode::SERVICE_UNAVAILABLE));
}
