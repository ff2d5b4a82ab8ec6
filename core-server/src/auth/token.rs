//! Reconnect tokens: what spares a 20,000-desktop reconnect storm 20,000 argon2 verifications.
//!
//! Every successful hello is answered with a token (server hello key `reconnect`, PROTOCOL.md
//! §4.1) that a desktop may present instead of its password on its next hello, until it
//! expires. It is `dmr1.<hex payload>.<hex tag>`:
//! - payload: tenant (u32), expiry in UNIX seconds (u64), the credential's generation (u64),
//!   all big-endian, then the agent id's bytes;
//! - tag: HMAC-SHA-256 of a domain label and the payload under the server's token key.
//!
//! The generation ties a token to the credential it was minted for: rotating or disabling the
//! credential bumps it, so every token handed out before stops working at once. The key is
//! shared by every instance that uses the same database (it is stored there), or set for a
//! whole deployment with `auth.token_key_file`.

use super::seal::SealKey;

/// What a token says, once its tag checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Tenant it was minted for.
    pub tenant: u32,
    /// Agent it was minted for.
    pub agent: String,
    /// UNIX seconds after which it is refused.
    pub expires_s: u64,
    /// The credential's generation when it was minted.
    pub generation: u64,
}

/// Prefix and version of the format.
const PREFIX: &str = "dmr1.";
/// Bound into the MAC so that no other HMAC under the same key can pass for a token.
const LABEL: &[u8] = b"deskmux reconnect token v1\0";
/// Fixed part of the payload: tenant, expiry, generation.
const FIXED: usize = 4 + 8 + 8;

/// The signing key. Its `Debug` shows nothing of it.
pub struct TokenKey(SealKey);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key from secret bytes (at least 32 of them; the caller checks).
    pub fn new(bytes: &[u8]) -> TokenKey {
        TokenKey(SealKey::new(bytes))
    }

    /// Mint a token for `c`.
    pub fn mint(&self, c: &Claims) -> String {
        let mut p = Vec::with_capacity(FIXED + c.agent.len());
        p.extend_from_slice(&c.tenant.to_be_bytes());
        p.extend_from_slice(&c.expires_s.to_be_bytes());
        p.extend_from_slice(&c.generation.to_be_bytes());
        p.extend_from_slice(c.agent.as_bytes());
        self.0.seal(PREFIX, LABEL, &p)
    }

    /// The claims of a token this key minted, if its tag is right. Expiry, tenant, agent and
    /// generation are for the caller to check.
    pub fn open(&self, token: &str) -> Option<Claims> {
        let p = self.0.open(PREFIX, LABEL, token)?;
        if p.len() < FIXED {
            return None;
        }
        let tenant = u32::from_be_bytes(p[0..4].try_into().ok()?);
        let expires_s = u64::from_be_bytes(p[4..12].try_into().ok()?);
        let generation = u64::from_be_bytes(p[12..20].try_into().ok()?);
        let agent = String::from_utf8(p[FIXED..].to_vec()).ok()?;
        Some(Claims {
            tenant,
            agent,
            expires_s,
            generation,
        })
    }
}

/// Whether `s` looks like a reconnect token (so a hello's `reconnect` key is not mistaken for
/// anything else in logs).
pub fn is_token(s: &str) -> bool {
    s.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            tenant: 7,
            agent: "alice".into(),
            expires_s: 1_900_000_000,
            generation: 3,
        }
    }

    #[test]
    fn round_trip() {
        let k = TokenKey::new(&[1u8; 32]);
        let t = k.mint(&claims());
        assert!(is_token(&t));
        assert_eq!(k.open(&t), Some(claims()));
    }

    #[test]
    fn refuses_other_keys_and_any_changed_byte() {
        let k = TokenKey::new(&[1u8; 32]);
        let t = k.mint(&claims());
        assert_eq!(TokenKey::new(&[2u8; 32]).open(&t), None);
        // Flip each hex digit of the payload and of the tag in turn.
        let bytes = t.as_bytes();
        for i in PREFIX.len()..bytes.len() {
            if bytes[i] == b'.' {
                continue;
            }
            let mut m = bytes.to_vec();
            m[i] = if m[i] == b'0' { b'1' } else { b'0' };
            let m = String::from_utf8(m).unwrap();
            assert_eq!(k.open(&m), None, "changed byte {i} accepted");
        }
        assert_eq!(k.open("dmr1.zz.zz"), None);
        assert_eq!(k.open(""), None);
    }
}
