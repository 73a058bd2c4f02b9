//! API keys at the edge: malformed keys refused without asking the origin, verdicts cached for a
//! bounded time, revocation reaching the edge, and login floods stopped there.

use gatehouse_origin::api_keys;
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api_key::ApiKey;
use reqwest::{Method, StatusCode};
use sqlx::PgPool;

use crate::{Stack, assert_problem, problem};

/// Bound on waiting for a revocation to reach the edge: the test edge caches verdicts 1 s.
const REVOCATION_POLLS: usize = 50;
const REVOCATION_POLL: std::time::Duration = std::time::Duration::from_millis(100);

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn missing_and_malformed_keys_are_refused_without_asking_the_origin(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let url = format!("{}/auth/login", stack.edge.url);

    let missing = stack.client.post(&url).send().await.unwrap();
    let malformed = stack
        .client
        .post(&url)
        .header("x-api-key", "let-me-in")
        .send()
        .await
        .unwrap();

    assert_problem(missing, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    assert_problem(malformed, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    assert!(
        stack.relay.seen().is_empty(),
        "nothing reached the origin: {:?}",
        stack.relay.seen()
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn unknown_key_is_refused_and_its_verdict_cached(pool: PgPool) {
    let stack = Stack::with(pool, gatehouse_tests::Options::default(), |bindings| {
        bindings.insert("API_KEY_CACHE_TTL_SECS".into(), "30".into());
    })
    .await;
    let stranger = ApiKey::generate(&mut rand_core::OsRng);

    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = stack
            .client
            .get(format!("{}/auth/verify", stack.edge.url))
            .header("x-api-key", stranger.expose())
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
    }

    assert_eq!(statuses, [StatusCode::UNAUTHORIZED; 3]);
    assert_eq!(
        stack.relay.count("GET /auth/api-key"),
        1,
        "one lookup, then the cached verdict"
    );
    assert_eq!(stack.relay.seen().len(), 1);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn valid_key_is_looked_up_once_then_cached(pool: PgPool) {
    let stack = Stack::with(pool, gatehouse_tests::Options::default(), |bindings| {
        bindings.insert("API_KEY_CACHE_TTL_SECS".into(), "30".into());
    })
    .await;
    let token = stack.register("ada@example.com").await.access_token;

    for _ in 0..5 {
        stack.assert_verifies(token.expose_secret()).await;
    }

    assert_eq!(
        stack.relay.count("GET /auth/api-key"),
        1,
        "one lookup, then the cached verdict"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn revoked_key_stops_working_within_the_cache_ttl(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let token = stack.register("ada@example.com").await.access_token;
    stack.assert_verifies(token.expose_secret()).await;
    let id = ApiKey::parse(&stack.app.api_key).unwrap().id().to_owned();

    assert!(api_keys::revoke(&stack.app.pool, &id).await.unwrap());
    let revoked_at = std::time::Instant::now();
    let mut refused = None;
    for _ in 0..REVOCATION_POLLS {
        let response = stack.verify(token.expose_secret()).await;
        if response.status() == StatusCode::UNAUTHORIZED {
            refused = Some((revoked_at.elapsed(), problem(response).await.0));
            break;
        }
        tokio::time::sleep(REVOCATION_POLL).await;
    }

    let (after, code) = refused.expect("the revoked key was refused");
    assert_eq!(code, "invalid_api_key");
    // The bound the README states is one cache TTL (1 s here); the margin covers one poll and a
    // slow request, and is far below what one cache extending another would take.
    assert!(
        after < std::time::Duration::from_millis(1_800),
        "refused after {after:?}"
    );
    let after = stack.send(Method::POST, "/auth/login").await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_login_flood_from_one_address_stops_at_the_edge(pool: PgPool) {
    let stack = Stack::with(pool, gatehouse_tests::Options::default(), |bindings| {
        bindings.insert(
            "AUTH_RATE_LIMITER".into(),
            serde_json::json!({ "simple": { "limit": 3, "period": 60 } }),
        );
    })
    .await;
    let login = || {
        stack
            .request(Method::POST, "/auth/login")
            .json(&serde_json::json!({ "email": "ada@example.com", "password": "wrong guess" }))
            .send()
    };

    // The binding counts in fixed windows (Miniflare aligns them to the minute), so a run that
    // straddles a window boundary may see one fresh window: the first 429 comes after 3 to 6
    // logins, never later, and never reaches the origin.
    let mut passed = 0;
    let flooded = loop {
        let response = login().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            break response;
        }
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        passed += 1;
        assert!(passed <= 6, "no 429 after {passed} logins");
    };
    let verify = stack.send(Method::GET, "/auth/verify").await;

    assert!(passed >= 3, "throttled after only {passed} logins");
    assert_eq!(flooded.headers()["retry-after"], "60");
    assert_eq!(problem(flooded).await.0, "too_many_requests");
    assert_eq!(
        stack.relay.count("POST /auth/login"),
        passed,
        "the throttled login never left the edge"
    );
    assert_eq!(
        verify.status(),
        StatusCode::UNAUTHORIZED,
        "other routes are not throttled: a missing token is refused as usual"
    );
}
