//! The edge's copies of origin documents (the key set, the revocation list), kept by one sequence
//! written once for both: this isolate's memory, then the edge's Cache API cache (shared by the
//! isolates of a data centre), then the origin within `ORIGIN_TIMEOUT_MS`, and, while the origin
//! cannot be reached, the last copy held, for as long as the document allows.
//!
//! Every copy is stamped with when its fetch was sent, and its freshness counts from then in every
//! layer, so that no layer of caching extends another's.

use std::cell::RefCell;
use std::rc::Rc;
use std::thread::LocalKey;

use gatehouse_shared::api::EDGE_SECRET_HEADER;
use worker::{Cache, Date, Headers, Method, Request, RequestInit, Response};

use crate::config::EdgeConfig;
use crate::error::AppError;
use crate::proxy;

/// The cache's name: the edge's own, not the zone's default cache that other workers share.
pub const CACHE_NAME: &str = "gatehouse-edge";

/// The header carrying the fetch time (ms since the epoch) on a stored copy.
const FETCHED_AT_HEADER: &str = "x-gatehouse-fetched-at";

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
/// cannot be reached, the copy held in memory until it is no longer usable.
pub async fn current<D: Document>(
    config: &EdgeConfig,
    request_id: &str,
) -> Result<Current<D>, AppError> {
    let now = Date::now().as_millis();
    let held = D::slot().with_borrow(Clone::clone);
    if let Some(held) = &held
        && held.fresh_until > now
    {
        return Ok(Current {
            document: Rc::clone(&held.document),
            just_fetched: false,
        });
    }
    if let Some(cached) = from_cache::<D>(config, now).await {
        return Ok(Current {
            document: cached,
            just_fetched: false,
        });
    }
    match fetch::<D>(config, request_id).await {
        Ok(document) => Ok(Current {
            document,
            just_fetched: true,
        }),
        Err(error) => match held.filter(|held| held.usable_until > now) {
            Some(mut stale) => {
                stale.fresh_until = now + D::RETRY_AFTER_FAILURE_MS;
                let document = Rc::clone(&stale.document);
                D::slot().with_borrow_mut(|slot| *slot = Some(stale));
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
        },
    }
}

/// The Cache API's copy when it is fresh, remembered in this isolate: another isolate may have
/// fetched since this one did, and asking the cache costs the origin nothing.
pub async fn from_cache<D: Document>(config: &EdgeConfig, now: u64) -> Option<Rc<D>> {
    let cache = Cache::open(CACHE_NAME.into()).await;
    let mut response = cache.get(url::<D>(config), false).await.ok()??;
    let fetched_at: u64 = response
        .headers()
        .get(FETCHED_AT_HEADER)
        .ok()??
        .parse()
        .ok()?;
    let lifetime = D::lifetime(max_age(&response), config);
    let document = D::parse(&response.text().await.ok()?)?;
    let held = Held::new(document, fetched_at, lifetime);
    (held.fresh_until > now).then(|| remember(held))
}

/// Asks the origin, bypassing every cache, and keeps what it says in both.
pub async fn fetch<D: Document>(config: &EdgeConfig, request_id: &str) -> Result<Rc<D>, AppError> {
    // Freshness counts from the moment the request leaves: the answer cannot be newer than that.
    let fetched_at = Date::now().as_millis();
    let headers = Headers::new();
    if D::EDGE_ONLY {
        headers.set(EDGE_SECRET_HEADER, &config.edge_secret)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let request = Request::new_with_init(&url::<D>(config), &init)?;
    let mut response =
        proxy::send(request, config, request_id)
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
    store::<D>(config, body, lifetime.fresh_ms / 1000, fetched_at).await;
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

/// Stores `body` fetched at `fetched_at` (ms) for `max_age_secs`. A failed write only costs
/// another isolate a fetch, so it is not an error; a copy fresh for no time is not stored.
async fn store<D: Document>(config: &EdgeConfig, body: String, max_age_secs: u64, fetched_at: u64) {
    if max_age_secs == 0 {
        return;
    }
    let headers = Headers::new();
    let stamped = headers
        .set("cache-control", &format!("max-age={max_age_secs}"))
        .and_then(|()| headers.set("content-type", "application/json"))
        .and_then(|()| headers.set(FETCHED_AT_HEADER, &fetched_at.to_string()));
    if stamped.is_err() {
        return;
    }
    let copy = Response::builder()
        .with_headers(headers)
        .fixed(body.into_bytes());
    let cache = Cache::open(CACHE_NAME.into()).await;
    let _ = cache.put(url::<D>(config), copy).await;
}

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
