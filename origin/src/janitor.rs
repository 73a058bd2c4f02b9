//! Periodic deletion of rows nothing needs any more, so tables do not grow without bound:
//! brute-force counters whose window has passed, sessions (with their refresh tokens) that ended
//! more than `RETENTION` ago, sealed refresh-token successors past the reuse window, expired link
//! tokens, finished mail, expired second steps of logins; and erasure of accounts deactivated `ACCOUNT_ERASE_AFTER_SECS` ago or
//! never verified within `UNVERIFIED_ACCOUNT_TTL_SECS`.

use std::time::Duration;

use time::OffsetDateTime;

use crate::AppState;
use crate::error::Result;
use crate::mail::outbox;
use crate::sessions::{EndReason, Which};
use crate::{links, throttle, users};

/// How long an ended session stays listed in the database for audit, after its end.
pub const RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// How often [`run`] purges.
const INTERVAL: Duration = Duration::from_secs(300);

/// What one purge deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Brute-force counters.
    pub counters: u64,
    /// Sessions (their refresh tokens go with them).
    pub sessions: u64,
    /// Sealed successors past the reuse window (see `crate::sessions`).
    pub seals: u64,
    /// Accounts erased: deactivated long enough, or never verified.
    pub accounts: u64,
    /// Link tokens expired for a day.
    pub links: u64,
    /// Outbox rows sent or discarded a day ago.
    pub mails: u64,
    /// Second steps of logins expired for a day, and passkey ceremonies expired.
    pub mfa_challenges: u64,
}

/// Deletes what has expired at `now`.
pub async fn purge(state: &AppState, now: OffsetDateTime) -> Result<Purged> {
    let mut connection = state.db.acquire().await?;
    let counters = throttle::purge(&mut connection, &state.login_limits, now).await?;
    let (sessions, seals) =
        crate::sessions::purge(&mut connection, &state.sessions, now - RETENTION, now).await?;
    // Unverified accounts are erased only while mail can verify them, in two steps: their
    // sessions end first, and the rows go once every access token of theirs has expired, so the
    // edge, whose revocation list is built from sessions, never vouches for a token of an erased
    // account.
    let unverified_before = match state.mail {
        Some(_) => {
            let mut tx = sqlx::Connection::begin(&mut *connection).await?;
            let registered_before = now - state.accounts.unverified_ttl;
            for id in users::deactivate_unverified(&mut tx, registered_before, now).await? {
                let (all, reason) = (Which::All, EndReason::Deactivated);
                crate::sessions::end(&mut tx, state, id, all, reason, now).await?;
            }
            tx.commit().await?;
            Some(now - state.tokens.longest_validity())
        }
        None => None,
    };
    let deactivated_before = now - state.accounts.erase_after;
    let accounts = users::purge(&mut connection, deactivated_before, unverified_before).await?;
    let links = links::purge(&mut connection, now).await?;
    let mails = outbox::purge(&mut connection, now).await?;
    let mfa_challenges = crate::mfa::purge(&mut connection, now).await?
        + crate::passkeys::purge(&mut connection, now).await?;
    Ok(Purged {
        counters,
        sessions,
        seals,
        accounts,
        links,
        mails,
        mfa_challenges,
    })
}

/// Purges every few minutes, for as long as the process runs. Failures are logged and retried
/// at the next tick: a purge is housekeeping, never urgent.
pub async fn run(state: AppState) {
    let mut ticks = tokio::time::interval(INTERVAL);
    loop {
        ticks.tick().await;
        match purge(&state, state.clock.now()).await {
            Ok(purged) => tracing::debug!(?purged, "purged expired rows"),
            Err(error) => tracing::warn!(%error, "purge postponed"),
        }
    }
}
