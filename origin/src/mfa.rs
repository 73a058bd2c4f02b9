//! Second factors: a TOTP authenticator (RFC 6238) with one-time recovery codes, the second step
//! of a login, and the rule every sensitive action follows once an account has a factor.
//!
//! - A TOTP secret is sealed at rest under a key derived from `SERVER_SECRET`, bound to its user.
//!   A code is accepted for the current 30-second step or one either side, and never twice: the
//!   last accepted step is stored and a code of that step or an earlier one is refused (RFC 6238
//!   section 5.2).
//! - Recovery codes are stored as HMAC-SHA256 under another derived key: 80 random bits need no
//!   slow hash, so checking one never waits on the bcrypt pool. Each works once.
//! - A login whose password is right but whose account has a factor gets an `mfa_token` instead
//!   of tokens: stored as SHA-256, single use, [`CHALLENGE_TTL`] long, dead after
//!   [`CHALLENGE_TRIES`] wrong codes. Wrong codes are also counted per account in PostgreSQL
//!   (`MFA_LIMIT_PER_ACCOUNT` per window, 429 beyond): the counter is read and locked before a
//!   code is checked, and counted only when the code is wrong, in the same transaction.
//! - With a factor enrolled, sensitive actions need a two-factor sign-in no older than
//!   [`SENSITIVE_MAX_AGE_SECS`] on top of the password ([`require_recent_second_factor`]), so a
//!   stolen one-factor token cannot add its own factor and keep the account through a reset.

use std::time::Duration;

use gatehouse_shared::assurance::{Level, Method, Requirement};
use gatehouse_shared::mfa::{MfaToken, RECOVERY_CODES_PER_SET, RecoveryCode};
use gatehouse_shared::totp::{DIGITS, Secret};
use hmac::{Hmac, Mac};
use rand_core::OsRng;
use sha2::Sha256;
use sqlx::{PgConnection, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, Result};
use crate::extract::{AuthUser, ClientMeta};
use crate::mail::{Letter, Recipient, Template};
use crate::server_secret::KeyUse;
use crate::sessions::{self, EndReason, Which};
use crate::throttle::{self, Counters};
use crate::users;

/// How long a login's second step stays open (the issue's 5 minutes: long enough to find a
/// phone, short enough that a leaked `mfa_token` is soon worthless).
pub const CHALLENGE_TTL: Duration = Duration::from_secs(300);

/// Wrong codes one `mfa_token` takes before it dies; the login then starts over with the
/// password, which has limits of its own.
pub const CHALLENGE_TRIES: i32 = 5;

/// How recent a two-factor sign-in must be for a sensitive action (OWASP ASVS 5.0 6.2.3's
/// re-authentication, NIST SP 800-63B section 7.2's reauthentication): 10 minutes.
pub const SENSITIVE_MAX_AGE_SECS: u64 = 600;

/// An account's second factors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Factors {
    /// When its TOTP authenticator was confirmed, if it has one.
    pub totp_enrolled_at: Option<OffsetDateTime>,
    /// Unused recovery codes.
    pub recovery_codes: u32,
    /// Registered passkeys.
    pub passkeys: u32,
}

impl Factors {
    /// Whether a login needs a second step.
    pub fn any(&self) -> bool {
        self.totp_enrolled_at.is_some() || self.passkeys > 0
    }

    /// What a second step accepts.
    pub fn methods(&self) -> Vec<String> {
        let mut methods = Vec::new();
        if self.totp_enrolled_at.is_some() {
            methods.push("totp".to_owned());
        }
        if self.passkeys > 0 {
            methods.push("passkey".to_owned());
        }
        if self.any() && self.recovery_codes > 0 {
            methods.push("recovery_code".to_owned());
        }
        methods
    }
}

/// The second factors of `user_id`.
pub async fn factors(connection: &mut PgConnection, user_id: Uuid) -> Result<Factors> {
    let row = sqlx::query!(
        r#"select (select confirmed_at from totp_factors where user_id = $1)
                    as "totp_enrolled_at?",
                  (select count(*) from recovery_codes where user_id = $1 and used_at is null)
                    as "recovery_codes!",
                  (select count(*) from passkeys where user_id = $1) as "passkeys!""#,
        user_id,
    )
    .fetch_one(connection)
    .await?;
    Ok(Factors {
        totp_enrolled_at: row.totp_enrolled_at,
        recovery_codes: u32::try_from(row.recovery_codes).unwrap_or(u32::MAX),
        passkeys: u32::try_from(row.passkeys).unwrap_or(u32::MAX),
    })
}

/// The rule sensitive actions follow on top of the password: when the account has a second
/// factor, the request's token must be `aal2` and authenticated within
/// [`SENSITIVE_MAX_AGE_SECS`]; otherwise 401 with RFC 9470's challenge, so the client knows to
/// step up (`POST /auth/mfa/step-up`) and retry.
pub async fn require_recent_second_factor(state: &AppState, user: &AuthUser) -> Result<()> {
    let factors = {
        let mut connection = state.db.acquire().await?;
        factors(&mut connection, user.user_id).await?
    };
    if !factors.any() {
        return Ok(());
    }
    let requirement = Requirement::at_least(Level::Aal2, Some(SENSITIVE_MAX_AGE_SECS));
    requirement
        .check(&user.claims, state.clock.now().unix_timestamp())
        .map_err(|short| ApiError::InsufficientAuthentication(Box::new(short)))
}

/// Starts a TOTP enrolment for `user_id`: a new secret, stored sealed and unconfirmed, replacing
/// an earlier unconfirmed one. 409 when a confirmed authenticator exists.
pub async fn start_totp(
    connection: &mut PgConnection,
    state: &AppState,
    user_id: Uuid,
    address_verified: bool,
    now: OffsetDateTime,
) -> Result<Secret> {
    let secret = Secret::generate(&mut OsRng);
    let sealed = state
        .server_keys
        .totp_cipher()
        .seal_bytes(secret.as_bytes(), user_id.as_bytes());
    let stored = sqlx::query_scalar!(
        "insert into totp_factors (user_id, secret_sealed, created_at, while_unverified)
         values ($1, $2, $3, $4)
         on conflict (user_id) do update set
           secret_sealed = excluded.secret_sealed, created_at = excluded.created_at,
           while_unverified = excluded.while_unverified, last_step = null
         where totp_factors.confirmed_at is null
         returning user_id",
        user_id,
        sealed,
        now,
        !address_verified,
    )
    .fetch_optional(connection)
    .await?;
    stored.map(|_| secret).ok_or(ApiError::FactorExists)
}

/// Confirms `user_id`'s pending TOTP enrolment with a first `code` and hands out a new set of
/// recovery codes; `None` when the code is wrong. 404 with nothing pending.
pub async fn confirm_totp(
    tx: &mut Transaction<'static, Postgres>,
    state: &AppState,
    user_id: Uuid,
    code: &str,
    now: OffsetDateTime,
) -> Result<Option<Vec<RecoveryCode>>> {
    let sealed = sqlx::query_scalar!(
        "select secret_sealed from totp_factors
         where user_id = $1 and confirmed_at is null for update",
        user_id,
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(ApiError::FactorNotFound)?;
    let secret = open_secret(state, user_id, &sealed)?;
    let Some(step) = secret.matching_step(code, now.unix_timestamp()) else {
        return Ok(None);
    };
    sqlx::query!(
        "update totp_factors set confirmed_at = $2, last_step = $3 where user_id = $1",
        user_id,
        now,
        step,
    )
    .execute(&mut **tx)
    .await?;
    replace_recovery_codes(tx, state, user_id, now)
        .await
        .map(Some)
}

/// A new set of recovery codes for `user_id`, voiding the old set.
pub async fn replace_recovery_codes(
    tx: &mut Transaction<'static, Postgres>,
    state: &AppState,
    user_id: Uuid,
    now: OffsetDateTime,
) -> Result<Vec<RecoveryCode>> {
    let codes: Vec<RecoveryCode> = (0..RECOVERY_CODES_PER_SET)
        .map(|_| RecoveryCode::generate(&mut OsRng))
        .collect();
    let macs: Vec<Vec<u8>> = codes
        .iter()
        .map(|code| recovery_mac(state, user_id, code).to_vec())
        .collect();
    sqlx::query!("delete from recovery_codes where user_id = $1", user_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query!(
        "insert into recovery_codes (user_id, code_mac, created_at)
         select $1, mac, $3 from unnest($2::bytea[]) as t(mac)",
        user_id,
        &macs[..],
        now,
    )
    .execute(&mut **tx)
    .await?;
    Ok(codes)
}

/// Removes `user_id`'s TOTP authenticator, and the recovery codes when no factor is left;
/// whether there was one.
pub async fn remove_totp(tx: &mut Transaction<'static, Postgres>, user_id: Uuid) -> Result<bool> {
    let removed = sqlx::query!("delete from totp_factors where user_id = $1", user_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    forget_codes_without_factors(tx, user_id).await?;
    Ok(removed > 0)
}

/// Deletes the recovery codes of `user_id` when no second factor is left: codes that complete
/// nothing would only be a way in later, once a factor is added.
pub async fn forget_codes_without_factors(
    tx: &mut Transaction<'static, Postgres>,
    user_id: Uuid,
) -> Result<()> {
    sqlx::query!(
        "delete from recovery_codes where user_id = $1
           and not exists (select 1 from totp_factors where user_id = $1 and confirmed_at is not null)
           and not exists (select 1 from passkeys where user_id = $1)",
        user_id,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// After a password reset through the account's address: removes authenticators and passkeys
/// enrolled while that address was unverified, which may be a squatter's (someone who registered the
/// address before its owner and set a factor to keep the account). Whether one was removed.
pub async fn remove_unverified_factors(
    tx: &mut Transaction<'static, Postgres>,
    user_id: Uuid,
) -> Result<bool> {
    let totp = sqlx::query!(
        "delete from totp_factors where user_id = $1 and while_unverified",
        user_id,
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    let passkeys = sqlx::query!(
        "delete from passkeys where user_id = $1 and while_unverified",
        user_id,
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    forget_codes_without_factors(tx, user_id).await?;
    Ok(totp + passkeys > 0)
}

/// What `gatehouse-origin user mfa-reset EMAIL` did to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// Its factors were removed and this many sessions ended; `noticed` says whether a notice was
    /// queued for its address (mail may be off).
    Removed {
        ended_sessions: usize,
        noticed: bool,
    },
    /// It had no second factor; nothing changed.
    NothingToRemove,
}

/// `gatehouse-origin user mfa-reset EMAIL`, for an owner who lost both the authenticator and the
/// recovery codes and was identified otherwise: removes every second factor of the account (its
/// authenticator, passkeys and recovery codes) and its pending second steps, ends every session
/// (one may be on the lost device), and queues a notice to its address, all in one transaction
/// (OWASP Multifactor Authentication Cheat Sheet: notify users of changes to their factors).
/// `None` when no account has the address. A running instance's courier sends the notice.
pub async fn reset(state: &AppState, email: &str) -> Result<Option<Reset>> {
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let Some(user_id) = users::find_by_email(&mut tx, email)
        .await?
        .map(|user| user.id)
    else {
        return Ok(None);
    };
    // The account's row first, as every other change of its factors, sessions or password takes
    // it (a password change then ends sessions before pending second steps); a login's second
    // step only share-locks it, after its challenge.
    lock_account(&mut tx, user_id).await?;
    // A half-finished enrolment is not a factor: nothing to tell the owner, no session to end.
    if !factors(&mut tx, user_id).await?.any() {
        return Ok(Some(Reset::NothingToRemove));
    }
    forget_pending(&mut tx, user_id).await?;
    sqlx::query!("delete from passkeys where user_id = $1", user_id)
        .execute(&mut *tx)
        .await?;
    remove_totp(&mut tx, user_id).await?;
    let ended = sessions::end(
        &mut tx,
        state,
        user_id,
        Which::All,
        EndReason::FactorsReset,
        now,
    )
    .await?;
    let noticed = notify(state, &mut tx, user_id, Template::SecondFactorsReset, now).await?;
    tx.commit().await?;
    notice_committed(state, noticed);
    Ok(Some(Reset::Removed {
        ended_sessions: ended.len(),
        noticed,
    }))
}

/// Queues, in `tx`, a notice to the account's address that its factors changed (`template`: one
/// added, removed, new recovery codes, or the operator's reset), so that a change made with a
/// stolen session or password is seen by the address's owner (OWASP Multifactor Authentication
/// Cheat Sheet). Never held back by the per-address cap ([`Template::capped`]). Whether a mail was
/// queued, for [`notice_committed`].
pub async fn notify(
    state: &AppState,
    tx: &mut Transaction<'static, Postgres>,
    user_id: Uuid,
    template: Template,
    now: OffsetDateTime,
) -> Result<bool> {
    let Some(mail) = &state.mail else {
        return Ok(false);
    };
    let Some(user) = users::find(tx, user_id).await? else {
        return Ok(false);
    };
    let letter = Letter::new(Recipient::User(&user), template);
    mail.queue(state, tx, letter, now).await
}

/// Wakes the courier for a notice [`notify`] queued, once `tx` has committed.
pub fn notice_committed(state: &AppState, queued: bool) {
    if let Some(mail) = &state.mail {
        mail.queued_after_commit(state, queued);
    }
}

/// Ends every pending second step and passkey ceremony of `user_id`: a password change or reset,
/// or a deactivation, must not be outlived by a login whose first step used the old password.
pub async fn forget_pending(tx: &mut Transaction<'static, Postgres>, user_id: Uuid) -> Result<()> {
    sqlx::query!("delete from mfa_challenges where user_id = $1", user_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query!(
        "delete from webauthn_ceremonies where user_id = $1",
        user_id
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Locks the account's row until `tx` ends, so that factor changes of one account (a TOTP
/// confirmation, a passkey registration) run one at a time: each then sees whether it is the
/// first factor, and only one hands out recovery codes.
pub async fn lock_account(tx: &mut Transaction<'static, Postgres>, user_id: Uuid) -> Result<()> {
    sqlx::query!(
        "select id from users where id = $1 for no key update",
        user_id
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(ApiError::SessionEnded)?;
    Ok(())
}

/// Checks a second-factor `code` for `user_id` inside `tx`: a TOTP code of the confirmed
/// authenticator (its step then spent), or an unused recovery code (then used). The method it
/// proves, or `None` when it is wrong, replayed, or the account has no such factor.
pub async fn check_code(
    tx: &mut Transaction<'static, Postgres>,
    state: &AppState,
    user_id: Uuid,
    code: &str,
    now: OffsetDateTime,
) -> Result<Option<Method>> {
    if code.len() == DIGITS && code.bytes().all(|b| b.is_ascii_digit()) {
        let Some(sealed) = sqlx::query_scalar!(
            "select secret_sealed from totp_factors
             where user_id = $1 and confirmed_at is not null",
            user_id,
        )
        .fetch_optional(&mut **tx)
        .await?
        else {
            return Ok(None);
        };
        let secret = open_secret(state, user_id, &sealed)?;
        let Some(step) = secret.matching_step(code, now.unix_timestamp()) else {
            return Ok(None);
        };
        // RFC 6238 section 5.2: a code already accepted, or one older than it, is refused. The
        // compare-and-set decides between concurrent requests with the same code.
        let spent = sqlx::query!(
            "update totp_factors set last_step = $2
             where user_id = $1 and (last_step is null or last_step < $2)",
            user_id,
            step,
        )
        .execute(&mut **tx)
        .await?
        .rows_affected();
        return Ok((spent == 1).then_some(Method::PasswordOtp));
    }
    let Some(code) = RecoveryCode::parse(code) else {
        return Ok(None);
    };
    let mac = recovery_mac(state, user_id, &code);
    let used = sqlx::query_scalar!(
        "update recovery_codes set used_at = $3
         where user_id = $1 and code_mac = $2 and used_at is null
         returning user_id",
        user_id,
        mac.as_slice(),
        now,
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(used.map(|_| Method::PasswordRecoveryCode))
}

/// [`check_code`] under the account's `MFA_LIMIT_PER_ACCOUNT`: 429 when the limit is reached
/// (nothing is checked); a wrong code is counted in `tx`, which the caller commits so the count
/// stays. Concurrent checks on one account queue on the counter's row lock.
pub async fn check_code_limited(
    tx: &mut Transaction<'static, Postgres>,
    state: &AppState,
    user_id: Uuid,
    code: &str,
    now: OffsetDateTime,
) -> Result<Option<Method>> {
    check_limit(tx, state, user_id, now).await?;
    let method = check_code(tx, state, user_id, code, now).await?;
    if method.is_none() {
        count_wrong_code(tx, state, user_id, now).await?;
    }
    Ok(method)
}

/// The account's `MFA_LIMIT_PER_ACCOUNT` counter.
fn counters(state: &AppState, user_id: Uuid) -> Counters {
    Counters::for_mfa(&state.login_limits, &state.counter_names, user_id)
}

/// Counts a wrong code against the account's `MFA_LIMIT_PER_ACCOUNT`, in `tx`.
pub async fn count_wrong_code(
    tx: &mut Transaction<'static, Postgres>,
    state: &AppState,
    user_id: Uuid,
    now: OffsetDateTime,
) -> Result<()> {
    throttle::reserve(tx, &state.login_limits, &counters(state, user_id), now).await
}

/// Refuses with 429 when the account has used up `MFA_LIMIT_PER_ACCOUNT`, locking its counter
/// until `tx` ends.
pub async fn check_limit(
    tx: &mut Transaction<'static, Postgres>,
    state: &AppState,
    user_id: Uuid,
    now: OffsetDateTime,
) -> Result<()> {
    throttle::peek(tx, &state.login_limits, &counters(state, user_id), now).await
}

/// The `mfa_token` a client sent; 401 `mfa_token_invalid` when it is not one.
pub fn parse_token(text: &str) -> Result<MfaToken> {
    MfaToken::parse(text).map_err(|_| ApiError::MfaTokenInvalid)
}

/// Opens a login's second step for `user_id`: the `mfa_token` to hand out.
pub async fn open_challenge(
    tx: &mut Transaction<'static, Postgres>,
    user_id: Uuid,
    meta: &ClientMeta,
    password_change_required: bool,
    now: OffsetDateTime,
) -> Result<MfaToken> {
    let token = MfaToken::generate(&mut OsRng);
    let hash = token.lookup_hash();
    sqlx::query!(
        "insert into mfa_challenges (token_hash, user_id, created_at, expires_at, user_agent, ip,
                                     password_change_required)
         values ($1, $2, $3, $4, $5, $6, $7)",
        hash.as_slice(),
        user_id,
        now,
        now + CHALLENGE_TTL,
        meta.user_agent.as_deref(),
        meta.ip.map(|ip| ip.to_string()),
        password_change_required,
    )
    .execute(&mut **tx)
    .await?;
    Ok(token)
}

/// A usable second step, as [`lock_challenge`] reads it.
pub struct Challenge {
    /// Whose login it is.
    pub user_id: Uuid,
    /// The first step accepted a password only the old service's rule accepts (see
    /// `TokenResponse::password_change_required`).
    pub password_change_required: bool,
}

/// The usable second step `token` names (unused, unexpired, tries left), with what its first
/// step recorded; locked until `tx` ends, so a racing request with the same token waits and then
/// finds it spent. 401 `mfa_token_invalid` otherwise.
pub async fn lock_challenge(
    tx: &mut Transaction<'static, Postgres>,
    token: &MfaToken,
    now: OffsetDateTime,
) -> Result<Challenge> {
    let hash = token.lookup_hash();
    let row = sqlx::query!(
        "select user_id, expires_at, failures, used_at, password_change_required
         from mfa_challenges where token_hash = $1 for update",
        hash.as_slice(),
    )
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        Some(row)
            if row.used_at.is_none() && row.expires_at > now && row.failures < CHALLENGE_TRIES =>
        {
            Ok(Challenge {
                user_id: row.user_id,
                password_change_required: row.password_change_required,
            })
        }
        _ => Err(ApiError::MfaTokenInvalid),
    }
}

/// Records a wrong code against a second step, which dies at [`CHALLENGE_TRIES`].
pub async fn fail_challenge(
    tx: &mut Transaction<'static, Postgres>,
    token: &MfaToken,
) -> Result<()> {
    let hash = token.lookup_hash();
    sqlx::query!(
        "update mfa_challenges set failures = failures + 1 where token_hash = $1",
        hash.as_slice(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Spends a second step that completed its login and reads its account, in one statement (one
/// round trip fewer on every two-factor login).
pub async fn spend_challenge(
    tx: &mut Transaction<'static, Postgres>,
    token: &MfaToken,
    now: OffsetDateTime,
) -> Result<Option<users::User>> {
    let hash = token.lookup_hash();
    Ok(sqlx::query_as!(
        users::User,
        "with spent as (
           update mfa_challenges set used_at = $2 where token_hash = $1 returning user_id
         )
         select u.id, u.email, u.password_hash, u.first_name, u.last_name, u.is_active,
                u.email_verified_at, u.created_at, u.legacy_id, u.legacy_password
         from users u join spent on u.id = spent.user_id",
        hash.as_slice(),
        now,
    )
    .fetch_optional(&mut **tx)
    .await?)
}

/// Deletes second steps that expired a day ago (kept that long for the audit of failures).
pub async fn purge(connection: &mut PgConnection, now: OffsetDateTime) -> Result<u64> {
    let deleted = sqlx::query!(
        "delete from mfa_challenges where expires_at < $1",
        now - time::Duration::days(1),
    )
    .execute(connection)
    .await?;
    Ok(deleted.rows_affected())
}

/// The stored MAC of `code` for `user_id`.
fn recovery_mac(state: &AppState, user_id: Uuid, code: &RecoveryCode) -> [u8; 32] {
    let key = state.server_keys.key(KeyUse::RecoveryCodes);
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(user_id.as_bytes());
    mac.update(code.normalized().as_bytes());
    mac.finalize().into_bytes().into()
}

/// The secret a stored row seals; an internal error when it does not open (sealed under another
/// `SERVER_SECRET`, or altered), which no client input can cause.
fn open_secret(state: &AppState, user_id: Uuid, sealed: &[u8]) -> Result<Secret> {
    state
        .server_keys
        .totp_cipher()
        .open_bytes(sealed, user_id.as_bytes())
        .and_then(|bytes| <[u8; 20]>::try_from(bytes).ok())
        .map(Secret::from_bytes)
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "a TOTP secret does not open under this SERVER_SECRET"
            ))
        })
}
