//! Passkeys at the origin, with real WebAuthn ceremonies answered by a software authenticator
//! (`gatehouse_tests::passkey`): registration, sign-in with a passkey alone, a passkey as a
//! login's second step, and the refusals (a cloned authenticator, another account's credential,
//! a spent ceremony).

use axum::http::{Method, StatusCode};
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{
    CeremonyStart, MfaRequired, PasskeyList, PasskeyRegistered, TokenResponse,
};
use gatehouse_tests::mail::MailServer;
use gatehouse_tests::passkey::SoftPasskey;
use gatehouse_tests::{Options, PASSWORD, TestApp, TestResponse, assert_refused};
use serde_json::json;
use sqlx::PgPool;

/// The page origin the development configuration allows (`WEBAUTHN_ORIGINS`'s default).
const PAGE: &str = "http://localhost:3000";

async fn register_passkey(
    app: &TestApp,
    session: &TokenResponse,
    soft: &mut SoftPasskey,
) -> PasskeyRegistered {
    let token = session.access_token.expose_secret();
    let started = app
        .call(
            Method::POST,
            "/auth/passkeys/register/start",
            Some(token),
            Some(json!({ "current_password": PASSWORD })),
        )
        .await;
    assert_eq!(started.status, StatusCode::OK, "{:?}", started.body);
    let start: CeremonyStart = started.json();
    let credential = soft.register(&start.options, PAGE);
    let finished = app
        .call(
            Method::POST,
            "/auth/passkeys/register/finish",
            Some(token),
            Some(json!({ "ceremony_id": start.ceremony_id, "credential": credential, "name": "laptop" })),
        )
        .await;
    assert_eq!(finished.status, StatusCode::CREATED, "{:?}", finished.body);
    finished.json()
}

async fn start_sign_in(app: &TestApp) -> CeremonyStart {
    let started = app.post("/auth/passkeys/login/start", json!({})).await;
    assert_eq!(started.status, StatusCode::OK, "{:?}", started.body);
    started.json()
}

async fn finish_sign_in(
    app: &TestApp,
    start: &CeremonyStart,
    credential: serde_json::Value,
) -> TestResponse {
    app.post(
        "/auth/passkeys/login/finish",
        json!({ "ceremony_id": start.ceremony_id, "credential": credential }),
    )
    .await
}

async fn sign_in(app: &TestApp, soft: &mut SoftPasskey) -> TestResponse {
    let start = start_sign_in(app).await;
    let credential = soft.sign_in(&start.options, PAGE);
    finish_sign_in(app, &start, credential).await
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_passkey_registers_and_then_signs_in_alone_at_aal2(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let session = app.register("ada@example.com").await;
    let mut soft = SoftPasskey::new();

    let registered = register_passkey(&app, &session, &mut soft).await;
    let listed: PasskeyList = app
        .get("/auth/passkeys", session.access_token.expose_secret())
        .await
        .json();
    let signed_in = sign_in(&app, &mut soft).await;
    let password_login = app.login("ada@example.com", PASSWORD).await;

    assert_eq!(registered.passkey.name, "laptop");
    assert_eq!(
        registered.recovery_codes.map(|codes| codes.len()),
        Some(10),
        "the first factor brings recovery codes"
    );
    assert_eq!(listed.passkeys.len(), 1);
    assert_eq!(signed_in.status, StatusCode::OK, "{:?}", signed_in.body);
    let tokens: TokenResponse = signed_in.json();
    assert_eq!(tokens.user.email, "ada@example.com");
    let claims = app.claims(&tokens.access_token);
    assert_eq!(claims.amr, ["swk", "user", "mfa"]);
    assert_eq!(claims.acr.as_deref(), Some("aal2"));
    let second_step: MfaRequired = password_login.json();
    assert_eq!(second_step.methods, ["passkey", "recovery_code"]);
    let listed: PasskeyList = app
        .get("/auth/passkeys", tokens.access_token.expose_secret())
        .await
        .json();
    assert!(listed.passkeys[0].last_used_at.is_some());
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_cloned_authenticator_and_another_accounts_credential_are_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let ada = app.register("ada@example.com").await;
    let bob = app.register("bob@example.com").await;
    let mut ada_key = SoftPasskey::new();
    let mut bob_key = SoftPasskey::new();
    register_passkey(&app, &ada, &mut ada_key).await;
    register_passkey(&app, &bob, &mut bob_key).await;
    let mut clone = ada_key.clone();

    let original = sign_in(&app, &mut ada_key).await;
    let cloned = sign_in(&app, &mut clone).await;
    // Bob's credential, claiming to be Ada's account.
    let start = start_sign_in(&app).await;
    let forged = bob_key.assert_with(0, &start.options, PAGE, Some(ada.user.id.as_bytes()));
    let borrowed = finish_sign_in(&app, &start, forged).await;
    let mut unverified = ada_key.clone();
    unverified.skip_user_verification = true;
    let without_verification = sign_in(&app, &mut unverified).await;
    let after = sign_in(&app, &mut ada_key).await;

    assert_eq!(original.status, StatusCode::OK);
    assert_refused(&cloned, "passkey_refused");
    assert_refused(&borrowed, "passkey_refused");
    assert_refused(&without_verification, "passkey_refused");
    assert_eq!(after.status, StatusCode::OK, "the real key still works");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_passkey_completes_a_password_login_as_its_second_factor(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let ada = app.register("ada@example.com").await;
    let bob = app.register("bob@example.com").await;
    let mut ada_key = SoftPasskey::new();
    let mut bob_key = SoftPasskey::new();
    register_passkey(&app, &ada, &mut ada_key).await;
    register_passkey(&app, &bob, &mut bob_key).await;
    let second_step = |mfa_token: String| {
        let app = &app;
        async move {
            let started = app
                .post("/auth/mfa/passkey/start", json!({ "mfa_token": mfa_token }))
                .await;
            assert_eq!(started.status, StatusCode::OK, "{:?}", started.body);
            started.json::<CeremonyStart>()
        }
    };
    let finish = |mfa_token: String, start: CeremonyStart, credential: serde_json::Value| {
        let app = &app;
        async move {
            app.post(
                "/auth/mfa/passkey/finish",
                json!({ "mfa_token": mfa_token, "ceremony_id": start.ceremony_id, "credential": credential }),
            )
            .await
        }
    };

    let first: MfaRequired = app.login("ada@example.com", PASSWORD).await.json();
    let token = first.mfa_token.expose_secret().to_owned();
    let start = second_step(token.clone()).await;
    let wrong_key = bob_key.assert_with(0, &start.options, PAGE, None);
    let refused = finish(token.clone(), start, wrong_key).await;
    let start = second_step(token.clone()).await;
    let right_key = ada_key.sign_in(&start.options, PAGE);
    let done = finish(token, start, right_key).await;

    assert_refused(&refused, "passkey_refused");
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
    let tokens: TokenResponse = done.json();
    let claims = app.claims(&tokens.access_token);
    assert_eq!(claims.amr, ["pwd", "swk", "user", "mfa"]);
    assert_eq!(claims.acr.as_deref(), Some("aal2"));
    assert_eq!(
        app.count("select failures::bigint from mfa_challenges")
            .await,
        1,
        "the refused passkey spent one of the mfa_token's tries"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn any_instance_finishes_a_ceremony_once(pool: PgPool) {
    let one = TestApp::new(pool.clone()).await;
    let other = TestApp::with(pool, Options::default()).await;
    let session = one.register("ada@example.com").await;
    let mut soft = SoftPasskey::new();
    register_passkey(&one, &session, &mut soft).await;

    let start = start_sign_in(&one).await;
    let credential = soft.sign_in(&start.options, PAGE);
    let elsewhere = finish_sign_in(&other, &start, credential.clone()).await;
    let again = finish_sign_in(&one, &start, credential).await;

    assert_eq!(elsewhere.status, StatusCode::OK, "{:?}", elsewhere.body);
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.problem().code, "ceremony_invalid");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn removing_a_passkey_needs_a_recent_second_factor_and_ends_other_sessions(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    let password_session = app.register("ada@example.com").await;
    let mut soft = SoftPasskey::new();
    let registered = register_passkey(&app, &password_session, &mut soft).await;
    let passkey_session: TokenResponse = sign_in(&app, &mut soft).await.json();
    let path = format!("/auth/passkeys/{}", registered.passkey.id);
    let remove = |token: String| {
        let (app, path) = (&app, path.clone());
        async move {
            app.call(
                Method::DELETE,
                &path,
                Some(&token),
                Some(json!({ "current_password": PASSWORD })),
            )
            .await
        }
    };

    // No TOTP to remove: 404, and the recovery code offered is not spent.
    let recovery = registered.recovery_codes.as_ref().unwrap()[0]
        .expose_secret()
        .to_owned();
    let no_totp = app
        .call(
            Method::DELETE,
            "/auth/mfa/totp",
            Some(passkey_session.access_token.expose_secret()),
            Some(json!({ "current_password": PASSWORD, "code": recovery })),
        )
        .await;
    let unused = "select count(*) from recovery_codes where used_at is null";
    let unused_after_refusal = app.count(unused).await;
    let one_factor = remove(password_session.access_token.expose_secret().to_owned()).await;
    let removed = remove(passkey_session.access_token.expose_secret().to_owned()).await;
    let again = remove(passkey_session.access_token.expose_secret().to_owned()).await;

    assert_eq!(no_totp.status, StatusCode::NOT_FOUND, "{:?}", no_totp.body);
    assert_eq!(unused_after_refusal, 10);
    assert_refused(&one_factor, "insufficient_user_authentication");
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{:?}", removed.body);
    app.assert_ended(&password_session).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(app.count("select count(*) from recovery_codes").await, 0);
    let login = app.login("ada@example.com", PASSWORD).await;
    assert!(login.body.get("access_token").is_some(), "{:?}", login.body);
    // The address hears of both changes, once each: the refused removal changed nothing.
    let added = "A second sign-in factor was added to your account";
    let removed = "A second sign-in factor was removed from your account";
    server.wait_for_subject("ada@example.com", added).await;
    server.wait_for_subject("ada@example.com", removed).await;
    let notices = server.received_by("ada@example.com").await;
    for subject in [added, removed] {
        let sent = notices
            .iter()
            .filter(|mail| mail.subject == subject)
            .count();
        assert_eq!(sent, 1, "{subject}");
    }
}
