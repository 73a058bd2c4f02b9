//! Brute-force limits: counted in PostgreSQL per account, per account and address, per address
//! (and per IPv6 /56 and /48), per trusted device; registrations per client; 429 with
//! `Retry-After`; shared by every origin instance on the database.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gatehouse_origin::throttle::LoginLimits;
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{CLIENT_IP_HEADER, EDGE_SECRET_HEADER, TokenResponse};
use gatehouse_tests::{EDGE_SECRET, Options, PASSWORD, TestApp, TestResponse, count_status};
use serde_json::json;
use sqlx::PgPool;

/// Small limits so the tests stay short; the shape is the production one.
const LIMITS: LoginLimits = LoginLimits {
    window: Duration::from_secs(900),
    per_account: 6,
    per_account_and_ip: 3,
    per_ip: 8,
    register_per_ip: 4,
    mfa_per_account: 10,
    ipv6_56_factor: 2,
    ipv6_48_factor: 4,
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
    let body = json!({ "email": email, "password": password });
    app.send(forwarded_from(app, ip, "/auth/login", body)).await
}

/// A login from `ip` with the device token an earlier login returned.
async fn login_with_device(
    app: &TestApp,
    ip: &str,
    password: &str,
    device_token: &str,
) -> TestResponse {
    let body = json!({
        "email": "ada@example.com", "password": password, "device_token": device_token
    });
    app.send(forwarded_from(app, ip, "/auth/login", body)).await
}

/// A registration of `email` as the edge forwards it for a client at `ip`.
async fn register_from(app: &TestApp, ip: &str, email: &str) -> TestResponse {
    let body = json!({ "email": email, "password": PASSWORD });
    app.send(forwarded_from(app, ip, "/auth/register", body))
        .await
}

/// A POST of `body` to `path` as the edge forwards it for a client at `ip`.
fn forwarded_from(app: &TestApp, ip: &str, path: &str, body: serde_json::Value) -> Request<Body> {
    Request::post(path)
        .header("x-api-key", &app.api_key)
        .header("content-type", "application/json")
        .header(EDGE_SECRET_HEADER, EDGE_SECRET)
        .header(CLIENT_IP_HEADER, ip)
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// The device token of a successful login.
fn device_token(response: &TestResponse) -> String {
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    response
        .json::<TokenResponse>()
        .device_token
        .expect("a login returns a device token")
        .expose_secret()
        .to_owned()
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
async fn the_owner_still_signs_in_on_their_device_while_the_account_is_attacked(pool: PgPool) {
    let app = app(pool).await;
    app.register("ada@example.com").await;
    let home = "198.51.100.7";
    let device = device_token(&login_from(&app, home, "ada@example.com", PASSWORD).await);

    // Two attackers fill the account-wide limit.
    for attempt in 0..LIMITS.per_account {
        let ip = format!("203.0.113.{}", attempt % 2);
        let failed = login_from(&app, &ip, "ada@example.com", "wrong guess").await;
        assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    }
    let stranger = login_from(&app, "192.0.2.99", "ada@example.com", PASSWORD).await;
    let same_address_no_device = login_from(&app, home, "ada@example.com", PASSWORD).await;
    let owner_travelling = login_with_device(&app, "192.0.2.50", PASSWORD, &device).await;
    let owner_at_home = login_with_device(&app, home, PASSWORD, &device).await;
    let forged = login_with_device(&app, home, PASSWORD, &format!("gtd_{}", "0".repeat(64))).await;

    assert_limited(&stranger);
    // Trust belongs to the device, not to whoever shares its address (a NAT, an office).
    assert_limited(&same_address_no_device);
    assert_eq!(
        device_token(&owner_travelling),
        device,
        "the same token, renewed"
    );
    assert_eq!(device_token(&owner_at_home), device);
    assert_limited(&forged);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_stolen_device_token_buys_no_more_than_the_account_limit_again(pool: PgPool) {
    let app = app(pool).await;
    app.register("ada@example.com").await;
    let device = device_token(&login_from(&app, "198.51.100.7", "ada@example.com", PASSWORD).await);

    for attempt in 0..LIMITS.per_account {
        let ip = format!("203.0.113.{attempt}");
        let failed = login_with_device(&app, &ip, "wrong guess", &device).await;
        assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    }

    assert_limited(&login_with_device(&app, "192.0.2.1", PASSWORD, &device).await);
    let account_wide = login_from(&app, "192.0.2.2", "ada@example.com", PASSWORD).await;
    assert_eq!(
        account_wide.status,
        StatusCode::OK,
        "the device's guesses went to its own counter"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_owner_login_gives_back_only_its_own_attempt(pool: PgPool) {
    let app = app(pool).await;
    app.register("ada@example.com").await;
    let office = "203.0.113.1";
    for _ in 0..LIMITS.per_account_and_ip - 1 {
        guess(&app, office, "ada@example.com").await;
    }

    // The owner signs in from behind the same address as the guesser.
    let owner = login_from(&app, office, "ada@example.com", PASSWORD).await;
    let last_guess = login_from(&app, office, "ada@example.com", "wrong guess").await;
    let over = login_from(&app, office, "ada@example.com", "wrong guess").await;

    assert_eq!(owner.status, StatusCode::OK);
    assert_eq!(last_guess.status, StatusCode::UNAUTHORIZED);
    assert_limited(&over);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn no_hour_sees_more_than_five_windows_of_guesses_on_an_account(pool: PgPool) {
    let app = app(pool).await;
    app.register("ada@example.com").await;

    // A distributed guesser (a fresh address every time) tries once a minute until refused,
    // over the closed hour from its first guess: the worst alignment, five windows.
    let mut checked = 0;
    for minute in 0..=60 {
        loop {
            let ip = format!("10.0.{}.{}", minute, checked % 250);
            let answer = login_from(&app, &ip, "ada@example.com", "wrong guess").await;
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                break;
            }
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
            checked += 1;
        }
        app.clock.advance(Duration::from_secs(60));
    }

    // 60 minutes span at most ceil(3600 / 900) + 1 = 5 windows: 5 x LOGIN_LIMIT_PER_ACCOUNT.
    assert_eq!(checked, 5 * LIMITS.per_account);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn registrations_are_limited_per_client(pool: PgPool) {
    let app = app(pool).await;

    for n in 0..LIMITS.register_per_ip {
        let created = register_from(&app, "203.0.113.1", &format!("user{n}@example.com")).await;
        assert_eq!(created.status, StatusCode::CREATED);
    }
    let over = register_from(&app, "203.0.113.1", "one.more@example.com").await;
    let elsewhere = register_from(&app, "198.51.100.7", "one.more@example.com").await;

    assert_limited(&over);
    assert_eq!(
        elsewhere.status,
        StatusCode::CREATED,
        "the refused registration created nothing"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn ipv6_clients_moving_between_their_64s_meet_the_56_and_48_limits(pool: PgPool) {
    let app = app(pool).await;
    let per_56 = LIMITS.register_per_ip * LIMITS.ipv6_56_factor;
    let per_48 = LIMITS.register_per_ip * LIMITS.ipv6_48_factor;
    let mut n = 0;
    let mut register = |ip: String| {
        n += 1;
        let email = format!("user{n}@example.com");
        let app = &app;
        async move { register_from(app, &ip, &email).await.status }
    };

    // Every registration from a different /64 of the /56 2001:db8:1:100::/56.
    let mut statuses = Vec::new();
    for subnet in 0..=per_56 {
        statuses.push(register(format!("2001:db8:1:1{subnet:02x}::1")).await);
    }
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(created, per_56 as usize);
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS));

    // Further /56s of the same /48 share the /48's limit.
    let mut created = per_56;
    let mut last = StatusCode::CREATED;
    for block in 2..=10u32 {
        last = register(format!("2001:db8:1:{block:x}00::1")).await;
        if last == StatusCode::CREATED {
            created += 1;
        }
    }
    assert_eq!(created, per_48);
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS, "the /48 is full");
    assert_eq!(
        register("2001:db8:2::1".into()).await,
        StatusCode::CREATED,
        "another /48 is another client"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_password_change_withdraws_the_trust_of_every_device_token(pool: PgPool) {
    let app = app(pool).await;
    let access = app.register("ada@example.com").await.access_token;
    let device = device_token(&login_from(&app, "198.51.100.7", "ada@example.com", PASSWORD).await);
    let new_password = "a brand new passphrase";
    let changed = app
        .change_password(access.expose_secret(), PASSWORD, new_password)
        .await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT);

    for attempt in 0..LIMITS.per_account {
        guess(&app, &format!("203.0.113.{attempt}"), "ada@example.com").await;
    }
    let old_device = login_with_device(&app, "198.51.100.7", new_password, &device).await;

    assert_limited(&old_device);
}

/// The MFA counter is read and locked before a code is checked (`throttle::peek`) even when no
/// failure has been counted yet: a second check on the account waits for the first, and then
/// sees the failure the first counted. (Were there no row to lock, both would pass the limit.)
#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_second_code_check_waits_for_the_first_even_before_any_failure(pool: PgPool) {
    use gatehouse_origin::throttle::{self, CounterNames, Counters};
    let limits = LoginLimits {
        mfa_per_account: 1,
        ..LIMITS
    };
    let counters = Counters::for_mfa(&limits, &CounterNames::new([7; 32]), uuid::Uuid::nil());
    let now = time::OffsetDateTime::now_utc();
    let mut watcher = pool.acquire().await.unwrap();
    let mut first = pool.begin().await.unwrap();
    throttle::peek(&mut first, &limits, &counters, now)
        .await
        .unwrap();

    let second = tokio::spawn({
        let (pool, counters) = (pool.clone(), counters.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            throttle::peek(&mut tx, &limits, &counters, now).await
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *watcher)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second check did not wait for the first"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The first code was wrong: counted, committed.
    throttle::reserve(&mut first, &limits, &counters, now)
        .await
        .unwrap();
    first.commit().await.unwrap();

    let outcome = second.await.unwrap();
    assert!(
        matches!(
            outcome,
            Err(gatehouse_origin::error::ApiError::RateLimited { .. })
        ),
        "{outcome:?}"
    );
}
