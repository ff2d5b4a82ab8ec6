//! Caps on everything a request can make the server store or compute over, and the merge of
//! property lists through a map.
//!
//! Why constants and not `Config` fields: these caps are part of the protocol contract
//! (PROTOCOL.md §8 lists them), so a client can know in advance what every server accepts, and
//! the same data stays valid when it moves between instances (a warm standby with another
//! config, a restore). They also bound what one page of `CONTACT_SEARCH` or `HISTORY_LIST`
//! item can weigh, which is what lets `config.rs` guarantee that one item always fits into
//! `max_frame` ([`MIN_MAX_FRAME`]). What an operator tunes (`max_frame`) stays in the config.
//!
//! Every refusal is `MALFORMED` with a message that names the cap; the messages are literals
//! (the error paths carry `&'static str`), and a unit test checks each names its constant.
//!
//! Every check here runs before any per-item work: a list's encoded size is known from its
//! length prefix, so a 2 MiB list is refused in O(1), and reading a list stops at the first item
//! past the count cap. The merge is O(n + m) through a `HashMap` instead of a scan per key.

use std::collections::HashMap;

use deskmux_codec::{BodyError, BodyRef, Value};

use crate::wire::Pairs;

/// Most items in one property list (`props`, `attrs`), in a request and after a merge.
pub const MAX_ITEMS: usize = 256;
/// Longest property key, bytes.
pub const MAX_KEY: usize = 128;
/// Longest property value, bytes.
pub const MAX_VALUE: usize = 16 * 1024;
/// Largest encoded property list (the `list` value's content), in a request and after a merge.
pub const MAX_LIST_BYTES: usize = 64 * 1024;
/// Longest queue name, bytes (a topic `queue:NAME` is bounded by it too).
pub const MAX_QUEUE: usize = 128;
/// Longest history subject, bytes.
pub const MAX_SUBJECT: usize = 1024;
/// Longest history text, bytes (PROTOCOL.md §8). `CONTENT_GET` hands texts out in chunks that
/// fit `max_frame`, so this bounds storage, not the answer size.
pub const MAX_TEXT: usize = 1024 * 1024;
/// Smallest `max_frame` a server may be configured with: one contact with a full attribute list
/// ([`MAX_LIST_BYTES`]), one `INVITE` with full properties, or one history item must always fit
/// in a single frame, or paging could not make progress.
pub const MIN_MAX_FRAME: u32 = 128 * 1024;

/// Which property list a cap was hit on (it names the list in the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// Interaction properties (`props`).
    Props,
    /// Contact attributes (`attrs`).
    Attrs,
}

/// Why a request was refused; every case is answered `MALFORMED` with [`Refused::message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The body does not parse.
    #[error("malformed body")]
    Body,
    /// A cap was passed; the message names it.
    #[error("{0}")]
    Cap(&'static str),
}

impl Refused {
    /// The message to send back.
    pub fn message(self) -> &'static str {
        match self {
            Refused::Body => "malformed body",
            Refused::Cap(m) => m,
        }
    }
}

impl From<BodyError> for Refused {
    fn from(_: BodyError) -> Self {
        Refused::Body
    }
}

/// What is over a property-list cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    Items,
    Key,
    Value,
    Bytes,
}

fn cap(list: ListKind, over: Over) -> Refused {
    // Literals, so the error paths can stay `&'static str`; `messages_name_their_caps` checks
    // them against the constants.
    Refused::Cap(match (list, over) {
        (ListKind::Props, Over::Items) => "props: more than 256 items",
        (ListKind::Props, Over::Key) => "props: a key longer than 128 bytes",
        (ListKind::Props, Over::Value) => "props: a value longer than 16384 bytes",
        (ListKind::Props, Over::Bytes) => "props: more than 65536 bytes encoded",
        (ListKind::Attrs, Over::Items) => "attrs: more than 256 items",
        (ListKind::Attrs, Over::Key) => "attrs: a key longer than 128 bytes",
        (ListKind::Attrs, Over::Value) => "attrs: a value longer than 16384 bytes",
        (ListKind::Attrs, Over::Bytes) => "attrs: more than 65536 bytes encoded",
    })
}

/// Refusal for a queue name over [`MAX_QUEUE`].
pub const QUEUE_TOO_LONG: &str = "queue: longer than 128 bytes";
/// Refusal for a topic whose queue name is over [`MAX_QUEUE`].
pub const TOPIC_TOO_LONG: &str = "topic: queue name longer than 128 bytes";
/// Refusal for a subject over [`MAX_SUBJECT`].
pub const SUBJECT_TOO_LONG: &str = "subject: longer than 1024 bytes";
/// Refusal for a text over [`MAX_TEXT`].
pub const TEXT_TOO_LONG: &str = "text: longer than 1048576 bytes";
/// Refusal for a search key over [`MAX_KEY`] (no stored key can be longer).
pub const SEARCH_KEY_TOO_LONG: &str = "key: longer than 128 bytes";
/// Refusal for a search value over [`MAX_VALUE`] (no stored value can be longer).
pub const SEARCH_VALUE_TOO_LONG: &str = "value: longer than 16384 bytes";

/// Check a queue name: non-empty, at most [`MAX_QUEUE`] bytes.
///
/// # Errors
/// The cap (or emptiness) it breaks.
pub fn queue(name: &str) -> Result<&str, Refused> {
    if name.is_empty() {
        return Err(Refused::Cap("empty queue name"));
    }
    if name.len() > MAX_QUEUE {
        return Err(Refused::Cap(QUEUE_TOO_LONG));
    }
    Ok(name)
}

/// The encoded size of one `str` item (PROTOCOL.md §3: key_len, key, type, len, bytes).
fn item_len(k: &str, v: &str) -> usize {
    1 + k.len() + 1 + 4 + v.len()
}

/// Read a property list from the wire, checking every cap before per-item work.
///
/// # Errors
/// [`Refused::Body`] for a malformed list or a non-string value; [`Refused::Cap`] naming the
/// cap passed.
pub fn read_pairs(b: BodyRef<'_>, list: ListKind) -> Result<Pairs, Refused> {
    // The list's length is already known: a big list costs nothing to refuse.
    if b.as_bytes().len() > MAX_LIST_BYTES {
        return Err(cap(list, Over::Bytes));
    }
    let mut out = Vec::new();
    for item in b.iter() {
        let (k, v) = item?;
        let Value::Str(v) = v else {
            return Err(Refused::Body);
        };
        if out.len() == MAX_ITEMS {
            return Err(cap(list, Over::Items));
        }
        check_item(list, k, v)?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn check_item(list: ListKind, k: &str, v: &str) -> Result<(), Refused> {
    if k.len() > MAX_KEY {
        return Err(cap(list, Over::Key));
    }
    if v.len() > MAX_VALUE {
        return Err(cap(list, Over::Value));
    }
    Ok(())
}

/// Check a whole (merged) list against the item-count and total-size caps, and each item.
///
/// # Errors
/// [`Refused::Cap`] naming the cap passed.
pub fn check_pairs(p: &[(String, String)], list: ListKind) -> Result<(), Refused> {
    if p.len() > MAX_ITEMS {
        return Err(cap(list, Over::Items));
    }
    let mut total = 0usize;
    for (k, v) in p {
        check_item(list, k, v)?;
        total += item_len(k, v);
    }
    if total > MAX_LIST_BYTES {
        return Err(cap(list, Over::Bytes));
    }
    Ok(())
}

/// Merge `upd` into `base` in O(n + m): a key is replaced in place or appended; an empty value
/// removes it. Applying `upd` item by item in order gives exactly the same list (the order of
/// the old scan-per-key merge, kept so stored lists and events do not change): surviving keys
/// keep their place, new keys follow in the order they first appear, a key removed and then set
/// again in the same update goes to the end, and for a key repeated in `upd` the last value wins.
pub fn merge_pairs(base: &mut Pairs, upd: Pairs) {
    if upd.is_empty() {
        return;
    }
    // Slots with tombstones, so a removal does not shift the indices the map holds.
    let mut slots: Vec<Option<(String, String)>> =
        std::mem::take(base).into_iter().map(Some).collect();
    let mut at: HashMap<String, usize> = HashMap::with_capacity(slots.len() + upd.len());
    for (i, slot) in slots.iter().enumerate() {
        if let Some((k, _)) = slot {
            // A stored list never repeats a key; if one did, the first stays the one updated,
            // as the old scan found the first.
            at.entry(k.clone()).or_insert(i);
        }
    }
    for (k, v) in upd {
        match (at.get(&k).copied(), v.is_empty()) {
            (Some(i), true) => {
                slots[i] = None;
                at.remove(&k);
            }
            (Some(i), false) => {
                if let Some(slot) = slots[i].as_mut() {
                    slot.1 = v;
                }
            }
            (None, true) => {}
            (None, false) => {
                at.insert(k.clone(), slots.len());
                slots.push(Some((k, v)));
            }
        }
    }
    *base = slots.into_iter().flatten().collect();
}

/// Drop empty values and repeated keys, as a merge into nothing does.
pub fn normalise(p: Pairs) -> Pairs {
    let mut out = Vec::with_capacity(p.len());
    merge_pairs(&mut out, p);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_pairs;

    fn pairs(v: &[(&str, &str)]) -> Pairs {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The merge the server used before: one scan of `base` per updated key.
    fn scan_merge(base: &mut Pairs, upd: Pairs) {
        for (k, v) in upd {
            let pos = base.iter().position(|(bk, _)| *bk == k);
            match (pos, v.is_empty()) {
                (Some(i), true) => {
                    base.remove(i);
                }
                (Some(i), false) => base[i].1 = v,
                (None, true) => {}
                (None, false) => base.push((k, v)),
            }
        }
    }

    #[test]
    fn merge_replaces_appends_removes() {
        let mut p = pairs(&[("a", "1"), ("b", "2")]);
        merge_pairs(&mut p, pairs(&[("a", "9"), ("b", ""), ("c", "3")]));
        assert_eq!(p, pairs(&[("a", "9"), ("c", "3")]));
    }

    #[test]
    fn merge_keeps_the_old_order_on_random_lists() {
        // A small deterministic generator: keys from a tiny alphabet so that repeats, removals
        // and re-insertions all happen often.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut gen_list = |n: u64| -> Pairs {
                (0..next() % n)
                    .map(|_| {
                        let k = format!("k{}", next() % 6);
                        let v = if next() % 3 == 0 {
                            String::new()
                        } else {
                            format!("{}", next() % 100)
                        };
                        (k, v)
                    })
                    .collect()
            };
            let base = normalise(gen_list(8));
            let upd = gen_list(10);
            let mut a = base.clone();
            let mut b = base;
            merge_pairs(&mut a, upd.clone());
            scan_merge(&mut b, upd);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn caps_refuse_with_their_names() {
        let over_items: Pairs = (0..=MAX_ITEMS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        let enc = encode_pairs(&over_items);
        assert_eq!(
            read_pairs(BodyRef::new(&enc), ListKind::Props),
            Err(Refused::Cap("props: more than 256 items"))
        );
        let at_cap: Pairs = over_items[..MAX_ITEMS].to_vec();
        let enc = encode_pairs(&at_cap);
        assert_eq!(read_pairs(BodyRef::new(&enc), ListKind::Props), Ok(at_cap));
        let long_key = pairs(&[(&"k".repeat(MAX_KEY + 1), "v")]);
        let enc = encode_pairs(&long_key);
        assert_eq!(
            read_pairs(BodyRef::new(&enc), ListKind::Attrs),
            Err(Refused::Cap("attrs: a key longer than 128 bytes"))
        );
        let long_value = pairs(&[("k", &"v".repeat(MAX_VALUE + 1))]);
        assert_eq!(
            check_pairs(&long_value, ListKind::Props),
            Err(Refused::Cap("props: a value longer than 16384 bytes"))
        );
        let big: Pairs = (0..5)
            .map(|i| (format!("k{i}"), "v".repeat(MAX_VALUE)))
            .collect();
        let enc = encode_pairs(&big);
        assert_eq!(
            read_pairs(BodyRef::new(&enc), ListKind::Attrs),
            Err(Refused::Cap("attrs: more than 65536 bytes encoded"))
        );
        assert_eq!(
            check_pairs(&big, ListKind::Attrs),
            Err(Refused::Cap("attrs: more than 65536 bytes encoded"))
        );
        assert_eq!(
            queue(&"q".repeat(MAX_QUEUE)),
            Ok("q".repeat(MAX_QUEUE).as_str())
        );
        assert_eq!(
            queue(&"q".repeat(MAX_QUEUE + 1)),
            Err(Refused::Cap(QUEUE_TOO_LONG))
        );
    }

    #[test]
    fn messages_name_their_caps() {
        for list in [ListKind::Props, ListKind::Attrs] {
            for (over, n) in [
                (Over::Items, MAX_ITEMS),
                (Over::Key, MAX_KEY),
                (Over::Value, MAX_VALUE),
                (Over::Bytes, MAX_LIST_BYTES),
            ] {
                let m = cap(list, over).message();
                assert!(m.contains(&format!(" {n} ")), "{m:?} does not name {n}");
            }
        }
        for (m, n) in [
            (QUEUE_TOO_LONG, MAX_QUEUE),
            (TOPIC_TOO_LONG, MAX_QUEUE),
            (SUBJECT_TOO_LONG, MAX_SUBJECT),
            (TEXT_TOO_LONG, MAX_TEXT),
            (SEARCH_KEY_TOO_LONG, MAX_KEY),
            (SEARCH_VALUE_TOO_LONG, MAX_VALUE),
        ] {
            assert!(m.contains(&format!(" {n} ")), "{m:?} does not name {n}");
        }
    }

    #[test]
    fn one_full_item_fits_the_smallest_frame() {
        // A search page holding one contact with a full attribute list (see ucs.rs paging).
        let one = 13 + 17 + 11 + MAX_LIST_BYTES + 64;
        assert!(one < MIN_MAX_FRAME as usize);
    }
}
