//! Brute-force limits on password checks, counted in PostgreSQL so they hold across every origin
//! instance (OWASP ASVS 5.0 6.3.1: no more than 100 failed attempts per hour on one account; OWASP
//! Authentication Cheat Sheet, "Protect Against Automated Attacks").
//!
//! Three counters, each over a fixed window of `LOGIN_LIMIT_WINDOW_SECS` that starts at its first
//! attempt:
//! - the account from one client (`LOGIN_LIMIT_PER_ACCOUNT_AND_IP`, default 10): stops a single
//!   attacker early, and locks out only that attacker's address;
//! - the account from anywhere (`LOGIN_LIMIT_PER_ACCOUNT`, default 20 per 15 minutes: any 60
//!   minutes overlap at most five windows, so at most 100 an hour): stops a distributed guess;
//! - the client across accounts (`LOGIN_LIMIT_PER_IP`, default 100): stops credential stuffing
//!   from one address.
//!
//! A client is an IPv4 address or an IPv6 /64, the block one subscriber usually holds; IPv6
//! clients are also counted by their /56 and /48 at `CLIENT_LIMIT_IPV6_56_FACTOR` (4) and
//! `CLIENT_LIMIT_IPV6_48_FACTOR` (16) times the per-client limit, so a subscriber holding a /48
//! cannot multiply the limit by moving between its 65,536 /64s (see
//! `gatehouse_shared::api::client_blocks`).
//!
//! A login that carries a device token (returned by an earlier successful login to the same
//! account, see `gatehouse_shared::device`) is counted on that device's own counter, at the
//! account-wide limit, instead of the account-wide one: guesses from elsewhere do not lock the
//! owner out of their own devices, and a stolen device token buys at most the same number of
//! guesses again (OWASP, "Slow Down Online Guessing Attacks with Device Cookies"; OWASP
//! Authentication Cheat Sheet, "Account Lockout": lockout must not become a denial of service).
//!
//! [`reserve`] counts an attempt on all its counters in one transaction before the password is
//! verified, and rolls the count back when any counter is over its limit: concurrent guesses
//! queue on the counters' row locks, so none slips past a limit, and an attempt refused by one
//! limit does not use up the others. [`give_back`] returns exactly that attempt when the password
//! was right, and never resets a counter: others behind the same address, or elsewhere, share
//! them. Unknown accounts are counted exactly like known ones, so a 429 reveals nothing about who
//! has an account. Counter rows are locked in key order everywhere, so two checks never deadlock.
//!
//! Counters are named by HMAC-SHA256 under a key derived from the root server secret, not by the
//! address or account they count: a database reader cannot reverse an IPv4 counter by
//! enumerating 2^32 addresses, nor confirm an account by hashing a guessed address.

use std::net::IpAddr;
use std::time::Duration;

use gatehouse_shared::api::{BlockSize, client_blocks};
use gatehouse_shared::device::DeviceToken;
use hmac::{Hmac, Mac};
use sha2::Sha256;
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
    /// Attempts on one account from one client per window.
    pub per_account_and_ip: u32,
    /// Attempts from one client, whatever the account, per window.
    pub per_ip: u32,
    /// Registrations from one client per window (`REGISTER_LIMIT_PER_IP`).
    pub register_per_ip: u32,
    /// Second-factor codes tried on one account per window, right ones given back
    /// (`MFA_LIMIT_PER_ACCOUNT`).
    pub mfa_per_account: u32,
    /// How many times a per-client limit an IPv6 /56 may reach.
    pub ipv6_56_factor: u32,
    /// How many times a per-client limit an IPv6 /48 may reach.
    pub ipv6_48_factor: u32,
}

impl LoginLimits {
    /// The limit of a block of `size` for a per-client `limit`.
    fn scaled(&self, size: BlockSize, limit: u32) -> u32 {
        match size {
            BlockSize::Client => limit,
            BlockSize::Ipv6Slash56 => limit.saturating_mul(self.ipv6_56_factor),
            BlockSize::Ipv6Slash48 => limit.saturating_mul(self.ipv6_48_factor),
        }
    }

    /// The counters of `family` (a route family) for the client at `ip`: one per block it is
    /// counted in, each at its scaled `limit`.
    fn client_counters(
        &self,
        names: &CounterNames,
        family: &str,
        ip: IpAddr,
        limit: u32,
    ) -> impl Iterator<Item = ([u8; 32], u32)> {
        client_blocks(ip)
            .into_iter()
            .map(move |(size, block)| (names.name(&[family, &block]), self.scaled(size, limit)))
    }
}

/// How long a device token stays trusted after its last successful login.
pub const TRUSTED_DEVICE_DAYS: i64 = 30;

/// Names counters and trusted devices: HMAC-SHA256 under a key derived from the root secret.
#[derive(Clone)]
pub struct CounterNames(Hmac<Sha256>);

impl CounterNames {
    /// Names under `key`.
    pub fn new(key: [u8; 32]) -> Self {
        CounterNames(Hmac::new_from_slice(&key).expect("HMAC takes any key length"))
    }

    /// The name of the NUL-separated `parts`: fixed-size, and without the key it says nothing of
    /// the address or account in it.
    fn name(&self, parts: &[&str]) -> [u8; 32] {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for CounterNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CounterNames(***)")
    }
}

/// The counters one password check touches, with their limits, in key order.
#[derive(Debug, Clone)]
pub struct Counters {
    keys: Vec<([u8; 32], u32)>,
}

impl Counters {
    /// The one counter of wrong second-factor codes tried on the account `user_id` (RFC 6238
    /// section 5.2 and NIST SP 800-63B section 5.2.2 ask for a limit on failed attempts): checked
    /// with [`peek`] before a code is, and counted with [`reserve`] only when it is wrong.
    pub fn for_mfa(limits: &LoginLimits, names: &CounterNames, user_id: uuid::Uuid) -> Self {
        let key = names.name(&["mfa", &user_id.to_string()]);
        Counters {
            keys: vec![(key, limits.mfa_per_account)],
        }
    }

    /// The counters of a check on the account named `email` from `ip`, with the device token the
    /// request carried. The account is named as PostgreSQL's `lower()` folds it, the same folding
    /// the account lookup uses, so no spelling of an address finds the account under another
    /// counter.
    pub async fn for_check(
        connection: &mut PgConnection,
        limits: &LoginLimits,
        names: &CounterNames,
        email: &str,
        ip: Option<IpAddr>,
        device: Option<&DeviceToken>,
        now: OffsetDateTime,
    ) -> Result<Self> {
        let (account, credential) = account_of(connection, email).await?;
        let trusted_device = match device {
            Some(token) => {
                let key = device_key(names, &account, credential.as_deref(), token);
                let trusted = sqlx::query_scalar!(
                    r#"select exists (select 1 from login_trusted_clients
                       where key = $1 and last_success > $2) as "trusted!""#,
                    key.as_slice(),
                    now - time::Duration::days(TRUSTED_DEVICE_DAYS),
                )
                .fetch_one(&mut *connection)
                .await?;
                trusted.then_some(key)
            }
            None => None,
        };
        // A trusted device is held to its own counter in place of the account-wide one.
        let account_counter = trusted_device.unwrap_or_else(|| names.name(&["account", &account]));
        let mut keys = vec![(account_counter, limits.per_account)];
        if let Some(ip) = ip {
            let client = gatehouse_shared::api::client_block(ip);
            keys.push((
                names.name(&["account+ip", &account, &client]),
                limits.per_account_and_ip,
            ));
            keys.extend(limits.client_counters(names, "ip", ip, limits.per_ip));
        }
        keys.sort();
        Ok(Counters { keys })
    }
}

/// The account named `email` as counters name it, and its password hash if it exists. Folded by
/// PostgreSQL's `lower()`, which the unique index and the account lookup apply, so no spelling of
/// an address counts apart from another.
async fn account_of(
    connection: &mut PgConnection,
    email: &str,
) -> Result<(String, Option<String>)> {
    let row = sqlx::query!(
        r#"select lower($1) as "account!",
                  (select password_hash from users where lower(email) = lower($1)) as credential"#,
        email,
    )
    .fetch_one(connection)
    .await?;
    Ok((row.account, row.credential))
}

/// The name under which `token` is trusted for `account` (folded), in `login_trusted_clients`
/// and, as the device's own counter, in `login_attempts`. The account's password hash is part of
/// it, so a password change or reset (a new hash) withdraws the trust of every device token the
/// account had: one stolen with the old password stops counting apart.
fn device_key(
    names: &CounterNames,
    account: &str,
    credential: Option<&str>,
    token: &DeviceToken,
) -> [u8; 32] {
    names.name(&["device", account, credential.unwrap_or(""), token.expose()])
}

/// Counts one attempt on every counter (a new window for a counter whose window has passed), or,
/// when that would take any counter over its limit, counts nothing and refuses with 429.
pub async fn reserve(
    connection: &mut PgConnection,
    limits: &LoginLimits,
    counters: &Counters,
    now: OffsetDateTime,
) -> Result<()> {
    count(connection, &counters.keys, limits.window, now).await
}

/// Refuses with 429 when any of `counters` has reached its limit in its current window, counting
/// nothing. The counters' rows stay locked until the caller's transaction ends, so concurrent
/// checks on one account run one after another and each sees the failures counted before it.
/// For checks that count only failures ([`crate::mfa`]'s codes): the caller calls [`reserve`]
/// when the check fails, in the same transaction, and commits.
pub async fn peek(
    connection: &mut PgConnection,
    limits: &LoginLimits,
    counters: &Counters,
    now: OffsetDateTime,
) -> Result<()> {
    let names: Vec<Vec<u8>> = counters.keys.iter().map(|(key, _)| key.to_vec()).collect();
    // One statement reads and locks each counter, creating an empty one where there is no row
    // yet (the first failure of a window, or after the janitor): there is always a row to lock,
    // or concurrent first checks would all pass before any of them counted. The no-op update is
    // what takes the lock and returns the row as it is.
    let rows = sqlx::query!(
        "insert into login_attempts as a (key, window_start, attempts)
         select k, $2, 0 from unnest($1::bytea[]) with ordinality as t(k, n) order by n
         on conflict (key) do update set attempts = a.attempts
         returning key, attempts, window_start",
        &names[..],
        now,
    )
    .fetch_all(connection)
    .await?;
    let limit_of = |key: &[u8]| {
        counters
            .keys
            .iter()
            .find(|(candidate, _)| candidate.as_slice() == key)
            .map_or(0, |(_, limit)| *limit)
    };
    let blocked_until = rows
        .iter()
        .filter(|row| row.window_start > now - limits.window)
        .filter(|row| i64::from(row.attempts) >= i64::from(limit_of(&row.key)))
        .map(|row| row.window_start + limits.window)
        .max();
    match blocked_until {
        Some(until) => Err(ApiError::limited_until(until, now)),
        None => Ok(()),
    }
}

/// Counts one request from the client at `ip` on the counters of `family` (a route family), over
/// `window`; past `limit` in the window (scaled for the wider IPv6 blocks), refuses with 429 and
/// counts nothing. A request without a known client address is not counted, as for the login
/// limits.
pub async fn count_request(
    connection: &mut PgConnection,
    state: &crate::AppState,
    family: &str,
    ip: Option<IpAddr>,
    limit: u32,
    window: Duration,
    now: OffsetDateTime,
) -> Result<()> {
    let Some(ip) = ip else {
        return Ok(());
    };
    let names = &state.counter_names;
    let mut keys: Vec<_> = (state.login_limits)
        .client_counters(names, family, ip, limit)
        .collect();
    keys.sort();
    count(connection, &keys, window, now).await
}

/// One attempt on each of `keys` (sorted) in one transaction, all or none.
async fn count(
    connection: &mut PgConnection,
    keys: &[([u8; 32], u32)],
    window: Duration,
    now: OffsetDateTime,
) -> Result<()> {
    let names: Vec<Vec<u8>> = keys.iter().map(|(key, _)| key.to_vec()).collect();
    let limit_of = |key: &[u8]| {
        keys.iter()
            .find(|(candidate, _)| candidate.as_slice() == key)
            .map_or(0, |(_, limit)| *limit)
    };
    let mut tx = sqlx::Connection::begin(&mut *connection).await?;
    // `unnest` yields the keys in array order, which is key order: rows are locked in that order.
    let rows = sqlx::query!(
        "insert into login_attempts as a (key, window_start, attempts)
         select k, $2, 1 from unnest($1::bytea[]) with ordinality as t(k, n) order by n
         on conflict (key) do update set
           attempts = case when a.window_start <= $3 then 1 else a.attempts + 1 end,
           window_start = case when a.window_start <= $3 then $2 else a.window_start end
         returning key, attempts, window_start",
        &names[..],
        now,
        now - window,
    )
    .fetch_all(&mut *tx)
    .await?;
    let blocked_until = rows
        .iter()
        .filter(|row| i64::from(row.attempts) > i64::from(limit_of(&row.key)))
        .map(|row| row.window_start + window)
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

/// After a correct password: this attempt, and only this one, is given back on every counter it
/// was counted on. No counter is reset: others share them (everyone behind one address shares its
/// counters, everyone shares the account's), and a reset would let each of the owner's logins
/// wipe an attacker's count. Best effort: the password was right, so a database hiccup here must
/// not fail the request; the attempt then stays counted until its window ends.
pub async fn give_back(db: &crate::db::Database, counters: &Counters) {
    let outcome = async {
        let mut connection = db.acquire().await?;
        // One statement per row, in key order, like every other writer of these rows.
        for (key, _) in &counters.keys {
            sqlx::query!(
                "update login_attempts set attempts = greatest(attempts - 1, 0) where key = $1",
                key.as_slice(),
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

/// After a successful login to the account named `email`: the device token to hand back. The
/// presented one if it is trusted for this account (its trust renewed), else a new one.
pub async fn trust_device(
    connection: &mut PgConnection,
    names: &CounterNames,
    email: &str,
    presented: Option<DeviceToken>,
    now: OffsetDateTime,
) -> Result<DeviceToken> {
    let (account, credential) = account_of(connection, email).await?;
    if let Some(token) = presented {
        let key = device_key(names, &account, credential.as_deref(), &token);
        let renewed = sqlx::query!(
            "update login_trusted_clients set last_success = $2 where key = $1 and last_success > $3",
            key.as_slice(),
            now,
            now - time::Duration::days(TRUSTED_DEVICE_DAYS),
        )
        .execute(&mut *connection)
        .await?
        .rows_affected();
        if renewed == 1 {
            return Ok(token);
        }
    }
    let token = DeviceToken::generate(&mut rand_core::OsRng);
    let key = device_key(names, &account, credential.as_deref(), &token);
    sqlx::query!(
        "insert into login_trusted_clients (key, last_success) values ($1, $2)",
        key.as_slice(),
        now,
    )
    .execute(&mut *connection)
    .await?;
    Ok(token)
}

/// Deletes counters whose window ended before `now`, and device trust not renewed for
/// [`TRUSTED_DEVICE_DAYS`].
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
        now - time::Duration::days(TRUSTED_DEVICE_DAYS),
    )
    .execute(&mut *connection)
    .await?;
    Ok(counters)
}
