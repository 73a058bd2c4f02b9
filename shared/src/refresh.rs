//! Refresh tokens: `gtr_<64 hex>`, 256 random bits, stored only as SHA-256.
//!
//! A refresh token is a bearer secret for a session. The server keeps its SHA-256 (a fast hash is
//! right for 256 random bits; see [`crate::api_key`] for why) and, once the token is spent, its
//! successor *sealed*: XORed with a pad that is SHA-256 of a domain label and this token's bytes.
//! Only whoever holds this token can derive the pad, so the stored seal reveals nothing to a
//! reader of the database, yet a second request racing with the same token (two browser tabs)
//! can be handed the very successor the first one got, instead of forking the session or logging
//! the user out. The lookup hash and the pad hash different inputs, so neither reveals the other.

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every Gatehouse refresh token starts with; lets secret scanners recognise leaked ones.
pub const PREFIX: &str = "gtr_";

/// Random bytes in a token: 256 bits, beyond guessing (RFC 9700 section 4.14 asks for tokens an
/// attacker cannot guess; OWASP ASVS 5.0 7.2.3 for at least 128 bits).
const TOKEN_BYTES: usize = 32;

/// Length of a well-formed token.
pub const TOKEN_LEN: usize = PREFIX.len() + 2 * TOKEN_BYTES;

/// Domain label of the successor pad, so it can never equal the lookup hash of any token.
const PAD_LABEL: &[u8] = b"gatehouse refresh-token successor pad v1\0";

/// Why a presented refresh token was refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefreshTokenError {
    /// The text does not have the `gtr_<64 lowercase hex>` shape.
    #[error("refresh token is malformed")]
    Malformed,
}

/// A refresh token.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    bytes: [u8; TOKEN_BYTES],
    text: String,
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(***)")
    }
}

impl RefreshToken {
    /// A new random token.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        rng.fill_bytes(&mut bytes);
        RefreshToken::from_bytes(bytes)
    }

    fn from_bytes(bytes: [u8; TOKEN_BYTES]) -> Self {
        RefreshToken {
            text: format!("{PREFIX}{}", hex::encode(bytes)),
            bytes,
        }
    }

    /// Checks the shape of a presented token. Says nothing about whether it exists.
    pub fn parse(text: &str) -> Result<Self, RefreshTokenError> {
        let body = text
            .strip_prefix(PREFIX)
            .ok_or(RefreshTokenError::Malformed)?;
        let bytes = crate::decode_lower_hex(body).ok_or(RefreshTokenError::Malformed)?;
        let bytes: [u8; TOKEN_BYTES] =
            bytes.try_into().map_err(|_| RefreshTokenError::Malformed)?;
        Ok(RefreshToken::from_bytes(bytes))
    }

    /// The token text. Hand it to the client; never log it.
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

    /// `successor` sealed so that only a holder of `self` can open it (see the module docs).
    pub fn seal_successor(&self, successor: &RefreshToken) -> [u8; 32] {
        xor(&self.pad(), &successor.bytes)
    }

    /// Opens a seal made by [`RefreshToken::seal_successor`] on this token. Returns `None` when
    /// `sealed` has the wrong length; a seal made for another token opens to a token whose lookup
    /// hash matches nothing, which the caller checks with [`RefreshToken::matches`].
    pub fn open_successor(&self, sealed: &[u8]) -> Option<RefreshToken> {
        let sealed: [u8; 32] = sealed.try_into().ok()?;
        Some(RefreshToken::from_bytes(xor(&self.pad(), &sealed)))
    }

    fn pad(&self) -> [u8; 32] {
        Sha256::new()
            .chain_update(PAD_LABEL)
            .chain_update(self.bytes)
            .finalize()
            .into()
    }
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use rand_core::OsRng;

    use super::*;

    #[test]
    fn generated_token_parses_back_to_itself() {
        let token = RefreshToken::generate(&mut OsRng);

        let parsed = RefreshToken::parse(token.expose()).unwrap();

        assert_eq!(parsed, token);
        assert_eq!(token.expose().len(), TOKEN_LEN);
        assert!(token.expose().starts_with("gtr_"));
    }

    #[test]
    fn token_matches_only_its_own_hash() {
        let token = RefreshToken::generate(&mut OsRng);
        let other = RefreshToken::generate(&mut OsRng);

        assert!(token.matches(&token.lookup_hash()));
        assert!(!token.matches(&other.lookup_hash()));
        assert!(!token.matches(&token.lookup_hash()[..31]));
    }

    #[test]
    fn sealed_successor_opens_with_its_parent_only() {
        let parent = RefreshToken::generate(&mut OsRng);
        let successor = RefreshToken::generate(&mut OsRng);
        let stranger = RefreshToken::generate(&mut OsRng);

        let sealed = parent.seal_successor(&successor);

        assert_eq!(parent.open_successor(&sealed), Some(successor.clone()));
        let wrong = stranger.open_successor(&sealed).unwrap();
        assert!(!wrong.matches(&successor.lookup_hash()));
        assert_eq!(parent.open_successor(&sealed[..31]), None);
    }

    #[test]
    fn seal_is_neither_the_successor_nor_a_lookup_hash() {
        let parent = RefreshToken::generate(&mut OsRng);
        let successor = RefreshToken::generate(&mut OsRng);

        let sealed = parent.seal_successor(&successor);

        assert_ne!(sealed, successor.bytes);
        assert_ne!(sealed, parent.lookup_hash());
        assert_ne!(parent.pad(), parent.lookup_hash());
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = RefreshToken::generate(&mut OsRng).expose().to_owned();
        let cases = [
            String::new(),
            "gtr_".into(),
            good.replacen("gtr_", "gth_", 1),
            good.to_uppercase(),
            format!("{good}0"),
            good[..good.len() - 1].to_owned(),
            format!("gtr_{}", "g".repeat(64)),
            format!("gtr_{}", "é".repeat(32)),
        ];

        for case in cases {
            assert_eq!(
                RefreshToken::parse(&case),
                Err(RefreshTokenError::Malformed),
                "{case:?}"
            );
        }
    }

    #[test]
    fn debug_output_hides_the_token() {
        let token = RefreshToken::generate(&mut OsRng);

        assert_eq!(format!("{token:?}"), "RefreshToken(***)");
    }
}
