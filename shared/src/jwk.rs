//! JSON Web Keys (RFC 7517) for Ed25519 (RFC 8037) and the verification key set built from them.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::b64;

/// The only JWS algorithm Gatehouse issues or accepts (RFC 8037 section 3.1).
pub const ALGORITHM: &str = "EdDSA";

/// One public key as published in the JWKS document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Jwk {
    /// Key type; `OKP` for Ed25519 (RFC 8037 section 2).
    pub kty: String,
    /// Curve name; `Ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// The 32-byte public key, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// Key id that tokens name in their `kid` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Intended algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Intended use; `sig`.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

impl Jwk {
    /// The JWK of an Ed25519 public key, with its RFC 7638 thumbprint as `kid`.
    pub fn from_ed25519(key: &VerifyingKey) -> Self {
        let x = b64::encode(key.as_bytes());
        Jwk {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            kid: Some(thumbprint(&x)),
            x: Some(x),
            alg: Some(ALGORITHM.into()),
            use_: Some("sig".into()),
        }
    }

    /// The Ed25519 key this JWK holds, or `None` for any other kind of key.
    pub fn ed25519_key(&self) -> Option<VerifyingKey> {
        if self.kty != "OKP" || self.crv.as_deref() != Some("Ed25519") {
            return None;
        }
        if self.alg.as_deref().is_some_and(|alg| alg != ALGORITHM) {
            return None;
        }
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let bytes: [u8; 32] = b64::decode(self.x.as_deref()?)?.try_into().ok()?;
        VerifyingKey::from_bytes(&bytes).ok()
    }
}

/// RFC 7638 thumbprint of an Ed25519 JWK: SHA-256 over the required members in lexicographic
/// order (`crv`, `kty`, `x`; RFC 8037 section 2), base64url. Stable across restarts and hosts,
/// so no one has to invent key ids.
pub fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    b64::encode(Sha256::digest(canonical.as_bytes()))
}

/// A JWK Set document (RFC 7517 section 5), as served at `/.well-known/jwks.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JwkSet {
    /// The keys, current first.
    pub keys: Vec<Jwk>,
}

/// The verification keys a validator trusts, looked up by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
}

impl KeySet {
    /// Keeps every usable Ed25519 key that has a `kid`. Keys of other types are skipped, as
    /// RFC 7517 section 5 asks of implementations that meet a `kty` they do not understand.
    pub fn from_jwks(set: &JwkSet) -> Self {
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.kid.clone()?, jwk.ed25519_key()?)))
            .collect();
        KeySet { keys }
    }

    /// A key set holding the given keys under their RFC 7638 thumbprints.
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a VerifyingKey>) -> Self {
        let keys = keys.into_iter().map(|key| (kid_of(key), *key)).collect();
        KeySet { keys }
    }

    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    /// Whether `kid` names a key of this set.
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The `kid` Gatehouse gives an Ed25519 key: its RFC 7638 thumbprint.
pub fn kid_of(key: &VerifyingKey) -> String {
    thumbprint(&b64::encode(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use ed25519_dalek::SigningKey;

    fn key(seed: u8) -> VerifyingKey {
        SigningKey::from_bytes(&[seed; 32]).verifying_key()
    }

    #[test]
    fn rfc_8037_thumbprint_example_matches() {
        // RFC 8037 appendix A.3.
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        assert_eq!(thumbprint(x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn jwks_round_trip_keeps_keys_by_kid() {
        let (a, b) = (key(1), key(2));
        let set = JwkSet {
            keys: vec![Jwk::from_ed25519(&a), Jwk::from_ed25519(&b)],
        };
        let json = serde_json::to_string(&set).unwrap();

        let keys = KeySet::from_jwks(&serde_json::from_str(&json).unwrap());

        assert_eq!(keys.len(), 2);
        assert_eq!(keys.get(&kid_of(&a)), Some(&a));
        assert_eq!(keys.get(&kid_of(&b)), Some(&b));
    }

    #[test]
    fn keys_of_other_types_are_skipped() {
        let mut rsa = Jwk::from_ed25519(&key(3));
        rsa.kty = "RSA".into();
        let mut wrong_alg = Jwk::from_ed25519(&key(4));
        wrong_alg.alg = Some("ES256".into());
        let mut no_kid = Jwk::from_ed25519(&key(5));
        no_kid.kid = None;
        let good = Jwk::from_ed25519(&key(6));

        let keys = KeySet::from_jwks(&JwkSet {
            keys: vec![rsa, wrong_alg, no_kid, good.clone()],
        });

        assert_eq!(keys.len(), 1);
        assert!(keys.contains(good.kid.as_deref().unwrap()));
    }
}
