//! How ended sessions reach the edge: the revocation list it polls and the header on responses
//! that end sessions.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::RevokedSession;
use gatehouse_shared::api::{EDGE_SECRET_HEADER, RevocationList};
use gatehouse_tests::{EDGE_SECRET, PASSWORD, RowLock, TestApp, TestResponse, assert_refused};
use sqlx::PgPool;
use uuid::Uuid;

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
    let live = app.sign_in("ada@example.com").await;
    app.post_empty("/auth/logout", ended.access_token.expose_secret())
        .await;
    let logged_out_at = app.clock.clock().now().unix_timestamp();

    let response = revocations(&app, Some(EDGE_SECRET)).await;
    let without_secret = revocations(&app, None).await;
    let wrong_secret = revocations(&app, Some(&EDGE_SECRET.replace('0', "1"))).await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let list: RevocationList = response.json();
    assert_eq!(list.revoked.len(), 1);
    assert_eq!(list.revoked[0].sid, ended.session_id);
    // The lifetime plus the largest leeway either side may run with (30 s), whatever this
    // origin's own leeway: the edge may be configured with more.
    assert_eq!(list.revoked[0].until, logged_out_at + 900 + 30);
    assert!(list.revoked.iter().all(|r| r.sid != live.session_id));
    for refused in [without_secret, wrong_secret] {
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refused.problem().code, "not_from_edge");
    }

    app.clock.advance(Duration::from_secs(931));
    let later: RevocationList = revocations(&app, Some(EDGE_SECRET)).await.json();
    assert!(later.revoked.is_empty(), "entries expire with the tokens");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn responses_that_end_sessions_name_them_for_the_edge(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.register("ada@example.com").await;
    let second = app.sign_in("ada@example.com").await;
    let now = app.clock.clock().now().unix_timestamp();

    let logout = app
        .post_empty(
            "/auth/logout?scope=others",
            first.access_token.expose_secret(),
        )
        .await;
    let header = logout.header("x-gatehouse-ended-sessions").unwrap();
    assert_eq!(header, format!("{}={}", second.session_id, now + 930));

    let next = app.refreshed(first.refresh_token.expose_secret()).await;
    app.pass_reuse_window();
    let reuse = app.refresh(first.refresh_token.expose_secret()).await;
    assert_refused(&reuse, "refresh_token_reused");
    assert_eq!(
        reuse.header("x-gatehouse-ended-sessions").unwrap(),
        format!("{}={}", first.session_id, now + 11 + 930)
    );
    assert!(
        app.post_empty("/auth/logout", next.access_token.expose_secret())
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
    let kept = app.sign_in("ada@example.com").await;
    let password_victim = app.sign_in("ada@example.com").await;
    let deactivated = app.register("grace@example.com").await;

    app.refreshed(reused.refresh_token.expose_secret()).await;
    app.pass_reuse_window();
    app.refresh(reused.refresh_token.expose_secret()).await;
    app.change_password(
        kept.access_token.expose_secret(),
        PASSWORD,
        "a new passphrase",
    )
    .await;
    app.deactivate(deactivated.access_token.expose_secret())
        .await;

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

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_logout_that_read_the_time_before_a_refresh_still_outlives_its_token(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let access = registered.access_token.expose_secret();

    // The refresh queues on the session's lock first and reads the time once it holds it; the
    // logout reads the time before it queues. The clock moves a minute in between.
    let mut lock = RowLock::take(&app.pool, "sessions", registered.session_id).await;
    let refresh_queued = tokio::sync::Notify::new();
    let (refresh, logout, ()) = tokio::join!(
        app.refresh(registered.refresh_token.expose_secret()),
        async {
            refresh_queued.notified().await;
            app.post_empty("/auth/logout", access).await
        },
        async {
            lock.wait_for_waiters(1).await;
            refresh_queued.notify_one();
            lock.wait_for_waiters(2).await;
            app.clock.advance(Duration::from_secs(60));
            lock.release().await;
        }
    );

    assert_eq!(refresh.status, StatusCode::OK);
    let token_exp = app
        .claims(
            &refresh
                .json::<gatehouse_shared::api::TokenResponse>()
                .access_token,
        )
        .exp;
    let header = logout.header("x-gatehouse-ended-sessions").unwrap();
    let until = RevokedSession::from_header(header)[0].until;
    assert!(
        until >= token_exp + 30,
        "the edge forgets the session at {until}, its last token expires at {token_exp}"
    );
}
