//! `POST /auth/register`: a new account and its tokens, the password stored only as a bcrypt hash,
//! duplicates however spelled, races, and bad fields and bodies.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use futures_util::future::join_all;
use gatehouse_shared::api::{API_KEY_HEADER, TokenResponse};
use gatehouse_tests::{PASSWORD, TestApp, count_status, register_body};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn registration_returns_a_token_and_the_new_user(pool: PgPool) {
    let app = TestApp::new(pool).await;

    let response = app
        .post("/auth/register", register_body("ada@example.com"))
        .await;

    assert_eq!(response.status, StatusCode::CREATED);
    let body: TokenResponse = response.json();
    assert_eq!(body.token_type, "Bearer");
    assert_eq!(body.expires_in, 900);
    assert_eq!(body.user.email, "ada@example.com");
    assert_eq!(body.user.first_name.as_deref(), Some("Ada"));
    assert!(body.user.is_active);
    let claims = app.claims(&body.access_token);
    assert_eq!(claims.sub, body.user.id);
    assert_eq!(claims.email, "ada@example.com");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn password_is_stored_only_as_a_bcrypt_hash(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.register("ada@example.com").await;

    let stored: String = sqlx::query_scalar("select password_hash from users")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    assert!(stored.starts_with("$2b$04$"), "{stored}");
    assert!(!stored.contains(PASSWORD));
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn duplicate_email_is_a_conflict_whatever_its_case_or_spacing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.register("ada@example.com").await;

    let response = app
        .post("/auth/register", register_body("  ADA@Example.COM "))
        .await;

    assert_eq!(response.status, StatusCode::CONFLICT);
    assert_eq!(response.problem().code, "email_taken");
    assert_eq!(app.user_count().await, 1);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn concurrent_registrations_of_one_email_create_exactly_one_account(pool: PgPool) {
    let app = TestApp::new(pool).await;

    let attempts = (0..20).map(|_| app.post("/auth/register", register_body("race@example.com")));
    // Polled together, the twenty requests hash in parallel on the bcrypt pool and then race to
    // insert; only the unique index can pick the winner.
    let responses = join_all(attempts).await;

    let created = count_status(&responses, StatusCode::CREATED);
    let conflicts = count_status(&responses, StatusCode::CONFLICT);
    assert_eq!((created, conflicts), (1, 19));
    assert_eq!(app.user_count().await, 1);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn invalid_fields_are_listed_in_one_422(pool: PgPool) {
    let app = TestApp::new(pool).await;

    let response = app
        .post(
            "/auth/register",
            json!({ "email": "not-an-email", "password": "short", "last_name": "x".repeat(101) }),
        )
        .await;

    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
    let problem = response.problem();
    assert_eq!(problem.code, "validation_failed");
    let fields: Vec<&str> = problem.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["email", "password", "last_name"]);
    assert_eq!(app.user_count().await, 0);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn password_of_exactly_72_bytes_registers_and_logs_in(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let password = format!("mauve lantern éclair quokka {}x", "é".repeat(21));
    assert_eq!(password.len(), 72);

    let registered = app
        .post(
            "/auth/register",
            json!({ "email": "ada@example.com", "password": password }),
        )
        .await;
    let login = app.login("ada@example.com", &password).await;
    let almost = app.login("ada@example.com", &password[..71]).await;

    assert_eq!(registered.status, StatusCode::CREATED);
    assert_eq!(login.status, StatusCode::OK);
    assert_eq!(almost.status, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn password_over_72_bytes_is_refused_not_truncated(pool: PgPool) {
    let app = TestApp::new(pool).await;

    let response = app
        .post(
            "/auth/register",
            json!({ "email": "ada@example.com", "password": "a".repeat(73) }),
        )
        .await;

    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
    let problem = response.problem();
    assert_eq!(problem.errors[0].field, "password");
    assert!(problem.errors[0].message.contains("72 bytes"));
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn malformed_bodies_get_problem_details(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let post = |content_type: &str, body: String| {
        Request::builder()
            .method(Method::POST)
            .uri("/auth/register")
            .header(API_KEY_HEADER, &app.api_key)
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap()
    };
    let cases = [
        (
            post("application/json", "{\"email\": ".into()),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            post("text/plain", register_body("a@b.co").to_string()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            post("application/json", json!({"email": "a@b.co"}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            post(
                "application/json",
                json!({"email": 5, "password": PASSWORD}).to_string(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            post(
                "application/json",
                json!({"email": "a@b.co", "password": PASSWORD, "first_name": "x".repeat(20_000)})
                    .to_string(),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];

    for (request, status, code) in cases {
        let response = app.send(request).await;

        assert_eq!(response.status, status, "{code}: {:?}", response.body);
        let problem = response.problem();
        assert_eq!(problem.code, code);
        assert_eq!(problem.status, status.as_u16());
    }
    assert_eq!(app.user_count().await, 0);
}
