//! CORS at the edge: preflights answered there for listed origins only, and responses that name
//! a listed origin and never reflect another.

use gatehouse_shared::ExposeSecret;
use reqwest::{Method, StatusCode};
use sqlx::PgPool;

use crate::{Stack, problem};

const ALLOWED: &str = "https://app.example.com";

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn preflight_is_answered_at_the_edge_for_listed_origins_only(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let preflight = |origin: &'static str| {
        stack
            .client
            .request(Method::OPTIONS, format!("{}/auth/login", stack.edge.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, x-api-key")
            .send()
    };

    let allowed = preflight(ALLOWED).await.unwrap();
    let other = preflight("https://evil.example.net").await.unwrap();

    assert_eq!(allowed.status(), StatusCode::NO_CONTENT);
    assert_eq!(allowed.headers()["access-control-allow-origin"], ALLOWED);
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    assert!(
        allowed.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-api-key")
    );
    assert_eq!(
        allowed.headers()["access-control-allow-methods"],
        "POST, OPTIONS"
    );
    assert_eq!(allowed.headers()["access-control-max-age"], "600");
    // Exposed headers concern actual responses; a preflight's would be ignored.
    assert!(
        allowed
            .headers()
            .get("access-control-expose-headers")
            .is_none()
    );
    assert_eq!(allowed.headers()["vary"], "Origin");
    assert!(is_request_id(&allowed.headers()["x-request-id"]));
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    assert!(is_request_id(&other.headers()["x-request-id"]));
    assert!(other.headers().get("access-control-allow-origin").is_none());
    assert_eq!(problem(other).await.0, "origin_not_allowed");
    assert!(
        stack.relay.seen().is_empty(),
        "preflights never reach the origin"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn responses_name_listed_origins_and_never_reflect_others(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let token = stack.register("ada@example.com").await.access_token;

    let listed = stack
        .authorized(Method::GET, "/auth/verify", token.expose_secret())
        .header("origin", ALLOWED)
        .send()
        .await
        .unwrap();
    let forwarded = stack
        .authorized(Method::GET, "/auth/profile", token.expose_secret())
        .header("origin", ALLOWED)
        .send()
        .await
        .unwrap();
    let unlisted = stack
        .authorized(Method::GET, "/auth/verify", token.expose_secret())
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();

    // The edge's own answer carries the same decoration as a forwarded one.
    assert_eq!(listed.status(), StatusCode::OK);
    assert_eq!(listed.headers()["content-type"], "application/json");
    assert_eq!(listed.headers()["cache-control"], "no-store");
    assert_eq!(listed.headers()["vary"], "Origin");
    assert!(is_request_id(&listed.headers()["x-request-id"]));
    assert_eq!(
        listed.headers()["access-control-expose-headers"],
        forwarded.headers()["access-control-expose-headers"]
    );
    assert_eq!(listed.headers()["access-control-allow-origin"], ALLOWED);
    assert_eq!(forwarded.headers()["access-control-allow-origin"], ALLOWED);
    assert_eq!(forwarded.status(), StatusCode::OK);
    assert!(
        unlisted
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert!(
        unlisted
            .headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    assert!(
        unlisted.headers()["vary"]
            .to_str()
            .unwrap()
            .contains("Origin")
    );
}

/// What the edge sends as a request id without `cf-ray` (as under `wrangler dev`): a UUID.
fn is_request_id(value: &reqwest::header::HeaderValue) -> bool {
    value
        .to_str()
        .is_ok_and(|id| uuid::Uuid::parse_str(id).is_ok())
}
