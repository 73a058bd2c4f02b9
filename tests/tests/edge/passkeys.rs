//! Passkeys through the edge: a real ceremony (the software authenticator) registers a passkey
//! and signs in with it alone, every request forwarded to the origin.

use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{CeremonyStart, PasskeyRegistered, TokenResponse, VerifyResponse};
use gatehouse_tests::PASSWORD;
use gatehouse_tests::passkey::SoftPasskey;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::Stack;

const PAGE: &str = "http://localhost:3000";

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_passkey_registers_and_signs_in_through_the_edge(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let session = stack.register("ada@example.com").await;
    let token = session.access_token.expose_secret();
    let mut soft = SoftPasskey::new();

    let start: CeremonyStart = stack
        .authorized(Method::POST, "/auth/passkeys/register/start", token)
        .json(&json!({ "current_password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let credential = soft.register(&start.options, PAGE);
    let registered = stack
        .authorized(Method::POST, "/auth/passkeys/register/finish", token)
        .json(&json!({ "ceremony_id": start.ceremony_id, "credential": credential }))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    registered.json::<PasskeyRegistered>().await.unwrap();
    let start: CeremonyStart = stack
        .request(Method::POST, "/auth/passkeys/login/start")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let assertion = soft.sign_in(&start.options, PAGE);
    let signed_in = stack
        .request(Method::POST, "/auth/passkeys/login/finish")
        .json(&json!({ "ceremony_id": start.ceremony_id, "credential": assertion }))
        .send()
        .await
        .unwrap();

    assert_eq!(signed_in.status(), StatusCode::OK);
    let tokens: TokenResponse = signed_in.json().await.unwrap();
    let verified: VerifyResponse = stack
        .authorized(
            Method::GET,
            "/auth/verify?acr_values=aal2",
            tokens.access_token.expose_secret(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verified.authentication.amr, ["swk", "user", "mfa"]);
}
