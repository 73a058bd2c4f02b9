//! The database going away and coming back, through a relay the test cuts and restores.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use gatehouse_origin::db::{Database, PoolSettings};
use gatehouse_tests::relay::Relay;
use gatehouse_tests::{Options, TestApp, register_body};
use sqlx::PgPool;

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn database_outage_gives_fast_503_and_recovers_without_restart(pool: PgPool) {
    let direct = pool.connect_options();
    let target = format!("{}:{}", direct.get_host(), direct.get_port());
    let relay = Relay::start(
        tokio::net::lookup_host(target)
            .await
            .unwrap()
            .next()
            .unwrap(),
    )
    .await;
    let through_relay = (*direct)
        .clone()
        .host("127.0.0.1")
        .port(relay.addr().port());
    let settings = PoolSettings {
        max_connections: 4,
        // Long, so that a request that waited for the pool instead of failing fast would show.
        acquire_timeout: Duration::from_secs(60),
        test_before_acquire: true,
    };
    let db = Database::connect_with(through_relay, &settings);
    let app = TestApp::on(db, pool.clone(), Options::default()).await;
    let register = |email: &'static str| {
        app.call(
            Method::POST,
            "/auth/register",
            None,
            Some(register_body(email)),
        )
    };
    assert_eq!(
        register("before@example.com").await.status,
        StatusCode::CREATED
    );

    relay.cut();
    let started = Instant::now();
    let during = register("during@example.com").await;
    let waited = started.elapsed();
    // The monitor needs two failed checks (about two seconds) before readiness drops.
    let unready = app
        .wait_until_ready_is(StatusCode::SERVICE_UNAVAILABLE)
        .await;
    let health = app.call(Method::GET, "/health", None, None).await;

    assert_eq!(during.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(during.problem().code, "database_unavailable");
    assert_eq!(during.header("retry-after"), Some("1"));
    assert!(
        waited < settings.acquire_timeout,
        "failed without waiting out the pool's acquire timeout ({waited:?})"
    );
    assert_eq!(unready.problem().code, "database_unavailable");
    assert_eq!(health.status, StatusCode::OK, "the process itself is fine");

    relay.restore().await;
    let ready = app.wait_until_ready_is(StatusCode::OK).await;
    let after = register("after@example.com").await;

    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(after.status, StatusCode::CREATED);
    let emails: Vec<String> = sqlx::query_scalar("select email from users order by created_at")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(emails, ["before@example.com", "after@example.com"]);
}
