//! Brute-force limits on password checks, counted in PostgreSQL so they hold across every origin
//! instance (OWASP ASVS 5.0 6.3.1: at most 100 failed attempts per hour on one account; OWASP
//! Authentication Cheat Sheet, "Protect Against Automated Attacks").
//!
//! Three counters, each over a fixed window of `LOGIN_LIMIT_WINDOW_SECS` that starts at its first
//! attempt:
//! - the account from one client address (`LOGIN_LIMIT_PER_ACCOUNT_AND_IP`, default 10): stops a
//!   single attacker early, and locks out only that attacker's address;
//! - the account from anywhere (`LOGIN_LIMIT_PER_ACCOUNT`, default 25 per 15 minutes, so at most
//!   100 an hour): stops a distributed guess at one password;
//! - the client address across accounts (`LOGIN_LIMIT_PER_IP`, default 100): stops credential
//!   stuffing from one address.
//!
//! Against locking a victim out: an attempt refused by a limit is not counted, so an attacker
//! stopped at the per-address limit cannot push the account-wide counter on; a successful check
//! gives its reservation back; and a lockout ends with its window (the 429 says when, in
//! `Retry-After`), never waiting on an operator. Unknown accounts are counted exactly like known
//! ones, so a 429 reveals nothing about who has an account.
//!
//! Every check runs `check` first (refused at once, no bcrypt spent), then `reserve` before the
//! password is verified, so concurrent guesses cannot all slip past one check; afterwards
//! `release` undoes the reservation when the password was right.

use std::net::IpAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::error::{ApiError, Result};

/// The limits; from configuration.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Length of each counter's window.
    pub window: Duration,
    /// Attempts on one account from anywhere per window.
    pub per_account: u32,
    /// Attempts on one account from one address per window.
    pub per_account_and_ip: u32,
    /// Attempts from one address, whatever the account, per window.
    pub per_ip: u32,
}

/// The counters one password check touches, with their limits.
#[derive(Debug, Clone)]
pub struct Counters {
    keys: Vec<([u8; 32], u32)>,
    /// The per-account-and-address counter, cleared on success.
    pair: Option<[u8; 32]>,
}

impl Counters {
    /// The counters of a check on `account` (a normalized email) from `ip`.
    pub fn new(limits: &LoginLimits, account: &str, ip: Option<IpAddr>) -> Self {
        let account = account.to_lowercase();
        let mut keys = vec![(key(&["account", &account]), limits.per_account)];
        let mut pair = None;
        if let Some(ip) = ip {
            let ip = ip.to_string();
            let pair_key = key(&["account+ip", &account, &ip]);
            keys.push((pair_key, limits.per_account_and_ip));
            keys.push((key(&["ip", &ip]), limits.per_ip));
            pair = Some(pair_key);
        }
        Counters { keys, pair }
    }

    fn key_bytes(&self) -> Vec<Vec<u8>> {
        self.keys.iter().map(|(key, _)| key.to_vec()).collect()
    }

    fn limit_of(&self, key: &[u8]) -> u32 {
        self.keys
            .iter()
            .find(|(candidate, _)| candidate.as_slice() == key)
            .map_or(0, |(_, limit)| *limit)
    }
}

/// SHA-256 over the NUL-separated parts: a fixed-size key that does not keep the email in clear.
fn key(parts: &[&str]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize().into()
}

/// Refuses with 429 when any counter is at its limit in its current window.
pub async fn check(
    connection: &mut PgConnection,
    limits: &LoginLimits,
    counters: &Counters,
    now: OffsetDateTime,
) -> Result<()> {
    let rows: Vec<(Vec<u8>, i32, OffsetDateTime)> = sqlx::query_as(
        "select key, attempts, window_start from login_attempts
         where key = any($1) and window_start > $2",
    )
    .bind(counters.key_bytes())
    .bind(now - limits.window)
    .fetch_all(&mut *connection)
    .await?;
    let blocked_until = rows
        .iter()
        .filter(|(key, attempts, _)| *attempts as i64 >= i64::from(counters.limit_of(key)))
        .map(|(_, _, start)| *start + limits.window)
        .max();
    match blocked_until {
        Some(until) => Err(ApiError::RateLimited {
            retry_after_secs: (until - now).whole_seconds().max(1) as u64,
        }),
        None => Ok(()),
    }
}

/// Counts one attempt on every counter (a new window for a counter whose window has passed).
pub async fn reserve(
    connection: &mut PgConnection,
    limits: &LoginLimits,
    counters: &Counters,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "insert into login_attempts as a (key, window_start, attempts)
         select k, $2, 1 from unnest($1::bytea[]) as k
         on conflict (key) do update set
           attempts = case when a.window_start <= $3 then 1 else a.attempts + 1 end,
           window_start = case when a.window_start <= $3 then $2 else a.window_start end",
    )
    .bind(counters.key_bytes())
    .bind(now)
    .bind(now - limits.window)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// After a correct password: the attempt is given back on the account and address counters,
/// and the account's counter for this address starts over.
pub async fn release(connection: &mut PgConnection, counters: &Counters) -> Result<()> {
    sqlx::query(
        "update login_attempts set attempts = greatest(attempts - 1, 0) where key = any($1)",
    )
    .bind(counters.key_bytes())
    .execute(&mut *connection)
    .await?;
    if let Some(pair) = counters.pair {
        sqlx::query("delete from login_attempts where key = $1")
            .bind(pair.as_slice())
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

/// Deletes counters whose window ended before `now`.
pub async fn purge(
    connection: &mut PgConnection,
    limits: &LoginLimits,
    now: OffsetDateTime,
) -> Result<u64> {
    Ok(
        sqlx::query("delete from login_attempts where window_start <= $1")
            .bind(now - limits.window)
            .execute(&mut *connection)
            .await?
            .rows_affected(),
    )
}
