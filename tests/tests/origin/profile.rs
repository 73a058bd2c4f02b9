//! `/auth/profile`: reading it, changing names, and deactivating the account.

use axum::http::{Method, StatusCode};
use gatehouse_origin::{janitor, users};
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::UserProfile;
use gatehouse_tests::{TestApp, assert_invalid_field};
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

    assert_invalid_field(&too_long, "first_name");
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
    let live_sessions = app
        .count("select count(*) from sessions where revoked_at is null")
        .await;
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

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn delete_needs_the_current_password(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.register("ada@example.com").await.access_token;

    let wrong = app
        .call(
            Method::DELETE,
            "/auth/profile",
            Some(token.expose_secret()),
            Some(json!({ "current_password": "not the password" })),
        )
        .await;
    let missing = app
        .call(
            Method::DELETE,
            "/auth/profile",
            Some(token.expose_secret()),
            Some(json!({})),
        )
        .await;

    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(wrong.problem().code, "wrong_password");
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    app.assert_verifies(token.expose_secret()).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_deactivated_account_is_erased_after_thirty_days_and_its_address_freed(pool: PgPool) {
    // Without mail, so that unverified accounts are not erased meanwhile.
    let app = TestApp::without_mail(pool).await;
    let token = app.register("ada@example.com").await.access_token;
    app.register("bea@example.com").await;
    // Deactivated before deactivation was dated: never erased by age.
    let older = app.register("cy@example.com").await.access_token;
    app.deactivate(older.expose_secret()).await;
    sqlx::query("update users set deactivated_at = null where email = 'cy@example.com'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.deactivate(token.expose_secret()).await;

    let now = app.state.clock.now();
    let early = janitor::purge(&app.state, now + time::Duration::days(29))
        .await
        .unwrap();
    let late = janitor::purge(&app.state, now + time::Duration::days(31))
        .await
        .unwrap();

    assert_eq!((early.accounts, late.accounts), (0, 1));
    assert_eq!(app.emails().await, ["bea@example.com", "cy@example.com"]);
    let sessions = app.count("select count(*) from sessions").await;
    assert_eq!(
        sessions, 1,
        "bea's live session is left: ada's went with her account, cy's ended over 30 days ago"
    );
    app.register("ada@example.com").await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_operator_can_reactivate_or_erase_an_account(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.register("ada@example.com").await.access_token;
    app.register("bea@example.com").await;
    app.deactivate(token.expose_secret()).await;

    let reactivated = users::reactivate(&app.pool, "ADA@example.com")
        .await
        .unwrap();
    let again = users::reactivate(&app.pool, "ada@example.com")
        .await
        .unwrap();
    let erased = users::erase(&app.pool, "bea@example.com").await.unwrap();
    let unknown = users::erase(&app.pool, "nobody@example.com").await.unwrap();

    assert!(reactivated, "a deactivated account comes back");
    assert!(!again, "an active one is left as it is");
    assert!(erased);
    assert!(!unknown);
    assert_eq!(
        app.login("ada@example.com", gatehouse_tests::PASSWORD)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(app.user_count().await, 1);
}
