//! A cache of tokens whose signature has been checked, so that the next check of the same token
//! costs a keyed hash and a map lookup instead of an Ed25519 verification (about 50 µs).
//!
//! What a hit skips is only what cannot change for a given token: its size, header, signature and
//! claims. What can change is checked on every hit exactly as [`validate`] checks it: the key that
//! verified it must still be in the key set (a key dropped from the JWKS, or replaced under the same
//! `kid`, invalidates every token it signed), and the issuer, audience and validity window are
//! checked at the current time, so an entry ends with its token. Revocation (an ended session, a
//! deactivated account) is not a property of the token: callers check it on every request, hit or
//! miss.
//!
//! Entries are keyed by an HMAC-SHA256 of the token under a key of the caller's, never by the
//! token: the map holds no bearer credential, and its keys cannot be predicted or chosen by
//! whoever sends tokens. Only tokens that validated are kept, so refused tokens cannot fill it,
//! and it holds at most its capacity (see [`BoundedMap`]).

use std::sync::Mutex;

use ed25519_dalek::VerifyingKey;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::bounded::BoundedMap;
use crate::jwk::KeySet;
use crate::token::{AccessClaims, TokenError, Validation, check_claims, validate};

/// A verified-token cache; see the module documentation.
pub struct TokenCache {
    key: [u8; 32],
    entries: Mutex<BoundedMap<[u8; 32], Verified>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TokenCache")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// What a token was verified as.
#[derive(Debug)]
struct Verified {
    claims: AccessClaims,
    kid: String,
    key: VerifyingKey,
}

/// Whether a check was answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The token was found and still passes.
    Hit,
    /// The signature was checked.
    Miss,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (below 2: none, every check verifies), keyed under
    /// `key`, which should be random or derived from a secret.
    pub fn new(key: [u8; 32], capacity: usize) -> Self {
        TokenCache {
            key,
            entries: Mutex::new(BoundedMap::new(capacity)),
        }
    }

    /// [`validate`], answered from the cache when `token` validated before under the same key.
    pub fn validate(
        &self,
        token: &str,
        keys: &KeySet,
        validation: &Validation,
        now: i64,
    ) -> Result<(AccessClaims, Lookup), TokenError> {
        let digest = self.digest(token);
        let hit = {
            let mut entries = self.entries.lock().expect("not poisoned");
            match entries.get(&digest) {
                Some(entry) if keys.get(&entry.kid) == Some(&entry.key) => {
                    let checked = check_claims(&entry.claims, validation, now);
                    match checked {
                        Ok(()) => Some(Ok(entry.claims.clone())),
                        Err(error) => {
                            entries.remove(&digest);
                            Some(Err(error))
                        }
                    }
                }
                Some(_) => {
                    entries.remove(&digest);
                    None
                }
                None => None,
            }
        };
        if let Some(answer) = hit {
            return answer.map(|claims| (claims, Lookup::Hit));
        }
        // The lock is not held across the signature check, so checks of different tokens run in
        // parallel.
        let claims = validate(token, keys, validation, now)?;
        let kid = crate::token::key_id(token)?;
        if let Some(key) = keys.get(&kid) {
            let entry = Verified {
                claims: claims.clone(),
                kid,
                key: *key,
            };
            self.entries
                .lock()
                .expect("not poisoned")
                .insert(digest, entry);
        }
        Ok((claims, Lookup::Miss))
    }

    /// Forgets every token.
    pub fn clear(&self) {
        self.entries.lock().expect("not poisoned").clear();
    }

    /// How many tokens it holds.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("not poisoned").len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn digest(&self, token: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use ed25519_dalek::SigningKey;
    use serde_json::{Value, json};

    use super::*;
    use crate::jwk::kid_of;
    use crate::token::encode_jws;

    const NOW: i64 = 1_800_000_000;
    const EXP: i64 = NOW + 840;
    const ISSUER: &str = "https://auth.example.test";
    const AUDIENCE: &str = "gatehouse";

    fn validation() -> Validation {
        Validation::new(ISSUER, AUDIENCE).with_leeway(10)
    }

    fn signing_key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn token(key: &SigningKey) -> String {
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid_of(&key.verifying_key())});
        let claims: Value = json!({
            "sub": "0190f5f4-7a3e-7c3b-9d2e-111111111111",
            "sid": "0190f5f4-7a3e-7c3b-9d2e-222222222222",
            "jti": "0190f5f4-7a3e-7c3b-9d2e-333333333333",
            "iat": NOW - 60,
            "nbf": NOW - 60,
            "exp": EXP,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "email": "ada@example.test",
        });
        encode_jws(&header, &claims, key)
    }

    #[test]
    fn a_second_check_is_a_hit_with_the_same_claims() {
        let key = signing_key(1);
        let keys = KeySet::from_keys([&key.verifying_key()]);
        let token = token(&key);
        let cache = TokenCache::new([7; 32], 100);

        let (first, miss) = cache.validate(&token, &keys, &validation(), NOW).unwrap();
        let (second, hit) = cache.validate(&token, &keys, &validation(), NOW).unwrap();

        assert_eq!((miss, hit), (Lookup::Miss, Lookup::Hit));
        assert_eq!(first, second);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn an_entry_expires_with_its_token() {
        let key = signing_key(1);
        let keys = KeySet::from_keys([&key.verifying_key()]);
        let token = token(&key);
        let cache = TokenCache::new([7; 32], 100);
        cache.validate(&token, &keys, &validation(), NOW).unwrap();

        let late = EXP + 10;
        let refused = cache.validate(&token, &keys, &validation(), late);

        assert_eq!(refused.unwrap_err(), TokenError::Expired);
        assert!(cache.is_empty(), "the expired entry is dropped");
        let other_audience = Validation::new(ISSUER, "another-api");
        cache.validate(&token, &keys, &validation(), NOW).unwrap();
        let wrong = cache.validate(&token, &keys, &other_audience, NOW);
        assert_eq!(wrong.unwrap_err(), TokenError::WrongAudience);
    }

    #[test]
    fn a_key_leaving_the_set_invalidates_its_tokens() {
        let (old, new) = (signing_key(1), signing_key(2));
        let both = KeySet::from_keys([&old.verifying_key(), &new.verifying_key()]);
        let token = token(&old);
        let cache = TokenCache::new([7; 32], 100);
        cache.validate(&token, &both, &validation(), NOW).unwrap();

        let only_new = KeySet::from_keys([&new.verifying_key()]);
        let refused = cache.validate(&token, &only_new, &validation(), NOW);

        assert_eq!(refused.unwrap_err(), TokenError::UnknownKeyId);
        assert!(cache.is_empty());
    }

    #[test]
    fn refused_tokens_are_not_kept_and_a_cache_of_zero_keeps_nothing() {
        let key = signing_key(1);
        let keys = KeySet::from_keys([&key.verifying_key()]);
        let cache = TokenCache::new([7; 32], 100);
        let forged = token(&signing_key(3));
        assert!(cache.validate(&forged, &keys, &validation(), NOW).is_err());
        assert!(cache.validate(&forged, &keys, &validation(), NOW).is_err());
        assert!(cache.is_empty());

        let off = TokenCache::new([7; 32], 0);
        let token = token(&key);
        for _ in 0..2 {
            let (_, lookup) = off.validate(&token, &keys, &validation(), NOW).unwrap();
            assert_eq!(lookup, Lookup::Miss);
        }
    }
}
