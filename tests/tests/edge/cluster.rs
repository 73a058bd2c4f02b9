//! Two origin processes on one database, an edge in front of one of them: the counts, the
//! sessions and the refresh rule hold across instances, as the README says.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::TokenResponse;
use gatehouse_shared::signing::TokenSigner;
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

/// The key id in a token's protected header.
fn kid_of(token: &str) -> String {
    gatehouse_shared::token::key_id(token).expect("a well-formed token")
}

/// The kids an origin publishes, in order.
async fn published_kids(origin: &cluster::OriginProcess) -> Vec<String> {
    let jwks: serde_json::Value = reqwest::get(format!("{}/.well-known/jwks.json", origin.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// Keys in PostgreSQL: `gatehouse-origin key rotate` while two instances issue tokens and the
/// edge and both instances check them. Every check passes before, during and after the rotation:
/// the instances never fetch keys on demand, so each knew the next key before the other signed
/// with it. The edge's refetch for unknown keys is spent on a stranger's token while its key set
/// is fresh, and the next is an hour away: it learns the next key from the key set it refreshes
/// anyway (max-age 3 s here).
#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_key_rotation_while_two_instances_and_the_edge_serve_fails_no_check(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let registered = app.register("ada@example.com").await;
    let stranger =
        TokenSigner::generate(&mut rand_core::OsRng).sign(&app.claims(&registered.access_token));
    let keys_env = [
        ("SIGNING_KEYS", "database"),
        ("SIGNING_KEY_REFRESH_SECS", "1"),
        ("JWKS_MAX_AGE_SECS", "3"),
    ];
    let limits_env = [
        ("LOGIN_LIMIT_PER_ACCOUNT", "100000"),
        ("LOGIN_LIMIT_PER_ACCOUNT_AND_IP", "100000"),
        ("LOGIN_LIMIT_PER_IP", "100000"),
    ];
    let cluster = Cluster::start(&app, 2, &[keys_env.as_slice(), &limits_env].concat()).await;
    let relay = CountingRelay::start(&cluster.origins[0].url).await;
    let mut settings = bindings(&relay.url);
    settings.insert("JWKS_REFETCH_COOLDOWN_SECS".into(), json!("3600"));
    let edge = Edge::start(settings).await;
    let client = gatehouse_tests::edge::client();
    let login = |instance: usize| {
        let (origin, app) = (&cluster.origins[instance], &app);
        async move {
            let response = origin
                .request(app, Method::POST, "/auth/login", "203.0.113.9")
                .json(&json!({ "email": "ada@example.com", "password": PASSWORD }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "login at {instance}");
            let tokens: TokenResponse = response.json().await.unwrap();
            tokens.access_token.expose_secret().to_owned()
        }
    };
    let check_everywhere = |token: String| {
        let (client, edge, cluster, app) = (&client, &edge, &cluster, &app);
        async move {
            let at_edge = client
                .get(format!("{}/auth/verify", edge.url))
                .header("x-api-key", &app.api_key)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(at_edge, StatusCode::OK, "edge, key {}", kid_of(&token));
            for (instance, origin) in cluster.origins.iter().enumerate() {
                let status = origin.verify(app, &token).await;
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "instance {instance}, key {}",
                    kid_of(&token)
                );
            }
        }
    };
    let first_token = login(0).await;
    let first_kid = kid_of(&first_token);
    for origin in &cluster.origins {
        assert_eq!(published_kids(origin).await, vec![first_kid.clone()]);
    }
    check_everywhere(first_token.clone()).await;
    let refused = client
        .get(format!("{}/auth/verify", edge.url))
        .header("x-api-key", &app.api_key)
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "a stranger's key"
    );

    let rotated = tokio::process::Command::new(cluster::origin_binary())
        .args(["key", "rotate"])
        .env_clear()
        .env("GATEHOUSE_ENV", "development")
        .env("DATABASE_URL", cluster::database_url(&app).await)
        .env("SERVER_SECRET", gatehouse_tests::SERVER_SECRET)
        .env("MAIL_ENABLED", "false")
        .envs(keys_env)
        .output()
        .await
        .unwrap();
    assert!(rotated.status.success(), "{rotated:?}");
    let next_kid = String::from_utf8(rotated.stdout).unwrap().trim().to_owned();
    assert_ne!(next_kid, first_kid);

    // Until both instances sign with the next key: each issues tokens, which the edge and both
    // instances accept, as they still accept the very first token.
    let mut signs_with_next = [false, false];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut checked = 0;
    while signs_with_next != [true, true] {
        assert!(
            Instant::now() < deadline,
            "the next key never signed at both instances"
        );
        for (instance, switched) in signs_with_next.iter_mut().enumerate() {
            let token = login(instance).await;
            let kid = kid_of(&token);
            assert!(kid == first_kid || kid == next_kid, "unknown key {kid}");
            *switched |= kid == next_kid;
            check_everywhere(token).await;
            check_everywhere(first_token.clone()).await;
            checked += 2;
        }
    }
    assert!(
        checked > 10,
        "the rotation was watched at work ({checked} tokens checked)"
    );
    for origin in &cluster.origins {
        assert_eq!(
            published_kids(origin).await,
            vec![next_kid.clone(), first_kid.clone()]
        );
    }
}
