//! Issuing access tokens and handling Ed25519 private keys (feature `signing`; the origin only).

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use serde_json::json;

use crate::jwk::{ALGORITHM, Jwk, kid_of};
use crate::token::{ACCESS_TOKEN_TYPE, AccessClaims, encode_jws};

/// Why a key could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not a PEM-encoded PKCS#8 Ed25519 private key.
    #[error("not a PEM-encoded PKCS#8 Ed25519 private key")]
    InvalidPrivateKey,
    /// The text is neither a PEM-encoded Ed25519 public key (SPKI) nor a private key.
    #[error("not a PEM-encoded Ed25519 public or private key")]
    InvalidPublicKey,
}

/// The origin's signing key and its `kid`. `Debug` shows the `kid` and the public half only:
/// `ed25519_dalek::SigningKey` leaves its secret out.
#[derive(Debug)]
pub struct TokenSigner {
    key: SigningKey,
    kid: String,
}

impl TokenSigner {
    /// A signer for `key`, named by its RFC 7638 thumbprint.
    pub fn new(key: SigningKey) -> Self {
        let kid = kid_of(&key.verifying_key());
        TokenSigner { key, kid }
    }

    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        TokenSigner::new(SigningKey::generate(rng))
    }

    /// Loads a `-----BEGIN PRIVATE KEY-----` PKCS#8 document (RFC 8410), as written by
    /// `openssl genpkey -algorithm ed25519` or [`TokenSigner::to_pkcs8_pem`].
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(pem.trim())
            .map(TokenSigner::new)
            .map_err(|_| KeyError::InvalidPrivateKey)
    }

    /// The key as a PKCS#8 PEM document; wiped from memory when dropped. Version 1 (RFC 5208,
    /// the private key alone), as `openssl genpkey` writes it: OpenSSL 3.0 and Python's
    /// `cryptography` cannot read the version 2 that carries the public key too (RFC 5958).
    /// Both versions are read.
    pub fn to_pkcs8_pem(&self) -> zeroize::Zeroizing<String> {
        ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF)
        .expect("an Ed25519 key always encodes as PKCS#8")
    }

    /// The key id tokens carry in their header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> Jwk {
        Jwk::from_ed25519(&self.verifying_key())
    }

    /// Signs `claims` as an `at+jwt` access token.
    pub fn sign(&self, claims: &AccessClaims) -> String {
        let header = json!({ "alg": ALGORITHM, "typ": ACCESS_TOKEN_TYPE, "kid": self.kid });
        encode_jws(&header, claims, &self.key)
    }
}

/// Reads an Ed25519 public key from a `PUBLIC KEY` (SPKI) PEM document, or the public half of a
/// `PRIVATE KEY` one: how a previous signing key is kept verifiable after a rotation.
pub fn public_key_from_pem(pem: &str) -> Result<VerifyingKey, KeyError> {
    let pem = pem.trim();
    VerifyingKey::from_public_key_pem(pem)
        .or_else(|_| SigningKey::from_pkcs8_pem(pem).map(|key| key.verifying_key()))
        .map_err(|_| KeyError::InvalidPublicKey)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use ed25519_dalek::pkcs8::EncodePublicKey;
    use rand_core::OsRng;

    use super::*;
    use crate::jwk::KeySet;
    use crate::token::{Validation, validate};

    fn claims() -> AccessClaims {
        AccessClaims {
            sub: uuid::Uuid::from_u128(1),
            sid: uuid::Uuid::from_u128(2),
            jti: uuid::Uuid::from_u128(3),
            iat: 1_000,
            nbf: 1_000,
            exp: 1_900,
            iss: "iss".into(),
            aud: vec!["aud".into()],
            email: "ada@example.test".into(),
            email_verified: true,
            legacy_id: None,
            amr: Vec::new(),
            acr: None,
            auth_time: None,
        }
    }

    #[test]
    fn signed_token_validates_against_the_published_jwk() {
        let signer = TokenSigner::generate(&mut OsRng);
        let keys = KeySet::from_jwks(&crate::jwk::JwkSet {
            keys: vec![signer.jwk()],
        });

        let token = signer.sign(&claims());

        assert_eq!(
            validate(&token, &keys, &Validation::new("iss", "aud"), 1_500),
            Ok(claims())
        );
    }

    #[test]
    fn single_audience_is_written_as_a_string() {
        let signer = TokenSigner::generate(&mut OsRng);
        let token = signer.sign(&claims());
        let payload = token.split('.').nth(1).unwrap();

        let json: serde_json::Value =
            serde_json::from_slice(&crate::b64::decode(payload).unwrap()).unwrap();

        assert_eq!(json["aud"], "aud");
    }

    #[test]
    fn pkcs8_pem_is_version_1_and_version_2_is_still_read() {
        let signer = TokenSigner::generate(&mut OsRng);

        let pem = signer.to_pkcs8_pem();
        let der = pem_body(&pem);
        let v2 = signer
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("an Ed25519 key encodes");

        // RFC 8410 section 7: SEQUENCE { INTEGER 0 (v1), AlgorithmIdentifier { 1.3.101.112 },
        // OCTET STRING { OCTET STRING seed } }, 48 bytes in all.
        assert_eq!(der.len(), 48);
        assert_eq!(
            &der[..16],
            &hex::decode("302e020100300506032b657004220420").unwrap()[..]
        );
        let loaded = TokenSigner::from_pkcs8_pem(&v2).unwrap();
        assert_eq!(loaded.kid(), signer.kid());
    }

    fn pem_body(pem: &str) -> Vec<u8> {
        use base64::Engine as _;
        let body: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    #[test]
    fn pkcs8_pem_round_trips_and_keeps_the_kid() {
        let signer = TokenSigner::generate(&mut OsRng);

        let loaded = TokenSigner::from_pkcs8_pem(&signer.to_pkcs8_pem()).unwrap();

        assert_eq!(loaded.kid(), signer.kid());
    }

    #[test]
    fn public_key_loads_from_spki_or_private_pem() {
        let signer = TokenSigner::generate(&mut OsRng);
        let spki = signer
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();

        assert_eq!(public_key_from_pem(&spki), Ok(signer.verifying_key()));
        assert_eq!(
            public_key_from_pem(&signer.to_pkcs8_pem()),
            Ok(signer.verifying_key())
        );
    }

    #[test]
    fn garbage_pem_is_refused() {
        assert_eq!(
            TokenSigner::from_pkcs8_pem(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
            )
            .unwrap_err(),
            KeyError::InvalidPrivateKey
        );
        assert_eq!(
            public_key_from_pem("hello").unwrap_err(),
            KeyError::InvalidPublicKey
        );
    }

    #[test]
    fn debug_output_hides_the_private_key() {
        let signer = TokenSigner::generate(&mut OsRng);

        let debug = format!("{signer:?}");

        assert!(debug.contains(signer.kid()), "{debug}");
        let secret = signer.key.to_bytes();
        assert!(!debug.contains(&format!("{secret:?}")), "{debug}");
        assert!(!debug.contains(format!("{:?}", &secret[..8]).trim_end_matches(']')));
        let pem = signer.to_pkcs8_pem();
        let body = pem.lines().nth(1).unwrap();
        assert!(!debug.contains(body), "the key material is not printed");
    }
}
