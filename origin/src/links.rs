//! Emailed-link tokens: issued for one purpose, one account and one address, redeemed once. This
//! module owns the `link_tokens` table; the token format is [`gatehouse_shared::link`].
//!
//! A presented token is refused with a code of its own, never an access-token code: 400
//! `link_token_invalid` (unknown, voided, or for another purpose), 410 `link_token_expired`,
//! 409 `link_token_used`.

use gatehouse_shared::link::LinkToken;
use rand_core::OsRng;
use sqlx::PgConnection;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::error::{ApiError, Result};

/// What a link proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The account's address belongs to its holder.
    VerifyEmail,
    /// The holder of the address may set a new password.
    ResetPassword,
    /// The holder of a new address confirms an email change to it.
    ChangeEmail,
    /// The holder of the old address undoes an email change.
    UndoEmailChange,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::VerifyEmail => "verify_email",
            Purpose::ResetPassword => "reset_password",
            Purpose::ChangeEmail => "change_email",
            Purpose::UndoEmailChange => "undo_email_change",
        }
    }

    /// How long a link stays valid: a day to verify (mail can wait in an inbox), half an hour to
    /// reset (OWASP Forgot Password Cheat Sheet: reset tokens expire after a short period), an
    /// hour to confirm a change, a week to undo one (the owner may be away when it happens).
    pub fn lifetime(self) -> Duration {
        match self {
            Purpose::VerifyEmail => Duration::hours(24),
            Purpose::ResetPassword => Duration::minutes(30),
            Purpose::ChangeEmail => Duration::hours(1),
            Purpose::UndoEmailChange => Duration::days(7),
        }
    }
}

/// A redeemed link: whose it was and which address it proved.
#[derive(Debug, Clone)]
pub struct Redeemed {
    /// The account.
    pub user_id: Uuid,
    /// The address the link was issued for.
    pub email: String,
    /// The session that asked for it, if one did.
    pub session_id: Option<Uuid>,
}

/// A new token for `purpose` on `user_id` and `email` (asked for by `session_id`, if given),
/// stored as its hash.
pub async fn issue(
    connection: &mut PgConnection,
    user_id: Uuid,
    purpose: Purpose,
    email: &str,
    session_id: Option<Uuid>,
    now: OffsetDateTime,
) -> Result<LinkToken> {
    let token = LinkToken::generate(&mut OsRng);
    let hash = token.lookup_hash();
    sqlx::query!(
        "insert into link_tokens
           (token_hash, user_id, purpose, email, session_id, created_at, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7)",
        hash.as_slice(),
        user_id,
        purpose.as_str(),
        email,
        session_id,
        now,
        now + purpose.lifetime(),
    )
    .execute(connection)
    .await?;
    Ok(token)
}

/// Voids the unused tokens of `user_id` for `purpose`: a presented one is then unknown.
pub async fn void(connection: &mut PgConnection, user_id: Uuid, purpose: Purpose) -> Result<()> {
    sqlx::query!(
        "delete from link_tokens where user_id = $1 and purpose = $2 and used_at is null",
        user_id,
        purpose.as_str(),
    )
    .execute(connection)
    .await?;
    Ok(())
}

/// Redeems `presented` for `purpose` at `now`, in the caller's transaction: the row is locked, so
/// of concurrent redemptions of one token exactly one succeeds and the others find it used.
pub async fn redeem(
    connection: &mut PgConnection,
    presented: &str,
    purpose: Purpose,
    now: OffsetDateTime,
) -> Result<Redeemed> {
    let token = LinkToken::parse(presented).map_err(|_| ApiError::LinkTokenInvalid)?;
    let hash = token.lookup_hash();
    let row = sqlx::query!(
        "select user_id, purpose, email, session_id, expires_at, used_at from link_tokens
         where token_hash = $1 for update",
        hash.as_slice(),
    )
    .fetch_optional(&mut *connection)
    .await?
    .filter(|row| row.purpose == purpose.as_str())
    .ok_or(ApiError::LinkTokenInvalid)?;
    if row.used_at.is_some() {
        return Err(ApiError::LinkTokenUsed);
    }
    if row.expires_at <= now {
        return Err(ApiError::LinkTokenExpired);
    }
    sqlx::query!(
        "update link_tokens set used_at = $2 where token_hash = $1",
        hash.as_slice(),
        now,
    )
    .execute(connection)
    .await?;
    Ok(Redeemed {
        user_id: row.user_id,
        email: row.email,
        session_id: row.session_id,
    })
}

/// Deletes tokens expired for a day: past then, "expired" and "unknown" may look alike.
pub async fn purge(connection: &mut PgConnection, now: OffsetDateTime) -> Result<u64> {
    Ok(sqlx::query!(
        "delete from link_tokens where expires_at < $1",
        now - Duration::days(1),
    )
    .execute(connection)
    .await?
    .rows_affected())
}
