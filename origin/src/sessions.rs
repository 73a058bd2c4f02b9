//! Sessions and their refresh tokens: creation, rotation with reuse detection, expiry and ending.
//!
//! A session begins at register or login with one refresh token. `POST /auth/refresh` spends the
//! token and hands out its successor (RFC 9700 section 4.14.2, refresh token rotation). The rule
//! for a token presented again after it was spent, which is what two browser tabs refreshing at
//! the same moment look like:
//!
//! - All refreshes of one session take the session's row lock first, so they run one at a time.
//! - A spent token is accepted again only while its successor is still unspent and only within
//!   `REFRESH_REUSE_WINDOW_SECS` (default 10) of being spent. The answer then carries the *same*
//!   successor (derived again from the server's key; see `gatehouse_shared::refresh`) and a new
//!   access token, so a race of any size leaves the session with exactly one live successor.
//! - Any other reuse (an older token, or the window passed) is treated as theft: the whole session
//!   ends (RFC 9700 section 4.14.2; OWASP ASVS 5.0 10.4.5) and every token of it stops working.
//!   Only tokens the server can prove it issued count: one whose MAC fails is refused and ends
//!   nothing, so a session id seen in an access token is not enough to end someone's session.
//! - Rotations are limited per session (`REFRESH_LIMIT_PER_SESSION` a minute, 429 beyond): a
//!   client looping on refresh costs one row update each, never storage, and not without bound.
//!   Answers under the reuse window are counted apart, against ten times that, so racing tabs
//!   never use up the rotation limit and replaying the previous token is bounded too.
//!
//! A session stores its live generation, not its tokens, so its storage is the same after one
//! refresh or a million.
//!
//! A session also ends by itself: after `SESSION_IDLE_TIMEOUT_SECS` without a refresh, and
//! `SESSION_MAX_LIFETIME_SECS` after it began whatever happens (OWASP ASVS 5.0 7.3.1, 7.3.2).
//! Access tokens never outlive their session's end: their `exp` is capped at it.
//!
//! Every timestamp comes from the application's [`Clock`](crate::Clock), never from `now()` in
//! SQL, so tests move time instead of sleeping.

use std::time::Duration;

use gatehouse_shared::api::RevokedSession;
use gatehouse_shared::assurance::Method;
use gatehouse_shared::refresh::{Presented, RefreshKey, RefreshToken};
use sqlx::{PgConnection, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{ApiError, Result};
use crate::extract::ClientMeta;

/// How long sessions last; from configuration.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// A session not refreshed for this long has ended.
    pub idle_timeout: Duration,
    /// A session this old has ended, however active.
    pub max_lifetime: Duration,
    /// How long after a refresh token is spent a racing request with it still gets its successor.
    pub reuse_window: Duration,
    /// Rotations a session may make per [`REFRESH_LIMIT_WINDOW`] (`REFRESH_LIMIT_PER_SESSION`).
    pub refresh_limit: u32,
}

impl SessionPolicy {
    /// When a session created at `created_at` and last used at `last_used_at` ends.
    pub fn expires_at(
        &self,
        created_at: OffsetDateTime,
        last_used_at: OffsetDateTime,
    ) -> OffsetDateTime {
        (last_used_at + self.idle_timeout).min(created_at + self.max_lifetime)
    }

    /// The oldest `created_at` and `last_used_at` a live session can have at `now`.
    pub fn live_bounds(&self, now: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
        (now - self.max_lifetime, now - self.idle_timeout)
    }
}

/// Why a session ended; stored in `sessions.end_reason` for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// `POST /auth/logout`.
    Logout,
    /// `POST /auth/logout?scope=all`.
    LogoutAll,
    /// `POST /auth/logout?scope=others`.
    LogoutOthers,
    /// `PUT /auth/password` ended the user's other sessions.
    PasswordChanged,
    /// A spent refresh token came back outside the reuse rule.
    RefreshTokenReused,
    /// `DELETE /auth/profile`.
    Deactivated,
    /// The idle timeout or the absolute lifetime passed.
    Expired,
    /// `DELETE /auth/sessions/{id}`.
    EndedByUser,
    /// `POST /auth/password/reset` ended every session of the account.
    PasswordReset,
    /// `POST /auth/email/confirm` ended every session but the one that asked for the change.
    EmailChanged,
    /// `POST /auth/email/undo` ended every session of the account.
    EmailChangeUndone,
    /// `DELETE /auth/mfa/totp` ended every other session of the account.
    FactorRemoved,
    /// The operator's `gatehouse-origin user mfa-reset` ended every session of the account.
    FactorsReset,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            EndReason::Logout => "logout",
            EndReason::LogoutAll => "logout_all",
            EndReason::LogoutOthers => "logout_others",
            EndReason::PasswordChanged => "password_changed",
            EndReason::RefreshTokenReused => "refresh_token_reused",
            EndReason::Deactivated => "deactivated",
            EndReason::Expired => "expired",
            EndReason::EndedByUser => "ended_by_user",
            EndReason::PasswordReset => "password_reset",
            EndReason::EmailChanged => "email_changed",
            EndReason::EmailChangeUndone => "email_change_undone",
            EndReason::FactorRemoved => "factor_removed",
            EndReason::FactorsReset => "factors_reset",
        }
    }
}

/// Which of a user's sessions to end.
#[derive(Debug, Clone, Copy)]
pub enum Which {
    /// This one.
    One(Uuid),
    /// All of them.
    All,
    /// All but this one.
    AllExcept(Uuid),
}

/// How a session was authenticated and when the user last proved who they are; its tokens
/// state both (`amr`, `acr`, `auth_time`, see `gatehouse_shared::assurance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authentication {
    /// The way of signing in.
    pub method: Method,
    /// The sign-in, or the last step-up.
    pub at: OffsetDateTime,
}

impl Authentication {
    /// The stored form: the method's name and the time. A name this build does not know (a
    /// newer release's, during a rollback) reads as a password sign-in, the weakest.
    fn stored(method: &str, at: OffsetDateTime) -> Self {
        Authentication {
            method: Method::parse(method).unwrap_or(Method::Password),
            at,
        }
    }
}

/// A session just begun or refreshed: what a token response needs.
pub struct Grant {
    /// The session id.
    pub session_id: Uuid,
    /// The refresh token to hand out.
    pub refresh_token: RefreshToken,
    /// When the session ends unless refreshed; access tokens expire no later.
    pub expires_at: OffsetDateTime,
    /// How the session was authenticated.
    pub authentication: Authentication,
}

/// The generation of a session's first refresh token; 0 marks a session still on the old format.
const FIRST_GENERATION: u64 = 1;

/// Length of the fixed window `REFRESH_LIMIT_PER_SESSION` counts rotations in.
pub const REFRESH_LIMIT_WINDOW: Duration = Duration::from_secs(60);

/// Begins a session for `user_id`, signed in by `method`, inside `tx`, with its first refresh
/// token, under `state`'s session policy and refresh-token key.
pub async fn begin(
    tx: &mut Transaction<'static, Postgres>,
    state: &crate::AppState,
    user_id: Uuid,
    meta: &ClientMeta,
    method: Method,
    now: OffsetDateTime,
) -> Result<Grant> {
    let session_id = Uuid::now_v7();
    sqlx::query!(
        "insert into sessions (id, user_id, created_at, last_used_at, user_agent, ip,
                               refresh_generation, auth_method, authenticated_at)
         values ($1, $2, $3, $3, $4, $5, $6, $7, $3)",
        session_id,
        user_id,
        now,
        meta.user_agent.as_deref(),
        meta.ip.map(|ip| ip.to_string()),
        FIRST_GENERATION as i64,
        method.as_str(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(Grant {
        session_id,
        refresh_token: RefreshToken::issue(&state.refresh_key, session_id, FIRST_GENERATION),
        expires_at: state.sessions.expires_at(now, now),
        authentication: Authentication { method, at: now },
    })
}

/// A session's authentication raised by a second factor (`POST /auth/mfa/step-up`): the live
/// session `session_id` of `user_id` is now at `method`'s level, authenticated at `now`. Its
/// refresh token is unchanged; tokens issued from now on, refreshed ones too, state the new level.
/// `None` when the session is no longer live.
pub async fn step_up(
    tx: &mut Transaction<'static, Postgres>,
    policy: &SessionPolicy,
    session_id: Uuid,
    user_id: Uuid,
    method: Method,
    now: OffsetDateTime,
) -> Result<Option<(Authentication, OffsetDateTime)>> {
    let (oldest_created, oldest_used) = policy.live_bounds(now);
    let row = sqlx::query!(
        "update sessions set auth_method = $3, authenticated_at = $4
         where id = $1 and user_id = $2 and revoked_at is null
           and created_at > $5 and last_used_at > $6
         returning created_at, last_used_at",
        session_id,
        user_id,
        method.as_str(),
        now,
        oldest_created,
        oldest_used,
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|row| {
        (
            Authentication { method, at: now },
            policy.expires_at(row.created_at, row.last_used_at),
        )
    }))
}

/// The session a refresh was granted on, with its user.
pub struct Refreshed {
    /// The new refresh token and the session's end.
    pub grant: Grant,
    /// The session's user.
    pub user_id: Uuid,
    /// The time the refresh took effect, read once the session's lock was held.
    pub now: OffsetDateTime,
}

struct LockedSession {
    user_id: Uuid,
    created_at: OffsetDateTime,
    last_used_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
    is_active: bool,
    refresh_generation: i64,
    refresh_rotated_at: Option<OffsetDateTime>,
    refresh_window_start: Option<OffsetDateTime>,
    refresh_window_count: i32,
    refresh_window_replays: i32,
    auth_method: String,
    authenticated_at: OffsetDateTime,
}

/// What a presented token says of itself before the session's lock is taken.
enum Claim {
    /// A token of the current format with this generation (its MAC already verified).
    Generation(u64),
    /// A token of the old format, found as this row of `refresh_tokens`.
    LegacyRow(i64),
}

/// Which token of its session a presented one is, once the server has vouched for it.
#[derive(Debug, Clone, Copy)]
enum Position {
    /// A token of the current format with this generation.
    Generation(u64),
    /// A token of the old format, found in `refresh_tokens` (`spent_at` set once rotated).
    Legacy {
        id: i64,
        spent_at: Option<OffsetDateTime>,
    },
}

/// What the rule in the module docs makes of a presented token.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The live token: spend it, hand out the next generation.
    Rotate,
    /// The token just before the live one, within the reuse window: hand out the live one again.
    Successor,
    /// A spent token outside the rule: theft, the session ends.
    Reused,
    /// A generation the session never reached: not a token of this session.
    Unknown,
}

impl Position {
    fn judge(
        self,
        live: u64,
        rotated_at: Option<OffsetDateTime>,
        window: Duration,
        now: OffsetDateTime,
    ) -> Verdict {
        let in_window = |at: OffsetDateTime| now - at <= window;
        match self {
            Position::Generation(generation) if generation == live => Verdict::Rotate,
            // The live generation is still unspent (it would be higher otherwise), so a race of
            // any size ends with exactly one live token.
            Position::Generation(generation)
                if generation + 1 == live && rotated_at.is_some_and(in_window) =>
            {
                Verdict::Successor
            }
            Position::Generation(generation) if (FIRST_GENERATION..live).contains(&generation) => {
                Verdict::Reused
            }
            Position::Generation(_) => Verdict::Unknown,
            Position::Legacy { spent_at: None, .. } if live == 0 => Verdict::Rotate,
            // The old-format token whose successor is the session's first generation.
            Position::Legacy {
                spent_at: Some(spent_at),
                ..
            } if live == FIRST_GENERATION
                && rotated_at == Some(spent_at)
                && in_window(spent_at) =>
            {
                Verdict::Successor
            }
            Position::Legacy { .. } => Verdict::Reused,
        }
    }
}

/// Exchanges `presented` for its successor under the rule in the module docs. `token_validity`
/// is how long an access token of the session may still pass validation after it ends (see
/// [`crate::tokens::Tokens::longest_validity`]), reported with a reuse so the edge can forget it.
pub async fn refresh(
    db: &crate::db::Database,
    memory: &crate::memory::Memory,
    policy: &SessionPolicy,
    key: &RefreshKey,
    presented: &Presented,
    clock: &crate::Clock,
    token_validity: Duration,
) -> Result<Refreshed> {
    // A token the key did not make is refused before any database work, and ends nothing.
    if matches!(presented, Presented::Issued(token) if !token.is_issued_under(key)) {
        return Err(ApiError::InvalidRefreshToken);
    }
    let mut tx = db.begin().await?;
    // An old-format token names its session only through its row.
    let (session_id, claim) = match presented {
        Presented::Issued(token) => (token.session_id(), Claim::Generation(token.generation())),
        Presented::Legacy(token) => {
            let hash = token.lookup_hash();
            let row = sqlx::query!(
                "select id, session_id from refresh_tokens where token_hash = $1",
                hash.as_slice(),
            )
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(ApiError::InvalidRefreshToken)?;
            (row.session_id, Claim::LegacyRow(row.id))
        }
    };

    // The lock that serializes every refresh of this session. Rows read after it are current:
    // each statement in a read-committed transaction sees what committed before it began.
    let session = sqlx::query_as!(
        LockedSession,
        r#"select s.user_id, s.created_at, s.last_used_at, s.revoked_at, u.is_active,
                s.refresh_generation, s.refresh_rotated_at, s.refresh_window_start,
                s.refresh_window_count, s.refresh_window_replays, s.auth_method,
                coalesce(s.authenticated_at, s.created_at) as "authenticated_at!"
         from sessions s join users u on u.id = s.user_id
         where s.id = $1 for update of s"#,
        session_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    // Purged, or its user deleted: as unknown as a token can be.
    let session = session.ok_or(ApiError::InvalidRefreshToken)?;
    if session.revoked_at.is_some() || !session.is_active {
        return Err(ApiError::InvalidRefreshToken);
    }
    // Read after the lock, so that refreshes queued on one session record their times in the
    // order they took effect.
    let now = clock.now();
    if policy.expires_at(session.created_at, session.last_used_at) <= now {
        end_locked(&mut tx, memory, session_id, EndReason::Expired, now).await?;
        tx.commit().await?;
        return Err(ApiError::SessionExpired);
    }

    // An old-format token's state is read only now that the lock is held: a racing refresh with
    // the same token may have spent it while this one queued.
    let position = match claim {
        Claim::Generation(generation) => Position::Generation(generation),
        Claim::LegacyRow(id) => {
            let spent_at =
                sqlx::query_scalar!("select spent_at from refresh_tokens where id = $1", id,)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(ApiError::InvalidRefreshToken)?;
            Position::Legacy { id, spent_at }
        }
    };
    let live = u64::try_from(session.refresh_generation).unwrap_or_default();
    let verdict = position.judge(live, session.refresh_rotated_at, policy.reuse_window, now);
    let generation = match verdict {
        Verdict::Rotate => {
            rotate(&mut tx, policy, session_id, &session, position, now).await?;
            live + 1
        }
        Verdict::Successor => {
            replay(&mut tx, policy, session_id, &session, now).await?;
            live
        }
        Verdict::Reused => {
            let ended_at = end_locked(
                &mut tx,
                memory,
                session_id,
                EndReason::RefreshTokenReused,
                now,
            )
            .await?;
            tx.commit().await?;
            tracing::warn!(%session_id, "spent refresh token presented again: session ended");
            return Err(ApiError::RefreshTokenReused(RevokedSession {
                sid: session_id,
                until: (ended_at + token_validity).unix_timestamp(),
            }));
        }
        Verdict::Unknown => return Err(ApiError::InvalidRefreshToken),
    };
    tx.commit().await?;
    Ok(Refreshed {
        grant: Grant {
            session_id,
            refresh_token: RefreshToken::issue(key, session_id, generation),
            expires_at: policy.expires_at(session.created_at, now),
            authentication: Authentication::stored(&session.auth_method, session.authenticated_at),
        },
        user_id: session.user_id,
        now,
    })
}

/// Answers under the reuse window allowed per window for each rotation the limit allows: racing
/// tabs are a handful, while a client replaying its previous token in a loop would cost a row
/// update and a signature per call without end.
const REPLAYS_PER_ROTATION: u32 = 10;

/// The locked session's counts in the current `REFRESH_LIMIT_PER_SESSION` window: (start,
/// rotations, replays); a window that has passed counts from `now`, empty.
fn window(session: &LockedSession, now: OffsetDateTime) -> (OffsetDateTime, u32, u32) {
    match session.refresh_window_start {
        Some(start) if now - start < REFRESH_LIMIT_WINDOW => (
            start,
            u32::try_from(session.refresh_window_count).unwrap_or_default(),
            u32::try_from(session.refresh_window_replays).unwrap_or_default(),
        ),
        _ => (now, 0, 0),
    }
}

/// Spends the live token of the locked `session`: counts the rotation against
/// `REFRESH_LIMIT_PER_SESSION` and moves the session to the next generation.
async fn rotate(
    tx: &mut Transaction<'static, Postgres>,
    policy: &SessionPolicy,
    session_id: Uuid,
    session: &LockedSession,
    position: Position,
    now: OffsetDateTime,
) -> Result<()> {
    let (start, rotations, replays) = window(session, now);
    if rotations >= policy.refresh_limit {
        return Err(ApiError::limited_until(start + REFRESH_LIMIT_WINDOW, now));
    }
    sqlx::query!(
        "update sessions set refresh_generation = refresh_generation + 1,
                refresh_rotated_at = $2, last_used_at = $2, refresh_window_start = $3,
                refresh_window_count = $4, refresh_window_replays = $5
         where id = $1",
        session_id,
        now,
        start,
        i32::try_from(rotations + 1).unwrap_or(i32::MAX),
        i32::try_from(replays).unwrap_or(i32::MAX),
    )
    .execute(&mut **tx)
    .await?;
    if let Position::Legacy { id, .. } = position {
        // Kept, spent, so that the old token is still recognised if presented again.
        sqlx::query!(
            "update refresh_tokens set spent_at = $2, successor_sealed = null where id = $1",
            id,
            now,
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Answers a spent token again under the reuse window: counted apart from rotations, so racing
/// tabs never use up the rotation limit, yet against a ceiling of [`REPLAYS_PER_ROTATION`] times
/// it.
async fn replay(
    tx: &mut Transaction<'static, Postgres>,
    policy: &SessionPolicy,
    session_id: Uuid,
    session: &LockedSession,
    now: OffsetDateTime,
) -> Result<()> {
    let (start, rotations, replays) = window(session, now);
    if replays >= policy.refresh_limit.saturating_mul(REPLAYS_PER_ROTATION) {
        return Err(ApiError::limited_until(start + REFRESH_LIMIT_WINDOW, now));
    }
    sqlx::query!(
        "update sessions set last_used_at = $2, refresh_window_start = $3,
                refresh_window_count = $4, refresh_window_replays = $5
         where id = $1",
        session_id,
        now,
        start,
        i32::try_from(rotations).unwrap_or(i32::MAX),
        i32::try_from(replays + 1).unwrap_or(i32::MAX),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends the locked, live session `session_id`; returns its recorded end (see [`Ended`]).
async fn end_locked(
    tx: &mut Transaction<'static, Postgres>,
    memory: &crate::memory::Memory,
    session_id: Uuid,
    reason: EndReason,
    now: OffsetDateTime,
) -> Result<OffsetDateTime> {
    let ended_at = sqlx::query_scalar!(
        r#"update sessions set revoked_at = greatest($2, last_used_at), end_reason = $3
           where id = $1 and revoked_at is null
           returning revoked_at as "revoked_at!""#,
        session_id,
        now,
        reason.as_str(),
    )
    .fetch_optional(&mut **tx)
    .await?;
    memory.ending([session_id]);
    sqlx::query!(
        "delete from refresh_tokens where session_id = $1",
        session_id,
    )
    .execute(&mut **tx)
    .await?;
    Ok(ended_at.unwrap_or(now))
}

/// A session just ended, and the time recorded as its end: never before the last access token of
/// it was issued, so "end + the longest validity" covers every token it has.
pub struct Ended {
    /// The session.
    pub id: Uuid,
    /// Its recorded end.
    pub at: OffsetDateTime,
}

/// Ends `which` of `user_id`'s live sessions (not revoked, not expired under the session policy) and
/// deletes their refresh tokens; returns those it ended. The access tokens of an ended session
/// are refused by the origin at once and by the edge once it learns (see [`revoked_since`] and
/// [`ended_header`]).
///
/// `now` may have been read before a refresh of one of these sessions took its lock and issued a
/// token; the recorded end is then the refresh's time (`greatest(now, last_used_at)`), so the
/// revocation the edge hears of outlives that token too.
pub async fn end(
    connection: &mut PgConnection,
    state: &crate::AppState,
    user_id: Uuid,
    which: Which,
    reason: EndReason,
    now: OffsetDateTime,
) -> Result<Vec<Ended>> {
    let (created_after, used_after) = state.sessions.live_bounds(now);
    let (only, except) = match which {
        Which::One(id) => (Some(id), None),
        Which::All => (None, None),
        Which::AllExcept(id) => (None, Some(id)),
    };
    let ended = sqlx::query_as!(
        Ended,
        r#"with ended as (
           update sessions set revoked_at = greatest($4, last_used_at), end_reason = $5
           where user_id = $1 and revoked_at is null
             and created_at > $6 and last_used_at > $7
             and ($2::uuid is null or id = $2) and ($3::uuid is null or id <> $3)
           returning id, revoked_at
         ), spent as (
           delete from refresh_tokens where session_id in (select id from ended)
         )
         select id as "id!", revoked_at as "at!" from ended"#,
        user_id,
        only,
        except,
        now,
        reason.as_str(),
        created_after,
        used_after,
    )
    .fetch_all(&mut *connection)
    .await?;
    // Callers end sessions inside a transaction, so this runs before the commit and this
    // instance refuses them from the moment it lands.
    state.memory.ending(ended.iter().map(|session| session.id));
    Ok(ended)
}

/// The end of the session `session_id` of `user_id` as of `now` under `policy` (its idle
/// timeout or lifetime, whichever is first) if it is live: not ended, not expired, its account
/// active, and the key `kid` that signed the token not revoked (see [`crate::signing_keys`]).
/// `None` otherwise. The signature of a token proves who issued it; only this tells whether the
/// session was ended, the account deactivated or the key revoked since.
pub async fn live_until(
    connection: &mut PgConnection,
    policy: &SessionPolicy,
    session_id: Uuid,
    user_id: Uuid,
    kid: &str,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>> {
    let (created_after, used_after) = policy.live_bounds(now);
    let live = sqlx::query!(
        r#"select s.created_at, s.last_used_at from sessions s join users u on u.id = s.user_id
            where s.id = $1 and s.user_id = $2 and s.revoked_at is null and u.is_active
              and s.created_at > $3 and s.last_used_at > $4
              and not exists (select 1 from revoked_signing_keys k where k.kid = $5)"#,
        session_id,
        user_id,
        created_after,
        used_after,
        kid,
    )
    .fetch_optional(connection)
    .await?;
    Ok(live.map(|session| policy.expires_at(session.created_at, session.last_used_at)))
}

/// One live session as `GET /auth/sessions` lists it.
pub struct LiveSession {
    /// The session id.
    pub id: Uuid,
    /// When it began.
    pub created_at: OffsetDateTime,
    /// When it was last used.
    pub last_used_at: OffsetDateTime,
    /// The user agent that began it.
    pub user_agent: Option<String>,
    /// The address that began it.
    pub ip: Option<String>,
}

/// The live sessions of `user_id` at `now`, newest first.
pub async fn list_live(
    connection: &mut PgConnection,
    policy: &SessionPolicy,
    user_id: Uuid,
    now: OffsetDateTime,
) -> Result<Vec<LiveSession>> {
    let (created_after, used_after) = policy.live_bounds(now);
    Ok(sqlx::query_as!(
        LiveSession,
        "select id, created_at, last_used_at, user_agent, ip from sessions
         where user_id = $1 and revoked_at is null and created_at > $2 and last_used_at > $3
         order by created_at desc",
        user_id,
        created_after,
        used_after,
    )
    .fetch_all(connection)
    .await?)
}

/// `ended` as the edge should hear of them (the ended-sessions header): each with the time after
/// which its tokens are moot, its end plus `token_validity`.
pub fn ended_header(ended: &[Ended], token_validity: Duration) -> String {
    let entries: Vec<RevokedSession> = ended
        .iter()
        .map(|ended| RevokedSession {
            sid: ended.id,
            until: (ended.at + token_validity).unix_timestamp(),
        })
        .collect();
    RevokedSession::to_header(&entries)
}

/// Sessions ended after `since`, each with the time after which no token of it can validate:
/// its end plus the access-token lifetime plus the leeway.
pub async fn revoked_since(
    connection: &mut PgConnection,
    since: OffsetDateTime,
    token_lifetime: Duration,
) -> Result<Vec<RevokedSession>> {
    let rows = sqlx::query!(
        r#"select id, revoked_at as "revoked_at!" from sessions
           where revoked_at > $1 order by revoked_at"#,
        since,
    )
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| RevokedSession {
            sid: row.id,
            until: (row.revoked_at + token_lifetime).unix_timestamp(),
        })
        .collect())
}

/// Deletes sessions (their refresh tokens go with them) that ended before `ended_before`, by
/// being ended or by expiring under `policy`, and wipes seals the reuse rule can no longer accept
/// at `now` (only tokens of the old format, written before generations, have them). Returns how
/// many sessions and seals went.
pub async fn purge(
    connection: &mut PgConnection,
    policy: &SessionPolicy,
    ended_before: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<(u64, u64)> {
    // An unended session expired at the earlier of its idle and absolute limits.
    let sessions = sqlx::query!(
        "delete from sessions
         where coalesce(revoked_at < $1, last_used_at < $2 or created_at < $3)",
        ended_before,
        ended_before - policy.idle_timeout,
        ended_before - policy.max_lifetime,
    )
    .execute(&mut *connection)
    .await?
    .rows_affected();
    let seals = sqlx::query!(
        "update refresh_tokens set successor_sealed = null
         where successor_sealed is not null and spent_at < $1",
        now - policy.reuse_window,
    )
    .execute(&mut *connection)
    .await?
    .rows_affected();
    Ok((sessions, seals))
}
