//! core-server does bounded work on whatever comes from the wire (issue 12, "bounded work"):
//! property lists are capped and merged through a map (a merge bomb is refused `MALFORMED`
//! naming the cap while other tenants are served), stored sizes are capped, the body depth
//! limit holds on every request body (the hello included), responses never copy the request's
//! flags, and list answers and texts page so that no answer exceeds `max_frame`
//! (PROTOCOL.md §8.1).

mod core_server_support;

use core_server_support::*;
use deskmux_codec::msg::{control, ixn, key, ucs};
use deskmux_codec::{BodyError, BodyWriter, ErrorCode, Flags, Frame, Head, Kind, Service, Value};

/// The smallest `max_frame` core-server accepts (`limits::MIN_MAX_FRAME`).
const SMALL_FRAME: usize = 128 * 1024;

fn start(extra: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, extra);
    let s = Server::start(&cfg, &[]);
    (dir, s)
}

/// The error message of a frame, asserting it is `code`.
#[track_caller]
fn refused(f: &Frame, c: ErrorCode) -> String {
    err(f, c);
    f.error().map(|(_, m)| m.to_string()).unwrap_or_default()
}

/// `n` property items `k0000000=v`, ... as a list under `list_key`.
fn many_pairs(w: &mut BodyWriter<'_>, list_key: &str, n: usize) -> Result<(), BodyError> {
    w.list(list_key, |w| {
        for i in 0..n {
            w.str(&format!("k{i:07}"), "v")?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Send a request without waiting for its answer; returns its correlation id.
fn send(
    c: &mut Client,
    corr: u64,
    service: Service,
    ty: u16,
    body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
) -> u64 {
    let mut h = Head::new(Kind::Request, service, ty);
    h.tenant = c.tenant;
    h.session = c.session;
    h.correlation = corr;
    let f = Frame::build(h, body).expect("build");
    c.send_raw(f.as_bytes());
    corr
}

/// Attack: one tenant sends property lists of 130,000 items (just under the 2 MiB frame) to
/// SUBMIT and CONTACT_CREATE, and lists of 1,000 small items. Each is refused `MALFORMED` with
/// a message naming the cap passed, and requests of another tenant sent right behind them (to
/// the same engine and the same DB thread) are answered. The old O(n·m) merge spent ~10^10
/// comparisons on one such list, holding up every tenant.
#[test]
fn merge_bomb_is_refused_naming_the_cap_and_other_tenants_are_served() {
    let (_d, s) = start("");
    let mut bomber = Client::desktop(s.addr, T1, "bomber", TOKEN1);
    let mut other = Client::desktop(s.addr, T2, "other", TOKEN2);
    // 15 bytes an item: 130,000 items stay under the 2 MiB frame.
    const HUGE: usize = 130_000;
    let submit = send(&mut bomber, 9001, Service::Interaction, ixn::SUBMIT, |w| {
        w.str(key::QUEUE, "q")?;
        many_pairs(w, key::PROPS, HUGE)
    });
    let create = send(&mut bomber, 9002, Service::Ucs, ucs::CONTACT_CREATE, |w| {
        many_pairs(w, key::ATTRS, HUGE)
    });
    let submit_items = send(&mut bomber, 9003, Service::Interaction, ixn::SUBMIT, |w| {
        w.str(key::QUEUE, "q")?;
        many_pairs(w, key::PROPS, 1000)
    });
    let create_items = send(&mut bomber, 9004, Service::Ucs, ucs::CONTACT_CREATE, |w| {
        many_pairs(w, key::ATTRS, 1000)
    });
    // Another tenant, meanwhile: an interaction (engine task) and a contact (DB thread). The
    // client waits at most WAIT for each answer (it panics otherwise).
    let r = ok(other.ixn(ixn::SUBMIT, |w| {
        w.str(key::QUEUE, "calls")?;
        props(w, key::PROPS, &[("from", "+4712345678")])
    }));
    assert!(int(&r, key::INTERACTION) > 0);
    let r = ok(other.ucs(ucs::CONTACT_CREATE, |w| {
        props(w, key::ATTRS, &[("email", "b@globex.example")])
    }));
    assert!(int(&r, key::CONTACT) > 0);

    let m = refused(&bomber.wait_response(submit), ErrorCode::MALFORMED);
    assert_eq!(m, "props: more than 65536 bytes encoded");
    let m = refused(&bomber.wait_response(create), ErrorCode::MALFORMED);
    assert_eq!(m, "attrs: more than 65536 bytes encoded");
    let m = refused(&bomber.wait_response(submit_items), ErrorCode::MALFORMED);
    assert_eq!(m, "props: more than 256 items");
    let m = refused(&bomber.wait_response(create_items), ErrorCode::MALFORMED);
    assert_eq!(m, "attrs: more than 256 items");
    // At the cap is fine, and the bomber's session still works.
    let r = ok(bomber.ixn(ixn::SUBMIT, |w| {
        w.str(key::QUEUE, "q")?;
        many_pairs(w, key::PROPS, 256)
    }));
    assert!(int(&r, key::INTERACTION) > 0);
}

/// Stored sizes are capped: queue names (SUBMIT, PLACE_IN_QUEUE, topics), property keys and
/// values, merged lists (CHANGE_PROPERTIES, CONTACT_UPDATE), contact attributes (identify
/// included) and history subjects and texts. Each refusal is `MALFORMED` naming its cap; each
/// cap itself is accepted.
#[test]
fn stored_sizes_are_capped_naming_the_cap() {
    let (_d, s) = start("");
    let mut c = Client::desktop(s.addr, T1, "a1", TOKEN1);
    let long_queue = "q".repeat(129);
    let m = refused(
        &c.ixn(ixn::SUBMIT, |w| {
            w.str(key::QUEUE, &long_queue)?;
            Ok(())
        }),
        ErrorCode::MALFORMED,
    );
    assert_eq!(m, "queue: longer than 128 bytes");
    let r = ok(c.ixn(ixn::SUBMIT, |w| {
        w.str(key::QUEUE, &"q".repeat(128))?;
        props(w, key::PROPS, &[("a", "1")])
    }));
    let id = int(&r, key::INTERACTION);
    let m = refused(
        &c.ixn(ixn::PLACE_IN_QUEUE, |w| {
            w.int(key::INTERACTION, id);
            w.str(key::QUEUE, &long_queue)?;
            Ok(())
        }),
        ErrorCode::MALFORMED,
    );
    assert_eq!(m, "queue: longer than 128 bytes");
    let m = refused(
        &c.ixn(ixn::SUBSCRIBE, |w| {
            w.str(key::TOPIC, &format!("queue:{long_queue}"))?;
            Ok(())
        }),
        ErrorCode::MALFORMED,
    );
    assert_eq!(m, "topic: queue name longer than 128 bytes");
    // Property keys and values.
    let long_key = "k".repeat(129);
    let m = refused(
        &c.ixn(ixn::SUBMIT, |w| {
            w.str(key::QUEUE, "q")?;
            props(w, key::PROPS, &[(&long_key, "v")])
        }),
        ErrorCode::MALFORMED,
    );
    assert_eq!(m, "props: a key longer than 128 bytes");
    let long_value = "v".repeat(16 * 1024 + 1);
    let m = refused(
        &c.ixn(ixn::CHANGE_PROPERTIES, |w| {
            w.int(key::INTERACTION, id);
            props(w, key::PROPS, &[("k", &long_value)])
        }),
        ErrorCode::MALFORMED,
    );
    assert_eq!(m, "props: a value longer than 16384 bytes");
    // A merge that would pass the cap: 200 items, then 100 more.
    let r = ok(c.ixn(ixn::SUBMIT, |w| {
        w.str(key::QUEUE, "q")?;
        many_pairs(w, key::PROPS, 200)
    }));
    let big = int(&r, key::INTERACTION);
    let m = refused(
        &c.ixn(ixn::CHANGE_PROPERTIES, |w| {
            w.int(key::INTERACTION, big);
            w.list(key::PROPS, |w| {
                for i in 0..100 {
                    w.str(&format!("new{i}"), "v")?;
                }
                Ok(())
            })?;
            Ok(())
        }),
        ErrorCode::MALFORMED,
    );
    assert_eq!(m, "props: more than 256 items");
    // Replacing values within the cap still merges.
    ok(c.ixn(ixn::CHANGE_PROPERTIES, |w| {
        w.int(key::INTERACTION, big);
        props(w, key::PROPS, &[("k0000001", "changed"), ("k0000002", "")])
    }));

    // Contacts.
    let m = refused(
        &c.ucs(ucs::CONTACT_CREATE, |w| {
            props(w, key::ATTRS, &[("name", &long_value)])
        }),
        ErrorCode::MALFORMED,
    );
    assert_eq!(m, "attrs: a value longer than 16384 bytes");
    let m = refused(
        &c.ucs(ucs::CONTACT_IDENTIFY, |w| {
            w.str(key::EMAIL, &long_value)?;
            Ok(())
        }),
        ErrorCode::MALFORMED,
    );
    assert_eq!(m, "attrs: a value longer than 16384 bytes");
    // Four values of 16 KiB fit, one more key of 16 KiB passes the 64 KiB total.
    let v16 = "v".repeat(16 * 1024 - 20);
    let r = ok(c.ucs(ucs::CONTACT_CREATE, |w| {
        props(
            w,
            key::ATTRS,
            &[("a", &v16), ("b", &v16), ("c", &v16), ("d", &v16)],
        )
    }));
    let contact = int(&r, key::CONTACT);
    let m = refused(
        &c.ucs(ucs::CONTACT_UPDATE, |w| {
            w.int(key::CONTACT, contact);
            props(w, key::ATTRS, &[("e", &v16)])
        }),
        ErrorCode::MALFORMED,
    );
    assert_eq!(m, "attrs: more than 65536 bytes encoded");
    // History.
    let m = refused(
        &c.ucs(ucs::HISTORY_INSERT, |w| {
            w.int(key::CONTACT, contact);
            w.str(key::SUBJECT, &"s".repeat(1025))?;
            w.str(key::TEXT, "t")?;
            Ok(())
        }),
        ErrorCode::MALFORMED,
    );
    assert_eq!(m, "subject: longer than 1024 bytes");
    ok(c.ucs(ucs::HISTORY_INSERT, |w| {
        w.int(key::CONTACT, contact);
        w.str(key::SUBJECT, &"s".repeat(1024))?;
        w.str(key::TEXT, "t")?;
        Ok(())
    }));
    let m = refused(
        &c.ucs(ucs::HISTORY_INSERT, |w| {
            w.int(key::CONTACT, contact);
            w.str(key::TEXT, &"t".repeat(1024 * 1024 + 1))?;
            Ok(())
        }),
        ErrorCode::MALFORMED,
    );
    assert_eq!(m, "text: longer than 1048576 bytes");
}

/// A body holding `n` nested lists (each an item with an empty key), after the items `pre`
/// writes. Built flat: each level's header is followed by the next one.
fn deep_body(n: usize, pre: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    pre(&mut BodyWriter::new(&mut b)).unwrap();
    let mut out = b.to_vec();
    out.reserve(n * 6);
    for level in 0..n {
        out.push(0); // empty key
        out.push(0x04); // list
        let inner = ((n - 1 - level) * 6) as u32;
        out.extend_from_slice(&inner.to_be_bytes());
    }
    out
}

fn raw_call(c: &mut Client, corr: u64, mut h: Head, body: &[u8]) -> Frame {
    h.kind = Kind::Request;
    h.correlation = corr;
    let f = Frame::with_body(h, body).expect("frame");
    c.send_raw(f.as_bytes());
    c.wait_response(corr)
}

/// Attack: a HELLO, a LINK_HELLO and a SESSION_OPEN whose bodies are valid hellos followed by a
/// list 2,000 deep (PROTOCOL.md §3: at most 16; 2,000 levels still fit the 16 KiB frame limit
/// before the hello, which refuses a deeper one by its length alone). Each is answered `MALFORMED`, and the
/// connection stays usable: a proper hello then succeeds.
#[test]
fn deep_bodies_are_malformed_on_every_request_the_hello_included() {
    let (_d, s) = start("");
    let hello = |w: &mut BodyWriter<'_>| -> Result<(), BodyError> {
        deskmux_codec::msg::DesktopHello {
            version: 1,
            agent: "deep",
            token: TOKEN1,
            reconnect: None,
            services: 6,
        }
        .write(w)
    };
    // Exactly 16 deep is valid.
    let mut c = Client::connect(s.addr);
    let mut h = Head::new(Kind::Request, Service::Control, control::HELLO);
    h.tenant = T1;
    let r = raw_call(&mut c, 1, h, &deep_body(16, hello));
    assert!(r.error().is_none(), "16 deep is allowed: {:?}", r.error());

    let mut c = Client::connect(s.addr);
    let r = raw_call(&mut c, 1, h, &deep_body(2_000, hello));
    let m = refused(&r, ErrorCode::MALFORMED);
    assert!(m.contains("16"), "names the depth cap: {m:?}");
    assert_eq!(r.head().session, 0, "no session was opened");
    // PROTOCOL.md §4.1: a refused hello ends the connection; a new one with a proper hello
    // works.
    assert!(c.closed_within(WAIT), "a refused hello closes");
    let mut c = Client::connect(s.addr);
    err(
        &c.ixn(ixn::AGENT_LOGIN, |_| Ok(())),
        ErrorCode::INVALID_STATE,
    );
    ok(c.hello(T1, "deep", TOKEN1));
    // Deep bodies on ordinary requests too.
    let mut h = Head::new(Kind::Request, Service::Interaction, ixn::SUBMIT);
    h.tenant = T1;
    h.session = c.session;
    let r = raw_call(
        &mut c,
        100,
        h,
        &deep_body(17, |w| {
            w.str(key::QUEUE, "q")?;
            Ok(())
        }),
    );
    err(&r, ErrorCode::MALFORMED);

    // A link: the link hello, then a session open.
    let mut l = Client::connect(s.addr);
    let lh = |w: &mut BodyWriter<'_>| -> Result<(), BodyError> {
        deskmux_codec::msg::LinkHello {
            version: 1,
            link: "deep-link",
            secret: SECRET.as_bytes(),
            max_frame: None,
        }
        .write(w)
    };
    let h = Head::new(Kind::Request, Service::Control, control::LINK_HELLO);
    let r = raw_call(&mut l, 1, h, &deep_body(2_000, lh));
    err(&r, ErrorCode::MALFORMED);
    assert!(l.closed_within(WAIT), "a refused link hello closes");
    let mut l = Client::connect(s.addr);
    ok(l.link_hello(SECRET.as_bytes()));
    let mut h = Head::new(Kind::Request, Service::Control, control::SESSION_OPEN);
    h.tenant = T1;
    h.session = 77;
    let r = raw_call(&mut l, 2, h, &deep_body(2_000, hello));
    err(&r, ErrorCode::MALFORMED);
    // Session 77 was not opened: a request on it is refused, and it can still be opened.
    err(
        &l.on(77, T1, Service::Ucs, ucs::CONTACT_GET, |w| {
            w.int(key::CONTACT, 1);
            Ok(())
        }),
        ErrorCode::INVALID_STATE,
    );
    ok(l.session_open(77, T1, "deep", TOKEN1));
}

/// A request's flags (ERROR, BROADCAST, RETRY) never come back on its response: an ECHO (whose
/// body goes back as it came) and an ordinary request alike.
#[test]
fn responses_never_copy_request_flags() {
    let (_d, s) = start("");
    let mut c = Client::desktop(s.addr, T1, "flags", TOKEN1);
    let all = Flags(Flags::ERROR | Flags::BROADCAST | Flags::RETRY);
    for (service, flags) in [
        (Service::Interaction, Flags(Flags::ERROR)),
        (Service::Ucs, all),
        (Service::Interaction, Flags(Flags::RETRY)),
    ] {
        let mut h = Head::new(Kind::Request, service, ixn::ECHO);
        h.tenant = T1;
        h.session = c.session;
        h.flags = flags;
        let r = c.call_head(h, |w| {
            w.str("payload", "same bytes")?;
            Ok(())
        });
        assert_eq!(r.head().kind, Kind::Response);
        assert_eq!(r.head().flags, Flags::default(), "{service:?} echo flags");
        assert_eq!(r.body().str("payload").unwrap(), "same bytes");
    }
    let mut h = Head::new(Kind::Request, Service::Ucs, ucs::CONTACT_CREATE);
    h.tenant = T1;
    h.session = c.session;
    h.flags = all;
    let r = c.call_head(h, |w| props(w, key::ATTRS, &[("a", "b")]));
    assert_eq!(r.head().flags, Flags::default());
    assert!(int(&r, key::CONTACT) > 0);
    // An error answer carries ERROR and a code, whatever the request's flags.
    let mut h = Head::new(Kind::Request, Service::Ucs, ucs::CONTACT_GET);
    h.tenant = T1;
    h.session = c.session;
    h.flags = Flags(Flags::RETRY);
    let r = c.call_head(h, |w| {
        w.int(key::CONTACT, 999_999);
        Ok(())
    });
    assert_eq!(r.head().flags, Flags(Flags::ERROR));
    err(&r, ErrorCode::NOT_FOUND);
}

/// The ids in a page, the page's `next`, after checking the frame fits `max_frame`.
fn page(f: &Frame, list_key: &'static str, id_key: &'static str) -> (Vec<i64>, Option<i64>) {
    assert!(f.error().is_none(), "page refused: {:?}", f.error());
    assert!(
        f.len() <= SMALL_FRAME,
        "a {}-byte answer over max_frame {SMALL_FRAME}",
        f.len()
    );
    let ids = f
        .body()
        .list(list_key)
        .unwrap()
        .iter()
        .map(|i| match i.unwrap() {
            (_, Value::List(item)) => item.int(id_key).unwrap(),
            other => panic!("item {other:?}"),
        })
        .collect();
    (ids, f.body().opt_int(key::NEXT).unwrap())
}

/// Follow `next` cursors from the first page; bounded by `max_pages`.
fn all_pages(
    max_pages: usize,
    mut fetch: impl FnMut(Option<i64>) -> Frame,
    list_key: &'static str,
    id_key: &'static str,
) -> (Vec<i64>, usize) {
    let mut ids = Vec::new();
    let mut after = None;
    for pages in 1..=max_pages {
        let (got, next) = page(&fetch(after), list_key, id_key);
        assert!(!got.is_empty(), "a page makes progress");
        ids.extend(got);
        match next {
            Some(n) => {
                assert_eq!(Some(&n), ids.last(), "next is the last id of the page");
                after = Some(n);
            }
            None => return (ids, pages),
        }
    }
    panic!("more than {max_pages} pages");
}

/// Answers that list things page under `max_frame` (128 KiB here): 40 contacts of ~15 KiB
/// found by one search (600 KiB), and 300 history records with 1 KiB subjects (300 KiB), come in
/// several pages linked by `next`/`after`, each page under `max_frame`, nothing lost or
/// repeated. A `limit` smaller than a page is kept, with `next`.
#[test]
fn search_and_history_page_under_max_frame() {
    let (_d, s) = start(&format!("max_frame = {SMALL_FRAME}\n"));
    let mut c = Client::desktop(s.addr, T1, "pager", TOKEN1);
    let pad = "x".repeat(15_000);
    let mut created = Vec::new();
    for i in 0..40 {
        let r = ok(c.ucs(ucs::CONTACT_CREATE, |w| {
            props(
                w,
                key::ATTRS,
                &[("city", "Oslo"), ("n", &i.to_string()), ("pad", &pad)],
            )
        }));
        created.push(int(&r, key::CONTACT));
    }
    // Another tenant's matching contact is never listed.
    let mut other = Client::desktop(s.addr, T2, "other", TOKEN2);
    ok(other.ucs(ucs::CONTACT_CREATE, |w| {
        props(w, key::ATTRS, &[("city", "Oslo")])
    }));
    let search = |c: &mut Client, after: Option<i64>, limit: i64| {
        c.ucs(ucs::CONTACT_SEARCH, |w| {
            w.str(key::KEY, "city")?;
            w.str(key::VALUE, "Oslo")?;
            w.int(key::LIMIT, limit);
            if let Some(a) = after {
                w.int(key::AFTER, a);
            }
            Ok(())
        })
    };
    let (ids, pages) = all_pages(
        40,
        |a| search(&mut c, a, 10_000),
        key::CONTACTS,
        key::CONTACT,
    );
    assert_eq!(ids, created, "every contact once, lowest id first");
    assert!(pages >= 5, "600 KiB in 128 KiB pages: {pages} pages");
    // limit under a page: exactly `limit`, and a cursor.
    let (ids, next) = page(&search(&mut c, None, 3), key::CONTACTS, key::CONTACT);
    assert_eq!(ids, created[..3]);
    assert_eq!(next, Some(created[2]));
    let (ids, next) = page(
        &search(&mut c, Some(created[36]), 3),
        key::CONTACTS,
        key::CONTACT,
    );
    assert_eq!(ids, created[37..]);
    assert_eq!(next, None, "no cursor when nothing remains");

    // History: newest first, `after` continues with older records.
    let contact = created[0];
    let subject = "s".repeat(1024);
    let mut hist = Vec::new();
    for i in 0..300 {
        let r = ok(c.ucs(ucs::HISTORY_INSERT, |w| {
            w.int(key::CONTACT, contact);
            w.str(key::SUBJECT, &subject)?;
            w.str(key::TEXT, &format!("record {i}"))?;
            Ok(())
        }));
        hist.push(int(&r, key::HISTORY));
    }
    hist.reverse();
    let (ids, pages) = all_pages(
        40,
        |a| {
            c.ucs(ucs::HISTORY_LIST, |w| {
                w.int(key::CONTACT, contact);
                w.int(key::LIMIT, 10_000);
                if let Some(a) = a {
                    w.int(key::AFTER, a);
                }
                Ok(())
            })
        },
        key::ITEMS,
        key::HISTORY,
    );
    assert_eq!(ids, hist, "every record once, newest first");
    assert!(pages >= 3, "300 KiB in 128 KiB pages: {pages} pages");
}

/// On a proxy link, answers fit the `max_frame` the link hello announced (PROTOCOL.md §4.2),
/// here 128 KiB against the server's 2 MiB: a 300 KiB search result comes in pages.
#[test]
fn link_answers_fit_the_links_max_frame() {
    let (_d, s) = start("");
    let mut l = Client::connect(s.addr);
    let h = Head::new(Kind::Request, Service::Control, control::LINK_HELLO);
    let lh = deskmux_codec::msg::LinkHello {
        version: 1,
        link: "small-link",
        secret: SECRET.as_bytes(),
        max_frame: Some(SMALL_FRAME as u32),
    };
    let mut b = bytes::BytesMut::new();
    lh.write(&mut BodyWriter::new(&mut b)).unwrap();
    ok(raw_call(&mut l, 1, h, &b));
    ok(l.session_open(5, T1, "linked", TOKEN1));
    let pad = "x".repeat(15_000);
    let mut created = Vec::new();
    for _ in 0..20 {
        let r = ok(l.on(5, T1, Service::Ucs, ucs::CONTACT_CREATE, |w| {
            props(w, key::ATTRS, &[("team", "blue"), ("pad", &pad)])
        }));
        created.push(int(&r, key::CONTACT));
    }
    let (ids, pages) = all_pages(
        20,
        |a| {
            l.on(5, T1, Service::Ucs, ucs::CONTACT_SEARCH, |w| {
                w.str(key::KEY, "team")?;
                w.str(key::VALUE, "blue")?;
                if let Some(a) = a {
                    w.int(key::AFTER, a);
                }
                Ok(())
            })
        },
        key::CONTACTS,
        key::CONTACT,
    );
    assert_eq!(ids, created);
    assert!(pages >= 3, "300 KiB in 128 KiB pages: {pages} pages");
}

/// A text larger than `max_frame` (stored while it was 2 MiB, read after a restart with
/// 128 KiB) comes back in chunks, each answer under `max_frame`, which put together give the
/// text (multi-byte characters are never split).
#[test]
fn content_comes_in_chunks_under_max_frame() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = "aé€😀 ".repeat(1024 * 1024 / 12);
    let (contact, history) = {
        let cfg = write_config(dir.path(), 5000, "");
        let s = Server::start(&cfg, &[]);
        let mut c = Client::desktop(s.addr, T1, "writer", TOKEN1);
        let r = ok(c.ucs(ucs::CONTACT_CREATE, |w| props(w, key::ATTRS, &[("a", "b")])));
        let contact = int(&r, key::CONTACT);
        let r = ok(c.ucs(ucs::HISTORY_INSERT, |w| {
            w.int(key::CONTACT, contact);
            w.str(key::SUBJECT, "big")?;
            w.str(key::TEXT, &text)?;
            Ok(())
        }));
        (contact, int(&r, key::HISTORY))
        // The server is killed here (dropped); the write was acknowledged, so it is durable.
    };
    let cfg = write_config(dir.path(), 5000, &format!("max_frame = {SMALL_FRAME}\n"));
    let s = Server::start(&cfg, &[]);
    let mut c = Client::desktop(s.addr, T1, "reader", TOKEN1);
    let mut got = String::new();
    let mut after: Option<i64> = None;
    let mut chunks = 0;
    loop {
        chunks += 1;
        assert!(chunks <= 64, "more chunks than a 1 MiB text needs");
        let r = ok(c.ucs(ucs::CONTENT_GET, |w| {
            w.int(key::HISTORY, history);
            if let Some(a) = after {
                w.int(key::AFTER, a);
            }
            Ok(())
        }));
        assert!(r.len() <= SMALL_FRAME, "a {}-byte answer", r.len());
        assert_eq!(int(&r, key::HISTORY), history);
        got.push_str(r.body().str(key::TEXT).unwrap());
        match r.body().opt_int(key::NEXT).unwrap() {
            Some(n) => {
                assert_eq!(n as usize, got.len(), "next is the byte offset reached");
                after = Some(n);
            }
            None => break,
        }
    }
    assert!(chunks >= 8, "1 MiB in 128 KiB chunks: {chunks}");
    assert!(got == text, "chunks put together give the text");
    // An offset that is not a chunk boundary (inside a character) is refused.
    let r = c.ucs(ucs::CONTENT_GET, |w| {
        w.int(key::HISTORY, history);
        w.int(key::AFTER, 2);
        Ok(())
    });
    err(&r, ErrorCode::MALFORMED);
    // The listing still shows the whole length.
    let l = ok(c.ucs(ucs::HISTORY_LIST, |w| {
        w.int(key::CONTACT, contact);
        Ok(())
    }));
    let Value::List(item) = l
        .body()
        .list(key::ITEMS)
        .unwrap()
        .iter()
        .next()
        .unwrap()
        .unwrap()
        .1
    else {
        panic!("item")
    };
    assert_eq!(item.int("len").unwrap() as usize, text.len());
}

/// A direct desktop is read at its byte budget (`desktop_read_bytes_per_s`, after a burst of
/// two `max_frame`s), so that one sending large frames flat out cannot take the CPU of every
/// tenant (benches/RESULTS.md, merge bomb). The server reads (at most 64 KiB at a time) only
/// while the desktop is within its budget, so by time t it has read at most the burst, plus
/// rate × t, plus 64 KiB: 13 frames of 60 KiB (about 780 KiB) at 256 KiB/s after a 256 KiB
/// burst take at least (780 − 256 − 64) / 256 = 1.8 s. Before the budget they took
/// milliseconds.
#[test]
fn a_direct_desktop_is_read_at_its_byte_budget() {
    let (_d, s) = start("max_frame = 131072\ndesktop_read_bytes_per_s = 262144\n");
    let mut c = Client::desktop(s.addr, T1, "writer", TOKEN1);
    let payload = vec![0x5au8; 60 * 1024];
    let t0 = std::time::Instant::now();
    let corrs: Vec<u64> = (0..13)
        .map(|i| {
            send(&mut c, 700_000 + i, Service::Ucs, ucs::ECHO, |w| {
                w.bin("data", &payload)?;
                Ok(())
            })
        })
        .collect();
    for corr in corrs {
        ok(c.wait_response(corr));
    }
    let took = t0.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(1750),
        "13 frames of 60 KiB were read in {took:?}, over the budget"
    );
}
