//! Passkeys (WebAuthn Level 3) with webauthn-rs: registration by a signed-in user, sign-in with a
//! passkey alone (discoverable credentials: no address typed), and a passkey as the second step
//! of a password login.
//!
//! - Ceremony state lives in PostgreSQL (`webauthn_ceremonies`), [`CEREMONY_TTL`] long and taken
//!   (deleted) by the request that finishes it, so any instance finishes what another started and
//!   no challenge is answered twice.
//! - User verification is required in every ceremony (the authenticator's PIN or biometric), so a
//!   passkey alone is two factors (`aal2`).
//! - A credential id is registered to one account only (unique index; WebAuthn section 7.1 step
//!   26), and a sign-in whose credential belongs to an account other than the one its user handle
//!   names is refused.
//! - Signature counters (section 7.2 steps 21-22): the stored counter is read under the
//!   credential's row lock and an assertion whose counter does not exceed it (when either is
//!   non-zero) is refused as a possible clone; otherwise the new counter is stored in the same
//!   transaction.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;
use webauthn_rs::prelude::{AuthenticationResult, Passkey, PublicKeyCredential};

use crate::error::{ApiError, Result};

/// How long a ceremony may take: WebAuthn's recommended timeout for user verification is up to
/// 10 minutes (section 15.1); five is ample for a prompt and keeps state short-lived.
pub const CEREMONY_TTL: Duration = Duration::from_secs(300);

/// Passkeys one account may hold: enough for every device a person owns, bounded storage.
pub const MAX_PER_USER: i64 = 20;

/// What a ceremony is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Registering a passkey to the signed-in user.
    Register,
    /// Signing in with a passkey alone.
    SignIn,
    /// A passkey as the second step of a password login.
    SecondFactor,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Register => "register",
            Purpose::SignIn => "sign_in",
            Purpose::SecondFactor => "second_factor",
        }
    }
}

/// Stores a ceremony's state; its id is what the client sends back.
pub async fn save_ceremony(
    connection: &mut PgConnection,
    purpose: Purpose,
    user_id: Option<Uuid>,
    state: &impl Serialize,
    now: OffsetDateTime,
) -> Result<Uuid> {
    let id = Uuid::new_v4();
    let state = serde_json::to_value(state).map_err(|error| ApiError::Internal(error.into()))?;
    sqlx::query!(
        "insert into webauthn_ceremonies (id, purpose, user_id, state, expires_at)
         values ($1, $2, $3, $4, $5)",
        id,
        purpose.as_str(),
        user_id,
        state,
        now + CEREMONY_TTL,
    )
    .execute(connection)
    .await?;
    Ok(id)
}

/// Takes (deletes) the ceremony `id` for `purpose`: its user and state. 400 `ceremony_invalid`
/// when it is unknown, for another purpose, expired, or already taken.
pub async fn take_ceremony<T: DeserializeOwned>(
    tx: &mut Transaction<'static, Postgres>,
    id: Uuid,
    purpose: Purpose,
    now: OffsetDateTime,
) -> Result<(Option<Uuid>, T)> {
    let row = sqlx::query!(
        "delete from webauthn_ceremonies where id = $1 and purpose = $2
         returning user_id, state, expires_at",
        id,
        purpose.as_str(),
    )
    .fetch_optional(&mut **tx)
    .await?
    .filter(|row| row.expires_at > now)
    .ok_or(ApiError::CeremonyInvalid)?;
    let state =
        serde_json::from_value(row.state).map_err(|error| ApiError::Internal(error.into()))?;
    Ok((row.user_id, state))
}

/// A registered passkey.
pub struct Stored {
    /// Its id in Gatehouse (not the credential id).
    pub id: Uuid,
    /// Its account.
    pub user_id: Uuid,
    /// webauthn-rs's credential.
    pub credential: Passkey,
    /// The signature counter stored with it.
    pub counter: i64,
    /// The name its owner gave it.
    pub name: String,
    /// When it was registered.
    pub created_at: OffsetDateTime,
    /// When it last signed in.
    pub last_used_at: Option<OffsetDateTime>,
}

/// A `passkeys` row as the queries below select it.
struct Row {
    id: Uuid,
    user_id: Uuid,
    credential: serde_json::Value,
    name: String,
    created_at: OffsetDateTime,
    last_used_at: Option<OffsetDateTime>,
    counter: i64,
}

impl TryFrom<Row> for Stored {
    type Error = ApiError;

    fn try_from(row: Row) -> Result<Self> {
        Ok(Stored {
            id: row.id,
            user_id: row.user_id,
            credential: serde_json::from_value(row.credential)
                .map_err(|error| ApiError::Internal(error.into()))?,
            counter: row.counter,
            name: row.name,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
        })
    }
}

/// The passkeys of `user_id`, oldest first.
pub async fn list(connection: &mut PgConnection, user_id: Uuid) -> Result<Vec<Stored>> {
    sqlx::query_as!(
        Row,
        r#"select id, user_id, credential, name, created_at, last_used_at,
                  coalesce((credential->'cred'->>'counter')::bigint, 0) as "counter!"
           from passkeys where user_id = $1 order by created_at, id"#,
        user_id,
    )
    .fetch_all(connection)
    .await?
    .into_iter()
    .map(Stored::try_from)
    .collect()
}

/// Registers `credential` to `user_id` as `name`. 409 `passkey_exists` when the credential is
/// registered already, to this account or another.
pub async fn insert(
    tx: &mut Transaction<'static, Postgres>,
    user_id: Uuid,
    credential: &Passkey,
    name: &str,
    address_verified: bool,
    now: OffsetDateTime,
) -> Result<Uuid> {
    let id = Uuid::now_v7();
    let json =
        serde_json::to_value(credential).map_err(|error| ApiError::Internal(error.into()))?;
    sqlx::query!(
        "insert into passkeys (id, user_id, credential_id, credential, name, created_at,
                               while_unverified)
         values ($1, $2, $3, $4, $5, $6, $7)",
        id,
        user_id,
        credential.cred_id().as_slice(),
        json,
        name,
        now,
        !address_verified,
    )
    .execute(&mut **tx)
    .await
    .map_err(|error| {
        crate::error::on_constraint(error, |name| {
            (name == "passkeys_credential_id_key").then_some(ApiError::PasskeyExists)
        })
    })?;
    Ok(id)
}

/// The passkey with `credential_id`, locked until `tx` ends.
async fn lock_by_credential(
    tx: &mut Transaction<'static, Postgres>,
    credential_id: &[u8],
) -> Result<Option<Stored>> {
    sqlx::query_as!(
        Row,
        r#"select id, user_id, credential, name, created_at, last_used_at,
                  coalesce((credential->'cred'->>'counter')::bigint, 0) as "counter!"
           from passkeys where credential_id = $1 for update"#,
        credential_id,
    )
    .fetch_optional(&mut **tx)
    .await?
    .map(Stored::try_from)
    .transpose()
}

/// For a verified assertion `result` by `stored`: refuses a counter that did not advance (a
/// possible clone, WebAuthn section 7.2 step 22), else stores the new counter and the time.
async fn record_use(
    tx: &mut Transaction<'static, Postgres>,
    mut stored: Stored,
    result: &AuthenticationResult,
    now: OffsetDateTime,
) -> Result<Stored> {
    let counter = i64::from(result.counter());
    if (counter > 0 || stored.counter > 0) && counter <= stored.counter {
        tracing::warn!(
            user_id = %stored.user_id,
            passkey_id = %stored.id,
            "passkey signature counter did not advance: possible cloned authenticator, refused"
        );
        return Err(ApiError::PasskeyRefused);
    }
    stored.credential.update_credential(result);
    let json = serde_json::to_value(&stored.credential)
        .map_err(|error| ApiError::Internal(error.into()))?;
    sqlx::query!(
        "update passkeys set credential = $2, last_used_at = $3 where id = $1",
        stored.id,
        json,
        now,
    )
    .execute(&mut **tx)
    .await?;
    stored.counter = counter;
    Ok(stored)
}

/// Finishes a username-less sign-in: the credential's account, once the assertion verifies
/// against the stored credential (read under its lock) and belongs to the account its user
/// handle names. 401 `passkey_refused` otherwise.
pub async fn finish_sign_in(
    tx: &mut Transaction<'static, Postgres>,
    webauthn: &webauthn_rs::Webauthn,
    credential: &PublicKeyCredential,
    state: webauthn_rs::prelude::DiscoverableAuthentication,
    now: OffsetDateTime,
) -> Result<Stored> {
    let (user_handle, credential_id) = webauthn
        .identify_discoverable_authentication(credential)
        .map_err(|_| ApiError::PasskeyRefused)?;
    let stored = lock_by_credential(tx, credential_id)
        .await?
        .filter(|stored| stored.user_id == user_handle)
        .ok_or(ApiError::PasskeyRefused)?;
    let key = webauthn_rs::prelude::DiscoverableKey::from(&stored.credential);
    let result = webauthn
        .finish_discoverable_authentication(credential, state, &[key])
        .map_err(|error| {
            tracing::info!(%error, "passkey sign-in refused");
            ApiError::PasskeyRefused
        })?;
    if !result.user_verified() {
        return Err(ApiError::PasskeyRefused);
    }
    record_use(tx, stored, &result, now).await
}

/// Finishes a passkey second step for `user_id`: the assertion verifies against one of the
/// account's credentials (allowed when the ceremony began), and the credential is still the
/// account's. `None` when it does not verify.
pub async fn finish_second_factor(
    tx: &mut Transaction<'static, Postgres>,
    webauthn: &webauthn_rs::Webauthn,
    user_id: Uuid,
    credential: &PublicKeyCredential,
    state: &webauthn_rs::prelude::PasskeyAuthentication,
    now: OffsetDateTime,
) -> Result<Option<Stored>> {
    let Ok(result) = webauthn.finish_passkey_authentication(credential, state) else {
        return Ok(None);
    };
    let Some(stored) = lock_by_credential(tx, result.cred_id().as_slice())
        .await?
        .filter(|stored| stored.user_id == user_id)
    else {
        return Ok(None);
    };
    if !result.user_verified() {
        return Ok(None);
    }
    match record_use(tx, stored, &result, now).await {
        Ok(stored) => Ok(Some(stored)),
        Err(ApiError::PasskeyRefused) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Deletes passkey `id` of `user_id`; whether it was theirs.
pub async fn delete(
    tx: &mut Transaction<'static, Postgres>,
    user_id: Uuid,
    id: Uuid,
) -> Result<bool> {
    let deleted = sqlx::query!(
        "delete from passkeys where id = $1 and user_id = $2",
        id,
        user_id
    )
    .execute(&mut **tx)
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// Deletes ceremonies that expired.
pub async fn purge(connection: &mut PgConnection, now: OffsetDateTime) -> Result<u64> {
    let deleted = sqlx::query!("delete from webauthn_ceremonies where expires_at < $1", now)
        .execute(connection)
        .await?;
    Ok(deleted.rows_affected())
}
