//! Brute-force limits: counted in PostgreSQL per account, per account and address, and per
//! address; 429 with `Retry-After`; shared by every origin instance on the database.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gatehouse_origin::throttle::LoginLimits;
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{CLIENT_IP_HEADER, EDGE_SECRET_HEADER};
use gatehouse_tests::{EDGE_SECRET, Options, PASSWORD, TestApp, TestResponse, count_status};
use serde_json::json;
use sqlx::PgPool;

/// Small limits so the tests stay short; the shape is the production one.
const LIMITS: LoginLimits = LoginLimits {
    window: Duration::from_secs(900),
    per_account: 6,
    per_account_and_ip: 3,
    per_ip: 8,
};

async fn app(pool: PgPool) -> TestApp {
    TestApp::with(
        pool,
        Options {
            login_limits: LIMITS,
            ..Options::default()
        },
    )
    .await
}

/// A wrong password for `email` from `ip`, answered 401.
async fn guess(app: &TestApp, ip: &str, email: &str) {
    let failed = login_from(app, ip, email, "wrong guess").await;
    assert_eq!(failed.status, StatusCode::UNAUTHORIZED, "{ip} {email}");
}

/// A login as the edge forwards it for a client at `ip`.
async fn login_from(app: &TestApp, ip: &str, email: &str, password: &str) -> TestResponse {
    let request = Request::post("/auth/login")
        .header("x-api-key", &app.api_key)
        .header("content-type", "application/json")
        .header(EDGE_SECRET_HEADER, EDGE_SECRET)
        .header(CLIENT_IP_HEADER, ip)
        .body(Body::from(
            json!({ "email": email, "password": password }).to_string(),
        ))
        .unwrap();
    app.send(request).await
}

fn assert_limited(response: &TestResponse) {
    assert_eq!(
        response.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        response.body
    );
    assert_eq!(response.problem().code, "too_many_attempts");
    let retry_after: u64 = response.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn one_address_is_stopped_on_an_account_without_locking_out_others(pool: PgPool) {
    let app = app(pool).await;
    app.register("ada@example.com").await;

    for _ in 0..LIMITS.per_account_and_ip {
        let failed = login_from(&app, "203.0.113.1", "ada@example.com", "wrong guess").await;
        assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    }
    let guessing = login_from(&app, "203.0.113.1", "ada@example.com", "wrong guess").await;
    let right_password_same_address =
        login_from(&app, "203.0.113.1", "ada@example.com", PASSWORD).await;
    let owner_elsewhere = login_from(&app, "198.51.100.7", "ada@example.com", PASSWORD).await;

    assert_limited(&guessing);
    assert_limited(&right_password_same_address);
    assert_eq!(owner_elsewhere.status, StatusCode::OK);
    let verifications_before = app.state.hasher.verifications();
    login_from(&app, "203.0.113.1", "ada@example.com", "wrong guess").await;
    assert_eq!(
        app.state.hasher.verifications(),
        verifications_before,
        "a limited attempt costs no bcrypt"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_window_passes_and_attempts_are_allowed_again(pool: PgPool) {
    let app = app(pool).await;
    app.register("ada@example.com").await;
    for _ in 0..LIMITS.per_account_and_ip {
        login_from(&app, "203.0.113.1", "ada@example.com", "wrong guess").await;
    }
    assert_limited(&login_from(&app, "203.0.113.1", "ada@example.com", PASSWORD).await);

    app.clock.advance(LIMITS.window);
    let after = login_from(&app, "203.0.113.1", "ada@example.com", PASSWORD).await;

    assert_eq!(after.status, StatusCode::OK);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_distributed_guess_hits_the_account_limit(pool: PgPool) {
    let app = app(pool).await;
    app.register("ada@example.com").await;

    for attempt in 0..LIMITS.per_account {
        guess(&app, &format!("203.0.113.{attempt}"), "ada@example.com").await;
    }
    let fresh_address = login_from(&app, "198.51.100.200", "ada@example.com", PASSWORD).await;

    assert_limited(&fresh_address);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn one_address_guessing_many_accounts_hits_the_address_limit(pool: PgPool) {
    let app = app(pool).await;
    app.register("ada@example.com").await;

    for attempt in 0..LIMITS.per_ip {
        guess(&app, "203.0.113.1", &format!("nobody{attempt}@example.com")).await;
    }
    let stuffing = login_from(&app, "203.0.113.1", "ada@example.com", PASSWORD).await;
    let elsewhere = login_from(&app, "198.51.100.7", "ada@example.com", PASSWORD).await;

    assert_limited(&stuffing);
    assert_eq!(elsewhere.status, StatusCode::OK);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn unknown_and_known_accounts_are_limited_alike(pool: PgPool) {
    let app = app(pool).await;
    app.register("ada@example.com").await;

    let mut statuses = Vec::new();
    for email in ["ada@example.com", "ghost@example.com"] {
        for _ in 0..=LIMITS.per_account_and_ip {
            statuses.push(
                login_from(&app, "203.0.113.1", email, "wrong guess")
                    .await
                    .status,
            );
        }
    }

    let (known, unknown) = statuses.split_at(statuses.len() / 2);
    assert_eq!(
        known, unknown,
        "a 429 says nothing about who has an account"
    );
    assert_eq!(known.last(), Some(&StatusCode::TOO_MANY_REQUESTS));
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn successful_logins_do_not_use_up_the_limits(pool: PgPool) {
    let app = app(pool).await;
    app.register("ada@example.com").await;

    for _ in 0..(LIMITS.per_ip + 2) {
        let ok = login_from(&app, "203.0.113.1", "ada@example.com", PASSWORD).await;
        assert_eq!(ok.status, StatusCode::OK);
    }
    for _ in 0..LIMITS.per_account_and_ip {
        let failed = login_from(&app, "203.0.113.1", "ada@example.com", "wrong guess").await;
        assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    }
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn limits_hold_across_origin_instances(pool: PgPool) {
    // Two origins on one database, as behind a load balancer.
    let first = app(pool.clone()).await;
    let second = app(pool).await;
    first.register("ada@example.com").await;

    for attempt in 0..LIMITS.per_account_and_ip {
        let instance = if attempt % 2 == 0 { &first } else { &second };
        let failed = login_from(instance, "203.0.113.1", "ada@example.com", "wrong guess").await;
        assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    }

    assert_limited(&login_from(&first, "203.0.113.1", "ada@example.com", PASSWORD).await);
    assert_limited(&login_from(&second, "203.0.113.1", "ada@example.com", PASSWORD).await);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn concurrent_guesses_cannot_slip_past_the_limit(pool: PgPool) {
    let app = app(pool).await;
    app.register("ada@example.com").await;

    let guesses = (0..12).map(|_| login_from(&app, "203.0.113.1", "ada@example.com", "wrong"));
    let responses = futures_util::future::join_all(guesses).await;

    let checked = count_status(&responses, StatusCode::UNAUTHORIZED);
    let limited = count_status(&responses, StatusCode::TOO_MANY_REQUESTS);
    // Counting and checking the limit are one transaction on locked rows: exactly the limit's
    // worth of guesses reaches bcrypt, however many arrive together.
    assert_eq!(checked, LIMITS.per_account_and_ip as usize);
    assert_eq!(limited, 12 - checked);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn password_changes_share_the_login_limits(pool: PgPool) {
    let app = app(pool).await;
    let token = app.register("ada@example.com").await.access_token;
    let change = |current: &'static str| {
        let request = Request::put("/auth/password")
            .header("x-api-key", &app.api_key)
            .header("authorization", format!("Bearer {}", token.expose_secret()))
            .header("content-type", "application/json")
            .header(EDGE_SECRET_HEADER, EDGE_SECRET)
            .header(CLIENT_IP_HEADER, "203.0.113.1")
            .body(Body::from(
                json!({ "current_password": current, "new_password": "a new passphrase" })
                    .to_string(),
            ))
            .unwrap();
        app.send(request)
    };

    for _ in 0..LIMITS.per_account_and_ip {
        assert_eq!(change("wrong guess").await.status, StatusCode::FORBIDDEN);
    }

    assert_limited(&change(PASSWORD).await);
    assert_limited(&login_from(&app, "203.0.113.1", "ada@example.com", PASSWORD).await);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_owner_still_signs_in_where_they_usually_do_while_the_account_is_attacked(
    pool: PgPool,
) {
    let app = app(pool).await;
    app.register("ada@example.com").await;
    let home = "198.51.100.7";
    assert_eq!(
        login_from(&app, home, "ada@example.com", PASSWORD)
            .await
            .status,
        StatusCode::OK
    );

    // Two attackers fill the account-wide limit.
    for attempt in 0..LIMITS.per_account {
        let ip = format!("203.0.113.{}", attempt % 2);
        let failed = login_from(&app, &ip, "ada@example.com", "wrong guess").await;
        assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    }
    let stranger = login_from(&app, "192.0.2.99", "ada@example.com", PASSWORD).await;
    let owner = login_from(&app, home, "ada@example.com", PASSWORD).await;
    let owner_v6_neighbour = login_from(&app, "2001:db8::1", "ada@example.com", PASSWORD).await;

    assert_limited(&stranger);
    assert_eq!(owner.status, StatusCode::OK, "trusted where they signed in");
    assert_limited(&owner_v6_neighbour);
    // Trust is no licence to guess: the client's own limit still applies.
    for _ in 0..LIMITS.per_account_and_ip {
        login_from(&app, home, "ada@example.com", "wrong guess").await;
    }
    assert_limited(&login_from(&app, home, "ada@example.com", PASSWORD).await);
}
