//! Refresh-token rotation: a new token per refresh within one session, racing tabs given the
//! same successor, reuse after the window ending the session, and expiry on the test clock.

use std::time::Duration;

use axum::http::StatusCode;
use futures_util::future::join_all;
use gatehouse_origin::sessions::SessionPolicy;
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{TokenResponse, UserProfile};
use gatehouse_shared::refresh::RefreshToken;
use gatehouse_tests::{Options, RowLock, TestApp, assert_refused};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn refresh_rotates_the_token_within_the_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    app.clock.advance(Duration::from_secs(60));

    let next = app
        .refreshed(registered.refresh_token.expose_secret())
        .await;

    assert_ne!(
        next.refresh_token.expose_secret(),
        registered.refresh_token.expose_secret()
    );
    assert_ne!(
        next.access_token.expose_secret(),
        registered.access_token.expose_secret()
    );
    assert_eq!(next.session_id, registered.session_id);
    assert_eq!(next.user, registered.user);
    assert_eq!(next.expires_in, 900);
    let profile = app
        .get("/auth/profile", next.access_token.expose_secret())
        .await;
    assert_eq!(profile.json::<UserProfile>(), registered.user);
    assert_eq!(app.refresh_tokens(registered.session_id).await, (1, 2));
    let after = app.refreshed(next.refresh_token.expose_secret()).await;
    assert_eq!(after.session_id, registered.session_id);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn refresh_tokens_are_stored_only_as_hashes(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let token = RefreshToken::parse(registered.refresh_token.expose_secret()).unwrap();

    let stored: Vec<Vec<u8>> = sqlx::query_scalar("select token_hash from refresh_tokens")
        .fetch_all(&app.pool)
        .await
        .unwrap();

    assert_eq!(stored, vec![token.lookup_hash().to_vec()]);
    let dump: String = sqlx::query_scalar("select string_agg(t::text, ' ') from refresh_tokens t")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!dump.contains(&registered.refresh_token.expose_secret()[4..]));
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn racing_refreshes_of_one_token_all_get_the_same_successor(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;

    // The test holds the session's row lock until all three requests wait on it, so they truly
    // overlap; then lets them go at once.
    let mut lock = RowLock::take(&app.pool, "sessions", registered.session_id).await;
    let (responses, ()) = tokio::join!(
        join_all((0..3).map(|_| app.refresh(registered.refresh_token.expose_secret()))),
        async {
            lock.wait_for_waiters(3).await;
            lock.release().await;
        }
    );

    let statuses: Vec<StatusCode> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![StatusCode::OK; 3], "nobody is logged out");
    let successors: Vec<String> = responses
        .iter()
        .map(|r| {
            r.json::<TokenResponse>()
                .refresh_token
                .expose_secret()
                .to_owned()
        })
        .collect();
    assert!(successors.iter().all(|s| *s == successors[0]));
    assert!(app.session_live(registered.session_id).await);
    assert_eq!(
        app.refresh_tokens(registered.session_id).await,
        (1, 2),
        "exactly one successor"
    );
    for response in &responses {
        let access = response.json::<TokenResponse>().access_token;
        app.assert_verifies(access.expose_secret()).await;
    }
    app.refreshed(&successors[0]).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn previous_token_inside_the_window_gets_the_same_successor(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let first = app
        .refreshed(registered.refresh_token.expose_secret())
        .await;
    app.clock.advance(Duration::from_secs(9));

    let again = app
        .refreshed(registered.refresh_token.expose_secret())
        .await;

    assert_eq!(
        again.refresh_token.expose_secret(),
        first.refresh_token.expose_secret()
    );
    assert_eq!(app.refresh_tokens(registered.session_id).await, (1, 2));
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn reuse_after_the_window_ends_the_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let next = app
        .refreshed(registered.refresh_token.expose_secret())
        .await;
    app.pass_reuse_window();

    let reuse = app.refresh(registered.refresh_token.expose_secret()).await;

    assert_refused(&reuse, "refresh_token_reused");
    assert!(!app.session_live(registered.session_id).await);
    assert_refused(
        &app.refresh(next.refresh_token.expose_secret()).await,
        "invalid_refresh_token",
    );
    assert_refused(
        &app.get("/auth/verify", next.access_token.expose_secret())
            .await,
        "invalid_token",
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn reuse_of_a_token_whose_successor_was_used_ends_the_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let second = app
        .refreshed(registered.refresh_token.expose_secret())
        .await;
    let third = app.refreshed(second.refresh_token.expose_secret()).await;

    // Inside the window, but the successor is spent: this is not a racing tab.
    let reuse = app.refresh(registered.refresh_token.expose_secret()).await;

    assert_refused(&reuse, "refresh_token_reused");
    assert!(!app.session_live(registered.session_id).await);
    assert_refused(
        &app.refresh(third.refresh_token.expose_secret()).await,
        "invalid_refresh_token",
    );
    let reason: String = sqlx::query_scalar("select end_reason from sessions where id = $1")
        .bind(registered.session_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(reason, "refresh_token_reused");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn malformed_and_unknown_refresh_tokens_are_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let unknown = RefreshToken::generate(&mut rand_core::OsRng);

    for presented in [
        "",
        "gtr_xyz",
        unknown.expose(),
        registered.access_token.expose_secret(),
    ] {
        assert_refused(&app.refresh(presented).await, "invalid_refresh_token");
    }
    let wrong_shape = app.post("/auth/refresh", json!({"token": "x"})).await;
    assert_eq!(wrong_shape.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(app.session_live(registered.session_id).await);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn idle_session_expires_and_refreshing_keeps_it_alive(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let almost_idle = app.state.sessions.idle_timeout - Duration::from_secs(60);

    app.clock.advance(almost_idle);
    let kept = app
        .refreshed(registered.refresh_token.expose_secret())
        .await;
    app.clock.advance(app.state.sessions.idle_timeout);
    let expired = app.refresh(kept.refresh_token.expose_secret()).await;

    assert_refused(&expired, "session_expired");
    assert!(!app.session_live(registered.session_id).await);
    assert_refused(
        &app.refresh(kept.refresh_token.expose_secret()).await,
        "invalid_refresh_token",
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn absolute_lifetime_ends_even_an_active_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let mut refresh_token = registered.refresh_token.expose_secret().to_owned();
    let step = Duration::from_secs(6 * 86_400);

    for _ in 0..4 {
        app.clock.advance(step);
        refresh_token = app
            .refreshed(&refresh_token)
            .await
            .refresh_token
            .expose_secret()
            .to_owned();
    }
    // Five minutes before the 30-day limit the access token is cut to the session's end.
    app.clock
        .advance(app.state.sessions.max_lifetime - 4 * step - Duration::from_secs(300));
    let last = app.refreshed(&refresh_token).await;
    app.clock.advance(Duration::from_secs(300));
    let ended = app.refresh(last.refresh_token.expose_secret()).await;

    assert_eq!(last.expires_in, 300);
    assert_refused(&ended, "session_expired");
    assert_refused(
        &app.get("/auth/verify", last.access_token.expose_secret())
            .await,
        "invalid_token",
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn expired_session_refuses_its_access_tokens(pool: PgPool) {
    let defaults = Options::default();
    let app = TestApp::with(
        pool,
        Options {
            sessions: SessionPolicy {
                idle_timeout: Duration::from_secs(300),
                ..defaults.sessions
            },
            ..defaults
        },
    )
    .await;
    let registered = app.register("ada@example.com").await;

    app.clock.advance(Duration::from_secs(301));
    let verify = app
        .get("/auth/verify", registered.access_token.expose_secret())
        .await;

    assert_eq!(registered.expires_in, 300, "capped at the idle limit");
    assert_refused(&verify, "invalid_token");
}
