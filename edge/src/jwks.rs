//! The origin's signing keys at the edge, and token validation against them.
//!
//! Keys live in this isolate's memory and in the Cache API (keyed by the origin's JWKS URL), for
//! as long as the origin's `Cache-Control: max-age` allows. A token naming a `kid` the edge does
//! not know triggers a fresh fetch, at most once per `JWKS_REFETCH_COOLDOWN_SECS` per isolate:
//! a rotation at the origin is picked up without a redeploy, and a flood of tokens with random
//! kids cannot become a flood of origin requests. When the origin cannot be reached, keys past
//! their max-age are still used rather than failing every verification.

use std::cell::RefCell;

use gatehouse_shared::jwk::{JwkSet, KeySet};
use gatehouse_shared::token::{AccessClaims, TokenError, key_id};
use worker::{Cache, Date, Method, Request, RequestInit, Response};

use crate::config::EdgeConfig;
use crate::error::AppError;
use crate::proxy;

/// Used when the origin's JWKS response carries no usable max-age.
const DEFAULT_MAX_AGE_SECS: u64 = 300;

struct CachedKeys {
    keys: KeySet,
    /// When the keys should be fetched again, ms since the epoch.
    fresh_until: u64,
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
    let mut keys = current_keys(config, request_id).await?;
    if !keys.contains(&kid) && cooldown_over(config) {
        keys = fetch_from_origin(config, request_id, true)
            .await
            .unwrap_or(keys);
    }
    gatehouse_shared::token::validate(token, &keys, &config.validation, now).map_err(|error| {
        if error == TokenError::UnknownKeyId {
            worker::console_log!("request {request_id}: token names an unknown key");
        }
        AppError::InvalidToken(error)
    })
}

/// Fresh keys from memory, else from the Cache API, else from the origin; stale keys when the
/// origin cannot be reached.
async fn current_keys(config: &EdgeConfig, request_id: &str) -> Result<KeySet, AppError> {
    let now = Date::now().as_millis();
    let stale = KEYS.with_borrow(|cached| {
        cached
            .as_ref()
            .map(|cached| (cached.keys.clone(), cached.fresh_until > now))
    });
    match stale {
        Some((keys, true)) => Ok(keys),
        stale => match fetch(config, request_id).await {
            Ok(keys) => Ok(keys),
            Err(error) => stale.map(|(keys, _)| keys).ok_or(error),
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

/// The Cache API's copy if it has one, else the origin's.
async fn fetch(config: &EdgeConfig, request_id: &str) -> Result<KeySet, AppError> {
    if let Ok(Some(response)) = Cache::default().get(jwks_url(config), false).await
        && let Ok(keys) = remember(response).await
    {
        return Ok(keys);
    }
    fetch_from_origin(config, request_id, false).await
}

/// Asks the origin, bypassing every cache when `forced`, and stores what it says.
async fn fetch_from_origin(
    config: &EdgeConfig,
    request_id: &str,
    forced: bool,
) -> Result<KeySet, AppError> {
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
    worker::console_log!(
        "request {request_id}: fetched the key set from the origin (forced: {forced})"
    );
    // The Cache API honours the origin's Cache-Control; a failed write costs a later fetch.
    if let Ok(copy) = response.cloned() {
        let _ = Cache::default().put(jwks_url(config), copy).await;
    }
    remember(response).await
}

async fn remember(mut response: Response) -> Result<KeySet, AppError> {
    let max_age = response
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
        .unwrap_or(DEFAULT_MAX_AGE_SECS);
    let set: JwkSet = response
        .json()
        .await
        .map_err(|_| AppError::OriginUnreachable)?;
    let keys = KeySet::from_jwks(&set);
    let fresh_until = Date::now().as_millis() + max_age * 1000;
    KEYS.with_borrow_mut(|cached| {
        *cached = Some(CachedKeys {
            keys: keys.clone(),
            fresh_until,
        });
    });
    Ok(keys)
}
