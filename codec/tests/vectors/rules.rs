//! Vectors for the rules of PROTOCOL.md that are visible on the wire beyond framing (§2.2,
//! §3, §4.1, §5.1, §5.2): for each refusal, the bytes that provoke it and the answer a
//! receiver sends. Kept apart from the codec's own vectors so that each file has one job.
//!
//! The answers are built with the codec's own encoders (`error_response`, `refusal`): a
//! vector then pins what every receiver writes (each encoder's body is checked against the
//! documented items first), and `check` decodes each one independently.

use deskmux_codec::msg::{self, key};
use deskmux_codec::{ErrorCode, Flags, Head, Kind, Service, control_error, refusal};

use crate::frames::hello_items;
use crate::framing::with_byte;
use crate::generate::{Gen, V, body_of, err_items, head, nested, success};
use crate::parse::{BodyExpect, Expect};

/// A desktop's request on its tenant-7 session, naming session 0 (§2.3): what the vectors
/// below start from, so that the one field a vector spoils stands out.
fn request(service: Service, msg_type: u16, corr: u64) -> Head {
    head(Kind::Request, service, msg_type, 7, corr, 0)
}

/// The vectors of this module, in their order in PROTOCOL.md §11.
pub(crate) fn add(g: &mut Gen) {
    unknown_value_type(g);
    framing_order(g);
    refused_frames(g);
    tenants(g);
    request_checks(g);
    hello_refusals(g);
    open_session(g);
}

/// §3: type 0x00 is an unknown type like any from 0x05 up: length-prefixed, skipped.
fn unknown_value_type(g: &mut Gen) {
    g.frame(
        "body-type-00",
        "value type 0x00 is unknown (reserved): length-prefixed and skipped, never MALFORMED",
        request(Service::Interaction, msg::ixn::SUBSCRIBE, 68),
        &[
            ("z", V::Unknown(0x00, &[0x00, 0xAB])),
            (key::TOPIC, V::Str("queue:sales")),
        ],
    );
}

/// §2.2: framing is judged byte by byte, magic then version, before the length.
fn framing_order(g: &mut Gen) {
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
    let mut both = request(Service::Interaction, msg::ixn::ECHO, 69);
    both.body_len = u32::MAX;
    g.bytes(
        "bad-version-and-too-large",
        "version 2 and a length over the maximum: the version wins (PROTOCOL, not FRAME_TOO_LARGE)",
        with_byte(&both.to_bytes(), 2, 2),
        Expect::Error("UnsupportedVersion".into()),
    );
    let lost = "bad magic or version: framing lost";
    g.error(
        "control-error-framing-lost",
        "sent before closing on lost framing: control ERROR, PROTOCOL, correlation 0, tenant 0",
        &control_error(0, ErrorCode::PROTOCOL, lost),
        ErrorCode::PROTOCOL,
        lost,
    );
}

/// §5.1: a refused frame that is not a request gets a control error naming it.
fn refused_frames(g: &mut Gen) {
    let unk = g.head_of("unknown-kind");
    g.error(
        "control-error-unknown-kind",
        "answer to vector unknown-kind: control ERROR PROTOCOL with the refused frame's \
         correlation (44) and session; tenant 0; the connection stays",
        &refusal(&unk, ErrorCode::PROTOCOL, "unknown frame kind"),
        ErrorCode::PROTOCOL,
        "unknown frame kind",
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
    g.error(
        "control-error-unexpected-control",
        "answer to control-service-state-from-desktop: PROTOCOL naming correlation 72",
        &refusal(&st, ErrorCode::PROTOCOL, "unexpected control frame"),
        ErrorCode::PROTOCOL,
        "unexpected control frame",
    );
    let mut cerr = head(
        Kind::Control,
        Service::Control,
        msg::control::ERROR,
        7,
        73,
        0,
    );
    cerr.flags = Flags(Flags::ERROR);
    g.frame(
        "control-error-from-desktop",
        "a control ERROR from a desktop: never answered (no error answers an error); kept open",
        cerr,
        &err_items(ErrorCode::INTERNAL, "client failed"),
    );
}

/// §2.3, §5.1: tenants on answers.
fn tenants(g: &mut Gen) {
    let mut spoof = request(Service::Interaction, msg::ixn::ECHO, 70);
    spoof.tenant = 8;
    g.frame(
        "request-tenant-spoofed",
        "an ECHO of a tenant-7 session claiming tenant 8",
        spoof,
        &[(key::DATA, V::Bin(b"x"))],
    );
    g.answer(
        "response-error-tenant-mismatch",
        "answer to request-tenant-spoofed: the session's tenant (7), not the claimed one",
        spoof,
        7,
        ErrorCode::TENANT_MISMATCH,
        "tenant is not the session's",
    );
    let mut hb = request(Service::Control, msg::control::HEARTBEAT, 74);
    hb.tenant = 0;
    g.frame(
        "request-heartbeat-tenant-0",
        "a desktop heartbeat may carry tenant 0 or its session's tenant",
        hb,
        &[],
    );
    g.frame(
        "response-heartbeat",
        "answer to request-heartbeat-tenant-0 on an open tenant-7 session: the session's tenant",
        success(hb, 7, 0),
        &[],
    );
    let mut hb_spoof = request(Service::Control, msg::control::HEARTBEAT, 75);
    hb_spoof.tenant = 8;
    g.answer(
        "response-error-heartbeat-tenant",
        "a heartbeat claiming tenant 8 on a tenant-7 session: TENANT_MISMATCH",
        hb_spoof,
        7,
        ErrorCode::TENANT_MISMATCH,
        "tenant is not the session's",
    );
}

/// §5.2, §7, §5.3: what holds for a request whatever its message: one correlation id in
/// flight, ECHO's body never read, an answer's flags never copied.
fn request_checks(g: &mut Gen) {
    // §5.2: one correlation id in flight once.
    g.answer(
        "response-error-correlation-in-flight",
        "a second request with correlation 71 while the first is unanswered: refused, the \
         first is answered normally",
        request(Service::Interaction, msg::ixn::SUBMIT, 71),
        7,
        ErrorCode::INVALID_STATE,
        "correlation id in flight",
    );

    // §3, §7: an ECHO body is opaque bytes, answered verbatim, never MALFORMED.
    g.frame_raw(
        "request-echo-opaque-body",
        "an ECHO whose body is not §3's grammar (key length 5, 2 bytes): answered with the same \
         body bytes, never MALFORMED",
        request(Service::Ucs, msg::ucs::ECHO, 85),
        &[5, b'a', b'b'],
        BodyExpect::Error("Truncated".into()),
        None,
    );

    // §5.3: flags of a request are not copied.
    let mut flagged = request(Service::Interaction, msg::ixn::ECHO, 76);
    flagged.flags = Flags(Flags::ERROR | Flags::BROADCAST | Flags::RETRY);
    g.frame(
        "request-echo-all-flags",
        "an ECHO flagged ERROR, BROADCAST and RETRY",
        flagged,
        &[(key::DATA, V::Bin(b"x"))],
    );
    g.frame(
        "response-echo-no-flags",
        "answer to request-echo-all-flags: no flag, the body as sent",
        success(flagged, 7, 0),
        &[(key::DATA, V::Bin(b"x"))],
    );
}

/// §4.1: hello refusals, each followed by the connection's close.
fn hello_refusals(g: &mut Gen) {
    let hello = |corr| request(Service::Control, msg::control::HELLO, corr);
    let empty = hello(77);
    g.frame(
        "request-hello-empty",
        "a hello with an empty body",
        empty,
        &[],
    );
    g.answer(
        "response-error-hello-malformed",
        "answer to request-hello-empty: MALFORMED, then close",
        empty,
        7,
        ErrorCode::MALFORMED,
        "bad hello: missing key \"token\"",
    );
    g.frame(
        "request-hello-version-2",
        "a hello asking for version 2",
        hello(78),
        &hello_items(2, 6),
    );
    g.answer(
        "response-error-hello-version",
        "answer to request-hello-version-2: PROTOCOL, then close (the head stays version 1)",
        hello(78),
        7,
        ErrorCode::PROTOCOL,
        "unsupported protocol version",
    );
    g.frame(
        "request-hello-no-services",
        "a hello asking for no service",
        hello(79),
        &hello_items(1, 0),
    );
    g.answer(
        "response-error-hello-no-route",
        "answer to request-hello-no-services (or a services bit nothing routes): NO_ROUTE, then close",
        hello(79),
        7,
        ErrorCode::NO_ROUTE,
        "no route for the services asked",
    );
    let mut deep = nested(17);
    deep.insert(0, (key::VERSION, V::Int(1)));
    let deep_body = body_of(&deep);
    g.frame_raw(
        "request-hello-too-deep",
        "a hello with a list 17 deep: MALFORMED (§3), then close",
        hello(80),
        &deep_body,
        BodyExpect::Error("TooDeep".into()),
        None,
    );
}

/// §4.1: requests of an open session.
fn open_session(g: &mut Gen) {
    g.answer(
        "response-error-service-not-opened",
        "a UCS request on a session whose hello asked for services 2 (Interaction only)",
        request(Service::Ucs, msg::ucs::CONTACT_GET, 81),
        7,
        ErrorCode::INVALID_STATE,
        "service not opened by this session's hello",
    );
    let mut other = request(Service::Interaction, msg::ixn::ECHO, 82);
    other.session = 99;
    g.answer(
        "response-error-wrong-session",
        "a request naming session 99, not 0 nor its own: INVALID_STATE, direct or through a proxy",
        other,
        7,
        ErrorCode::INVALID_STATE,
        "session id is not this session's",
    );
    let mut open = request(Service::Control, msg::control::SESSION_OPEN, 83);
    open.session = 5;
    g.answer(
        "response-error-desktop-session-open",
        "SESSION_OPEN from a desktop: INVALID_STATE (only links open sessions)",
        open,
        7,
        ErrorCode::INVALID_STATE,
        "SESSION_OPEN outside a link",
    );
    g.answer(
        "response-error-unknown-control",
        "a control request of a type nobody knows: UNKNOWN_MESSAGE",
        request(Service::Control, 0x0099, 84),
        7,
        ErrorCode::UNKNOWN_MESSAGE,
        "unknown control message",
    );
}
