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
//! The list also names signing keys revoked in an emergency (`gatehouse-origin key revoke`):
//! tokens they signed are refused here too, even while this isolate still holds a key set that
//! has the key in it.
//!
//! Why not Workers KV: a pull needs nothing but the origin, works the same under Miniflare, and
//! its bound (seconds) is tighter than KV's global propagation (about 60 s). A push into KV would
//! also need the origin to hold a Cloudflare API token and to retry failed pushes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::thread::LocalKey;

use gatehouse_shared::api::{ENDED_SESSIONS_HEADER, RevocationList, RevokedSession};
use gatehouse_shared::token::TokenError;
use uuid::Uuid;
use worker::Response;

use crate::cache::{self, Document, Held, Lifetime};
use crate::config::EdgeConfig;
use crate::error::AppError;

/// The origin's list: session id → Unix second after which its tokens are all expired anyway;
/// and the revoked signing keys.
struct Revoked {
    sessions: HashMap<Uuid, i64>,
    kids: Vec<String>,
}

impl Document for Revoked {
    const NAME: &'static str = "the revocation list";
    const PATH: &'static str = "/edge/revocations";
    const EDGE_ONLY: bool = true;
    const RETRY_AFTER_FAILURE_MS: u64 = 2_000;

    fn slot() -> &'static LocalKey<RefCell<Option<Held<Self>>>> {
        thread_local! {
            static HELD: RefCell<Option<Held<Revoked>>> = const { RefCell::new(None) };
        }
        &HELD
    }

    fn parse(body: &str) -> Option<Self> {
        let list: RevocationList = serde_json::from_str(body).ok()?;
        Some(Revoked {
            sessions: list
                .revoked
                .into_iter()
                .map(|entry| (entry.sid, entry.until))
                .collect(),
            kids: list.revoked_kids,
        })
    }

    /// The origin's max-age is not used: the refresh interval is the edge's own promise.
    fn lifetime(_: Option<u64>, config: &EdgeConfig) -> Lifetime {
        Lifetime {
            fresh_ms: config.revocation_refresh_secs * 1000,
            usable_ms: config.revocation_max_stale_secs * 1000,
        }
    }

    fn unavailable() -> AppError {
        AppError::RevocationsUnavailable
    }
}

thread_local! {
    /// Sessions this isolate saw end (from the origin's header), kept until their `until` even
    /// when a list fetched before the end replaces the held one.
    static LEARNT: RefCell<HashMap<Uuid, i64>> = RefCell::new(HashMap::new());
}

/// Refuses a token of session `sid` signed by key `kid` when the origin has ended that session or
/// revoked that key; `now` in Unix seconds.
pub async fn check(
    sid: Uuid,
    kid: &str,
    now: i64,
    config: &EdgeConfig,
    request_id: &str,
) -> Result<(), AppError> {
    let learnt = LEARNT.with_borrow(|learnt| learnt.get(&sid).copied());
    if learnt.is_some_and(|until| until >= now) {
        return Err(AppError::SessionEnded);
    }
    let list = cache::current::<Revoked>(config, request_id)
        .await?
        .document;
    if list.sessions.get(&sid).is_some_and(|until| *until >= now) {
        return Err(AppError::SessionEnded);
    }
    if list.kids.iter().any(|revoked| revoked == kid) {
        return Err(AppError::InvalidToken(TokenError::UnknownKeyId));
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
    let now = (crate::now_millis() / 1000) as i64;
    LEARNT.with_borrow_mut(|learnt| {
        learnt.retain(|_, until| *until >= now);
        for RevokedSession { sid, until } in RevokedSession::from_header(&value) {
            learnt.insert(sid, until);
        }
    });
    Ok(())
}
