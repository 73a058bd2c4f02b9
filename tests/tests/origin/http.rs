//! Over a real socket: the way clients and the edge reach the origin.

use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{
    LoginRequest, Problem, RegisterRequest, TokenResponse, UserProfile, VerifyResponse,
};
use gatehouse_shared::jwk::{JwkSet, KeySet};
use gatehouse_shared::token::{Validation, validate};
use gatehouse_tests::{AUDIENCE, ISSUER, PASSWORD, TestApp, spawn_server};
use reqwest::StatusCode;
use sqlx::PgPool;

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn full_flow_over_http_with_the_shared_types(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (addr, _server) = spawn_server(app.state.clone()).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let key = app.api_key.as_str();

    let registered: TokenResponse = client
        .post(format!("{base}/auth/register"))
        .header("x-api-key", key)
        .json(&RegisterRequest {
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
            first_name: None,
            last_name: None,
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let login = client
        .post(format!("{base}/auth/login"))
        .header("x-api-key", key)
        .json(&LoginRequest {
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
            device_token: None,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let token = login.json::<TokenResponse>().await.unwrap().access_token;
    let get = |path: &str| {
        client
            .get(format!("{base}{path}"))
            .header("x-api-key", key)
            .bearer_auth(token.expose_secret())
            .send()
    };
    let verified: VerifyResponse = get("/auth/verify").await.unwrap().json().await.unwrap();
    let profile: UserProfile = get("/auth/profile").await.unwrap().json().await.unwrap();

    assert_eq!(verified.user.id, registered.user.id);
    assert_eq!(profile.id, registered.user.id);
    assert_eq!(profile.email, "ada@example.com");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn published_jwks_verifies_issued_tokens(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (addr, _server) = spawn_server(app.state.clone()).await;
    let token = app.register("ada@example.com").await.access_token;

    let response = reqwest::get(format!("http://{addr}/.well-known/jwks.json"))
        .await
        .unwrap();
    let cache_control = response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned();
    let jwks: JwkSet = response.json().await.unwrap();

    assert_eq!(cache_control, "public, max-age=300");
    assert_eq!(jwks.keys.len(), 1);
    let keys = KeySet::from_jwks(&jwks);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        validate(
            token.expose_secret(),
            &keys,
            &Validation::new(ISSUER, AUDIENCE),
            now
        )
        .is_ok()
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn request_id_is_kept_from_the_edge_only(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (addr, _server) = spawn_server(app.state.clone()).await;
    let client = reqwest::Client::new();

    let given = client
        .get(format!("http://{addr}/health"))
        .header("x-request-id", "edge-1234")
        .header("x-gatehouse-edge-secret", gatehouse_tests::EDGE_SECRET)
        .send()
        .await
        .unwrap();
    let forged = client
        .get(format!("http://{addr}/health"))
        .header("x-request-id", "chosen-by-a-client")
        .send()
        .await
        .unwrap();
    let made = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();

    assert_eq!(
        given.headers()["x-request-id"],
        "edge-1234",
        "the edge's id is kept"
    );
    assert_ne!(
        forged.headers()["x-request-id"],
        "chosen-by-a-client",
        "a client's is replaced"
    );
    assert_eq!(made.headers()["x-request-id"].len(), 36, "a UUID");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn unknown_routes_and_methods_get_problem_details(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (addr, _server) = spawn_server(app.state.clone()).await;
    let client = reqwest::Client::new();

    let missing = client
        .get(format!("http://{addr}/nope"))
        .send()
        .await
        .unwrap();
    let wrong_method = client
        .delete(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();

    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(missing.json::<Problem>().await.unwrap().code, "not_found");
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        wrong_method.json::<Problem>().await.unwrap().code,
        "method_not_allowed"
    );
}
