//! Issuing and checking access tokens with the configured keys. The rules themselves live in
//! `gatehouse_shared::token`, so the edge applies exactly the same ones.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use gatehouse_shared::jwk::{Jwk, JwkSet, KeySet};
use gatehouse_shared::signing::TokenSigner;
use gatehouse_shared::token::{AccessClaims, TokenError, Validation};
use gatehouse_shared::token_cache::TokenCache;
use time::OffsetDateTime;
use uuid::Uuid;

/// The signing key, the keys still accepted, and the expected issuer and audience. The keys can
/// be replaced while requests run (signing keys kept in PostgreSQL are re-read on an interval);
/// each request works with one consistent set. Tokens that validated are remembered (see
/// [`TokenCache`]), so checking one again skips the signature.
#[derive(Debug)]
pub struct Tokens {
    keys: RwLock<Arc<Keys>>,
    validation: Validation,
    ttl: Duration,
    cache: TokenCache,
}

/// One consistent set of keys.
#[derive(Debug)]
struct Keys {
    signer: TokenSigner,
    accepted: KeySet,
    jwks: JwkSet,
}

impl Keys {
    /// Signs with `signer`; accepts and publishes it first, then `others`.
    fn new(signer: TokenSigner, others: &[VerifyingKey]) -> Self {
        let published: Vec<VerifyingKey> = std::iter::once(signer.verifying_key())
            .chain(others.iter().copied())
            .collect();
        Keys {
            accepted: KeySet::from_keys(&published),
            jwks: JwkSet {
                keys: published.iter().map(Jwk::from_ed25519).collect(),
            },
            signer,
        }
    }
}

/// A freshly signed access token.
pub struct IssuedToken {
    /// The compact JWS.
    pub token: String,
    /// Its lifetime in seconds.
    pub expires_in: u64,
}

impl Tokens {
    /// Signs with `signer`; accepts tokens from it and from `others` (the key before the last
    /// rotation, or the next one), so tokens issued just before a rotation stay valid until they
    /// expire.
    pub fn new(
        signer: TokenSigner,
        others: &[VerifyingKey],
        validation: Validation,
        ttl: Duration,
    ) -> Self {
        Tokens {
            keys: RwLock::new(Arc::new(Keys::new(signer, others))),
            validation,
            ttl,
            cache: TokenCache::new([0; 32], 0),
        }
    }

    /// Remembers up to `entries` tokens that validated (`TOKEN_CACHE_ENTRIES`; 0: none), keyed
    /// by an HMAC under a random key of this process.
    pub fn with_cache(mut self, entries: usize) -> Self {
        let mut key = [0; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        self.cache = TokenCache::new(key, entries);
        self
    }

    /// From now on, signs with `signer` and accepts and publishes it and `others` (keys about to
    /// sign, and retired keys whose tokens may still be live).
    pub fn replace_keys(&self, signer: TokenSigner, others: &[VerifyingKey]) {
        let keys = Arc::new(Keys::new(signer, others));
        *self.keys.write().expect("not poisoned") = keys;
    }

    fn keys(&self) -> Arc<Keys> {
        Arc::clone(&self.keys.read().expect("not poisoned"))
    }

    /// The public keys, current first, as published at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> JwkSet {
        self.keys().jwks.clone()
    }

    /// The key id tokens are signed with now.
    pub fn signing_kid(&self) -> String {
        self.keys().signer.kid().to_owned()
    }

    /// The access-token lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long after its session ends a token of it can still pass validation anywhere: the
    /// lifetime plus the largest leeway either side may be configured with (the edge has its own
    /// `JWT_LEEWAY_SECS`). The revocation list sent to the edge covers this span.
    pub fn longest_validity(&self) -> Duration {
        longest_validity(self.ttl)
    }

    /// Issues a token for `user` in `session`, authenticated as `authentication` says, at `now`,
    /// expiring after the configured lifetime or at `not_after` (the session's end), whichever
    /// comes first.
    pub fn issue(
        &self,
        user: &crate::users::User,
        session: Uuid,
        authentication: &crate::sessions::Authentication,
        now: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> IssuedToken {
        let method = authentication.method;
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
            amr: method.amr().iter().map(|&value| value.to_owned()).collect(),
            acr: Some(method.level().as_str().to_owned()),
            auth_time: Some(authentication.at.unix_timestamp()),
        };
        IssuedToken {
            token: self.keys().signer.sign(&claims),
            expires_in,
        }
    }

    /// Validates a presented token at `now`.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<AccessClaims, TokenError> {
        self.cache
            .validate(
                token,
                &self.keys().accepted,
                &self.validation,
                now.unix_timestamp(),
            )
            .map(|(claims, _)| claims)
    }
}

/// How long a token with lifetime `ttl` can pass validation anywhere: `ttl` plus the largest
/// leeway either side may be configured with.
pub fn longest_validity(ttl: Duration) -> Duration {
    ttl + Duration::from_secs(gatehouse_shared::token::MAX_LEEWAY_SECS)
}
