//! Sessions the origin has ended, known at the edge, so their access tokens are refused here too.
//!
//! The origin publishes every session ended recently enough that one of its access tokens may
//! still be unexpired (`GET /edge/revocations`, behind the edge secret), whatever ended it and
//! whichever way the request came: logout, password change, `DELETE /auth/sessions/{id}`,
//! deactivation, refresh-token reuse. Each entry carries the time after which it is moot, so the
//! list stays small (sessions ended in the last `ACCESS_TOKEN_TTL_SECS` plus leeway) and every
//! entry expires by itself.
//!
//! The edge keeps the list in isolate memory and in the Cache API (shared by a data centre's
//! isolates) for `REVOCATION_REFRESH_SECS`, counted from when the fetch was sent, then asks again:
//! **a session ended anywhere is refused at every edge within `REVOCATION_REFRESH_SECS`**. When
//! the ending request itself passes through the edge, the origin names the sessions it ended in
//! the `X-Gatehouse-Ended-Sessions` response header; the isolate refuses them from then on, and
//! the header is removed before the response leaves. If the origin cannot be reached, the last
//! list is used for at most `REVOCATION_MAX_STALE_SECS`; after that the edge answers 503 rather
//! than vouch for tokens it can no longer check.
//!
//! Why not Workers KV: a pull needs nothing but the origin, works the same under Miniflare, and
//! its bound (seconds) is tighter than KV's global propagation (about 60 s). A push into KV would
//! also need the origin to hold a Cloudflare API token and to retry failed pushes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use gatehouse_shared::api::{
    EDGE_SECRET_HEADER, ENDED_SESSIONS_HEADER, RevocationList, RevokedSession,
};
use uuid::Uuid;
use worker::{Date, Headers, Method, Request, RequestInit, Response};

use crate::cache;
use crate::config::EdgeConfig;
use crate::error::AppError;
use crate::proxy;

/// After a failed fetch, how long the held list is used before the origin is asked again, so an
/// outage does not make every verification wait for it.
const RETRY_AFTER_FAILURE_MS: u64 = 2_000;

#[derive(Default)]
struct Held {
    /// Session id → Unix second after which its tokens are all expired anyway.
    revoked: HashMap<Uuid, i64>,
    /// When the fetch of this list was sent (ms since the epoch).
    fetched_at: u64,
    /// Until when (ms) the list is used without asking again.
    fresh_until: u64,
}

thread_local! {
    static HELD: RefCell<Option<Rc<Held>>> = const { RefCell::new(None) };
    /// Sessions this isolate saw end (from the origin's header), kept until their `until` even
    /// when a list fetched before the end replaces the held one.
    static LEARNT: RefCell<HashMap<Uuid, i64>> = RefCell::new(HashMap::new());
}

/// Refuses `sid` when the origin has ended that session; `now` in Unix seconds.
pub async fn check(
    sid: Uuid,
    now: i64,
    config: &EdgeConfig,
    request_id: &str,
) -> Result<(), AppError> {
    let learnt = LEARNT.with_borrow(|learnt| learnt.get(&sid).copied());
    if learnt.is_some_and(|until| until >= now) {
        return Err(AppError::SessionEnded);
    }
    let held = current(config, request_id).await?;
    if held.revoked.get(&sid).is_some_and(|until| *until >= now) {
        return Err(AppError::SessionEnded);
    }
    Ok(())
}

/// Takes the origin's ended-sessions header off `response` and refuses those sessions in this
/// isolate from now on.
pub fn learn_from(response: &mut Response) -> Result<(), AppError> {
    let headers = response.headers_mut();
    let Some(value) = headers.get(ENDED_SESSIONS_HEADER)? else {
        return Ok(());
    };
    headers.delete(ENDED_SESSIONS_HEADER)?;
    let now = (Date::now().as_millis() / 1000) as i64;
    LEARNT.with_borrow_mut(|learnt| {
        learnt.retain(|_, until| *until >= now);
        for RevokedSession { sid, until } in RevokedSession::from_header(&value) {
            learnt.insert(sid, until);
        }
    });
    Ok(())
}

/// A fresh list from memory, else from the Cache API, else from the origin; the held list while
/// the origin is unreachable, up to `REVOCATION_MAX_STALE_SECS` old.
async fn current(config: &EdgeConfig, request_id: &str) -> Result<Rc<Held>, AppError> {
    let now = Date::now().as_millis();
    let held = HELD.with_borrow(Clone::clone);
    if let Some(held) = &held
        && held.fresh_until > now
    {
        return Ok(Rc::clone(held));
    }
    if let Some(cached) = from_cache(config, now).await {
        return Ok(remember(cached));
    }
    match fetch_from_origin(config, request_id).await {
        Ok(fetched) => Ok(remember(fetched)),
        Err(error) => {
            let max_stale = config.revocation_max_stale_secs * 1000;
            match held.filter(|held| now.saturating_sub(held.fetched_at) <= max_stale) {
                Some(stale) => {
                    worker::console_warn!(
                        "request {request_id}: using a stale revocation list; the origin is unavailable"
                    );
                    Ok(remember(Held {
                        revoked: stale.revoked.clone(),
                        fetched_at: stale.fetched_at,
                        fresh_until: now + RETRY_AFTER_FAILURE_MS,
                    }))
                }
                None => {
                    worker::console_error!(
                        "request {request_id}: no usable revocation list; refusing to vouch for tokens"
                    );
                    Err(match error {
                        AppError::OriginTimeout => AppError::OriginTimeout,
                        _ => AppError::RevocationsUnavailable,
                    })
                }
            }
        }
    }
}

fn remember(held: Held) -> Rc<Held> {
    let held = Rc::new(held);
    HELD.with_borrow_mut(|slot| *slot = Some(Rc::clone(&held)));
    held
}

fn list_url(config: &EdgeConfig) -> String {
    format!("{}/edge/revocations", config.origin_url)
}

fn parse(list: RevocationList, fetched_at: u64, config: &EdgeConfig) -> Held {
    Held {
        revoked: list
            .revoked
            .into_iter()
            .map(|entry| (entry.sid, entry.until))
            .collect(),
        fetched_at,
        fresh_until: fetched_at + config.revocation_refresh_secs * 1000,
    }
}

/// The Cache API's copy, when it is younger than the refresh interval.
async fn from_cache(config: &EdgeConfig, now: u64) -> Option<Held> {
    let (mut response, fetched_at) = cache::get_copy(list_url(config)).await?;
    if fetched_at + config.revocation_refresh_secs * 1000 <= now {
        return None;
    }
    let list: RevocationList = response.json().await.ok()?;
    Some(parse(list, fetched_at, config))
}

/// Asks the origin, with the edge secret, and stores the answer in the Cache API.
async fn fetch_from_origin(config: &EdgeConfig, request_id: &str) -> Result<Held, AppError> {
    // Freshness counts from the moment the request leaves: the list cannot be newer than that.
    let fetched_at = Date::now().as_millis();
    let headers = Headers::new();
    headers.set(EDGE_SECRET_HEADER, &config.edge_secret)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let request = Request::new_with_init(&list_url(config), &init)?;
    let mut response = proxy::send(request, config, request_id).await?;
    if response.status_code() != 200 {
        worker::console_error!(
            "request {request_id}: origin answered {} for the revocation list",
            response.status_code()
        );
        return Err(AppError::RevocationsUnavailable);
    }
    let body = proxy::within_deadline(response.text(), config)
        .await
        .ok_or(AppError::OriginTimeout)?
        .map_err(|_| AppError::RevocationsUnavailable)?;
    let list: RevocationList =
        serde_json::from_str(&body).map_err(|_| AppError::RevocationsUnavailable)?;

    if config.revocation_refresh_secs > 0 {
        cache::put_copy(
            list_url(config),
            body,
            config.revocation_refresh_secs,
            fetched_at,
        )
        .await;
    }
    Ok(parse(list, fetched_at, config))
}
