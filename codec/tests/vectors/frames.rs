//! Vectors for one well-formed frame of each kind and service (PROTOCOL.md §2, §4, §6–§9):
//! the hellos, a request and its answers, events, control frames, and the unknown kind,
//! service and flag a receiver must still frame. Kept apart from the refusals and the
//! malformed input of the other modules: these are the ordinary frames of a session (one
//! error answer among them), and each body written by a typed writer of `msg` pins that
//! writer too.

use deskmux_codec::msg::{self, key};
use deskmux_codec::{ErrorCode, Flags, Kind, Service, control_error};

use crate::generate::{Gen, V, head, success};

/// The body of the desktop hello of agent-1 (password `s3cret`) asking for protocol `version`
/// and the `services` bits: `request-control-hello`'s, and the spoiled ones of the refusals.
pub(crate) fn hello_items(version: i64, services: i64) -> [(&'static str, V); 4] {
    [
        (key::VERSION, V::Int(version)),
        (key::AGENT, V::Str("agent-1")),
        (key::TOKEN, V::Str("s3cret")),
        (key::SERVICES, V::Int(services)),
    ]
}

/// The vectors of this module, in their order in PROTOCOL.md §11.
pub(crate) fn add(g: &mut Gen) {
    hellos(g);
    requests(g);
    events(g);
    control_frames(g);
    unknowns(g);
}

/// §4.1, §4.2: the desktop's hello (with a password or a reconnect token), the server's
/// answer, and a proxy's link hello.
fn hellos(g: &mut Gen) {
    let hello_req = head(
        Kind::Request,
        Service::Control,
        msg::control::HELLO,
        7,
        1,
        0,
    );
    g.written(
        "request-control-hello",
        "desktop hello: request, service 0 (control), tenant 7, session 0",
        hello_req,
        &hello_items(1, 6),
        |w| {
            msg::DesktopHello {
                version: 1,
                agent: "agent-1",
                token: "s3cret",
                reconnect: None,
                services: 6,
            }
            .write(w)
        },
    );

    g.written(
        "request-control-hello-reconnect",
        "desktop hello presenting a reconnect token instead of a password (no token key)",
        hello_req,
        &[
            (key::VERSION, V::Int(1)),
            (key::AGENT, V::Str("agent-1")),
            (key::RECONNECT, V::Str("dmr1.opaque")),
            (key::SERVICES, V::Int(6)),
        ],
        |w| {
            msg::DesktopHello {
                version: 1,
                agent: "agent-1",
                token: "",
                reconnect: Some("dmr1.opaque"),
                services: 6,
            }
            .write(w)
        },
    );

    g.written(
        "response-control-hello",
        "server hello: response, the session id in head and body",
        success(hello_req, 7, 1001),
        &[
            (key::SESSION, V::Int(1001)),
            (key::MAX_FRAME, V::Int(2_097_152)),
            (key::HEARTBEAT_MS, V::Int(5000)),
            (key::MAX_IN_FLIGHT, V::Int(64)),
        ],
        |w| {
            msg::ServerHello {
                session: 1001,
                max_frame: 2_097_152,
                heartbeat_ms: 5000,
                max_in_flight: 64,
            }
            .write(w)
        },
    );

    g.written(
        "request-control-link-hello",
        "link hello: tenant 0, session 0, secret as bin",
        head(
            Kind::Request,
            Service::Control,
            msg::control::LINK_HELLO,
            0,
            1,
            0,
        ),
        &[
            (key::VERSION, V::Int(1)),
            (key::LINK, V::Str("proxy-w0-ixn-1")),
            (key::SECRET, V::Bin(&[0x00, 0x01, 0xFE, 0xFF])),
        ],
        |w| {
            msg::LinkHello {
                version: 1,
                link: "proxy-w0-ixn-1",
                secret: &[0x00, 0x01, 0xFE, 0xFF],
                max_frame: None,
            }
            .write(w)
        },
    );
}

/// §2.3, §5, §7, §8: requests on a link, and a response and an error answering one.
fn requests(g: &mut Gen) {
    g.frame(
        "request-ixn-echo",
        "request to the Interaction Server (service 1) on a link: session stamped",
        head(
            Kind::Request,
            Service::Interaction,
            msg::ixn::ECHO,
            7,
            42,
            1001,
        ),
        &[(key::DATA, V::Bin(b"hello"))],
    );

    // One UCS request, and the two answers it may get.
    let contact_get = head(
        Kind::Request,
        Service::Ucs,
        msg::ucs::CONTACT_GET,
        7,
        43,
        1001,
    );
    let mut retry = contact_get;
    retry.flags = Flags(Flags::RETRY);
    g.frame(
        "request-ucs-contact-get-retry",
        "request to UCS (service 2) with flag RETRY",
        retry,
        &[(key::CONTACT, V::Int(12345))],
    );

    let contact = success(contact_get, 7, 1001);
    g.frame(
        "response-ucs-contact-get",
        "response: same correlation, tenant and session as the request",
        contact,
        &[
            (key::CONTACT, V::Int(12345)),
            (
                key::ATTRS,
                V::List(vec![
                    ("name", V::Str("Zoë Martin")),
                    ("email", V::Str("zoe@example.com")),
                ]),
            ),
        ],
    );

    // The note names the code by its number: pin the constant to it.
    assert_eq!(ErrorCode::NOT_FOUND.0, 0x0305, "NOT_FOUND");
    let answered = g.answer(
        "response-error-not-found",
        "error response: flag ERROR, code 0x0305 NOT_FOUND (class 0x03 rejected)",
        contact_get,
        7,
        ErrorCode::NOT_FOUND,
        "no such contact",
    );
    let mut err_head = contact;
    err_head.flags = Flags(Flags::ERROR);
    err_head.body_len = answered.body_len;
    assert_eq!(answered, err_head, "error_response head");
}

/// §9: a broadcast event and a unicast one.
fn events(g: &mut Gen) {
    let mut bcast = head(
        Kind::Event,
        Service::Interaction,
        msg::ixn::QUEUE_EVENT,
        7,
        9,
        0,
    );
    bcast.flags = Flags(Flags::BROADCAST);
    g.frame(
        "event-broadcast-queue",
        "broadcast event: flag BROADCAST, correlation = subscription id 9, session 0",
        bcast,
        &[
            (key::TOPIC, V::Str("queue:sales")),
            (key::SEQ, V::Int(3)),
            (key::EVENT, V::Str("submitted")),
            (key::INTERACTION, V::Int(555)),
            (key::PUBLISHED_US, V::Int(1_700_000_000_000_000)),
        ],
    );

    g.frame(
        "event-unicast-invite",
        "unicast event to session 1001; props is a list of str items",
        head(
            Kind::Event,
            Service::Interaction,
            msg::ixn::INVITE,
            7,
            0,
            1001,
        ),
        &[
            (key::INTERACTION, V::Int(555)),
            (key::QUEUE, V::Str("sales")),
            (
                key::PROPS,
                V::List(vec![("channel", V::Str("chat")), ("lang", V::Str("fr"))]),
            ),
            (key::TIMEOUT_MS, V::Int(30_000)),
        ],
    );
}

/// §6: control frames (kind 4), the error a receiver sends unasked among them.
fn control_frames(g: &mut Gen) {
    g.frame(
        "control-session-close",
        "control frame (kind 4) with an empty body",
        head(
            Kind::Control,
            Service::Control,
            msg::control::SESSION_CLOSE,
            7,
            0,
            1001,
        ),
        &[],
    );

    g.written(
        "control-go-away",
        "go-away control frame",
        head(
            Kind::Control,
            Service::Control,
            msg::control::GO_AWAY,
            0,
            0,
            0,
        ),
        &[
            (key::REASON, V::Str("draining")),
            (key::RECONNECT_MS, V::Int(2000)),
        ],
        |w| {
            msg::GoAway {
                reason: "draining",
                reconnect_ms: 2000,
            }
            .write(w)
        },
    );

    g.written(
        "control-service-state",
        "service state: unavailable, primary",
        head(
            Kind::Control,
            Service::Control,
            msg::control::SERVICE_STATE,
            0,
            0,
            0,
        ),
        &[
            (key::STATE, V::Int(1)),
            (key::ROLE, V::Int(0)),
            (key::INSTANCE, V::Str("ixn-1")),
        ],
        |w| {
            msg::ServiceState {
                state: msg::State::Unavailable,
                role: msg::Role::Primary,
                instance: "ixn-1",
            }
            .write(w)
        },
    );

    assert_eq!(ErrorCode::PROTOCOL.0, 0x0308, "PROTOCOL");
    g.error(
        "control-error-protocol",
        "unsolicited error: control frame of type ERROR with flag ERROR, code 0x0308 PROTOCOL",
        &control_error(0, ErrorCode::PROTOCOL, "unknown kind 9"),
        ErrorCode::PROTOCOL,
        "unknown kind 9",
    );
}

/// §2: an unknown kind, service and flag keep framing: a receiver must still frame them.
fn unknowns(g: &mut Gen) {
    g.frame(
        "unknown-kind",
        "kind 9 is unknown: framing is intact, the receiver answers PROTOCOL and goes on",
        head(
            Kind::Unknown(9),
            Service::Interaction,
            msg::ixn::ECHO,
            7,
            44,
            0,
        ),
        &[],
    );

    let mut unknown_svc = head(Kind::Request, Service::Unknown(7), 0x0101, 7, 45, 1001);
    unknown_svc.flags = Flags(0x80 | Flags::RETRY);
    g.frame(
        "unknown-service-and-flag",
        "service 7 is unknown (routed by its byte or NO_ROUTE); flag bit 0x80 is unknown and kept",
        unknown_svc,
        &[(key::DATA, V::Bin(&[0xDE, 0xAD, 0xBE, 0xEF]))],
    );
}
