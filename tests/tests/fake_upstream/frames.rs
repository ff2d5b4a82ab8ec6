//! Frames the fake upstream reads and builds: request predicates and body lookups, answers
//! (default, big, restamped for another session or tenant), broadcast and unicast events,
//! and bare heads. Free functions, so that tests use them in their scripts too.

use bytes::Bytes;
use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{BodyError, BodyRef, BodyWriter, Flags, Frame, HEAD_LEN, Head, Kind, Service};

use super::SubRec;

/// Whether `f` is a request of `service`/`msg_type`.
pub fn is_request(f: &Frame, service: Service, msg_type: u16) -> bool {
    let h = f.head();
    h.kind == Kind::Request && h.service == service && h.msg_type == msg_type
}

/// The `topic` of a `SUBSCRIBE`/`UNSUBSCRIBE`.
pub fn topic_of(f: &Frame) -> Option<String> {
    f.body()
        .opt_str(key::TOPIC)
        .ok()
        .flatten()
        .map(String::from)
}

/// The `data` of an `ECHO` (empty if none).
pub fn data_of(f: &Frame) -> &[u8] {
    f.body().opt_bin(key::DATA).ok().flatten().unwrap_or(&[])
}

/// A response to `req` (same service, type, tenant, correlation and session).
pub fn response(
    req: &Frame,
    body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
) -> Bytes {
    let mut h = *req.head();
    h.kind = Kind::Response;
    h.flags = Flags::default();
    Frame::build(h, body)
        .expect("fake: build response")
        .freeze()
}

/// A response to `req` with these body bytes.
pub fn response_body(req: &Frame, body: &[u8]) -> Bytes {
    let mut h = *req.head();
    h.kind = Kind::Response;
    h.flags = Flags::default();
    Frame::with_body(h, body)
        .expect("fake: build response")
        .freeze()
}

/// The echo answer to `req` (its body verbatim, its correlation id), but with a head that
/// names `tenant` and `session` instead of the request's: an answer the server misrouted.
pub fn echo_as(req: &Frame, tenant: u32, session: u64) -> Bytes {
    let mut h = *req.head();
    h.kind = Kind::Response;
    h.flags = Flags::default();
    h.tenant = tenant;
    h.session = session;
    Frame::with_body(h, req.body_bytes())
        .expect("fake: build response")
        .freeze()
}

/// A successful `SUBSCRIBE` answer.
pub fn subscribe_answer(req: &Frame, id: u64, seq: i64) -> Bytes {
    response(req, |w| {
        w.int(key::SUBSCRIPTION, id as i64);
        w.int(key::SEQ, seq);
        Ok(())
    })
}

/// A response to `req` whose whole frame (head + body) is `total` bytes: one `data` item.
pub fn big_answer(req: &Frame, total: usize) -> Bytes {
    // Item overhead: key length (1) + "data" (4) + type (1) + length (4).
    let data = vec![0x5Au8; total - HEAD_LEN - 10];
    let b = response(req, |w| {
        w.bin(key::DATA, &data)?;
        Ok(())
    });
    assert_eq!(b.len(), total);
    b
}

/// A broadcast `QUEUE_EVENT` for subscription `id`.
pub fn queue_event(id: u64, tenant: u32, topic: &str, seq: i64) -> Bytes {
    let mut h = Head::new(Kind::Event, Service::Interaction, ixn::QUEUE_EVENT);
    h.flags = Flags(Flags::BROADCAST);
    h.tenant = tenant;
    h.correlation = id;
    Frame::build(h, |w| {
        w.str(key::TOPIC, topic)?;
        w.int(key::SEQ, seq);
        w.str(key::EVENT, "submitted")?;
        w.int(key::INTERACTION, seq);
        w.int(key::PUBLISHED_US, 1_700_000_000_000_000);
        Ok(())
    })
    .expect("fake: queue event")
    .freeze()
}

/// A unicast `INVITE` event for upstream session `session`, stamped with `tenant`.
pub fn invite_event(session: u64, tenant: u32, interaction: i64) -> Bytes {
    let mut h = Head::new(Kind::Event, Service::Interaction, ixn::INVITE);
    h.tenant = tenant;
    h.session = session;
    Frame::build(h, |w| {
        w.int(key::INTERACTION, interaction);
        w.str(key::QUEUE, "sales")?;
        w.list(key::PROPS, |w| {
            w.str("channel", "chat")?;
            Ok(())
        })?;
        w.int(key::TIMEOUT_MS, 30_000);
        Ok(())
    })
    .expect("fake: invite")
    .freeze()
}

/// Only the 32-byte head of a frame announcing `body_len` body bytes.
pub fn head_only(mut h: Head, body_len: u32) -> Bytes {
    h.body_len = body_len;
    Bytes::copy_from_slice(&h.to_bytes())
}

/// If `ans` is a successful answer to the `SUBSCRIBE` `req`: what to record.
pub(super) fn sub_answer_rec(req: &Frame, ans: &[u8], at: u64) -> Option<SubRec> {
    if !is_request(req, Service::Interaction, ixn::SUBSCRIBE) {
        return None;
    }
    let h = Head::parse(ans).ok().flatten()?;
    if h.kind != Kind::Response || h.flags.has(Flags::ERROR) {
        return None;
    }
    let body = BodyRef::new(ans.get(HEAD_LEN..HEAD_LEN + h.body_len as usize)?);
    Some(SubRec {
        tenant: req.head().tenant,
        topic: topic_of(req)?,
        id: u64::try_from(body.int(key::SUBSCRIPTION).ok()?).ok()?,
        at,
    })
}
