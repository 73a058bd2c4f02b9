//! Issuing and checking access tokens with the configured keys. The rules themselves live in
//! `gatehouse_shared::token`, so the edge applies exactly the same ones.

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use gatehouse_shared::jwk::{Jwk, JwkSet, KeySet};
use gatehouse_shared::signing::TokenSigner;
use gatehouse_shared::token::{AccessClaims, TokenError, Validation, validate};
use time::OffsetDateTime;
use uuid::Uuid;

/// The signing key, the keys still accepted, and the expected issuer and audience.
#[derive(Debug)]
pub struct Tokens {
    signer: TokenSigner,
    keys: KeySet,
    jwks: JwkSet,
    validation: Validation,
    ttl: Duration,
}

/// A freshly signed access token.
pub struct IssuedToken {
    /// The compact JWS.
    pub token: String,
    /// Its lifetime in seconds.
    pub expires_in: u64,
}

impl Tokens {
    /// Signs with `signer`; accepts tokens from it and from `previous` (the key before the last
    /// rotation), so tokens issued just before a rotation stay valid until they expire.
    pub fn new(
        signer: TokenSigner,
        previous: Option<VerifyingKey>,
        validation: Validation,
        ttl: Duration,
    ) -> Self {
        let current = signer.verifying_key();
        let published: Vec<VerifyingKey> = std::iter::once(current).chain(previous).collect();
        let jwks = JwkSet {
            keys: published.iter().map(Jwk::from_ed25519).collect(),
        };
        Tokens {
            keys: KeySet::from_keys(&published),
            jwks,
            signer,
            validation,
            ttl,
        }
    }

    /// The public keys, current first, as published at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    /// The access-token lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long after its session ends a token of it can still pass validation anywhere: the
    /// lifetime plus the largest leeway either side may be configured with (the edge has its own
    /// `JWT_LEEWAY_SECS`). The revocation list sent to the edge covers this span.
    pub fn longest_validity(&self) -> Duration {
        self.ttl + Duration::from_secs(gatehouse_shared::token::MAX_LEEWAY_SECS)
    }

    /// Issues a token for `user` in `session` at `now`, expiring after the configured lifetime
    /// or at `not_after` (the session's end), whichever comes first.
    pub fn issue(
        &self,
        user: &crate::users::User,
        session: Uuid,
        now: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> IssuedToken {
        let iat = now.unix_timestamp();
        let until_session_end = (not_after.unix_timestamp() - iat).max(1) as u64;
        let expires_in = self.ttl.as_secs().min(until_session_end);
        let claims = AccessClaims {
            sub: user.id,
            sid: session,
            jti: Uuid::new_v4(),
            iat,
            nbf: iat,
            exp: iat.saturating_add(expires_in as i64),
            iss: self.validation.issuer().to_owned(),
            aud: vec![self.validation.audience().to_owned()],
            email: user.email.clone(),
            email_verified: user.email_verified_at.is_some(),
            legacy_id: user.legacy_id,
        };
        IssuedToken {
            token: self.signer.sign(&claims),
            expires_in,
        }
    }

    /// Validates a presented token at `now`.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<AccessClaims, TokenError> {
        validate(token, &self.keys, &self.validation, now.unix_timestamp())
    }
}
