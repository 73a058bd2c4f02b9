//! The root server secret and every server-side key derived from it.
//!
//! One secret is configured (`SERVER_SECRET` or `SERVER_SECRET_FILE`, at least 32 bytes); each
//! use gets its own key, HKDF-SHA256 of the secret under a label naming the use (RFC 5869
//! section 3.2: one input keying material, independent keys by `info`). So a key leaked from one
//! use says nothing of the others, and a new use adds a label, not a setting to deploy.

use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use gatehouse_shared::link::LinkToken;
use gatehouse_shared::refresh::RefreshKey;
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore};
use sha2::Sha256;

/// Shortest root secret accepted: 256 bits, the strength of every key derived from it.
pub const MIN_SECRET_BYTES: usize = 32;

/// HKDF salt: fixed, public, naming the scheme (RFC 5869 section 3.1 allows a non-secret salt).
const SALT: &[u8] = b"gatehouse server keys v1";

/// What a derived key is for; each has its own HKDF label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// Encrypts link tokens while their mail waits in the outbox.
    OutboxTokens,
    /// Vouches for refresh tokens (see `gatehouse_shared::refresh`).
    RefreshTokens,
    /// Names brute-force counters and trusted devices (see [`crate::throttle`]).
    CounterNames,
    /// Encrypts the private signing keys kept in PostgreSQL (see [`crate::signing_keys`]).
    SigningKeys,
    /// Encrypts TOTP secrets at rest (see [`crate::mfa`]).
    TotpSecrets,
    /// Keys the MACs recovery codes are stored as (see [`crate::mfa`]).
    RecoveryCodes,
}

impl KeyUse {
    fn label(self) -> &'static [u8] {
        match self {
            KeyUse::OutboxTokens => b"outbox link-token encryption",
            KeyUse::RefreshTokens => b"refresh-token mac",
            KeyUse::CounterNames => b"throttle counter names",
            KeyUse::SigningKeys => b"signing-key encryption",
            KeyUse::TotpSecrets => b"totp-secret encryption",
            KeyUse::RecoveryCodes => b"recovery-code mac",
        }
    }
}

/// The keys derived from the root server secret.
#[derive(Clone)]
pub struct ServerKeys {
    hkdf: Arc<Hkdf<Sha256>>,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKeys(***)")
    }
}

impl ServerKeys {
    /// The keys of `secret`, which the configuration has checked is long enough.
    pub fn new(secret: &[u8]) -> Self {
        ServerKeys {
            hkdf: Arc::new(Hkdf::new(Some(SALT), secret)),
        }
    }

    /// Keys from a fresh random secret, for development and tests.
    pub fn random() -> Self {
        let mut secret = [0u8; MIN_SECRET_BYTES];
        OsRng.fill_bytes(&mut secret);
        ServerKeys::new(&secret)
    }

    /// The 256-bit key for `key_use`.
    pub fn key(&self, key_use: KeyUse) -> [u8; 32] {
        let mut key = [0u8; 32];
        self.hkdf
            .expand(key_use.label(), &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        key
    }

    /// The key that vouches for refresh tokens.
    pub fn refresh_key(&self) -> RefreshKey {
        RefreshKey::new(self.key(KeyUse::RefreshTokens))
    }

    /// The key that names brute-force counters and trusted devices.
    pub fn counter_names(&self) -> crate::throttle::CounterNames {
        crate::throttle::CounterNames::new(self.key(KeyUse::CounterNames))
    }

    /// The cipher for link tokens waiting in the outbox.
    pub fn outbox_cipher(&self) -> TokenCipher {
        TokenCipher(XChaCha20Poly1305::new(
            &self.key(KeyUse::OutboxTokens).into(),
        ))
    }

    /// The cipher for TOTP secrets at rest.
    pub fn totp_cipher(&self) -> TokenCipher {
        TokenCipher(XChaCha20Poly1305::new(
            &self.key(KeyUse::TotpSecrets).into(),
        ))
    }

    /// The key-encryption cipher for private signing keys kept in PostgreSQL.
    pub fn signing_key_cipher(&self) -> TokenCipher {
        TokenCipher(XChaCha20Poly1305::new(
            &self.key(KeyUse::SigningKeys).into(),
        ))
    }
}

/// XChaCha20-Poly1305 over secrets at rest (link tokens, private signing keys): a random 192-bit
/// nonce per secret (safe to draw at random, unlike a 96-bit one), the ciphertext bound to its row
/// by associated data so a sealed secret cannot be moved to another row.
pub struct TokenCipher(XChaCha20Poly1305);

/// Nonce length of XChaCha20-Poly1305.
const NONCE_BYTES: usize = 24;

impl TokenCipher {
    /// `token` encrypted, nonce first, bound to `context`.
    pub fn seal(&self, token: &LinkToken, context: &[u8]) -> Vec<u8> {
        self.seal_bytes(token.expose().as_bytes(), context)
    }

    /// The token `sealed` holds, if it was sealed with this key and `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Option<LinkToken> {
        let plain = self.open_bytes(sealed, context)?;
        LinkToken::parse(std::str::from_utf8(&plain).ok()?).ok()
    }

    /// `secret` encrypted, nonce first, bound to `context`.
    pub fn seal_bytes(&self, secret: &[u8], context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: secret,
            aad: context,
        };
        let ciphertext = self
            .0
            .encrypt(XNonce::from_slice(&nonce), payload)
            .expect("encrypting a short message cannot fail");
        [nonce.as_slice(), &ciphertext].concat()
    }

    /// The secret `sealed` holds, if it was sealed with this key and `context`.
    pub fn open_bytes(&self, sealed: &[u8], context: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        let payload = Payload {
            msg: ciphertext,
            aad: context,
        };
        self.0.decrypt(XNonce::from_slice(nonce), payload).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_depend_on_the_secret_and_not_on_chance() {
        let one = ServerKeys::new(&[7u8; 32]);
        let same = ServerKeys::new(&[7u8; 32]);
        let other = ServerKeys::new(&[8u8; 32]);

        assert_eq!(
            one.key(KeyUse::OutboxTokens),
            same.key(KeyUse::OutboxTokens)
        );
        assert_ne!(
            one.key(KeyUse::OutboxTokens),
            other.key(KeyUse::OutboxTokens)
        );
        assert_ne!(one.key(KeyUse::OutboxTokens), [7u8; 32]);
    }

    #[test]
    fn a_sealed_token_opens_only_with_its_key_and_context() {
        let keys = ServerKeys::random();
        let token = LinkToken::generate(&mut OsRng);

        let sealed = keys.outbox_cipher().seal(&token, b"row 1");

        assert_eq!(
            keys.outbox_cipher().open(&sealed, b"row 1"),
            Some(token.clone())
        );
        assert!(!String::from_utf8_lossy(&sealed).contains(&token.expose()[4..]));
        assert_eq!(keys.outbox_cipher().open(&sealed, b"row 2"), None);
        let stranger = ServerKeys::random().outbox_cipher();
        assert_eq!(stranger.open(&sealed, b"row 1"), None);
        let mut tampered = sealed.clone();
        tampered[30] ^= 1;
        assert_eq!(keys.outbox_cipher().open(&tampered, b"row 1"), None);
        assert_eq!(keys.outbox_cipher().open(&sealed[..10], b"row 1"), None);
    }

    #[test]
    fn debug_output_hides_the_keys() {
        assert_eq!(format!("{:?}", ServerKeys::random()), "ServerKeys(***)");
    }
}
