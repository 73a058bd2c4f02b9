//! Sessions through the edge: refresh, logout, password change and session routes forwarded, and
//! ended sessions refused by the edge's own verification, whether they ended through the edge
//! or directly at the origin.

use std::time::Duration;

use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{SessionList, TokenResponse};
use gatehouse_tests::{Options, PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{Stack, assert_problem, problem};

/// A stack whose edge refreshes its revocation list every `secs` seconds (0: on every check).
async fn stack_refreshing_every(pool: PgPool, secs: u64) -> Stack {
    Stack::with(pool, Options::default(), |bindings| {
        bindings.insert(
            "REVOCATION_REFRESH_SECS".into(),
            Value::from(secs.to_string()),
        );
    })
    .await
}

async fn assert_session_ended_at_edge(stack: &Stack, access_token: &str) {
    let verify = stack.verify(access_token).await;
    assert_eq!(verify.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        problem(verify).await,
        ("invalid_token".to_owned(), "session has ended".to_owned())
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn logout_through_the_edge_is_refused_there_at_once(pool: PgPool) {
    // A minute between list refreshes: only the edge's own knowledge can refuse the token.
    let stack = stack_refreshing_every(pool, 60).await;
    let registered = stack.register("ada@example.com").await;
    stack
        .assert_verifies(registered.access_token.expose_secret())
        .await;

    let logout = stack
        .authorized(
            Method::POST,
            "/auth/logout",
            registered.access_token.expose_secret(),
        )
        .send()
        .await
        .unwrap();

    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert!(
        logout.headers().get("x-gatehouse-ended-sessions").is_none(),
        "the origin's note to the edge does not reach the client"
    );
    assert_session_ended_at_edge(&stack, registered.access_token.expose_secret()).await;
    assert_eq!(
        stack.relay.count("GET /edge/revocations"),
        1,
        "refused from the origin's header, not from a new list"
    );
    let profile = stack
        .authorized(
            Method::GET,
            "/auth/profile",
            registered.access_token.expose_secret(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        stack.relay.count("GET /auth/profile"),
        0,
        "refused before the origin"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_session_ended_directly_at_the_origin_is_refused_by_the_edge(pool: PgPool) {
    // Refreshing on every check makes the bound zero, so the test needs no waiting.
    let stack = stack_refreshing_every(pool, 0).await;
    let registered = stack.register("ada@example.com").await;
    let other = stack.login("ada@example.com").await;
    stack
        .assert_verifies(registered.access_token.expose_secret())
        .await;

    // The origin ends the session with no request through the edge.
    let logout = stack
        .app
        .post_empty("/auth/logout", registered.access_token.expose_secret())
        .await;

    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    assert_session_ended_at_edge(&stack, registered.access_token.expose_secret()).await;
    // Other sessions are unaffected.
    stack
        .assert_verifies(other.access_token.expose_secret())
        .await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_revocation_list_is_fetched_once_per_interval(pool: PgPool) {
    let stack = stack_refreshing_every(pool, 60).await;
    let registered = stack.register("ada@example.com").await;

    for _ in 0..10 {
        stack
            .assert_verifies(registered.access_token.expose_secret())
            .await;
    }

    assert_eq!(stack.relay.count("GET /edge/revocations"), 1);
    let fetch = stack
        .relay
        .seen()
        .into_iter()
        .find(|seen| seen.route == "GET /edge/revocations")
        .unwrap();
    assert_eq!(
        fetch.headers[gatehouse_shared::api::EDGE_SECRET_HEADER],
        gatehouse_tests::EDGE_SECRET
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn refresh_reuse_through_the_edge_ends_the_session_there(pool: PgPool) {
    let stack = stack_refreshing_every(pool, 60).await;
    let registered = stack.register("ada@example.com").await;
    let refresh = |token: &str| {
        stack
            .request(Method::POST, "/auth/refresh")
            .json(&json!({ "refresh_token": token }))
            .send()
    };

    let rotated = refresh(registered.refresh_token.expose_secret())
        .await
        .unwrap();
    assert_eq!(rotated.status(), StatusCode::OK);
    let rotated: TokenResponse = rotated.json().await.unwrap();
    stack
        .assert_verifies(rotated.access_token.expose_secret())
        .await;
    stack.app.clock.advance(Duration::from_secs(11));
    let reuse = refresh(registered.refresh_token.expose_secret())
        .await
        .unwrap();

    assert_problem(reuse, StatusCode::UNAUTHORIZED, "refresh_token_reused").await;
    assert_session_ended_at_edge(&stack, rotated.access_token.expose_secret()).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn password_change_and_session_routes_work_through_the_edge(pool: PgPool) {
    let stack = stack_refreshing_every(pool, 60).await;
    let first = stack.register("ada@example.com").await;
    let second = stack.login("ada@example.com").await;
    let third = stack.login("ada@example.com").await;
    for session in [&first, &second, &third] {
        stack
            .assert_verifies(session.access_token.expose_secret())
            .await;
    }

    let listed = stack
        .authorized(
            Method::GET,
            "/auth/sessions",
            first.access_token.expose_secret(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    assert_eq!(
        listed.json::<SessionList>().await.unwrap().sessions.len(),
        3
    );

    let ended = stack
        .authorized(
            Method::DELETE,
            &format!("/auth/sessions/{}", third.session_id),
            first.access_token.expose_secret(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), StatusCode::NO_CONTENT);
    assert_session_ended_at_edge(&stack, third.access_token.expose_secret()).await;

    let wrong = stack
        .authorized(
            Method::PUT,
            "/auth/password",
            first.access_token.expose_secret(),
        )
        .json(&json!({ "current_password": "not it at all", "new_password": "a new passphrase" }))
        .send()
        .await
        .unwrap();
    assert_problem(wrong, StatusCode::FORBIDDEN, "wrong_password").await;

    let changed = stack
        .authorized(
            Method::PUT,
            "/auth/password",
            first.access_token.expose_secret(),
        )
        .json(&json!({ "current_password": PASSWORD, "new_password": "a new passphrase" }))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::NO_CONTENT);
    assert_session_ended_at_edge(&stack, second.access_token.expose_secret()).await;
    stack
        .assert_verifies(first.access_token.expose_secret())
        .await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_edge_that_cannot_read_revocations_refuses_to_vouch(pool: PgPool) {
    // With a secret the origin does not know, it will not hand out its revocation list.
    let stack = Stack::with(pool, Options::default(), |bindings| {
        bindings.insert(
            "EDGE_SECRET".into(),
            Value::from("not the origin's secret, but long enough to look like one"),
        );
    })
    .await;
    let registered = stack.register("ada@example.com").await;

    let verify = stack.verify(registered.access_token.expose_secret()).await;

    assert_eq!(verify.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(verify.headers()["retry-after"], "1");
    assert_eq!(problem(verify).await.0, "revocations_unavailable");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_revocation_list_is_not_reachable_through_the_edge(pool: PgPool) {
    let stack = Stack::start(pool).await;
    stack.register("ada@example.com").await;

    let response = stack
        .client
        .get(format!("{}/edge/revocations", stack.edge.url))
        .send()
        .await
        .unwrap();

    assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(stack.relay.count("GET /edge/revocations"), 0);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_edge_without_its_secret_refuses_to_run(pool: PgPool) {
    let stack = Stack::with(pool, Options::default(), |bindings| {
        bindings.remove("EDGE_SECRET");
    })
    .await;

    let response = stack.send(Method::GET, "/auth/verify").await;

    assert_problem(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
    )
    .await;
    assert!(stack.relay.seen().is_empty());
}

/// A stack whose edge keeps a list at most `max_stale` seconds once the origin is gone, and
/// renews it on every check, so every check after the outage depends on the stale rule.
async fn stack_with_max_stale(pool: PgPool, max_stale: u64) -> Stack {
    Stack::with(pool, Options::default(), |bindings| {
        bindings.insert("REVOCATION_REFRESH_SECS".into(), Value::from("0"));
        bindings.insert(
            "REVOCATION_MAX_STALE_SECS".into(),
            Value::from(max_stale.to_string()),
        );
    })
    .await
}

fn unreachable_origin() -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    format!("http://{closed}")
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_origin_outage_is_bridged_with_the_last_list(pool: PgPool) {
    let stack = stack_with_max_stale(pool, 300).await;
    let live = stack.register("ada@example.com").await;
    let ended = stack.login("ada@example.com").await;
    // Ended at the origin directly, so only the list tells the edge.
    stack
        .app
        .post_empty("/auth/logout", ended.access_token.expose_secret())
        .await;
    stack
        .assert_verifies(live.access_token.expose_secret())
        .await;

    stack.relay.retarget(&unreachable_origin());

    // The last list still vouches.
    stack
        .assert_verifies(live.access_token.expose_secret())
        .await;
    assert_session_ended_at_edge(&stack, ended.access_token.expose_secret()).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_list_too_stale_to_trust_makes_verification_unavailable(pool: PgPool) {
    let stack = stack_with_max_stale(pool, 0).await;
    let live = stack.register("ada@example.com").await;
    stack
        .assert_verifies(live.access_token.expose_secret())
        .await;

    stack.relay.retarget(&unreachable_origin());
    let verify = stack.verify(live.access_token.expose_secret()).await;

    assert_problem(
        verify,
        StatusCode::SERVICE_UNAVAILABLE,
        "revocations_unavailable",
    )
    .await;
}
