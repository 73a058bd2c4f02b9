//! Access tokens at the edge: bad tokens refused there, the key set fetched at most once per
//! cooldown, and key rotation at the origin picked up without a restart.

use gatehouse_shared::ExposeSecret;
use gatehouse_shared::signing::TokenSigner;
use gatehouse_shared::token::AccessClaims;
use gatehouse_tests::{Options, PASSWORD, TestApp, spawn_server};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;

use crate::{Stack, assert_problem, problem};

/// The claims of a freshly issued token, to be altered and re-signed.
async fn claims_of(stack: &Stack, token: &str) -> AccessClaims {
    stack
        .app
        .state
        .tokens
        .verify(token, stack.app.state.clock.now())
        .unwrap()
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn bad_tokens_are_refused_at_the_edge(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let token = stack.register("ada@example.com").await.access_token;
    let claims = claims_of(&stack, token.expose_secret()).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    let expired = stack.app.signer.sign(&AccessClaims {
        iat: now - 2000,
        nbf: now - 2000,
        exp: now - 1000,
        ..claims.clone()
    });
    let wrong_audience = stack.app.signer.sign(&AccessClaims {
        aud: vec!["someone-else".into()],
        ..claims.clone()
    });
    let unknown_kid = TokenSigner::generate(&mut rand_core::OsRng).sign(&claims);
    let (header, rest) = token.expose_secret().split_once('.').unwrap();
    let (payload, _) = rest.split_once('.').unwrap();
    let forged_signature = format!("{header}.{payload}.{}", "A".repeat(86));
    // {"alg":"none","typ":"at+jwt"}
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.{payload}.");
    let cases = [
        (expired, "token has expired"),
        (wrong_audience, "audience is not accepted"),
        (unknown_kid, "token names an unknown key"),
        (forged_signature, "signature is invalid"),
        (unsigned, "unsecured tokens are not accepted"),
        ("not-a-token".to_owned(), "token is malformed"),
    ];

    for (bad, reason) in &cases {
        let verify = stack.verify(bad).await;
        let profile = stack
            .authorized(Method::GET, "/auth/profile", bad)
            .send()
            .await
            .unwrap();

        assert_eq!(verify.status(), StatusCode::UNAUTHORIZED, "{reason}");
        assert!(
            verify.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
        assert_eq!(
            problem(verify).await,
            ("invalid_token".to_owned(), (*reason).to_owned())
        );
        assert_eq!(profile.status(), StatusCode::UNAUTHORIZED, "{reason}");
    }
    let missing = stack.send(Method::GET, "/auth/profile").await;
    assert_problem(missing, StatusCode::UNAUTHORIZED, "missing_token").await;
    assert_eq!(stack.relay.count("GET /auth/verify"), 0);
    assert_eq!(
        stack.relay.count("GET /auth/profile"),
        0,
        "refused before the origin"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_flood_of_unknown_kids_fetches_the_keys_at_most_once_per_cooldown(pool: PgPool) {
    let stack = Stack::with(pool, Options::default(), |bindings| {
        bindings.insert("JWKS_REFETCH_COOLDOWN_SECS".into(), Value::from("60"));
    })
    .await;
    let token = stack.register("ada@example.com").await.access_token;
    let claims = claims_of(&stack, token.expose_secret()).await;

    for _ in 0..20 {
        let stranger = TokenSigner::generate(&mut rand_core::OsRng).sign(&claims);
        assert_eq!(
            stack.verify(&stranger).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }

    // One fetch to learn the keys, at most one more for the first unknown kid.
    let fetches = stack.relay.count("GET /.well-known/jwks.json");
    assert!(
        (1..=2).contains(&fetches),
        "{fetches} key-set fetches for 20 unknown kids"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_key_rotation_at_the_origin_is_picked_up_without_a_restart(pool: PgPool) {
    let old_key = TokenSigner::generate(&mut rand_core::OsRng);
    let old_public = old_key.verifying_key();
    let stack = Stack::with(
        pool.clone(),
        Options {
            signer: old_key,
            ..Options::default()
        },
        |_| {},
    )
    .await;
    let old_token = stack.register("ada@example.com").await.access_token;
    stack.assert_verifies(old_token.expose_secret()).await;

    // The origin is redeployed with a new signing key, keeping the old one verifiable.
    let rotated = TestApp::with(
        pool,
        Options {
            previous: Some(old_public),
            ..Options::default()
        },
    )
    .await;
    let (addr, _server) = spawn_server(rotated.state.clone()).await;
    stack.relay.retarget(&format!("http://{addr}"));
    let login = stack
        .request(Method::POST, "/auth/login")
        .json(&serde_json::json!({ "email": "ada@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let new_token = login
        .json::<gatehouse_shared::api::TokenResponse>()
        .await
        .unwrap()
        .access_token;

    assert_ne!(
        gatehouse_shared::token::key_id(new_token.expose_secret()),
        gatehouse_shared::token::key_id(old_token.expose_secret())
    );
    assert_eq!(
        stack.verify(new_token.expose_secret()).await.status(),
        StatusCode::OK,
        "new key learnt"
    );
    assert_eq!(
        stack.verify(old_token.expose_secret()).await.status(),
        StatusCode::OK,
        "previous key still accepted"
    );
}
