//! The origin's signing keys at the edge, and token validation against them.
//!
//! The key set is a [`cache::Document`]: kept in this isolate's memory and in the edge's Cache API
//! cache for the origin's `Cache-Control: max-age`, counted from when it was fetched. A token
//! naming a `kid` the edge does not know triggers a fresh fetch, at most once per
//! `JWKS_REFETCH_COOLDOWN_SECS` per isolate: a rotation at the origin is picked up without a
//! redeploy, and a flood of tokens with random kids cannot become a flood of origin requests.
//! When the origin cannot be reached, keys past their max-age are still used for up to
//! `MAX_STALE_SECS`, and the origin is asked again only every 15 s, so an outage does not make
//! every verification wait for it. Tokens that verified are remembered per isolate
//! (`TOKEN_CACHE_ENTRIES`), so a client checking its token again costs a hash, not a signature.

use std::cell::{OnceCell, RefCell};
use std::thread::LocalKey;

use gatehouse_shared::jwk::{JwkSet, KeySet};
use gatehouse_shared::token::{AccessClaims, TokenError, key_id};
use gatehouse_shared::token_cache::TokenCache;

use crate::cache::{self, Document, Held, Lifetime};
use crate::config::EdgeConfig;
use crate::error::AppError;

/// Used when the origin's JWKS response carries no usable max-age.
const DEFAULT_MAX_AGE_SECS: u64 = 300;

/// How long keys may be used past their max-age while the origin cannot be reached. Bounded, so
/// a key the origin has withdrawn is not trusted forever during a long outage.
const MAX_STALE_SECS: u64 = 3_600;

impl Document for KeySet {
    const NAME: &'static str = "the key set";
    const PATH: &'static str = "/.well-known/jwks.json";
    const EDGE_ONLY: bool = false;
    const RETRY_AFTER_FAILURE_MS: u64 = 15_000;

    fn slot() -> &'static LocalKey<RefCell<Option<Held<Self>>>> {
        thread_local! {
            static KEYS: RefCell<Option<Held<KeySet>>> = const { RefCell::new(None) };
        }
        &KEYS
    }

    fn parse(body: &str) -> Option<Self> {
        let set: JwkSet = serde_json::from_str(body).ok()?;
        Some(KeySet::from_jwks(&set))
    }

    fn lifetime(max_age_secs: Option<u64>, _: &EdgeConfig) -> Lifetime {
        let fresh_ms = max_age_secs.unwrap_or(DEFAULT_MAX_AGE_SECS) * 1000;
        Lifetime {
            fresh_ms,
            usable_ms: fresh_ms + MAX_STALE_SECS * 1000,
        }
    }

    fn unavailable() -> AppError {
        AppError::OriginUnreachable
    }
}

thread_local! {
    /// When this isolate last fetched from the origin because of an unknown kid.
    static LAST_FORCED_FETCH: RefCell<Option<u64>> = const { RefCell::new(None) };
}

/// Validates `token` at `now` (seconds) with the shared rules and the origin's current keys.
pub async fn validate(
    token: &str,
    config: &EdgeConfig,
    now: i64,
    request_id: &str,
) -> Result<AccessClaims, AppError> {
    // Header rules first (alg, typ, embedded keys, size): a token refused by them costs no key
    // lookup at all.
    let kid = key_id(token).map_err(AppError::InvalidToken)?;
    let current = cache::current::<KeySet>(config, request_id).await?;
    let mut keys = current.document;
    if !keys.contains(&kid) && !current.just_fetched {
        if cooldown_over(config) {
            keys = cache::fetch(config, request_id).await.unwrap_or(keys);
        } else if let Some(cached) = cache::from_cache::<KeySet>(config, crate::now_millis())
            .await
            .filter(|cached| cached.contains(&kid))
        {
            // Another isolate may already have learnt the new key; asking the cache is free.
            keys = cached;
        }
    }
    let validated = TOKENS.with(|tokens| {
        tokens
            .get_or_init(|| TokenCache::new(cache_key(), config.token_cache_entries as usize))
            .validate(token, &keys, &config.validation, now)
    });
    validated.map(|(claims, _)| claims).map_err(|error| {
        if error == TokenError::UnknownKeyId {
            worker::console_log!("request {request_id}: token names an unknown key");
        }
        AppError::InvalidToken(error)
    })
}

thread_local! {
    /// Tokens this isolate has verified: a repeated check skips the signature (the key set, the
    /// validity window and, in the caller, the revocation list are still checked every time).
    static TOKENS: OnceCell<TokenCache> = const { OnceCell::new() };
}

/// A random key for the token cache's HMAC, from two `crypto.randomUUID()`s (244 random bits).
fn cache_key() -> [u8; 32] {
    use sha2::Digest as _;
    let seed = format!("{}{}", crate::random_uuid(), crate::random_uuid());
    sha2::Sha256::digest(seed.as_bytes()).into()
}

fn cooldown_over(config: &EdgeConfig) -> bool {
    let now = crate::now_millis();
    LAST_FORCED_FETCH.with_borrow_mut(|last| {
        let over = last.is_none_or(|last| {
            now.saturating_sub(last) >= config.jwks_refetch_cooldown_secs * 1000
        });
        if over {
            *last = Some(now);
        }
        over
    })
}
