//! The PostgreSQL pool, migrations, and a health monitor that makes an outage fail fast.
//!
//! sqlx keeps retrying a refused connection until the acquire timeout (30 s by default) runs out,
//! so without help every request during an outage would hang for that long. A background task
//! checks the server once a second over its own connection, outside the pool, so a saturated pool
//! never looks like an outage; two failed checks in a row mark it down. While the server is down, [`Database::acquire`] answers
//! `DatabaseUnavailable` at once, and requests already waiting for a connection are released
//! with the same answer. When the server returns, the next check reopens the gate; the pool's
//! test-before-acquire replaces the dead connections, with no restart.

use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::watch;

use crate::error::{ApiError, Result};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How often the monitor checks the server.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Consecutive failed checks before the server counts as down: one slow ping is not an outage.
const FAILURES_BEFORE_DOWN: u32 = 2;

/// How long one check may take before it counts as failed. Generous next to a healthy
/// round trip (well under a millisecond locally) and short next to any client's patience.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Most connections open at once.
    pub max_connections: u32,
    /// How long a request waits for a free connection before a 503.
    pub acquire_timeout: Duration,
    /// Ping a pooled connection before handing it out, so dead ones are replaced.
    pub test_before_acquire: bool,
}

/// The pool plus the monitor's verdict.
#[derive(Clone)]
pub struct Database {
    pool: PgPool,
    up: watch::Receiver<bool>,
    _monitor: Arc<MonitorGuard>,
}

struct MonitorGuard(tokio::task::JoinHandle<()>);

impl Drop for MonitorGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Database {
    /// Opens a lazily connecting pool and starts the monitor. Connecting happens on first use.
    pub fn connect(url: &str, settings: &PoolSettings) -> Result<Self, sqlx::Error> {
        Ok(Database::connect_with(url.parse()?, settings))
    }

    /// [`Database::connect`] with parsed options.
    pub fn connect_with(options: PgConnectOptions, settings: &PoolSettings) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .test_before_acquire(settings.test_before_acquire)
            .connect_lazy_with(options.clone());
        Database::with_monitor(pool, options)
    }

    /// Wraps an existing pool (tests get theirs from `#[sqlx::test]`).
    pub fn from_pool(pool: PgPool) -> Self {
        let options = pool.connect_options().as_ref().clone();
        Database::with_monitor(pool, options)
    }

    fn with_monitor(pool: PgPool, options: PgConnectOptions) -> Self {
        let (report, up) = watch::channel(true);
        let monitor = tokio::spawn(monitor(options, report));
        Database {
            pool,
            up,
            _monitor: Arc::new(MonitorGuard(monitor)),
        }
    }

    /// The pool, for work that must not be cut short (migrations, CLI commands).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the last check reached the server.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// A pooled connection, or `DatabaseUnavailable` at once while the server is down, or after
    /// the acquire timeout when every connection is busy.
    pub async fn acquire(&self) -> Result<PoolConnection<Postgres>> {
        let mut up = self.up.clone();
        if !*up.borrow_and_update() {
            return Err(ApiError::DatabaseUnavailable(None));
        }
        tokio::select! {
            connection = self.pool.acquire() => Ok(connection?),
            _ = up.wait_for(|up| !*up) => Err(ApiError::DatabaseUnavailable(None)),
        }
    }

    /// Starts a transaction on a fresh connection, with the same fail-fast rule.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        let connection = self.acquire().await?;
        Ok(sqlx::Transaction::begin(connection, None).await?)
    }
}

async fn monitor(options: PgConnectOptions, report: watch::Sender<bool>) {
    let mut connection: Option<PgConnection> = None;
    let mut failures = 0;
    let mut ticks = tokio::time::interval(CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let healthy = tokio::time::timeout(CHECK_TIMEOUT, async {
            if connection.is_none() {
                connection = Some(PgConnection::connect_with(&options).await?);
            }
            connection.as_mut().expect("just connected").ping().await
        })
        .await
        .is_ok_and(|result| result.is_ok());
        if healthy {
            failures = 0;
        } else {
            connection = None;
            failures += 1;
        }
        let healthy = healthy || failures < FAILURES_BEFORE_DOWN;
        report.send_if_modified(|up| {
            let changed = *up != healthy;
            if changed && healthy {
                tracing::info!("database reachable again");
            } else if changed {
                tracing::error!("database unreachable; answering 503 until it returns");
            }
            *up = healthy;
            changed
        });
    }
}
