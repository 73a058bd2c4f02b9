//! API keys: `gth_<id>_<secret>`, stored as SHA-256 of the secret and compared in constant time.
//!
//! The 16-hex-digit id is a public handle: it is what operators list and revoke, what logs may
//! show, and what a server looks a key up by. The 64-hex-digit secret carries 256 random bits; only
//! its SHA-256 is stored. A fast hash is right here, unlike for passwords: a secret of 256 random
//! bits cannot be guessed, so key stretching adds cost without adding safety (OWASP Password
//! Storage Cheat Sheet covers low-entropy secrets; NIST SP 800-63B 5.1.1.2 likewise exempts
//! generated secrets). The recognizable prefix lets secret scanners find leaked keys.

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every Gatehouse API key starts with.
pub const PREFIX: &str = "gth_";

/// Random bytes in the public id: enough that ids never collide in practice.
const ID_BYTES: usize = 8;

/// Random bytes in the secret: 256 bits, beyond any guessing.
const SECRET_BYTES: usize = 32;

/// Length of a well-formed key: prefix, id, separator, secret.
pub const KEY_LEN: usize = PREFIX.len() + 2 * ID_BYTES + 1 + 2 * SECRET_BYTES;

/// Why a presented key string was refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// The text does not have the `gth_<16 hex>_<64 hex>` shape.
    #[error("api key is malformed")]
    Malformed,
}

/// A full API key, as handed to its owner once at creation.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    text: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({PREFIX}{}_***)", self.id())
    }
}

impl ApiKey {
    /// A new random key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        ApiKey {
            text: format!("{PREFIX}{}_{}", hex::encode(id), hex::encode(secret)),
        }
    }

    /// Checks the shape of a presented key. Says nothing about whether the key exists.
    pub fn parse(text: &str) -> Result<Self, ApiKeyError> {
        let body = text.strip_prefix(PREFIX).ok_or(ApiKeyError::Malformed)?;
        let (id, secret) = body.split_once('_').ok_or(ApiKeyError::Malformed)?;
        let lower_hex =
            |s: &str, len: usize| crate::decode_lower_hex(s).is_some_and(|b| b.len() == len);
        if !lower_hex(id, ID_BYTES) || !lower_hex(secret, SECRET_BYTES) {
            return Err(ApiKeyError::Malformed);
        }
        Ok(ApiKey {
            text: text.to_owned(),
        })
    }

    /// The public id, without prefix.
    pub fn id(&self) -> &str {
        &self.text[PREFIX.len()..PREFIX.len() + 2 * ID_BYTES]
    }

    /// The whole key. Show it to its owner once; never log it.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// What is stored at rest: SHA-256 of the secret part.
    pub fn secret_hash(&self) -> [u8; 32] {
        Sha256::digest(&self.text.as_bytes()[PREFIX.len() + 2 * ID_BYTES + 1..]).into()
    }

    /// Whether this key's secret matches `stored`, in time independent of where they differ.
    pub fn matches(&self, stored: &[u8]) -> bool {
        self.secret_hash().ct_eq(stored).into()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use rand_core::OsRng;

    use super::*;

    #[test]
    fn generated_key_parses_back_to_itself() {
        let key = ApiKey::generate(&mut OsRng);

        let parsed = ApiKey::parse(key.expose()).unwrap();

        assert_eq!(parsed, key);
        assert_eq!(key.expose().len(), KEY_LEN);
        assert!(key.expose().starts_with("gth_"));
        assert_eq!(parsed.id().len(), 16);
    }

    #[test]
    fn generated_keys_differ() {
        let (a, b) = (ApiKey::generate(&mut OsRng), ApiKey::generate(&mut OsRng));

        assert_ne!(a.id(), b.id());
        assert_ne!(a.secret_hash(), b.secret_hash());
    }

    #[test]
    fn key_matches_only_its_own_hash() {
        let key = ApiKey::generate(&mut OsRng);
        let other = ApiKey::generate(&mut OsRng);

        assert!(key.matches(&key.secret_hash()));
        assert!(!key.matches(&other.secret_hash()));
        assert!(!key.matches(&key.secret_hash()[..31]));
    }

    #[test]
    fn same_id_with_another_secret_does_not_match() {
        let key = ApiKey::generate(&mut OsRng);
        let guess = ApiKey::parse(&format!("gth_{}_{}", key.id(), "0".repeat(64))).unwrap();

        assert_eq!(guess.id(), key.id());
        assert!(!guess.matches(&key.secret_hash()));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = ApiKey::generate(&mut OsRng).expose().to_owned();
        let cases = [
            String::new(),
            "gth_".into(),
            good.replacen("gth_", "ghp_", 1),
            good.to_uppercase(),
            format!("{good}0"),
            good[..good.len() - 1].to_owned(),
            good.replace('_', "-"),
            format!("gth_{}_{}", "g".repeat(16), "0".repeat(64)),
        ];

        for case in cases {
            assert_eq!(
                ApiKey::parse(&case),
                Err(ApiKeyError::Malformed),
                "{case:?}"
            );
        }
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let key = ApiKey::generate(&mut OsRng);

        let debug = format!("{key:?}");

        assert!(debug.contains(key.id()));
        assert!(!debug.contains(&key.expose()[24..]));
    }
}
