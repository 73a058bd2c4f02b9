//! Second factors through the edge: enrolment and the login's second step are forwarded, and
//! RFC 9470 step-up demands on `/auth/verify` are judged at the edge with no origin request.

use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{
    AccessTokenResponse, MfaRequired, MfaStatus, RecoveryCodes, TokenResponse, TotpEnrollment,
    VerifyResponse,
};
use gatehouse_shared::token::AccessClaims;
use gatehouse_shared::totp::Secret;
use gatehouse_tests::PASSWORD;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::{Stack, json_of, problem};

fn code(stack: &Stack, secret: &Secret, steps_ahead: i64) -> String {
    let now = stack.app.state.clock.now().unix_timestamp();
    secret.code_at(now + 30 * steps_ahead)
}

/// An account with a confirmed TOTP authenticator, registered through the edge: its secret,
/// recovery codes and password-only access token.
async fn enrolled(stack: &Stack) -> (Secret, RecoveryCodes, String) {
    let session = stack.register("ada@example.com").await;
    let token = session.access_token.expose_secret().to_owned();
    let reauthentication = json!({ "current_password": PASSWORD });
    let started = stack
        .post_json("/auth/mfa/totp", Some(&token), reauthentication)
        .await;
    let enrolment: TotpEnrollment = json_of(started, StatusCode::OK).await;
    let secret = Secret::from_base32(enrolment.secret.expose_secret()).unwrap();
    let confirm = json!({ "code": code(stack, &secret, 0) });
    let confirmed = stack
        .post_json("/auth/mfa/totp/confirm", Some(&token), confirm)
        .await;
    let codes = json_of(confirmed, StatusCode::OK).await;
    (secret, codes, token)
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn step_up_demands_are_answered_at_the_edge(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let (secret, _, password_only) = enrolled(&stack).await;
    let password_only = password_only.as_str();
    let login = json!({ "email": "ada@example.com", "password": PASSWORD });
    let first = stack.post_json("/auth/login", None, login).await;
    let first: MfaRequired = json_of(first, StatusCode::OK).await;
    // The next step's code: the confirmation spent the current one.
    let second_step = json!({
        "mfa_token": first.mfa_token.expose_secret(),
        "code": code(&stack, &secret, 1),
    });
    let second = stack.post_json("/auth/mfa/verify", None, second_step).await;
    let two_factor: TokenResponse = json_of(second, StatusCode::OK).await;
    let two_factor = two_factor.access_token.expose_secret();
    // The same session, authenticated twenty minutes ago.
    let claims: AccessClaims = stack
        .app
        .state
        .tokens
        .verify(two_factor, stack.app.state.clock.now())
        .unwrap();
    let stale = stack.app.signer.sign(&AccessClaims {
        auth_time: claims.auth_time.map(|at| at - 1200),
        ..claims
    });
    // Keys, API key and revocations learned.
    stack.assert_verifies(password_only).await;
    let before = stack.relay.seen().len();

    let demand = "/auth/verify?acr_values=aal2&max_age=300";
    let short = stack
        .authorized(Method::GET, demand, password_only)
        .send()
        .await
        .unwrap();
    let enough = stack
        .authorized(Method::GET, demand, two_factor)
        .send()
        .await
        .unwrap();
    let too_old = stack
        .authorized(Method::GET, demand, &stale)
        .send()
        .await
        .unwrap();
    let bad_query = stack
        .authorized(Method::GET, "/auth/verify?max_age=soon", two_factor)
        .send()
        .await
        .unwrap();

    assert_eq!(stack.relay.seen().len(), before, "no origin request");
    assert_eq!(short.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        short.headers()["www-authenticate"],
        r#"Bearer realm="gatehouse", error="insufficient_user_authentication", acr_values="aal2""#
    );
    assert_eq!(problem(short).await.0, "insufficient_user_authentication");
    assert_eq!(enough.status(), StatusCode::OK);
    let verified: VerifyResponse = enough.json().await.unwrap();
    assert_eq!(verified.authentication.acr, "aal2");
    assert_eq!(verified.authentication.amr, ["pwd", "otp", "mfa"]);
    assert_eq!(too_old.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        too_old.headers()["www-authenticate"],
        r#"Bearer realm="gatehouse", error="insufficient_user_authentication", acr_values="aal2", max_age="300""#
    );
    assert_eq!(bad_query.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem(bad_query).await.0, "invalid_query");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn step_up_recovery_codes_and_removal_go_through_the_edge(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let (secret, codes, password_only) = enrolled(&stack).await;
    let password_only = password_only.as_str();

    // Removing the factor needs a recent second factor: refused, then stepped up with the next
    // step's code, then done with a recovery code as the removal's code.
    let removal = json!({ "current_password": PASSWORD, "code": code(&stack, &secret, 1) });
    let refused = stack
        .authorized(Method::DELETE, "/auth/mfa/totp", password_only)
        .json(&removal)
        .send()
        .await
        .unwrap();
    let step_up = json!({ "code": code(&stack, &secret, 1) });
    let stepped = stack
        .post_json("/auth/mfa/step-up", Some(password_only), step_up)
        .await;
    let stepped: AccessTokenResponse = json_of(stepped, StatusCode::OK).await;
    let stepped = stepped.access_token.expose_secret();
    let recovery = codes.recovery_codes[0].expose_secret();
    let removed = stack
        .authorized(Method::DELETE, "/auth/mfa/totp", stepped)
        .json(&json!({ "current_password": PASSWORD, "code": recovery }))
        .send()
        .await
        .unwrap();
    let status: MfaStatus = stack
        .authorized(Method::GET, "/auth/mfa", stepped)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem(refused).await.0, "insufficient_user_authentication");
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    assert!(status.methods.is_empty());
}
