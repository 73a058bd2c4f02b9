//! `POST /auth/login`: tokens for the right password, the same refusal for every wrong case at the
//! same bcrypt cost, rehashing at a new cost, and invalid fields.

use axum::http::{Method, StatusCode};
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::TokenResponse;
use gatehouse_tests::{Options, PASSWORD, TEST_HASH_COST, TestApp, assert_invalid_field};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn login_with_the_right_password_returns_a_token(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;

    let response = app.login("  ADA@example.com", PASSWORD).await;

    assert_eq!(response.status, StatusCode::OK);
    let body: TokenResponse = response.json();
    assert_eq!(body.user.id, registered.user.id);
    let claims = app.claims(&body.access_token);
    assert_eq!(claims.sub, registered.user.id);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn each_login_starts_its_own_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;

    let login: TokenResponse = app.login("ada@example.com", PASSWORD).await.json();

    let first = app.claims(&registered.access_token);
    let second = app.claims(&login.access_token);
    assert_ne!(first.sid, second.sid);
    let sessions = app.count("select count(*) from sessions").await;
    assert_eq!(sessions, 2);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn wrong_password_unknown_email_and_deactivated_account_look_the_same(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.register("ada@example.com").await;
    let gone = app.register("gone@example.com").await;
    let deleted = app.deactivate(gone.access_token.expose_secret()).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);

    let wrong_password = app.login("ada@example.com", "not the password").await;
    let unknown_email = app.login("nobody@example.com", PASSWORD).await;
    let deactivated = app.login("gone@example.com", PASSWORD).await;

    for response in [&wrong_password, &unknown_email, &deactivated] {
        assert_eq!(response.status, StatusCode::UNAUTHORIZED);
        assert_eq!(response.problem().code, "invalid_credentials");
        assert!(response.header("www-authenticate").is_some());
    }
    assert_eq!(wrong_password.body, unknown_email.body);
    assert_eq!(unknown_email.body, deactivated.body);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn unknown_email_still_pays_one_bcrypt_verification(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.register("ada@example.com").await;
    let before = app.state.hasher.verifications();

    let unknown = app.login("nobody@example.com", PASSWORD).await;
    let after_unknown = app.state.hasher.verifications();
    let known = app.login("ada@example.com", "wrong password").await;
    let after_known = app.state.hasher.verifications();

    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(known.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        after_unknown - before,
        1,
        "unknown email: one dummy verification"
    );
    assert_eq!(
        after_known - after_unknown,
        1,
        "known email: one real verification"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn login_rehashes_a_password_stored_at_another_cost(pool: PgPool) {
    let stronger = registered_before_the_cost_was_raised(pool).await;

    let first = stronger.login("ada@example.com", PASSWORD).await;
    let stored: String = sqlx::query_scalar("select password_hash from users")
        .fetch_one(&stronger.pool)
        .await
        .unwrap();
    let second = stronger.login("ada@example.com", PASSWORD).await;

    assert_eq!(first.status, StatusCode::OK);
    assert!(
        stored.starts_with("$2b$05$"),
        "rehashed at the new cost: {stored}"
    );
    assert!(!stronger.state.hasher.needs_rehash(&stored));
    assert_eq!(second.status, StatusCode::OK, "the new hash still verifies");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn failed_login_does_not_rehash(pool: PgPool) {
    let stronger = registered_before_the_cost_was_raised(pool).await;

    let response = stronger.login("ada@example.com", "wrong password").await;

    let stored: String = sqlx::query_scalar("select password_hash from users")
        .fetch_one(&stronger.pool)
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert!(stored.starts_with("$2b$04$"));
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_overlong_password_is_refused_like_a_wrong_one_and_malformed_fields_are_422(
    pool: PgPool,
) {
    let app = TestApp::new(pool).await;
    // 72 bytes, all bcrypt uses: anything typed after it would pass bcrypt itself.
    let password = "correct horse battery staple, then tea at the harbour at half past four!";
    let registered = app
        .post(
            "/auth/register",
            json!({"email": "ada@example.com", "password": password}),
        )
        .await;
    assert_eq!(registered.status, StatusCode::CREATED);
    let verifications = app.state.hasher.verifications();

    // Only an imported account is checked on the first 72 bytes of a longer password, as the
    // service it came from did (tests/origin/import.rs).
    let long = app
        .login("ada@example.com", &format!("{password} and more"))
        .await;
    let nul = app.login("ada\u{0}@example.com", PASSWORD).await;
    let empty = app
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": "  ", "password": PASSWORD})),
        )
        .await;

    assert_eq!(long.status, StatusCode::UNAUTHORIZED);
    assert_eq!(long.problem().code, "invalid_credentials");
    assert_eq!(
        app.state.hasher.verifications(),
        verifications + 1,
        "refused at the cost of a wrong password"
    );
    assert_invalid_field(&empty, "email");
    assert_eq!(
        nul.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "not a 500 from PostgreSQL"
    );
}

/// An account registered at the test cost, and the origin restarted with the cost one higher.
async fn registered_before_the_cost_was_raised(pool: PgPool) -> TestApp {
    let old = TestApp::new(pool.clone()).await;
    old.register("ada@example.com").await;
    TestApp::with(
        pool,
        Options {
            hash_cost: TEST_HASH_COST + 1,
            ..Options::default()
        },
    )
    .await
}
