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

use crate::{Stack, problem};

fn code(stack: &Stack, secret: &Secret, steps_ahead: i64) -> String {
    let now = stack.app.state.clock.now().unix_timestamp();
    secret.code_at(now + 30 * steps_ahead)
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn step_up_demands_are_answered_at_the_edge(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let password_only = stack.register("ada@example.com").await.access_token;
    let password_only = password_only.expose_secret();
    let enrolment: TotpEnrollment = stack
        .authorized(Method::POST, "/auth/mfa/totp", password_only)
        .json(&json!({ "current_password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = Secret::from_base32(enrolment.secret.expose_secret()).unwrap();
    let confirmed = stack
        .authorized(Method::POST, "/auth/mfa/totp/confirm", password_only)
        .json(&json!({ "code": code(&stack, &secret, 0) }))
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), StatusCode::OK);
    confirmed.json::<RecoveryCodes>().await.unwrap();
    let first: MfaRequired = stack
        .request(Method::POST, "/auth/login")
        .json(&json!({ "email": "ada@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The next step's code: the confirmation spent the current one.
    let second = stack
        .request(Method::POST, "/auth/mfa/verify")
        .json(&json!({ "mfa_token": first.mfa_token.expose_secret(), "code": code(&stack, &secret, 1) }))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let two_factor = second.json::<TokenResponse>().await.unwrap().access_token;
    let two_factor = two_factor.expose_secret();
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
    let session = stack.register("ada@example.com").await;
    let password_only = session.access_token.expose_secret();
    let post = |path: &'static str, token: &str, body: serde_json::Value| {
        stack
            .authorized(Method::POST, path, token)
            .json(&body)
            .send()
    };
    let enrolment: TotpEnrollment = post(
        "/auth/mfa/totp",
        password_only,
        json!({ "current_password": PASSWORD }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let secret = Secret::from_base32(enrolment.secret.expose_secret()).unwrap();
    let codes: RecoveryCodes = post(
        "/auth/mfa/totp/confirm",
        password_only,
        json!({ "code": code(&stack, &secret, 0) }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();

    // Removing the factor needs a recent second factor: refused, then stepped up with the next
    // step's code, then done with a recovery code as the removal's code.
    let removal = json!({ "current_password": PASSWORD, "code": code(&stack, &secret, 1) });
    let refused = stack
        .authorized(Method::DELETE, "/auth/mfa/totp", password_only)
        .json(&removal)
        .send()
        .await
        .unwrap();
    let stepped = post(
        "/auth/mfa/step-up",
        password_only,
        json!({ "code": code(&stack, &secret, 1) }),
    )
    .await
    .unwrap();
    let stepped: AccessTokenResponse = stepped.json().await.unwrap();
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
