//! The emailed-link routes through the edge: they need an API key but no access token, and a
//! password reset's ending of every session is refused at the edge at once. Mail goes through the
//! origin's courier to a real SMTP server (maildev).

use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{TokenResponse, VerifyResponse};
use gatehouse_tests::mail::MailServer;
use gatehouse_tests::{MailSetting, Options, PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{Stack, problem};

/// maildev, and a stack whose origin mails to it. A minute between revocation-list refreshes: only
/// a request's own answer can end sessions at the edge in time.
async fn mail_stack(pool: PgPool) -> (MailServer, Stack) {
    let server = MailServer::start().await;
    let options = Options {
        mail: MailSetting::SentTo(server.smtp_url()),
        ..Options::default()
    };
    let stack = Stack::with(pool, options, |bindings| {
        bindings.insert("REVOCATION_REFRESH_SECS".into(), Value::from("60"));
    })
    .await;
    (server, stack)
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_address_is_verified_and_a_password_reset_through_the_edge(pool: PgPool) {
    let (server, stack) = mail_stack(pool).await;
    let registered = stack.register("ada@example.com").await;
    let post = |path: &str, body: Value| stack.request(Method::POST, path).json(&body).send();

    let verification = server.wait_for_subject("ada@example.com", "Confirm").await;
    let verified = post(
        "/auth/email/verify",
        json!({ "token": verification.link_token() }),
    )
    .await
    .unwrap();
    let refreshed: TokenResponse = post(
        "/auth/refresh",
        json!({ "refresh_token": registered.refresh_token.expose_secret() }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let at_edge: VerifyResponse = stack
        .verify(refreshed.access_token.expose_secret())
        .await
        .json()
        .await
        .unwrap();
    let asked = post(
        "/auth/password/forgot",
        json!({ "email": "ada@example.com" }),
    )
    .await
    .unwrap();
    let reset_mail = server.wait_for_subject("ada@example.com", "Reset").await;
    let reset = post(
        "/auth/password/reset",
        json!({ "token": reset_mail.link_token(), "new_password": "a brand new passphrase" }),
    )
    .await
    .unwrap();

    assert_eq!(verified.status(), StatusCode::NO_CONTENT);
    assert!(at_edge.user.email_verified, "the edge reads the new claim");
    assert_eq!(asked.status(), StatusCode::ACCEPTED);
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    assert!(reset.headers().get("x-gatehouse-ended-sessions").is_none());
    let old = stack.verify(refreshed.access_token.expose_secret()).await;
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem(old).await.1, "session has ended");
    assert_eq!(
        stack.relay.count("GET /edge/revocations"),
        1,
        "refused from the reset's own answer, not from a new list"
    );
    let login = stack
        .request(Method::POST, "/auth/login")
        .json(&json!({ "email": "ada@example.com", "password": "a brand new passphrase" }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_email_change_and_its_undo_end_sessions_at_the_edge(pool: PgPool) {
    let (server, stack) = mail_stack(pool).await;
    let asking = stack.register("ada@example.com").await;
    let other = stack.login("ada@example.com").await;
    let token = asking.access_token.expose_secret();

    let asked = stack
        .authorized(Method::PUT, "/auth/email", token)
        .json(&json!({ "new_email": "ada@new.example", "current_password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let confirmation = server.wait_for_subject("ada@new.example", "Confirm").await;
    let notice = server
        .wait_for_subject("ada@example.com", "being changed")
        .await;
    let confirm = json!({ "token": confirmation.link_token() });
    let confirmed = stack
        .request(Method::POST, "/auth/email/confirm")
        .json(&confirm)
        .send();
    let confirmed = confirmed.await.unwrap();

    assert_eq!(asked.status(), StatusCode::ACCEPTED);
    assert_eq!(confirmed.status(), StatusCode::NO_CONTENT);
    stack.assert_verifies(token).await;
    let refused = stack.verify(other.access_token.expose_secret()).await;
    assert_eq!(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "the other session ended at the edge"
    );

    let undo = json!({ "token": notice.link_token() });
    let undone = stack
        .request(Method::POST, "/auth/email/undo")
        .json(&undo)
        .send();

    assert_eq!(undone.await.unwrap().status(), StatusCode::NO_CONTENT);
    let refused = stack.verify(token).await;
    assert_eq!(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "the undo ended every session"
    );
    assert_eq!(problem(refused).await.1, "session has ended");
    assert_eq!(stack.relay.count("GET /edge/revocations"), 1);
    assert_eq!(
        stack.login("ada@example.com").await.user.email,
        "ada@example.com"
    );
}
