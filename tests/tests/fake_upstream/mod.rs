//! A scripted fake upstream server for proxy tests: the link side of PROTOCOL.md (§4.2 link
//! hello, §4.3 sessions on a link, §6 heartbeats, §9 subscriptions), run in the test's tokio
//! runtime on `127.0.0.1:0`.
//!
//! Why a fake and not core-server: the attacks on the proxy's isolation need an upstream that
//! misbehaves on cue (holds answers until told, answers late or with a huge frame, wedges a
//! link in the middle of a frame, stamps events with a session or tenant of its choice), and
//! that records exactly what the proxy sent on each link.
//!
//! What it does by itself:
//! - `LINK_HELLO`: checks the secret (else `AUTH_FAILED` and close), answers with the
//!   configured `max_frame`, `heartbeat_ms`, state running, role primary and instance name;
//! - `SESSION_OPEN`: records the session (id, tenant, agent) and answers with a server hello;
//! - `HEARTBEAT` requests: answered at once; answers to its own heartbeats are recorded (a
//!   fence: once the proxy answered, it has processed everything sent before on that link);
//! - other requests go through the test's script ([`FakeUpstream::set_script`]); by default
//!   `ECHO` echoes its body, `SUBSCRIBE` answers one id per (link, tenant, topic) like
//!   core-server, `UNSUBSCRIBE` and anything else get an empty answer.
//!
//! Everything received after the link hello is recorded per link, stamped with a logical
//! clock that also stamps the answers sent, so tests can check "after its answer".
//!
//! The frames it reads and builds (answers, events, bare heads) are in `frames.rs`, re-exported
//! here.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use deskmux_codec::msg::{
    DesktopHello, LinkHello, LinkHelloAck, Role, ServerHello, ServiceState, State as SrvState,
    control, ixn,
};
use deskmux_codec::{ErrorCode, Frame, FrameDecoder, Head, Kind, Service, error_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};

mod frames;
pub use frames::*;

/// How the fake presents itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// The link secret it accepts (the proxy config's `link_secret`).
    pub secret: String,
    /// `max_frame` announced in the link hello ack and server hellos.
    pub max_frame: u32,
    /// `heartbeat_ms` announced; large by default so that link liveness never depends on the
    /// test's pace.
    pub heartbeat_ms: u32,
    /// Instance name announced.
    pub instance: String,
    /// `SO_RCVBUF` and `TCP_MAXSEG` ([`set_mss`]) of every link (`None`: the defaults): small,
    /// what the fake does not read ([`FakeUpstream::pause_reading`]) stays in the proxy.
    pub rcvbuf: Option<u32>,
    pub mss: Option<i32>,
}

impl Options {
    /// Defaults: 2 MiB frames, 60 s heartbeats.
    pub fn new(secret: &str, instance: &str) -> Options {
        Options {
            secret: secret.to_string(),
            max_frame: 2 * 1024 * 1024,
            heartbeat_ms: 60_000,
            instance: instance.to_string(),
            rcvbuf: None,
            mss: None,
        }
    }
}

/// What the script decides for one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The default answer (see the module docs).
    Default,
    /// Keep it unanswered until [`FakeUpstream::release`] / [`FakeUpstream::release_with`].
    Hold,
    /// Send these bytes (whole frames, or anything) instead.
    Send(Vec<Bytes>),
    /// Never answer.
    Ignore,
}

type Script = Arc<dyn Fn(&Frame) -> Reply + Send + Sync>;

/// A frame received on a link, with its logical time.
#[derive(Debug, Clone)]
pub struct Rec {
    /// Logical clock when it was read.
    pub at: u64,
    /// The frame as received.
    pub frame: Frame,
}

/// A session opened on a link (`SESSION_OPEN` answered).
#[derive(Debug, Clone)]
pub struct SessionRec {
    /// Upstream session id (the proxy's choice).
    pub session: u64,
    /// Tenant from the head.
    pub tenant: u32,
    /// Agent from the desktop hello in the body.
    pub agent: String,
    /// Logical time of the answer.
    pub at: u64,
}

/// A successful `SUBSCRIBE` answer the fake sent.
#[derive(Debug, Clone)]
pub struct SubRec {
    /// Tenant of the request.
    pub tenant: u32,
    /// Topic of the request.
    pub topic: String,
    /// Subscription id answered.
    pub id: u64,
    /// Logical time of the answer.
    pub at: u64,
}

/// An `UNSUBSCRIBE` request received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsub {
    /// Link index.
    pub link: usize,
    /// Tenant from the head.
    pub tenant: u32,
    /// Session from the head: 0 when the proxy drops the link's subscription (PROTOCOL.md
    /// §4.3).
    pub session: u64,
    /// Topic from the body.
    pub topic: String,
    /// Logical time it was read.
    pub at: u64,
}

/// One proxy link, as the fake saw it.
#[derive(Debug)]
pub struct LinkRec {
    /// Index in accept order.
    pub index: usize,
    /// The proxy's `LINK_HELLO` (the whole frame), once received.
    pub link_hello: Option<Frame>,
    /// Link hello accepted and the connection still open.
    pub up: bool,
    /// The proxy closed the connection (or it broke).
    pub closed: bool,
    /// The fake stopped answering anything on it ([`FakeUpstream::wedge`]).
    pub wedged: bool,
    /// Every frame received after the link hello, in order.
    pub received: Vec<Rec>,
    /// Requests held by the script, in arrival order.
    pub held: Vec<Frame>,
    /// Sessions opened.
    pub sessions: Vec<SessionRec>,
    /// Successful `SUBSCRIBE` answers sent.
    pub subscribed: Vec<SubRec>,
    /// Requests (non-control) received and not yet answered (answer about to be written), per
    /// session.
    pub outstanding: HashMap<u64, usize>,
    /// The most `outstanding` ever reached, per session.
    pub max_outstanding: HashMap<u64, usize>,
    tx: mpsc::UnboundedSender<Out>,
    /// Whether the fake reads this link's socket ([`FakeUpstream::pause_reading`]).
    reading: watch::Sender<bool>,
}

/// Everything the fake knows; read it with [`FakeUpstream::with`] / [`FakeUpstream::wait_for`].
pub struct State {
    /// Links in accept order.
    pub links: Vec<LinkRec>,
    /// Connections accepted (including refused ones that were closed at once).
    pub accepted: usize,
    clock: u64,
    next_sub: u64,
    subs: HashMap<(usize, u32, String), u64>,
    refuse: bool,
    script: Option<Script>,
    opts: Options,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("links", &self.links.len())
            .field("clock", &self.clock)
            .finish()
    }
}

enum Out {
    /// Bytes to write; `answers`: the session whose request this answers (outstanding count).
    Bytes { b: Bytes, answers: Option<u64> },
    /// Close the connection after what is queued.
    Close,
}

impl State {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The logical clock now (later events get larger stamps).
    pub fn now(&self) -> u64 {
        self.clock
    }

    /// Indexes of the links that are up.
    pub fn up_links(&self) -> Vec<usize> {
        self.links
            .iter()
            .filter(|l| l.up)
            .map(|l| l.index)
            .collect()
    }

    /// The link and session record of the (latest) session opened for `agent`.
    pub fn session_of(&self, agent: &str) -> Option<(usize, SessionRec)> {
        self.links
            .iter()
            .flat_map(|l| l.sessions.iter().map(move |s| (l.index, s)))
            .filter(|(_, s)| s.agent == agent)
            .max_by_key(|(_, s)| s.at)
            .map(|(l, s)| (l, s.clone()))
    }

    /// Whether a `SESSION_CLOSE` for `session` arrived on any link.
    pub fn session_closed(&self, session: u64) -> bool {
        self.all_received().any(|(_, r)| {
            let h = r.frame.head();
            h.kind == Kind::Control && h.msg_type == control::SESSION_CLOSE && h.session == session
        })
    }

    /// Every frame received, with its link index.
    pub fn all_received(&self) -> impl Iterator<Item = (usize, &Rec)> + '_ {
        self.links
            .iter()
            .flat_map(|l| l.received.iter().map(move |r| (l.index, r)))
    }

    /// Requests of `service`/`msg_type` received, with their link index.
    pub fn requests(&self, service: Service, msg_type: u16) -> Vec<(usize, Rec)> {
        self.all_received()
            .filter(|(_, r)| is_request(&r.frame, service, msg_type))
            .map(|(l, r)| (l, r.clone()))
            .collect()
    }

    /// Held requests matching `pred`, over all links.
    pub fn held(&self, pred: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        self.links
            .iter()
            .flat_map(|l| l.held.iter())
            .filter(|f| pred(f))
            .cloned()
            .collect()
    }

    /// `UNSUBSCRIBE` requests received, in order per link.
    pub fn unsubscribes(&self) -> Vec<Unsub> {
        self.requests(Service::Interaction, ixn::UNSUBSCRIBE)
            .into_iter()
            .map(|(link, r)| Unsub {
                link,
                tenant: r.frame.head().tenant,
                session: r.frame.head().session,
                topic: topic_of(&r.frame).unwrap_or_default(),
                at: r.at,
            })
            .collect()
    }

    /// Successful `SUBSCRIBE` answers sent: (link, record).
    pub fn subscribed(&self) -> Vec<(usize, SubRec)> {
        self.links
            .iter()
            .flat_map(|l| l.subscribed.iter().map(move |s| (l.index, s.clone())))
            .collect()
    }

    /// Most requests of upstream session `session` ever outstanding at once on any link.
    pub fn max_outstanding(&self, session: u64) -> usize {
        self.links
            .iter()
            .filter_map(|l| l.max_outstanding.get(&session).copied())
            .max()
            .unwrap_or(0)
    }

    /// Requests (non-control) of upstream session `session` received, on any link.
    pub fn requests_of(&self, session: u64) -> usize {
        self.all_received()
            .filter(|(_, r)| {
                let h = r.frame.head();
                h.kind == Kind::Request && h.service != Service::Control && h.session == session
            })
            .count()
    }

    /// Requests of upstream session `session` received and not yet answered, on all links.
    pub fn outstanding(&self, session: u64) -> usize {
        self.links
            .iter()
            .filter_map(|l| l.outstanding.get(&session).copied())
            .sum()
    }

    /// The default answer to a request (see the module docs); records subscriptions.
    fn default_answer(&mut self, link: usize, f: &Frame) -> Bytes {
        let h = *f.head();
        match (h.service, h.msg_type) {
            (Service::Interaction, ixn::SUBSCRIBE) => {
                let Some(topic) = topic_of(f) else {
                    return error_response(&h, ErrorCode::MALFORMED, "no topic").freeze();
                };
                let k = (link, h.tenant, topic);
                let id = match self.subs.get(&k) {
                    Some(id) => *id,
                    None => {
                        self.next_sub += 1;
                        let id = self.next_sub;
                        self.subs.insert(k, id);
                        id
                    }
                };
                subscribe_answer(f, id, 0)
            }
            (Service::Interaction, ixn::UNSUBSCRIBE) => {
                if let Some(topic) = topic_of(f) {
                    self.subs.remove(&(link, h.tenant, topic));
                }
                response(f, |_| Ok(()))
            }
            (_, 0x0001) => response_body(f, f.body_bytes()),
            _ => response(f, |_| Ok(())),
        }
    }

    /// Queue `answers` to request `req` on `link`; the last one counts as its answer.
    fn answer(&mut self, link: usize, req: &Frame, answers: Vec<Bytes>) {
        let at = self.tick();
        let n = answers.len();
        let l = &mut self.links[link];
        for (i, b) in answers.into_iter().enumerate() {
            if let Some(rec) = sub_answer_rec(req, &b, at) {
                l.subscribed.push(rec);
            }
            let answers = (i + 1 == n).then_some(req.head().session);
            let _ = l.tx.send(Out::Bytes { b, answers });
        }
    }

    fn on_frame(&mut self, link: usize, f: Frame) {
        let at = self.tick();
        let h = *f.head();
        if self.links[link].link_hello.is_none() {
            self.on_link_hello(link, f);
            return;
        }
        self.links[link].received.push(Rec {
            at,
            frame: f.clone(),
        });
        if self.links[link].wedged {
            return;
        }
        match (h.kind, h.service, h.msg_type) {
            (Kind::Request, Service::Control, control::SESSION_OPEN) => {
                let agent = DesktopHello::read(f.body())
                    .map(|d| d.agent.to_string())
                    .unwrap_or_default();
                let sh = ServerHello {
                    session: h.session,
                    max_frame: self.opts.max_frame,
                    heartbeat_ms: self.opts.heartbeat_ms,
                    max_in_flight: 256,
                };
                let b = response(&f, |w| sh.write(w));
                let at = self.tick();
                let l = &mut self.links[link];
                l.sessions.push(SessionRec {
                    session: h.session,
                    tenant: h.tenant,
                    agent,
                    at,
                });
                let _ = l.tx.send(Out::Bytes { b, answers: None });
            }
            (Kind::Request, Service::Control, control::HEARTBEAT) => {
                let b = response(&f, |_| Ok(()));
                let _ = self.links[link].tx.send(Out::Bytes { b, answers: None });
            }
            (Kind::Request, Service::Control, _) => {
                let b = error_response(&h, ErrorCode::UNKNOWN_MESSAGE, "fake: control").freeze();
                let _ = self.links[link].tx.send(Out::Bytes { b, answers: None });
            }
            (Kind::Request, _, _) => {
                let l = &mut self.links[link];
                let n = l.outstanding.entry(h.session).or_insert(0);
                *n += 1;
                let n = *n;
                let m = l.max_outstanding.entry(h.session).or_insert(0);
                *m = (*m).max(n);
                let reply = match &self.script {
                    Some(s) => s(&f),
                    None => Reply::Default,
                };
                match reply {
                    Reply::Default => {
                        let b = self.default_answer(link, &f);
                        self.answer(link, &f, vec![b]);
                    }
                    Reply::Hold => self.links[link].held.push(f),
                    Reply::Send(v) => self.answer(link, &f, v),
                    Reply::Ignore => {}
                }
            }
            // Responses (to the fake's heartbeats), SESSION_CLOSE, errors: recorded above.
            _ => {}
        }
    }

    fn on_link_hello(&mut self, link: usize, f: Frame) {
        let h = *f.head();
        let ok = h.kind == Kind::Request
            && h.service == Service::Control
            && h.msg_type == control::LINK_HELLO
            && LinkHello::read(f.body()).is_ok_and(|lh| lh.secret == self.opts.secret.as_bytes());
        let l = &mut self.links[link];
        l.link_hello = Some(f.clone());
        if !ok {
            let e = error_response(&h, ErrorCode::AUTH_FAILED, "fake: bad link hello").freeze();
            let _ = l.tx.send(Out::Bytes {
                b: e,
                answers: None,
            });
            let _ = l.tx.send(Out::Close);
            return;
        }
        let ack = LinkHelloAck {
            max_frame: self.opts.max_frame,
            heartbeat_ms: self.opts.heartbeat_ms,
            state: ServiceState {
                state: SrvState::Running,
                role: Role::Primary,
                instance: &self.opts.instance,
            },
        };
        let b = response(&f, |w| ack.write(w));
        l.up = true;
        let _ = l.tx.send(Out::Bytes { b, answers: None });
    }
}

/// The fake server. Dropping it stops accepting (links already open live on until the test's
/// runtime ends).
pub struct FakeUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    st: Arc<Mutex<State>>,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeUpstream")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn lock(st: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock (a test assertion inside `with`) must not hide the
    // original failure behind a poisoned-lock panic.
    st.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeUpstream {
    /// Bind `127.0.0.1:0` and start accepting links.
    pub async fn start(opts: Options) -> FakeUpstream {
        let listener = if opts.rcvbuf.is_none() && opts.mss.is_none() {
            TcpListener::bind("127.0.0.1:0").await.expect("fake bind")
        } else {
            // Before listen: the links inherit them (the SYN-ACK advertises MSS and window).
            let sock = tokio::net::TcpSocket::new_v4().expect("fake socket");
            if let Some(n) = opts.rcvbuf {
                sock.set_recv_buffer_size(n).expect("fake SO_RCVBUF");
            }
            if let Some(mss) = opts.mss {
                set_mss(&sock, mss);
            }
            sock.bind("127.0.0.1:0".parse().expect("addr"))
                .expect("fake bind");
            sock.listen(128).expect("fake listen")
        };
        let addr = listener.local_addr().expect("fake addr");
        let st = Arc::new(Mutex::new(State {
            links: Vec::new(),
            accepted: 0,
            clock: 0,
            next_sub: 1000,
            subs: HashMap::new(),
            refuse: false,
            script: None,
            opts,
        }));
        let accept = tokio::spawn(accept_loop(listener, st.clone()));
        FakeUpstream { addr, st, accept }
    }

    /// Decide what happens to each request (not to control frames, which the fake handles).
    pub fn set_script(&self, f: impl Fn(&Frame) -> Reply + Send + Sync + 'static) {
        lock(&self.st).script = Some(Arc::new(f));
    }

    /// Look at the state.
    pub fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&lock(&self.st))
    }

    /// Poll `f` (every 10 ms) until it gives a value, at most `timeout`; `None` on timeout.
    pub async fn try_wait_for<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&State) -> Option<T>,
    ) -> Option<T> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = f(&lock(&self.st)) {
                return Some(v);
            }
            if tokio::time::Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// As [`FakeUpstream::try_wait_for`], panicking with `what` on timeout.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        f: impl FnMut(&State) -> Option<T>,
    ) -> T {
        match self.try_wait_for(timeout, f).await {
            Some(v) => v,
            None => panic!("fake upstream: {what} (not within {timeout:?})"),
        }
    }

    /// Wait until at least `n` held requests match `pred`; returns them.
    pub async fn wait_held(
        &self,
        n: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Frame) -> bool,
    ) -> Vec<Frame> {
        self.wait_for(timeout, what, |s| {
            let v = s.held(&pred);
            (v.len() >= n).then_some(v)
        })
        .await
    }

    /// Answer the held requests matching `pred` with their default answers; how many.
    pub fn release(&self, pred: impl Fn(&Frame) -> bool) -> usize {
        let mut st = lock(&self.st);
        let mut n = 0;
        for link in 0..st.links.len() {
            let (take, keep): (Vec<Frame>, Vec<Frame>) = std::mem::take(&mut st.links[link].held)
                .into_iter()
                .partition(|f| pred(f));
            st.links[link].held = keep;
            for f in take {
                let b = st.default_answer(link, &f);
                st.answer(link, &f, vec![b]);
                n += 1;
            }
        }
        n
    }

    /// Answer the held requests matching `pred` with what `answer` builds; how many.
    pub fn release_with(
        &self,
        pred: impl Fn(&Frame) -> bool,
        answer: impl Fn(&Frame) -> Vec<Bytes>,
    ) -> usize {
        let mut st = lock(&self.st);
        let mut n = 0;
        for link in 0..st.links.len() {
            let (take, keep): (Vec<Frame>, Vec<Frame>) = std::mem::take(&mut st.links[link].held)
                .into_iter()
                .partition(|f| pred(f));
            st.links[link].held = keep;
            for f in take {
                let v = answer(&f);
                st.answer(link, &f, v);
                n += 1;
            }
        }
        n
    }

    /// Send arbitrary bytes on a link (frames, or a part of one).
    pub fn send(&self, link: usize, b: Bytes) {
        let mut st = lock(&self.st);
        st.tick();
        let _ = st.links[link].tx.send(Out::Bytes { b, answers: None });
    }

    /// Send `b` on a link, then nothing ever again on it (heartbeats included): e.g. the head
    /// of a frame that never completes.
    pub fn wedge(&self, link: usize, b: Bytes) {
        let mut st = lock(&self.st);
        st.tick();
        let l = &mut st.links[link];
        let _ = l.tx.send(Out::Bytes { b, answers: None });
        l.wedged = true;
    }

    /// Stop reading `link`'s socket (a server that does not drain its link) until
    /// [`FakeUpstream::resume_reading`]. Frames already read are still handled and answered.
    pub fn pause_reading(&self, link: usize) {
        lock(&self.st).links[link].reading.send_replace(false);
    }

    /// Read `link`'s socket again after [`FakeUpstream::pause_reading`].
    pub fn resume_reading(&self, link: usize) {
        lock(&self.st).links[link].reading.send_replace(true);
    }

    /// From now on, close every new connection at once (the instance cannot be reached).
    pub fn refuse_new_links(&self) {
        lock(&self.st).refuse = true;
    }

    /// A fence: send a `HEARTBEAT` request on `link` and wait for the proxy's answer. Once
    /// answered, the proxy has processed every frame sent before it on that link.
    pub async fn ping(&self, link: usize, timeout: Duration) {
        let corr = {
            let mut st = lock(&self.st);
            let corr = 0xFE00_0000_0000_0000 | st.tick();
            let mut h = Head::new(Kind::Request, Service::Control, control::HEARTBEAT);
            h.correlation = corr;
            let _ = st.links[link].tx.send(Out::Bytes {
                b: Bytes::copy_from_slice(&h.to_bytes()),
                answers: None,
            });
            corr
        };
        self.wait_for(
            timeout,
            &format!("the proxy answers a HEARTBEAT on link {link}"),
            |s| {
                s.links[link]
                    .received
                    .iter()
                    .any(|r| {
                        let h = r.frame.head();
                        h.kind == Kind::Response
                            && h.msg_type == control::HEARTBEAT
                            && h.correlation == corr
                    })
                    .then_some(())
            },
        )
        .await;
    }

    /// Connections accepted so far (a proxy that reconnects a link makes this grow).
    pub fn accepted(&self) -> usize {
        lock(&self.st).accepted
    }
}

/// `TCP_MAXSEG` on a socket before connect or listen: the MSS advertised in the SYN. Linux
/// sizes the peer's send buffer from it (`tcp_sndbuf_expand`: 2 x 10 segments' worth); on
/// loopback, with the 64 KiB MSS, the peer's kernel takes megabytes off its hands.
#[allow(unsafe_code)] // the test crate has no safe setter for TCP_MAXSEG (socket2 is not a dependency)
pub fn set_mss(sock: &tokio::net::TcpSocket, mss: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket fd, and a pointer to a c_int with its size, as setsockopt(2)
    // reads it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw const mss).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let e = std::io::Error::last_os_error();
    assert_eq!(rc, 0, "setsockopt TCP_MAXSEG: {e}");
}

async fn accept_loop(listener: TcpListener, st: Arc<Mutex<State>>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (reading, mut read_on) = watch::channel(true);
        let index = {
            let mut s = lock(&st);
            s.accepted += 1;
            if s.refuse {
                drop(sock);
                continue;
            }
            let index = s.links.len();
            s.links.push(LinkRec {
                index,
                link_hello: None,
                up: false,
                closed: false,
                wedged: false,
                received: Vec::new(),
                held: Vec::new(),
                sessions: Vec::new(),
                subscribed: Vec::new(),
                outstanding: HashMap::new(),
                max_outstanding: HashMap::new(),
                tx,
                reading,
            });
            index
        };
        let _ = sock.set_nodelay(true);
        let (mut rd, wr) = sock.into_split();
        tokio::spawn(writer(wr, rx, st.clone(), index));
        let st = st.clone();
        tokio::spawn(async move {
            // Large enough for anything a proxy may forward.
            let mut dec = FrameDecoder::new(64 * 1024 * 1024);
            let mut buf = BytesMut::with_capacity(64 * 1024);
            'conn: loop {
                loop {
                    match dec.decode(&mut buf) {
                        Ok(Some(f)) => lock(&st).on_frame(index, f),
                        Ok(None) => break,
                        Err(_) => break 'conn,
                    }
                }
                // Paused: no read at all until resumed (the sender lives as long as the state).
                if read_on.wait_for(|on| *on).await.is_err() {
                    break;
                }
                tokio::select! {
                    biased;
                    // Paused while waiting for bytes: the read is dropped (read_buf is
                    // cancel-safe) and the loop waits above.
                    _ = read_on.wait_for(|on| !*on) => {}
                    r = rd.read_buf(&mut buf) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    },
                }
            }
            let mut s = lock(&st);
            s.links[index].up = false;
            s.links[index].closed = true;
        });
    }
}

async fn writer(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Out>,
    st: Arc<Mutex<State>>,
    index: usize,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Bytes { b, answers } => {
                // Counted as answered just before the write: the proxy cannot have the answer
                // (and send the next request) earlier, so `max_outstanding` never over-counts.
                if let Some(session) = answers {
                    let mut s = lock(&st);
                    if let Some(n) = s.links[index].outstanding.get_mut(&session) {
                        *n = n.saturating_sub(1);
                    }
                }
                if wr.write_all(&b).await.is_err() {
                    return;
                }
            }
            Out::Close => {
                let _ = wr.shutdown().await;
                return;
            }
        }
    }
}
