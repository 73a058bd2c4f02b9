//! Brute-force limits on password checks, counted in PostgreSQL so they hold across every origin
//! instance (OWASP ASVS 5.0 6.3.1: no more than 100 failed attempts per hour on one account; OWASP
//! Authentication Cheat Sheet, "Protect Against Automated Attacks").
//!
//! Three counters, each over a fixed window of `LOGIN_LIMIT_WINDOW_SECS` that starts at its first
//! attempt:
//! - the account from one client address (`LOGIN_LIMIT_PER_ACCOUNT_AND_IP`, default 10): stops a
//!   single attacker early, and locks out only that attacker's address;
//! - the account from anywhere (`LOGIN_LIMIT_PER_ACCOUNT`, default 20 per 15 minutes: any 60
//!   minutes overlap at most five windows, so at most 100 an hour): stops a distributed guess;
//! - the client address across accounts (`LOGIN_LIMIT_PER_IP`, default 100): stops credential
//!   stuffing from one address.
//!
//! An IPv6 client is counted by its /64, the block one subscriber usually holds: counting single
//! addresses would let anyone with a /64 rotate through 2^64 of them. IPv4-mapped addresses count
//! as the IPv4 address.
//!
//! A client (address or /64) that has signed in to an account within [`TRUSTED_CLIENT_DAYS`] is
//! not held to that account's account-wide limit, only to its own per-client ones: an attacker
//! filling the account-wide limit from elsewhere does not lock the owner out where they usually
//! sign in (OWASP Authentication Cheat Sheet, "Account Lockout": lockout must not become a denial
//! of service).
//!
//! [`reserve`] counts an attempt on all its counters in one transaction before the password is
//! verified, and rolls the count back when any counter is over its limit: concurrent guesses
//! queue on the counters' row locks, so none slips past a limit, and an attempt refused by one
//! limit does not use up the others. [`release`] gives the attempt back when the password was
//! right. Unknown accounts are counted exactly like known ones, so a 429 reveals nothing about who
//! has an account. Counter rows are locked in key order everywhere, so two checks never deadlock.

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

/// How long a client that signed in to an account stays exempt from that account's account-wide
/// limit.
pub const TRUSTED_CLIENT_DAYS: i64 = 30;

/// The counters one password check touches, with their limits, in key order.
#[derive(Debug, Clone)]
pub struct Counters {
    keys: Vec<([u8; 32], u32)>,
    /// The per-account-and-address counter, cleared on success.
    pair: Option<[u8; 32]>,
    /// The account-wide counter, which a trusted client is not held to.
    account: [u8; 32],
    /// The key under which this client is trusted for this account.
    trusted: Option<[u8; 32]>,
}

impl Counters {
    /// The counters of a check on the account named `email` from `ip`. The account is named as
    /// PostgreSQL's `lower()` folds it, the same folding the account lookup uses, so no spelling
    /// of an address finds the account under another counter.
    pub async fn for_check(
        connection: &mut PgConnection,
        limits: &LoginLimits,
        email: &str,
        ip: Option<IpAddr>,
    ) -> Result<Self> {
        let account = crate::users::folded_email(connection, email).await?;
        let account_key = key(&["account", &account]);
        let mut keys = vec![(account_key, limits.per_account)];
        let (mut pair, mut trusted) = (None, None);
        if let Some(ip) = ip {
            let client = gatehouse_shared::api::client_block(ip);
            let pair_key = key(&["account+ip", &account, &client]);
            keys.push((pair_key, limits.per_account_and_ip));
            keys.push((key(&["ip", &client]), limits.per_ip));
            pair = Some(pair_key);
            trusted = Some(key(&["trusted", &account, &client]));
        }
        keys.sort();
        Ok(Counters {
            keys,
            pair,
            account: account_key,
            trusted,
        })
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

/// Counts one attempt on every counter (a new window for a counter whose window has passed), or,
/// when that would take any counter over its limit, counts nothing and refuses with 429.
pub async fn reserve(
    connection: &mut PgConnection,
    limits: &LoginLimits,
    counters: &Counters,
    now: OffsetDateTime,
) -> Result<()> {
    let mut tx = sqlx::Connection::begin(&mut *connection).await?;
    let trusted = match counters.trusted {
        Some(key) => {
            sqlx::query_scalar!(
                r#"select exists (select 1 from login_trusted_clients
                   where key = $1 and last_success > $2) as "trusted!""#,
                key.as_slice(),
                now - time::Duration::days(TRUSTED_CLIENT_DAYS),
            )
            .fetch_one(&mut *tx)
            .await?
        }
        None => false,
    };
    // `unnest` yields the keys in array order, which is key order: rows are locked in that order.
    let rows = sqlx::query!(
        "insert into login_attempts as a (key, window_start, attempts)
         select k, $2, 1 from unnest($1::bytea[]) with ordinality as t(k, n) order by n
         on conflict (key) do update set
           attempts = case when a.window_start <= $3 then 1 else a.attempts + 1 end,
           window_start = case when a.window_start <= $3 then $2 else a.window_start end
         returning key, attempts, window_start",
        &counters.key_bytes()[..],
        now,
        now - limits.window,
    )
    .fetch_all(&mut *tx)
    .await?;
    let blocked_until = rows
        .iter()
        .filter(|row| i64::from(row.attempts) > i64::from(counters.limit_of(&row.key)))
        // A client the owner signs in from is held to its own limits, not the account-wide one,
        // so guesses from elsewhere cannot lock the owner out there.
        .filter(|row| !(trusted && row.key.as_slice() == counters.account))
        .map(|row| row.window_start + limits.window)
        .max();
    match blocked_until {
        Some(until) => {
            tx.rollback().await?;
            Err(ApiError::limited_until(until, now))
        }
        None => {
            tx.commit().await?;
            Ok(())
        }
    }
}

/// Counts one request from the client at `ip` on the counter named `name` (a route family), over
/// `window`; past `limit` in the window, refuses with 429 and counts nothing. A request without a
/// known client address is not counted, as for the login limits.
pub async fn count_request(
    connection: &mut PgConnection,
    name: &str,
    ip: Option<IpAddr>,
    limit: u32,
    window: Duration,
    now: OffsetDateTime,
) -> Result<()> {
    let Some(ip) = ip else {
        return Ok(());
    };
    let key = key(&[name, &gatehouse_shared::api::client_block(ip)]);
    let mut tx = sqlx::Connection::begin(&mut *connection).await?;
    let row = sqlx::query!(
        "insert into login_attempts as a (key, window_start, attempts) values ($1, $2, 1)
         on conflict (key) do update set
           attempts = case when a.window_start <= $3 then 1 else a.attempts + 1 end,
           window_start = case when a.window_start <= $3 then $2 else a.window_start end
         returning attempts, window_start",
        key.as_slice(),
        now,
        now - window,
    )
    .fetch_one(&mut *tx)
    .await?;
    if i64::from(row.attempts) > i64::from(limit) {
        tx.rollback().await?;
        let until = row.window_start + window;
        return Err(ApiError::limited_until(until, now));
    }
    tx.commit().await?;
    Ok(())
}

/// After a correct password: the attempt is given back on the account and address counters,
/// and the account's counter for this address starts over. One statement per row, in key order.
pub async fn release(connection: &mut PgConnection, counters: &Counters) -> Result<()> {
    for (key, _) in &counters.keys {
        if Some(*key) == counters.pair {
            sqlx::query!("delete from login_attempts where key = $1", key.as_slice())
                .execute(&mut *connection)
                .await?;
        } else {
            sqlx::query!(
                "update login_attempts set attempts = greatest(attempts - 1, 0) where key = $1",
                key.as_slice(),
            )
            .execute(&mut *connection)
            .await?;
        }
    }
    Ok(())
}

/// After a correct password, on a pooled connection: [`release`], and the client becomes (or
/// stays) trusted for the account. Best effort: the password was right, so a database hiccup here
/// must not fail the request; the attempt then stays counted until its window ends.
pub async fn give_back(db: &crate::db::Database, counters: &Counters, now: OffsetDateTime) {
    let outcome = async {
        let mut connection = db.acquire().await?;
        release(&mut connection, counters).await?;
        if let Some(key) = counters.trusted {
            sqlx::query!(
                "insert into login_trusted_clients (key, last_success) values ($1, $2)
                 on conflict (key) do update set last_success = excluded.last_success",
                key.as_slice(),
                now,
            )
            .execute(&mut *connection)
            .await?;
        }
        Ok::<(), ApiError>(())
    }
    .await;
    if let Err(error) = outcome {
        tracing::warn!(%error, "login attempt not given back");
    }
}

/// Deletes counters whose window ended before `now`, and trust not renewed for
/// [`TRUSTED_CLIENT_DAYS`].
pub async fn purge(
    connection: &mut PgConnection,
    limits: &LoginLimits,
    now: OffsetDateTime,
) -> Result<u64> {
    // Request counters (`count_request`) share the table; the longest window keeps them all.
    let window = limits.window.max(crate::mail::MAIL_IP_WINDOW);
    let counters = sqlx::query!(
        "delete from login_attempts where window_start <= $1",
        now - window,
    )
    .execute(&mut *connection)
    .await?
    .rows_affected();
    sqlx::query!(
        "delete from login_trusted_clients where last_success <= $1",
        now - time::Duration::days(TRUSTED_CLIENT_DAYS),
    )
    .execute(&mut *connection)
    .await?;
    Ok(counters)
}
