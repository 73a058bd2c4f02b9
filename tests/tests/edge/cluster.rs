//! Two origin processes on one database, an edge in front of one of them: the counts, the
//! sessions and the refresh rule hold across instances, as the README says.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::TokenResponse;
use gatehouse_tests::cluster::{self, Cluster};
use gatehouse_tests::edge::{CountingRelay, Edge, bindings};
use gatehouse_tests::{PASSWORD, RowLock, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn wrong_passwords_alternating_between_instances_meet_the_limit_of_one(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.register("ada@example.com").await;
    let limit = 3;
    let cluster = Cluster::start(&app, 2, &[("LOGIN_LIMIT_PER_ACCOUNT_AND_IP", "3")]).await;
    let login = |instance: usize, password: &str| {
        cluster.origins[instance]
            .request(&app, Method::POST, "/auth/login", "203.0.113.1")
            .json(&json!({ "email": "ada@example.com", "password": password }))
            .send()
    };

    for attempt in 0..limit {
        let failed = login(attempt % 2, "wrong guess").await.unwrap();
        assert_eq!(
            failed.status(),
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}"
        );
    }

    for instance in 0..2 {
        let over = login(instance, PASSWORD).await.unwrap();
        assert_eq!(
            over.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "instance {instance}"
        );
    }
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_logout_on_one_instance_is_refused_by_the_other_and_by_the_edge(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let cluster = Cluster::start(&app, 2, &[]).await;
    let (first, second) = (&cluster.origins[0], &cluster.origins[1]);
    let relay = CountingRelay::start(&first.url).await;
    let mut settings = bindings(&relay.url);
    settings.insert("REVOCATION_REFRESH_SECS".into(), json!("1"));
    let edge = Edge::start(settings).await;
    let client = gatehouse_tests::edge::client();
    let registered: TokenResponse = client
        .post(format!("{}/auth/register", edge.url))
        .header("x-api-key", &app.api_key)
        .json(&gatehouse_tests::register_body("ada@example.com"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered.access_token.expose_secret();
    let edge_verify = || {
        client
            .get(format!("{}/auth/verify", edge.url))
            .header("x-api-key", &app.api_key)
            .bearer_auth(token)
            .send()
    };
    assert_eq!(edge_verify().await.unwrap().status(), StatusCode::OK);
    assert_eq!(second.verify(&app, token).await, StatusCode::OK);

    let logout = second
        .request(&app, Method::POST, "/auth/logout", "192.0.2.1")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let logged_out = Instant::now();

    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert_eq!(first.verify(&app, token).await, StatusCode::UNAUTHORIZED);
    // The edge in front of the first instance learns from its revocation list, renewed every
    // second here: refused within that plus a round trip.
    loop {
        if edge_verify().await.unwrap().status() == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            logged_out.elapsed() < Duration::from_secs(3),
            "the edge still vouches for the session"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_refresh_race_split_across_instances_leaves_one_live_token(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let cluster = Cluster::start(&app, 2, &[]).await;
    let refresh = |instance: usize| {
        cluster.origins[instance]
            .request(&app, Method::POST, "/auth/refresh", "192.0.2.1")
            .json(&json!({ "refresh_token": registered.refresh_token.expose_secret() }))
            .send()
    };

    // Four refreshes with one token, two at each instance, queued on the session's lock and let
    // go together.
    let mut lock = RowLock::take(&app.pool, "sessions", registered.session_id).await;
    let (responses, ()) = tokio::join!(join_all((0..4).map(|n| refresh(n % 2))), async {
        lock.wait_for_waiters(4).await;
        lock.release().await;
    });

    let mut successors = Vec::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "nobody is logged out");
        let tokens: TokenResponse = response.json().await.unwrap();
        successors.push(tokens.refresh_token.expose_secret().to_owned());
    }
    assert!(successors.iter().all(|s| *s == successors[0]));
    assert_eq!(
        app.refresh_state(registered.session_id).await,
        (2, 0),
        "exactly one live token"
    );
    let next = app.refreshed(&successors[0]).await;
    assert_eq!(next.session_id, registered.session_id);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_revoked_signing_key_is_refused_everywhere(pool: PgPool) {
    let stack = super::Stack::with(pool, gatehouse_tests::Options::default(), |bindings| {
        bindings.insert("REVOCATION_REFRESH_SECS".into(), json!("1"));
    })
    .await;
    let token = stack.register("ada@example.com").await.access_token;
    stack.assert_verifies(token.expose_secret()).await;
    let kid = gatehouse_shared::token::key_id(token.expose_secret()).unwrap();
    let database_url = cluster::database_url(&stack.app).await;

    let revoke = std::process::Command::new(cluster::origin_binary())
        .args(["key", "revoke", &kid])
        .env("DATABASE_URL", &database_url)
        .output()
        .unwrap();
    let revoked_at = Instant::now();

    assert!(revoke.status.success(), "{revoke:?}");
    let origin = stack.app.get("/auth/verify", token.expose_secret()).await;
    assert_eq!(
        origin.status,
        axum::http::StatusCode::UNAUTHORIZED,
        "the origin at once"
    );
    // The JWKS route rereads the revoked keys at most every few seconds.
    stack
        .app
        .clock
        .advance(gatehouse_origin::signing_keys::REFRESH);
    let jwks = axum::http::Request::get("/.well-known/jwks.json").body(axum::body::Body::empty());
    let jwks = stack.app.send(jwks.unwrap()).await;
    assert!(!jwks.body.to_string().contains(&kid), "no longer published");
    loop {
        let at_edge = stack.verify(token.expose_secret()).await;
        if at_edge.status() == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(3),
            "the edge still vouches for the revoked key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stack.relay.count("GET /.well-known/jwks.json"),
        1,
        "refused while the edge's key set still has the key"
    );
    let restarted = std::process::Command::new(cluster::origin_binary())
        .arg("serve")
        .env("DATABASE_URL", &database_url)
        .env("JWT_SIGNING_KEY", stack.app.signer.to_pkcs8_pem().as_str())
        .env("GATEHOUSE_ENV", "development")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("METRICS_LISTEN_ADDR", "off")
        .env("MAIL_ENABLED", "false")
        .output()
        .unwrap();
    assert!(!restarted.status.success());
    let stderr = String::from_utf8_lossy(&restarted.stderr);
    assert!(
        stderr.contains("JWT_SIGNING_KEY") && stderr.contains("revoked"),
        "{stderr}"
    );
}
