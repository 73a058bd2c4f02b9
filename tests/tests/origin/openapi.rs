//! `/openapi.json`: the OpenAPI 3.1 description, generated from the code, covers every route.

use axum::http::{Method, StatusCode};
use gatehouse_tests::TestApp;
use sqlx::PgPool;

/// Every route the origin serves, as (method, path template).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/auth/register"),
    ("post", "/auth/login"),
    ("post", "/auth/refresh"),
    ("post", "/auth/logout"),
    ("put", "/auth/password"),
    ("get", "/auth/sessions"),
    ("delete", "/auth/sessions/{id}"),
    ("get", "/auth/verify"),
    ("get", "/auth/api-key"),
    ("get", "/auth/profile"),
    ("patch", "/auth/profile"),
    ("delete", "/auth/profile"),
    ("post", "/auth/email/verify"),
    ("post", "/auth/email/verify/resend"),
    ("post", "/auth/password/forgot"),
    ("post", "/auth/password/reset"),
    ("put", "/auth/email"),
    ("post", "/auth/email/confirm"),
    ("post", "/auth/email/undo"),
    ("get", "/auth/mfa"),
    ("post", "/auth/mfa/totp"),
    ("delete", "/auth/mfa/totp"),
    ("post", "/auth/mfa/totp/confirm"),
    ("post", "/auth/mfa/recovery-codes"),
    ("post", "/auth/mfa/verify"),
    ("post", "/auth/mfa/step-up"),
    ("post", "/auth/mfa/passkey/start"),
    ("post", "/auth/mfa/passkey/finish"),
    ("post", "/auth/passkeys/register/start"),
    ("post", "/auth/passkeys/register/finish"),
    ("get", "/auth/passkeys"),
    ("delete", "/auth/passkeys/{id}"),
    ("post", "/auth/passkeys/login/start"),
    ("post", "/auth/passkeys/login/finish"),
    ("get", "/edge/revocations"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/.well-known/jwks.json"),
];

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_description_covers_every_route_and_its_errors(pool: PgPool) {
    let app = TestApp::new(pool).await;

    let response = app.call(Method::GET, "/openapi.json", None, None).await;

    assert_eq!(response.status, StatusCode::OK);
    let doc = &response.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut documented = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            documented += 1;
            assert!(
                ROUTES.contains(&(method.as_str(), path.as_str())),
                "{method} {path} is documented but not served"
            );
            let responses = operation["responses"].as_object().unwrap();
            if path.starts_with("/auth/") {
                for status in ["401", "503"] {
                    assert!(responses.contains_key(status), "{method} {path}: {status}");
                }
            }
            if operation.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(responses.contains_key(status), "{method} {path}: {status}");
                }
            }
        }
    }
    assert_eq!(documented, ROUTES.len(), "every route is documented");
    let problem = &doc["components"]["schemas"]["Problem"]["properties"];
    for field in ["type", "title", "status", "detail", "code"] {
        assert!(problem.get(field).is_some(), "Problem.{field}");
    }
}

/// The edge gates and forwards by its own route table, and answers 404 for a path not in it: the
/// table must list exactly the routes the origin serves to clients (all but its `/edge/*` ones),
/// so a route added to the origin and not to the edge fails here, not in production.
#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_edge_route_table_lists_every_route_of_the_origin(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let doc = app
        .call(Method::GET, "/openapi.json", None, None)
        .await
        .body;

    let mut served: Vec<(String, String)> = vec![("GET".into(), "/openapi.json".into())];
    for (path, item) in doc["paths"].as_object().unwrap() {
        if path.starts_with("/edge/") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            served.push((method.to_uppercase(), path.clone()));
        }
    }
    let mut routed: Vec<(String, String)> = gatehouse_edge::routes::ROUTES
        .iter()
        .map(|route| (route.method.to_owned(), route.path.to_owned()))
        .collect();
    served.sort();
    routed.sort();
    assert_eq!(routed, served);
}
