//! A simulated desktop: what it sent, what it was told, and the checks on every frame it
//! receives (the client's view of the proxy's promises).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use deskmux_codec::msg::{DesktopHello, ServerHello, control, ixn, key, ucs};
use deskmux_codec::{ErrorCode, Flags, Frame, FrameDecoder, Head, Kind, Service, empty_frame};
use deskmux_proxy::core::DesktopId;

/// What a request was, for checking its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    Hello,
    /// An echo whose body starts with this nonce (desktop number and correlation id), so
    /// the servers can say whether it reached them.
    Echo(u64),
    /// A request that can never reach a server (another tenant stamped on it).
    Spoofed,
    Subscribe(String),
    Unsubscribe(String),
    Heartbeat,
}

/// How the desktop behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Habit {
    /// Reads everything it is sent.
    Reads,
    /// Never reads (until the end of the run).
    NeverReads,
}

/// A simulated desktop.
#[derive(Debug)]
pub struct Desktop {
    /// Index in the world (for messages).
    pub n: usize,
    pub id: DesktopId,
    pub tenant: u32,
    pub habit: Habit,
    /// Session id from the server hello.
    pub sid: Option<u64>,
    /// Bytes not yet taken by the proxy (its socket's send side).
    pub to_send: BytesMut,
    /// Bytes the proxy wrote that it has not read yet (its socket's receive side).
    pub kernel: BytesMut,
    /// Capacity of `kernel`: writes past it would block.
    pub kernel_cap: usize,
    rx: BytesMut,
    dec: FrameDecoder,
    /// Requests sent and not answered, by correlation id.
    pub outstanding: BTreeMap<u64, Asked>,
    next_corr: u64,
    /// Confirmed subscriptions: topic → id.
    pub subs: BTreeMap<String, u64>,
    /// Shut its sending side.
    pub eof: bool,
    /// It broke its framing or was told it is being closed (answers may then be lost).
    pub doomed: Option<String>,
    /// The proxy closed it.
    pub closed: bool,
    /// Frames received.
    pub frames: u64,
    /// Answers received.
    pub answers: u64,
    /// Unicast events received (nonce list, checked by the world).
    pub unicasts: Vec<(u64, Head)>,
    /// A GO_AWAY arrived (drain).
    pub going_away: bool,
    /// What it sent and got, latest last (for failure reports).
    pub log: std::collections::VecDeque<String>,
    /// Echoes answered with an error of class "not sent", by nonce (checked by the world).
    pub not_sent: Vec<(u64, deskmux_codec::ErrorCode)>,
    /// It did not read for a while (a never-reader, until the quiet phase): the proxy may
    /// have closed it as a slow consumer, or at a deadline, and dropped the error frame that
    /// says so after the close-flush limit, since it would not read it.
    pub stopped_reading: bool,
}

impl Desktop {
    pub fn new(n: usize, id: DesktopId, tenant: u32, habit: Habit, kernel_cap: usize) -> Desktop {
        Desktop {
            n,
            id,
            tenant,
            habit,
            sid: None,
            to_send: BytesMut::new(),
            kernel: BytesMut::new(),
            kernel_cap,
            rx: BytesMut::new(),
            dec: FrameDecoder::new(64 * 1024 * 1024),
            outstanding: BTreeMap::new(),
            next_corr: 1,
            subs: BTreeMap::new(),
            eof: false,
            doomed: None,
            closed: false,
            frames: 0,
            answers: 0,
            unicasts: Vec::new(),
            going_away: false,
            log: std::collections::VecDeque::new(),
            not_sent: Vec::new(),
            stopped_reading: habit == Habit::NeverReads,
        }
    }

    /// Note something for the failure report.
    pub fn note(&mut self, what: String) {
        if self.log.len() >= 40 {
            self.log.pop_front();
        }
        self.log.push_back(what);
    }

    fn corr(&mut self) -> u64 {
        self.next_corr += 1;
        self.next_corr
    }

    /// Queue a request (it is "accepted" once the proxy reads it).
    pub fn request(
        &mut self,
        service: Service,
        t: u16,
        asked: Asked,
        body: impl FnOnce(&mut deskmux_codec::BodyWriter<'_>),
    ) {
        let corr = self.corr();
        let mut h = Head::new(Kind::Request, service, t);
        h.tenant = self.tenant;
        h.correlation = corr;
        let f = Frame::build(h, |w| {
            body(w);
            Ok(())
        })
        .expect("small frame");
        self.to_send.extend_from_slice(f.as_bytes());
        self.note(format!("sent {corr} {asked:?}"));
        self.outstanding.insert(corr, asked);
    }

    pub fn hello(&mut self, token: &str, services: u64) {
        let agent = format!("agent-{}", self.n);
        let tenant = self.tenant;
        let corr = self.corr();
        let mut h = Head::new(Kind::Request, Service::Control, control::HELLO);
        h.tenant = tenant;
        h.correlation = corr;
        let f = Frame::build(h, |w| {
            DesktopHello {
                version: 1,
                agent: &agent,
                token,
                reconnect: None,
                services,
            }
            .write(w)
        })
        .expect("hello");
        self.to_send.extend_from_slice(f.as_bytes());
        self.outstanding.insert(corr, Asked::Hello);
    }

    pub fn echo(&mut self, service: Service, size: usize) {
        let t = if service == Service::Ucs {
            ucs::ECHO
        } else {
            ixn::ECHO
        };
        let nonce = ((self.n as u64) << 32) | (self.next_corr + 1);
        let mut data = nonce.to_be_bytes().to_vec();
        data.resize(size.max(8), 7);
        self.request(service, t, Asked::Echo(nonce), |w| {
            let _ = w.bin(key::DATA, &data);
        });
    }

    pub fn subscribe(&mut self, topic: &str) {
        let t = topic.to_string();
        self.request(
            Service::Interaction,
            ixn::SUBSCRIBE,
            Asked::Subscribe(t),
            |w| {
                let _ = w.str(key::TOPIC, topic);
            },
        );
    }

    pub fn unsubscribe(&mut self, topic: &str) {
        let t = topic.to_string();
        self.request(
            Service::Interaction,
            ixn::UNSUBSCRIBE,
            Asked::Unsubscribe(t),
            |w| {
                let _ = w.str(key::TOPIC, topic);
            },
        );
    }

    pub fn heartbeat(&mut self) {
        let corr = self.corr();
        let mut h = Head::new(Kind::Request, Service::Control, control::HEARTBEAT);
        h.correlation = corr;
        self.to_send.extend_from_slice(empty_frame(h).as_bytes());
        self.outstanding.insert(corr, Asked::Heartbeat);
    }

    /// A request stamped with another tenant: must be refused (TENANT_MISMATCH), never
    /// forwarded.
    pub fn spoof_tenant(&mut self, other: u32) {
        let corr = self.corr();
        let mut h = Head::new(Kind::Request, Service::Interaction, ixn::ECHO);
        h.tenant = other;
        h.correlation = corr;
        self.to_send.extend_from_slice(empty_frame(h).as_bytes());
        self.outstanding.insert(corr, Asked::Spoofed);
    }

    /// Raw bytes (malformed input).
    pub fn raw(&mut self, b: &[u8], why: &str) {
        self.to_send.extend_from_slice(b);
        if self.doomed.is_none() {
            self.doomed = Some(why.to_string());
        }
    }

    /// Read what the kernel holds and check every frame. Returns violations.
    pub fn read(&mut self, max_frame_seen: &mut usize) -> Result<Vec<Bytes>, String> {
        let data = self.kernel.split();
        self.rx.extend_from_slice(&data);
        let mut replies = Vec::new();
        loop {
            let f = match self.dec.next_frame(&mut self.rx) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(format!("desktop {}: the proxy broke framing: {e}", self.n)),
            };
            *max_frame_seen = (*max_frame_seen).max(f.len());
            self.frames += 1;
            if let Some(r) = self.check(&f)? {
                replies.push(r);
            }
        }
        Ok(replies)
    }

    /// Check one frame from the proxy; a reply to send back, if any (heartbeat answers).
    fn check(&mut self, f: &Frame) -> Result<Option<Bytes>, String> {
        let h = *f.head();
        let n = self.n;
        self.note(format!(
            "got {:?} {:#x} corr {} err {:?}",
            h.kind,
            h.msg_type,
            h.correlation,
            f.error().map(|(c, _)| c)
        ));
        match h.kind {
            Kind::Response => {
                let Some(asked) = self.outstanding.remove(&h.correlation) else {
                    return Err(format!(
                        "desktop {n}: answer to {} which is not outstanding (duplicate or never asked): {h:?}",
                        h.correlation
                    ));
                };
                self.answers += 1;
                if asked != Asked::Hello && asked != Asked::Heartbeat && h.tenant != self.tenant {
                    return Err(format!(
                        "desktop {n} (tenant {}) got an answer stamped tenant {}: {h:?}",
                        self.tenant, h.tenant
                    ));
                }
                let err = f.error();
                match asked {
                    Asked::Hello => match err {
                        None => {
                            let sh = ServerHello::read(f.body())
                                .map_err(|e| format!("desktop {n}: bad server hello: {e}"))?;
                            self.sid = Some(sh.session);
                        }
                        // Refused: it is closed; what it sent behind the hello is lost.
                        Some((code, _)) => {
                            if self.doomed.is_none() {
                                self.doomed = Some(format!("hello refused: {code}"));
                            }
                        }
                    },
                    Asked::Subscribe(topic) => {
                        if err.is_none() {
                            let id = f.body().int(key::SUBSCRIPTION).map_err(|e| {
                                format!("desktop {n}: subscribe answer without id: {e}")
                            })? as u64;
                            self.subs.insert(topic, id);
                        }
                    }
                    Asked::Unsubscribe(topic) => {
                        if err.is_none() {
                            self.subs.remove(&topic);
                        }
                    }
                    // PROTOCOL.md §5: "not sent" means it had no effect: the world checks
                    // that no server saw it.
                    Asked::Echo(nonce) => {
                        if let Some((code, _)) = err
                            && code.retry_class() == deskmux_codec::RetryClass::NotSent
                        {
                            self.not_sent.push((nonce, code));
                        }
                    }
                    Asked::Spoofed | Asked::Heartbeat => {}
                }
                if let Some((code, _)) = err
                    && code.0 >> 8 == 0
                {
                    return Err(format!("desktop {n}: error without a retry class: {code}"));
                }
                Ok(None)
            }
            Kind::Event => {
                if h.tenant != self.tenant {
                    return Err(format!(
                        "desktop {n} (tenant {}) got an event of tenant {}: {h:?}",
                        self.tenant, h.tenant
                    ));
                }
                if h.flags.has(Flags::BROADCAST) {
                    let topic = f
                        .body()
                        .str(key::TOPIC)
                        .map_err(|e| format!("desktop {n}: broadcast without topic: {e}"))?;
                    match self.subs.get(topic) {
                        Some(id) if *id == h.correlation => Ok(None),
                        Some(id) => Err(format!(
                            "desktop {n}: event of {topic} with subscription {} (holds {id})",
                            h.correlation
                        )),
                        None => Err(format!(
                            "desktop {n}: event of {topic} it does not hold (subs {:?})",
                            self.subs
                        )),
                    }
                } else {
                    if Some(h.session) != self.sid {
                        return Err(format!(
                            "desktop {n} (session {:?}) got a unicast event for session {:x}",
                            self.sid, h.session
                        ));
                    }
                    let nonce = f.body().int("nonce").unwrap_or(-1) as u64;
                    self.unicasts.push((nonce, h));
                    Ok(None)
                }
            }
            Kind::Request if h.service == Service::Control && h.msg_type == control::HEARTBEAT => {
                let mut r = h;
                r.kind = Kind::Response;
                Ok(Some(empty_frame(r).freeze()))
            }
            Kind::Control => {
                match h.msg_type {
                    control::ERROR => {
                        let code = f.error().map(|(c, _)| c);
                        // Errors after which the proxy closes: answers may be lost then.
                        if matches!(
                            code,
                            Some(
                                ErrorCode::SLOW_CONSUMER
                                    | ErrorCode::DEADLINE
                                    | ErrorCode::FRAME_TOO_LARGE
                                    | ErrorCode::OVERLOADED
                                    | ErrorCode::PROTOCOL
                            )
                        ) && self.doomed.is_none()
                        {
                            self.doomed = Some(format!("control error {code:?}"));
                        }
                    }
                    control::GO_AWAY => self.going_away = true,
                    control::SESSION_CLOSE => {
                        if self.doomed.is_none() {
                            self.doomed = Some("session closed by server".into());
                        }
                    }
                    other => return Err(format!("desktop {n}: unexpected control {other:#x}")),
                }
                Ok(None)
            }
            _ => Err(format!("desktop {n}: unexpected frame {h:?}")),
        }
    }

    /// Whether the desktop is done sending and has nothing left to be answered.
    pub fn settled(&self) -> bool {
        self.outstanding.is_empty()
    }
}
