//! Refresh tokens: `gtr_<64 hex>`, 256 random bits, stored only as SHA-256.
//!
//! A refresh token is a bearer secret for a session. The server keeps its SHA-256 (a fast hash is
//! right for 256 random bits; see [`crate::api_key`] for why) and, once the token is spent, its
//! successor *sealed*: XORed with a pad that is SHA-256 of a domain label and this token's bytes.
//! Only whoever holds this token can derive the pad, so the stored seal reveals nothing to a
//! reader of the database, yet a second request racing with the same token (two browser tabs)
//! can be handed the very successor the first one got, instead of forking the session or logging
//! the user out. The lookup hash and the pad hash different inputs, so neither reveals the other.

use sha2::{Digest, Sha256};

use crate::opaque::{OpaqueToken, token_kind};

token_kind!(
    /// The refresh-token kind; its prefix lets secret scanners recognise leaked ones.
    Refresh,
    "gtr_",
    "RefreshToken"
);

/// A refresh token.
pub type RefreshToken = OpaqueToken<Refresh>;

/// Why a presented refresh token was refused before any lookup.
pub use crate::opaque::TokenFormatError as RefreshTokenError;

/// Domain label of the successor pad, so it can never equal the lookup hash of any token.
const PAD_LABEL: &[u8] = b"gatehouse refresh-token successor pad v1\0";

impl OpaqueToken<Refresh> {
    /// `successor` sealed so that only a holder of `self` can open it (see the module docs).
    pub fn seal_successor(&self, successor: &RefreshToken) -> [u8; 32] {
        xor(&self.pad(), successor.bytes())
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
            .chain_update(self.bytes())
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
    fn a_refresh_token_is_no_link_token_and_says_which_it_is() {
        let token = RefreshToken::generate(&mut OsRng);

        assert!(token.expose().starts_with("gtr_"));
        assert_eq!(RefreshToken::parse(token.expose()), Ok(token.clone()));
        assert!(crate::link::LinkToken::parse(token.expose()).is_err());
        assert_eq!(format!("{token:?}"), "RefreshToken(***)");
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

        assert_ne!(&sealed, successor.bytes());
        assert_ne!(sealed, parent.lookup_hash());
        assert_ne!(parent.pad(), parent.lookup_hash());
    }
}
