//! Vectors for bodies (PROTOCOL.md §3): every value type a body can hold, the deepest nesting
//! allowed, and the bodies that are malformed while framing stays intact (the answer is
//! `MALFORMED`, the connection stays). Kept apart from the framing vectors: here the head is
//! always a good SUBMIT and only the body bytes vary.

use deskmux_codec::msg;
use deskmux_codec::{Head, Kind, Service};

use crate::generate::{Gen, V, body_of, head, nested};
use crate::parse::BodyExpect;

/// The SUBMIT each body of this module is carried by.
fn submit(corr: u64) -> Head {
    head(
        Kind::Request,
        Service::Interaction,
        msg::ixn::SUBMIT,
        7,
        corr,
        1001,
    )
}

/// The well-formed bodies (they come before the framing vectors in §11).
pub(crate) fn add_well_formed(g: &mut Gen) {
    // §3: "Keys may repeat; a lookup returns the first. An empty key is allowed (list
    // elements)." Types 0x00 and 0x05–0xFF are skipped by their length.
    g.frame(
        "body-every-value-type",
        "int (extremes), str (UTF-8, empty), bin (empty), lists (empty, nested, empty keys), \
         unknown type 0x07 and 0xff, a repeated key",
        submit(46),
        &[
            ("i", V::Int(-1)),
            ("min", V::Int(i64::MIN)),
            ("max", V::Int(i64::MAX)),
            ("s", V::Str("héllo ☎ \"q\" \\")),
            ("empty", V::Str("")),
            ("b", V::Bin(&[0x00, 0x7F, 0x80, 0xFF])),
            ("nob", V::Bin(&[])),
            ("nol", V::List(vec![])),
            (
                "l",
                V::List(vec![
                    ("", V::Int(1)),
                    ("", V::Str("two")),
                    ("inner", V::List(vec![("x", V::Int(3))])),
                ]),
            ),
            ("u", V::Unknown(0x07, &[0x01, 0x02, 0x03])),
            ("uff", V::Unknown(0xFF, &[])),
            ("i", V::Int(2)),
        ],
    );

    // §3: "Lists nest at most 16 deep; a deeper body is malformed."
    g.frame(
        "body-nested-16-deep",
        "16 lists nested inside each other: the deepest a body may go",
        submit(47),
        &nested(16),
    );
}

/// The malformed bodies (they come after the framing vectors in §11).
pub(crate) fn add_malformed(g: &mut Gen) {
    // §3: "A body that ends inside an item, or a key or string that is not UTF-8, is
    // malformed: the answer is `MALFORMED`." Framing is intact.
    let malformed: [(&str, &'static str, Vec<u8>, &str); 8] = [
        (
            "body-bad-utf8-str",
            "str value c3 28 is not UTF-8",
            vec![1, b's', 0x02, 0, 0, 0, 2, 0xC3, 0x28],
            "Utf8",
        ),
        (
            "body-bad-utf8-key",
            "key ff is not UTF-8",
            vec![1, 0xFF, 0x01, 0, 0, 0, 0, 0, 0, 0, 1],
            "Utf8",
        ),
        (
            "body-truncated-key",
            "key length 5 with 2 key bytes",
            vec![5, b'a', b'b'],
            "Truncated",
        ),
        (
            "body-truncated-type",
            "the body ends after the key, before the type byte",
            vec![1, b'n'],
            "Truncated",
        ),
        (
            "body-truncated-int",
            "an int with 4 of its 8 bytes",
            vec![1, b'n', 0x01, 0, 0, 0, 1],
            "Truncated",
        ),
        (
            "body-truncated-len",
            "a str announcing 10 bytes with 3",
            vec![1, b's', 0x02, 0, 0, 0, 10, b'a', b'b', b'c'],
            "Truncated",
        ),
        (
            "body-truncated-in-list",
            "a well-formed int, then a list whose own items end inside an int",
            {
                let mut b = body_of(&[("ok", V::Int(1))]);
                b.extend_from_slice(&[1, b'l', 0x04, 0, 0, 0, 5, 1, b'x', 0x01, 0, 0]);
                b
            },
            "Truncated",
        ),
        // §3: "Lists nest at most 16 deep; a deeper body is malformed."
        (
            "body-too-deep",
            "17 lists nested inside each other: one too deep",
            body_of(&nested(17)),
            "TooDeep",
        ),
    ];
    for (i, (name, note, body, err)) in malformed.into_iter().enumerate() {
        g.frame_raw(
            name,
            note,
            submit(60 + i as u64),
            &body,
            BodyExpect::Error(err.into()),
            None,
        );
    }
}
