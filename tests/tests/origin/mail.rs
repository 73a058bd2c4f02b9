//! Verified addresses and password recovery, with mail delivered by the origin's courier to a
//! real SMTP server (maildev) and read back from it.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gatehouse_origin::janitor;
use gatehouse_origin::users::AccountPolicy;
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{CLIENT_IP_HEADER, EDGE_SECRET_HEADER, UserProfile, VerifyResponse};
use gatehouse_tests::mail::MailServer;
use gatehouse_tests::{
    EDGE_SECRET, MAIL_LINK_BASE_URL, MailSetting, Options, PASSWORD, TestApp, TestResponse,
    assert_invalid_field, register_body,
};
use serde_json::json;
use sqlx::PgPool;

const NEW_PASSWORD: &str = "a brand new passphrase";

/// Waits until `sql` (a count) reaches `expected`; panics after 30 s.
async fn wait_until_count(app: &TestApp, sql: &str, expected: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let count: i64 = sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap();
        if count == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql}: {count}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the courier has dealt with every queued row, sent or discarded.
async fn wait_until_outbox_is_empty(app: &TestApp) {
    let waiting = "select count(*) from outbox where sent_at is null and discarded_at is null";
    wait_until_count(app, waiting, 0).await;
}

async fn forgot(app: &TestApp, email: &str) -> TestResponse {
    app.post("/auth/password/forgot", json!({ "email": email }))
        .await
}

async fn reset(app: &TestApp, token: &str, password: &str) -> TestResponse {
    app.post(
        "/auth/password/reset",
        json!({ "token": token, "new_password": password }),
    )
    .await
}

async fn verify_email(app: &TestApp, token: &str) -> TestResponse {
    app.post("/auth/email/verify", json!({ "token": token }))
        .await
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn registration_mails_a_link_that_verifies_the_address(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    let registered = app.register("ada@example.com").await;
    assert!(!app.claims(&registered.access_token).email_verified);

    let mail = server
        .wait_for_subject("ada@example.com", "Confirm your email")
        .await;
    let token = mail.link_token();
    let verified = verify_email(&app, &token).await;

    assert_eq!(verified.status, StatusCode::NO_CONTENT);
    assert!(
        mail.text
            .contains(&format!("{MAIL_LINK_BASE_URL}/verify-email#token=gtl_"))
    );
    assert!(mail.html.contains("verify-email#token=gtl_"));
    let message_id: uuid::Uuid = sqlx::query_scalar("select message_id from outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(mail.message_id(), format!("<{message_id}@example.test>"));
    let refreshed = app
        .refreshed(registered.refresh_token.expose_secret())
        .await;
    assert!(app.claims(&refreshed.access_token).email_verified);
    let verify = app
        .get("/auth/verify", refreshed.access_token.expose_secret())
        .await
        .json::<VerifyResponse>();
    assert!(verify.user.email_verified);
    let profile = app
        .get("/auth/profile", refreshed.access_token.expose_secret())
        .await
        .json::<UserProfile>();
    assert!(profile.email_verified);
    // Sent mail keeps neither its body nor its token.
    let (params, sealed): (serde_json::Value, Option<Vec<u8>>) =
        sqlx::query_as("select params, sealed_token from outbox")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((params, sealed), (json!({}), None));
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn each_bad_link_gets_its_own_code_and_no_bearer_challenge(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    app.register("ada@example.com").await;
    let verification = server.wait_for("ada@example.com", 1).await[0].link_token();
    assert_eq!(
        forgot(&app, "ada@example.com").await.status,
        StatusCode::ACCEPTED
    );
    let reset_token = server
        .wait_for_subject("ada@example.com", "Reset your password")
        .await
        .link_token();

    let garbage = verify_email(&app, "gtl_not-a-token").await;
    let wrong_purpose = verify_email(&app, &reset_token).await;
    let first = verify_email(&app, &verification).await;
    let again = verify_email(&app, &verification).await;
    app.clock.advance(Duration::from_secs(31 * 60));
    let expired = reset(&app, &reset_token, NEW_PASSWORD).await;

    for (response, status, code) in [
        (&garbage, StatusCode::BAD_REQUEST, "link_token_invalid"),
        (
            &wrong_purpose,
            StatusCode::BAD_REQUEST,
            "link_token_invalid",
        ),
        (&again, StatusCode::CONFLICT, "link_token_used"),
        (&expired, StatusCode::GONE, "link_token_expired"),
    ] {
        assert_eq!(response.status, status, "{code}");
        assert_eq!(response.problem().code, code);
        assert_eq!(response.header("www-authenticate"), None, "{code}");
    }
    assert_eq!(first.status, StatusCode::NO_CONTENT);
    let login = app.login("ada@example.com", PASSWORD).await;
    assert_eq!(
        login.status,
        StatusCode::OK,
        "the expired reset changed nothing"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_reset_sets_the_password_verifies_the_address_and_ends_every_session(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    let first = app.register("ada@example.com").await;
    let second = app.sign_in("ada@example.com").await;

    let asked = forgot(&app, "ADA@example.com").await;
    let mail = server
        .wait_for_subject("ada@example.com", "Reset your password")
        .await;
    let guessable = reset(&app, &mail.link_token(), "password123").await;
    let done = reset(&app, &mail.link_token(), NEW_PASSWORD).await;

    assert_eq!(asked.status, StatusCode::ACCEPTED);
    assert_eq!(asked.body, serde_json::Value::Null);
    assert!(
        mail.text
            .contains(&format!("{MAIL_LINK_BASE_URL}/reset-password#token=gtl_"))
    );
    assert_invalid_field(&guessable, "new_password");
    assert_eq!(
        done.status,
        StatusCode::NO_CONTENT,
        "a refused password leaves the link unspent"
    );
    assert!(done.header("x-gatehouse-ended-sessions").is_some());
    for session in [&first, &second] {
        app.assert_ended(session).await;
    }
    app.assert_login("ada@example.com", PASSWORD, StatusCode::UNAUTHORIZED)
        .await;
    let signed_in = app.login("ada@example.com", NEW_PASSWORD).await;
    assert_eq!(signed_in.status, StatusCode::OK);
    let token = signed_in
        .json::<gatehouse_shared::api::TokenResponse>()
        .access_token;
    assert!(
        app.claims(&token).email_verified,
        "the reset proved the address"
    );
    server
        .wait_for_subject("ada@example.com", "Your password was changed")
        .await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_unknown_address_gets_the_same_answer_and_no_mail(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    app.register("ada@example.com").await;

    let known = forgot(&app, "ada@example.com").await;
    let unknown = forgot(&app, "nobody@example.com").await;
    let resend_unknown = app
        .post(
            "/auth/email/verify/resend",
            json!({ "email": "nobody@example.com" }),
        )
        .await;
    wait_until_outbox_is_empty(&app).await;

    for response in [&known, &unknown, &resend_unknown] {
        assert_eq!(response.status, StatusCode::ACCEPTED);
        assert_eq!(response.body, serde_json::Value::Null);
        assert_eq!(response.headers.get("content-type"), None);
    }
    assert!(server.received_by("nobody@example.com").await.is_empty());
    assert_eq!(server.received_by("ada@example.com").await.len(), 2);
    let discarded = app
        .count("select count(*) from outbox where discarded_at is not null")
        .await;
    assert_eq!(
        discarded, 2,
        "both requests for the unknown address were written, then dropped"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn two_resets_with_one_link_leave_exactly_one_password(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    app.register("ada@example.com").await;
    forgot(&app, "ada@example.com").await;
    let token = server
        .wait_for_subject("ada@example.com", "Reset your password")
        .await
        .link_token();

    let (one, other) = tokio::join!(
        reset(&app, &token, "first new passphrase"),
        reset(&app, &token, "second new passphrase"),
    );

    let mut statuses = [one.status, other.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::NO_CONTENT, StatusCode::CONFLICT]);
    let winner = if one.status == StatusCode::NO_CONTENT {
        "first new passphrase"
    } else {
        "second new passphrase"
    };
    app.assert_login("ada@example.com", winner, StatusCode::OK)
        .await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn mail_queued_while_the_smtp_server_is_down_arrives_once_it_is_back(pool: PgPool) {
    let server = MailServer::start().await;
    let (smtp_port, web_port) = (server.smtp_port, server.web_port);
    let app = TestApp::sending_mail_to(pool, &server).await;
    drop(server);

    let addresses = ["ada@example.com", "bea@example.com", "cy@example.com"];
    for address in addresses {
        app.register(address).await;
    }
    // The courier has tried and failed at least once for each before the server returns.
    let failed = "select count(*) from outbox where last_error is not null";
    wait_until_count(&app, failed, 3).await;
    let server = MailServer::start_on(smtp_port, web_port).await;
    // The app's clock stands still: moving it past the back-off (1 s here) makes the retries due.
    app.clock.advance(Duration::from_secs(2));
    wait_until_outbox_is_empty(&app).await;

    for address in addresses {
        let mails = server.received_by(address).await;
        assert_eq!(mails.len(), 1, "{address}: every mail arrives, none twice");
    }
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn one_address_gets_at_most_three_mails_an_hour_and_the_answers_do_not_change(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    app.register("ada@example.com").await;

    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(forgot(&app, "ada@example.com").await.status);
    }
    wait_until_outbox_is_empty(&app).await;

    assert_eq!(answers, [StatusCode::ACCEPTED; 4]);
    assert_eq!(server.received_by("ada@example.com").await.len(), 3);
    app.clock.advance(Duration::from_secs(3601));
    forgot(&app, "ada@example.com").await;
    server.wait_for("ada@example.com", 4).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn one_client_may_ask_for_thirty_mails_per_quarter_hour(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let from = |ip: &'static str, n: usize| {
        Request::post("/auth/password/forgot")
            .header("x-api-key", &app.api_key)
            .header("content-type", "application/json")
            .header(EDGE_SECRET_HEADER, EDGE_SECRET)
            .header(CLIENT_IP_HEADER, ip)
            .body(Body::from(
                json!({ "email": format!("n{n}@example.com") }).to_string(),
            ))
            .unwrap()
    };

    for n in 0..30 {
        assert_eq!(
            app.send(from("203.0.113.9", n)).await.status,
            StatusCode::ACCEPTED
        );
    }
    let over = app.send(from("203.0.113.9", 30)).await;
    let elsewhere = app.send(from("198.51.100.7", 31)).await;

    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.problem().code, "too_many_attempts");
    assert!(over.header("retry-after").is_some());
    assert_eq!(elsewhere.status, StatusCode::ACCEPTED);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn with_mail_disabled_the_mail_routes_do_not_exist(pool: PgPool) {
    let app = TestApp::without_mail(pool).await;
    app.register("ada@example.com").await;

    for (path, body) in [
        (
            "/auth/password/forgot",
            json!({ "email": "ada@example.com" }),
        ),
        (
            "/auth/email/verify/resend",
            json!({ "email": "ada@example.com" }),
        ),
        ("/auth/email/verify", json!({ "token": "gtl_x" })),
        (
            "/auth/password/reset",
            json!({ "token": "gtl_x", "new_password": NEW_PASSWORD }),
        ),
    ] {
        let response = app.post(path, body).await;
        assert_eq!(response.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(response.problem().code, "not_found");
    }
    let queued = app.count("select count(*) from outbox").await;
    assert_eq!(queued, 0);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn with_verified_addresses_required_sign_in_waits_for_the_link(pool: PgPool) {
    let server = MailServer::start().await;
    let defaults = Options::default();
    let app = TestApp::with(
        pool,
        Options {
            mail: MailSetting::SentTo(server.smtp_url()),
            accounts: AccountPolicy {
                require_verified_email: true,
                ..defaults.accounts
            },
            ..defaults
        },
    )
    .await;
    let register = || app.post("/auth/register", register_body("ada@example.com"));

    let new = register().await;
    let taken = register().await;
    let unverified = app.login("ada@example.com", PASSWORD).await;
    let wrong = app.login("ada@example.com", "not the password").await;
    let verification = server.wait_for_subject("ada@example.com", "Confirm").await;
    let attempt = server
        .wait_for_subject("ada@example.com", "Someone tried")
        .await;
    let verified = verify_email(&app, &verification.link_token()).await;
    let signed_in = app.login("ada@example.com", PASSWORD).await;

    for response in [&new, &taken] {
        assert_eq!(response.status, StatusCode::ACCEPTED);
        assert_eq!(response.body, json!({ "status": "verification_sent" }));
    }
    assert_eq!(app.user_count().await, 1);
    assert_eq!(unverified.status, StatusCode::FORBIDDEN);
    assert_eq!(unverified.problem().code, "email_not_verified");
    assert_eq!(
        wrong.problem().code,
        "invalid_credentials",
        "only the password's holder learns it"
    );
    assert!(
        !attempt.text.contains("#token="),
        "the notice carries no link"
    );
    assert_eq!(verified.status, StatusCode::NO_CONTENT);
    assert_eq!(signed_in.status, StatusCode::OK);
    let token = signed_in
        .json::<gatehouse_shared::api::TokenResponse>()
        .access_token;
    assert!(app.claims(&token).email_verified);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn accounts_never_verified_are_erased_after_a_week_and_older_ones_kept(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for email in ["ada@example.com", "bea@example.com", "cy@example.com"] {
        app.register(email).await;
    }
    sqlx::query("update users set email_verified_at = now() where email = 'bea@example.com'")
        .execute(&app.pool)
        .await
        .unwrap();
    // As an account registered before verification existed.
    sqlx::query("update users set erase_if_unverified = false where email = 'cy@example.com'")
        .execute(&app.pool)
        .await
        .unwrap();

    let now = app.state.clock.now();
    let early = janitor::purge(&app.state, now + time::Duration::days(6))
        .await
        .unwrap();
    // Still signing in on day 7, so a session is live when the account falls due on day 8.
    app.clock
        .advance(std::time::Duration::from_secs(7 * 86_400));
    let live = app.sign_in("ada@example.com").await;
    let due = janitor::purge(&app.state, now + time::Duration::days(8))
        .await
        .unwrap();
    let ended = !app.session_live(live.session_id).await;
    let later = now + time::Duration::days(8) + time::Duration::minutes(16);
    let gone = janitor::purge(&app.state, later).await.unwrap();

    assert_eq!((early.accounts, due.accounts, gone.accounts), (0, 0, 1));
    assert!(
        ended,
        "its sessions end first, so the edge refuses their tokens"
    );
    assert_eq!(app.emails().await, ["bea@example.com", "cy@example.com"]);
    app.register("ada@example.com").await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn without_mail_unverified_accounts_are_kept(pool: PgPool) {
    let app = TestApp::without_mail(pool).await;
    app.register("ada@example.com").await;

    let later = app.state.clock.now() + time::Duration::days(60);
    let purged = janitor::purge(&app.state, later).await.unwrap();

    assert_eq!(purged.accounts, 0);
    assert_eq!(app.user_count().await, 1);
}

async fn change_email(app: &TestApp, access_token: &str, new_email: &str) -> TestResponse {
    let body = json!({ "new_email": new_email, "current_password": PASSWORD });
    app.put("/auth/email", access_token, body).await
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_email_change_is_confirmed_by_the_new_address_and_undone_by_the_old(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    let asking = app.register("ada@example.com").await;
    let other = app.sign_in("ada@example.com").await;

    let asked = change_email(&app, asking.access_token.expose_secret(), "ada@new.example").await;
    let confirmation = server
        .wait_for_subject("ada@new.example", "Confirm your new")
        .await;
    let notice = server
        .wait_for_subject("ada@example.com", "being changed")
        .await;
    let confirmed = app
        .post(
            "/auth/email/confirm",
            json!({ "token": confirmation.link_token() }),
        )
        .await;

    assert_eq!(asked.status, StatusCode::ACCEPTED);
    assert!(
        confirmation
            .text
            .contains(&format!("{MAIL_LINK_BASE_URL}/confirm-email#token=gtl_"))
    );
    assert!(notice.text.contains("ada@new.example"));
    assert!(notice.text.contains(&format!(
        "{MAIL_LINK_BASE_URL}/undo-email-change#token=gtl_"
    )));
    assert_eq!(confirmed.status, StatusCode::NO_CONTENT);
    app.assert_ended(&other).await;
    let moved = app.refreshed(asking.refresh_token.expose_secret()).await;
    let claims = app.claims(&moved.access_token);
    assert_eq!(
        (claims.email.as_str(), claims.email_verified),
        ("ada@new.example", true)
    );
    app.assert_login("ada@example.com", PASSWORD, StatusCode::UNAUTHORIZED)
        .await;
    app.assert_login("ada@new.example", PASSWORD, StatusCode::OK)
        .await;

    let undone = app
        .post("/auth/email/undo", json!({ "token": notice.link_token() }))
        .await;

    assert_eq!(undone.status, StatusCode::NO_CONTENT);
    app.assert_ended(&moved).await;
    assert_eq!(app.emails().await, ["ada@example.com"]);
    app.assert_login("ada@example.com", PASSWORD, StatusCode::OK)
        .await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_taken_address_is_told_so_and_the_answer_does_not_change(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    let ada = app.register("ada@example.com").await;
    app.register("bea@example.com").await;

    let asked = change_email(&app, ada.access_token.expose_secret(), "BEA@example.com").await;
    let told = server
        .wait_for_subject("bea@example.com", "already has an account")
        .await;
    server
        .wait_for_subject("ada@example.com", "being changed")
        .await;
    wait_until_outbox_is_empty(&app).await;

    assert_eq!(asked.status, StatusCode::ACCEPTED);
    assert!(!told.text.contains("#token="), "the notice carries no link");
    assert_eq!(app.emails().await, ["ada@example.com", "bea@example.com"]);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_address_taken_before_the_confirmation_is_a_conflict(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    let ada = app.register("ada@example.com").await;
    change_email(&app, ada.access_token.expose_secret(), "cy@example.com").await;
    let token = server
        .wait_for_subject("cy@example.com", "Confirm your new")
        .await
        .link_token();

    app.register("cy@example.com").await;
    let confirmed = app
        .post("/auth/email/confirm", json!({ "token": token }))
        .await;

    assert_eq!(confirmed.status, StatusCode::CONFLICT);
    assert_eq!(confirmed.problem().code, "email_taken");
    assert_eq!(app.emails().await, ["ada@example.com", "cy@example.com"]);
    app.assert_verifies(ada.access_token.expose_secret()).await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_email_change_needs_the_password_and_another_address(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let ada = app.register("ada@example.com").await;
    let token = ada.access_token.expose_secret();

    let wrong = app
        .put(
            "/auth/email",
            token,
            json!({ "new_email": "ada@new.example", "current_password": "not the password" }),
        )
        .await;
    let same = change_email(&app, token, "ADA@example.com").await;

    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(wrong.problem().code, "wrong_password");
    assert_invalid_field(&same, "new_email");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_reset_link_to_an_address_the_account_has_left_is_dead(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    let ada = app.register("ada@example.com").await;
    forgot(&app, "ada@example.com").await;
    let old_link = server
        .wait_for_subject("ada@example.com", "Reset")
        .await
        .link_token();
    change_email(&app, ada.access_token.expose_secret(), "ada@new.example").await;
    let confirm = server
        .wait_for_subject("ada@new.example", "Confirm")
        .await
        .link_token();
    app.post("/auth/email/confirm", json!({ "token": confirm }))
        .await;

    let reset = reset(&app, &old_link, NEW_PASSWORD).await;

    assert_eq!(reset.status, StatusCode::BAD_REQUEST);
    assert_eq!(reset.problem().code, "link_token_invalid");
    app.assert_login("ada@new.example", PASSWORD, StatusCode::OK)
        .await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_flood_of_requests_cannot_silence_the_password_change_notice(pool: PgPool) {
    let server = MailServer::start().await;
    let app = TestApp::sending_mail_to(pool, &server).await;
    let ada = app.register("ada@example.com").await;
    for _ in 0..5 {
        forgot(&app, "ada@example.com").await;
    }
    wait_until_outbox_is_empty(&app).await;
    assert_eq!(
        server.received_by("ada@example.com").await.len(),
        3,
        "the cap is full"
    );

    let changed = app
        .change_password(ada.access_token.expose_secret(), PASSWORD, NEW_PASSWORD)
        .await;

    assert_eq!(changed.status, StatusCode::NO_CONTENT);
    server
        .wait_for_subject("ada@example.com", "Your password was changed")
        .await;
}

/// Every template the code can queue is one the outbox's check constraint accepts: a template
/// added in code but not in a migration would fail its request with a 500 at the first send.
#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_outbox_accepts_every_template(pool: PgPool) {
    for template in gatehouse_origin::mail::Template::ALL {
        let inserted = sqlx::query(
            "insert into outbox (recipient, template, created_at, next_attempt_at)
             values ('ada@example.com', $1, now(), now())",
        )
        .bind(template.as_str())
        .execute(&pool)
        .await;

        assert!(inserted.is_ok(), "{}: {inserted:?}", template.as_str());
    }
}

/// During a rolling deploy a newer release may queue a mail whose template this one cannot write:
/// the courier leaves it for an instance that can, rather than discarding it.
#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn mail_of_a_template_from_a_newer_release_is_left_for_an_instance_that_knows_it(
    pool: PgPool,
) {
    let server = MailServer::start().await;
    // The newer release's migration would have let its template into the outbox.
    sqlx::query("alter table outbox drop constraint outbox_template_known")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into outbox (recipient, template, created_at, next_attempt_at)
         values ('bob@example.com', 'from_a_newer_release', now() - interval '1 minute',
                 now() - interval '1 minute')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let app = TestApp::sending_mail_to(pool, &server).await;

    app.register("ada@example.com").await;
    server
        .wait_for_subject("ada@example.com", "Confirm your email")
        .await;

    // The courier claims due rows oldest first, so it passed the newer release's row to reach the
    // registration's, and left it untouched.
    let untouched = "select count(*) from outbox where template = 'from_a_newer_release'
                     and attempts = 0 and sent_at is null and discarded_at is null";
    assert_eq!(app.count(untouched).await, 1);
    // If no instance ever writes it (the newer release was rolled back), the janitor deletes it
    // once every template's retries would have ended (7 days), on day 8.
    let now = app.state.clock.now();
    janitor::purge(&app.state, now + time::Duration::days(7))
        .await
        .unwrap();
    let kept = app.count(untouched).await;
    janitor::purge(&app.state, now + time::Duration::days(8))
        .await
        .unwrap();
    assert_eq!(kept, 1);
    assert_eq!(app.count(untouched).await, 0);
}
