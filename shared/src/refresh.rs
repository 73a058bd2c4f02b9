//! Refresh tokens: `gtr_<session id><generation><mac>` in lowercase hex, vouched for by the
//! server's key instead of stored.
//!
//! A session's refresh tokens are numbered: the first is generation 1 and each rotation hands out
//! the next. A token's secret part is HMAC-SHA256, under a key only the server holds, of the
//! session id and the generation. So the server keeps no row per token, only the session's live
//! generation: a session refreshed 100,000 times takes the space of one refreshed once (a row per
//! token grew without bound, see the security review). Yet it still recognises every token it
//! ever issued: a valid MAC with an older generation is a spent token presented again, which the
//! reuse rule judges (RFC 9700 section 4.14.2), while a MAC that does not verify is a token the
//! server never issued and changes nothing, so no one can end another's session by forging an
//! "old token" from a session id they saw in an access token.
//!
//! The racing-tabs rule needs no stored copy of the successor either: the server derives it.
//!
//! Tokens issued before this format (`gtr_<64 hex>`, 256 random bits stored as SHA-256) still
//! parse, as [`Presented::Legacy`], so sessions begun before the change keep working; their next
//! rotation moves them to this format.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::opaque::{OpaqueToken, token_kind};

token_kind!(
    /// The refresh-token kind; its prefix lets secret scanners recognise leaked ones.
    Refresh,
    "gtr_",
    "RefreshToken"
);

/// A refresh token of the format used before generations: 256 random bits, looked up by hash.
pub type LegacyRefreshToken = OpaqueToken<Refresh>;

/// Why a presented refresh token was refused before any lookup.
pub use crate::opaque::TokenFormatError as RefreshTokenError;

/// Domain label of the MAC input, so this key and MAC can never stand for another use.
const MAC_LABEL: &[u8] = b"gatehouse refresh token v2\0";

/// Bytes of the MAC: all of HMAC-SHA256, beyond forging (RFC 2104 section 5).
const MAC_BYTES: usize = 32;

/// Bytes between the prefix and the hex: session id, generation, MAC.
const BODY_BYTES: usize = 16 + 8 + MAC_BYTES;

/// The server's key for refresh tokens. The origin derives it from its root secret.
#[derive(Clone)]
pub struct RefreshKey([u8; 32]);

impl RefreshKey {
    /// The key with these bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        RefreshKey(bytes)
    }

    fn mac(&self, session_id: Uuid, generation: u64) -> [u8; MAC_BYTES] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(MAC_LABEL);
        mac.update(session_id.as_bytes());
        mac.update(&generation.to_be_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for RefreshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshKey(***)")
    }
}

/// A refresh token: generation `generation` of session `session_id`.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    session_id: Uuid,
    generation: u64,
    mac: [u8; MAC_BYTES],
    text: String,
}

/// A presented refresh token, by format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// The current format: says which session and generation it claims to be.
    Issued(RefreshToken),
    /// The format before generations: found only by looking its hash up.
    Legacy(LegacyRefreshToken),
}

impl RefreshToken {
    /// The token for generation `generation` of `session_id`.
    pub fn issue(key: &RefreshKey, session_id: Uuid, generation: u64) -> Self {
        let mac = key.mac(session_id, generation);
        let mut body = Vec::with_capacity(BODY_BYTES);
        body.extend_from_slice(session_id.as_bytes());
        body.extend_from_slice(&generation.to_be_bytes());
        body.extend_from_slice(&mac);
        RefreshToken {
            session_id,
            generation,
            mac,
            text: format!(
                "{}{}",
                <Refresh as crate::opaque::TokenKind>::PREFIX,
                hex::encode(body)
            ),
        }
    }

    /// Checks the shape of a presented token, in either format. Says nothing about whether the
    /// server issued it: see [`RefreshToken::is_issued_under`].
    pub fn parse(text: &str) -> Result<Presented, RefreshTokenError> {
        if text.len() == LegacyRefreshToken::LEN {
            return LegacyRefreshToken::parse(text).map(Presented::Legacy);
        }
        let body = text
            .strip_prefix(<Refresh as crate::opaque::TokenKind>::PREFIX)
            .ok_or(RefreshTokenError::Malformed)?;
        let bytes = crate::decode_lower_hex(body).ok_or(RefreshTokenError::Malformed)?;
        let bytes: [u8; BODY_BYTES] = bytes.try_into().map_err(|_| RefreshTokenError::Malformed)?;
        let (session_id, rest) = bytes.split_at(16);
        let (generation, mac) = rest.split_at(8);
        Ok(Presented::Issued(RefreshToken {
            session_id: Uuid::from_slice(session_id).expect("16 bytes"),
            generation: u64::from_be_bytes(generation.try_into().expect("8 bytes")),
            mac: mac.try_into().expect("32 bytes"),
            text: text.to_owned(),
        }))
    }

    /// Whether `key` made this token, in time independent of where the MACs differ (a timing
    /// leak would let a forger learn a valid MAC byte by byte).
    pub fn is_issued_under(&self, key: &RefreshKey) -> bool {
        key.mac(self.session_id, self.generation)
            .ct_eq(&self.mac)
            .into()
    }

    /// The session the token claims to belong to; trust it only once the MAC is verified.
    pub fn session_id(&self) -> Uuid {
        self.session_id
    }

    /// The generation the token claims; trust it only once the MAC is verified.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The token text. Hand it to its holder; never log it.
    pub fn expose(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(***)")
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use rand_core::OsRng;

    use super::*;

    fn key(byte: u8) -> RefreshKey {
        RefreshKey::new([byte; 32])
    }

    #[test]
    fn an_issued_token_parses_back_and_verifies_under_its_key_only() {
        let session = Uuid::from_u128(7);
        let token = RefreshToken::issue(&key(1), session, 42);

        let Ok(Presented::Issued(parsed)) = RefreshToken::parse(token.expose()) else {
            panic!("an issued token parses as issued");
        };

        assert_eq!(parsed, token);
        assert_eq!((parsed.session_id(), parsed.generation()), (session, 42));
        assert!(parsed.is_issued_under(&key(1)));
        assert!(!parsed.is_issued_under(&key(2)));
        assert_eq!(format!("{parsed:?}"), "RefreshToken(***)");
    }

    #[test]
    fn a_token_altered_in_session_or_generation_does_not_verify() {
        let token = RefreshToken::issue(&key(1), Uuid::from_u128(7), 3);
        let text = token.expose();
        let generation_at = 4 + 32;
        for position in [4, generation_at + 15] {
            let mut altered = text.as_bytes().to_vec();
            altered[position] = if altered[position] == b'0' {
                b'1'
            } else {
                b'0'
            };
            let altered = String::from_utf8(altered).unwrap();

            let Ok(Presented::Issued(parsed)) = RefreshToken::parse(&altered) else {
                panic!("still well formed");
            };

            assert!(!parsed.is_issued_under(&key(1)), "altered at {position}");
        }
    }

    #[test]
    fn generations_of_one_session_differ() {
        let session = Uuid::from_u128(7);

        let first = RefreshToken::issue(&key(1), session, 1);
        let second = RefreshToken::issue(&key(1), session, 2);

        assert_ne!(first.expose(), second.expose());
        assert_ne!(first.mac, second.mac);
    }

    #[test]
    fn a_token_of_the_old_format_parses_as_legacy() {
        let legacy = LegacyRefreshToken::generate(&mut OsRng);

        assert_eq!(
            RefreshToken::parse(legacy.expose()),
            Ok(Presented::Legacy(legacy.clone()))
        );
        assert!(crate::link::LinkToken::parse(legacy.expose()).is_err());
    }

    #[test]
    fn malformed_tokens_are_refused_before_any_lookup() {
        let token = RefreshToken::issue(&key(1), Uuid::from_u128(7), 1);
        let upper = token.expose().to_uppercase().replacen("GTR_", "gtr_", 1);

        for text in [
            "",
            "gtr_",
            &token.expose()[..token.expose().len() - 2],
            &format!("{}00", token.expose()),
            &upper,
            &token.expose().replacen("gtr_", "gtl_", 1),
        ] {
            assert_eq!(
                RefreshToken::parse(text),
                Err(RefreshTokenError::Malformed),
                "{text}"
            );
        }
    }
}
