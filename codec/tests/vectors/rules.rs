//! Vectors for the rules of PROTOCOL.md that are visible on the wire beyond framing (§2.2,
//! §3, §4.1, §5.1, §5.2): for each refusal, the bytes that provoke it and the answer a
//! receiver sends. Kept apart from the codec's own vectors so that each file has one job.
//!
//! The answers are built with the codec's own encoders (`error_response`, `refusal`): a
//! vector then pins what every receiver writes, and the check in the parent module decodes
//! each one independently.

use super::{Expect, Gen, V, head, nested};
use deskmux_codec::msg::{self, key};
use deskmux_codec::{ErrorCode, Flags, Head, Kind, Service, error_response, refusal};

/// The body items of an error answer.
fn err_items(code: ErrorCode, message: &'static str) -> [(&'static str, V); 2] {
    [
        (key::CODE, V::Int(i64::from(code.0))),
        (key::MESSAGE, V::Str(message)),
    ]
}

/// An error response to `req` as receivers build it, after checking that the encoder writes
/// exactly the items the vector documents.
fn answer(
    g: &mut Gen,
    name: &str,
    note: &'static str,
    req: Head,
    tenant: u32,
    code: ErrorCode,
    m: &'static str,
) {
    let mut h = req;
    h.tenant = tenant;
    let f = error_response(&h, code, m);
    let items = err_items(code, m);
    assert_eq!(f.body_bytes(), super::body_of(&items), "{name}: encoder");
    g.frame(name, note, *f.head(), &items);
}

#[allow(clippy::too_many_lines)]
pub(super) fn add(g: &mut Gen) {
    // §3: type 0x00 is an unknown type like any from 0x05 up: length-prefixed, skipped.
    g.frame(
        "body-type-00",
        "value type 0x00 is unknown (reserved): length-prefixed and skipped, never MALFORMED",
        head(
            Kind::Request,
            Service::Interaction,
            msg::ixn::SUBSCRIBE,
            7,
            68,
            0,
        ),
        &[
            ("z", V::Unknown(0x00, &[0x00, 0xAB])),
            (key::TOPIC, V::Str("queue:sales")),
        ],
    );

    // §2.2: framing is judged byte by byte, magic then version, before the length.
    g.bytes(
        "bad-magic-first-byte",
        "one garbage byte: refused at once (control PROTOCOL, then close)",
        vec![0x47],
        Expect::Error("BadMagic".into()),
    );
    g.bytes(
        "bad-magic-second-byte",
        "0x44 then a wrong second magic byte",
        vec![0x44, 0x4E],
        Expect::Error("BadMagic".into()),
    );
    g.bytes(
        "bad-version-early",
        "magic and version 2, nothing more: refused without waiting for the head",
        vec![0x44, 0x4D, 0x02],
        Expect::Error("UnsupportedVersion".into()),
    );
    let mut both = head(
        Kind::Request,
        Service::Interaction,
        msg::ixn::ECHO,
        7,
        69,
        0,
    );
    both.body_len = u32::MAX;
    let mut both = both.to_bytes().to_vec();
    both[2] = 2;
    g.bytes(
        "bad-version-and-too-large",
        "version 2 and a length over the maximum: the version wins (PROTOCOL, not FRAME_TOO_LARGE)",
        both,
        Expect::Error("UnsupportedVersion".into()),
    );
    let lost =
        deskmux_codec::control_error(0, ErrorCode::PROTOCOL, "bad magic or version: framing lost");
    g.frame(
        "control-error-framing-lost",
        "sent before closing on lost framing: control ERROR, PROTOCOL, correlation 0, tenant 0",
        *lost.head(),
        &err_items(ErrorCode::PROTOCOL, "bad magic or version: framing lost"),
    );

    // §5.1: a refused frame that is not a request gets a control error naming it.
    let unk = head(
        Kind::Unknown(9),
        Service::Interaction,
        msg::ixn::ECHO,
        7,
        44,
        0,
    );
    let f = refusal(&unk, ErrorCode::PROTOCOL, "unknown frame kind");
    g.frame(
        "control-error-unknown-kind",
        "answer to vector unknown-kind: control ERROR PROTOCOL with the refused frame's \
         correlation (44) and session; tenant 0; the connection stays",
        *f.head(),
        &err_items(ErrorCode::PROTOCOL, "unknown frame kind"),
    );
    let st = head(
        Kind::Control,
        Service::Control,
        msg::control::SERVICE_STATE,
        7,
        72,
        0,
    );
    g.frame(
        "control-service-state-from-desktop",
        "a desktop may not send SERVICE_STATE: answered by control-error-unexpected-control",
        st,
        &[],
    );
    let f = refusal(&st, ErrorCode::PROTOCOL, "unexpected control frame");
    g.frame(
        "control-error-unexpected-control",
        "answer to control-service-state-from-desktop: PROTOCOL naming correlation 72",
        *f.head(),
        &err_items(ErrorCode::PROTOCOL, "unexpected control frame"),
    );
    let cerr = head(
        Kind::Control,
        Service::Control,
        msg::control::ERROR,
        7,
        73,
        0,
    );
    let mut cerr = cerr;
    cerr.flags = Flags(Flags::ERROR);
    g.frame(
        "control-error-from-desktop",
        "a control ERROR from a desktop: never answered (no error answers an error); kept open",
        cerr,
        &err_items(ErrorCode::INTERNAL, "client failed"),
    );

    // §2.3, §5.1: tenants on answers.
    let spoof = head(
        Kind::Request,
        Service::Interaction,
        msg::ixn::ECHO,
        8,
        70,
        0,
    );
    g.frame(
        "request-tenant-spoofed",
        "an ECHO of a tenant-7 session claiming tenant 8",
        spoof,
        &[(key::DATA, V::Bin(b"x"))],
    );
    answer(
        g,
        "response-error-tenant-mismatch",
        "answer to request-tenant-spoofed: the session's tenant (7), not the claimed one",
        spoof,
        7,
        ErrorCode::TENANT_MISMATCH,
        "tenant is not the session's",
    );
    let hb = head(
        Kind::Request,
        Service::Control,
        msg::control::HEARTBEAT,
        0,
        74,
        0,
    );
    g.frame(
        "request-heartbeat-tenant-0",
        "a desktop heartbeat may carry tenant 0 or its session's tenant",
        hb,
        &[],
    );
    let mut hb_ans = hb;
    hb_ans.kind = Kind::Response;
    hb_ans.tenant = 7;
    g.frame(
        "response-heartbeat",
        "answer to request-heartbeat-tenant-0 on an open tenant-7 session: the session's tenant",
        hb_ans,
        &[],
    );
    let hb_spoof = head(
        Kind::Request,
        Service::Control,
        msg::control::HEARTBEAT,
        8,
        75,
        0,
    );
    answer(
        g,
        "response-error-heartbeat-tenant",
        "a heartbeat claiming tenant 8 on a tenant-7 session: TENANT_MISMATCH",
        hb_spoof,
        7,
        ErrorCode::TENANT_MISMATCH,
        "tenant is not the session's",
    );

    // §5.2: one correlation id in flight once.
    let dup = head(
        Kind::Request,
        Service::Interaction,
        msg::ixn::SUBMIT,
        7,
        71,
        0,
    );
    answer(
        g,
        "response-error-correlation-in-flight",
        "a second request with correlation 71 while the first is unanswered: refused, the \
         first is answered normally",
        dup,
        7,
        ErrorCode::INVALID_STATE,
        "correlation id in flight",
    );

    // §3, §7: an ECHO body is opaque bytes, answered verbatim, never MALFORMED.
    let echo = head(Kind::Request, Service::Ucs, msg::ucs::ECHO, 7, 85, 0);
    g.frame_raw(
        "request-echo-opaque-body",
        "an ECHO whose body is not §3's grammar (key length 5, 2 bytes): answered with the same \
         body bytes, never MALFORMED",
        echo,
        &[5, b'a', b'b'],
        super::BodyExpect::Error("Truncated".into()),
        None,
    );

    // §5.3: flags of a request are not copied.
    let mut flagged = head(
        Kind::Request,
        Service::Interaction,
        msg::ixn::ECHO,
        7,
        76,
        0,
    );
    flagged.flags = Flags(Flags::ERROR | Flags::BROADCAST | Flags::RETRY);
    g.frame(
        "request-echo-all-flags",
        "an ECHO flagged ERROR, BROADCAST and RETRY",
        flagged,
        &[(key::DATA, V::Bin(b"x"))],
    );
    let mut echoed = flagged;
    echoed.kind = Kind::Response;
    echoed.flags = Flags::default();
    g.frame(
        "response-echo-no-flags",
        "answer to request-echo-all-flags: no flag, the body as sent",
        echoed,
        &[(key::DATA, V::Bin(b"x"))],
    );

    // §4.1: hello refusals, each followed by the connection's close.
    let hello = |corr| {
        head(
            Kind::Request,
            Service::Control,
            msg::control::HELLO,
            7,
            corr,
            0,
        )
    };
    let empty = hello(77);
    g.frame(
        "request-hello-empty",
        "a hello with an empty body",
        empty,
        &[],
    );
    answer(
        g,
        "response-error-hello-malformed",
        "answer to request-hello-empty: MALFORMED, then close",
        empty,
        7,
        ErrorCode::MALFORMED,
        "bad hello: missing key \"token\"",
    );
    let v2 = [
        (key::VERSION, V::Int(2)),
        (key::AGENT, V::Str("agent-1")),
        (key::TOKEN, V::Str("s3cret")),
        (key::SERVICES, V::Int(6)),
    ];
    g.frame(
        "request-hello-version-2",
        "a hello asking for version 2",
        hello(78),
        &v2,
    );
    answer(
        g,
        "response-error-hello-version",
        "answer to request-hello-version-2: PROTOCOL, then close (the head stays version 1)",
        hello(78),
        7,
        ErrorCode::PROTOCOL,
        "unsupported protocol version",
    );
    let none = [
        (key::VERSION, V::Int(1)),
        (key::AGENT, V::Str("agent-1")),
        (key::TOKEN, V::Str("s3cret")),
        (key::SERVICES, V::Int(0)),
    ];
    g.frame(
        "request-hello-no-services",
        "a hello asking for no service",
        hello(79),
        &none,
    );
    answer(
        g,
        "response-error-hello-no-route",
        "answer to request-hello-no-services (or a services bit nothing routes): NO_ROUTE, then close",
        hello(79),
        7,
        ErrorCode::NO_ROUTE,
        "no route for the services asked",
    );
    let mut deep = nested(17);
    deep.insert(0, (key::VERSION, V::Int(1)));
    let deep_body = super::body_of(&deep);
    g.frame_raw(
        "request-hello-too-deep",
        "a hello with a list 17 deep: MALFORMED (§3), then close",
        hello(80),
        &deep_body,
        super::BodyExpect::Error("TooDeep".into()),
        None,
    );

    // §4.1: requests of an open session.
    let ucs = head(Kind::Request, Service::Ucs, msg::ucs::CONTACT_GET, 7, 81, 0);
    answer(
        g,
        "response-error-service-not-opened",
        "a UCS request on a session whose hello asked for services 2 (Interaction only)",
        ucs,
        7,
        ErrorCode::INVALID_STATE,
        "service not opened by this session's hello",
    );
    let other = head(
        Kind::Request,
        Service::Interaction,
        msg::ixn::ECHO,
        7,
        82,
        99,
    );
    answer(
        g,
        "response-error-wrong-session",
        "a request naming session 99, not 0 nor its own: INVALID_STATE, direct or through a proxy",
        other,
        7,
        ErrorCode::INVALID_STATE,
        "session id is not this session's",
    );
    let open = head(
        Kind::Request,
        Service::Control,
        msg::control::SESSION_OPEN,
        7,
        83,
        5,
    );
    answer(
        g,
        "response-error-desktop-session-open",
        "SESSION_OPEN from a desktop: INVALID_STATE (only links open sessions)",
        open,
        7,
        ErrorCode::INVALID_STATE,
        "SESSION_OPEN outside a link",
    );
    let unk_ctl = head(Kind::Request, Service::Control, 0x0099, 7, 84, 0);
    answer(
        g,
        "response-error-unknown-control",
        "a control request of a type nobody knows: UNKNOWN_MESSAGE",
        unk_ctl,
        7,
        ErrorCode::UNKNOWN_MESSAGE,
        "unknown control message",
    );
}
