//! The one guarded password check, which login, password change and every later
//! re-authentication call: brute-force limits reserved first, bcrypt on the hashing pool with no
//! pooled connection held, the attempt given back only when the password was right.
//!
//! An unknown account costs exactly what a known one does (one verify against a dummy hash, the
//! same counters), so neither the answer nor its timing tells who has an account (OWASP
//! Authentication Cheat Sheet, "Authentication and Error Messages").

use std::net::IpAddr;

use gatehouse_shared::device::DeviceToken;
use gatehouse_shared::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, Result};
use crate::throttle::{self, Counters};
use crate::users::{self, User};

/// The account a password is checked against.
#[derive(Debug, Clone, Copy)]
pub enum Account<'a> {
    /// Named by the address typed at login.
    Email(&'a str),
    /// The signed-in user, by id; `email` names the account's counters.
    SignedIn {
        /// The user's id.
        id: Uuid,
        /// The address in the user's access token.
        email: &'a str,
    },
}

impl Account<'_> {
    fn email(&self) -> &str {
        match self {
            Account::Email(email) | Account::SignedIn { email, .. } => email,
        }
    }
}

/// Checks `password` for `account` from the client at `ip` (with the device token the request
/// carried, see [`crate::throttle`]): the active account when the
/// password is right, `None` when it is wrong, the account unknown or deactivated (the caller
/// answers all three alike). 429 before any hashing once a limit is reached. A signed-in user
/// whose row has gone gets 401 `invalid_token`: the token speaks for nobody any more.
pub async fn check(
    state: &AppState,
    account: Account<'_>,
    password: SecretString,
    ip: Option<IpAddr>,
    device: Option<&DeviceToken>,
) -> Result<Option<User>> {
    let now = state.clock.now();
    let (counters, user): (Counters, Option<User>) = {
        let mut connection = state.db.acquire().await?;
        let counters = Counters::for_check(
            &mut connection,
            &state.login_limits,
            &state.counter_names,
            account.email(),
            ip,
            device,
            now,
        )
        .await?;
        // Counted before the password is checked: concurrent guesses cannot all pass a limit.
        throttle::reserve(&mut connection, &state.login_limits, &counters, now).await?;
        let user = match account {
            Account::Email(email) => users::find_by_email(&mut connection, email).await?,
            Account::SignedIn { id, .. } => Some(
                users::find(&mut connection, id)
                    .await?
                    .ok_or(ApiError::SessionEnded)?,
            ),
        };
        (counters, user)
    };
    // No password set here is longer than bcrypt's 72 bytes; an imported hash may stand for a
    // longer one, which the old service cut at 72 bytes, and bcrypt checks it the same way. For
    // any other account a longer password is checked against the dummy hash, so it is refused at
    // the same cost as a wrong one and says nothing about the account.
    let too_long = password.expose_secret().len() > gatehouse_shared::input::MAX_PASSWORD_BYTES;
    let stored = user
        .as_ref()
        .filter(|user| !too_long || user.legacy_password)
        .map(|user| user.password_hash.clone());
    let verified = state.hasher.verify(password, stored).await?;
    let Some(user) = user.filter(|user| verified && user.is_active) else {
        return Ok(None);
    };
    throttle::give_back(&state.db, &counters).await;
    Ok(Some(user))
}

/// The rule every sensitive action follows (deactivating the account, changing its password or
/// its address, adding or removing a second factor): with a second factor enrolled, a two-factor
/// sign-in no older than 10 minutes (see [`crate::mfa::require_recent_second_factor`]), and
/// always the request carries `current_password`, checked by [`check`] for the signed-in
/// user under the login limits (OWASP ASVS 5.0 6.2.3; OWASP Authentication Cheat Sheet,
/// "Require re-authentication for sensitive features"). The user's row when it is right; 403
/// `wrong_password` otherwise, so the bearer token itself is not put in doubt.
pub async fn reauthenticate(
    state: &AppState,
    user: &crate::extract::AuthUser,
    current_password: SecretString,
    ip: Option<IpAddr>,
) -> Result<User> {
    // Checked first: it costs no hash and no attempt, and tells the client to step up before it
    // asks the user for the password.
    crate::mfa::require_recent_second_factor(state, user).await?;
    // A stolen access token must not become a way to guess the password: the same limits as
    // login apply, on the same counters.
    let account = Account::SignedIn {
        id: user.user_id,
        email: &user.claims.email,
    };
    match check(state, account, current_password, ip, None).await? {
        Some(checked) => Ok(checked),
        None => {
            tracing::info!(user_id = %user.user_id, "re-authentication refused");
            Err(ApiError::WrongPassword)
        }
    }
}

/// After a successful check: when the stored hash's cost differs from the configured one,
/// replaces it with a hash of `password` at the configured cost (OWASP Password Storage Cheat
/// Sheet, "Upgrading the work factor"). Best effort: the password is verified, so a busy hashing
/// pool or database must not fail the request; the next sign-in tries again.
pub async fn upgrade_hash(state: &AppState, user: &mut User, password: SecretString) {
    if !state.hasher.needs_rehash(&user.password_hash) {
        return;
    }
    let outcome = async {
        let upgraded = state.hasher.hash(password).await?;
        let mut connection = state.db.acquire().await?;
        let replaced = users::replace_password_hash(
            &mut connection,
            user.id,
            &user.password_hash,
            &upgraded,
            users::Replacement::Rehash,
        )
        .await?;
        Ok::<_, ApiError>(replaced.then_some(upgraded))
    }
    .await;
    match outcome {
        Ok(Some(upgraded)) => {
            tracing::info!(user_id = %user.id, cost = state.hasher.cost(), "password rehashed");
            user.password_hash = upgraded;
        }
        // The hash changed meanwhile; the caller's own compare-and-set refuses to build on it.
        Ok(None) => {}
        Err(error) => tracing::warn!(user_id = %user.id, %error, "password rehash postponed"),
    }
}
