//! Refresh-token rotation: a new token per refresh within one session, racing tabs given the
//! same successor, reuse after the window ending the session, forged tokens ending nothing, the
//! per-session limit, constant storage, tokens of the old format, and expiry on the test clock.

use std::time::Duration;

use axum::http::StatusCode;
use futures_util::future::join_all;
use gatehouse_origin::sessions::SessionPolicy;
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{TokenResponse, UserProfile};
use gatehouse_shared::refresh::{LegacyRefreshToken, Presented, RefreshKey, RefreshToken};
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
    assert_eq!(app.refresh_state(registered.session_id).await, (2, 0));
    let after = app.refreshed(next.refresh_token.expose_secret()).await;
    assert_eq!(after.session_id, registered.session_id);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn refresh_tokens_are_not_stored(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let next = app
        .refreshed(registered.refresh_token.expose_secret())
        .await;

    let dump: String = sqlx::query_scalar(
        "select string_agg(s::text, ' ') || coalesce(string_agg(t::text, ' '), '')
         from sessions s left join refresh_tokens t on t.session_id = s.id",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();

    for token in [&registered.refresh_token, &next.refresh_token] {
        let mac = &token.expose_secret()[token.expose_secret().len() - 64..];
        assert!(!dump.contains(mac));
    }
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn many_refreshes_leave_the_same_rows_behind(pool: PgPool) {
    let app = TestApp::with(pool, Options::lifted_refresh_limit()).await;
    let registered = app.register("ada@example.com").await;
    let mut token = app
        .refreshed(registered.refresh_token.expose_secret())
        .await
        .refresh_token;
    let rows_after_one = app.table_rows().await;

    for _ in 0..200 {
        token = app.refreshed(token.expose_secret()).await.refresh_token;
    }

    assert_eq!(app.table_rows().await, rows_after_one);
    assert_eq!(app.refresh_state(registered.session_id).await, (202, 0));
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_forged_old_token_ends_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let live = app
        .refreshed(registered.refresh_token.expose_secret())
        .await;
    // What someone who saw the session id in an access token could make: the right session and
    // an old generation, but not the server's MAC.
    let forged = RefreshToken::issue(&RefreshKey::new([7; 32]), registered.session_id, 1);

    let refused = app.refresh(forged.expose()).await;

    assert_refused(&refused, "invalid_refresh_token");
    assert!(app.session_live(registered.session_id).await);
    app.refreshed(live.refresh_token.expose_secret()).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn refreshes_past_the_limit_wait_and_racing_tabs_count_apart(pool: PgPool) {
    let defaults = Options::default();
    let app = TestApp::with(
        pool,
        Options {
            sessions: SessionPolicy {
                refresh_limit: 3,
                ..defaults.sessions
            },
            ..defaults
        },
    )
    .await;
    let registered = app.register("ada@example.com").await;
    let mut previous = registered.refresh_token.clone();
    let mut live = registered.refresh_token.clone();
    for _ in 0..3 {
        previous = live;
        live = app.refreshed(previous.expose_secret()).await.refresh_token;
    }
    app.clock.advance(Duration::from_secs(5));

    let over = app.refresh(live.expose_secret()).await;
    let racing_tab = app.refreshed(previous.expose_secret()).await;

    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.problem().code, "too_many_attempts");
    assert_eq!(over.header("retry-after"), Some("55"));
    assert_eq!(
        racing_tab.refresh_token.expose_secret(),
        live.expose_secret(),
        "a racing tab is answered at the limit and the live token is still the live one"
    );
    // Replays of the previous token are counted apart, against ten times the limit.
    for _ in 1..30 {
        app.refreshed(previous.expose_secret()).await;
    }
    let replaying = app.refresh(previous.expose_secret()).await;
    assert_eq!(replaying.status, StatusCode::TOO_MANY_REQUESTS);
    app.clock.advance(Duration::from_secs(55));
    app.refreshed(live.expose_secret()).await;
}

/// Puts session `session_id` back as the release before generations left it: generation 0 and
/// two token rows, the older spent. Returns (older, live) tokens.
async fn as_before_generations(
    app: &TestApp,
    session_id: uuid::Uuid,
) -> (LegacyRefreshToken, LegacyRefreshToken) {
    let (older, live) = (
        LegacyRefreshToken::generate(&mut rand_core::OsRng),
        LegacyRefreshToken::generate(&mut rand_core::OsRng),
    );
    sqlx::query(
        "with older as (
           insert into refresh_tokens (session_id, token_hash, created_at, spent_at)
           values ($1, $2, now(), now()) returning id
         )
         insert into refresh_tokens (session_id, token_hash, parent_id, created_at)
         select $1, $3, id, now() from older",
    )
    .bind(session_id)
    .bind(older.lookup_hash().as_slice())
    .bind(live.lookup_hash().as_slice())
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("update sessions set refresh_generation = 0 where id = $1")
        .bind(session_id)
        .execute(&app.pool)
        .await
        .unwrap();
    (older, live)
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn racing_tabs_with_a_token_of_the_old_format_all_get_the_same_successor(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let (_, legacy) = as_before_generations(&app, registered.session_id).await;

    let mut lock = RowLock::take(&app.pool, "sessions", registered.session_id).await;
    let (responses, ()) = tokio::join!(
        join_all((0..3).map(|_| app.refresh(legacy.expose()))),
        async {
            lock.wait_for_waiters(3).await;
            lock.release().await;
        }
    );

    let successors: Vec<String> = responses
        .iter()
        .map(|response| {
            assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
            let tokens = response.json::<TokenResponse>();
            tokens.refresh_token.expose_secret().to_owned()
        })
        .collect();
    assert!(successors.iter().all(|s| *s == successors[0]));
    assert!(app.session_live(registered.session_id).await);
    assert_eq!(app.refresh_state(registered.session_id).await.0, 1);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn sessions_begun_before_generations_keep_working(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let (older, legacy) = as_before_generations(&app, registered.session_id).await;

    let moved = app.refreshed(legacy.expose()).await;
    let racing_tab = app.refreshed(legacy.expose()).await;
    let next = app.refreshed(moved.refresh_token.expose_secret()).await;

    assert!(matches!(
        RefreshToken::parse(moved.refresh_token.expose_secret()),
        Ok(Presented::Issued(_))
    ));
    assert_eq!(
        racing_tab.refresh_token.expose_secret(),
        moved.refresh_token.expose_secret()
    );
    assert_eq!(app.refresh_state(registered.session_id).await, (2, 2));
    assert_refused(&app.refresh(older.expose()).await, "refresh_token_reused");
    assert!(!app.session_live(registered.session_id).await);
    assert_refused(
        &app.refresh(next.refresh_token.expose_secret()).await,
        "invalid_refresh_token",
    );
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
        app.refresh_state(registered.session_id).await,
        (2, 0),
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
    assert_eq!(app.refresh_state(registered.session_id).await, (2, 0));
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
    let unknown = LegacyRefreshToken::generate(&mut rand_core::OsRng);

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
