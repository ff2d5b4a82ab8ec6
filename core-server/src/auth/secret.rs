//! Hashing and checking the secrets desktops and service accounts present.
//!
//! Two kinds, because they need different costs:
//! - **Passwords** (people choose them, so they are guessable) are stored as argon2id PHC
//!   strings. Verifying one is deliberately slow, and the parameters travel inside the stored
//!   string, so raising them later only affects new and rotated passwords.
//! - **API keys** (service accounts: media servers, routing, health checks) are 32 random bytes
//!   the server generates, so a fast keyed hash suffices: HMAC-SHA-256 under a random salt kept
//!   with the row. Verifying one costs about a microsecond.
//!
//! Every comparison is constant-time (argon2's output compare, `ring::hmac::verify`, `subtle`).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// A secret from the wire or stdin. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wrap secret bytes.
    pub fn new(b: impl Into<Vec<u8>>) -> Secret {
        Secret(b.into())
    }

    /// The bytes, for hashing.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// Whether `presented` equals the `configured` secret, compared in constant time (`subtle`);
/// an empty configured secret matches nothing. Used for the link secret and the admin token.
pub fn ct_eq(presented: &[u8], configured: &[u8]) -> bool {
    !configured.is_empty() && bool::from(subtle::ConstantTimeEq::ct_eq(presented, configured))
}

/// Hashing failed (bad parameters, no randomness).
#[derive(Debug, thiserror::Error)]
#[error("secret hashing: {0}")]
pub struct HashError(pub String);

/// argon2id cost parameters for new password hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Cost {
    /// Memory in KiB (at least 8).
    pub m_kib: u32,
    /// Passes (at least 1).
    pub t: u32,
    /// Lanes (at least 1).
    pub p: u32,
}

impl Default for Argon2Cost {
    /// OWASP's first recommendation for argon2id: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        Argon2Cost {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
        }
    }
}

/// `n` random bytes from the operating system.
///
/// # Errors
/// No randomness available.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, HashError> {
    let mut v = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut v)
        .map_err(|_: ring::error::Unspecified| HashError("no system randomness".into()))?;
    Ok(v)
}

/// Hash a password with argon2id at `cost`; returns the PHC string to store.
///
/// # Errors
/// Parameters out of range, or no randomness.
pub fn hash_password(pw: &Secret, cost: Argon2Cost) -> Result<String, HashError> {
    let params = Params::new(cost.m_kib, cost.t, cost.p, None)
        .map_err(|e| HashError(format!("argon2 parameters: {e}")))?;
    let salt =
        SaltString::encode_b64(&random_bytes(16)?).map_err(|e| HashError(format!("salt: {e}")))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(pw.expose(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(format!("argon2: {e}")))
}

/// Whether `pw` matches a stored PHC string (with the parameters stored in it).
pub fn verify_password(pw: &Secret, stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    Argon2::default()
        .verify_password(pw.expose(), &parsed)
        .is_ok()
}

/// Prefix of generated API keys, so that operators (and secret scanners) recognise them.
pub const API_KEY_PREFIX: &str = "dmk_";

/// A new random API key (`dmk_` and 64 hex digits).
///
/// # Errors
/// No randomness.
pub fn new_api_key() -> Result<Secret, HashError> {
    Ok(Secret::new(format!(
        "{API_KEY_PREFIX}{}",
        hex::encode(random_bytes(32)?)
    )))
}

/// Hash an API key for storage: `<hex salt>:<hex HMAC-SHA-256(salt, key)>`.
///
/// # Errors
/// No randomness.
pub fn hash_api_key(key: &Secret) -> Result<String, HashError> {
    let salt = random_bytes(16)?;
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &salt), key.expose());
    Ok(format!(
        "{}:{}",
        hex::encode(&salt),
        hex::encode(tag.as_ref())
    ))
}

/// Whether `key` matches a stored [`hash_api_key`] string (constant-time compare).
pub fn verify_api_key(key: &Secret, stored: &str) -> bool {
    let Some((salt, tag)) = stored.split_once(':') else {
        return false;
    };
    let (Ok(salt), Ok(tag)) = (hex::decode(salt), hex::decode(tag)) else {
        return false;
    };
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, &salt),
        key.expose(),
        &tag,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Argon2Cost = Argon2Cost {
        m_kib: 8,
        t: 1,
        p: 1,
    };

    #[test]
    fn password_round_trip_uses_stored_parameters() {
        let pw = Secret::new("correct horse");
        let h = hash_password(&pw, CHEAP).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{h}");
        assert!(verify_password(&pw, &h));
        assert!(!verify_password(&Secret::new("correct horsf"), &h));
        assert!(!verify_password(&pw, "not a phc string"));
        // Two hashes of one password differ (random salt).
        assert_ne!(h, hash_password(&pw, CHEAP).unwrap());
    }

    #[test]
    fn api_key_round_trip() {
        let k = new_api_key().unwrap();
        assert!(k.expose().starts_with(API_KEY_PREFIX.as_bytes()));
        assert_eq!(k.expose().len(), 4 + 64);
        let h = hash_api_key(&k).unwrap();
        assert!(verify_api_key(&k, &h));
        assert!(!verify_api_key(&new_api_key().unwrap(), &h));
        assert!(!verify_api_key(&k, "zz:zz"));
    }

    #[test]
    fn debug_hides_the_bytes() {
        let s = format!("{:?}", Secret::new("hunter2"));
        assert!(!s.contains("hunter2"), "{s}");
    }
}
