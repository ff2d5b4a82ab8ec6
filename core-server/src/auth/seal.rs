//! The signed format both kinds of token share (reconnect tokens, [`super::token`]; resume
//! tokens, [`super::resume`]): `<prefix><hex payload>.<hex tag>`, the tag an HMAC-SHA-256 of a
//! domain label and the payload. Each kind has its own prefix and label, so no token of one
//! kind, nor any other HMAC under the same key, passes for one of the other. Tags are compared
//! in constant time.

use ring::hmac;

/// An HMAC key. Its `Debug` shows nothing of it.
pub struct SealKey(hmac::Key);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// A key from secret bytes.
    pub fn new(bytes: &[u8]) -> SealKey {
        SealKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    fn tag(&self, label: &[u8], payload: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(label);
        ctx.update(payload);
        ctx.sign()
    }

    /// `payload`, signed under `label`, written with `prefix`.
    pub fn seal(&self, prefix: &str, label: &[u8], payload: &[u8]) -> String {
        let tag = self.tag(label, payload);
        format!(
            "{prefix}{}.{}",
            hex::encode(payload),
            hex::encode(tag.as_ref())
        )
    }

    /// The payload of a token [`SealKey::seal`] wrote with `prefix` and `label`, if its tag
    /// is right.
    pub fn open(&self, prefix: &str, label: &[u8], token: &str) -> Option<Vec<u8>> {
        let rest = token.strip_prefix(prefix)?;
        let (p, tag) = rest.split_once('.')?;
        let p = hex::decode(p).ok()?;
        let tag = hex::decode(tag).ok()?;
        let want = self.tag(label, &p);
        bool::from(subtle::ConstantTimeEq::ct_eq(want.as_ref(), tag.as_slice())).then_some(p)
    }
}
