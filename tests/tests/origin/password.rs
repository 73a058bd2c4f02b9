//! Password change: the current password is needed, other sessions end, and a login racing the
//! change cannot outlive it.

use axum::http::StatusCode;
use gatehouse_shared::ExposeSecret;
use gatehouse_tests::{PASSWORD, RowLock, TestApp, assert_refused};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn password_change_needs_the_current_password_and_ends_other_sessions(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    let second = app.sign_in("ada@example.com").await;
    let new_password = "a brand new passphrase";

    let wrong = app
        .change_password(
            first.access_token.expose_secret(),
            "not my password",
            new_password,
        )
        .await;
    let weak = app
        .change_password(first.access_token.expose_secret(), PASSWORD, "short")
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(wrong.problem().code, "wrong_password");
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.get("/auth/verify", second.access_token.expose_secret())
            .await
            .status,
        StatusCode::OK,
        "refused changes end nothing"
    );

    let changed = app
        .change_password(first.access_token.expose_secret(), PASSWORD, new_password)
        .await;

    assert_eq!(changed.status, StatusCode::NO_CONTENT);
    app.assert_verifies(first.access_token.expose_secret())
        .await;
    app.assert_ended(&second).await;
    app.assert_login("ada@example.com", PASSWORD, StatusCode::UNAUTHORIZED)
        .await;
    app.assert_login("ada@example.com", new_password, StatusCode::OK)
        .await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_login_racing_a_password_change_does_not_outlive_it(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    // The test plays the password change itself: it holds the account row while the login with
    // the old password verifies it, changes the hash, and commits.
    let mut lock = RowLock::take(&app.pool, "users", registered.user.id).await;

    let (login, ()) = tokio::join!(app.login("ada@example.com", PASSWORD), async {
        lock.wait_for_waiters(1).await;
        sqlx::query("update users set password_hash = 'changed' where id = $1")
            .bind(registered.user.id)
            .execute(&mut *lock.tx)
            .await
            .unwrap();
        lock.release().await;
    });

    assert_refused(&login, "invalid_credentials");
    let sessions: i64 = sqlx::query_scalar("select count(*) from sessions where user_id = $1")
        .bind(registered.user.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 1, "only the registration's session");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn guessable_passwords_are_refused_with_the_reason_wherever_one_is_set(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let ada = app.register("ada.lovelace@example.com").await;

    let common = app
        .post(
            "/auth/register",
            json!({ "email": "bea@example.com", "password": "password123" }),
        )
        .await;
    let personal = app
        .post(
            "/auth/register",
            json!({ "email": "cy@example.com", "password": "cyrilwright", "first_name": "Cyril",
                    "last_name": "Wright" }),
        )
        .await;
    let changed = app
        .change_password(
            ada.access_token.expose_secret(),
            PASSWORD,
            "ada.lovelace1815",
        )
        .await;

    for (response, field) in [
        (&common, "password"),
        (&personal, "password"),
        (&changed, "new_password"),
    ] {
        assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY, "{field}");
        let problem = response.problem();
        assert_eq!(problem.errors[0].field, field);
        assert!(
            problem.errors[0]
                .message
                .starts_with("is too easy to guess"),
            "{}",
            problem.errors[0].message
        );
    }
    assert_eq!(app.user_count().await, 1);
    app.assert_login("ada.lovelace@example.com", PASSWORD, StatusCode::OK)
        .await;
}
