//! Load shedding: a full hashing queue and an exhausted pool are answered with 503 and
//! `Retry-After` at once or after the acquire timeout, never by waiting for a client to give up,
//! and nothing is half-written.

use gatehouse_shared::ExposeSecret;
use std::time::Duration;

use axum::http::StatusCode;
use futures_util::future::join_all;
use gatehouse_origin::db::{Database, PoolSettings};
use gatehouse_tests::{Options, TestApp, register_body};
use sqlx::PgPool;

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_full_hashing_queue_sheds_registrations_with_503(pool: PgPool) {
    // One thread, room for one waiting hash, and a cost slow enough that the first hash is still
    // running when the other requests arrive.
    let app = TestApp::with(
        pool,
        Options {
            hash_cost: 12,
            hash_workers: 1,
            hash_queue_limit: 1,
            ..Options::default()
        },
    )
    .await;

    // Polled together, each request reaches the hashing queue in its first poll.
    let responses = join_all((0..6).map(|n| {
        app.post(
            "/auth/register",
            register_body(&format!("user{n}@example.com")),
        )
    }))
    .await;

    let created = responses
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let shed: Vec<_> = responses
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    // The running hash and the one waiting; one fewer if the thread had not yet taken the first
    // job off the queue when the second arrived.
    assert!((1..=2).contains(&created), "{created} created");
    assert_eq!(shed.len(), 6 - created);
    for response in shed {
        assert_eq!(response.problem().code, "overloaded");
        assert_eq!(response.header("retry-after"), Some("1"));
    }
    assert_eq!(
        app.user_count().await,
        created as i64,
        "a shed request writes nothing"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_exhausted_pool_answers_503_after_the_acquire_timeout(pool: PgPool) {
    let settings = PoolSettings {
        max_connections: 1,
        acquire_timeout: Duration::from_millis(300),
        test_before_acquire: false,
    };
    let db = Database::connect_with((*pool.connect_options()).clone(), &settings);
    let app = TestApp::on(db, pool.clone(), Options::default()).await;
    let token = app.register("ada@example.com").await.access_token;

    // The pool's only connection is busy elsewhere for the whole request.
    let held = app.state.db.pool().acquire().await.unwrap();
    let verify = app.get("/auth/verify", token.expose_secret()).await;
    drop(held);
    let after = app.get("/auth/verify", token.expose_secret()).await;

    assert_eq!(verify.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(verify.problem().code, "database_unavailable");
    assert_eq!(verify.header("retry-after"), Some("1"));
    assert_eq!(
        after.status,
        StatusCode::OK,
        "served again once a connection frees"
    );
}
