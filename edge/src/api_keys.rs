//! API keys at the edge.
//!
//! A key's verdict (valid or not) comes from the origin (`GET /auth/api-key`) and is then reused
//! for `API_KEY_CACHE_TTL_SECS`, in this isolate's memory and in the Cache API (shared by the
//! isolates of a data centre). Why not Workers KV: KV would need the origin to push every
//! creation and revocation, and its global propagation (about 60 s) would be the revocation
//! bound anyway. A short cache of origin answers needs no extra moving part, keeps the common
//! case free of origin round trips, and bounds revocation by one TTL: each verdict carries its
//! own expiry, so no layer of cache extends another. Malformed keys are refused without any
//! lookup; answers are cached under the key's SHA-256, never the key itself.

use std::cell::RefCell;
use std::collections::HashMap;

use gatehouse_shared::api::{API_KEY_HEADER, EDGE_SECRET_HEADER, REQUEST_ID_HEADER};
use gatehouse_shared::api_key::ApiKey;
use sha2::{Digest, Sha256};
use worker::{Cache, Date, Headers, Method, Request, RequestInit, Response};

use crate::cache::CACHE_NAME;
use crate::config::{EdgeConfig, MAX_API_KEY_CACHE_SECS};
use crate::error::AppError;
use crate::proxy;

/// Entries kept in isolate memory before the map is cleared: bounds memory under a flood of
/// distinct keys.
const MAX_ISOLATE_ENTRIES: usize = 10_000;

thread_local! {
    /// SHA-256 of a key → (valid, expiry in ms since the epoch).
    static VERDICTS: RefCell<HashMap<[u8; 32], (bool, u64)>> = RefCell::new(HashMap::new());
}

/// Lets the request through only with a key the origin vouches for.
pub async fn require_valid(
    presented: Option<&str>,
    config: &EdgeConfig,
    request_id: &str,
) -> Result<(), AppError> {
    let key = presented
        .and_then(|text| ApiKey::parse(text).ok())
        .ok_or(AppError::InvalidApiKey)?;
    let fingerprint: [u8; 32] = Sha256::digest(key.expose().as_bytes()).into();
    let now = Date::now().as_millis();

    let valid = match isolate_verdict(&fingerprint, now) {
        Some(valid) => valid,
        None => match cached_verdict(&fingerprint, now).await {
            Some((valid, expires)) => {
                remember(fingerprint, valid, expires);
                valid
            }
            None => {
                let valid = ask_origin(&key, config, request_id).await?;
                let expires = now + config.api_key_cache_secs * 1000;
                remember(fingerprint, valid, expires);
                store(&fingerprint, valid, expires, config.api_key_cache_secs).await;
                valid
            }
        },
    };
    if valid {
        Ok(())
    } else {
        Err(AppError::InvalidApiKey)
    }
}

fn isolate_verdict(fingerprint: &[u8; 32], now: u64) -> Option<bool> {
    VERDICTS.with_borrow(|verdicts| {
        verdicts
            .get(fingerprint)
            .filter(|(_, expires)| *expires > now)
            .map(|(valid, _)| *valid)
    })
}

fn remember(fingerprint: [u8; 32], valid: bool, expires: u64) {
    let now = Date::now().as_millis();
    VERDICTS.with_borrow_mut(|verdicts| {
        if verdicts.len() >= MAX_ISOLATE_ENTRIES {
            // Expired entries go first; only a map full of live ones (a flood of distinct keys
            // within one TTL) is dropped whole.
            verdicts.retain(|_, (_, expires)| *expires > now);
            if verdicts.len() >= MAX_ISOLATE_ENTRIES {
                verdicts.clear();
            }
        }
        verdicts.insert(fingerprint, (valid, expires));
    });
}

fn cache_url(fingerprint: &[u8; 32]) -> String {
    format!(
        "https://gatehouse-edge.internal/api-key/{}",
        hex::encode(fingerprint)
    )
}

/// A verdict from the Cache API: body `"<0|1> <expiry ms>"`.
async fn cached_verdict(fingerprint: &[u8; 32], now: u64) -> Option<(bool, u64)> {
    let cache = Cache::open(CACHE_NAME.into()).await;
    let mut response = cache.get(cache_url(fingerprint), false).await.ok()??;
    let text = response.text().await.ok()?;
    let (valid, expires) = text.split_once(' ')?;
    // A stored expiry is never trusted beyond the longest TTL the edge allows.
    let expires = expires
        .parse::<u64>()
        .ok()?
        .min(now + MAX_API_KEY_CACHE_SECS * 1000);
    (expires > now).then_some((valid == "1", expires))
}

async fn store(fingerprint: &[u8; 32], valid: bool, expires: u64, ttl_secs: u64) {
    if ttl_secs == 0 {
        return;
    }
    let headers = Headers::new();
    let _ = headers.set("cache-control", &format!("max-age={ttl_secs}"));
    let body = format!("{} {expires}", u8::from(valid));
    let response = Response::builder()
        .with_headers(headers)
        .fixed(body.into_bytes());
    // A failed cache write only costs a later origin lookup.
    let cache = Cache::open(CACHE_NAME.into()).await;
    let _ = cache.put(cache_url(fingerprint), response).await;
}

/// 204 from the origin means valid, 401 invalid; anything else is the origin failing.
async fn ask_origin(key: &ApiKey, config: &EdgeConfig, request_id: &str) -> Result<bool, AppError> {
    let headers = Headers::new();
    headers.set(API_KEY_HEADER, key.expose())?;
    headers.set(REQUEST_ID_HEADER, request_id)?;
    headers.set(EDGE_SECRET_HEADER, &config.edge_secret)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let request = Request::new_with_init(&format!("{}/auth/api-key", config.origin_url), &init)?;
    let response = proxy::send(request, config, request_id).await?;
    match response.status_code() {
        204 => Ok(true),
        401 => Ok(false),
        status => {
            worker::console_error!(
                "request {request_id}: origin answered {status} to an API-key lookup"
            );
            Err(AppError::OriginUnreachable)
        }
    }
}
