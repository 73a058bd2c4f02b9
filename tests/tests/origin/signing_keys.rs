//! Signing keys kept in PostgreSQL (`SIGNING_KEYS=database`), against a real database: the first
//! key is made once however many instances start together, a scheduled rotation adds one key
//! however many instances are due, and keys sealed under another `SERVER_SECRET` do not open.

use std::time::Duration;

use gatehouse_origin::db::Database;
use gatehouse_origin::server_secret::ServerKeys;
use gatehouse_origin::signing_keys;
use sqlx::PgPool;
use time::OffsetDateTime;

const RETAIN: Duration = Duration::from_secs(1_000);
const LEAD: Duration = Duration::from_secs(306);
const WEEK: Duration = Duration::from_secs(7 * 86_400);

fn keys() -> ServerKeys {
    ServerKeys::new(gatehouse_tests::SERVER_SECRET.as_bytes())
}

async fn stored_kids(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("select kid from signing_keys order by activates_at, kid")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn instances_starting_together_on_an_empty_table_make_one_key(pool: PgPool) {
    let db = Database::from_pool(pool.clone());
    let cipher = keys().signing_key_cipher();
    let now = OffsetDateTime::now_utc();

    let loaded = futures_util::future::join_all(
        (0..4).map(|_| signing_keys::load(&db, &cipher, now, RETAIN)),
    )
    .await;

    let kids = stored_kids(&pool).await;
    assert_eq!(kids.len(), 1, "{kids:?}");
    for keys in loaded {
        let keys = keys.unwrap();
        assert_eq!(keys.signer.kid(), kids[0]);
        assert!(keys.others.is_empty());
    }
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_scheduled_rotation_adds_one_key_when_due_however_many_instances_ask(pool: PgPool) {
    let db = Database::from_pool(pool.clone());
    let cipher = keys().signing_key_cipher();
    let start = OffsetDateTime::now_utc();
    let first = signing_keys::load(&db, &cipher, start, RETAIN)
        .await
        .unwrap();

    let early = signing_keys::rotate_if_due(&db, &cipher, start + WEEK / 2, LEAD, WEEK).await;
    assert!(early.unwrap().is_none(), "not due after half the period");

    let due = start + WEEK + Duration::from_secs(1);
    let rotated = futures_util::future::join_all(
        (0..3).map(|_| signing_keys::rotate_if_due(&db, &cipher, due, LEAD, WEEK)),
    )
    .await;
    let added: Vec<_> = rotated.into_iter().filter_map(|r| r.unwrap()).collect();
    assert_eq!(added.len(), 1, "one instance rotates: {added:?}");
    let (next, activates_at) = &added[0];
    assert_eq!(*activates_at, due + LEAD);

    // Published at once, signing only from its activation.
    let before = signing_keys::load(&db, &cipher, due, RETAIN).await.unwrap();
    assert_eq!(before.signer.kid(), first.signer.kid());
    assert_eq!(before.others.len(), 1);
    let after = signing_keys::load(&db, &cipher, due + LEAD, RETAIN)
        .await
        .unwrap();
    assert_eq!(after.signer.kid(), next);
    assert_eq!(stored_kids(&pool).await.len(), 2);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn revoking_the_current_key_moves_instances_to_a_new_one_never_back(pool: PgPool) {
    let db = Database::from_pool(pool.clone());
    let cipher = keys().signing_key_cipher();
    let now = OffsetDateTime::now_utc();
    let (old, _) = signing_keys::rotate(&db, &cipher, now - WEEK, Duration::ZERO)
        .await
        .unwrap();
    let (current, _) =
        signing_keys::rotate(&db, &cipher, now - Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap();
    let mut connection = pool.acquire().await.unwrap();
    signing_keys::revoke(&mut connection, &current, now)
        .await
        .unwrap();

    let loaded = signing_keys::load(&db, &cipher, now, WEEK * 2)
        .await
        .unwrap();

    let kid = loaded.signer.kid().to_owned();
    assert!(
        kid != current && kid != old,
        "a new key, not {old} brought back"
    );
    assert_eq!(stored_kids(&pool).await.len(), 3);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn keys_sealed_under_another_server_secret_do_not_open(pool: PgPool) {
    let db = Database::from_pool(pool);
    let now = OffsetDateTime::now_utc();
    signing_keys::load(&db, &keys().signing_key_cipher(), now, RETAIN)
        .await
        .unwrap();

    let other = ServerKeys::new(b"another-server-secret-0123456789abcdef");
    let error = signing_keys::load(&db, &other.signing_key_cipher(), now, RETAIN)
        .await
        .unwrap_err();

    assert!(format!("{error:#}").contains("SERVER_SECRET"), "{error:#}");
}
