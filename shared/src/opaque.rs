//! Opaque bearer secrets: a prefix naming the kind (`gtr_`, `gtl_`) and 256 random bits in
//! lowercase hex. The server stores only their SHA-256: a fast hash is right for 256 random bits,
//! which no one can guess or brute-force (see [`crate::api_key`] for why), and a database reader
//! learns nothing usable. The prefix lets secret scanners recognise leaked ones.

use std::marker::PhantomData;

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Random bytes in a token: 256 bits, beyond guessing (RFC 9700 section 4.14 asks for tokens an
/// attacker cannot guess; OWASP ASVS 5.0 7.2.3 for at least 128 bits).
pub const TOKEN_BYTES: usize = 32;

/// A kind of opaque token.
pub trait TokenKind {
    /// What every token of the kind starts with.
    const PREFIX: &'static str;
    /// The name `Debug` prints instead of the token.
    const NAME: &'static str;
}

/// Declares a token kind: a unit type implementing [`TokenKind`] with its prefix and name.
macro_rules! token_kind {
    ($(#[$doc:meta])* $kind:ident, $prefix:literal, $name:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $kind;

        impl $crate::opaque::TokenKind for $kind {
            const PREFIX: &'static str = $prefix;
            const NAME: &'static str = $name;
        }
    };
}
pub(crate) use token_kind;

/// Why a presented token was refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    /// The text does not have the `<prefix><64 lowercase hex>` shape.
    #[error("token is malformed")]
    Malformed,
}

/// A token of kind `K`.
pub struct OpaqueToken<K> {
    bytes: [u8; TOKEN_BYTES],
    text: String,
    kind: PhantomData<K>,
}

impl<K: TokenKind> OpaqueToken<K> {
    /// Length of a well-formed token.
    pub const LEN: usize = K::PREFIX.len() + 2 * TOKEN_BYTES;

    /// A new random token.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        rng.fill_bytes(&mut bytes);
        OpaqueToken::from_bytes(bytes)
    }

    pub(crate) fn from_bytes(bytes: [u8; TOKEN_BYTES]) -> Self {
        OpaqueToken {
            text: format!("{}{}", K::PREFIX, hex::encode(bytes)),
            bytes,
            kind: PhantomData,
        }
    }

    /// Checks the shape of a presented token. Says nothing about whether it exists.
    pub fn parse(text: &str) -> Result<Self, TokenFormatError> {
        let body = text
            .strip_prefix(K::PREFIX)
            .ok_or(TokenFormatError::Malformed)?;
        let bytes = crate::decode_lower_hex(body).ok_or(TokenFormatError::Malformed)?;
        let bytes = bytes.try_into().map_err(|_| TokenFormatError::Malformed)?;
        Ok(OpaqueToken::from_bytes(bytes))
    }

    /// The token text. Hand it to its holder; never log it.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// What is stored and looked up: SHA-256 of the token's random bytes.
    pub fn lookup_hash(&self) -> [u8; 32] {
        Sha256::digest(self.bytes).into()
    }

    /// Whether `stored` is this token's lookup hash, in time independent of where they differ.
    pub fn matches(&self, stored: &[u8]) -> bool {
        self.lookup_hash().ct_eq(stored).into()
    }
}

impl<K> Clone for OpaqueToken<K> {
    fn clone(&self) -> Self {
        OpaqueToken {
            bytes: self.bytes,
            text: self.text.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> PartialEq for OpaqueToken<K> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes.ct_eq(&other.bytes).into()
    }
}

impl<K> Eq for OpaqueToken<K> {}

impl<K: TokenKind> std::fmt::Debug for OpaqueToken<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(***)", K::NAME)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use rand_core::OsRng;

    use super::*;

    token_kind!(Test, "gtt_", "TestToken");
    type TestToken = OpaqueToken<Test>;

    #[test]
    fn generated_token_parses_back_to_itself() {
        let token = TestToken::generate(&mut OsRng);

        let parsed = TestToken::parse(token.expose()).unwrap();

        assert_eq!(parsed, token);
        assert_eq!(token.expose().len(), TestToken::LEN);
        assert!(token.expose().starts_with("gtt_"));
    }

    #[test]
    fn token_matches_only_its_own_hash() {
        let token = TestToken::generate(&mut OsRng);
        let other = TestToken::generate(&mut OsRng);

        assert!(token.matches(&token.lookup_hash()));
        assert!(!token.matches(&other.lookup_hash()));
        assert!(!token.matches(&token.lookup_hash()[..31]));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = TestToken::generate(&mut OsRng).expose().to_owned();
        let cases = [
            String::new(),
            "gtt_".into(),
            good.replacen("gtt_", "gth_", 1),
            good.to_uppercase(),
            format!("{good}0"),
            good[..good.len() - 1].to_owned(),
            format!("gtt_{}", "g".repeat(64)),
            format!("gtt_{}", "é".repeat(32)),
        ];

        for case in cases {
            assert_eq!(
                TestToken::parse(&case),
                Err(TokenFormatError::Malformed),
                "{case:?}"
            );
        }
    }

    #[test]
    fn debug_output_hides_the_token() {
        let token = TestToken::generate(&mut OsRng);

        assert_eq!(format!("{token:?}"), "TestToken(***)");
    }
}
