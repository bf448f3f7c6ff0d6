//! Keyed hashing of credentials: two equal credentials hash alike under one
//! key, so the predictor can learn "this call sends the inbound request's
//! authorization" without ever holding the credential. The keys are random
//! per hasher (SipHash keyed by the standard library's `RandomState`), so
//! hashes mean nothing outside the process that made them.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// A keyed hasher for credential values.
#[derive(Debug, Clone, Default)]
pub struct SecretHasher {
    a: RandomState,
    b: RandomState,
}

/// The prefix of a hashed value, so a hash is never taken for a credential.
pub const PREFIX: &str = "keyed:";

impl SecretHasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// 128 bits of two independently keyed SipHashes over what `feed`
    /// writes: a digest to compare, never to show.
    pub fn digest(&self, feed: impl Fn(&mut dyn Hasher)) -> u128 {
        let (mut a, mut b) = (self.a.build_hasher(), self.b.build_hasher());
        feed(&mut a);
        feed(&mut b);
        (u128::from(a.finish()) << 64) | u128::from(b.finish())
    }

    /// `keyed:` and 32 hex digits (two independently keyed SipHashes).
    pub fn hash(&self, value: &str) -> String {
        format!(
            "{PREFIX}{:016x}{:016x}",
            self.a.hash_one(value),
            self.b.hash_one(value)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_hash_alike_and_keys_differ() {
        let a = SecretHasher::new();
        let b = SecretHasher::new();
        assert_eq!(a.hash("Bearer x"), a.hash("Bearer x"));
        assert_ne!(a.hash("Bearer x"), a.hash("Bearer y"));
        assert_ne!(a.hash("Bearer x"), b.hash("Bearer x"));
        assert!(!a.hash("Bearer x").contains("Bearer"));
    }

    #[test]
    fn digests_follow_what_is_fed() {
        let a = SecretHasher::new();
        let feed = |parts: &'static [&'static str]| {
            move |h: &mut dyn Hasher| {
                for p in parts {
                    h.write(p.as_bytes());
                    h.write_u8(0xff);
                }
            }
        };
        assert_eq!(a.digest(feed(&["x", "y"])), a.digest(feed(&["x", "y"])));
        assert_ne!(a.digest(feed(&["x", "y"])), a.digest(feed(&["xy", ""])));
        assert_ne!(
            a.digest(feed(&["x"])),
            SecretHasher::new().digest(feed(&["x"]))
        );
    }
}
