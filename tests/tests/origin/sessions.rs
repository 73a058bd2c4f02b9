//! Sessions: logout scopes, listing and ending sessions by id, deactivation, and the janitor that
//! deletes what has long expired.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{SessionList, TokenResponse};
use gatehouse_tests::{PASSWORD, RowLock, TestApp, assert_refused};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn logout_ends_only_the_current_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    let second = app.sign_in("ada@example.com").await;

    let logout = app
        .post_empty("/auth/logout", first.access_token.expose_secret())
        .await;

    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    app.assert_ended(&first).await;
    app.assert_verifies(second.access_token.expose_secret())
        .await;
    app.refreshed(second.refresh_token.expose_secret()).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn logout_with_scope_all_ends_every_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    let second = app.sign_in("ada@example.com").await;
    let stranger = app.register("grace@example.com").await;

    let logout = app
        .post_empty("/auth/logout?scope=all", first.access_token.expose_secret())
        .await;

    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    for session in [&first, &second] {
        app.assert_ended(session).await;
    }
    app.assert_verifies(stranger.access_token.expose_secret())
        .await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn logout_with_scope_others_keeps_the_current_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    let second = app.sign_in("ada@example.com").await;

    let logout = app
        .post_empty(
            "/auth/logout?scope=others",
            first.access_token.expose_secret(),
        )
        .await;
    let bogus = app
        .post_empty(
            "/auth/logout?scope=everyone",
            first.access_token.expose_secret(),
        )
        .await;

    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    app.assert_verifies(first.access_token.expose_secret())
        .await;
    assert_refused(
        &app.get("/auth/verify", second.access_token.expose_secret())
            .await,
        "invalid_token",
    );
    assert_eq!(bogus.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bogus.problem().code, "invalid_query");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_logout_racing_a_refresh_leaves_nothing_alive(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let mut lock = RowLock::take(&app.pool, "sessions", registered.session_id).await;

    let (refresh, logout, ()) = tokio::join!(
        app.refresh(registered.refresh_token.expose_secret()),
        app.post_empty("/auth/logout", registered.access_token.expose_secret()),
        async {
            lock.wait_for_waiters(2).await;
            lock.release().await;
        }
    );

    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    assert!(!app.session_live(registered.session_id).await);
    // Whichever went first, whatever the refresh handed out is dead now.
    if refresh.status == StatusCode::OK {
        let pair: TokenResponse = refresh.json();
        assert_refused(
            &app.refresh(pair.refresh_token.expose_secret()).await,
            "invalid_refresh_token",
        );
        assert_refused(
            &app.get("/auth/verify", pair.access_token.expose_secret())
                .await,
            "invalid_token",
        );
    } else {
        assert_refused(&refresh, "invalid_refresh_token");
    }
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn sessions_are_listed_with_the_current_one_marked(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    app.clock.advance(Duration::from_secs(5));
    let request = Request::post("/auth/login")
        .header("x-api-key", &app.api_key)
        .header("content-type", "application/json")
        .header("user-agent", "Firefox/140")
        .body(Body::from(
            json!({"email": "ada@example.com", "password": PASSWORD}).to_string(),
        ))
        .unwrap();
    let second: TokenResponse = app.send(request).await.json();
    app.register("grace@example.com").await;

    let response = app
        .get("/auth/sessions", first.access_token.expose_secret())
        .await;

    assert_eq!(response.status, StatusCode::OK);
    let list: SessionList = response.json();
    let ids: Vec<Uuid> = list.sessions.iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        vec![second.session_id, first.session_id],
        "newest first"
    );
    assert_eq!(
        list.sessions.iter().map(|s| s.current).collect::<Vec<_>>(),
        vec![false, true]
    );
    assert_eq!(list.sessions[0].user_agent.as_deref(), Some("Firefox/140"));
    assert!(list.sessions[0].created_at > list.sessions[1].created_at);
    assert_eq!(
        list.sessions[1].expires_at,
        list.sessions[1].last_used_at + app.state.sessions.idle_timeout
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_list_leaves_out_ended_and_expired_sessions(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let expired = app.register("ada@example.com").await;
    app.clock
        .advance(app.state.sessions.idle_timeout + Duration::from_secs(1));
    let ended = app.sign_in("ada@example.com").await;
    app.post_empty("/auth/logout", ended.access_token.expose_secret())
        .await;
    let current = app.sign_in("ada@example.com").await;

    let list: SessionList = app
        .get("/auth/sessions", current.access_token.expose_secret())
        .await
        .json();
    let delete_expired = app
        .delete(
            &format!("/auth/sessions/{}", expired.session_id),
            current.access_token.expose_secret(),
        )
        .await;

    let ids: Vec<Uuid> = list.sessions.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![current.session_id]);
    assert_eq!(delete_expired.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_session_can_be_ended_by_id_by_its_user_only(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    let second = app.sign_in("ada@example.com").await;
    let stranger = app.register("grace@example.com").await;
    let path = format!("/auth/sessions/{}", second.session_id);

    let by_stranger = app
        .delete(&path, stranger.access_token.expose_secret())
        .await;
    let ended = app.delete(&path, first.access_token.expose_secret()).await;
    let again = app.delete(&path, first.access_token.expose_secret()).await;
    let garbage = app
        .delete(
            "/auth/sessions/not-a-uuid",
            first.access_token.expose_secret(),
        )
        .await;

    assert_eq!(by_stranger.status, StatusCode::NOT_FOUND);
    assert_eq!(by_stranger.problem().code, "session_not_found");
    assert_eq!(ended.status, StatusCode::NO_CONTENT);
    assert_refused(
        &app.get("/auth/verify", second.access_token.expose_secret())
            .await,
        "invalid_token",
    );
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(garbage.status, StatusCode::NOT_FOUND);
    assert_eq!(garbage.problem().code, "not_found");
    app.assert_verifies(first.access_token.expose_secret())
        .await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_current_session_keeps_refreshing_after_ending_the_others(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let current = app.register("ada@example.com").await;
    let other = app.sign_in("ada@example.com").await;
    let third = app.sign_in("ada@example.com").await;

    let others = app
        .post_empty(
            "/auth/logout?scope=others",
            current.access_token.expose_secret(),
        )
        .await;
    let after_others = app.refreshed(current.refresh_token.expose_secret()).await;
    let changed = app
        .change_password(
            after_others.access_token.expose_secret(),
            PASSWORD,
            "a new passphrase",
        )
        .await;

    assert_eq!(others.status, StatusCode::NO_CONTENT);
    for ended in [&other, &third] {
        assert_refused(
            &app.refresh(ended.refresh_token.expose_secret()).await,
            "invalid_refresh_token",
        );
    }
    assert_eq!(changed.status, StatusCode::NO_CONTENT);
    app.refreshed(after_others.refresh_token.expose_secret())
        .await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn deactivation_ends_every_session_and_its_refresh_tokens(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    let second = app.sign_in("ada@example.com").await;

    let deleted = app.deactivate(first.access_token.expose_secret()).await;

    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    for session in [&first, &second] {
        assert_refused(
            &app.refresh(session.refresh_token.expose_secret()).await,
            "invalid_refresh_token",
        );
    }
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn session_routes_need_a_token_and_an_api_key(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;

    let no_token = app.call(Method::GET, "/auth/sessions", None, None).await;
    let no_key = app
        .send(
            Request::post("/auth/refresh")
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"refresh_token": registered.refresh_token.expose_secret()}).to_string(),
                ))
                .unwrap(),
        )
        .await;

    assert_refused(&no_token, "missing_token");
    assert_refused(&no_key, "invalid_api_key");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_janitor_deletes_only_what_has_long_expired(pool: PgPool) {
    // Without mail, so that the unverified account is not erased as well (see `mail.rs`).
    let app = TestApp::without_mail(pool).await;
    let ended = app.register("ada@example.com").await;
    app.post_empty("/auth/logout", ended.access_token.expose_secret())
        .await;
    app.login("ghost@example.com", "wrong guess").await;
    app.clock
        .advance(gatehouse_origin::janitor::RETENTION + Duration::from_secs(1));
    let live = app.sign_in("ada@example.com").await;

    let purged = gatehouse_origin::janitor::purge(&app.state, app.clock.clock().now())
        .await
        .unwrap();

    assert_eq!(purged.sessions, 1);
    assert_eq!(purged.counters, 1, "the stale failure counter");
    assert_eq!(purged.accounts, 0);
    assert!(app.session_live(live.session_id).await);
    app.refreshed(live.refresh_token.expose_secret()).await;
}
