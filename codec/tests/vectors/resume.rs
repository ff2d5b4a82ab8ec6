//! Vectors for session resume and keyed requests (PROTOCOL.md §4.6, §5.5): the hello that
//! resumes, the server hello that answers it, a numbered unicast event, a keyed request and
//! the refusal of a resume. Kept apart from the codec's own vectors and the rules' refusals so
//! that each file has one job.

use deskmux_codec::msg::{self, key};
use deskmux_codec::{BodyRef, ErrorCode, Kind, Service};

use crate::generate::{Gen, V, body_of, head, success};

/// The vectors of this module, in their order in PROTOCOL.md §11.
pub(crate) fn add(g: &mut Gen) {
    // A hello presenting a resume token instead of a password; written by the typed writers.
    let resume = [
        (key::VERSION, V::Int(1)),
        (key::AGENT, V::Str("agent-1")),
        (key::SERVICES, V::Int(6)),
        (key::RESUME, V::Str("dms1.opaque")),
        (key::LAST_EVENT, V::Int(17)),
    ];
    let hello = head(
        Kind::Request,
        Service::Control,
        msg::control::HELLO,
        7,
        1,
        0,
    );
    g.written(
        "request-control-hello-resume",
        "desktop hello resuming a session: its resume token and the last unicast useq it got (no token key)",
        hello,
        &resume,
        |w| {
            w.int(key::VERSION, 1);
            w.str(key::AGENT, "agent-1")?;
            w.int(key::SERVICES, 6);
            msg::Resume {
                token: "dms1.opaque",
                last_event: 17,
            }
            .write(w)
        },
    );
    // The same body read back by the typed reader.
    let body = body_of(&resume);
    let parsed = msg::Resume::read(BodyRef::new(&body))
        .expect("read")
        .expect("a resume");
    assert_eq!((parsed.token, parsed.last_event), ("dms1.opaque", 17));

    g.frame(
        "response-control-hello-resumed",
        "server hello of a resumed session: a new session id, the same resume token, 2 events replayed next",
        success(hello, 7, 1002),
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

    g.answer(
        "response-error-resume-refused",
        "answer to request-control-hello-resume when the session is gone: RESUME_REFUSED (rejected), then close; say a fresh hello",
        hello,
        7,
        ErrorCode::RESUME_REFUSED,
        "no such session: it ended (grace over, logged out, overflowed)",
    );
}
