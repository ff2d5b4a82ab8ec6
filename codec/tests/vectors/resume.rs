//! Vectors for session resume and keyed requests (PROTOCOL.md §4.6, §5.5): the hello that
//! resumes, the server hello that answers it, a numbered unicast event, a keyed request and
//! the refusal of a resume. Kept apart from the codec's own vectors and the rules' refusals so
//! that each file has one job.

use super::{Gen, V, body_of, head};
use deskmux_codec::msg::{self, key};
use deskmux_codec::{BodyWriter, ErrorCode, Kind, Service, error_response};

pub(super) fn add(g: &mut Gen) {
    // A hello presenting a resume token instead of a password; written by the typed writers.
    let resume = [
        (key::VERSION, V::Int(1)),
        (key::AGENT, V::Str("agent-1")),
        (key::SERVICES, V::Int(6)),
        (key::RESUME, V::Str("dms1.opaque")),
        (key::LAST_EVENT, V::Int(17)),
    ];
    let mut b = bytes::BytesMut::new();
    let mut w = BodyWriter::new(&mut b);
    w.int(key::VERSION, 1);
    w.str(key::AGENT, "agent-1").expect("write");
    w.int(key::SERVICES, 6);
    msg::Resume {
        token: "dms1.opaque",
        last_event: 17,
    }
    .write(&mut w)
    .expect("write");
    assert_eq!(b.to_vec(), body_of(&resume), "Resume writer disagrees");
    let parsed = msg::Resume::read(deskmux_codec::BodyRef::new(&b))
        .expect("read")
        .expect("a resume");
    assert_eq!((parsed.token, parsed.last_event), ("dms1.opaque", 17));
    let hello = head(
        Kind::Request,
        Service::Control,
        msg::control::HELLO,
        7,
        1,
        0,
    );
    g.frame(
        "request-control-hello-resume",
        "desktop hello resuming a session: its resume token and the last unicast useq it got (no token key)",
        hello,
        &resume,
    );

    g.frame(
        "response-control-hello-resumed",
        "server hello of a resumed session: a new session id, the same resume token, 2 events replayed next",
        head(Kind::Response, Service::Control, msg::control::HELLO, 7, 1, 1002),
        &[
            (key::SESSION, V::Int(1002)),
            (key::MAX_FRAME, V::Int(2_097_152)),
            (key::HEARTBEAT_MS, V::Int(5000)),
            (key::MAX_IN_FLIGHT, V::Int(64)),
            (key::RESUME, V::Str("dms1.opaque")),
            (key::RESUME_GRACE_MS, V::Int(30_000)),
            (key::REPLAYED, V::Int(2)),
        ],
    );

    g.frame(
        "event-unicast-invite-useq",
        "unicast INVITE to session 1002, the session's 18th unicast event (useq last)",
        head(
            Kind::Event,
            Service::Interaction,
            msg::ixn::INVITE,
            7,
            0,
            1002,
        ),
        &[
            (key::INTERACTION, V::Int(555)),
            (key::QUEUE, V::Str("sales")),
            (key::PROPS, V::List(Vec::new())),
            (key::TIMEOUT_MS, V::Int(30_000)),
            (key::USEQ, V::Int(18)),
        ],
    );

    g.frame(
        "request-ixn-accept-keyed",
        "ACCEPT with an idempotency key: a retry with the same key is answered, not applied again",
        head(
            Kind::Request,
            Service::Interaction,
            msg::ixn::ACCEPT,
            7,
            9,
            1002,
        ),
        &[
            (key::INTERACTION, V::Int(555)),
            (key::IDEM_KEY, V::Str("accept-555")),
        ],
    );

    let m = "no such session: it ended (grace over, logged out, overflowed)";
    let f = error_response(&hello, ErrorCode::RESUME_REFUSED, m);
    let items = [
        (key::CODE, V::Int(i64::from(ErrorCode::RESUME_REFUSED.0))),
        (key::MESSAGE, V::Str(m)),
    ];
    assert_eq!(f.body_bytes(), body_of(&items), "error encoder");
    g.frame(
        "response-error-resume-refused",
        "answer to request-control-hello-resume when the session is gone: RESUME_REFUSED (rejected), then close; say a fresh hello",
        *f.head(),
        &items,
    );
}
