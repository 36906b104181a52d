//! Admin login tokens: `nas1:USER:EXPIRES_MS:MAC`, where MAC is
//! HMAC-SHA256 under the cluster's token key over the version, the user,
//! the expiry and the user's current password hash.
//!
//! Any CHN checks a token from its copy of the tables, without a write.
//! Binding the MAC to the password hash ends every token of a user whose
//! password changed. Owns the format; it must never decide what a user
//! may do (the role is read from the user's row at every call).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: &str = "nas1";

/// What a well-formed token claims; not yet checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Claim<'a> {
    pub user: &'a str,
    pub expires_ms: u64,
    mac: &'a str,
}

fn mac(key: &[u8], user: &str, expires_ms: u64, password_hash: &str) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(key).ok()?;
    for part in [VERSION, user, &expires_ms.to_string(), password_hash] {
        m.update(part.as_bytes());
        m.update(&[0]);
    }
    Some(m)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A token for `user` that ends at `expires_ms`; None when the key is
/// unusable (empty).
pub fn sign(key: &[u8], user: &str, expires_ms: u64, password_hash: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let m = mac(key, user, expires_ms, password_hash)?;
    Some(format!(
        "{VERSION}:{user}:{expires_ms}:{}",
        hex(&m.finalize().into_bytes())
    ))
}

/// Splits a token into what it claims.
pub fn parse(token: &str) -> Option<Claim<'_>> {
    let mut parts = token.split(':');
    let (version, user, expires, mac) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != VERSION || parts.next().is_some() || user.is_empty() {
        return None;
    }
    Some(Claim {
        user,
        expires_ms: expires.parse().ok()?,
        mac,
    })
}

/// Whether the claim's MAC is right for this key and password hash
/// (compared in constant time).
pub fn verify(claim: &Claim<'_>, key: &[u8], password_hash: &str) -> bool {
    let (Some(m), Some(given)) = (mac(key, claim.user, claim.expires_ms, password_hash), unhex(claim.mac)) else {
        return false;
    };
    !key.is_empty() && m.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = &[7; 32];

    #[test]
    fn a_signed_token_verifies_and_nothing_else_does() {
        let t = sign(KEY, "ops.alice", 1_000, "$argon2id$h1").unwrap();
        let c = parse(&t).unwrap();
        assert_eq!((c.user, c.expires_ms), ("ops.alice", 1_000));
        assert!(verify(&c, KEY, "$argon2id$h1"));
        assert!(!verify(&c, &[8; 32], "$argon2id$h1"), "another key");
        assert!(!verify(&c, KEY, "$argon2id$h2"), "password changed");
        let forged = t.replace(":1000:", ":9999999999999:");
        assert!(!verify(&parse(&forged).unwrap(), KEY, "$argon2id$h1"), "expiry changed");
        let other = t.replace("ops.alice", "root");
        assert!(!verify(&parse(&other).unwrap(), KEY, "$argon2id$h1"), "user changed");
        for bad in [
            "",
            "nas1",
            "nas1:a:b:c",
            "nas2:a:1:00",
            "nas1::1:00",
            "nas1:a:1:00:extra",
        ] {
            assert!(parse(bad).is_none_or(|c| !verify(&c, KEY, "$argon2id$h1")), "{bad:?}");
        }
        assert!(sign(&[], "a", 1, "h").is_none());
    }
}
