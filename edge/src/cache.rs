//! The edge's own Cache API cache (shared by the isolates of a data centre), holding copies of
//! origin documents stamped with when they were fetched, so that no layer of caching extends
//! another's freshness.

use worker::{Cache, Headers, Response};

/// The cache's name: the edge's own, not the zone's default cache that other workers share.
pub const CACHE_NAME: &str = "gatehouse-edge";

/// The header carrying the fetch time (ms since the epoch) on a stored copy.
const FETCHED_AT_HEADER: &str = "x-gatehouse-fetched-at";

/// Stores the JSON `body` fetched at `fetched_at` (ms) under `url` for `max_age_secs`. A failed
/// write only costs another isolate a fetch, so it is not an error.
pub async fn put_copy(url: String, body: String, max_age_secs: u64, fetched_at: u64) {
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
    let _ = Cache::open(CACHE_NAME.into()).await.put(url, copy).await;
}

/// The copy stored under `url`, with its fetch time (ms since the epoch).
pub async fn get_copy(url: String) -> Option<(Response, u64)> {
    let response = Cache::open(CACHE_NAME.into())
        .await
        .get(url, false)
        .await
        .ok()??;
    let fetched_at = response
        .headers()
        .get(FETCHED_AT_HEADER)
        .ok()??
        .parse()
        .ok()?;
    Some((response, fetched_at))
}
