//! The UCS role: contacts and interaction history (PROTOCOL.md §8).
//!
//! A request is parsed on the connection task (bad bodies are answered there, touching nothing),
//! then handed to the DB worker as one [`Work`] item. The response is built inside the batch
//! transaction and sent only after the group commit ([`crate::db`]), so every write is
//! acknowledged once durable. Every storage call carries the session's tenant: another tenant's
//! contact is `NOT_FOUND`.

use bytes::Bytes;
use deskmux_codec::msg::{key, ucs};
use deskmux_codec::{BodyError, ErrorCode, Frame, Head};

use crate::db::{Db, Finish, Work};
use crate::storage::{Store, StoreError};
use crate::wire::{self, Pairs, Peer};

/// Largest history text accepted (PROTOCOL.md §8).
pub const MAX_TEXT: usize = 1024 * 1024;
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
                    wire::error(&req, ErrorCode::INTERNAL, "storage error")
                }
                (Err(_), _) => wire::error(&req, ErrorCode::INTERNAL, "commit failed"),
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

/// Handle one UCS request (not ECHO: the connection answers that itself). Replies exactly once.
pub fn handle(db: &Db, tenant: u32, frame: &Frame, peer: Peer) {
    let req = *frame.head();
    match parse(tenant, frame) {
        Ok(op) => {
            let p = peer.clone();
            if !db.submit(work(req, peer, op)) {
                p.reply(wire::error(&req, ErrorCode::UNAVAILABLE, "storage stopped"));
            }
        }
        Err(Fail::Code(c, m)) => peer.reply(wire::error(&req, c, m)),
        Err(Fail::Store(_)) => peer.reply(wire::error(&req, ErrorCode::INTERNAL, "storage")),
    }
}

type Op = Box<dyn FnOnce(&mut dyn Store) -> OpResult + Send>;

fn attrs_of(b: &deskmux_codec::BodyRef<'_>) -> Result<Pairs, Fail> {
    match b.opt_list(key::ATTRS)? {
        Some(l) => Ok(wire::read_pairs(l, key::ATTRS)?),
        None => Ok(Vec::new()),
    }
}

/// Drop empty values and repeated keys (first wins), as a merge into nothing would.
fn normalise(p: Pairs) -> Pairs {
    let mut out = Vec::with_capacity(p.len());
    wire::merge_pairs(&mut out, p);
    out
}

fn parse(tenant: u32, frame: &Frame) -> Result<Op, Fail> {
    let req = *frame.head();
    let b = frame.body();
    b.validate()?;
    let op: Op = match req.msg_type {
        ucs::CONTACT_CREATE => {
            let attrs = normalise(attrs_of(&b)?);
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
                let mut attrs = wire::read_pairs(deskmux_codec::BodyRef::new(&cur), key::ATTRS)
                    .map_err(|e| Fail::Store(StoreError::Other(format!("stored attrs: {e}"))))?;
                wire::merge_pairs(&mut attrs, upd);
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
            let mut attrs = normalise(attrs_of(&b)?);
            Box::new(move |s| {
                for (k, v) in [(key::EMAIL, &email), (key::PHONE, &phone)] {
                    if let Some(v) = v {
                        if let Some(c) = s.contact_find(tenant, k, v, 1)?.first() {
                            let id = c.id;
                            return Ok(wire::response(&req, |w| {
                                w.int(key::CONTACT, id);
                                w.int(key::CREATED, 0);
                                Ok(())
                            }));
                        }
                    }
                }
                let mut ids = Vec::new();
                if let Some(e) = email {
                    ids.push((key::EMAIL.to_string(), e));
                }
                if let Some(p) = phone {
                    ids.push((key::PHONE.to_string(), p));
                }
                wire::merge_pairs(&mut attrs, ids);
                let id = s.contact_create(tenant, &wire::encode_pairs(&attrs), &attrs)?;
                Ok(wire::response(&req, |w| {
                    w.int(key::CONTACT, id);
                    w.int(key::CREATED, 1);
                    Ok(())
                }))
            })
        }
        ucs::CONTACT_SEARCH => {
            let k = b.str(key::KEY)?.to_string();
            let v = b.str(key::VALUE)?.to_string();
            let lim = limit(b.opt_int(key::LIMIT)?);
            Box::new(move |s| {
                let rows = s.contact_find(tenant, &k, &v, lim)?;
                Ok(wire::response(&req, |w| {
                    w.list(key::CONTACTS, |w| {
                        for r in &rows {
                            w.list(key::CONTACT, |w| {
                                w.int(key::CONTACT, r.id);
                                w.raw_list(key::ATTRS, &r.attrs)?;
                                Ok(())
                            })?;
                        }
                        Ok(())
                    })?;
                    Ok(())
                }))
            })
        }
        ucs::HISTORY_INSERT => {
            let contact = id_of(&b, key::CONTACT)?;
            let interaction = b.opt_int(key::INTERACTION)?.unwrap_or(0);
            let subject = b.opt_str(key::SUBJECT)?.unwrap_or("").to_string();
            let text = b.str(key::TEXT)?;
            if text.len() > MAX_TEXT {
                return Err(Fail::Code(ErrorCode::MALFORMED, "text over 1 MiB"));
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
            Box::new(move |s| {
                let Some(rows) = s.history_list(tenant, contact, lim)? else {
                    return Err(Fail::Code(ErrorCode::NOT_FOUND, "no such contact"));
                };
                Ok(wire::response(&req, |w| {
                    w.list(key::ITEMS, |w| {
                        for r in &rows {
                            w.list("item", |w| {
                                w.int(key::HISTORY, r.id);
                                w.int(key::INTERACTION, r.interaction);
                                w.str(key::SUBJECT, &r.subject)?;
                                w.int("created_us", r.created_us);
                                w.int("len", r.len);
                                Ok(())
                            })?;
                        }
                        Ok(())
                    })?;
                    Ok(())
                }))
            })
        }
        ucs::CONTENT_GET => {
            let id = id_of(&b, key::HISTORY)?;
            Box::new(move |s| match s.content_get(tenant, id)? {
                Some(text) => Ok(wire::response(&req, |w| {
                    w.int(key::HISTORY, id);
                    w.str(key::TEXT, &text)?;
                    Ok(())
                })),
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
