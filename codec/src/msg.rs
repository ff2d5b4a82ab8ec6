//! Message types per service, well-known body keys, and typed views of the handshake and
//! control messages that every component needs (PROTOCOL.md §4–§7).
//!
//! Application messages (agents, interactions, contacts) are read with [`BodyRef`] accessors
//! and the [`key`] constants; only hop-by-hop control messages get structs here, because the
//! proxy, the server and the client must agree on them exactly.

use crate::body::{BodyRef, BodyWriter};
use crate::error::{BodyError, ErrorCode};

/// Service `Control` (0): handshakes and hop-by-hop control. Never forwarded by a proxy.
pub mod control {
    /// Request: desktop hello. Response: server hello.
    pub const HELLO: u16 = 0x0001;
    /// Request: a proxy opens an upstream link. Response: link hello ack.
    pub const LINK_HELLO: u16 = 0x0002;
    /// Request on a link: open the session named in the head. Response: server hello.
    pub const SESSION_OPEN: u16 = 0x0003;
    /// Control on a link: the session named in the head has ended (either direction).
    pub const SESSION_CLOSE: u16 = 0x0004;
    /// Request: heartbeat; answered by a response with the same correlation id.
    pub const HEARTBEAT: u16 = 0x0005;
    /// Control: finish in-flight work and reconnect elsewhere.
    pub const GO_AWAY: u16 = 0x0006;
    /// Control: the server's service state (running / unavailable) and role (primary/backup).
    pub const SERVICE_STATE: u16 = 0x0007;
    /// Control: an unsolicited error (flag `ERROR`), e.g. just before closing.
    pub const ERROR: u16 = 0x0008;
}

/// Service `Interaction` (1): the Interaction Server.
pub mod ixn {
    /// Request: echo the body back. The cheapest request, for measuring proxies.
    pub const ECHO: u16 = 0x0001;
    /// Request: agent login (`place`).
    pub const AGENT_LOGIN: u16 = 0x0010;
    /// Request: agent ready.
    pub const AGENT_READY: u16 = 0x0011;
    /// Request: agent not ready (`reason`).
    pub const AGENT_NOT_READY: u16 = 0x0012;
    /// Request: agent logout.
    pub const AGENT_LOGOUT: u16 = 0x0013;
    /// Request: submit an interaction into `queue` with `props`.
    pub const SUBMIT: u16 = 0x0020;
    /// Event (unicast): an interaction is offered to this agent.
    pub const INVITE: u16 = 0x0021;
    /// Request: accept an invited interaction.
    pub const ACCEPT: u16 = 0x0022;
    /// Request: reject an invited interaction (it returns to its queue).
    pub const REJECT: u16 = 0x0023;
    /// Request: change an interaction's properties.
    pub const CHANGE_PROPERTIES: u16 = 0x0024;
    /// Event (unicast): an owned interaction's properties changed.
    pub const PROPERTIES_CHANGED: u16 = 0x0025;
    /// Request: place an interaction in a queue (transfer).
    pub const PLACE_IN_QUEUE: u16 = 0x0026;
    /// Request: stop processing (complete) an interaction.
    pub const STOP_PROCESSING: u16 = 0x0027;
    /// Event (unicast): an invite was withdrawn (timed out).
    pub const INVITE_REVOKED: u16 = 0x0028;
    /// Request: subscribe to a `topic` (`queue:NAME` or `stats`).
    pub const SUBSCRIBE: u16 = 0x0030;
    /// Request: unsubscribe from a `topic`.
    pub const UNSUBSCRIBE: u16 = 0x0031;
    /// Event (broadcast): something happened in a subscribed queue.
    pub const QUEUE_EVENT: u16 = 0x0032;
    /// Event (broadcast): tenant statistics.
    pub const STATS_EVENT: u16 = 0x0033;
}

/// Service `Gms` (3): access numbers and call matching (PROTOCOL.md §8.3).
pub mod gms {
    /// Request: book an access number (`group`, `caller`, `user_data`?, `code_len`?).
    pub const ACCESS_REQUEST: u16 = 0x0010;
    /// Request: match a call to its booking and release it (`number`, `caller`?, `code`?).
    pub const ACCESS_MATCH: u16 = 0x0011;
}

/// Service `Ucs` (2): the Universal Contact Server.
pub mod ucs {
    /// Request: echo the body back.
    pub const ECHO: u16 = 0x0001;
    /// Request: create a contact from `attrs`.
    pub const CONTACT_CREATE: u16 = 0x0010;
    /// Request: get a contact.
    pub const CONTACT_GET: u16 = 0x0011;
    /// Request: update a contact's `attrs` (merge; an empty string value removes a key).
    pub const CONTACT_UPDATE: u16 = 0x0012;
    /// Request: delete a contact.
    pub const CONTACT_DELETE: u16 = 0x0013;
    /// Request: find a contact by `email` or `phone`, creating it if absent.
    pub const CONTACT_IDENTIFY: u16 = 0x0014;
    /// Request: search contacts whose attribute `key` equals `value`.
    pub const CONTACT_SEARCH: u16 = 0x0015;
    /// Request: insert an interaction history record for a contact.
    pub const HISTORY_INSERT: u16 = 0x0020;
    /// Request: list a contact's history (without texts).
    pub const HISTORY_LIST: u16 = 0x0021;
    /// Request: get one history record's text content.
    pub const CONTENT_GET: u16 = 0x0022;
}

/// Well-known body keys.
pub mod key {
    #![allow(missing_docs)]
    pub const VERSION: &str = "version";
    pub const AGENT: &str = "agent";
    pub const TOKEN: &str = "token";
    pub const RECONNECT: &str = "reconnect";
    /// `SESSION_OPEN`'s first item: the desktop's IP address, as its proxy saw it.
    pub const SOURCE: &str = "source";
    pub const SERVICES: &str = "services";
    pub const PLACE: &str = "place";
    pub const SESSION: &str = "session";
    pub const MAX_FRAME: &str = "max_frame";
    pub const HEARTBEAT_MS: &str = "heartbeat_ms";
    pub const MAX_IN_FLIGHT: &str = "max_in_flight";
    pub const LINK: &str = "link";
    pub const SECRET: &str = "secret";
    pub const CODE: &str = "code";
    pub const MESSAGE: &str = "message";
    pub const REASON: &str = "reason";
    pub const RECONNECT_MS: &str = "reconnect_ms";
    pub const STATE: &str = "state";
    pub const ROLE: &str = "role";
    pub const SERVICE: &str = "service";
    pub const INSTANCE: &str = "instance";
    pub const DATA: &str = "data";
    pub const INTERACTION: &str = "interaction";
    pub const QUEUE: &str = "queue";
    pub const PROPS: &str = "props";
    pub const TIMEOUT_MS: &str = "timeout_ms";
    pub const CONTACT: &str = "contact";
    pub const ATTRS: &str = "attrs";
    pub const EMAIL: &str = "email";
    pub const PHONE: &str = "phone";
    pub const CREATED: &str = "created";
    pub const KEY: &str = "key";
    pub const VALUE: &str = "value";
    pub const CONTACTS: &str = "contacts";
    pub const HISTORY: &str = "history";
    pub const SUBJECT: &str = "subject";
    pub const TEXT: &str = "text";
    pub const ITEMS: &str = "items";
    pub const TOPIC: &str = "topic";
    pub const SUBSCRIPTION: &str = "subscription";
    pub const SEQ: &str = "seq";
    pub const EVENT: &str = "event";
    pub const PUBLISHED_US: &str = "published_us";
    pub const WAITING: &str = "waiting";
    pub const READY_AGENTS: &str = "ready_agents";
    pub const LIMIT: &str = "limit";
    /// Paging (PROTOCOL.md §8.1): the cursor a request continues from.
    pub const AFTER: &str = "after";
    /// Paging (PROTOCOL.md §8.1): present when more remain; the next request's `after`.
    pub const NEXT: &str = "next";
    pub const GROUP: &str = "group";
    pub const CALLER: &str = "caller";
    pub const USER_DATA: &str = "user_data";
    pub const CODE_LEN: &str = "code_len";
    pub const NUMBER: &str = "number";
    pub const ACCESS_CODE: &str = "code";
    pub const EXPIRES_MS: &str = "expires_ms";
    pub const BOOKING: &str = "booking";
    /// Session resume (PROTOCOL.md §4.6): the token, in the server hello and in a hello that
    /// resumes.
    pub const RESUME: &str = "resume";
    /// Session resume: the last unicast `useq` the desktop received.
    pub const LAST_EVENT: &str = "last_event";
    /// Session resume: how long a session outlives its connection (server hello).
    pub const RESUME_GRACE_MS: &str = "resume_grace_ms";
    /// Session resume: the server hello of a resumed session says how many events it replays.
    pub const REPLAYED: &str = "replayed";
    /// A unicast event's sequence number within its session (PROTOCOL.md §9).
    pub const USEQ: &str = "useq";
    /// A request's idempotency key (PROTOCOL.md §5.5).
    pub const IDEM_KEY: &str = "idem_key";
    /// `SESSION_CLOSE` from a proxy: keep the session for resume (1) rather than end it.
    pub const DETACH: &str = "detach";
}

fn u32_of(v: i64, key: &'static str) -> Result<u32, BodyError> {
    u32::try_from(v).map_err(|_| BodyError::WrongType(key))
}

fn u64_of(v: i64, key: &'static str) -> Result<u64, BodyError> {
    u64::try_from(v).map_err(|_| BodyError::WrongType(key))
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Desktop hello (control `HELLO` request) and, on a link, `SESSION_OPEN` request body.
/// The tenant travels in the head. Its `Debug` shows neither secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DesktopHello<'a> {
    /// Protocol version the desktop speaks (1).
    pub version: u32,
    /// Agent (or media-server) id.
    pub agent: &'a str,
    /// The agent's password or API key (key `token`); empty when `reconnect` is given.
    pub token: &'a str,
    /// A reconnect token from an earlier server hello (key `reconnect`, optional), presented
    /// instead of `token`.
    pub reconnect: Option<&'a str>,
    /// Services wanted, as a bit mask of [`crate::Service::mask_bit`].
    pub services: u64,
}

impl std::fmt::Debug for DesktopHello<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesktopHello")
            .field("version", &self.version)
            .field("agent", &self.agent)
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .field("reconnect", &self.reconnect.map(|_| "<token>"))
            .field("services", &self.services)
            .finish()
    }
}

impl<'a> DesktopHello<'a> {
    /// Read from a body. One of `token`, `reconnect` and `resume` must be present.
    ///
    /// # Errors
    /// A missing or mistyped key.
    pub fn read(b: BodyRef<'a>) -> Result<Self, BodyError> {
        let reconnect = b.opt_str(key::RECONNECT)?;
        // A hello that resumes a session (§4.6) proves itself with its resume token.
        let token = if reconnect.is_some() || b.opt_str(key::RESUME)?.is_some() {
            b.opt_str(key::TOKEN)?.unwrap_or("")
        } else {
            b.str(key::TOKEN)?
        };
        Ok(DesktopHello {
            version: u32_of(b.int(key::VERSION)?, key::VERSION)?,
            agent: b.str(key::AGENT)?,
            token,
            reconnect,
            services: u64_of(b.int(key::SERVICES)?, key::SERVICES)?,
        })
    }

    /// Write into a body (`token` only if non-empty or no `reconnect` is given).
    ///
    /// # Errors
    /// [`BodyError::TooLong`].
    pub fn write(&self, w: &mut BodyWriter<'_>) -> Result<(), BodyError> {
        w.int(key::VERSION, i64::from(self.version));
        w.str(key::AGENT, self.agent)?;
        if !self.token.is_empty() || self.reconnect.is_none() {
            w.str(key::TOKEN, self.token)?;
        }
        if let Some(r) = self.reconnect {
            w.str(key::RECONNECT, r)?;
        }
        w.int(key::SERVICES, i64_of(self.services));
        Ok(())
    }
}

/// The resume part of a desktop hello (PROTOCOL.md §4.6): the token of the session to resume
/// and the last unicast event the desktop received. Its `Debug` does not show the token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Resume<'a> {
    /// The resume token from the session's server hello (key `resume`).
    pub token: &'a str,
    /// The last `useq` received (key `last_event`; 0, or absent, when none was).
    pub last_event: u64,
}

impl std::fmt::Debug for Resume<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .field("last_event", &self.last_event)
            .finish()
    }
}

impl<'a> Resume<'a> {
    /// The resume of a hello body, if it asks for one.
    ///
    /// # Errors
    /// A mistyped `resume` or `last_event`.
    pub fn read(b: BodyRef<'a>) -> Result<Option<Self>, BodyError> {
        let Some(token) = b.opt_str(key::RESUME)? else {
            return Ok(None);
        };
        let last_event = match b.opt_int(key::LAST_EVENT)? {
            Some(v) => u64_of(v, key::LAST_EVENT)?,
            None => 0,
        };
        Ok(Some(Resume { token, last_event }))
    }

    /// Write into a hello body (after [`DesktopHello::write`]).
    ///
    /// # Errors
    /// [`BodyError::TooLong`].
    pub fn write(&self, w: &mut BodyWriter<'_>) -> Result<(), BodyError> {
        w.str(key::RESUME, self.token)?;
        w.int(key::LAST_EVENT, i64_of(self.last_event));
        Ok(())
    }
}

/// Server hello: the response to `HELLO` or `SESSION_OPEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHello {
    /// The session id the server (or proxy) assigned.
    pub session: u64,
    /// Largest frame the peer accepts.
    pub max_frame: u32,
    /// Heartbeat interval; the idle timeout is three intervals.
    pub heartbeat_ms: u32,
    /// Most requests a session may have in flight.
    pub max_in_flight: u32,
}

impl ServerHello {
    /// Read from a body.
    ///
    /// # Errors
    /// A missing or mistyped key.
    pub fn read(b: BodyRef<'_>) -> Result<Self, BodyError> {
        Ok(ServerHello {
            session: u64_of(b.int(key::SESSION)?, key::SESSION)?,
            max_frame: u32_of(b.int(key::MAX_FRAME)?, key::MAX_FRAME)?,
            heartbeat_ms: u32_of(b.int(key::HEARTBEAT_MS)?, key::HEARTBEAT_MS)?,
            max_in_flight: u32_of(b.int(key::MAX_IN_FLIGHT)?, key::MAX_IN_FLIGHT)?,
        })
    }

    /// Write into a body.
    ///
    /// # Errors
    /// Never in practice; the signature matches the other writers.
    pub fn write(&self, w: &mut BodyWriter<'_>) -> Result<(), BodyError> {
        w.int(key::SESSION, i64_of(self.session));
        w.int(key::MAX_FRAME, i64::from(self.max_frame));
        w.int(key::HEARTBEAT_MS, i64::from(self.heartbeat_ms));
        w.int(key::MAX_IN_FLIGHT, i64::from(self.max_in_flight));
        Ok(())
    }
}

/// Link hello: a proxy opens an upstream link, proving it holds the link secret. Its `Debug`
/// does not show the secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LinkHello<'a> {
    /// Protocol version (1).
    pub version: u32,
    /// A name for the link, for logs (e.g. `proxy-w0-l1`).
    pub link: &'a str,
    /// The configured link secret.
    pub secret: &'a [u8],
    /// The largest frame (head + body) the proxy accepts on this link (optional key
    /// `max_frame`). A server should not send larger frames; a proxy skips them by length.
    pub max_frame: Option<u32>,
}

impl std::fmt::Debug for LinkHello<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkHello")
            .field("version", &self.version)
            .field("link", &self.link)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

impl<'a> LinkHello<'a> {
    /// Read from a body.
    ///
    /// # Errors
    /// A missing or mistyped key.
    pub fn read(b: BodyRef<'a>) -> Result<Self, BodyError> {
        Ok(LinkHello {
            version: u32_of(b.int(key::VERSION)?, key::VERSION)?,
            link: b.str(key::LINK)?,
            secret: b.bin(key::SECRET)?,
            max_frame: b
                .opt_int(key::MAX_FRAME)?
                .map(|v| u32_of(v, key::MAX_FRAME))
                .transpose()?,
        })
    }

    /// Write into a body.
    ///
    /// # Errors
    /// [`BodyError::TooLong`].
    pub fn write(&self, w: &mut BodyWriter<'_>) -> Result<(), BodyError> {
        w.int(key::VERSION, i64::from(self.version));
        w.str(key::LINK, self.link)?;
        w.bin(key::SECRET, self.secret)?;
        if let Some(m) = self.max_frame {
            w.int(key::MAX_FRAME, i64::from(m));
        }
        Ok(())
    }
}

/// Whether a server takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Serving.
    Running = 0,
    /// "Service unavailable": existing sessions continue, new ones go elsewhere.
    Unavailable = 1,
}

/// A server's role in a warm-standby pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Serving (the only role of an unpaired server).
    Primary = 0,
    /// Waiting to take over; not serving.
    Backup = 1,
}

/// `SERVICE_STATE` body, and the link hello ack's state fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceState<'a> {
    /// Running or unavailable.
    pub state: State,
    /// Primary or backup.
    pub role: Role,
    /// The instance's configured name.
    pub instance: &'a str,
}

impl<'a> ServiceState<'a> {
    /// Read from a body.
    ///
    /// # Errors
    /// A missing or mistyped key.
    pub fn read(b: BodyRef<'a>) -> Result<Self, BodyError> {
        let state = match b.int(key::STATE)? {
            0 => State::Running,
            _ => State::Unavailable,
        };
        let role = match b.int(key::ROLE)? {
            0 => Role::Primary,
            _ => Role::Backup,
        };
        Ok(ServiceState {
            state,
            role,
            instance: b.opt_str(key::INSTANCE)?.unwrap_or(""),
        })
    }

    /// Write into a body.
    ///
    /// # Errors
    /// [`BodyError::TooLong`].
    pub fn write(&self, w: &mut BodyWriter<'_>) -> Result<(), BodyError> {
        w.int(key::STATE, self.state as i64);
        w.int(key::ROLE, self.role as i64);
        w.str(key::INSTANCE, self.instance)?;
        Ok(())
    }
}

/// Link hello ack: the response to `LINK_HELLO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkHelloAck<'a> {
    /// Largest frame the server accepts.
    pub max_frame: u32,
    /// Heartbeat interval the server expects on the link.
    pub heartbeat_ms: u32,
    /// The server's current state and role.
    pub state: ServiceState<'a>,
}

impl<'a> LinkHelloAck<'a> {
    /// Read from a body.
    ///
    /// # Errors
    /// A missing or mistyped key.
    pub fn read(b: BodyRef<'a>) -> Result<Self, BodyError> {
        Ok(LinkHelloAck {
            max_frame: u32_of(b.int(key::MAX_FRAME)?, key::MAX_FRAME)?,
            heartbeat_ms: u32_of(b.int(key::HEARTBEAT_MS)?, key::HEARTBEAT_MS)?,
            state: ServiceState::read(b)?,
        })
    }

    /// Write into a body.
    ///
    /// # Errors
    /// [`BodyError::TooLong`].
    pub fn write(&self, w: &mut BodyWriter<'_>) -> Result<(), BodyError> {
        w.int(key::MAX_FRAME, i64::from(self.max_frame));
        w.int(key::HEARTBEAT_MS, i64::from(self.heartbeat_ms));
        self.state.write(w)
    }
}

/// `GO_AWAY` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoAway<'a> {
    /// Why (for logs).
    pub reason: &'a str,
    /// Suggested delay before reconnecting, to spread a reconnect storm.
    pub reconnect_ms: u32,
}

impl<'a> GoAway<'a> {
    /// Read from a body.
    ///
    /// # Errors
    /// A mistyped key (both keys are optional).
    pub fn read(b: BodyRef<'a>) -> Result<Self, BodyError> {
        Ok(GoAway {
            reason: b.opt_str(key::REASON)?.unwrap_or(""),
            reconnect_ms: u32_of(
                b.opt_int(key::RECONNECT_MS)?.unwrap_or(0),
                key::RECONNECT_MS,
            )?,
        })
    }

    /// Write into a body.
    ///
    /// # Errors
    /// [`BodyError::TooLong`].
    pub fn write(&self, w: &mut BodyWriter<'_>) -> Result<(), BodyError> {
        w.str(key::REASON, self.reason)?;
        w.int(key::RECONNECT_MS, i64::from(self.reconnect_ms));
        Ok(())
    }
}

/// Error body: `code` and `message` (see [`ErrorCode`] for the retry classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorBody<'a> {
    /// The error code; its high byte is the retry class.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: &'a str,
}

impl<'a> ErrorBody<'a> {
    /// Read from a body.
    ///
    /// # Errors
    /// A missing or mistyped `code`.
    pub fn read(b: BodyRef<'a>) -> Result<Self, BodyError> {
        let code = u16::try_from(b.int(key::CODE)?).map_err(|_| BodyError::WrongType(key::CODE))?;
        Ok(ErrorBody {
            code: ErrorCode(code),
            message: b.opt_str(key::MESSAGE)?.unwrap_or(""),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn hello_roundtrip() {
        let h = DesktopHello {
            version: 1,
            agent: "a1",
            token: "t",
            reconnect: None,
            services: 0b110,
        };
        let mut b = BytesMut::new();
        h.write(&mut BodyWriter::new(&mut b)).unwrap();
        assert_eq!(DesktopHello::read(BodyRef::new(&b)).unwrap(), h);
    }

    #[test]
    fn link_ack_roundtrip() {
        let a = LinkHelloAck {
            max_frame: 1 << 21,
            heartbeat_ms: 5000,
            state: ServiceState {
                state: State::Unavailable,
                role: Role::Primary,
                instance: "ixn-1",
            },
        };
        let mut b = BytesMut::new();
        a.write(&mut BodyWriter::new(&mut b)).unwrap();
        assert_eq!(LinkHelloAck::read(BodyRef::new(&b)).unwrap(), a);
    }
}
