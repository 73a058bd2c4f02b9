//! The origin's signing keys at the edge, and token validation against them.
//!
//! Keys live in this isolate's memory and in the edge's Cache API cache, for the origin's
//! `Cache-Control: max-age` counted from when they were fetched (the fetch time travels with the
//! cached copy, so no layer extends another). A token naming a `kid` the edge does not know
//! triggers a fresh fetch, at most once per `JWKS_REFETCH_COOLDOWN_SECS` per isolate: a rotation
//! at the origin is picked up without a redeploy, and a flood of tokens with random kids cannot
//! become a flood of origin requests. When the origin cannot be reached, keys past their max-age
//! are still used for up to `MAX_STALE_SECS`, and the origin is asked again only after
//! `RETRY_AFTER_FAILURE_SECS`, so an outage does not make every verification wait for it.

use std::cell::RefCell;

use gatehouse_shared::jwk::{JwkSet, KeySet};
use gatehouse_shared::token::{AccessClaims, TokenError, key_id};
use worker::{Date, Method, Request, RequestInit, Response};

use crate::cache;
use crate::config::EdgeConfig;
use crate::error::AppError;
use crate::proxy;

/// Used when the origin's JWKS response carries no usable max-age.
const DEFAULT_MAX_AGE_SECS: u64 = 300;

/// How long keys may be used past their max-age while the origin cannot be reached. Bounded, so
/// a key the origin has withdrawn is not trusted forever during a long outage.
const MAX_STALE_SECS: u64 = 3_600;

/// After a failed refresh, how long stale keys are used before the origin is asked again.
const RETRY_AFTER_FAILURE_SECS: u64 = 15;

#[derive(Clone)]
struct CachedKeys {
    keys: KeySet,
    /// Until when (ms since the epoch) the keys are used without asking again.
    fresh_until: u64,
    /// Until when they may be used at all, should the origin be unreachable.
    usable_until: u64,
}

thread_local! {
    static KEYS: RefCell<Option<CachedKeys>> = const { RefCell::new(None) };
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
    let (mut keys, just_fetched) = current_keys(config, request_id).await?;
    if !keys.contains(&kid) && !just_fetched {
        if cooldown_over(config) {
            keys = fetch_from_origin(config, request_id).await.unwrap_or(keys);
        } else if let Some(cached) = from_cache(config).await.filter(|c| c.keys.contains(&kid)) {
            // Another isolate may already have learnt the new key; asking the cache is free.
            keys = cached.keys;
        }
    }
    gatehouse_shared::token::validate(token, &keys, &config.validation, now).map_err(|error| {
        if error == TokenError::UnknownKeyId {
            worker::console_log!("request {request_id}: token names an unknown key");
        }
        AppError::InvalidToken(error)
    })
}

/// Fresh keys from memory, else from the Cache API, else from the origin (then `true`); usable
/// stale keys when the origin cannot be reached.
async fn current_keys(config: &EdgeConfig, request_id: &str) -> Result<(KeySet, bool), AppError> {
    let now = Date::now().as_millis();
    let held = KEYS.with_borrow(Clone::clone);
    if let Some(held) = &held
        && held.fresh_until > now
    {
        return Ok((held.keys.clone(), false));
    }
    if let Some(cached) = from_cache(config).await.filter(|c| c.fresh_until > now) {
        return Ok((cached.keys, false));
    }
    match fetch_from_origin(config, request_id).await {
        Ok(keys) => Ok((keys, true)),
        Err(error) => match held.filter(|held| held.usable_until > now) {
            Some(mut stale) => {
                stale.fresh_until = now + RETRY_AFTER_FAILURE_SECS * 1000;
                let keys = stale.keys.clone();
                KEYS.with_borrow_mut(|slot| *slot = Some(stale));
                worker::console_warn!(
                    "request {request_id}: using stale keys; the origin's JWKS is unavailable"
                );
                Ok((keys, false))
            }
            None => Err(error),
        },
    }
}

fn cooldown_over(config: &EdgeConfig) -> bool {
    let now = Date::now().as_millis();
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

fn jwks_url(config: &EdgeConfig) -> String {
    format!("{}/.well-known/jwks.json", config.origin_url)
}

/// The Cache API's copy, remembered in the isolate when it is still fresh.
async fn from_cache(config: &EdgeConfig) -> Option<CachedKeys> {
    let (mut response, fetched_at) = cache::get_copy(jwks_url(config)).await?;
    let max_age = max_age(&response);
    let set: JwkSet = response.json().await.ok()?;
    let cached = remember(&set, fetched_at, max_age);
    Some(cached)
}

/// Asks the origin, bypassing every cache, and stores what it says in both.
async fn fetch_from_origin(config: &EdgeConfig, request_id: &str) -> Result<KeySet, AppError> {
    let mut init = RequestInit::new();
    init.with_method(Method::Get);
    let request = Request::new_with_init(&jwks_url(config), &init)?;
    let mut response = proxy::send(request, config, request_id).await?;
    if response.status_code() != 200 {
        worker::console_error!(
            "request {request_id}: origin answered {} for its JWKS",
            response.status_code()
        );
        return Err(AppError::OriginUnreachable);
    }
    let max_age = max_age(&response);
    let body = proxy::within_deadline(response.text(), config)
        .await
        .ok_or(AppError::OriginTimeout)?
        .map_err(|_| AppError::OriginUnreachable)?;
    let set: JwkSet = serde_json::from_str(&body).map_err(|_| AppError::OriginUnreachable)?;
    let fetched_at = Date::now().as_millis();
    worker::console_log!("request {request_id}: fetched the key set from the origin");

    cache::put_copy(jwks_url(config), body, max_age, fetched_at).await;
    Ok(remember(&set, fetched_at, max_age).keys)
}

fn max_age(response: &Response) -> u64 {
    response
        .headers()
        .get("cache-control")
        .ok()
        .flatten()
        .and_then(|value| {
            value.split(',').find_map(|directive| {
                directive
                    .trim()
                    .strip_prefix("max-age=")?
                    .parse::<u64>()
                    .ok()
            })
        })
        .unwrap_or(DEFAULT_MAX_AGE_SECS)
}

fn remember(set: &JwkSet, fetched_at: u64, max_age: u64) -> CachedKeys {
    let fresh_until = fetched_at + max_age * 1000;
    let cached = CachedKeys {
        keys: KeySet::from_jwks(set),
        fresh_until,
        usable_until: fresh_until + MAX_STALE_SECS * 1000,
    };
    KEYS.with_borrow_mut(|slot| *slot = Some(cached.clone()));
    cached
}
