//! Second factors at the origin: TOTP enrolment and removal, recovery codes, the second step of a
//! login, step-up, RFC 9470 challenges on `/auth/verify` and on sensitive actions. TOTP codes
//! come from the test's clock, which the origin reads too.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use gatehouse_origin::mfa::{self, Reset};
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{
    AccessTokenResponse, MfaRequired, MfaStatus, RecoveryCodes, TokenResponse, TotpEnrollment,
    VerifyResponse,
};
use gatehouse_shared::totp::{STEP_SECS, Secret, step_of};
use gatehouse_tests::mail::MailServer;
use gatehouse_tests::{PASSWORD, TestApp, TestResponse, assert_refused};
use serde_json::json;
use sqlx::PgPool;

const EMAIL: &str = "ada@example.com";
const NEW_PASSWORD: &str = "a brand new passphrase";
const STEP: Duration = Duration::from_secs(STEP_SECS as u64);

/// An account with a confirmed authenticator: its secret, its recovery codes, and the password
/// session that enrolled it.
struct Enrolled {
    secret: Secret,
    recovery_codes: Vec<String>,
    session: TokenResponse,
}

fn now(app: &TestApp) -> i64 {
    app.state.clock.now().unix_timestamp()
}

/// The authenticator's code at the app's current time.
fn code(app: &TestApp, secret: &Secret) -> String {
    secret.code_at(now(app))
}

/// Moves the clock to the next TOTP step, so the next code is one not yet used.
fn next_step(app: &TestApp) {
    app.clock.advance(STEP);
}

async fn start_enrolment(app: &TestApp, access_token: &str, password: &str) -> TestResponse {
    let body = json!({ "current_password": password });
    app.call(
        Method::POST,
        "/auth/mfa/totp",
        Some(access_token),
        Some(body),
    )
    .await
}

async fn confirm(app: &TestApp, access_token: &str, code: &str) -> TestResponse {
    let body = json!({ "code": code });
    app.call(
        Method::POST,
        "/auth/mfa/totp/confirm",
        Some(access_token),
        Some(body),
    )
    .await
}

async fn enroll_on(app: &TestApp, session: TokenResponse) -> Enrolled {
    let token = session.access_token.expose_secret();
    let started = start_enrolment(app, token, PASSWORD).await;
    assert_eq!(started.status, StatusCode::OK, "{:?}", started.body);
    let enrolment: TotpEnrollment = started.json();
    let secret = Secret::from_base32(enrolment.secret.expose_secret()).expect("base32 secret");
    let confirmed = confirm(app, token, &code(app, &secret)).await;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    let codes: RecoveryCodes = confirmed.json();
    // The confirming code's step is spent; later codes come from the next one.
    next_step(app);
    Enrolled {
        secret,
        recovery_codes: codes
            .recovery_codes
            .iter()
            .map(|c| c.expose_secret().to_owned())
            .collect(),
        session,
    }
}

async fn enroll(app: &TestApp) -> Enrolled {
    let session = app.register(EMAIL).await;
    enroll_on(app, session).await
}

/// Logs in with the password and returns the second step's answer.
async fn first_step(app: &TestApp) -> MfaRequired {
    let response = app.login(EMAIL, PASSWORD).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    assert!(
        response.body.get("access_token").is_none(),
        "no tokens before the second factor: {:?}",
        response.body
    );
    response.json()
}

async fn second_step(app: &TestApp, mfa_token: &str, code: &str) -> TestResponse {
    app.post(
        "/auth/mfa/verify",
        json!({ "mfa_token": mfa_token, "code": code }),
    )
    .await
}

async fn step_up(app: &TestApp, access_token: &str, code: &str) -> TestResponse {
    app.call(
        Method::POST,
        "/auth/mfa/step-up",
        Some(access_token),
        Some(json!({ "code": code })),
    )
    .await
}

/// A full two-factor login with the current TOTP code (then the next step).
async fn sign_in_with_totp(app: &TestApp, enrolled: &Enrolled) -> TokenResponse {
    let first = first_step(app).await;
    let done = second_step(
        app,
        first.mfa_token.expose_secret(),
        &code(app, &enrolled.secret),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
    next_step(app);
    done.json()
}

fn challenge(response: &TestResponse) -> &str {
    response.header("www-authenticate").unwrap_or_default()
}

fn assert_insufficient(response: &TestResponse, expected_challenge: &str) {
    assert_refused(response, "insufficient_user_authentication");
    assert_eq!(challenge(response), expected_challenge);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn enrolment_needs_the_password_then_a_code_and_hands_out_ten_recovery_codes(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let session = app.register(EMAIL).await;
    let token = session.access_token.expose_secret();

    let wrong_password = start_enrolment(&app, token, "not the password").await;
    let started = start_enrolment(&app, token, PASSWORD).await;
    let enrolment: TotpEnrollment = started.json();
    let secret = Secret::from_base32(enrolment.secret.expose_secret()).unwrap();
    let pending: MfaStatus = app.get("/auth/mfa", token).await.json();
    let wrong_code = confirm(&app, token, &secret.code_at(now(&app) + 90)).await;
    let confirmed = confirm(&app, token, &code(&app, &secret)).await;
    let status: MfaStatus = app.get("/auth/mfa", token).await.json();

    assert_eq!(wrong_password.status, StatusCode::FORBIDDEN);
    assert_eq!(wrong_password.problem().code, "wrong_password");
    let uri = enrolment.otpauth_uri.expose_secret();
    assert!(
        uri.starts_with(&format!(
            "otpauth://totp/Gatehouse:ada@example.com?secret={}",
            secret.to_base32()
        )),
        "{uri}"
    );
    assert!(enrolment.qr_svg.expose_secret().contains("<svg"));
    assert!(pending.methods.is_empty(), "unconfirmed is not enrolled");
    assert_eq!(wrong_code.status, StatusCode::FORBIDDEN);
    assert_eq!(wrong_code.problem().code, "wrong_code");
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    let codes: RecoveryCodes = confirmed.json();
    let distinct: std::collections::HashSet<_> = codes
        .recovery_codes
        .iter()
        .map(|c| c.expose_secret().to_owned())
        .collect();
    assert_eq!(distinct.len(), 10);
    assert!(distinct.iter().all(|c| c.len() == 19));
    assert_eq!(status.methods, ["totp", "recovery_code"]);
    assert_eq!(status.recovery_codes_remaining, 10);
    assert!(status.totp_enrolled_at.is_some());
    // At rest: the secret sealed, the codes as MACs; neither in the clear.
    let sealed: Vec<u8> = sqlx::query_scalar("select secret_sealed from totp_factors")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        !sealed
            .windows(8)
            .any(|w| secret.as_bytes().windows(8).any(|s| s == w))
    );
    let macs: Vec<Vec<u8>> = sqlx::query_scalar("select code_mac from recovery_codes")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(macs.len(), 10);
    for code in &distinct {
        let plain = code.replace('-', "");
        assert!(
            macs.iter()
                .all(|mac| !mac.windows(16).any(|w| w == plain.as_bytes()))
        );
    }
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn with_a_factor_login_takes_a_second_step_and_its_tokens_say_aal2(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let enrolled = enroll(&app).await;

    let first = first_step(&app).await;
    let signed_in_at = now(&app);
    let done = second_step(
        &app,
        first.mfa_token.expose_secret(),
        &code(&app, &enrolled.secret),
    )
    .await;
    let tokens: TokenResponse = done.json();
    let claims = app.claims(&tokens.access_token);
    app.clock.advance(Duration::from_secs(60));
    let refreshed = app.refreshed(tokens.refresh_token.expose_secret()).await;
    let refreshed_claims = app.claims(&refreshed.access_token);
    let verified: VerifyResponse = app
        .get("/auth/verify", refreshed.access_token.expose_secret())
        .await
        .json();

    assert!(first.mfa_required);
    assert_eq!(first.methods, ["totp", "recovery_code"]);
    assert_eq!(first.expires_in, 300);
    assert!(first.mfa_token.expose_secret().starts_with("gtm_"));
    assert_eq!(claims.amr, ["pwd", "otp", "mfa"]);
    assert_eq!(claims.acr.as_deref(), Some("aal2"));
    assert_eq!(claims.auth_time, Some(signed_in_at));
    assert_eq!(
        refreshed_claims.acr.as_deref(),
        Some("aal2"),
        "refresh keeps it"
    );
    assert_eq!(refreshed_claims.auth_time, Some(signed_in_at));
    assert_eq!(verified.authentication.acr, "aal2");
    assert_eq!(verified.authentication.amr, ["pwd", "otp", "mfa"]);
    let password_only = enrolled.session.access_token;
    assert_eq!(app.claims(&password_only).amr, ["pwd"]);
    assert_eq!(app.claims(&password_only).acr.as_deref(), Some("aal1"));
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_totp_code_works_once_with_one_step_of_skew_either_way(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let enrolled = enroll(&app).await;
    let step = step_of(now(&app));
    let at_step = |s: i64| enrolled.secret.code_at_step(s);

    let used = second_step(
        &app,
        first_step(&app).await.mfa_token.expose_secret(),
        &at_step(step),
    )
    .await;
    let attempt = first_step(&app).await;
    let token = attempt.mfa_token.expose_secret();
    let replayed = second_step(&app, token, &at_step(step)).await;
    let two_behind = second_step(&app, token, &at_step(step - 2)).await;
    let two_ahead = second_step(&app, token, &at_step(step + 2)).await;
    let one_ahead = second_step(&app, token, &at_step(step + 1)).await;
    let older_than_the_last = second_step(
        &app,
        first_step(&app).await.mfa_token.expose_secret(),
        &at_step(step),
    )
    .await;

    assert_eq!(used.status, StatusCode::OK);
    assert_refused(&replayed, "invalid_mfa_code");
    assert_refused(&two_behind, "invalid_mfa_code");
    assert_refused(&two_ahead, "invalid_mfa_code");
    assert_eq!(one_ahead.status, StatusCode::OK, "{:?}", one_ahead.body);
    assert_refused(&older_than_the_last, "invalid_mfa_code");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_mfa_token_dies_after_five_wrong_codes_after_five_minutes_and_once_used(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let enrolled = enroll(&app).await;

    let tried = first_step(&app).await;
    for _ in 0..5 {
        let wrong = second_step(&app, tried.mfa_token.expose_secret(), "000000").await;
        assert_refused(&wrong, "invalid_mfa_code");
    }
    let after_five = second_step(
        &app,
        tried.mfa_token.expose_secret(),
        &code(&app, &enrolled.secret),
    )
    .await;
    let waited = first_step(&app).await;
    app.clock.advance(Duration::from_secs(301));
    let too_late = second_step(
        &app,
        waited.mfa_token.expose_secret(),
        &code(&app, &enrolled.secret),
    )
    .await;
    let used = first_step(&app).await;
    let first_use = second_step(
        &app,
        used.mfa_token.expose_secret(),
        &code(&app, &enrolled.secret),
    )
    .await;
    next_step(&app);
    let second_use = second_step(
        &app,
        used.mfa_token.expose_secret(),
        &code(&app, &enrolled.secret),
    )
    .await;
    let malformed = second_step(&app, "gtm_nothex", &code(&app, &enrolled.secret)).await;

    assert_refused(&after_five, "mfa_token_invalid");
    assert_refused(&too_late, "mfa_token_invalid");
    assert_eq!(first_use.status, StatusCode::OK);
    assert_refused(&second_use, "mfa_token_invalid");
    assert_refused(&malformed, "mfa_token_invalid");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn wrong_codes_are_limited_per_account_and_right_ones_are_not_counted(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let enrolled = enroll(&app).await;
    // Right codes are given back: many two-factor logins use up nothing.
    for _ in 0..12 {
        sign_in_with_totp(&app, &enrolled).await;
    }

    // MFA_LIMIT_PER_ACCOUNT is 10 by default: two second steps of five wrong codes each.
    for _ in 0..2 {
        let attempt = first_step(&app).await;
        for _ in 0..5 {
            let wrong = second_step(&app, attempt.mfa_token.expose_secret(), "000000").await;
            assert_refused(&wrong, "invalid_mfa_code");
        }
    }
    let attempt = first_step(&app).await;
    let limited = second_step(
        &app,
        attempt.mfa_token.expose_secret(),
        &code(&app, &enrolled.secret),
    )
    .await;

    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        limited.body
    );
    assert_eq!(limited.problem().code, "too_many_attempts");
    assert!(limited.header("retry-after").is_some());
    // The limit guards the account, whichever route tries codes.
    let stepped = step_up(
        &app,
        enrolled.session.access_token.expose_secret(),
        &code(&app, &enrolled.secret),
    )
    .await;
    assert_eq!(stepped.status, StatusCode::TOO_MANY_REQUESTS);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn recovery_codes_work_once_each_and_a_new_set_voids_the_old(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    let enrolled = enroll(&app).await;
    let [first, second, ..] = &enrolled.recovery_codes[..] else {
        panic!("ten codes");
    };

    // Typed as a person might: upper case, spaces for dashes.
    let typed = first.to_uppercase().replace('-', " ");
    let with_code = second_step(
        &app,
        first_step(&app).await.mfa_token.expose_secret(),
        &typed,
    )
    .await;
    let again = second_step(
        &app,
        first_step(&app).await.mfa_token.expose_secret(),
        first,
    )
    .await;
    let tokens: TokenResponse = with_code.json();
    let status: MfaStatus = app
        .get("/auth/mfa", tokens.access_token.expose_secret())
        .await
        .json();
    let replaced = app
        .call(
            Method::POST,
            "/auth/mfa/recovery-codes",
            Some(tokens.access_token.expose_secret()),
            Some(json!({ "current_password": PASSWORD })),
        )
        .await;
    let new_codes: RecoveryCodes = replaced.json();
    let old_one = second_step(
        &app,
        first_step(&app).await.mfa_token.expose_secret(),
        second,
    )
    .await;
    let new_one = second_step(
        &app,
        first_step(&app).await.mfa_token.expose_secret(),
        new_codes.recovery_codes[0].expose_secret(),
    )
    .await;

    assert_eq!(with_code.status, StatusCode::OK, "{:?}", with_code.body);
    let claims = app.claims(&tokens.access_token);
    assert_eq!(claims.amr, ["pwd", "otp", "mfa"]);
    assert_eq!(claims.acr.as_deref(), Some("aal2"));
    assert_refused(&again, "invalid_mfa_code");
    assert_eq!(status.recovery_codes_remaining, 9);
    assert_eq!(replaced.status, StatusCode::OK);
    assert_eq!(new_codes.recovery_codes.len(), 10);
    assert_refused(&old_one, "invalid_mfa_code");
    assert_eq!(new_one.status, StatusCode::OK);
    // The address hears of the new set, once (the set enrolment handed out sent no such notice).
    let queued = "select count(*) from outbox where template = 'recovery_codes_replaced'";
    assert_eq!(app.count(queued).await, 1);
    let subject = "New recovery codes were made for your account";
    server.wait_for_subject(EMAIL, subject).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn verify_demands_levels_and_recency_as_rfc_9470_says(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let enrolled = enroll(&app).await;
    let password_only = enrolled.session.access_token.expose_secret().to_owned();

    let short = app
        .get("/auth/verify?acr_values=aal2&max_age=300", &password_only)
        .await;
    let lowest_listed = app
        .get("/auth/verify?acr_values=aal2%20aal1", &password_only)
        .await;
    let wrong_code = step_up(&app, &password_only, "000000").await;
    let stepped = step_up(&app, &password_only, &code(&app, &enrolled.secret)).await;
    let stepped_token: AccessTokenResponse = stepped.json();
    let stepped_token = stepped_token.access_token.expose_secret().to_owned();
    let enough = app
        .get("/auth/verify?acr_values=aal2&max_age=300", &stepped_token)
        .await;
    app.clock.advance(Duration::from_secs(301));
    let too_old = app
        .get("/auth/verify?acr_values=aal2&max_age=300", &stepped_token)
        .await;
    let refreshed = app
        .refreshed(enrolled.session.refresh_token.expose_secret())
        .await;
    let unknown_level = app
        .get("/auth/verify?acr_values=gold", &stepped_token)
        .await;
    let bad_age = app.get("/auth/verify?max_age=soon", &stepped_token).await;

    assert_insufficient(
        &short,
        r#"Bearer realm="gatehouse", error="insufficient_user_authentication", acr_values="aal2""#,
    );
    assert_eq!(lowest_listed.status, StatusCode::OK);
    assert_eq!(wrong_code.status, StatusCode::FORBIDDEN);
    assert_eq!(wrong_code.problem().code, "wrong_code");
    assert_eq!(stepped.status, StatusCode::OK);
    assert_eq!(enough.status, StatusCode::OK, "{:?}", enough.body);
    assert_insufficient(
        &too_old,
        r#"Bearer realm="gatehouse", error="insufficient_user_authentication", acr_values="aal2", max_age="300""#,
    );
    let claims = app.claims(&refreshed.access_token);
    assert_eq!(
        claims.acr.as_deref(),
        Some("aal2"),
        "the session was raised"
    );
    assert_eq!(claims.auth_time, Some(now(&app) - 301));
    assert_eq!(unknown_level.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_age.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn sensitive_actions_with_a_factor_need_a_two_factor_sign_in_of_the_last_ten_minutes(
    pool: PgPool,
) {
    let app = TestApp::new(pool).await;
    let enrolled = enroll(&app).await;
    let password_only = enrolled.session.access_token.expose_secret().to_owned();
    let change = |token: String| {
        let app = &app;
        async move {
            let body = json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD });
            app.put("/auth/password", &token, body).await
        }
    };

    let one_factor = change(password_only.clone()).await;
    let another_factor = start_enrolment(&app, &password_only, PASSWORD).await;
    let deactivation = app.deactivate(&password_only).await;
    let two_factor = sign_in_with_totp(&app, &enrolled).await;
    let two_factor = two_factor.access_token.expose_secret().to_owned();
    app.clock.advance(Duration::from_secs(601));
    let stale = change(two_factor.clone()).await;
    let stepped = step_up(&app, &two_factor, &code(&app, &enrolled.secret)).await;
    let stepped: AccessTokenResponse = stepped.json();
    let fresh = change(stepped.access_token.expose_secret().to_owned()).await;

    let aal2 =
        r#"Bearer realm="gatehouse", error="insufficient_user_authentication", acr_values="aal2""#;
    assert_insufficient(&one_factor, aal2);
    assert_insufficient(&another_factor, aal2);
    assert_insufficient(&deactivation, aal2);
    assert_insufficient(
        &stale,
        r#"Bearer realm="gatehouse", error="insufficient_user_authentication", acr_values="aal2", max_age="600""#,
    );
    assert_eq!(fresh.status, StatusCode::NO_CONTENT, "{:?}", fresh.body);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn removing_the_authenticator_ends_other_sessions_and_login_is_one_step_again(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    let enrolled = enroll(&app).await;
    let here = sign_in_with_totp(&app, &enrolled).await;
    let elsewhere = sign_in_with_totp(&app, &enrolled).await;
    let remove = |code: String| {
        let app = &app;
        let token = here.access_token.expose_secret().to_owned();
        async move {
            app.call(
                Method::DELETE,
                "/auth/mfa/totp",
                Some(&token),
                Some(json!({ "current_password": PASSWORD, "code": code })),
            )
            .await
        }
    };

    let wrong = remove("000000".into()).await;
    let removed = remove(code(&app, &enrolled.secret)).await;
    let login = app.login(EMAIL, PASSWORD).await;

    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{:?}", removed.body);
    assert!(removed.header("x-gatehouse-ended-sessions").is_some());
    app.assert_ended(&elsewhere).await;
    app.assert_verifies(here.access_token.expose_secret()).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.body.get("access_token").is_some(), "{:?}", login.body);
    assert_eq!(app.count("select count(*) from recovery_codes").await, 0);
    assert_eq!(app.count("select count(*) from totp_factors").await, 0);
    // The address hears of the enrolment and of the removal; the wrong code changed nothing.
    let added = "A second sign-in factor was added to your account";
    let removed = "A second sign-in factor was removed from your account";
    server.wait_for_subject(EMAIL, added).await;
    server.wait_for_subject(EMAIL, removed).await;
    let notices = server.received_by(EMAIL).await;
    for subject in [added, removed] {
        let sent = notices
            .iter()
            .filter(|mail| mail.subject == subject)
            .count();
        assert_eq!(sent, 1, "{subject}");
    }
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_operator_command_removes_every_factor_ends_every_session_and_says_so(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    let enrolled = enroll(&app).await;
    let signed_in = sign_in_with_totp(&app, &enrolled).await;
    let waiting = first_step(&app).await;
    // Another account began enrolling an authenticator and never confirmed it.
    let bob = app.register("bob@example.com").await;
    let half = start_enrolment(&app, bob.access_token.expose_secret(), PASSWORD).await;
    assert_eq!(half.status, StatusCode::OK, "{:?}", half.body);

    let found = mfa::reset(&app.state, "ADA@example.com").await.unwrap();
    let again = mfa::reset(&app.state, EMAIL).await.unwrap();
    let unconfirmed = mfa::reset(&app.state, "bob@example.com").await.unwrap();
    let unknown = mfa::reset(&app.state, "carol@example.com").await.unwrap();
    let second = code(&app, &enrolled.secret);
    let late_second_step = second_step(&app, waiting.mfa_token.expose_secret(), &second).await;
    let login = app.login(EMAIL, PASSWORD).await;

    // The registration's session and the two-factor one.
    let removed = Reset::Removed {
        ended_sessions: 2,
        noticed: true,
    };
    assert_eq!(found, Some(removed));
    assert_eq!(again, Some(Reset::NothingToRemove));
    assert_eq!(unconfirmed, Some(Reset::NothingToRemove));
    assert_eq!(unknown, None);
    app.assert_verifies(bob.access_token.expose_secret()).await;
    app.assert_ended(&enrolled.session).await;
    app.assert_ended(&signed_in).await;
    assert_refused(&late_second_step, "mfa_token_invalid");
    assert!(login.body.get("access_token").is_some(), "{:?}", login.body);
    assert_eq!(app.count("select count(*) from recovery_codes").await, 0);
    // The address hears of it once; the second run, which found nothing, queued nothing.
    let queued = "select count(*) from outbox where template = 'second_factors_reset'";
    assert_eq!(app.count(queued).await, 1);
    let subject = "Every second sign-in factor was removed from your account";
    server.wait_for_subject(EMAIL, subject).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_reset_removes_a_factor_set_before_the_address_was_verified_and_says_so(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    // A squatter registers the address first and sets a factor; the owner resets the password
    // through the address.
    enroll(&app).await;
    // Another account verifies its address before its factor: the factor stays.
    app.register("grace@example.com").await;
    let verify = server
        .wait_for_subject("grace@example.com", "Confirm your email address")
        .await;
    let verified = app
        .post(
            "/auth/email/verify",
            json!({ "token": verify.link_token() }),
        )
        .await;
    assert_eq!(
        verified.status,
        StatusCode::NO_CONTENT,
        "{:?}",
        verified.body
    );
    let owner_session = app.sign_in("grace@example.com").await;
    enroll_on(&app, owner_session).await;

    for email in [EMAIL, "grace@example.com"] {
        app.post("/auth/password/forgot", json!({ "email": email }))
            .await;
        let mail = server.wait_for_subject(email, "Reset your password").await;
        let reset = app
            .post(
                "/auth/password/reset",
                json!({ "token": mail.link_token(), "new_password": NEW_PASSWORD }),
            )
            .await;
        assert_eq!(reset.status, StatusCode::NO_CONTENT, "{:?}", reset.body);
    }

    let squatted = app.login(EMAIL, NEW_PASSWORD).await;
    let kept = app.login("grace@example.com", NEW_PASSWORD).await;
    assert!(
        squatted.body.get("access_token").is_some(),
        "{:?}",
        squatted.body
    );
    assert_eq!(kept.body["mfa_required"], true, "{:?}", kept.body);
    server
        .wait_for_subject(
            EMAIL,
            "Your password was reset and an authenticator was removed",
        )
        .await;
    server
        .wait_for_subject("grace@example.com", "Your password was changed")
        .await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn one_code_sent_twice_at_once_signs_in_once(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let enrolled = enroll(&app).await;
    let (first, second) = (first_step(&app).await, first_step(&app).await);
    let code = code(&app, &enrolled.secret);

    let (a, b) = tokio::join!(
        second_step(&app, first.mfa_token.expose_secret(), &code),
        second_step(&app, second.mfa_token.expose_secret(), &code),
    );

    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::UNAUTHORIZED]);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_burst_of_wrong_codes_gets_no_more_tries_than_the_limit(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let enrolled = enroll(&app).await;
    let token = enrolled.session.access_token.expose_secret().to_owned();

    // Twenty wrong codes at once on an account with no failure counted yet in this window.
    let answers =
        futures_util::future::join_all((0..20).map(|_| step_up(&app, &token, "000000"))).await;

    let refused = answers
        .iter()
        .filter(|a| a.status == StatusCode::FORBIDDEN)
        .count();
    let limited = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((refused, limited), (10, 10), "MFA_LIMIT_PER_ACCOUNT is 10");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_password_change_ends_a_login_waiting_for_its_second_step(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let enrolled = enroll(&app).await;
    let pending = first_step(&app).await;
    let owner = sign_in_with_totp(&app, &enrolled).await;

    let changed = app
        .put(
            "/auth/password",
            owner.access_token.expose_secret(),
            json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD }),
        )
        .await;
    let finished = second_step(
        &app,
        pending.mfa_token.expose_secret(),
        &code(&app, &enrolled.secret),
    )
    .await;

    assert_eq!(changed.status, StatusCode::NO_CONTENT, "{:?}", changed.body);
    assert_refused(&finished, "mfa_token_invalid");
}
