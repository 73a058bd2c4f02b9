//! The parts of Gatehouse that every side must agree on, in one crate that compiles natively and
//! for `wasm32-unknown-unknown`: access-token claims and their validation rules ([`token`]), the
//! public key set ([`jwk`]), the API-key, refresh-token and emailed-link token formats
//! ([`api_key`], [`refresh`], [`link`], all but the API key built on [`opaque`]),
//! input rules ([`input`]), the HTTP request and response types ([`api`]), and the bounded
//! verified-token cache the edge and the origin put in front of validation ([`token_cache`]).
//!
//! The crate has no I/O, no clock and no environment: the current time, keys, issuer and audience
//! are arguments, so the edge worker, the origin and the tests run the very same checks.
//! Issuing tokens and handling private keys sits behind the `signing` feature, which only the
//! origin enables.

pub mod api;
pub mod api_key;
pub mod assurance;
pub mod bounded;
pub mod device;
pub mod input;
pub mod jwk;
pub mod link;
pub mod mfa;
pub mod opaque;
pub mod refresh;
#[cfg(feature = "signing")]
pub mod signing;
pub mod token;
pub mod token_cache;
#[cfg(feature = "totp")]
pub mod totp;

/// Passwords, tokens and other secrets are [`SecretString`]s wherever they are held: `Debug`
/// prints `[REDACTED]`, the memory is wiped on drop, and reading one takes an explicit
/// [`ExposeSecret::expose_secret`] (OWASP Logging Cheat Sheet: never log secrets).
pub use secrecy::{ExposeSecret, SecretString};

pub(crate) mod b64 {
    //! Unpadded base64url (RFC 4648 section 5), the encoding JOSE uses everywhere (RFC 7515 section 2).
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    pub fn encode(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        URL_SAFE_NO_PAD.decode(text).ok()
    }
}

/// Decodes lowercase hex only, so every secret has exactly one text form (`hex` alone would also
/// take uppercase).
pub(crate) fn decode_lower_hex(text: &str) -> Option<Vec<u8>> {
    let lowercase = text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    lowercase.then(|| hex::decode(text).ok()).flatten()
}
