//! Emergency revocation of signing keys. `gatehouse-origin key revoke KID` records the key in
//! `revoked_signing_keys`; from then on:
//! - every origin refuses tokens it signed (the check rides on the session query each
//!   authenticated request already makes, so it costs no extra round trip);
//! - the JWKS stops publishing it (within [`REFRESH`], the life of the in-memory copy that keeps
//!   this public route off the database);
//! - the revocation list names it, so every edge refuses its tokens within
//!   `REVOCATION_REFRESH_SECS`, even while it still holds a key set with the key in it;
//! - an origin configured to sign with it refuses to start.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::error::Result;

/// How long the JWKS route reuses its copy of the revoked kids.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Records `kid` as revoked at `now`; false when it already was.
pub async fn revoke(connection: &mut PgConnection, kid: &str, now: OffsetDateTime) -> Result<bool> {
    let inserted = sqlx::query!(
        "insert into revoked_signing_keys (kid, revoked_at) values ($1, $2)
         on conflict (kid) do nothing",
        kid,
        now,
    )
    .execute(connection)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Every revoked kid.
pub async fn revoked(connection: &mut PgConnection) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar!("select kid from revoked_signing_keys order by kid")
            .fetch_all(connection)
            .await?,
    )
}

/// The revoked kids as the JWKS route sees them: read at most once per [`REFRESH`].
#[derive(Clone, Default)]
pub struct RevokedKeys(Arc<Mutex<Option<Snapshot>>>);

/// The set, and when it was read (on the application's clock).
type Snapshot = (OffsetDateTime, Arc<HashSet<String>>);

impl RevokedKeys {
    /// The current set at `now`. If the database cannot be read, the last set read (or none): the
    /// origin and the edges still refuse the key's tokens on their own checks.
    pub async fn current(
        &self,
        db: &crate::db::Database,
        now: OffsetDateTime,
    ) -> Arc<HashSet<String>> {
        let held = self.0.lock().expect("not poisoned").clone();
        if let Some((read_at, kids)) = &held
            && now - *read_at < REFRESH
        {
            return Arc::clone(kids);
        }
        let fresh = async {
            let mut connection = db.acquire().await?;
            revoked(&mut connection).await
        }
        .await;
        match fresh {
            Ok(kids) => {
                let kids = Arc::new(kids.into_iter().collect::<HashSet<_>>());
                *self.0.lock().expect("not poisoned") = Some((now, Arc::clone(&kids)));
                kids
            }
            Err(error) => {
                tracing::warn!(%error, "revoked signing keys not read; using the last set");
                held.map(|(_, kids)| kids).unwrap_or_default()
            }
        }
    }
}
