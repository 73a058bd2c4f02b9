//! Signing keys kept in PostgreSQL, and emergency revocation.
//!
//! ## Keys in PostgreSQL (`SIGNING_KEYS=database`)
//! Every instance signs with the same current key and re-reads the keys every
//! `SIGNING_KEY_REFRESH_SECS`, so a rotation needs no restart and no coordination:
//! - `gatehouse-origin key rotate` (or `SIGNING_KEY_ROTATE_DAYS`) adds the next key, published at
//!   once and signing only after `JWKS_MAX_AGE_SECS` + `SIGNING_KEY_REFRESH_SECS` +
//!   [`ACTIVATION_MARGIN`]: by then every instance publishes it and every cached JWKS that lacked
//!   it has expired, so no verifier meets a token whose key it has never been offered;
//! - a retired key stays published and accepted until every token it signed has expired: its
//!   successor's activation + the refresh interval (an instance may sign with it that much
//!   longer) + the token lifetime + the largest leeway;
//! - private keys are sealed (XChaCha20-Poly1305, the kid as associated data) under a key
//!   derived from `SERVER_SECRET`: a database dump alone signs nothing (OWASP Cryptographic
//!   Storage: keys encrypted under a key-encryption key kept apart from the data).
//!
//! Creation is serialized by a table lock, so instances starting together on an empty table, or
//! due for a scheduled rotation together, add one key.
//!
//! ## Emergency revocation
//! `gatehouse-origin key revoke KID` records the key in `revoked_signing_keys`; from then on:
//! - every origin refuses tokens it signed (the check rides on the session query each
//!   authenticated request already makes, so it costs no extra round trip);
//! - the JWKS stops publishing it (within [`REFRESH`], the life of the in-memory copy that keeps
//!   this public route off the database);
//! - the revocation list names it, so every edge refuses its tokens within
//!   `REVOCATION_REFRESH_SECS`, even while it still holds a key set with the key in it;
//! - an origin configured to sign with it refuses to start; with keys in PostgreSQL, instances
//!   stop signing with it at their next refresh, on a new key made active at once (its tokens
//!   reach edges that have not seen it yet through their refetch on unknown key ids).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use ed25519_dalek::VerifyingKey;
use gatehouse_shared::signing::TokenSigner;
use gatehouse_shared::{ExposeSecret as _, SecretString};
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::AppState;
use crate::config::{Config, SigningKeySource, StoredKeySettings};
use crate::db::Database;
use crate::error::Result;
use crate::server_secret::TokenCipher;

/// Added to a new key's lead time for clocks and requests in flight.
pub const ACTIVATION_MARGIN: Duration = Duration::from_secs(5);

/// A signing key as stored.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub kid: String,
    pub public_key: Vec<u8>,
    pub sealed_private_key: Vec<u8>,
    pub created_at: OffsetDateTime,
    pub activates_at: OffsetDateTime,
    /// Named in `revoked_signing_keys`.
    pub revoked: bool,
}

/// What an instance signs with, and the other keys it publishes and accepts.
#[derive(Debug)]
pub struct Selection<'a> {
    pub signing: &'a StoredKey,
    pub others: Vec<&'a StoredKey>,
}

/// The keys an instance works with, opened.
#[derive(Debug)]
pub struct LoadedKeys {
    pub signer: TokenSigner,
    pub others: Vec<VerifyingKey>,
}

/// Among `keys` at `now`: the one to sign with, the latest whose activation has passed; and the
/// others to publish and accept: keys not active yet, and retired keys until `retain` after
/// their successor's activation. Revoked keys are neither. `None` when no key is active, or the
/// latest active one is revoked (an older key is never brought back).
pub fn select(keys: &[StoredKey], now: OffsetDateTime, retain: Duration) -> Option<Selection<'_>> {
    let mut ordered: Vec<&StoredKey> = keys.iter().collect();
    ordered.sort_by(|a, b| (a.activates_at, &a.kid).cmp(&(b.activates_at, &b.kid)));
    let current = ordered.iter().rposition(|key| key.activates_at <= now)?;
    let signing = ordered[current];
    if signing.revoked {
        return None;
    }
    let others = ordered
        .iter()
        .enumerate()
        .filter(|&(index, key)| {
            let upcoming = index > current;
            // A key before `current` has a successor, active already.
            let retained = index < current && ordered[index + 1].activates_at + retain > now;
            !key.revoked && (upcoming || retained)
        })
        .map(|(_, key)| *key)
        .collect();
    Some(Selection { signing, others })
}

/// How long a retired key stays published: an instance may sign with it for one more refresh
/// interval, and its last token lives `longest_validity`.
pub fn retention(settings: &StoredKeySettings, longest_validity: Duration) -> Duration {
    settings.refresh + longest_validity
}

/// How long after `key rotate` the new key signs: every cache of the JWKS has expired and every
/// instance has re-read the keys by then.
pub fn lead_time(settings: &StoredKeySettings, jwks_max_age: Duration) -> Duration {
    jwks_max_age + settings.refresh + ACTIVATION_MARGIN
}

/// Every stored key.
pub async fn stored(connection: &mut PgConnection) -> Result<Vec<StoredKey>> {
    Ok(sqlx::query_as!(
        StoredKey,
        r#"select k.kid, k.public_key, k.sealed_private_key, k.created_at, k.activates_at,
                  exists (select 1 from revoked_signing_keys r where r.kid = k.kid) as "revoked!"
           from signing_keys k"#,
    )
    .fetch_all(connection)
    .await?)
}

/// Serializes key creation for the rest of the transaction; readers are not blocked.
async fn lock_for_creation(connection: &mut PgConnection) -> Result<()> {
    sqlx::query("lock table signing_keys in share row exclusive mode")
        .execute(connection)
        .await?;
    Ok(())
}

/// A new key, published from `now`, signing from `activates_at`; its kid.
async fn insert(
    connection: &mut PgConnection,
    cipher: &TokenCipher,
    now: OffsetDateTime,
    activates_at: OffsetDateTime,
) -> Result<String> {
    let signer = TokenSigner::generate(&mut rand_core::OsRng);
    let kid = signer.kid().to_owned();
    let sealed = cipher.seal_bytes(signer.to_pkcs8_pem().as_bytes(), kid.as_bytes());
    let public_key = signer.verifying_key();
    sqlx::query!(
        "insert into signing_keys (kid, public_key, sealed_private_key, created_at, activates_at)
         values ($1, $2, $3, $4, $5)",
        kid,
        public_key.as_bytes().as_slice(),
        sealed,
        now,
        activates_at,
    )
    .execute(connection)
    .await?;
    Ok(kid)
}

/// Adds the next key, signing `lead` from `now`: its kid and activation.
pub async fn rotate(
    db: &Database,
    cipher: &TokenCipher,
    now: OffsetDateTime,
    lead: Duration,
) -> Result<(String, OffsetDateTime)> {
    let mut transaction = db.begin().await?;
    lock_for_creation(&mut transaction).await?;
    let activates_at = now + lead;
    let kid = insert(&mut transaction, cipher, now, activates_at).await?;
    transaction.commit().await?;
    Ok((kid, activates_at))
}

/// A scheduled rotation: adds the next key when the newest was created `every` ago or more.
/// Instances due together add one key: the check runs under the creation lock.
pub async fn rotate_if_due(
    db: &Database,
    cipher: &TokenCipher,
    now: OffsetDateTime,
    lead: Duration,
    every: Duration,
) -> Result<Option<(String, OffsetDateTime)>> {
    let mut transaction = db.begin().await?;
    lock_for_creation(&mut transaction).await?;
    let newest = sqlx::query_scalar!("select max(created_at) from signing_keys")
        .fetch_one(&mut *transaction)
        .await?;
    if newest.is_some_and(|created| created + every > now) {
        return Ok(None);
    }
    let activates_at = now + lead;
    let kid = insert(&mut transaction, cipher, now, activates_at).await?;
    transaction.commit().await?;
    Ok(Some((kid, activates_at)))
}

/// The keys to work with at `now`. When none is usable (a new database, or the current key
/// revoked), one is created, signing at once.
pub async fn load(
    db: &Database,
    cipher: &TokenCipher,
    now: OffsetDateTime,
    retain: Duration,
) -> anyhow::Result<LoadedKeys> {
    let mut connection = db.acquire().await?;
    let mut keys = stored(&mut connection).await?;
    if select(&keys, now, retain).is_none() {
        let mut transaction = db.begin().await?;
        lock_for_creation(&mut transaction).await?;
        // Another instance may have created one while this one waited for the lock.
        if select(&stored(&mut transaction).await?, now, retain).is_none() {
            let kid = insert(&mut transaction, cipher, now, now).await?;
            tracing::warn!(
                kid,
                "no usable signing key in the database: created one, signing now"
            );
        }
        transaction.commit().await?;
        keys = stored(&mut connection).await?;
    }
    let selection =
        select(&keys, now, retain).context("no usable signing key after creating one")?;
    let kid = &selection.signing.kid;
    let pem = cipher
        .open_bytes(&selection.signing.sealed_private_key, kid.as_bytes())
        .and_then(|plain| String::from_utf8(plain).ok())
        .map(SecretString::from)
        .with_context(|| {
            format!(
                "signing key {kid} does not open: is SERVER_SECRET the one it was sealed under?"
            )
        })?;
    let signer = TokenSigner::from_pkcs8_pem(pem.expose_secret())
        .with_context(|| format!("signing key {kid}"))?;
    anyhow::ensure!(
        signer.kid() == kid,
        "signing key {kid} holds the private key of {}",
        signer.kid()
    );
    let others = selection
        .others
        .iter()
        .map(|key| {
            let bytes: &[u8; 32] = key.public_key.as_slice().try_into().context("32 bytes")?;
            VerifyingKey::from_bytes(bytes).with_context(|| format!("public key {}", key.kid))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(LoadedKeys { signer, others })
}

/// With `SIGNING_KEYS=database`, reads the keys into `config` (creating the first when there is
/// none), so [`AppState::from_config`] can be built; otherwise `config` as it is.
pub async fn load_into(
    mut config: Config,
    db: &Database,
    now: OffsetDateTime,
) -> anyhow::Result<Config> {
    if let SigningKeySource::Database { settings, loaded } = &mut config.signing_key {
        let retain = retention(
            settings,
            crate::tokens::longest_validity(config.access_token_ttl),
        );
        let cipher = config.server_keys.signing_key_cipher();
        *loaded = Some(load(db, &cipher, now, retain).await?);
    }
    Ok(config)
}

/// Keeps `state`'s keys those of the database: every `settings.refresh`, rotates when the
/// schedule says so, then re-reads the keys. A failed read keeps the last keys (and says so).
pub async fn follow(state: AppState, settings: StoredKeySettings) {
    let cipher = state.server_keys.signing_key_cipher();
    let retain = retention(&settings, state.tokens.longest_validity());
    let lead = lead_time(&settings, state.jwks_max_age);
    let mut interval = tokio::time::interval(settings.refresh);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let now = state.clock.now();
        if let Some(every) = settings.rotate_every {
            match rotate_if_due(&state.db, &cipher, now, lead, every).await {
                Ok(Some((kid, activates_at))) => {
                    tracing::info!(kid, %activates_at, "scheduled rotation: added the next signing key");
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "scheduled signing-key rotation failed"),
            }
        }
        match load(&state.db, &cipher, now, retain).await {
            Ok(keys) => {
                let kid = keys.signer.kid().to_owned();
                if kid != state.tokens.signing_kid() {
                    tracing::info!(kid, "signing with the next key");
                }
                state.tokens.replace_keys(keys.signer, &keys.others);
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "signing keys not re-read; keeping the last"
                );
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    const RETAIN: Duration = Duration::from_secs(1_000);

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + seconds).unwrap()
    }

    fn key(kid: &str, activates_at: i64) -> StoredKey {
        StoredKey {
            kid: kid.to_owned(),
            public_key: vec![0; 32],
            sealed_private_key: Vec::new(),
            created_at: at(activates_at - 100),
            activates_at: at(activates_at),
            revoked: false,
        }
    }

    fn kids(selection: &Selection<'_>) -> (String, Vec<String>) {
        (
            selection.signing.kid.clone(),
            selection.others.iter().map(|key| key.kid.clone()).collect(),
        )
    }

    #[test]
    fn a_new_key_is_published_before_it_signs_and_the_old_one_after_it_stops() {
        let keys = [key("old", 0), key("new", 100)];
        let before = |now| kids(&select(&keys, at(now), RETAIN).unwrap());

        // Published from creation, signing only from its activation.
        assert_eq!(before(99), ("old".into(), vec!["new".into()]));
        assert_eq!(before(100), ("new".into(), vec!["old".into()]));
        // The retired key stays until `retain` after its successor's activation, then goes.
        assert_eq!(before(1_099), ("new".into(), vec!["old".into()]));
        assert_eq!(before(1_100), ("new".into(), vec![]));
    }

    #[test]
    fn the_latest_active_key_signs_whatever_the_order_stored() {
        let keys = [key("c", 200), key("a", 0), key("b", 100), key("d", 5_000)];

        let (signing, others) = kids(&select(&keys, at(1_150), RETAIN).unwrap());

        assert_eq!(signing, "c");
        // b retired at 200 (kept until 1_200), a at 100 (gone at 1_100), d upcoming.
        assert_eq!(others, vec!["b".to_owned(), "d".to_owned()]);
    }

    #[test]
    fn revoked_keys_are_neither_used_nor_published_and_never_bring_an_older_key_back() {
        let mut keys = [key("old", 0), key("current", 100), key("next", 200)];
        keys[2].revoked = true;
        let (_, others) = kids(&select(&keys, at(150), RETAIN).unwrap());
        assert_eq!(others, vec!["old".to_owned()]);

        keys[1].revoked = true;
        assert!(select(&keys, at(150), RETAIN).is_none());
    }

    #[test]
    fn no_key_is_chosen_before_any_is_active() {
        assert!(select(&[], at(0), RETAIN).is_none());
        assert!(select(&[key("future", 10)], at(0), RETAIN).is_none());
    }
}
