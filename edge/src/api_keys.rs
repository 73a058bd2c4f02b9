//! API keys at the edge.
//!
//! A key's verdict (valid or not) comes from the origin (`GET /auth/api-key`) and is then reused
//! for `API_KEY_CACHE_TTL_SECS`, in this isolate's memory and in the Cache API (shared by the
//! isolates of a data centre). Why not Workers KV: KV would need the origin to push every
//! creation and revocation, and its global propagation (about 60 s) would be the revocation
//! bound anyway. A short cache of origin answers needs no extra moving part, keeps the common
//! case free of origin round trips, and bounds revocation by one TTL: each verdict carries its
//! own expiry, so no layer of cache extends another. Malformed keys are refused without any
//! lookup; answers are cached under the key's SHA-256, never the key itself, and tagged (see
//! [`crate::cache::Tagger`]) so no other Worker can plant a verdict.
//!
//! A flood of made-up keys must not become a flood of origin queries, nor push the good verdicts
//! out of memory:
//! - good and bad verdicts live in separate maps, each bounded; a flood fills only the bad one;
//! - a key never seen valid here is looked up only while the client's misses stay under the
//!   `API_KEY_MISS_LIMITER` binding; beyond it the key is refused (401) with no lookup and
//!   nothing cached. A key this isolate has seen valid is looked up again when its verdict
//!   expires whatever the limiter says, so a flood from a client cannot lock out good keys.

use std::cell::RefCell;
use std::collections::HashMap;

use gatehouse_shared::api::API_KEY_HEADER;
use gatehouse_shared::api_key::ApiKey;
use sha2::{Digest, Sha256};
use worker::{Cache, Headers, Response};

use crate::cache::{CACHE_NAME, TAG_HEADER};
use crate::config::{EdgeConfig, MAX_API_KEY_CACHE_SECS};
use crate::error::AppError;
use crate::proxy;

/// Verdicts kept per map in isolate memory: bounds memory under a flood of distinct keys.
const MAX_ISOLATE_ENTRIES: usize = 10_000;

thread_local! {
    /// SHA-256 of a key the origin said is valid → expiry in ms since the epoch. Kept past the
    /// expiry (until the map is full) as "seen valid", which lets the key past the miss limiter.
    static GOOD: RefCell<HashMap<[u8; 32], u64>> = RefCell::new(HashMap::new());
    /// SHA-256 of a key the origin refused → expiry.
    static BAD: RefCell<HashMap<[u8; 32], u64>> = RefCell::new(HashMap::new());
}

/// What this isolate knows of a key.
enum Known {
    /// A verdict still within its TTL.
    Fresh(bool),
    /// Valid when last asked, but the verdict has expired: asked again, past the miss limiter.
    SeenValid,
    /// Nothing.
    Unknown,
}

/// Lets the request through only with a key the origin vouches for. `client` names the caller
/// for the miss limiter (its address block).
pub async fn require_valid(
    presented: Option<&str>,
    client: &str,
    config: &EdgeConfig,
    request_id: &str,
) -> Result<(), AppError> {
    let key = presented
        .and_then(|text| ApiKey::parse(text).ok())
        .ok_or(AppError::InvalidApiKey)?;
    let fingerprint: [u8; 32] = Sha256::digest(key.expose().as_bytes()).into();
    let now = crate::now_millis();

    let seen_valid = match known(&fingerprint, now) {
        Known::Fresh(valid) => return verdict(valid),
        Known::SeenValid => true,
        Known::Unknown => false,
    };
    if let Some((valid, expires)) = cached_verdict(&fingerprint, now, config).await {
        remember(fingerprint, valid, expires);
        return verdict(valid);
    }
    if !seen_valid && !miss_allowed(client, config).await {
        worker::console_warn!("request {request_id}: API-key misses over the limit: refused");
        return Err(AppError::InvalidApiKey);
    }
    let valid = ask_origin(&key, config, request_id).await?;
    let expires = now + config.api_key_cache_secs * 1000;
    remember(fingerprint, valid, expires);
    store(&fingerprint, valid, expires, config).await;
    verdict(valid)
}

fn verdict(valid: bool) -> Result<(), AppError> {
    if valid {
        Ok(())
    } else {
        Err(AppError::InvalidApiKey)
    }
}

/// Whether the client may cost the origin another lookup of a key never seen valid. Without the
/// binding, or if it fails, yes (logged): the origin's answer is still the verdict.
async fn miss_allowed(client: &str, config: &EdgeConfig) -> bool {
    let Some(limiter) = &config.limiters().api_key_misses else {
        return true;
    };
    match limiter.limit(format!("api-key-miss:{client}")).await {
        Ok(outcome) => outcome.success,
        Err(error) => {
            worker::console_error!("the API-key miss limiter failed, looking the key up: {error}");
            true
        }
    }
}

fn known(fingerprint: &[u8; 32], now: u64) -> Known {
    if let Some(expires) = GOOD.with_borrow(|good| good.get(fingerprint).copied()) {
        return if expires > now {
            Known::Fresh(true)
        } else {
            Known::SeenValid
        };
    }
    match BAD.with_borrow(|bad| bad.get(fingerprint).copied()) {
        Some(expires) if expires > now => Known::Fresh(false),
        _ => Known::Unknown,
    }
}

fn remember(fingerprint: [u8; 32], valid: bool, expires: u64) {
    let now = crate::now_millis();
    let (map, other) = if valid { (&GOOD, &BAD) } else { (&BAD, &GOOD) };
    other.with_borrow_mut(|other| other.remove(&fingerprint));
    map.with_borrow_mut(|verdicts| {
        if verdicts.len() >= MAX_ISOLATE_ENTRIES {
            // Expired entries go first; only a map full of live ones (a flood of distinct keys
            // within one TTL) is dropped whole.
            verdicts.retain(|_, expires| *expires > now);
            if verdicts.len() >= MAX_ISOLATE_ENTRIES {
                verdicts.clear();
            }
        }
        verdicts.insert(fingerprint, expires);
    });
}

fn cache_url(fingerprint: &[u8; 32]) -> String {
    format!(
        "https://gatehouse-edge.internal/api-key/{}",
        hex::encode(fingerprint)
    )
}

/// A verdict from the Cache API: body `"<0|1> <expiry ms>"`, tagged.
async fn cached_verdict(
    fingerprint: &[u8; 32],
    now: u64,
    config: &EdgeConfig,
) -> Option<(bool, u64)> {
    let cache = Cache::open(CACHE_NAME.into()).await;
    let url = cache_url(fingerprint);
    let mut response = cache.get(&url, false).await.ok()??;
    let tag = response.headers().get(TAG_HEADER).ok()??;
    let text = response.text().await.ok()?;
    if !config
        .cache_tags()
        .verifies(&[url.as_bytes(), text.as_bytes()], &tag)
    {
        worker::console_warn!("a cached API-key verdict has a bad tag: ignored");
        return None;
    }
    let (valid, expires) = text.split_once(' ')?;
    // A stored expiry is never trusted beyond the longest TTL the edge allows.
    let expires = expires
        .parse::<u64>()
        .ok()?
        .min(now + MAX_API_KEY_CACHE_SECS * 1000);
    (expires > now).then_some((valid == "1", expires))
}

async fn store(fingerprint: &[u8; 32], valid: bool, expires: u64, config: &EdgeConfig) {
    if config.api_key_cache_secs == 0 {
        return;
    }
    let url = cache_url(fingerprint);
    let body = format!("{} {expires}", u8::from(valid));
    let headers = Headers::new();
    let tag = config.cache_tags().tag(&[url.as_bytes(), body.as_bytes()]);
    let stamped = headers
        .set(
            "cache-control",
            &format!("max-age={}", config.api_key_cache_secs),
        )
        .and_then(|()| headers.set(TAG_HEADER, &tag));
    if stamped.is_err() {
        return;
    }
    let response = Response::builder()
        .with_headers(headers)
        .fixed(body.into_bytes());
    // A failed cache write only costs a later origin lookup.
    let cache = Cache::open(CACHE_NAME.into()).await;
    let _ = cache.put(url, response).await;
}

/// 204 from the origin means valid, 401 invalid; anything else is the origin failing.
async fn ask_origin(key: &ApiKey, config: &EdgeConfig, request_id: &str) -> Result<bool, AppError> {
    let url = format!("{}/auth/api-key", config.origin_url);
    let headers = [(API_KEY_HEADER, key.expose())];
    let response = proxy::lookup(&url, &headers, true, config, request_id).await?;
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
