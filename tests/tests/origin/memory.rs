//! What the origin remembers instead of reading PostgreSQL on every check, and the notifications
//! that keep it true, across real origin processes on one database: every way a remembered "yes"
//! stops being true reaches the other instance, and an instance that stops hearing notifications
//! reads the database instead of trusting what it remembered.

use std::time::{Duration, Instant};

use gatehouse_origin::{api_keys, signing_keys};
use gatehouse_shared::ExposeSecret;
use gatehouse_tests::cluster::{Cluster, OriginProcess, database_url};
use gatehouse_tests::relay::Relay;
use gatehouse_tests::{Options, PASSWORD, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use time::OffsetDateTime;

const CLIENT: &str = "192.0.2.1";

/// How long a notification may take to reach another instance before the test calls it lost. The
/// README's figure (well under 100 ms) comes from the bench; this only has to tell "arrived" from
/// "never".
const DELIVERY: Duration = Duration::from_secs(2);

/// A relay to the test database's server, and `app`'s database URL through it.
async fn relay_to_database(app: &TestApp) -> (Relay, String) {
    let direct = app.pool.connect_options();
    let target = format!("{}:{}", direct.get_host(), direct.get_port());
    let target = tokio::net::lookup_host(target)
        .await
        .unwrap()
        .next()
        .unwrap();
    let relay = Relay::start(target).await;
    let mut url = reqwest::Url::parse(&database_url(app).await).unwrap();
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(relay.addr().port())).unwrap();
    (relay, url.to_string())
}

/// `GET /auth/verify` at `origin` with `token` and the API key `key`.
async fn verify_with(origin: &OriginProcess, key: &str, token: &str) -> StatusCode {
    reqwest::Client::new()
        .get(format!("{}/auth/verify", origin.url))
        .header("x-api-key", key)
        .bearer_auth(token)
        .send()
        .await
        .expect("the origin answers")
        .status()
}

/// Polls until `check` answers `status`; panics after [`DELIVERY`].
async fn eventually<F: Future<Output = StatusCode>>(
    what: &str,
    status: StatusCode,
    mut check: impl FnMut() -> F,
) {
    let started = Instant::now();
    loop {
        let answered = check().await;
        if answered == status {
            return;
        }
        assert!(
            started.elapsed() < DELIVERY,
            "{what}: still {answered} after {DELIVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn every_ending_at_one_instance_is_refused_from_memory_at_the_other(pool: PgPool) {
    let app = TestApp::new(pool).await;
    // B reads PostgreSQL through a relay the test cuts; it hears notifications directly. With its
    // database cut off, whatever B answers comes from memory and notifications alone.
    let (relay, relayed) = relay_to_database(&app).await;
    let direct = database_url(&app).await;
    let a = Cluster::start(&app, 1, &[]).await;
    let b = Cluster::start(
        &app,
        1,
        &[
            ("DATABASE_URL", relayed.as_str()),
            ("LISTEN_DATABASE_URL", direct.as_str()),
        ],
    )
    .await;
    let (a, b) = (&a.origins[0], &b.origins[0]);
    b.wait_for_notifications("subscribed").await;
    let second_key = api_keys::create(&app.pool, "second").await.unwrap();
    let second_key = second_key.expose();
    let logout = app.register("logout@example.com").await;
    let changer = app.register("changer@example.com").await;
    let other_device = app.sign_in("changer@example.com").await;
    let leaver = app.register("leaver@example.com").await;
    let keyed = app.register("keyed@example.com").await;
    let token =
        |pair: &gatehouse_shared::api::TokenResponse| pair.access_token.expose_secret().to_owned();
    let tokens = [&logout, &changer, &other_device, &leaver].map(token);
    let [logout, changer, other_device, leaver] = &tokens;
    let keyed = token(&keyed);
    for token in &tokens {
        assert_eq!(b.verify(&app, token).await, StatusCode::OK);
    }
    assert_eq!(verify_with(b, second_key, &keyed).await, StatusCode::OK);

    relay.cut();
    // Still answered: from memory.
    assert_eq!(b.verify(&app, logout).await, StatusCode::OK);

    let send = |request: reqwest::RequestBuilder| async move {
        request.send().await.expect("A answers").status()
    };
    let logged_out = send(
        a.request(&app, Method::POST, "/auth/logout", CLIENT)
            .bearer_auth(logout),
    );
    assert_eq!(logged_out.await, StatusCode::NO_CONTENT);
    let changed = send(
        a.request(&app, Method::PUT, "/auth/password", CLIENT)
            .bearer_auth(changer)
            .json(&json!({"current_password": PASSWORD, "new_password": "a different passphrase"})),
    );
    assert_eq!(changed.await, StatusCode::NO_CONTENT);
    let deleted = send(
        a.request(&app, Method::DELETE, "/auth/profile", CLIENT)
            .bearer_auth(leaver)
            .json(&json!({"current_password": PASSWORD})),
    );
    assert_eq!(deleted.await, StatusCode::NO_CONTENT);
    assert!(api_keys::revoke(&app.pool, second_key).await.unwrap());

    eventually("a logout", StatusCode::UNAUTHORIZED, || {
        b.verify(&app, logout)
    })
    .await;
    // The password change ended the changer's other session, not the one that asked for it.
    eventually("a password change", StatusCode::UNAUTHORIZED, || {
        b.verify(&app, other_device)
    })
    .await;
    eventually("a deactivation", StatusCode::UNAUTHORIZED, || {
        b.verify(&app, leaver)
    })
    .await;
    eventually("an API key revoked", StatusCode::UNAUTHORIZED, || {
        verify_with(b, second_key, &keyed)
    })
    .await;
    assert_eq!(b.verify(&app, changer).await, StatusCode::OK);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_revoked_signing_key_is_refused_from_memory_at_every_instance(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (relay, relayed) = relay_to_database(&app).await;
    let direct = database_url(&app).await;
    let b = Cluster::start(
        &app,
        1,
        &[
            ("DATABASE_URL", relayed.as_str()),
            ("LISTEN_DATABASE_URL", direct.as_str()),
        ],
    )
    .await;
    let b = &b.origins[0];
    b.wait_for_notifications("subscribed").await;
    let signed_in = app.register("ada@example.com").await;
    let token = signed_in.access_token.expose_secret().to_owned();
    assert_eq!(b.verify(&app, &token).await, StatusCode::OK);

    relay.cut();
    let kid = gatehouse_shared::token::key_id(&token).unwrap();
    let mut connection = app.pool.acquire().await.unwrap();
    signing_keys::revoke(&mut connection, &kid, OffsetDateTime::now_utc())
        .await
        .unwrap();

    eventually("a signing key revoked", StatusCode::UNAUTHORIZED, || {
        b.verify(&app, &token)
    })
    .await;
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn an_instance_that_stops_hearing_notifications_reads_the_database(pool: PgPool) {
    let app = TestApp::new(pool).await;
    // B reads PostgreSQL directly and hears notifications through the relay.
    let (relay, relayed) = relay_to_database(&app).await;
    let a = Cluster::start(&app, 1, &[]).await;
    let b = Cluster::start(&app, 1, &[("LISTEN_DATABASE_URL", relayed.as_str())]).await;
    let (a, b) = (&a.origins[0], &b.origins[0]);
    b.wait_for_notifications("subscribed").await;
    let signed_in = app.register("ada@example.com").await;
    let token = signed_in.access_token.expose_secret().to_owned();
    assert_eq!(b.verify(&app, &token).await, StatusCode::OK);

    relay.cut();
    b.wait_for_notifications("unsubscribed").await;
    let logout = a
        .request(&app, Method::POST, "/auth/logout", CLIENT)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);

    // No notification can reach B, and it no longer trusts what it remembered: refused at once.
    assert_eq!(b.verify(&app, &token).await, StatusCode::UNAUTHORIZED);

    relay.restore().await;
    b.wait_for_notifications("subscribed").await;
    assert_eq!(b.verify(&app, &token).await, StatusCode::UNAUTHORIZED);
    let again = app.sign_in("ada@example.com").await;
    let fresh = again.access_token.expose_secret();
    assert_eq!(b.verify(&app, fresh).await, StatusCode::OK);
    assert_eq!(b.verify(&app, fresh).await, StatusCode::OK);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_remembered_session_ends_with_its_idle_timeout(pool: PgPool) {
    let defaults = Options::default();
    // An idle timeout shorter than the access-token lifetime: the token's expiry is capped at
    // the session's end, and its leeway would let it pass a few seconds past it.
    let options = Options {
        sessions: gatehouse_origin::sessions::SessionPolicy {
            idle_timeout: Duration::from_secs(60),
            ..defaults.sessions
        },
        ..defaults
    };
    let app = TestApp::with(pool, options).await;
    app.wait_until_subscribed().await;
    let signed_in = app.register("ada@example.com").await;
    let token = signed_in.access_token.expose_secret();
    app.assert_verifies(token).await;

    app.clock.advance(Duration::from_secs(61));

    let refused = app.get("/auth/verify", token).await;
    assert_eq!(
        refused.status,
        StatusCode::UNAUTHORIZED,
        "{:?}",
        refused.body
    );
    assert_eq!(refused.problem().code, "invalid_token");
    assert_eq!(refused.body["detail"], "session has ended");
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_instance_that_ends_a_session_refuses_it_at_once(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.wait_until_subscribed().await;
    for attempt in 0..20 {
        let signed_in = app.register(&format!("user{attempt}@example.com")).await;
        let token = signed_in.access_token.expose_secret();
        app.assert_verifies(token).await;

        let logout = app.post_empty("/auth/logout", token).await;
        assert_eq!(logout.status, StatusCode::NO_CONTENT);

        // No wait for the notification: the ending instance knows before its commit.
        assert_eq!(
            app.get("/auth/verify", token).await.status,
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}"
        );
    }
}
