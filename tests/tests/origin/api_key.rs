//! `X-API-Key` at the origin: which routes need one, revocation, and keys stored only as hashes.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use gatehouse_origin::api_keys;
use gatehouse_tests::{TestApp, register_body};
use sqlx::PgPool;

fn register_with_key(key: Option<&str>) -> Request<Body> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/auth/register")
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    request
        .body(Body::from(register_body("ada@example.com").to_string()))
        .unwrap()
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn auth_routes_refuse_missing_malformed_and_unknown_keys(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let unknown = format!("gth_{}_{}", "0".repeat(16), "0".repeat(64));
    let wrong_secret = format!("{}{}", &app.api_key[..21], "0".repeat(64));

    for key in [
        None,
        Some("nonsense"),
        Some(unknown.as_str()),
        Some(wrong_secret.as_str()),
    ] {
        let response = app.send(register_with_key(key)).await;

        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(response.problem().code, "invalid_api_key");
    }
    assert_eq!(app.user_count().await, 0, "nothing was processed");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn revoked_key_stops_working(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let id = app.api_key[4..20].to_owned();
    let before = app.send(register_with_key(Some(&app.api_key))).await;

    assert!(api_keys::revoke(&app.pool, &id).await.unwrap());
    // Revoked by another process (as `api-key revoke` is): the app hears of it by notification,
    // within moments, if it had remembered the key (see `gatehouse_origin::memory`).
    let revoked = std::time::Instant::now();
    let check_key = || {
        let request = Request::builder()
            .method(Method::GET)
            .uri("/auth/api-key")
            .header("x-api-key", &app.api_key)
            .body(Body::empty())
            .unwrap();
        app.send(request)
    };
    while check_key().await.status == StatusCode::NO_CONTENT {
        assert!(
            revoked.elapsed() < Duration::from_secs(2),
            "the revoked key is still accepted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = app.send(register_with_key(Some(&app.api_key))).await;

    assert_eq!(before.status, StatusCode::CREATED);
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert!(
        !api_keys::revoke(&app.pool, &id).await.unwrap(),
        "already revoked"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn keys_are_stored_hashed_and_listed_without_secrets(pool: PgPool) {
    let app = TestApp::new(pool).await;

    let stored: Vec<u8> = sqlx::query_scalar("select secret_hash from api_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let listed = api_keys::list(&app.pool).await.unwrap();

    let key = gatehouse_shared::api_key::ApiKey::parse(&app.api_key).unwrap();
    assert_eq!(
        stored,
        key.secret_hash(),
        "SHA-256 of the secret, nothing else"
    );
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, key.id());
    assert_eq!(listed[0].revoked_at, None);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn public_routes_need_no_key(pool: PgPool) {
    let app = TestApp::new(pool).await;

    for path in ["/health", "/ready", "/.well-known/jwks.json"] {
        let response = app
            .send(Request::builder().uri(path).body(Body::empty()).unwrap())
            .await;

        assert_eq!(response.status, StatusCode::OK, "{path}");
    }
}
