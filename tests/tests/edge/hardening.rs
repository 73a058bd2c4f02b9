//! What the security review found at the edge, each shown where the attack lands: a flood of
//! made-up API keys, IPv6 clients moving between their /64s, the stale fallbacks in a fresh
//! isolate, planted cache entries, redirects carrying secrets, and non-canonical paths.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api_key::ApiKey;
use gatehouse_shared::signing::TokenSigner;
use gatehouse_tests::edge::{CountingRelay, Edge, Runtime, bindings};
use gatehouse_tests::{Options, TestApp, spawn_server};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Stack, assert_problem};

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_flood_of_made_up_api_keys_reaches_the_origin_only_up_to_the_miss_limit(pool: PgPool) {
    let stack = Stack::with(pool, Options::default(), |bindings| {
        bindings.insert(
            "API_KEY_MISS_LIMITER".into(),
            json!({ "simple": { "limit": 20, "period": 60 } }),
        );
    })
    .await;
    // The key has been used before the flood starts.
    let good = stack.send(Method::GET, "/auth/api-key").await;
    assert_eq!(good.status(), StatusCode::NO_CONTENT);

    let mut refused = 0;
    for round in 0..100 {
        let floods = (0..100).map(|_| {
            let key = ApiKey::generate(&mut rand_core::OsRng);
            stack
                .client
                .get(format!("{}/auth/api-key", stack.edge.url))
                .header("x-api-key", key.expose())
                .send()
        });
        for response in futures_util::future::join_all(floods).await {
            assert_eq!(response.unwrap().status(), StatusCode::UNAUTHORIZED);
            refused += 1;
        }
        // The valid key keeps working throughout, its verdict expiring (TTL 1 s) and renewed.
        let good = stack.send(Method::GET, "/auth/api-key").await;
        assert_eq!(good.status(), StatusCode::NO_CONTENT, "round {round}");
    }

    assert_eq!(refused, 10_000);
    let made_up_lookups = stack
        .relay
        .seen()
        .iter()
        .filter(|seen| {
            seen.route == "GET /auth/api-key" && seen.headers["x-api-key"] != stack.app.api_key
        })
        .count();
    // The binding counts in fixed windows (Miniflare aligns them to the minute), so a run that
    // straddles a boundary meets two: at most twice the limit.
    assert!(
        made_up_lookups <= 40,
        "{made_up_lookups} origin lookups for 10,000 made-up keys"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn ipv6_clients_moving_between_their_64s_are_throttled_by_their_56(pool: PgPool) {
    let stack = Stack::with(pool, Options::default(), |bindings| {
        bindings.insert(
            "AUTH_RATE_LIMITER_IPV6_56".into(),
            json!({ "simple": { "limit": 3, "period": 60 } }),
        );
    })
    .await;
    let login = |ip: String| {
        stack
            .request(Method::POST, "/auth/login")
            .header("cf-connecting-ip", ip)
            .json(&json!({ "email": "ada@example.com", "password": "wrong guess" }))
            .send()
    };

    // A fresh /64 of one /56 for every attempt. As in the single-address test, a run that
    // straddles the binding's window boundary may see one fresh window: 3 to 6 pass.
    let mut passed = 0;
    let flooded = loop {
        let response = login(format!("2001:db8:1:1{passed:02x}::1")).await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            break response;
        }
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        passed += 1;
        assert!(passed <= 6, "no 429 after {passed} logins from one /56");
    };
    let other_56 = login("2001:db8:1:200::1".into()).await.unwrap();

    assert!(passed >= 3, "throttled after only {passed} logins");
    assert_problem(flooded, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;
    assert_eq!(other_56.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        stack.relay.count("POST /auth/login"),
        passed + 1,
        "the throttled login never left the edge"
    );
}

/// The origin on a test database and a relay in front of it, for tests that start and stop
/// edges themselves.
struct Backend {
    app: TestApp,
    relay: CountingRelay,
    _server: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(pool: PgPool) -> Backend {
        let app = TestApp::new(pool).await;
        let (addr, server) = spawn_server(app.state.clone()).await;
        let relay = CountingRelay::start(&format!("http://{addr}")).await;
        Backend {
            app,
            relay,
            _server: server,
        }
    }

    async fn verify(&self, edge: &Edge, token: &str) -> reqwest::Response {
        gatehouse_tests::edge::client()
            .get(format!("{}/auth/verify", edge.url))
            .header("x-api-key", &self.app.api_key)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }
}

/// A fresh directory under the build's target directory, for one test's persisted cache.
fn cache_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("edge-cache-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_fresh_isolate_uses_the_cached_copies_while_the_origin_is_down(pool: PgPool) {
    let backend = Backend::start(pool).await;
    let token = backend.app.register("ada@example.com").await.access_token;
    let dir = cache_dir();
    let mut settings = bindings(&backend.relay.url);
    settings.insert("REVOCATION_REFRESH_SECS".into(), json!("1"));
    settings.insert("REVOCATION_MAX_STALE_SECS".into(), json!("4"));
    // The API key's verdict outlives the test, so only the revocation list's limit is measured.
    settings.insert("API_KEY_CACHE_TTL_SECS".into(), json!("60"));
    let runtime = Runtime {
        cache_dir: Some(dir.clone()),
        script: None,
    };
    let fetched = Instant::now();
    {
        let first = Edge::start_in(settings.clone(), runtime.clone()).await;
        let warm = backend.verify(&first, token.expose_secret()).await;
        assert_eq!(warm.status(), StatusCode::OK);
    }

    backend.relay.retarget("http://127.0.0.1:9");
    let fresh = Edge::start_in(settings, runtime).await;
    let during_outage = backend.verify(&fresh, token.expose_secret()).await;
    assert_eq!(
        during_outage.status(),
        StatusCode::OK,
        "a new isolate finds the last lists in the cache"
    );
    let refused = loop {
        let response = backend.verify(&fresh, token.expose_secret()).await;
        if response.status() != StatusCode::OK {
            break response;
        }
        assert!(fetched.elapsed() < Duration::from_secs(15), "never refused");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    assert!(
        fetched.elapsed() >= Duration::from_secs(4),
        "refused {:?} after the fetch, before the stale limit",
        fetched.elapsed()
    );
    assert_problem(
        refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "revocations_unavailable",
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_key_set_planted_in_the_cache_by_another_worker_is_ignored(pool: PgPool) {
    let backend = Backend::start(pool).await;
    let registered = backend.app.register("ada@example.com").await;
    let attacker = TokenSigner::generate(&mut rand_core::OsRng);
    let forged = attacker.sign(&backend.app.claims(&registered.access_token));
    let dir = cache_dir();
    let jwks_url = format!("{}/.well-known/jwks.json", backend.relay.url);
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;

    // Another Worker of the zone opens the edge's cache by name and writes a key set into it,
    // stamped fresh, under the URL the edge reads.
    let planter = Edge::start_in(
        bindings(&backend.relay.url),
        Runtime {
            cache_dir: Some(dir.clone()),
            script: Some(PLANTER.into()),
        },
    )
    .await;
    let planted = reqwest::Client::new()
        .post(&planter.url)
        .json(&json!({
            "url": jwks_url,
            "body": json!({ "keys": [attacker.jwk()] }).to_string(),
            "headers": {
                "cache-control": "max-age=3600",
                "x-gatehouse-fetched-at": now_ms.to_string(),
                "x-gatehouse-origin-max-age": "3600",
                "x-gatehouse-tag": "00".repeat(32),
            },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(planted.text().await.unwrap(), "planted");
    drop(planter);

    let edge = Edge::start_in(
        bindings(&backend.relay.url),
        Runtime {
            cache_dir: Some(dir.clone()),
            script: None,
        },
    )
    .await;
    let with_forged_key = backend.verify(&edge, &forged).await;
    let genuine = backend
        .verify(&edge, registered.access_token.expose_secret())
        .await;

    assert_problem(with_forged_key, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_eq!(genuine.status(), StatusCode::OK);
    assert_eq!(backend.relay.count("GET /.well-known/jwks.json"), 1);
    let _ = std::fs::remove_dir_all(dir);
}

/// A Worker that puts whatever it is sent into the cache named `gatehouse-edge`.
const PLANTER: &str = r#"
export default {
  async fetch(request) {
    const { url, body, headers } = await request.json();
    const cache = await caches.open("gatehouse-edge");
    await cache.put(url, new Response(body, { headers }));
    return new Response("planted");
  },
};
"#;

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn the_edge_never_follows_a_redirect_with_its_secrets(pool: PgPool) {
    let stack = Stack::with(pool, Options::default(), |bindings| {
        bindings.insert("API_KEY_CACHE_TTL_SECS".into(), json!("60"));
        // Every verification asks for the revocation list, which carries the edge secret.
        bindings.insert("REVOCATION_REFRESH_SECS".into(), json!("0"));
    })
    .await;
    let token = stack.register("ada@example.com").await.access_token;
    stack.assert_verifies(token.expose_secret()).await;
    let sink = CountingRelay::start("http://127.0.0.1:9").await;
    let redirector = {
        let location = format!("{}/collected", sink.url);
        let router = axum::Router::new().fallback(move || {
            let location = location.clone();
            async move { (StatusCode::FOUND, [("location", location)]) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        url
    };
    stack.relay.retarget(&redirector);

    let made_up_key = stack
        .client
        .get(format!("{}/auth/api-key", stack.edge.url))
        .header(
            "x-api-key",
            ApiKey::generate(&mut rand_core::OsRng).expose(),
        )
        .send()
        .await
        .unwrap();
    let verify = stack.verify(token.expose_secret()).await;

    assert_problem(made_up_key, StatusCode::BAD_GATEWAY, "origin_unreachable").await;
    assert_eq!(
        verify.status(),
        StatusCode::OK,
        "the redirect is a failed fetch: the last list is used"
    );
    assert!(
        stack.relay.count("GET /edge/revocations") >= 2,
        "the list was asked for"
    );
    assert!(sink.seen().is_empty(), "{:?}", sink.seen());
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_plain_http_origin_elsewhere_than_this_machine_is_refused(pool: PgPool) {
    let stack = Stack::with(pool, Options::default(), |bindings| {
        bindings.insert("ORIGIN_URL".into(), json!("http://origin.example.com"));
    })
    .await;

    let health = stack.send(Method::GET, "/health").await;

    assert_problem(health, StatusCode::INTERNAL_SERVER_ERROR, "internal_error").await;
    assert!(stack.relay.seen().is_empty());
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn non_canonical_paths_are_refused_before_anything_else(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let address = stack.edge.url.trim_start_matches("http://").to_owned();

    for path in [
        "//edge/revocations",
        "/auth//login",
        "/auth%2Flogin",
        "/auth%2flogin",
        "/auth/%5Clogin",
        "/.well-known%2Fjwks.json",
    ] {
        let (status, body) = raw_get(&address, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("non_canonical_path"), "{path}: {body}");
    }
    let (status, _) = raw_get(&address, "/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    assert_eq!(
        stack.relay.seen().len(),
        1,
        "only the canonical request was forwarded"
    );
}

/// `GET path` written byte for byte on a socket (an HTTP client would normalise the path), and
/// the status and body of the answer.
async fn raw_get(address: &str, path: &str) -> (u16, String) {
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, answer)
}
