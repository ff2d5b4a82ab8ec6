//! Resume tokens (PROTOCOL.md §4.6): what lets a desktop whose connection or proxy went away
//! take its session back, with no password and no second login.
//!
//! A token names one session of this process: `dms1.<hex payload>.<hex tag>`, the payload
//! being the tenant (u32), the session's key (u64), both big-endian, then the agent id's bytes;
//! the tag an HMAC-SHA-256 of a domain label and the payload. The key is drawn at random when
//! the process starts and never leaves it: sessions live in this process's memory only, so a
//! token has nothing to name once the process is gone, and a token of another process (a
//! restarted server, the standby that took over) fails its tag and is refused like a forged
//! one. There is no expiry in the token: it is valid exactly as long as its session is
//! (attached, or detached within `resume_grace_ms`), which the engine checks.

use super::seal::SealKey;

/// What a resume token names, once its tag checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// The session's tenant.
    pub tenant: u32,
    /// The session's agent.
    pub agent: String,
    /// The engine's key of the session.
    pub session: u64,
}

const PREFIX: &str = "dms1.";
/// Bound into the MAC so that no other HMAC under the same key can pass for a token.
const LABEL: &[u8] = b"deskmux resume token v1\0";
const FIXED: usize = 4 + 8;

/// This process's resume-token key. Its `Debug` shows nothing of it.
pub struct ResumeKey(SealKey);

impl std::fmt::Debug for ResumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeKey(..)")
    }
}

impl ResumeKey {
    /// A fresh random key.
    ///
    /// # Errors
    /// No randomness available.
    pub fn random() -> Result<ResumeKey, super::secret::HashError> {
        Ok(ResumeKey::from_bytes(&super::secret::random_bytes(32)?))
    }

    /// A key from bytes (tests).
    pub fn from_bytes(k: &[u8]) -> ResumeKey {
        ResumeKey(SealKey::new(k))
    }

    /// The token of session `n`.
    pub fn mint(&self, n: &Named) -> String {
        let mut p = Vec::with_capacity(FIXED + n.agent.len());
        p.extend_from_slice(&n.tenant.to_be_bytes());
        p.extend_from_slice(&n.session.to_be_bytes());
        p.extend_from_slice(n.agent.as_bytes());
        self.0.seal(PREFIX, LABEL, &p)
    }

    /// What a token this key minted names, if its tag is right (compared in constant time).
    /// Whether that session still exists, and is the hello's tenant and agent, is for the
    /// caller.
    pub fn open(&self, token: &str) -> Option<Named> {
        let p = self.0.open(PREFIX, LABEL, token)?;
        if p.len() < FIXED {
            return None;
        }
        Some(Named {
            tenant: u32::from_be_bytes(p[0..4].try_into().ok()?),
            session: u64::from_be_bytes(p[4..12].try_into().ok()?),
            agent: String::from_utf8(p[FIXED..].to_vec()).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named() -> Named {
        Named {
            tenant: 7,
            agent: "alice".into(),
            session: 42,
        }
    }

    #[test]
    fn round_trip() {
        let k = ResumeKey::from_bytes(&[1u8; 32]);
        assert_eq!(k.open(&k.mint(&named())), Some(named()));
    }

    #[test]
    fn refuses_another_process_and_any_changed_byte() {
        let k = ResumeKey::from_bytes(&[1u8; 32]);
        let t = k.mint(&named());
        assert_eq!(ResumeKey::random().unwrap().open(&t), None);
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
        assert_eq!(k.open("dms1.zz.zz"), None);
        // A reconnect token (another label, another layout) is not a resume token.
        assert_eq!(k.open("dmr1.00.00"), None);
    }
}
