//! The UCS role: contacts and interaction history (PROTOCOL.md §8).
//!
//! A request is parsed on the connection task (bad bodies are answered there, touching nothing),
//! then handed to the DB worker as one [`Work`] item. The response is built inside the batch
//! transaction and sent only after the group commit ([`crate::db`]), so every write is
//! acknowledged once durable. Every storage call carries the session's tenant: another tenant's
//! contact is `NOT_FOUND`.
//!
//! Bounded work: lists and sizes from the wire are checked against [`crate::limits`] here, on
//! the connection task, before the DB thread sees them; answers that list things
//! (`CONTACT_SEARCH`, `HISTORY_LIST`) and texts (`CONTENT_GET`) are cut to the session's
//! `max_frame` and carry a `next` cursor when more remain (PROTOCOL.md §8.1).

use bytes::{Bytes, BytesMut};
use deskmux_codec::msg::{key, ucs};
use deskmux_codec::{BodyError, BodyRef, BodyWriter, ErrorCode, Frame, HEAD_LEN, Head};

use crate::db::{Db, Finish, Work};
use crate::limits::{self, ListKind, Refused};
use crate::storage::{Store, StoreError};
use crate::wire::{self, Pairs, Peer};

/// Largest history text accepted (PROTOCOL.md §8).
pub const MAX_TEXT: usize = limits::MAX_TEXT;
/// Default and largest `limit` of searches and history lists.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 10_000;

/// Why an operation failed.
#[derive(Debug)]
pub enum Fail {
    /// A wire error to send back.
    Code(ErrorCode, &'static str),
    /// Storage failed: `INTERNAL`.
    Store(StoreError),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl From<BodyError> for Fail {
    fn from(_: BodyError) -> Self {
        Fail::Code(ErrorCode::MALFORMED, "malformed body")
    }
}

impl From<Refused> for Fail {
    fn from(r: Refused) -> Self {
        Fail::Code(ErrorCode::MALFORMED, r.message())
    }
}

type OpResult = Result<Bytes, Fail>;

/// Wrap an operation as DB work that answers `peer` after the commit.
pub fn work(
    req: Head,
    peer: Peer,
    op: impl FnOnce(&mut dyn Store) -> OpResult + Send + 'static,
) -> Work {
    Box::new(move |s: &mut dyn Store| -> Finish {
        let r = op(s);
        Box::new(move |committed: Result<(), &StoreError>| {
            let out = match (committed, r) {
                (Ok(()), Ok(b)) => b,
                (Ok(()), Err(Fail::Code(c, m))) => wire::error(&req, c, m),
                (Ok(()), Err(Fail::Store(e))) => {
                    tracing::error!("ucs storage error: {e}");
                    wire::storage_error(&req, &e)
                }
                (Err(e), _) => wire::storage_error(&req, e),
            };
            peer.reply(out);
        })
    })
}

fn limit(v: Option<i64>) -> u32 {
    // Clamped to 1..=MAX_LIMIT, so the cast is exact.
    v.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) as u32
}

fn id_of(b: &deskmux_codec::BodyRef<'_>, k: &'static str) -> Result<i64, Fail> {
    Ok(b.int(k)?)
}

/// Handle one UCS request of session `(tenant, session)` (not ECHO: the connection answers
/// that itself), not to be run after `deadline`. Replies exactly once; no answer is longer
/// than `max_frame`. The session picks the database connection (see [`Db::try_submit_for`]).
pub fn handle(
    db: &Db,
    (tenant, session): (u32, u64),
    max_frame: u32,
    frame: &Frame,
    peer: Peer,
    deadline: std::time::Instant,
) {
    let req = *frame.head();
    match parse(tenant, max_frame as usize, frame) {
        Ok(op) => {
            let p = peer.clone();
            // The operation holds about what the frame held (its values, parsed and copied).
            let bytes = frame.as_bytes().len();
            match db.try_submit_for(session, work(req, peer, op), Some(deadline), bytes) {
                Ok(()) => {}
                Err(crate::db::Full { stopped: false }) => p.reply(wire::error(
                    &req,
                    ErrorCode::OVERLOADED,
                    "storage queue full (db_queue)",
                )),
                Err(crate::db::Full { stopped: true }) => {
                    p.reply(wire::error(&req, ErrorCode::UNAVAILABLE, "storage stopped"))
                }
            }
        }
        Err(Fail::Code(c, m)) => peer.reply(wire::error(&req, c, m)),
        Err(Fail::Store(_)) => peer.reply(wire::error(&req, ErrorCode::INTERNAL, "storage")),
    }
}

type Op = Box<dyn FnOnce(&mut dyn Store) -> OpResult + Send>;

/// The request's `attrs`, checked against the caps (absent: empty).
fn attrs_of(b: &BodyRef<'_>) -> Result<Pairs, Fail> {
    match b.opt_list(key::ATTRS)? {
        Some(l) => Ok(limits::read_pairs(l, ListKind::Attrs)?),
        None => Ok(Vec::new()),
    }
}

/// Bytes one list answer may spend on its items: `max_frame` less the head, the list's own
/// item header (key, type, length) and room for a `next` int item.
fn page_budget(max_frame: usize, list_key: &str) -> usize {
    let list_header = 1 + list_key.len() + 1 + 4;
    let next_item = 1 + key::NEXT.len() + 1 + 8;
    max_frame.saturating_sub(HEAD_LEN + list_header + next_item)
}

/// The cursor a paged request continues from (absent: from the start).
fn after_of(b: &BodyRef<'_>) -> Result<Option<i64>, Fail> {
    Ok(b.opt_int(key::AFTER)?)
}

/// Encode rows as list items, as many as fit in `budget` bytes and `limit` items. Returns the
/// items, how many rows they hold and the last id taken.
fn fill_page<R>(
    rows: &[R],
    limit: usize,
    budget: usize,
    id: impl Fn(&R) -> i64,
    mut item: impl FnMut(&mut BodyWriter<'_>, &R) -> Result<(), BodyError>,
) -> Result<(BytesMut, usize, Option<i64>), BodyError> {
    let mut items = BytesMut::new();
    let mut taken = 0;
    let mut last = None;
    for r in rows.iter().take(limit) {
        let mark = items.len();
        item(&mut BodyWriter::new(&mut items), r)?;
        if items.len() > budget {
            items.truncate(mark);
            break;
        }
        taken += 1;
        last = Some(id(r));
    }
    Ok((items, taken, last))
}

/// A page answer: the `list_key` list of `items`, and `next` if rows remain past the page.
fn page_response(
    req: &Head,
    list_key: &'static str,
    items: &[u8],
    more: bool,
    last: Option<i64>,
) -> OpResult {
    let next = match (more, last) {
        (false, _) => None,
        (true, Some(l)) => Some(l),
        // Unreachable for data stored under today's caps (`MIN_MAX_FRAME` lets one item of
        // any size they allow fit); a row stored before them may be bigger than a frame.
        (true, None) => {
            return Err(Fail::Code(
                ErrorCode::RESPONSE_TOO_LARGE,
                "one item is larger than max_frame",
            ));
        }
    };
    Ok(wire::response(req, |w| {
        w.raw_list(list_key, items)?;
        if let Some(n) = next {
            w.int(key::NEXT, n);
        }
        Ok(())
    }))
}

/// The chunk of `text` starting at byte `from` that fits `budget` bytes, cut on a character
/// boundary, and where the next chunk starts if any remains.
fn chunk(text: &str, from: usize, budget: usize) -> Option<(&str, Option<usize>)> {
    if from > text.len() || !text.is_char_boundary(from) {
        return None;
    }
    let mut end = from.saturating_add(budget).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let next = (end < text.len()).then_some(end);
    Some((&text[from..end], next))
}

fn parse(tenant: u32, max_frame: usize, frame: &Frame) -> Result<Op, Fail> {
    let req = *frame.head();
    // Walked once already by the connection (conn.rs, step 7).
    let b = frame.body();
    let op: Op = match req.msg_type {
        ucs::CONTACT_CREATE => {
            let attrs = limits::normalise(attrs_of(&b)?);
            Box::new(move |s| {
                let id = s.contact_create(tenant, &wire::encode_pairs(&attrs), &attrs)?;
                Ok(wire::response(&req, |w| {
                    w.int(key::CONTACT, id);
                    Ok(())
                }))
            })
        }
        ucs::CONTACT_GET => {
            let id = id_of(&b, key::CONTACT)?;
            Box::new(move |s| match s.contact_get(tenant, id)? {
                Some(attrs) => Ok(wire::response(&req, |w| {
                    w.int(key::CONTACT, id);
                    w.raw_list(key::ATTRS, &attrs)?;
                    Ok(())
                })),
                None => Err(Fail::Code(ErrorCode::NOT_FOUND, "no such contact")),
            })
        }
        ucs::CONTACT_UPDATE => {
            let id = id_of(&b, key::CONTACT)?;
            let upd = attrs_of(&b)?;
            Box::new(move |s| {
                let Some(cur) = s.contact_get(tenant, id)? else {
                    return Err(Fail::Code(ErrorCode::NOT_FOUND, "no such contact"));
                };
                let mut attrs = wire::read_pairs(BodyRef::new(&cur), key::ATTRS)
                    .map_err(|e| Fail::Store(StoreError::Other(format!("stored attrs: {e}"))))?;
                limits::merge_pairs(&mut attrs, upd);
                // The merged list is held to the caps too, or updates could grow it forever.
                limits::check_pairs(&attrs, ListKind::Attrs)?;
                s.contact_put(tenant, id, &wire::encode_pairs(&attrs), &attrs)?;
                Ok(wire::response(&req, |w| {
                    w.int(key::CONTACT, id);
                    Ok(())
                }))
            })
        }
        ucs::CONTACT_DELETE => {
            let id = id_of(&b, key::CONTACT)?;
            Box::new(move |s| {
                if s.contact_delete(tenant, id)? {
                    Ok(wire::ok(&req))
                } else {
                    Err(Fail::Code(ErrorCode::NOT_FOUND, "no such contact"))
                }
            })
        }
        ucs::CONTACT_IDENTIFY => {
            let email = b
                .opt_str(key::EMAIL)?
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            let phone = b
                .opt_str(key::PHONE)?
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            if email.is_none() && phone.is_none() {
                return Err(Fail::Code(
                    ErrorCode::MALFORMED,
                    "identify needs email or phone",
                ));
            }
            // The contact it would create, built and checked here, off the DB thread.
            let mut attrs = limits::normalise(attrs_of(&b)?);
            let mut ids = Vec::new();
            if let Some(e) = &email {
                ids.push((key::EMAIL.to_string(), e.clone()));
            }
            if let Some(p) = &phone {
                ids.push((key::PHONE.to_string(), p.clone()));
            }
            limits::merge_pairs(&mut attrs, ids);
            limits::check_pairs(&attrs, ListKind::Attrs)?;
            Box::new(move |s| {
                for (k, v) in [(key::EMAIL, &email), (key::PHONE, &phone)] {
                    if let Some(v) = v
                        && let Some(c) = s.contact_find(tenant, k, v, 0, 1, usize::MAX)?.first()
                    {
                        let id = c.id;
                        return Ok(wire::response(&req, |w| {
                            w.int(key::CONTACT, id);
                            w.int(key::CREATED, 0);
                            Ok(())
                        }));
                    }
                }
                let id = s.contact_create(tenant, &wire::encode_pairs(&attrs), &attrs)?;
                Ok(wire::response(&req, |w| {
                    w.int(key::CONTACT, id);
                    w.int(key::CREATED, 1);
                    Ok(())
                }))
            })
        }
        ucs::CONTACT_SEARCH => {
            let k = b.str(key::KEY)?;
            let v = b.str(key::VALUE)?;
            // No stored key or value is longer: refuse rather than search.
            if k.len() > limits::MAX_KEY {
                return Err(Fail::Code(
                    ErrorCode::MALFORMED,
                    limits::SEARCH_KEY_TOO_LONG,
                ));
            }
            if v.len() > limits::MAX_VALUE {
                return Err(Fail::Code(
                    ErrorCode::MALFORMED,
                    limits::SEARCH_VALUE_TOO_LONG,
                ));
            }
            let (k, v) = (k.to_string(), v.to_string());
            let lim = limit(b.opt_int(key::LIMIT)?);
            let after = after_of(&b)?.unwrap_or(0);
            let budget = page_budget(max_frame, key::CONTACTS);
            Box::new(move |s| {
                // One row past the limit tells whether more remain.
                let rows = s.contact_find(tenant, &k, &v, after, lim + 1, budget)?;
                let (items, taken, last) = fill_page(
                    &rows,
                    lim as usize,
                    budget,
                    |r| r.id,
                    |w, r| {
                        w.list(key::CONTACT, |w| {
                            w.int(key::CONTACT, r.id);
                            w.raw_list(key::ATTRS, &r.attrs)?;
                            Ok(())
                        })?;
                        Ok(())
                    },
                )?;
                page_response(&req, key::CONTACTS, &items, rows.len() > taken, last)
            })
        }
        ucs::HISTORY_INSERT => {
            let contact = id_of(&b, key::CONTACT)?;
            let interaction = b.opt_int(key::INTERACTION)?.unwrap_or(0);
            let subject = b.opt_str(key::SUBJECT)?.unwrap_or("");
            if subject.len() > limits::MAX_SUBJECT {
                return Err(Fail::Code(ErrorCode::MALFORMED, limits::SUBJECT_TOO_LONG));
            }
            let subject = subject.to_string();
            let text = b.str(key::TEXT)?;
            if text.len() > MAX_TEXT {
                return Err(Fail::Code(ErrorCode::MALFORMED, limits::TEXT_TOO_LONG));
            }
            let text = text.to_string();
            Box::new(move |s| {
                match s.history_insert(
                    tenant,
                    contact,
                    interaction,
                    &subject,
                    &text,
                    wire::now_us(),
                )? {
                    Some(id) => Ok(wire::response(&req, |w| {
                        w.int(key::HISTORY, id);
                        Ok(())
                    })),
                    None => Err(Fail::Code(ErrorCode::NOT_FOUND, "no such contact")),
                }
            })
        }
        ucs::HISTORY_LIST => {
            let contact = id_of(&b, key::CONTACT)?;
            let lim = limit(b.opt_int(key::LIMIT)?);
            let before = after_of(&b)?;
            let budget = page_budget(max_frame, key::ITEMS);
            Box::new(move |s| {
                let Some(rows) = s.history_list(tenant, contact, before, lim + 1, budget)? else {
                    return Err(Fail::Code(ErrorCode::NOT_FOUND, "no such contact"));
                };
                let (items, taken, last) = fill_page(
                    &rows,
                    lim as usize,
                    budget,
                    |r| r.id,
                    |w, r| {
                        w.list("item", |w| {
                            w.int(key::HISTORY, r.id);
                            w.int(key::INTERACTION, r.interaction);
                            w.str(key::SUBJECT, &r.subject)?;
                            w.int("created_us", r.created_us);
                            w.int("len", r.len);
                            Ok(())
                        })?;
                        Ok(())
                    },
                )?;
                page_response(&req, key::ITEMS, &items, rows.len() > taken, last)
            })
        }
        ucs::CONTENT_GET => {
            let id = id_of(&b, key::HISTORY)?;
            let from = after_of(&b)?.unwrap_or(0);
            let Ok(from) = usize::try_from(from) else {
                return Err(Fail::Code(ErrorCode::MALFORMED, "after: negative offset"));
            };
            // Room for the text: the frame less the head, `history` (int), the text's item
            // header and `next` (int).
            let budget = max_frame.saturating_sub(
                HEAD_LEN
                    + (1 + key::HISTORY.len() + 1 + 8)
                    + (1 + key::TEXT.len() + 1 + 4)
                    + (1 + key::NEXT.len() + 1 + 8),
            );
            Box::new(move |s| match s.content_get(tenant, id)? {
                Some(text) => {
                    let Some((part, next)) = chunk(&text, from, budget) else {
                        return Err(Fail::Code(
                            ErrorCode::MALFORMED,
                            "after: not a chunk boundary of this text",
                        ));
                    };
                    Ok(wire::response(&req, |w| {
                        w.int(key::HISTORY, id);
                        w.str(key::TEXT, part)?;
                        if let Some(n) = next {
                            // Cannot truncate: n <= the text's length, at most a few MiB.
                            w.int(key::NEXT, i64::try_from(n).unwrap_or(i64::MAX));
                        }
                        Ok(())
                    }))
                }
                None => Err(Fail::Code(ErrorCode::NOT_FOUND, "no such history record")),
            })
        }
        _ => {
            return Err(Fail::Code(
                ErrorCode::UNKNOWN_MESSAGE,
                "unknown UCS message",
            ));
        }
    };
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_text_on_char_boundaries() {
        let text = "aé€😀".repeat(50);
        for budget in [4usize, 5, 7, 64, 1000] {
            let mut from = 0;
            let mut got = String::new();
            let mut steps = 0;
            loop {
                let (part, next) = chunk(&text, from, budget).unwrap();
                assert!(part.len() <= budget);
                assert!(!part.is_empty());
                got.push_str(part);
                steps += 1;
                assert!(steps <= text.len());
                match next {
                    Some(n) => from = n,
                    None => break,
                }
            }
            assert_eq!(got, text);
        }
        assert!(chunk(&text, 2, 10).is_none(), "inside a character");
        assert!(chunk(&text, text.len() + 1, 10).is_none());
        assert_eq!(chunk(&text, text.len(), 10), Some(("", None)));
    }
}
