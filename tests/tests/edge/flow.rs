//! What the edge answers itself and what it forwards: verification without a round trip, requests
//! forwarded intact, the client IP, origin failures as 502/504 problems, and size limits.

use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{EDGE_SECRET_HEADER, TokenResponse, UserProfile, VerifyResponse};
use gatehouse_tests::edge::{Edge, bindings};
use gatehouse_tests::{EDGE_SECRET, PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::{Stack, assert_problem, problem};

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn verify_is_answered_at_the_edge_and_the_rest_is_forwarded(pool: PgPool) {
    let stack = Stack::start(pool).await;

    let registered = stack.register("ada@example.com").await;
    let login = stack
        .request(Method::POST, "/auth/login")
        .json(&json!({ "email": "ada@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let token = login.json::<TokenResponse>().await.unwrap().access_token;
    let verify = stack.verify(token.expose_secret()).await;
    let verify_status = verify.status();
    let verified: VerifyResponse = verify.json().await.unwrap();
    let profile = stack
        .authorized(Method::GET, "/auth/profile", token.expose_secret())
        .send()
        .await
        .unwrap();
    let profile_request_id = profile.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let profile: UserProfile = profile.json().await.unwrap();

    assert_eq!(verify_status, StatusCode::OK);
    assert_eq!(verified.user.id, registered.user.id);
    assert_eq!(profile.id, registered.user.id);
    assert_eq!(
        stack.relay.count("GET /auth/verify"),
        0,
        "verify never reaches the origin"
    );
    assert_eq!(stack.relay.count("GET /auth/profile"), 1);
    assert_eq!(stack.relay.count("POST /auth/register"), 1);
    assert_eq!(stack.relay.count("POST /auth/login"), 1);
    let forwarded = stack
        .relay
        .seen()
        .into_iter()
        .find(|seen| seen.route == "GET /auth/profile")
        .unwrap();
    assert_eq!(
        forwarded.headers["x-request-id"], profile_request_id,
        "one request id end to end"
    );
    assert_eq!(forwarded.headers[EDGE_SECRET_HEADER], EDGE_SECRET);
    assert!(
        forwarded.headers["authorization"].starts_with("Bearer "),
        "headers intact"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn repeated_verifies_cost_the_origin_nothing(pool: PgPool) {
    let stack = Stack::with(pool, gatehouse_tests::Options::default(), |bindings| {
        bindings.insert("API_KEY_CACHE_TTL_SECS".into(), "30".into());
        bindings.insert("REVOCATION_REFRESH_SECS".into(), "60".into());
    })
    .await;
    let token = stack.register("ada@example.com").await.access_token;
    // The first verify learns the keys and the revocation list; the API key is known from
    // registering.
    stack.assert_verifies(token.expose_secret()).await;
    let before = stack.relay.seen().len();

    for _ in 0..20 {
        stack.assert_verifies(token.expose_secret()).await;
    }

    assert_eq!(
        stack.relay.seen().len(),
        before,
        "no origin request at all: keys and API key are cached"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn forwarded_requests_keep_method_path_query_and_body(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let token = stack.register("ada@example.com").await.access_token;

    let patched = stack
        .authorized(
            Method::PATCH,
            "/auth/profile?source=edge-test",
            token.expose_secret(),
        )
        .json(&json!({ "first_name": "Augusta" }))
        .send()
        .await
        .unwrap();

    assert_eq!(patched.status(), StatusCode::OK);
    assert_eq!(
        patched
            .json::<UserProfile>()
            .await
            .unwrap()
            .first_name
            .as_deref(),
        Some("Augusta")
    );
    assert_eq!(stack.relay.count("PATCH /auth/profile"), 1);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn client_ip_reaches_the_origin_only_through_the_edge(pool: PgPool) {
    let stack = Stack::start(pool).await;

    let through_edge = stack
        .request(Method::POST, "/auth/register")
        .header("cf-connecting-ip", "203.0.113.9")
        .header("x-gatehouse-client-ip", "198.51.100.66")
        .json(&json!({ "email": "edge@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let origin = stack.relay.url.clone();
    let around_edge = stack
        .client
        .post(format!("{origin}/auth/register"))
        .header("x-api-key", &stack.app.api_key)
        .header("x-gatehouse-client-ip", "198.51.100.66")
        .header(
            EDGE_SECRET_HEADER,
            "a guess at the secret, long enough to be plausible",
        )
        .json(&json!({ "email": "direct@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();

    assert_eq!(through_edge.status(), StatusCode::CREATED);
    assert_eq!(around_edge.status(), StatusCode::CREATED);
    let ip = |email: &'static str| {
        sqlx::query_scalar::<_, Option<String>>(
            "select s.ip from sessions s join users u on u.id = s.user_id where u.email = $1",
        )
        .bind(email)
        .fetch_one(&stack.app.pool)
    };
    assert_eq!(
        ip("edge@example.com").await.unwrap().as_deref(),
        Some("203.0.113.9")
    );
    let forwarded_ips: Vec<_> = stack
        .relay
        .seen()
        .into_iter()
        .filter(|seen| {
            seen.headers.get(EDGE_SECRET_HEADER).map(String::as_str) == Some(EDGE_SECRET)
        })
        .filter_map(|seen| seen.headers.get("x-gatehouse-client-ip").cloned())
        .collect();
    assert_eq!(
        forwarded_ips,
        ["203.0.113.9"],
        "the edge forwards CF-Connecting-IP, not the client's copy"
    );
    assert_eq!(
        ip("direct@example.com").await.unwrap().as_deref(),
        Some("127.0.0.1"),
        "a client cannot choose its IP"
    );
}

#[tokio::test]
async fn unreachable_origin_is_a_502_problem() {
    // Port 9 (discard): privileged, so no test server's ephemeral port can ever be it. A port
    // freed by dropping a listener could be taken by a test running alongside.
    let edge = Edge::start(bindings("http://127.0.0.1:9")).await;
    let key = gatehouse_shared::api_key::ApiKey::generate(&mut rand_core::OsRng);
    let client = gatehouse_tests::edge::client();

    let register = client
        .post(format!("{}/auth/register", edge.url))
        .header("x-api-key", key.expose())
        .json(&json!({ "email": "ada@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let health = client
        .get(format!("{}/health", edge.url))
        .send()
        .await
        .unwrap();

    assert_eq!(register.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(register.headers()["retry-after"], "1");
    assert_eq!(problem(register).await.0, "origin_unreachable");
    assert_problem(health, StatusCode::BAD_GATEWAY, "origin_unreachable").await;
}

#[tokio::test]
async fn silent_origin_is_a_504_problem_after_the_timeout() {
    // An origin that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut bindings = bindings(&format!("http://{addr}"));
    bindings.insert("ORIGIN_TIMEOUT_MS".into(), "300".into());
    let edge = Edge::start(bindings).await;

    let health = reqwest::get(format!("{}/health", edge.url)).await.unwrap();

    assert_problem(health, StatusCode::GATEWAY_TIMEOUT, "origin_timeout").await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn headers_the_edge_owns_are_replaced_when_a_client_sends_them(pool: PgPool) {
    let stack = Stack::start(pool).await;

    let response = stack
        .request(Method::POST, "/auth/register")
        .header("x-gatehouse-client-ip", "198.51.100.66")
        .header("x-request-id", "chosen-by-a-client")
        .json(&json!({ "email": "ada@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    let forwarded = stack
        .relay
        .seen()
        .into_iter()
        .find(|seen| seen.route == "POST /auth/register")
        .unwrap();
    // workerd fills in CF-Connecting-IP from the TCP peer; the client's own copy never passes.
    assert_eq!(
        forwarded
            .headers
            .get("x-gatehouse-client-ip")
            .map(String::as_str),
        Some("127.0.0.1")
    );
    assert_ne!(forwarded.headers["x-request-id"], "chosen-by-a-client");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn unknown_methods_are_refused_not_treated_as_get(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let token = stack.register("ada@example.com").await.access_token;

    let response = stack
        .request(Method::from_bytes(b"PROPFIND").unwrap(), "/auth/verify")
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET, HEAD, OPTIONS");
    assert_eq!(problem(response).await.0, "method_not_allowed");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn paths_and_methods_the_api_does_not_serve_are_answered_at_the_edge(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let before = stack.relay.seen().len();

    // Exact paths, not prefixes: nothing below a route is that route.
    for path in [
        "/auth/password/change",
        "/auth/email/verify/again",
        "/auth/profile/",
        "/",
        "/auth/verify/x",
    ] {
        let response = stack.send(Method::GET, path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(problem(response).await.0, "not_found", "{path}");
    }
    let wrong_method = stack.send(Method::GET, "/auth/login").await;
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers()["allow"], "POST, OPTIONS");

    assert_eq!(
        stack.relay.seen().len(),
        before,
        "none of them reached the origin"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn chunked_upload_over_the_limit_is_refused_at_the_edge(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let chunks =
        futures_util::stream::iter((0..100).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));

    let response = stack
        .request(Method::POST, "/auth/login")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();

    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert_eq!(stack.relay.count("POST /auth/login"), 0);
}
