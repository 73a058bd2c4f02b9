//! The `users` table: accounts, their profile and their password hash. Every query on the table
//! is here; handlers and the other modules call these functions.
//!
//! Addresses are matched as PostgreSQL's `lower()` folds them, the rule the unique index
//! `users_email_key` enforces, so no spelling of an address reaches another account.

use gatehouse_shared::api::UserProfile;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{ApiError, Result, on_constraint};

/// What becomes of accounts over time, and whether sign-in waits for a verified address; from
/// configuration.
#[derive(Debug, Clone, Copy)]
pub struct AccountPolicy {
    /// `ACCOUNT_ERASE_AFTER_SECS`: a deactivated account's data is erased this long after.
    pub erase_after: std::time::Duration,
    /// `UNVERIFIED_ACCOUNT_TTL_SECS`: an account registered with mail on and never verified is
    /// erased this long after registration, freeing its address.
    pub unverified_ttl: std::time::Duration,
    /// `REQUIRE_VERIFIED_EMAIL`: registration issues no tokens, and sign-in waits for a verified
    /// address.
    pub require_verified_email: bool,
}

/// One account as stored.
#[derive(Debug, Clone)]
pub struct User {
    /// The id, also the access token's `sub`.
    pub id: Uuid,
    /// The address as registered.
    pub email: String,
    /// The bcrypt hash of the password.
    pub password_hash: String,
    /// First name, if given.
    pub first_name: Option<String>,
    /// Last name, if given.
    pub last_name: Option<String>,
    /// False once deactivated.
    pub is_active: bool,
    /// When the address was proven, if it was.
    pub email_verified_at: Option<OffsetDateTime>,
    /// When the account was created.
    pub created_at: OffsetDateTime,
    /// The id the account had in the service it was imported from, if it was.
    pub legacy_id: Option<i64>,
    /// The hash was imported and the password may be longer than 72 bytes (see
    /// [`crate::import`]); false once the user sets a password here.
    pub legacy_password: bool,
}

impl From<User> for UserProfile {
    fn from(user: User) -> Self {
        UserProfile {
            id: user.id,
            email: user.email,
            first_name: user.first_name,
            last_name: user.last_name,
            is_active: user.is_active,
            email_verified: user.email_verified_at.is_some(),
            created_at: user.created_at,
            legacy_id: user.legacy_id,
        }
    }
}

/// A new account's fields, validated and normalized by the caller.
pub struct NewUser<'a> {
    /// The account's id.
    pub id: Uuid,
    /// The normalized address.
    pub email: &'a str,
    /// The bcrypt hash of the password.
    pub password_hash: &'a str,
    /// First name, if given.
    pub first_name: Option<&'a str>,
    /// Last name, if given.
    pub last_name: Option<&'a str>,
    /// Whether the account is erased if its address is never verified (only when mail can
    /// verify it).
    pub erase_if_unverified: bool,
}

/// Inserts the account; 409 `email_taken` when the address (in any case) has one already. The
/// unique index decides races, so of concurrent registrations exactly one wins.
pub async fn create(connection: &mut PgConnection, new: NewUser<'_>) -> Result<User> {
    create_if_free(connection, new)
        .await?
        .ok_or(ApiError::EmailTaken)
}

/// Inserts the account unless the address (in any case) has one; `None` then. `on conflict` on
/// the unique index settles concurrent inserts of one address: the later ones wait for the first
/// and then insert nothing.
pub async fn create_if_free(
    connection: &mut PgConnection,
    new: NewUser<'_>,
) -> Result<Option<User>> {
    Ok(sqlx::query_as!(
        User,
        "insert into users (id, email, password_hash, first_name, last_name, erase_if_unverified)
         values ($1, $2, $3, $4, $5, $6)
         on conflict ((lower(email))) do nothing
         returning id, email, password_hash, first_name, last_name, is_active, email_verified_at,
                   legacy_id, legacy_password,
                   created_at",
        new.id,
        new.email,
        new.password_hash,
        new.first_name,
        new.last_name,
        new.erase_if_unverified,
    )
    .fetch_optional(connection)
    .await?)
}

/// The account with this id.
pub async fn find(connection: &mut PgConnection, id: Uuid) -> Result<Option<User>> {
    Ok(sqlx::query_as!(
        User,
        "select id, email, password_hash, first_name, last_name, is_active, email_verified_at, created_at, legacy_id, legacy_password
         from users where id = $1",
        id,
    )
    .fetch_optional(connection)
    .await?)
}

/// The account registered under `email`, in any case.
pub async fn find_by_email(connection: &mut PgConnection, email: &str) -> Result<Option<User>> {
    Ok(sqlx::query_as!(
        User,
        "select id, email, password_hash, first_name, last_name, is_active, email_verified_at, created_at, legacy_id, legacy_password
         from users where lower(email) = lower($1)",
        email,
    )
    .fetch_optional(connection)
    .await?)
}

/// The password hash and active flag of the account, share-locked until the transaction ends:
/// a password change or deactivation committing meanwhile waits for it, or is seen by it.
pub async fn lock_credentials(
    connection: &mut PgConnection,
    id: Uuid,
) -> Result<Option<(String, bool)>> {
    let row = sqlx::query!(
        "select password_hash, is_active from users where id = $1 for share",
        id,
    )
    .fetch_optional(connection)
    .await?;
    Ok(row.map(|row| (row.password_hash, row.is_active)))
}

/// Why a password hash is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    /// The same password, hashed at the configured cost: an imported hash stays imported.
    Rehash,
    /// A new password, chosen here under Gatehouse's rules.
    NewPassword,
}

/// Replaces the password hash `old_hash` with `new_hash`: a compare-and-set, so of two
/// concurrent changes the second finds the hash it verified against gone. False when it was.
pub async fn replace_password_hash(
    connection: &mut PgConnection,
    id: Uuid,
    old_hash: &str,
    new_hash: &str,
    why: Replacement,
) -> Result<bool> {
    let replaced = sqlx::query!(
        "update users set password_hash = $2, updated_at = now(),
                legacy_password = legacy_password and $4
         where id = $1 and password_hash = $3",
        id,
        new_hash,
        old_hash,
        why == Replacement::Rehash,
    )
    .execute(connection)
    .await?
    .rows_affected();
    Ok(replaced == 1)
}

/// A change to the names of a profile: `None` keeps a name, `Some(None)` clears it.
pub struct NameChange<'a> {
    /// The first name.
    pub first_name: Option<Option<&'a str>>,
    /// The last name.
    pub last_name: Option<Option<&'a str>>,
}

/// Applies `change` and returns the account as it is now.
pub async fn update_names(
    connection: &mut PgConnection,
    id: Uuid,
    change: NameChange<'_>,
) -> Result<User> {
    Ok(sqlx::query_as!(
        User,
        "update users set
           first_name = case when $2 then $3 else first_name end,
           last_name = case when $4 then $5 else last_name end,
           updated_at = now()
         where id = $1
         returning id, email, password_hash, first_name, last_name, is_active, email_verified_at, created_at, legacy_id, legacy_password",
        id,
        change.first_name.is_some(),
        change.first_name.flatten(),
        change.last_name.is_some(),
        change.last_name.flatten(),
    )
    .fetch_one(connection)
    .await?)
}

/// Sets a new password hash outright, a reset link having proved `mailed_to` instead of the old
/// password, and marks that address verified; only while it is still the account's address and
/// the account is active. False otherwise: a link mailed to an address the account has since left
/// must not take the account back.
pub async fn reset_password(
    connection: &mut PgConnection,
    id: Uuid,
    new_hash: &str,
    mailed_to: &str,
    now: OffsetDateTime,
) -> Result<bool> {
    let reset = sqlx::query!(
        "update users set password_hash = $2, email_verified_at = coalesce(email_verified_at, $4),
           legacy_password = false, updated_at = now()
         where id = $1 and lower(email) = lower($3) and is_active",
        id,
        new_hash,
        mailed_to,
        now,
    )
    .execute(connection)
    .await?
    .rows_affected();
    Ok(reset == 1)
}

/// Marks `email` verified for the account, if it is still the account's address (it may have
/// changed since the link was mailed); whether it was.
pub async fn mark_verified(
    connection: &mut PgConnection,
    id: Uuid,
    email: &str,
    now: OffsetDateTime,
) -> Result<bool> {
    let marked = sqlx::query!(
        "update users set email_verified_at = coalesce(email_verified_at, $3), updated_at = now()
         where id = $1 and lower(email) = lower($2) and is_active",
        id,
        email,
        now,
    )
    .execute(connection)
    .await?
    .rows_affected();
    Ok(marked == 1)
}

/// Moves the active account `id` to `email`, proven by a link mailed to it, so verified; 409
/// `email_taken` when another account has that address now (the unique index decides). False
/// when the account is gone or deactivated.
pub async fn change_email(
    connection: &mut PgConnection,
    id: Uuid,
    email: &str,
    now: OffsetDateTime,
) -> Result<bool> {
    let changed = sqlx::query!(
        "update users set email = $2, email_verified_at = $3, updated_at = now()
         where id = $1 and is_active",
        id,
        email,
        now,
    )
    .execute(connection)
    .await
    .map_err(|e| {
        on_constraint(e, |name| {
            (name == "users_email_key").then_some(ApiError::EmailTaken)
        })
    })?
    .rows_affected();
    Ok(changed == 1)
}

/// Marks the account deactivated; its sessions are the caller's to end in the same transaction.
pub async fn deactivate(
    connection: &mut PgConnection,
    id: Uuid,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query!(
        "update users set is_active = false, deactivated_at = $2, updated_at = now()
         where id = $1",
        id,
        now,
    )
    .execute(connection)
    .await?;
    Ok(())
}

/// An operator's `gatehouse-origin user reactivate EMAIL`: the deactivated account with that
/// address is active again and no longer due for erasure. False when there is none.
pub async fn reactivate(pool: &PgPool, email: &str) -> Result<bool> {
    let reactivated = sqlx::query!(
        "update users set is_active = true, deactivated_at = null, updated_at = now()
         where lower(email) = lower($1) and not is_active",
        email,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(reactivated == 1)
}

/// An operator's `gatehouse-origin user erase EMAIL`: the account with that address and, by
/// cascade, its sessions, tokens, links and mail are deleted now. False when there is none.
pub async fn erase(pool: &PgPool, email: &str) -> Result<bool> {
    let erased = sqlx::query!("delete from users where lower(email) = lower($1)", email)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(erased == 1)
}

/// Deactivates, as of `now`, the accounts registered while mail was on before `registered_before`
/// and never verified (pre-hijacking: a squatted address is to be freed); their ids, so that
/// the caller ends their sessions in the same transaction and the endings reach the edge before
/// [`purge`] deletes the rows.
pub async fn deactivate_unverified(
    connection: &mut PgConnection,
    registered_before: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar!(
        "update users set is_active = false, deactivated_at = $2, updated_at = now()
         where erase_if_unverified and email_verified_at is null and is_active
           and created_at < $1
         returning id",
        registered_before,
        now,
    )
    .fetch_all(connection)
    .await?)
}

/// Erases accounts deactivated before `deactivated_before` (GDPR art. 17: their personal data goes
/// with the row, by cascade) and, with `unverified_before`, never-verified accounts that
/// [`deactivate_unverified`] deactivated before then. Accounts deactivated or registered before
/// those rules existed carry no date or no flag and are kept.
pub async fn purge(
    connection: &mut PgConnection,
    deactivated_before: OffsetDateTime,
    unverified_before: Option<OffsetDateTime>,
) -> Result<u64> {
    Ok(sqlx::query!(
        "delete from users
         where not is_active
           and (deactivated_at < $1
                or (erase_if_unverified and email_verified_at is null and deactivated_at < $2))",
        deactivated_before,
        unverified_before,
    )
    .execute(connection)
    .await?
    .rows_affected())
}
