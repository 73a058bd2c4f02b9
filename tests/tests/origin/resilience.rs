//! The database going away and coming back, through a relay the test cuts and restores.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use gatehouse_origin::db::{Database, PoolSettings};
use gatehouse_tests::relay::Relay;
use gatehouse_tests::{Options, TestApp, TestResponse, register_body};
use sqlx::PgPool;

/// Upper bound on how long recovery may take: the monitor checks once a second.
const RECOVERY_ATTEMPTS: usize = 100;
const RECOVERY_POLL: Duration = Duration::from_millis(100);

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn database_outage_gives_fast_503_and_recovers_without_restart(pool: PgPool) {
    let options = pool.connect_options();
    let target = format!("{}:{}", options.get_host(), options.get_port());
    let relay = Relay::start(
        tokio::net::lookup_host(target)
            .await
            .unwrap()
            .next()
            .unwrap(),
    )
    .await;
    let url = format!(
        "postgres://postgres@{}/{}",
        relay.addr(),
        options.get_database().unwrap()
    );
    let settings = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(30),
        test_before_acquire: true,
    };
    let db = Database::connect(&url, &settings).unwrap();
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
    let ready = app.call(Method::GET, "/ready", None, None).await;
    let health = app.call(Method::GET, "/health", None, None).await;

    assert_eq!(during.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(during.problem().code, "database_unavailable");
    assert_eq!(during.header("retry-after"), Some("1"));
    assert!(
        waited < settings.acquire_timeout,
        "failed before the 30 s acquire timeout ({waited:?})"
    );
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.status, StatusCode::OK, "the process itself is fine");

    relay.restore().await;
    let ready = wait_until_ready(&app).await;
    let after = register("after@example.com").await;

    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(after.status, StatusCode::CREATED);
    let emails: Vec<String> = sqlx::query_scalar("select email from users order by created_at")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(emails, ["before@example.com", "after@example.com"]);
}

async fn wait_until_ready(app: &TestApp) -> TestResponse {
    for _ in 0..RECOVERY_ATTEMPTS {
        let response = app.call(Method::GET, "/ready", None, None).await;
        if response.status == StatusCode::OK {
            return response;
        }
        tokio::time::sleep(RECOVERY_POLL).await;
    }
    panic!("the origin did not recover within {RECOVERY_ATTEMPTS} polls");
}
