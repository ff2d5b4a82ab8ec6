//! Verification, with no I/O: every response is matched to its request by correlation id and
//! checked for content; whatever is still pending at the end is lost; subscription events are
//! checked for gaps and duplicates by sequence number.
//!
//! Correlation ids are issued sequentially per connection, so the pending set is a ring
//! (`VecDeque`) indexed by `corr - base`: O(1) insert and lookup, and no allocation once the
//! ring has grown to the in-flight window.

use std::collections::VecDeque;

use deskmux_codec::{ErrorCode, Flags, Head, Kind, RetryClass, msg};

/// What a response's correlation id matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match<E> {
    /// A pending request; it is no longer pending.
    Pending(E),
    /// An id that was issued and already answered: a duplicate response.
    Duplicate,
    /// An id never issued on this connection.
    Unknown,
}

/// Requests in flight on one connection, keyed by sequential correlation ids.
#[derive(Debug, Clone)]
pub struct Pending<E> {
    /// Correlation id of `slots[0]`.
    base: u64,
    /// `Some` while pending, `None` once answered (holes until the front is answered).
    slots: VecDeque<Option<E>>,
    /// Next id to issue.
    next: u64,
    /// Number of `Some` slots.
    in_flight: usize,
}

impl<E> Pending<E> {
    /// An empty set whose first id will be `first` (must be non-zero to keep 0 "never issued").
    pub fn new(first: u64) -> Pending<E> {
        Pending {
            base: first,
            slots: VecDeque::new(),
            next: first,
            in_flight: 0,
        }
    }

    /// Issue the next correlation id for a request carrying `e`.
    pub fn issue(&mut self, e: E) -> u64 {
        let corr = self.next;
        self.next += 1;
        if self.slots.is_empty() {
            self.base = corr;
        }
        self.slots.push_back(Some(e));
        self.in_flight += 1;
        corr
    }

    /// Match a response's correlation id.
    pub fn take(&mut self, corr: u64) -> Match<E> {
        if corr >= self.next || corr == 0 {
            return Match::Unknown;
        }
        if corr < self.base {
            return Match::Duplicate;
        }
        let idx = (corr - self.base) as usize;
        let Some(slot) = self.slots.get_mut(idx) else {
            return Match::Duplicate;
        };
        let Some(e) = slot.take() else {
            return Match::Duplicate;
        };
        self.in_flight -= 1;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        if self.slots.is_empty() {
            self.base = self.next;
        }
        Match::Pending(e)
    }

    /// Requests still unanswered.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The id the next request will get.
    pub fn next_id(&self) -> u64 {
        self.next
    }

    /// Forget every pending request (the connection is gone); returns them, oldest first.
    /// Ids keep increasing, so late answers are still recognised as not pending.
    pub fn drain(&mut self) -> impl Iterator<Item = E> + '_ {
        self.in_flight = 0;
        self.base = self.next;
        self.slots.drain(..).flatten()
    }
}

/// Length of an echo payload: correlation id then desktop id, 8 bytes each, big-endian.
pub const ECHO_PAYLOAD_LEN: usize = 16;

/// The unique payload of echo request `corr` from desktop `desktop`.
pub fn echo_payload(corr: u64, desktop: u64) -> [u8; ECHO_PAYLOAD_LEN] {
    let mut p = [0u8; ECHO_PAYLOAD_LEN];
    p[..8].copy_from_slice(&corr.to_be_bytes());
    p[8..].copy_from_slice(&desktop.to_be_bytes());
    p
}

/// Largest `--payload`: well under the codec's default frame limit (2 MiB).
pub const MAX_ECHO_PAYLOAD: usize = 1024 * 1024;

/// Bytes of the echo body before the payload: key_len(1) "data"(4) type(1) len(4). This fixed
/// layout lets a pre-encoded frame be patched in place.
pub const ECHO_HEADER_LEN: usize = 1 + 4 + 1 + 4;

/// Length of the echo body carrying a payload of `payload` bytes.
pub const fn echo_body_len(payload: usize) -> usize {
    ECHO_HEADER_LEN + payload
}

/// The echo body with the default payload: one `bin` item `data` of [`ECHO_PAYLOAD_LEN`] bytes.
pub const ECHO_BODY_LEN: usize = echo_body_len(ECHO_PAYLOAD_LEN);
/// Offset of the payload inside the echo body.
pub const ECHO_PAYLOAD_OFFSET: usize = ECHO_HEADER_LEN;

/// Filler byte `i` of a payload past its unique first [`ECHO_PAYLOAD_LEN`] bytes: depends on
/// the desktop, so that an answer carrying another desktop's filler is caught too, and not on
/// the request, so that a template's filler is written once.
fn filler(i: usize, desktop: u64) -> u8 {
    (i as u8).wrapping_mul(31) ^ (desktop as u8)
}

/// Write the whole echo body for (`corr`, `desktop`) into `dst`, whose length sets the payload
/// size (`dst.len() - ECHO_HEADER_LEN`, at least [`ECHO_PAYLOAD_LEN`]).
pub fn write_echo_body(dst: &mut [u8], corr: u64, desktop: u64) {
    let payload = dst.len() - ECHO_HEADER_LEN;
    dst[0] = 4;
    dst[1..5].copy_from_slice(msg::key::DATA.as_bytes());
    dst[5] = 0x03;
    dst[6..10].copy_from_slice(&(payload as u32).to_be_bytes());
    for (i, b) in dst[ECHO_HEADER_LEN + ECHO_PAYLOAD_LEN..]
        .iter_mut()
        .enumerate()
    {
        *b = filler(i, desktop);
    }
    patch_echo_body(dst, corr, desktop);
}

/// Stamp the unique part of the payload (request `corr` of `desktop`) into a body written by
/// [`write_echo_body`] for the same desktop: 16 bytes whatever the payload size.
pub fn patch_echo_body(dst: &mut [u8], corr: u64, desktop: u64) {
    dst[ECHO_PAYLOAD_OFFSET..ECHO_PAYLOAD_OFFSET + ECHO_PAYLOAD_LEN]
        .copy_from_slice(&echo_payload(corr, desktop));
}

/// Whether `body` is exactly the echo body of (`corr`, `desktop`) with a `payload`-byte
/// payload. No allocation.
pub fn echo_body_matches(body: &[u8], corr: u64, desktop: u64, payload: usize) -> bool {
    if body.len() != echo_body_len(payload) || payload < ECHO_PAYLOAD_LEN {
        return false;
    }
    let mut head = [0u8; ECHO_HEADER_LEN + ECHO_PAYLOAD_LEN];
    head[0] = 4;
    head[1..5].copy_from_slice(msg::key::DATA.as_bytes());
    head[5] = 0x03;
    head[6..10].copy_from_slice(&(payload as u32).to_be_bytes());
    head[ECHO_HEADER_LEN..].copy_from_slice(&echo_payload(corr, desktop));
    body[..head.len()] == head
        && body[head.len()..]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == filler(i, desktop))
}

/// The verdict on one response frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Matched its request and its content is right.
    Ok,
    /// An error response (flag `ERROR`) of this retry class.
    Error(RetryClass),
    /// Wrong: unknown or duplicate correlation id, wrong message type, or wrong content.
    Wrong(Wrong),
}

/// Why a response is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrong {
    /// No request with that correlation id was ever sent.
    UnknownCorrelation,
    /// The request was already answered.
    Duplicate,
    /// The response's service or message type is not the request's.
    MessageType,
    /// The body is not what the request should get back.
    Content,
}

/// The retry class of an error frame's body; an unreadable code counts as rejected.
pub fn error_class(body: &[u8]) -> RetryClass {
    msg::ErrorBody::read(deskmux_codec::BodyRef::new(body))
        .map(|e| e.code.retry_class())
        .unwrap_or(ErrorCode(0xFFFF).retry_class())
}

/// Judge an echo response against the pending set of desktop `desktop`.
/// Returns the verdict and, when it matched, the pending entry.
pub fn judge_echo<E>(
    pending: &mut Pending<E>,
    head: &Head,
    body: &[u8],
    service: u8,
    desktop: u64,
    payload: usize,
) -> (Verdict, Option<E>) {
    let e = match pending.take(head.correlation) {
        Match::Pending(e) => e,
        Match::Duplicate => return (Verdict::Wrong(Wrong::Duplicate), None),
        Match::Unknown => return (Verdict::Wrong(Wrong::UnknownCorrelation), None),
    };
    if head.flags.has(Flags::ERROR) {
        return (Verdict::Error(error_class(body)), Some(e));
    }
    if head.kind != Kind::Response
        || head.service.to_u8() != service
        || head.msg_type != msg::ixn::ECHO
    {
        return (Verdict::Wrong(Wrong::MessageType), Some(e));
    }
    if !echo_body_matches(body, head.correlation, desktop, payload) {
        return (Verdict::Wrong(Wrong::Content), Some(e));
    }
    (Verdict::Ok, Some(e))
}

/// Request outcome counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    /// Requests written.
    pub sent: u64,
    /// Answered correctly.
    pub ok: u64,
    /// Error responses, class "not sent".
    pub err_not_sent: u64,
    /// Error responses, class "outcome unknown".
    pub err_outcome_unknown: u64,
    /// Error responses, class "rejected".
    pub err_rejected: u64,
    /// Answers with wrong content or message type.
    pub wrong: u64,
    /// Answers with a correlation id never sent.
    pub unknown: u64,
    /// Second answers to the same request.
    pub duplicates: u64,
    /// Requests never answered (pending at the end, or on a connection that died).
    pub lost: u64,
    /// Requests whose intended send time fell inside the measurement window: sent or not.
    #[serde(default)]
    pub due: u64,
    /// Of those, requests never sent: the window ended while they waited (behind the
    /// in-flight cap, a dead connection or loadgen's own lag).
    #[serde(default)]
    pub unsent: u64,
    /// Requests in flight when their connection dropped that were sent again in the resumed
    /// session (PROTOCOL.md §4.6; keyed where they are not idempotent): not lost.
    #[serde(default)]
    pub retried_after_resume: u64,
}

impl Tally {
    /// Count one verdict.
    pub fn count(&mut self, v: Verdict) {
        match v {
            Verdict::Ok => self.ok += 1,
            Verdict::Error(RetryClass::NotSent) => self.err_not_sent += 1,
            Verdict::Error(RetryClass::OutcomeUnknown) => self.err_outcome_unknown += 1,
            Verdict::Error(_) => self.err_rejected += 1,
            Verdict::Wrong(Wrong::Duplicate) => self.duplicates += 1,
            Verdict::Wrong(Wrong::UnknownCorrelation) => self.unknown += 1,
            Verdict::Wrong(_) => self.wrong += 1,
        }
    }

    /// All error responses.
    pub fn errors(&self) -> u64 {
        self.err_not_sent + self.err_outcome_unknown + self.err_rejected
    }

    /// All wrongly answered requests (wrong content/type, unknown ids, duplicates).
    pub fn wrong_total(&self) -> u64 {
        self.wrong + self.unknown + self.duplicates
    }

    /// Whether the run failed verification: anything lost or answered wrongly.
    pub fn failed(&self) -> bool {
        self.lost > 0 || self.wrong_total() > 0
    }

    /// Add another tally.
    pub fn merge(&mut self, o: &Tally) {
        self.sent += o.sent;
        self.ok += o.ok;
        self.err_not_sent += o.err_not_sent;
        self.err_outcome_unknown += o.err_outcome_unknown;
        self.err_rejected += o.err_rejected;
        self.wrong += o.wrong;
        self.unknown += o.unknown;
        self.duplicates += o.duplicates;
        self.lost += o.lost;
        self.retried_after_resume += o.retried_after_resume;
        self.due += o.due;
        self.unsent += o.unsent;
    }
}

/// Gap and duplicate tracking for one subscription's sequence numbers (1, 2, 3, …).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqTracker {
    /// Highest sequence number seen (or the baseline from the subscribe response).
    last: Option<u64>,
    /// Events received.
    pub received: u64,
    /// Sequence numbers skipped.
    pub gaps: u64,
    /// Events at or below the highest seen.
    pub duplicates: u64,
}

impl SeqTracker {
    /// Set the baseline from a `SUBSCRIBE` response (`seq` = last published so far). Ignored
    /// if events already arrived (they raced ahead of the response on a shared subscription).
    pub fn baseline(&mut self, seq: u64) {
        if self.last.is_none() {
            self.last = Some(seq);
        }
    }

    /// Observe an event's sequence number.
    pub fn observe(&mut self, seq: u64) {
        self.received += 1;
        match self.last {
            None => self.last = Some(seq),
            Some(last) if seq == last + 1 => self.last = Some(seq),
            Some(last) if seq > last + 1 => {
                self.gaps += seq - last - 1;
                self.last = Some(seq);
            }
            Some(_) => self.duplicates += 1,
        }
    }

    /// The highest sequence number seen.
    pub fn last(&self) -> Option<u64> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deskmux_codec::{Frame, Service, error_response};

    fn echo_resp(corr: u64, desktop: u64) -> Frame {
        let mut body = [0u8; ECHO_BODY_LEN];
        write_echo_body(&mut body, corr, desktop);
        let mut h = Head::new(Kind::Response, Service::Interaction, msg::ixn::ECHO);
        h.correlation = corr;
        Frame::with_body(h, &body).unwrap()
    }

    #[test]
    fn echo_body_is_a_valid_body() {
        let mut body = [0u8; ECHO_BODY_LEN];
        write_echo_body(&mut body, 7, 9);
        let b = deskmux_codec::BodyRef::new(&body);
        b.validate().unwrap();
        assert_eq!(b.bin(msg::key::DATA).unwrap(), &echo_payload(7, 9));
        assert!(echo_body_matches(&body, 7, 9, ECHO_PAYLOAD_LEN));
        assert!(!echo_body_matches(&body, 7, 8, ECHO_PAYLOAD_LEN));
        assert!(!echo_body_matches(&body, 8, 9, ECHO_PAYLOAD_LEN));
        assert!(!echo_body_matches(&body[1..], 7, 9, ECHO_PAYLOAD_LEN));
    }

    #[test]
    fn larger_payloads_are_valid_bodies_checked_to_the_last_byte() {
        let mut body = vec![0u8; echo_body_len(1000)];
        write_echo_body(&mut body, 7, 9);
        let b = deskmux_codec::BodyRef::new(&body);
        b.validate().unwrap();
        assert_eq!(b.bin(msg::key::DATA).unwrap().len(), 1000);
        assert!(echo_body_matches(&body, 7, 9, 1000));
        assert!(!echo_body_matches(&body, 7, 9, 999), "length is checked");
        patch_echo_body(&mut body, 8, 9);
        assert!(
            echo_body_matches(&body, 8, 9, 1000),
            "a patched template is whole"
        );
        let last = body.len() - 1;
        body[last] ^= 1;
        assert!(
            !echo_body_matches(&body, 8, 9, 1000),
            "the filler is checked"
        );
    }

    #[test]
    fn pending_out_of_order_and_drain() {
        let mut p: Pending<u32> = Pending::new(1);
        let a = p.issue(10);
        let b = p.issue(20);
        let c = p.issue(30);
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(p.take(2), Match::Pending(20));
        assert_eq!(p.take(2), Match::Duplicate);
        assert_eq!(p.take(1), Match::Pending(10));
        assert_eq!(p.take(1), Match::Duplicate);
        assert_eq!(p.take(99), Match::Unknown);
        assert_eq!(p.take(0), Match::Unknown);
        assert_eq!(p.in_flight(), 1);
        let lost: Vec<u32> = p.drain().collect();
        assert_eq!(lost, vec![30]);
        assert_eq!(p.in_flight(), 0);
        // A late answer to a drained request is not pending any more.
        assert_eq!(p.take(3), Match::Duplicate);
        assert_eq!(p.issue(40), 4);
        assert_eq!(p.take(4), Match::Pending(40));
    }

    #[test]
    fn pending_does_not_grow_in_steady_state() {
        let mut p: Pending<()> = Pending::new(1);
        for _ in 0..10_000 {
            let a = p.issue(());
            let b = p.issue(());
            assert_eq!(p.take(b), Match::Pending(()));
            assert_eq!(p.take(a), Match::Pending(()));
        }
        assert!(p.slots.capacity() < 16);
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn verdicts_ok_wrong_lost_duplicate_error() {
        let desktop = 42;
        let svc = Service::Interaction.to_u8();
        let mut p: Pending<()> = Pending::new(1);
        let mut t = Tally::default();
        let c1 = p.issue(());
        let c2 = p.issue(());
        let c3 = p.issue(());
        let c4 = p.issue(());
        let _c5 = p.issue(()); // never answered: lost

        // Right answer.
        let f = echo_resp(c1, desktop);
        let (v, _) = judge_echo(
            &mut p,
            f.head(),
            f.body_bytes(),
            svc,
            desktop,
            ECHO_PAYLOAD_LEN,
        );
        assert_eq!(v, Verdict::Ok);
        t.count(v);
        // The same answer again: duplicate.
        let (v, _) = judge_echo(
            &mut p,
            f.head(),
            f.body_bytes(),
            svc,
            desktop,
            ECHO_PAYLOAD_LEN,
        );
        assert_eq!(v, Verdict::Wrong(Wrong::Duplicate));
        t.count(v);
        // Answer with another request's payload: wrong content.
        let mut f = echo_resp(c3, desktop);
        f.set_correlation(c2);
        let (v, _) = judge_echo(
            &mut p,
            f.head(),
            f.body_bytes(),
            svc,
            desktop,
            ECHO_PAYLOAD_LEN,
        );
        assert_eq!(v, Verdict::Wrong(Wrong::Content));
        t.count(v);
        // Unknown correlation id.
        let f = echo_resp(999, desktop);
        let (v, _) = judge_echo(
            &mut p,
            f.head(),
            f.body_bytes(),
            svc,
            desktop,
            ECHO_PAYLOAD_LEN,
        );
        assert_eq!(v, Verdict::Wrong(Wrong::UnknownCorrelation));
        t.count(v);
        // Error response: counted by class, not ok.
        let mut h = Head::new(Kind::Request, Service::Interaction, msg::ixn::ECHO);
        h.correlation = c3;
        let e = error_response(&h, ErrorCode::OVERLOADED, "busy");
        let (v, _) = judge_echo(
            &mut p,
            e.head(),
            e.body_bytes(),
            svc,
            desktop,
            ECHO_PAYLOAD_LEN,
        );
        assert_eq!(v, Verdict::Error(RetryClass::NotSent));
        t.count(v);
        // Wrong message type.
        let mut f = echo_resp(c4, desktop);
        let mut h = *f.head();
        h.msg_type = msg::ixn::SUBMIT;
        f = Frame::with_body(h, f.body_bytes()).unwrap();
        let (v, _) = judge_echo(
            &mut p,
            f.head(),
            f.body_bytes(),
            svc,
            desktop,
            ECHO_PAYLOAD_LEN,
        );
        assert_eq!(v, Verdict::Wrong(Wrong::MessageType));
        t.count(v);
        // The end: what is still pending is lost.
        t.lost += p.drain().count() as u64;
        assert_eq!(t.ok, 1);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.wrong, 2);
        assert_eq!(t.unknown, 1);
        assert_eq!(t.err_not_sent, 1);
        assert_eq!(t.errors(), 1);
        assert_eq!(t.lost, 1);
        assert!(t.failed());
        let clean = Tally {
            ok: 5,
            err_rejected: 1,
            ..Tally::default()
        };
        assert!(!clean.failed(), "errors alone do not fail verification");
    }

    #[test]
    fn seq_gaps_and_duplicates() {
        let mut s = SeqTracker::default();
        s.baseline(10);
        s.observe(11);
        s.observe(12);
        s.observe(15); // 13, 14 missed
        s.observe(15); // duplicate
        s.observe(14); // late: duplicate (already counted as a gap)
        s.observe(16);
        assert_eq!(s.received, 6);
        assert_eq!(s.gaps, 2);
        assert_eq!(s.duplicates, 2);
        assert_eq!(s.last(), Some(16));
        // An event before the subscribe response sets the baseline; the response is ignored.
        let mut s = SeqTracker::default();
        s.observe(5);
        s.baseline(3);
        s.observe(6);
        assert_eq!((s.gaps, s.duplicates), (0, 0));
    }
}
