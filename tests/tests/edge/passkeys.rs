//! Passkeys through the edge: a real ceremony (the software authenticator) registers a passkey
//! and signs in with it alone, every request forwarded to the origin.

use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{CeremonyStart, PasskeyRegistered, TokenResponse, VerifyResponse};
use gatehouse_tests::PASSWORD;
use gatehouse_tests::passkey::SoftPasskey;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::{Stack, json_of};

const PAGE: &str = "http://localhost:3000";

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_passkey_registers_and_signs_in_through_the_edge(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let session = stack.register("ada@example.com").await;
    let token = Some(session.access_token.expose_secret());
    let mut soft = SoftPasskey::new();

    let reauthentication = json!({ "current_password": PASSWORD });
    let start = stack
        .post_json("/auth/passkeys/register/start", token, reauthentication)
        .await;
    let start: CeremonyStart = json_of(start, StatusCode::OK).await;
    let credential = soft.register(&start.options, PAGE);
    let answer = json!({ "ceremony_id": start.ceremony_id, "credential": credential });
    let registered = stack
        .post_json("/auth/passkeys/register/finish", token, answer)
        .await;
    let _: PasskeyRegistered = json_of(registered, StatusCode::CREATED).await;
    let start = stack
        .post_json("/auth/passkeys/login/start", None, json!({}))
        .await;
    let start: CeremonyStart = json_of(start, StatusCode::OK).await;
    let assertion = soft.sign_in(&start.options, PAGE);
    let answer = json!({ "ceremony_id": start.ceremony_id, "credential": assertion });
    let signed_in = stack
        .post_json("/auth/passkeys/login/finish", None, answer)
        .await;

    let tokens: TokenResponse = json_of(signed_in, StatusCode::OK).await;
    let access = tokens.access_token.expose_secret();
    let verify = stack
        .authorized(Method::GET, "/auth/verify?acr_values=aal2", access)
        .send()
        .await
        .unwrap();
    let verified: VerifyResponse = json_of(verify, StatusCode::OK).await;
    assert_eq!(verified.authentication.amr, ["swk", "user", "mfa"]);
}
