//! `/auth/profile`: reading it, changing names, and deactivating the account.

use axum::http::{Method, StatusCode};
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::UserProfile;
use gatehouse_tests::TestApp;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn profile_shows_the_account(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;

    let response = app
        .get("/auth/profile", registered.access_token.expose_secret())
        .await;

    assert_eq!(response.status, StatusCode::OK);
    let profile: UserProfile = response.json();
    assert_eq!(profile, registered.user);
    let created_at = response.body["created_at"].as_str().unwrap();
    assert!(created_at.ends_with('Z'), "RFC 3339 in UTC: {created_at}");
    assert!(response.body.get("password_hash").is_none());
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn patch_sets_clears_and_keeps_names(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.register("ada@example.com").await.access_token;

    let renamed = app
        .patch(
            "/auth/profile",
            token.expose_secret(),
            json!({"first_name": "  Augusta "}),
        )
        .await;
    let cleared = app
        .patch(
            "/auth/profile",
            token.expose_secret(),
            json!({"last_name": null}),
        )
        .await;

    assert_eq!(renamed.status, StatusCode::OK);
    let renamed: UserProfile = renamed.json();
    assert_eq!(renamed.first_name.as_deref(), Some("Augusta"));
    assert_eq!(
        renamed.last_name.as_deref(),
        Some("Lovelace"),
        "absent member unchanged"
    );
    let cleared: UserProfile = cleared.json();
    assert_eq!(cleared.first_name.as_deref(), Some("Augusta"));
    assert_eq!(cleared.last_name, None);
    let stored: UserProfile = app.get("/auth/profile", token.expose_secret()).await.json();
    assert_eq!(stored, cleared);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn patch_refuses_bad_names_and_unknown_members(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.register("ada@example.com").await.access_token;

    let too_long = app
        .patch(
            "/auth/profile",
            token.expose_secret(),
            json!({"first_name": "x".repeat(101)}),
        )
        .await;
    let unknown = app
        .patch(
            "/auth/profile",
            token.expose_secret(),
            json!({"email": "evil@example.com"}),
        )
        .await;

    assert_eq!(too_long.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(too_long.problem().errors[0].field, "first_name");
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    let profile: UserProfile = app.get("/auth/profile", token.expose_secret()).await.json();
    assert_eq!(profile.email, "ada@example.com");
    assert_eq!(profile.first_name.as_deref(), Some("Ada"));
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn delete_deactivates_and_ends_every_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.register("ada@example.com").await.access_token;
    app.login("ada@example.com", gatehouse_tests::PASSWORD)
        .await;

    let response = app.deactivate(token.expose_secret()).await;

    assert_eq!(response.status, StatusCode::NO_CONTENT);
    let active: bool = sqlx::query_scalar("select is_active from users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let live_sessions: i64 =
        sqlx::query_scalar("select count(*) from sessions where revoked_at is null")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(!active);
    assert_eq!(live_sessions, 0);
    assert_eq!(app.user_count().await, 1, "deactivated, not deleted");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn profile_needs_a_token(pool: PgPool) {
    let app = TestApp::new(pool).await;

    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let response = app
            .call(method.clone(), "/auth/profile", None, Some(json!({})))
            .await;

        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{method}");
        assert_eq!(response.problem().code, "missing_token");
    }
}
