//! The edge's copies of origin documents (the key set, the revocation list), kept by one sequence
//! written once for both: this isolate's memory, then the edge's Cache API cache (shared by the
//! isolates of a data centre), then the origin within `ORIGIN_TIMEOUT_MS`, and, while the origin
//! cannot be reached, the last copy held, for as long as the document allows.
//!
//! Every copy is stamped with when its fetch was sent, and its freshness counts from then in every
//! layer, so that no layer of caching extends another's. The Cache API keeps a copy for as long as
//! it is *usable*, not only fresh: an isolate started during an origin outage has no copy of its
//! own, and finds the last one there (judged by its stamp, so a stale copy is never taken for a
//! fresh one).
//!
//! Every stored copy carries an HMAC tag under a key derived from `EDGE_SECRET`, over its URL,
//! stamp and body ([`Tagger`]); a copy whose tag fails is ignored. Another Worker of the same zone
//! can open a cache by this name and write to it, but cannot plant a key set, a revocation list
//! or an API-key verdict that this edge believes.

use std::cell::RefCell;
use std::rc::Rc;
use std::thread::LocalKey;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use worker::{Cache, Headers, Response};

use crate::config::EdgeConfig;
use crate::error::AppError;
use crate::proxy;

/// The cache's name: the edge's own, not the zone's default cache that other workers share.
pub const CACHE_NAME: &str = "gatehouse-edge";

/// The header carrying the fetch time (ms since the epoch) on a stored copy.
const FETCHED_AT_HEADER: &str = "x-gatehouse-fetched-at";

/// The header carrying, on a stored copy, the `max-age` the origin sent with it (its own
/// `Cache-Control` says how long the Cache API keeps it, which is longer).
const ORIGIN_MAX_AGE_HEADER: &str = "x-gatehouse-origin-max-age";

/// The header carrying a stored copy's tag (API-key verdicts carry it too).
pub const TAG_HEADER: &str = "x-gatehouse-tag";

/// Tags what the edge stores in the Cache API, and checks tags of what it reads back.
pub struct Tagger(Hmac<Sha256>);

impl Tagger {
    /// The tagger of an edge whose secret is `edge_secret`. Its key is HMAC-SHA256 of a label
    /// under the secret (a PRF, as RFC 5869's expand step uses it), so the tag key is not the
    /// secret the origin checks.
    pub fn new(edge_secret: &str) -> Self {
        let mut derive = Hmac::<Sha256>::new_from_slice(edge_secret.as_bytes())
            .expect("HMAC takes any key length");
        derive.update(b"gatehouse edge cache tag v1");
        let key = derive.finalize().into_bytes();
        Tagger(Hmac::new_from_slice(&key).expect("HMAC takes any key length"))
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        for part in parts {
            // Length-prefixed, so no two lists of parts tag alike.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The tag of `parts`, in hex.
    pub fn tag(&self, parts: &[&[u8]]) -> String {
        hex::encode(self.mac(parts).finalize().into_bytes())
    }

    /// Whether `tag` is the tag of `parts`, compared in constant time.
    pub fn verifies(&self, parts: &[&[u8]], tag: &str) -> bool {
        hex::decode(tag).is_ok_and(|tag| self.mac(parts).verify_slice(&tag).is_ok())
    }
}

/// A document the edge copies from the origin, and how long a copy is good for.
pub trait Document: Sized + 'static {
    /// What the logs call it: "the key set".
    const NAME: &'static str;
    /// Where the origin serves it.
    const PATH: &'static str;
    /// Whether the origin serves it only to the edge (with the edge secret).
    const EDGE_ONLY: bool;
    /// After a failed fetch, how long the held copy is used before the origin is asked again, so
    /// that an outage does not make every request wait for it.
    const RETRY_AFTER_FAILURE_MS: u64;

    /// This isolate's copy.
    fn slot() -> &'static LocalKey<RefCell<Option<Held<Self>>>>;
    /// The document in an origin answer's body; `None` when the body is not one.
    fn parse(body: &str) -> Option<Self>;
    /// How long a copy fetched with the origin's `Cache-Control: max-age` (if any) is fresh and
    /// usable.
    fn lifetime(max_age_secs: Option<u64>, config: &EdgeConfig) -> Lifetime;
    /// The error when the origin answers but not with the document, or cannot be reached and no
    /// usable copy is held. A timeout stays a timeout.
    fn unavailable() -> AppError;
}

/// How long a copy is good for, counted from when its fetch was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// Used without asking again.
    pub fresh_ms: u64,
    /// Used at all, should the origin be unreachable once it is no longer fresh.
    pub usable_ms: u64,
}

/// A copy of a document, with its times in ms since the epoch.
pub struct Held<D> {
    pub document: Rc<D>,
    pub fresh_until: u64,
    pub usable_until: u64,
}

impl<D> Clone for Held<D> {
    fn clone(&self) -> Self {
        Held {
            document: Rc::clone(&self.document),
            fresh_until: self.fresh_until,
            usable_until: self.usable_until,
        }
    }
}

impl<D> Held<D> {
    fn new(document: D, fetched_at: u64, lifetime: Lifetime) -> Self {
        Held {
            document: Rc::new(document),
            fresh_until: fetched_at.saturating_add(lifetime.fresh_ms),
            usable_until: fetched_at.saturating_add(lifetime.usable_ms),
        }
    }
}

/// The document, and whether it was fetched from the origin just now.
pub struct Current<D> {
    pub document: Rc<D>,
    pub just_fetched: bool,
}

/// A fresh copy from memory, else from the Cache API, else from the origin; while the origin
/// cannot be reached, the latest copy still usable, from memory or from the Cache API.
pub async fn current<D: Document>(
    config: &EdgeConfig,
    request_id: &str,
) -> Result<Current<D>, AppError> {
    let now = crate::now_millis();
    let held = D::slot().with_borrow(Clone::clone);
    if let Some(held) = &held
        && held.fresh_until > now
    {
        return Ok(Current {
            document: Rc::clone(&held.document),
            just_fetched: false,
        });
    }
    let cached = cached_copy::<D>(config).await;
    if let Some(cached) = &cached
        && cached.fresh_until > now
    {
        return Ok(Current {
            document: remember(cached.clone()),
            just_fetched: false,
        });
    }
    match fetch::<D>(config, request_id).await {
        Ok(document) => Ok(Current {
            document,
            just_fetched: true,
        }),
        Err(error) => {
            let stale = [held, cached]
                .into_iter()
                .flatten()
                .filter(|copy| copy.usable_until > now)
                .max_by_key(|copy| copy.usable_until);
            match stale {
                Some(mut stale) => {
                    stale.fresh_until = now + D::RETRY_AFTER_FAILURE_MS;
                    let document = remember(stale);
                    worker::console_warn!(
                        "request {request_id}: using a stale copy of {}; the origin is unavailable",
                        D::NAME
                    );
                    Ok(Current {
                        document,
                        just_fetched: false,
                    })
                }
                None => {
                    worker::console_error!(
                        "request {request_id}: no usable copy of {}; the origin is unavailable",
                        D::NAME
                    );
                    Err(error)
                }
            }
        }
    }
}

/// The Cache API's copy when it is fresh, remembered in this isolate: another isolate may have
/// fetched since this one did, and asking the cache costs the origin nothing.
pub async fn from_cache<D: Document>(config: &EdgeConfig, now: u64) -> Option<Rc<D>> {
    let held = cached_copy::<D>(config).await?;
    (held.fresh_until > now).then(|| remember(held))
}

/// The Cache API's copy, fresh or not, when its tag verifies.
async fn cached_copy<D: Document>(config: &EdgeConfig) -> Option<Held<D>> {
    let cache = Cache::open(CACHE_NAME.into()).await;
    let url = url::<D>(config);
    let mut response = cache.get(&url, false).await.ok()??;
    let headers = response.headers();
    let fetched_at = headers.get(FETCHED_AT_HEADER).ok()??;
    let tag = headers.get(TAG_HEADER).ok()??;
    let origin_max_age = headers.get(ORIGIN_MAX_AGE_HEADER).ok()?.unwrap_or_default();
    let body = response.text().await.ok()?;
    let parts = tagged(&url, &fetched_at, &origin_max_age, &body);
    if !config.cache_tags().verifies(&parts, &tag) {
        worker::console_warn!("a cached copy of {} has a bad tag: ignored", D::NAME);
        return None;
    }
    let document = D::parse(&body)?;
    let lifetime = D::lifetime(origin_max_age.parse().ok(), config);
    Some(Held::new(document, fetched_at.parse().ok()?, lifetime))
}

/// What a stored copy's tag covers: where it came from, when, how fresh the origin said it was,
/// and the document itself.
fn tagged<'a>(url: &'a str, fetched_at: &'a str, max_age: &'a str, body: &'a str) -> [&'a [u8]; 4] {
    [
        url.as_bytes(),
        fetched_at.as_bytes(),
        max_age.as_bytes(),
        body.as_bytes(),
    ]
}

/// Asks the origin, bypassing every cache, and keeps what it says in both.
pub async fn fetch<D: Document>(config: &EdgeConfig, request_id: &str) -> Result<Rc<D>, AppError> {
    // Freshness counts from the moment the request leaves: the answer cannot be newer than that.
    let fetched_at = crate::now_millis();
    let mut response = proxy::lookup(&url::<D>(config), &[], D::EDGE_ONLY, config, request_id)
        .await
        .map_err(|error| match error {
            AppError::OriginUnreachable => D::unavailable(),
            other => other,
        })?;
    if response.status_code() != 200 {
        worker::console_error!(
            "request {request_id}: origin answered {} for {}",
            response.status_code(),
            D::NAME
        );
        return Err(D::unavailable());
    }
    let max_age = max_age(&response);
    let body = proxy::within_deadline(response.text(), config)
        .await
        .ok_or(AppError::OriginTimeout)?
        .map_err(|_| D::unavailable())?;
    let document = D::parse(&body).ok_or_else(D::unavailable)?;
    worker::console_log!("request {request_id}: fetched {} from the origin", D::NAME);

    let lifetime = D::lifetime(max_age, config);
    if lifetime.fresh_ms > 0 {
        store::<D>(config, body, max_age, lifetime.usable_ms / 1000, fetched_at).await;
    }
    Ok(remember(Held::new(document, fetched_at, lifetime)))
}

fn remember<D: Document>(held: Held<D>) -> Rc<D> {
    let document = Rc::clone(&held.document);
    D::slot().with_borrow_mut(|slot| *slot = Some(held));
    document
}

fn url<D: Document>(config: &EdgeConfig) -> String {
    format!("{}{}", config.origin_url, D::PATH)
}

/// Stores `body` fetched at `fetched_at` (ms), kept for `keep_secs` (its usable life) and carrying
/// the origin's `max_age` so a reader computes the same freshness. A failed write only costs
/// another isolate a fetch, so it is not an error.
async fn store<D: Document>(
    config: &EdgeConfig,
    body: String,
    max_age: Option<u64>,
    keep_secs: u64,
    fetched_at: u64,
) {
    let url = url::<D>(config);
    let fetched_at = fetched_at.to_string();
    let max_age = max_age.map(|secs| secs.to_string()).unwrap_or_default();
    let tag = config
        .cache_tags()
        .tag(&tagged(&url, &fetched_at, &max_age, &body));
    let headers = Headers::new();
    let stamped = headers
        .set("cache-control", &format!("max-age={keep_secs}"))
        .and_then(|()| headers.set("content-type", "application/json"))
        .and_then(|()| headers.set(FETCHED_AT_HEADER, &fetched_at))
        .and_then(|()| headers.set(ORIGIN_MAX_AGE_HEADER, &max_age))
        .and_then(|()| headers.set(TAG_HEADER, &tag));
    if stamped.is_err() {
        return;
    }
    let copy = Response::builder()
        .with_headers(headers)
        .fixed(body.into_bytes());
    let cache = Cache::open(CACHE_NAME.into()).await;
    let _ = cache.put(url, copy).await;
}

/// The `max-age` of an origin answer.
fn max_age(response: &Response) -> Option<u64> {
    let cache_control = response.headers().get("cache-control").ok().flatten()?;
    parse_max_age(&cache_control)
}

/// The `max-age` directive of a `Cache-Control` value (RFC 9111 section 5.2.2.1), if present and
/// a number of seconds. Directive names are case-insensitive.
pub fn parse_max_age(cache_control: &str) -> Option<u64> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        value.trim().trim_matches('"').parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::parse_max_age;

    #[test]
    fn max_age_is_read_from_among_other_directives() {
        assert_eq!(parse_max_age("max-age=300"), Some(300));
        assert_eq!(
            parse_max_age("public, max-age=60, must-revalidate"),
            Some(60)
        );
        assert_eq!(parse_max_age("public,Max-Age=7"), Some(7));
        assert_eq!(parse_max_age("max-age=\"30\""), Some(30));
    }

    #[test]
    fn max_age_is_absent_when_missing_or_not_a_number_of_seconds() {
        assert_eq!(parse_max_age("no-store"), None);
        assert_eq!(parse_max_age(""), None);
        assert_eq!(parse_max_age("max-age=-1"), None);
        assert_eq!(parse_max_age("max-age=soon"), None);
        assert_eq!(parse_max_age("s-maxage=60"), None);
    }
}
