//! `GET /auth/verify` at the origin: which tokens verify, and every way one is refused.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::VerifyResponse;
use gatehouse_shared::signing::TokenSigner;
use gatehouse_shared::token::AccessClaims;
use gatehouse_tests::{Options, TestApp};
use sqlx::PgPool;

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn valid_token_verifies_with_its_user_and_expiry(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;

    let response = app
        .get("/auth/verify", registered.access_token.expose_secret())
        .await;

    assert_eq!(response.status, StatusCode::OK);
    let body: VerifyResponse = response.json();
    assert!(body.valid);
    assert_eq!(body.user.id, registered.user.id);
    assert_eq!(body.user.email, "ada@example.com");
    let expected_expiry = app.state.clock.now() + Duration::from_secs(900);
    assert!((body.expires_at - expected_expiry).abs() <= time::Duration::seconds(2));
    assert!(
        response.body["expires_at"].as_str().unwrap().ends_with('Z'),
        "RFC 3339 in UTC"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn missing_token_is_401_with_a_bearer_challenge(pool: PgPool) {
    let app = TestApp::new(pool).await;

    let response = app.call(Method::GET, "/auth/verify", None, None).await;

    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.problem().code, "missing_token");
    assert!(
        response
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn malformed_authorization_headers_are_401_not_500(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for header in [
        "Bearer",
        "Bearer ",
        "Basic abc",
        "Bearer a.b.c",
        "Bearer x",
        "token",
        "Bearer 🦀",
    ] {
        let request = axum::http::Request::builder()
            .uri("/auth/verify")
            .header("x-api-key", &app.api_key)
            .header("authorization", header)
            .body(axum::body::Body::empty())
            .unwrap();

        let response = app.send(request).await;

        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{header:?}");
        assert_eq!(response.problem().code, "invalid_token", "{header:?}");
        assert!(
            response
                .header("www-authenticate")
                .unwrap()
                .contains("invalid_token")
        );
    }
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn expired_token_is_rejected(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;

    app.clock.advance(Duration::from_secs(900 + 6));
    let response = app
        .get("/auth/verify", registered.access_token.expose_secret())
        .await;

    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.problem().detail, "token has expired");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn token_signed_by_an_unknown_key_is_rejected(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let claims = app.claims(&registered.access_token);
    let stranger = TokenSigner::generate(&mut rand_core::OsRng);

    let forged = stranger.sign(&claims);
    let response = app.get("/auth/verify", &forged).await;

    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.problem().detail, "token names an unknown key");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn unsigned_token_is_rejected(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let (header_and_claims, _) = registered
        .access_token
        .expose_secret()
        .rsplit_once('.')
        .unwrap();
    let (_, claims) = header_and_claims.split_once('.').unwrap();
    // {"alg":"none","typ":"at+jwt"}
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0";

    let forged = format!("{none_header}.{claims}.");
    let response = app.get("/auth/verify", &forged).await;

    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.problem().detail,
        "unsecured tokens are not accepted"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn token_for_another_audience_is_rejected(pool: PgPool) {
    let signer = TokenSigner::generate(&mut rand_core::OsRng);
    let pem = signer.to_pkcs8_pem();
    let app = TestApp::with(
        pool,
        Options {
            signer,
            ..Options::default()
        },
    )
    .await;
    let registered = app.register("ada@example.com").await;
    let mut claims: AccessClaims = app.claims(&registered.access_token);
    claims.aud = vec!["another-service".into()];

    let token = TokenSigner::from_pkcs8_pem(&pem).unwrap().sign(&claims);
    let response = app.get("/auth/verify", &token).await;

    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.problem().detail, "audience is not accepted");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn tokens_of_the_previous_key_stay_valid_after_a_rotation(pool: PgPool) {
    let old_key = TokenSigner::generate(&mut rand_core::OsRng);
    let old_public = old_key.verifying_key();
    let before = TestApp::with(
        pool.clone(),
        Options {
            signer: old_key,
            ..Options::default()
        },
    )
    .await;
    let registered = before.register("ada@example.com").await;

    let after = TestApp::with(
        pool,
        Options {
            previous: Some(old_public),
            ..Options::default()
        },
    )
    .await;
    let old_token = after
        .get("/auth/verify", registered.access_token.expose_secret())
        .await;
    let new_token = after
        .login("ada@example.com", gatehouse_tests::PASSWORD)
        .await
        .json::<gatehouse_shared::api::TokenResponse>();
    let new_verified = after
        .get("/auth/verify", new_token.access_token.expose_secret())
        .await;

    assert_eq!(old_token.status, StatusCode::OK);
    assert_eq!(new_verified.status, StatusCode::OK);
    assert_ne!(
        gatehouse_shared::token::key_id(registered.access_token.expose_secret()),
        gatehouse_shared::token::key_id(new_token.access_token.expose_secret())
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn deactivated_account_tokens_stop_working_at_once(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let second = app
        .login("ada@example.com", gatehouse_tests::PASSWORD)
        .await
        .json::<gatehouse_shared::api::TokenResponse>();

    let deleted = app
        .deactivate(registered.access_token.expose_secret())
        .await;
    let first_after = app
        .get("/auth/verify", registered.access_token.expose_secret())
        .await;
    let second_after = app
        .get("/auth/profile", second.access_token.expose_secret())
        .await;

    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    for response in [first_after, second_after] {
        assert_eq!(response.status, StatusCode::UNAUTHORIZED);
        assert_eq!(response.problem().code, "invalid_token");
    }
}
