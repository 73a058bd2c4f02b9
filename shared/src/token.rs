//! Access tokens: JWTs (RFC 7519) in JWS compact form (RFC 7515), signed with Ed25519 (RFC 8037)
//! and typed `at+jwt` (RFC 9068), and the one validation routine the edge, the origin and tests
//! all run.
//!
//! Validation follows the JWT Best Current Practices (RFC 8725): the algorithm is pinned rather
//! than read from the token (section 3.1), the token type is checked so other JWTs cannot be
//! substituted (section 3.11), issuer and audience are required (sections 3.8 and 3.9), and keys
//! come only from the configured key set, never from the token's own `jwk`, `jku`, `x5u` or `x5c`
//! headers. Each reason for rejection is its own [`TokenError`] variant so callers can count them.

use ed25519_dalek::Signature;
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::b64;
use crate::jwk::{ALGORITHM, KeySet};

/// Longest token accepted, in bytes. Gatehouse's own tokens are about 600 bytes; the cap keeps
/// base64 and JSON decoding of hostile input cheap.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The largest clock skew a validator may tolerate. RFC 7519 sections 4.1.4 and 4.1.5 allow "a
/// few minutes"; access tokens here live 15 minutes, so 30 seconds is already generous.
pub const MAX_LEEWAY_SECS: u64 = 30;

/// The media type of access tokens (RFC 9068 section 2.1), carried in the `typ` header.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// The claims of a Gatehouse access token (RFC 9068 section 2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user's id.
    pub sub: Uuid,
    /// The session the token belongs to; ending the session revokes the token.
    pub sid: Uuid,
    /// Unique token id.
    pub jti: Uuid,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Not valid before, seconds since the Unix epoch.
    pub nbf: i64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issuer.
    pub iss: String,
    /// Audience. Written as a single string when there is one (RFC 7519 section 4.1.3 allows
    /// either form); both forms are read.
    #[serde(deserialize_with = "one_or_many", serialize_with = "one_or_many_out")]
    pub aud: Vec<String>,
    /// The user's email address at the time of issue.
    pub email: String,
    /// Whether that address was verified at the time of issue. Absent from tokens issued before
    /// verification existed, which read as unverified, so edge and origin can deploy apart.
    #[serde(default)]
    pub email_verified: bool,
    /// The account's id in the service it was imported from (`gatehouse-origin import-users`),
    /// which the platform's other services still store; absent for accounts made here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_id: Option<i64>,
    /// How the session signed in (RFC 8176 values; see [`crate::assurance::Method`]). Absent
    /// from tokens issued before levels existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// The assurance level reached (`aal1`, `aal2`); absent reads as `aal1`
    /// ([`crate::assurance::Level::of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// When the user last proved who they are, seconds since the Unix epoch (OpenID Connect Core
    /// 1.0 section 2): the sign-in, or the last step-up. Kept across refreshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
}

fn one_or_many_out<S: serde::Serializer>(aud: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    match aud {
        [one] => serializer.serialize_str(one),
        many => many.serialize(serializer),
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// The JOSE header as Gatehouse reads it. Members that would let a token pick its own key are
/// captured only to be refused.
#[derive(Debug, Deserialize)]
pub(crate) struct Header {
    pub alg: Option<String>,
    pub typ: Option<String>,
    pub kid: Option<String>,
    pub crit: Option<serde_json::Value>,
    pub jwk: Option<serde_json::Value>,
    pub jku: Option<serde_json::Value>,
    pub x5u: Option<serde_json::Value>,
    pub x5c: Option<serde_json::Value>,
}

/// What a validator expects of a token besides a good signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    issuer: String,
    audience: String,
    leeway_secs: u64,
}

impl Validation {
    /// Expect tokens from `issuer` meant for `audience`, with no clock leeway.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Validation {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_secs: 0,
        }
    }

    /// Tolerate this much clock skew on `exp` and `nbf`, capped at [`MAX_LEEWAY_SECS`].
    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.leeway_secs = secs.min(MAX_LEEWAY_SECS);
        self
    }

    /// The expected issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The expected audience.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The clock leeway in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("token exceeds {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// The token is not three base64url parts holding a JSON header and JSON claims.
    #[error("token is malformed")]
    Malformed,
    /// The header says `alg: none`: an unsecured JWT (RFC 7519 section 6).
    #[error("unsecured tokens are not accepted")]
    Unsigned,
    /// The header names an algorithm other than EdDSA. The name is kept for logs and metrics;
    /// the message does not repeat attacker-chosen text.
    #[error("algorithm is not accepted")]
    WrongAlgorithm(String),
    /// The header carries its own key or a pointer to one (`jwk`, `jku`, `x5u`, `x5c`).
    #[error("header member {0} is not accepted")]
    EmbeddedKey(&'static str),
    /// The header lists critical extensions, none of which are understood (RFC 7515 section 4.1.11).
    #[error("critical header extensions are not supported")]
    UnsupportedCritical,
    /// The `typ` header is missing or is not `at+jwt`.
    #[error("token type is not at+jwt")]
    WrongType,
    /// The header has no `kid`.
    #[error("token names no key")]
    MissingKeyId,
    /// The `kid` names no key in the key set.
    #[error("token names an unknown key")]
    UnknownKeyId,
    /// The signature does not verify under the named key.
    #[error("signature is invalid")]
    BadSignature,
    /// The claims are not valid JSON of the expected shape, or a required claim is missing.
    #[error("claims are malformed or incomplete")]
    InvalidClaims,
    /// `iss` is not the expected issuer.
    #[error("issuer is not accepted")]
    WrongIssuer,
    /// `aud` does not include the expected audience.
    #[error("audience is not accepted")]
    WrongAudience,
    /// `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` is still in the future.
    #[error("token is not yet valid")]
    NotYetValid,
}

impl TokenError {
    /// A short stable name, for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::TooLarge => "too_large",
            TokenError::Malformed => "malformed",
            TokenError::Unsigned => "unsigned",
            TokenError::WrongAlgorithm(_) => "wrong_algorithm",
            TokenError::EmbeddedKey(_) => "embedded_key",
            TokenError::UnsupportedCritical => "unsupported_critical",
            TokenError::WrongType => "wrong_type",
            TokenError::MissingKeyId => "missing_kid",
            TokenError::UnknownKeyId => "unknown_kid",
            TokenError::BadSignature => "bad_signature",
            TokenError::InvalidClaims => "invalid_claims",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
        }
    }
}

/// The `kid` a token names, read without verifying anything. The edge uses it to decide whether
/// its cached key set needs a refresh before [`validate`] runs.
pub fn key_id(token: &str) -> Result<String, TokenError> {
    let (header, _, _) = split(token)?;
    check_header(&header)
}

/// Checks `token` completely and returns its claims: size, header, signature under the key its
/// `kid` names in `keys`, issuer, audience and the validity window at `now` (Unix seconds).
pub fn validate(
    token: &str,
    keys: &KeySet,
    validation: &Validation,
    now: i64,
) -> Result<AccessClaims, TokenError> {
    let (header, signing_input, signature) = split(token)?;
    let kid = check_header(&header)?;
    let key = keys.get(&kid).ok_or(TokenError::UnknownKeyId)?;
    let signature = b64::decode(signature)
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or(TokenError::Malformed)?;
    // verify_strict also refuses small-order keys and non-canonical signatures, so one message
    // has exactly one valid signature per key.
    key.verify_strict(signing_input.as_bytes(), &signature)
        .map_err(|_| TokenError::BadSignature)?;

    let payload = signing_input
        .split_once('.')
        .map(|(_, payload)| payload)
        .and_then(b64::decode)
        .ok_or(TokenError::Malformed)?;
    let claims: AccessClaims =
        serde_json::from_slice(&payload).map_err(|_| TokenError::InvalidClaims)?;
    check_claims(&claims, validation, now)?;
    Ok(claims)
}

/// Splits a compact JWS into its decoded header, the signing input (`header.payload`) and the
/// encoded signature.
fn split(token: &str) -> Result<(Header, &str, &str), TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(TokenError::Malformed)?;
    if payload.contains('.') {
        return Err(TokenError::Malformed);
    }
    let header = b64::decode(header)
        .and_then(|bytes| serde_json::from_slice::<Header>(&bytes).ok())
        .ok_or(TokenError::Malformed)?;
    Ok((header, signing_input, signature))
}

/// Applies the header rules and returns the `kid`.
fn check_header(header: &Header) -> Result<String, TokenError> {
    match header.alg.as_deref() {
        Some(ALGORITHM) => {}
        Some(alg) if alg.eq_ignore_ascii_case("none") => return Err(TokenError::Unsigned),
        Some(alg) => return Err(TokenError::WrongAlgorithm(alg.to_owned())),
        None => return Err(TokenError::Malformed),
    }
    for (name, value) in [
        ("jwk", &header.jwk),
        ("jku", &header.jku),
        ("x5u", &header.x5u),
        ("x5c", &header.x5c),
    ] {
        if value.is_some() {
            return Err(TokenError::EmbeddedKey(name));
        }
    }
    if header.crit.is_some() {
        return Err(TokenError::UnsupportedCritical);
    }
    // RFC 9068 section 4: typ is "at+jwt" or "application/at+jwt", compared case-insensitively
    // (RFC 7515 section 4.1.9).
    let typ = header
        .typ
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if typ != ACCESS_TOKEN_TYPE && typ.strip_prefix("application/") != Some(ACCESS_TOKEN_TYPE) {
        return Err(TokenError::WrongType);
    }
    header.kid.clone().ok_or(TokenError::MissingKeyId)
}

pub(crate) fn check_claims(
    claims: &AccessClaims,
    validation: &Validation,
    now: i64,
) -> Result<(), TokenError> {
    let leeway = validation.leeway_secs as i64;
    if claims.iss != validation.issuer {
        return Err(TokenError::WrongIssuer);
    }
    if !claims.aud.contains(&validation.audience) {
        return Err(TokenError::WrongAudience);
    }
    // RFC 7519 section 4.1.4: the token must not be accepted "on or after" exp.
    if now >= claims.exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if now < claims.nbf.saturating_sub(leeway) {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// Encodes and signs `claims` as a compact JWS with the given header members. Kept private to the
/// crate: [`crate::signing::TokenSigner`] is the public way to issue tokens, and tests use this to
/// forge the tokens an attacker would send.
#[cfg(any(test, feature = "signing"))]
pub(crate) fn encode_jws(
    header: &serde_json::Value,
    claims: &impl Serialize,
    key: &ed25519_dalek::SigningKey,
) -> String {
    use ed25519_dalek::Signer as _;
    let header = serde_json::to_vec(header).expect("a JSON value serializes");
    let claims = serde_json::to_vec(claims).expect("claims serialize");
    let signing_input = format!("{}.{}", b64::encode(header), b64::encode(claims));
    let signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64::encode(signature.to_bytes()))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use ed25519_dalek::SigningKey;
    use serde_json::{Value, json};

    use super::*;
    use crate::jwk::kid_of;

    const NOW: i64 = 1_800_000_000;
    const ISSUER: &str = "https://auth.example.test";
    const AUDIENCE: &str = "gatehouse";

    fn signing_key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn keys() -> KeySet {
        KeySet::from_keys([&signing_key(1).verifying_key()])
    }

    fn validation() -> Validation {
        Validation::new(ISSUER, AUDIENCE).with_leeway(10)
    }

    fn header(key: &SigningKey) -> Value {
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid_of(&key.verifying_key())})
    }

    fn claims() -> Value {
        json!({
            "sub": "0190f5f4-7a3e-7c3b-9d2e-111111111111",
            "sid": "0190f5f4-7a3e-7c3b-9d2e-222222222222",
            "jti": "0190f5f4-7a3e-7c3b-9d2e-333333333333",
            "iat": NOW - 60,
            "nbf": NOW - 60,
            "exp": NOW + 840,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "email": "ada@example.test",
        })
    }

    fn token_with(
        edit_header: impl FnOnce(&mut Value),
        edit_claims: impl FnOnce(&mut Value),
    ) -> String {
        let key = signing_key(1);
        let (mut h, mut c) = (header(&key), claims());
        edit_header(&mut h);
        edit_claims(&mut c);
        encode_jws(&h, &c, &key)
    }

    fn check(token: &str) -> Result<AccessClaims, TokenError> {
        validate(token, &keys(), &validation(), NOW)
    }

    #[test]
    fn well_formed_token_is_accepted_with_its_claims() {
        let token = token_with(|_| {}, |_| {});

        let claims = check(&token).unwrap();

        assert_eq!(claims.email, "ada@example.test");
        assert_eq!(claims.aud, vec![AUDIENCE.to_owned()]);
        assert_eq!(claims.exp, NOW + 840);
    }

    #[test]
    fn audience_array_containing_ours_is_accepted() {
        let token = token_with(|_| {}, |c| c["aud"] = json!(["other", AUDIENCE]));

        assert!(check(&token).is_ok());
    }

    #[test]
    fn application_prefixed_type_is_accepted() {
        let token = token_with(|h| h["typ"] = json!("application/AT+JWT"), |_| {});

        assert!(check(&token).is_ok());
    }

    #[test]
    fn expired_token_is_rejected() {
        let token = token_with(|_| {}, |c| c["exp"] = json!(NOW - 10));

        assert_eq!(check(&token), Err(TokenError::Expired));
    }

    #[test]
    fn expiry_within_leeway_is_tolerated() {
        let token = token_with(|_| {}, |c| c["exp"] = json!(NOW - 9));

        assert!(check(&token).is_ok());
    }

    #[test]
    fn leeway_is_capped_at_thirty_seconds() {
        let token = token_with(|_| {}, |c| c["exp"] = json!(NOW - 31));
        let lenient = Validation::new(ISSUER, AUDIENCE).with_leeway(3600);

        assert_eq!(lenient.leeway_secs(), MAX_LEEWAY_SECS);
        assert_eq!(
            validate(&token, &keys(), &lenient, NOW),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn token_not_yet_valid_is_rejected() {
        let token = token_with(|_| {}, |c| c["nbf"] = json!(NOW + 11));

        assert_eq!(check(&token), Err(TokenError::NotYetValid));
    }

    #[test]
    fn wrong_issuer_is_rejected() {
        let token = token_with(|_| {}, |c| c["iss"] = json!("https://evil.test"));

        assert_eq!(check(&token), Err(TokenError::WrongIssuer));
    }

    #[test]
    fn wrong_audience_is_rejected() {
        let token = token_with(|_| {}, |c| c["aud"] = json!("someone-else"));

        assert_eq!(check(&token), Err(TokenError::WrongAudience));
    }

    #[test]
    fn missing_required_claim_is_rejected() {
        for claim in ["exp", "nbf", "iss", "aud", "sub", "sid"] {
            let token = token_with(
                |_| {},
                |c| {
                    c.as_object_mut().unwrap().remove(claim);
                },
            );

            assert_eq!(
                check(&token),
                Err(TokenError::InvalidClaims),
                "without {claim}"
            );
        }
    }

    #[test]
    fn alg_none_is_rejected() {
        for alg in ["none", "None", "NONE"] {
            let token = token_with(|h| h["alg"] = json!(alg), |_| {});

            assert_eq!(check(&token), Err(TokenError::Unsigned));
        }
    }

    #[test]
    fn unsigned_token_with_empty_signature_is_rejected() {
        let token = token_with(|h| h["alg"] = json!("none"), |_| {});
        let (unsigned, _) = token.rsplit_once('.').unwrap();

        assert_eq!(check(&format!("{unsigned}.")), Err(TokenError::Unsigned));
    }

    #[test]
    fn other_algorithm_is_rejected() {
        let token = token_with(|h| h["alg"] = json!("HS256"), |_| {});

        assert_eq!(
            check(&token),
            Err(TokenError::WrongAlgorithm("HS256".into()))
        );
    }

    #[test]
    fn embedded_key_headers_are_rejected() {
        for member in ["jwk", "jku", "x5u", "x5c"] {
            let token = token_with(|h| h[member] = json!("https://evil.test/keys"), |_| {});

            assert_eq!(check(&token), Err(TokenError::EmbeddedKey(member)));
        }
    }

    #[test]
    fn critical_extensions_are_rejected() {
        let token = token_with(|h| h["crit"] = json!(["exp"]), |_| {});

        assert_eq!(check(&token), Err(TokenError::UnsupportedCritical));
    }

    #[test]
    fn wrong_or_missing_type_is_rejected() {
        let id_token = token_with(|h| h["typ"] = json!("JWT"), |_| {});
        let untyped = token_with(
            |h| {
                h.as_object_mut().unwrap().remove("typ");
            },
            |_| {},
        );

        assert_eq!(check(&id_token), Err(TokenError::WrongType));
        assert_eq!(check(&untyped), Err(TokenError::WrongType));
    }

    #[test]
    fn unknown_kid_is_rejected() {
        let token = token_with(|h| h["kid"] = json!("not-a-key-we-know"), |_| {});

        assert_eq!(check(&token), Err(TokenError::UnknownKeyId));
    }

    #[test]
    fn missing_kid_is_rejected() {
        let token = token_with(
            |h| {
                h.as_object_mut().unwrap().remove("kid");
            },
            |_| {},
        );

        assert_eq!(check(&token), Err(TokenError::MissingKeyId));
    }

    #[test]
    fn token_signed_by_another_key_under_our_kid_is_rejected() {
        let ours = signing_key(1);
        let forger = signing_key(2);

        let token = encode_jws(&header(&ours), &claims(), &forger);

        assert_eq!(check(&token), Err(TokenError::BadSignature));
    }

    #[test]
    fn tampered_claims_are_rejected() {
        let token = token_with(|_| {}, |_| {});
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut forged_claims = claims();
        forged_claims["email"] = json!("admin@example.test");
        let forged = b64::encode(serde_json::to_vec(&forged_claims).unwrap());
        parts[1] = &forged;

        assert_eq!(check(&parts.join(".")), Err(TokenError::BadSignature));
    }

    #[test]
    fn oversized_token_is_rejected_before_parsing() {
        let token = token_with(|_| {}, |c| c["pad"] = json!("x".repeat(MAX_TOKEN_BYTES)));

        assert_eq!(check(&token), Err(TokenError::TooLarge));
    }

    #[test]
    fn garbage_is_malformed() {
        for garbage in ["", "abc", "a.b", "a.b.c", "a.b.c.d", "....", "eyJ9.e30.AA"] {
            assert_eq!(check(garbage), Err(TokenError::Malformed), "{garbage:?}");
        }
    }

    #[test]
    fn key_id_reads_the_header_without_verifying() {
        let token = token_with(|h| h["kid"] = json!("k1"), |_| {});

        assert_eq!(key_id(&token).as_deref(), Ok("k1"));
    }
}
