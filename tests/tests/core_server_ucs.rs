//! core-server as UCS: contact CRUD, identify, search, history (insert, list, content up to
//! 1 MiB), and tenant isolation of every operation.

mod core_server_support;

use core_server_support::*;
use deskmux_codec::msg::{key, ucs};
use deskmux_codec::{BodyRef, ErrorCode, Value};

fn attrs(b: BodyRef<'_>) -> Vec<(String, String)> {
    b.iter()
        .map(|i| match i.unwrap() {
            (k, Value::Str(v)) => (k.to_string(), v.to_string()),
            _ => panic!("non-string attr"),
        })
        .collect()
}

fn with_contact(
    id: i64,
) -> impl FnOnce(&mut deskmux_codec::BodyWriter<'_>) -> Result<(), deskmux_codec::BodyError> {
    move |w| {
        w.int(key::CONTACT, id);
        Ok(())
    }
}

fn start(role: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "");
    let s = Server::start(&cfg, &["--role", role]);
    (dir, s)
}

#[test]
fn contact_crud_identify_search() {
    let (_d, s) = start("ucs");
    let mut c = Client::desktop(s.addr, T1, "a1", TOKEN1);
    // Interaction Server is not run by a UCS-only instance.
    err(
        &c.ixn(deskmux_codec::msg::ixn::SUBMIT, |_| Ok(())),
        ErrorCode::NO_ROUTE,
    );
    let r = ok(c.ucs(ucs::CONTACT_CREATE, |w| {
        props(w, key::ATTRS, &[("first", "Ann"), ("email", "ann@x.org")])
    }));
    let id = int(&r, key::CONTACT);
    let g = ok(c.ucs(ucs::CONTACT_GET, with_contact(id)));
    assert_eq!(int(&g, key::CONTACT), id);
    assert_eq!(
        attrs(g.body().list(key::ATTRS).unwrap()),
        vec![
            ("first".into(), "Ann".into()),
            ("email".into(), "ann@x.org".into())
        ]
    );
    ok(c.ucs(ucs::CONTACT_UPDATE, |w| {
        w.int(key::CONTACT, id);
        props(w, key::ATTRS, &[("first", ""), ("last", "Lee")])
    }));
    let g = ok(c.ucs(ucs::CONTACT_GET, with_contact(id)));
    assert_eq!(
        attrs(g.body().list(key::ATTRS).unwrap()),
        vec![
            ("email".into(), "ann@x.org".into()),
            ("last".into(), "Lee".into())
        ]
    );
    // Identify: found by e-mail, created by phone.
    let r = ok(c.ucs(ucs::CONTACT_IDENTIFY, |w| {
        w.str(key::EMAIL, "ann@x.org")?;
        Ok(())
    }));
    assert_eq!((int(&r, key::CONTACT), int(&r, key::CREATED)), (id, 0));
    let r = ok(c.ucs(ucs::CONTACT_IDENTIFY, |w| {
        w.str(key::PHONE, "+15550001")?;
        props(w, key::ATTRS, &[("first", "Bob")])
    }));
    assert_eq!(int(&r, key::CREATED), 1);
    let bob = int(&r, key::CONTACT);
    let r = ok(c.ucs(ucs::CONTACT_IDENTIFY, |w| {
        w.str(key::PHONE, "+15550001")?;
        Ok(())
    }));
    assert_eq!((int(&r, key::CONTACT), int(&r, key::CREATED)), (bob, 0));
    err(
        &c.ucs(ucs::CONTACT_IDENTIFY, |_| Ok(())),
        ErrorCode::MALFORMED,
    );
    // Search by attribute.
    for i in 0..3 {
        ok(c.ucs(ucs::CONTACT_CREATE, |w| {
            props(w, key::ATTRS, &[("city", "Oslo"), ("n", &i.to_string())])
        }));
    }
    let r = ok(c.ucs(ucs::CONTACT_SEARCH, |w| {
        w.str(key::KEY, "city")?;
        w.str(key::VALUE, "Oslo")?;
        w.int(key::LIMIT, 2);
        Ok(())
    }));
    let list = r.body().list(key::CONTACTS).unwrap();
    let found: Vec<_> = list.iter().map(|i| i.unwrap()).collect();
    assert_eq!(found.len(), 2);
    for (k, v) in found {
        assert_eq!(k, key::CONTACT);
        let Value::List(item) = v else {
            panic!("item not a list")
        };
        assert!(item.int(key::CONTACT).unwrap() > 0);
        assert!(attrs(item.list(key::ATTRS).unwrap()).contains(&("city".into(), "Oslo".into())));
    }
    // Delete.
    ok(c.ucs(ucs::CONTACT_DELETE, with_contact(bob)));
    err(
        &c.ucs(ucs::CONTACT_GET, with_contact(bob)),
        ErrorCode::NOT_FOUND,
    );
    err(
        &c.ucs(ucs::CONTACT_DELETE, with_contact(bob)),
        ErrorCode::NOT_FOUND,
    );
}

#[test]
fn history_insert_list_content() {
    let (_d, s) = start("both");
    let mut c = Client::desktop(s.addr, T1, "a1", TOKEN1);
    let id = int(
        &ok(c.ucs(ucs::CONTACT_CREATE, |w| {
            props(w, key::ATTRS, &[("email", "h@x")])
        })),
        key::CONTACT,
    );
    let big = "x".repeat(1024 * 1024);
    let mut ids = Vec::new();
    for (i, text) in ["short text", big.as_str()].iter().enumerate() {
        let r = ok(c.ucs(ucs::HISTORY_INSERT, |w| {
            w.int(key::CONTACT, id);
            w.int(key::INTERACTION, 40 + i as i64);
            w.str(key::SUBJECT, &format!("subj {i}"))?;
            w.str(key::TEXT, text)?;
            Ok(())
        }));
        ids.push(int(&r, key::HISTORY));
    }
    // Over 1 MiB is refused.
    let too_big = "y".repeat(1024 * 1024 + 1);
    err(
        &c.ucs(ucs::HISTORY_INSERT, |w| {
            w.int(key::CONTACT, id);
            w.str(key::SUBJECT, "s")?;
            w.str(key::TEXT, &too_big)?;
            Ok(())
        }),
        ErrorCode::MALFORMED,
    );
    let l = ok(c.ucs(ucs::HISTORY_LIST, with_contact(id)));
    let items: Vec<_> = l
        .body()
        .list(key::ITEMS)
        .unwrap()
        .iter()
        .map(|i| i.unwrap())
        .collect();
    assert_eq!(items.len(), 2);
    let Value::List(newest) = items[0].1 else {
        panic!()
    };
    assert_eq!(newest.int(key::HISTORY).unwrap(), ids[1]);
    assert_eq!(newest.int("len").unwrap(), 1024 * 1024);
    assert_eq!(newest.int(key::INTERACTION).unwrap(), 41);
    assert!(newest.int("created_us").unwrap() > 0);
    let g = ok(c.ucs(ucs::CONTENT_GET, |w| {
        w.int(key::HISTORY, ids[1]);
        Ok(())
    }));
    assert_eq!(g.body().str(key::TEXT).unwrap().len(), 1024 * 1024);
    let g = ok(c.ucs(ucs::CONTENT_GET, |w| {
        w.int(key::HISTORY, ids[0]);
        Ok(())
    }));
    assert_eq!(g.body().str(key::TEXT).unwrap(), "short text");
    // Unknown contact.
    err(
        &c.ucs(ucs::HISTORY_INSERT, |w| {
            w.int(key::CONTACT, 999_999);
            w.str(key::SUBJECT, "s")?;
            w.str(key::TEXT, "t")?;
            Ok(())
        }),
        ErrorCode::NOT_FOUND,
    );
    // Deleting the contact removes its history.
    ok(c.ucs(ucs::CONTACT_DELETE, with_contact(id)));
    err(
        &c.ucs(ucs::CONTENT_GET, |w| {
            w.int(key::HISTORY, ids[0]);
            Ok(())
        }),
        ErrorCode::NOT_FOUND,
    );
}

#[test]
fn tenant_isolation_of_contacts() {
    let (_d, s) = start("ucs");
    let mut a = Client::desktop(s.addr, T1, "a", TOKEN1);
    let mut b = Client::desktop(s.addr, T2, "b", TOKEN2);
    let id = int(
        &ok(a.ucs(ucs::CONTACT_CREATE, |w| {
            props(w, key::ATTRS, &[("email", "same@x"), ("k", "v")])
        })),
        key::CONTACT,
    );
    let h = int(
        &ok(a.ucs(ucs::HISTORY_INSERT, |w| {
            w.int(key::CONTACT, id);
            w.str(key::SUBJECT, "s")?;
            w.str(key::TEXT, "secret")?;
            Ok(())
        })),
        key::HISTORY,
    );
    // Tenant 2 sees nothing of tenant 1 and changes nothing.
    err(
        &b.ucs(ucs::CONTACT_GET, with_contact(id)),
        ErrorCode::NOT_FOUND,
    );
    err(
        &b.ucs(ucs::CONTACT_UPDATE, |w| {
            w.int(key::CONTACT, id);
            props(w, key::ATTRS, &[("k", "hacked")])
        }),
        ErrorCode::NOT_FOUND,
    );
    err(
        &b.ucs(ucs::CONTACT_DELETE, with_contact(id)),
        ErrorCode::NOT_FOUND,
    );
    err(
        &b.ucs(ucs::HISTORY_LIST, with_contact(id)),
        ErrorCode::NOT_FOUND,
    );
    err(
        &b.ucs(ucs::CONTENT_GET, |w| {
            w.int(key::HISTORY, h);
            Ok(())
        }),
        ErrorCode::NOT_FOUND,
    );
    err(
        &b.ucs(ucs::HISTORY_INSERT, |w| {
            w.int(key::CONTACT, id);
            w.str(key::SUBJECT, "s")?;
            w.str(key::TEXT, "t")?;
            Ok(())
        }),
        ErrorCode::NOT_FOUND,
    );
    let r = ok(b.ucs(ucs::CONTACT_SEARCH, |w| {
        w.str(key::KEY, "email")?;
        w.str(key::VALUE, "same@x")?;
        Ok(())
    }));
    assert!(r.body().list(key::CONTACTS).unwrap().is_empty());
    // Identify in tenant 2 creates its own contact rather than finding tenant 1's.
    let r = ok(b.ucs(ucs::CONTACT_IDENTIFY, |w| {
        w.str(key::EMAIL, "same@x")?;
        Ok(())
    }));
    assert_eq!(int(&r, key::CREATED), 1);
    assert_ne!(int(&r, key::CONTACT), id);
    // Tenant 1's contact is intact.
    let g = ok(a.ucs(ucs::CONTACT_GET, with_contact(id)));
    assert_eq!(
        attrs(g.body().list(key::ATTRS).unwrap()),
        vec![("email".into(), "same@x".into()), ("k".into(), "v".into())]
    );
}
