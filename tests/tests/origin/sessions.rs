//! Sessions: refresh-token rotation and reuse, expiry on the test clock, logout scopes, password
//! change, listing and ending sessions, and the revocation list the edge reads.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use futures_util::future::join_all;
use gatehouse_shared::api::{
    EDGE_SECRET_HEADER, RevocationList, SessionList, TokenResponse, UserProfile,
};
use gatehouse_shared::refresh::RefreshToken;
use gatehouse_tests::{
    EDGE_SECRET, Options, PASSWORD, RowLock, TEST_SESSIONS, TestApp, TestResponse,
};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// Past the reuse window of the test policy.
const AFTER_WINDOW: Duration = Duration::from_secs(11);

async fn refreshed(app: &TestApp, refresh_token: &str) -> TokenResponse {
    let response = app.refresh(refresh_token).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    response.json()
}

async fn login(app: &TestApp, email: &str) -> TokenResponse {
    let response = app.login(email, PASSWORD).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    response.json()
}

fn assert_refused(response: &TestResponse, code: &str) {
    assert_eq!(
        response.status,
        StatusCode::UNAUTHORIZED,
        "{:?}",
        response.body
    );
    assert_eq!(response.problem().code, code);
}

/// The session of `pair` has ended: its access token and its refresh token are both refused.
async fn assert_ended(app: &TestApp, pair: &TokenResponse) {
    assert_refused(
        &app.get("/auth/verify", &pair.access_token).await,
        "invalid_token",
    );
    assert_refused(
        &app.refresh(&pair.refresh_token).await,
        "invalid_refresh_token",
    );
}

/// `access_token` still verifies at the origin.
async fn assert_verifies(app: &TestApp, access_token: &str) {
    let response = app.get("/auth/verify", access_token).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
}

async fn session_live(app: &TestApp, session_id: Uuid) -> bool {
    sqlx::query_scalar("select revoked_at is null from sessions where id = $1")
        .bind(session_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn live_tokens(app: &TestApp, session_id: Uuid) -> (i64, i64) {
    sqlx::query_as(
        "select count(*) filter (where spent_at is null), count(*) from refresh_tokens
         where session_id = $1",
    )
    .bind(session_id)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn refresh_rotates_the_token_within_the_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    app.clock.advance(Duration::from_secs(60));

    let next = refreshed(&app, &registered.refresh_token).await;

    assert_ne!(next.refresh_token, registered.refresh_token);
    assert_ne!(next.access_token, registered.access_token);
    assert_eq!(next.session_id, registered.session_id);
    assert_eq!(next.user, registered.user);
    assert_eq!(next.expires_in, 900);
    let profile = app.get("/auth/profile", &next.access_token).await;
    assert_eq!(profile.json::<UserProfile>(), registered.user);
    assert_eq!(live_tokens(&app, registered.session_id).await, (1, 2));
    let after = refreshed(&app, &next.refresh_token).await;
    assert_eq!(after.session_id, registered.session_id);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn refresh_tokens_are_stored_only_as_hashes(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let token = RefreshToken::parse(&registered.refresh_token).unwrap();

    let stored: Vec<Vec<u8>> = sqlx::query_scalar("select token_hash from refresh_tokens")
        .fetch_all(&app.pool)
        .await
        .unwrap();

    assert_eq!(stored, vec![token.lookup_hash().to_vec()]);
    let dump: String = sqlx::query_scalar("select string_agg(t::text, ' ') from refresh_tokens t")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!dump.contains(&registered.refresh_token[4..]));
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn racing_refreshes_of_one_token_all_get_the_same_successor(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;

    // The test holds the session's row lock until all three requests wait on it, so they truly
    // overlap; then lets them go at once.
    let mut lock = RowLock::take(&app.pool, "sessions", registered.session_id).await;
    let (responses, ()) = tokio::join!(
        join_all((0..3).map(|_| app.refresh(&registered.refresh_token))),
        async {
            lock.wait_for_waiters(3).await;
            lock.release().await;
        }
    );

    let statuses: Vec<StatusCode> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![StatusCode::OK; 3], "nobody is logged out");
    let successors: Vec<String> = responses
        .iter()
        .map(|r| r.json::<TokenResponse>().refresh_token)
        .collect();
    assert!(successors.iter().all(|s| *s == successors[0]));
    assert!(session_live(&app, registered.session_id).await);
    assert_eq!(
        live_tokens(&app, registered.session_id).await,
        (1, 2),
        "exactly one successor"
    );
    for response in &responses {
        let access = response.json::<TokenResponse>().access_token;
        assert_verifies(&app, &access).await;
    }
    refreshed(&app, &successors[0]).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn previous_token_inside_the_window_gets_the_same_successor(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let first = refreshed(&app, &registered.refresh_token).await;
    app.clock.advance(Duration::from_secs(9));

    let again = refreshed(&app, &registered.refresh_token).await;

    assert_eq!(again.refresh_token, first.refresh_token);
    assert_eq!(live_tokens(&app, registered.session_id).await, (1, 2));
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn reuse_after_the_window_ends_the_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let next = refreshed(&app, &registered.refresh_token).await;
    app.clock.advance(AFTER_WINDOW);

    let reuse = app.refresh(&registered.refresh_token).await;

    assert_refused(&reuse, "refresh_token_reused");
    assert!(!session_live(&app, registered.session_id).await);
    assert_refused(
        &app.refresh(&next.refresh_token).await,
        "invalid_refresh_token",
    );
    assert_refused(
        &app.get("/auth/verify", &next.access_token).await,
        "invalid_token",
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn reuse_of_a_token_whose_successor_was_used_ends_the_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let second = refreshed(&app, &registered.refresh_token).await;
    let third = refreshed(&app, &second.refresh_token).await;

    // Inside the window, but the successor is spent: this is not a racing tab.
    let reuse = app.refresh(&registered.refresh_token).await;

    assert_refused(&reuse, "refresh_token_reused");
    assert!(!session_live(&app, registered.session_id).await);
    assert_refused(
        &app.refresh(&third.refresh_token).await,
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

    for presented in ["", "gtr_xyz", unknown.expose(), &registered.access_token] {
        assert_refused(&app.refresh(presented).await, "invalid_refresh_token");
    }
    let wrong_shape = app.post("/auth/refresh", json!({"token": "x"})).await;
    assert_eq!(wrong_shape.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(session_live(&app, registered.session_id).await);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn idle_session_expires_and_refreshing_keeps_it_alive(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let almost_idle = TEST_SESSIONS.idle_timeout - Duration::from_secs(60);

    app.clock.advance(almost_idle);
    let kept = refreshed(&app, &registered.refresh_token).await;
    app.clock.advance(TEST_SESSIONS.idle_timeout);
    let expired = app.refresh(&kept.refresh_token).await;

    assert_refused(&expired, "session_expired");
    assert!(!session_live(&app, registered.session_id).await);
    assert_refused(
        &app.refresh(&kept.refresh_token).await,
        "invalid_refresh_token",
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn absolute_lifetime_ends_even_an_active_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let mut refresh_token = registered.refresh_token;
    let step = Duration::from_secs(6 * 86_400);

    for _ in 0..4 {
        app.clock.advance(step);
        refresh_token = refreshed(&app, &refresh_token).await.refresh_token;
    }
    // Five minutes before the 30-day limit the access token is cut to the session's end.
    app.clock
        .advance(TEST_SESSIONS.max_lifetime - 4 * step - Duration::from_secs(300));
    let last = refreshed(&app, &refresh_token).await;
    app.clock.advance(Duration::from_secs(300));
    let ended = app.refresh(&last.refresh_token).await;

    assert_eq!(last.expires_in, 300);
    assert_refused(&ended, "session_expired");
    assert_refused(
        &app.get("/auth/verify", &last.access_token).await,
        "invalid_token",
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn expired_session_refuses_its_access_tokens(pool: PgPool) {
    let app = TestApp::with(
        pool,
        Options {
            sessions: gatehouse_origin::sessions::SessionPolicy {
                idle_timeout: Duration::from_secs(300),
                ..TEST_SESSIONS
            },
            ..Options::default()
        },
    )
    .await;
    let registered = app.register("ada@example.com").await;

    app.clock.advance(Duration::from_secs(301));
    let verify = app.get("/auth/verify", &registered.access_token).await;

    assert_eq!(registered.expires_in, 300, "capped at the idle limit");
    assert_refused(&verify, "invalid_token");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn logout_ends_only_the_current_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    let second = login(&app, "ada@example.com").await;

    let logout = app.post_empty("/auth/logout", &first.access_token).await;

    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    assert_ended(&app, &first).await;
    assert_verifies(&app, &second.access_token).await;
    refreshed(&app, &second.refresh_token).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn logout_with_scope_all_ends_every_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    let second = login(&app, "ada@example.com").await;
    let stranger = app.register("grace@example.com").await;

    let logout = app
        .post_empty("/auth/logout?scope=all", &first.access_token)
        .await;

    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    for session in [&first, &second] {
        assert_ended(&app, session).await;
    }
    assert_verifies(&app, &stranger.access_token).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn logout_with_scope_others_keeps_the_current_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    let second = login(&app, "ada@example.com").await;

    let logout = app
        .post_empty("/auth/logout?scope=others", &first.access_token)
        .await;
    let bogus = app
        .post_empty("/auth/logout?scope=everyone", &first.access_token)
        .await;

    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    assert_verifies(&app, &first.access_token).await;
    assert_refused(
        &app.get("/auth/verify", &second.access_token).await,
        "invalid_token",
    );
    assert_eq!(bogus.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bogus.problem().code, "invalid_query");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn password_change_needs_the_current_password_and_ends_other_sessions(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    let second = login(&app, "ada@example.com").await;
    let new_password = "a brand new passphrase";

    let wrong = app
        .put(
            "/auth/password",
            &first.access_token,
            json!({"current_password": "not my password", "new_password": new_password}),
        )
        .await;
    let weak = app
        .put(
            "/auth/password",
            &first.access_token,
            json!({"current_password": PASSWORD, "new_password": "short"}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(wrong.problem().code, "wrong_password");
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.get("/auth/verify", &second.access_token).await.status,
        StatusCode::OK,
        "refused changes end nothing"
    );

    let changed = app
        .put(
            "/auth/password",
            &first.access_token,
            json!({"current_password": PASSWORD, "new_password": new_password}),
        )
        .await;

    assert_eq!(changed.status, StatusCode::NO_CONTENT);
    assert_verifies(&app, &first.access_token).await;
    assert_ended(&app, &second).await;
    assert_eq!(
        app.login("ada@example.com", PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("ada@example.com", new_password).await.status,
        StatusCode::OK
    );
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

    let response = app.get("/auth/sessions", &first.access_token).await;

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
        list.sessions[1].last_used_at + TEST_SESSIONS.idle_timeout
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_session_can_be_ended_by_id_by_its_user_only(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    let second = login(&app, "ada@example.com").await;
    let stranger = app.register("grace@example.com").await;
    let path = format!("/auth/sessions/{}", second.session_id);

    let by_stranger = app.delete(&path, &stranger.access_token).await;
    let ended = app.delete(&path, &first.access_token).await;
    let again = app.delete(&path, &first.access_token).await;
    let garbage = app
        .delete("/auth/sessions/not-a-uuid", &first.access_token)
        .await;

    assert_eq!(by_stranger.status, StatusCode::NOT_FOUND);
    assert_eq!(by_stranger.problem().code, "session_not_found");
    assert_eq!(ended.status, StatusCode::NO_CONTENT);
    assert_refused(
        &app.get("/auth/verify", &second.access_token).await,
        "invalid_token",
    );
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(garbage.status, StatusCode::NOT_FOUND);
    assert_eq!(garbage.problem().code, "not_found");
    assert_verifies(&app, &first.access_token).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn deactivation_ends_every_session_and_its_refresh_tokens(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    let second = login(&app, "ada@example.com").await;

    let deleted = app.delete("/auth/profile", &first.access_token).await;

    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    for session in [&first, &second] {
        assert_refused(
            &app.refresh(&session.refresh_token).await,
            "invalid_refresh_token",
        );
    }
}

async fn revocations(app: &TestApp, secret: Option<&str>) -> TestResponse {
    let mut request = Request::get("/edge/revocations");
    if let Some(secret) = secret {
        request = request.header(EDGE_SECRET_HEADER, secret);
    }
    app.send(request.body(Body::empty()).unwrap()).await
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn revocation_list_names_ended_sessions_until_their_tokens_expire(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let ended = app.register("ada@example.com").await;
    let live = login(&app, "ada@example.com").await;
    app.post_empty("/auth/logout", &ended.access_token).await;
    let logged_out_at = app.clock.clock().now().unix_timestamp();

    let response = revocations(&app, Some(EDGE_SECRET)).await;
    let without_secret = revocations(&app, None).await;
    let wrong_secret = revocations(&app, Some(&EDGE_SECRET.replace('0', "1"))).await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let list: RevocationList = response.json();
    assert_eq!(list.revoked.len(), 1);
    assert_eq!(list.revoked[0].sid, ended.session_id);
    assert_eq!(list.revoked[0].until, logged_out_at + 900 + 5);
    assert!(list.revoked.iter().all(|r| r.sid != live.session_id));
    for refused in [without_secret, wrong_secret] {
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refused.problem().code, "not_from_edge");
    }

    app.clock.advance(Duration::from_secs(906));
    let later: RevocationList = revocations(&app, Some(EDGE_SECRET)).await.json();
    assert!(later.revoked.is_empty(), "entries expire with the tokens");
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
                    json!({"refresh_token": registered.refresh_token}).to_string(),
                ))
                .unwrap(),
        )
        .await;

    assert_refused(&no_token, "missing_token");
    assert_refused(&no_key, "invalid_api_key");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_janitor_deletes_only_what_has_long_expired(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let ended = app.register("ada@example.com").await;
    app.post_empty("/auth/logout", &ended.access_token).await;
    app.login("ghost@example.com", "wrong guess").await;
    app.clock
        .advance(gatehouse_origin::janitor::RETENTION + Duration::from_secs(1));
    let live = login(&app, "ada@example.com").await;

    let purged = gatehouse_origin::janitor::purge(&app.state, app.clock.clock().now())
        .await
        .unwrap();

    assert_eq!(purged.sessions, 1);
    assert_eq!(purged.counters, 1, "the stale failure counter");
    assert!(session_live(&app, live.session_id).await);
    refreshed(&app, &live.refresh_token).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_logout_racing_a_refresh_leaves_nothing_alive(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let mut lock = RowLock::take(&app.pool, "sessions", registered.session_id).await;

    let (refresh, logout, ()) = tokio::join!(
        app.refresh(&registered.refresh_token),
        app.post_empty("/auth/logout", &registered.access_token),
        async {
            lock.wait_for_waiters(2).await;
            lock.release().await;
        }
    );

    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    assert!(!session_live(&app, registered.session_id).await);
    // Whichever went first, whatever the refresh handed out is dead now.
    if refresh.status == StatusCode::OK {
        let pair: TokenResponse = refresh.json();
        assert_refused(
            &app.refresh(&pair.refresh_token).await,
            "invalid_refresh_token",
        );
        assert_refused(
            &app.get("/auth/verify", &pair.access_token).await,
            "invalid_token",
        );
    } else {
        assert_refused(&refresh, "invalid_refresh_token");
    }
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
async fn the_list_leaves_out_ended_and_expired_sessions(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let expired = app.register("ada@example.com").await;
    app.clock
        .advance(TEST_SESSIONS.idle_timeout + Duration::from_secs(1));
    let ended = login(&app, "ada@example.com").await;
    app.post_empty("/auth/logout", &ended.access_token).await;
    let current = login(&app, "ada@example.com").await;

    let list: SessionList = app
        .get("/auth/sessions", &current.access_token)
        .await
        .json();
    let delete_expired = app
        .delete(
            &format!("/auth/sessions/{}", expired.session_id),
            &current.access_token,
        )
        .await;

    let ids: Vec<Uuid> = list.sessions.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![current.session_id]);
    assert_eq!(delete_expired.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_current_session_keeps_refreshing_after_ending_the_others(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let current = app.register("ada@example.com").await;
    let other = login(&app, "ada@example.com").await;
    let third = login(&app, "ada@example.com").await;

    let others = app
        .post_empty("/auth/logout?scope=others", &current.access_token)
        .await;
    let after_others = refreshed(&app, &current.refresh_token).await;
    let changed = app
        .put(
            "/auth/password",
            &after_others.access_token,
            json!({"current_password": PASSWORD, "new_password": "a new passphrase"}),
        )
        .await;

    assert_eq!(others.status, StatusCode::NO_CONTENT);
    for ended in [&other, &third] {
        assert_refused(
            &app.refresh(&ended.refresh_token).await,
            "invalid_refresh_token",
        );
    }
    assert_eq!(changed.status, StatusCode::NO_CONTENT);
    refreshed(&app, &after_others.refresh_token).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn responses_that_end_sessions_name_them_for_the_edge(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    let second = login(&app, "ada@example.com").await;
    let now = app.clock.clock().now().unix_timestamp();

    let logout = app
        .post_empty("/auth/logout?scope=others", &first.access_token)
        .await;
    let header = logout.header("x-gatehouse-ended-sessions").unwrap();
    assert_eq!(header, format!("{}={}", second.session_id, now + 905));

    let next = refreshed(&app, &first.refresh_token).await;
    app.clock.advance(AFTER_WINDOW);
    let reuse = app.refresh(&first.refresh_token).await;
    assert_refused(&reuse, "refresh_token_reused");
    assert_eq!(
        reuse.header("x-gatehouse-ended-sessions").unwrap(),
        format!("{}={}", first.session_id, now + 11 + 905)
    );
    assert!(
        app.post_empty("/auth/logout", &next.access_token)
            .await
            .header("x-gatehouse-ended-sessions")
            .is_none(),
        "an ended session cannot log out again"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn every_kind_of_ending_reaches_the_revocation_list(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let reused = app.register("ada@example.com").await;
    let kept = login(&app, "ada@example.com").await;
    let password_victim = login(&app, "ada@example.com").await;
    let deactivated = app.register("grace@example.com").await;

    refreshed(&app, &reused.refresh_token).await;
    app.clock.advance(AFTER_WINDOW);
    app.refresh(&reused.refresh_token).await;
    app.put(
        "/auth/password",
        &kept.access_token,
        json!({"current_password": PASSWORD, "new_password": "a new passphrase"}),
    )
    .await;
    app.delete("/auth/profile", &deactivated.access_token).await;

    let list: RevocationList = revocations(&app, Some(EDGE_SECRET)).await.json();
    let mut listed: Vec<Uuid> = list.revoked.iter().map(|r| r.sid).collect();
    listed.sort();
    let mut expected = vec![
        reused.session_id,
        password_victim.session_id,
        deactivated.session_id,
    ];
    expected.sort();
    assert_eq!(listed, expected);
}
