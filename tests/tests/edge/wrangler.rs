//! One run through `wrangler dev`, so that `wrangler.toml` itself (entry point, build command,
//! the `local` environment) is exercised, not only the built worker.

use gatehouse_shared::ExposeSecret;
use std::process::Stdio;

use gatehouse_tests::edge::{CountingRelay, edge_dir};
use gatehouse_tests::{AUDIENCE, EDGE_SECRET, ISSUER, TestApp, spawn_server};
use reqwest::{Method, StatusCode};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn wrangler_dev_serves_the_worker_described_by_wrangler_toml(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (addr, _server) = spawn_server(app.state.clone()).await;
    let relay = CountingRelay::start(&format!("http://{addr}")).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root = edge_dir().join("..");
    let mut wrangler = Command::new(edge_dir().join("node_modules/.bin/wrangler"))
        .current_dir(&root)
        .args([
            "dev",
            "--config",
            "wrangler.toml",
            "--env",
            "local",
            "--ip",
            "127.0.0.1",
        ])
        .args([
            "--port",
            &port.to_string(),
            "--inspector-port",
            "0",
            "--show-interactive-dev-session=false",
        ])
        .args(["--var", &format!("ORIGIN_URL:{}", relay.url)])
        .args(["--var", &format!("JWT_ISSUER:{ISSUER}")])
        .args(["--var", &format!("JWT_AUDIENCE:{AUDIENCE}")])
        .args(["--var", &format!("EDGE_SECRET:{EDGE_SECRET}")])
        .env("WRANGLER_SEND_METRICS", "false")
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .env("CI", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("wrangler starts");
    let _stop = gatehouse_tests::edge::KillGroup(wrangler.id().unwrap());
    let mut lines = BufReader::new(wrangler.stdout.take().unwrap()).lines();
    let ready = async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("wrangler dev exited before it was ready");
            if line.contains("Ready on") {
                break;
            }
        }
    };
    tokio::time::timeout(gatehouse_tests::edge::STARTUP_TIMEOUT, ready)
        .await
        .expect("wrangler dev was not ready in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let edge = format!("http://127.0.0.1:{port}");
    let client = gatehouse_tests::edge::client();

    let registered = client
        .request(Method::POST, format!("{edge}/auth/register"))
        .header("x-api-key", &app.api_key)
        .json(&serde_json::json!({ "email": "ada@example.com", "password": gatehouse_tests::PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    let token = registered
        .json::<gatehouse_shared::api::TokenResponse>()
        .await
        .unwrap()
        .access_token;
    let verified = client
        .get(format!("{edge}/auth/verify"))
        .header("x-api-key", &app.api_key)
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .unwrap();

    assert_eq!(verified.status(), StatusCode::OK);
    assert_eq!(relay.count("GET /auth/verify"), 0);
    assert_eq!(relay.count("POST /auth/register"), 1);
}
