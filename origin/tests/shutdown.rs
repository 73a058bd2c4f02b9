//! The real `gatehouse-origin` binary on a fresh database: on SIGTERM it stops taking new
//! connections, finishes the requests in flight, and exits cleanly. Needs `DATABASE_URL` (a
//! server where it may create a database; `cargo xtask test` provides it).

use std::process::Stdio;
use std::time::{Duration, Instant};

use gatehouse_shared::api::RegisterRequest;
use reqwest::StatusCode;

/// Registrations in flight when SIGTERM arrives: one hashing, the rest queued behind it.
const IN_FLIGHT: usize = 4;

/// Longest any step may take before the test calls it a hang.
const PATIENCE: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn scrape_queue_depth(client: &reqwest::Client, metrics: &str) -> Option<f64> {
    let text = client.get(metrics).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find(|line| line.starts_with("gatehouse_hash_queue_depth "))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// A new database on the server `DATABASE_URL` names: a pool on the server, its name, its URL.
async fn fresh_database() -> (sqlx::PgPool, String, String) {
    let admin_url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must name a PostgreSQL server (cargo xtask test sets it)");
    let name = format!("gatehouse_shutdown_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("create database {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let (server, _) = admin_url.rsplit_once('/').unwrap();
    let database_url = format!("{server}/{name}");
    (admin, name, database_url)
}

/// An API key made by the real binary's `api-key create` on `database_url`.
fn create_api_key(database_url: &str) -> String {
    let created = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse-origin"))
        .args(["api-key", "create", "shutdown-test"])
        .env("DATABASE_URL", database_url)
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    String::from_utf8(created.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_then_exits() {
    let (admin, name, database_url) = fresh_database().await;
    let api_key = create_api_key(&database_url);
    let binary = env!("CARGO_BIN_EXE_gatehouse-origin");
    let (port, metrics_port) = (free_port(), free_port());
    let mut origin = tokio::process::Command::new(binary)
        .arg("serve")
        .env("DATABASE_URL", &database_url)
        .env("GATEHOUSE_ENV", "development")
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("METRICS_LISTEN_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("PASSWORD_HASH_ROUNDS", "13")
        .env("HASH_WORKERS", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !client
        .get(format!("{url}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "the origin never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let registrations: Vec<_> = (0..IN_FLIGHT)
        .map(|n| {
            let request = client
                .post(format!("{url}/auth/register"))
                .header("x-api-key", &api_key)
                .json(&RegisterRequest {
                    email: format!("drain-{n}@example.com"),
                    password: "correct horse battery staple".into(),
                    first_name: None,
                    last_name: None,
                });
            tokio::spawn(async move { request.send().await.map(|r| r.status()) })
        })
        .collect();
    // All of them inside the origin: one hashing on the single worker, the rest queued.
    while scrape_queue_depth(&client, &metrics).await < Some((IN_FLIGHT - 1) as f64) {
        assert!(Instant::now() < deadline, "the registrations never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let terminated = std::process::Command::new("kill")
        .args(["-TERM", &origin.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());

    let mut statuses = Vec::new();
    for registration in registrations {
        statuses.push(registration.await.unwrap().expect("answered, not dropped"));
    }
    let exit = tokio::time::timeout(PATIENCE, origin.wait())
        .await
        .expect("the origin exits once drained")
        .unwrap();
    let refused = client.get(format!("{url}/health")).send().await;

    assert_eq!(statuses, vec![StatusCode::CREATED; IN_FLIGHT]);
    assert!(exit.success(), "clean exit: {exit:?}");
    assert!(refused.is_err(), "nothing listens after the shutdown");
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let stored: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, IN_FLIGHT as i64);
    pool.close().await;
    sqlx::query(&format!("drop database {name}"))
        .execute(&admin)
        .await
        .unwrap();
}

/// `gatehouse-origin healthcheck` against `port`: whether it exited 0.
fn healthcheck(port: u16) -> bool {
    std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse-origin"))
        .arg("healthcheck")
        .env("LISTEN_ADDR", format!("0.0.0.0:{port}"))
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test]
async fn a_request_stalled_past_the_grace_does_not_hold_the_exit() {
    use tokio::io::AsyncWriteExt as _;
    let (admin, name, database_url) = fresh_database().await;
    let api_key = create_api_key(&database_url);
    let port = free_port();
    let grace = Duration::from_secs(1);
    let mut origin = tokio::process::Command::new(env!("CARGO_BIN_EXE_gatehouse-origin"))
        .arg("serve")
        .env("DATABASE_URL", &database_url)
        .env("GATEHOUSE_ENV", "development")
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("METRICS_LISTEN_ADDR", "off")
        .env("MAIL_ENABLED", "false")
        .env("SHUTDOWN_GRACE_SECS", grace.as_secs().to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !healthcheck(port) {
        assert!(Instant::now() < deadline, "the origin never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A client that sends its headers (a valid API key, so the request is let in) and a tenth of
    // the body it announced, then stalls. It asks for `100 Continue`, which the server sends once
    // the handler starts reading the body: only then is the request surely in flight, so SIGTERM
    // cannot arrive before the server has taken it.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head = format!(
        "POST /auth/register HTTP/1.1\r\nHost: x\r\nX-API-Key: {api_key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let mut buffer = [0u8; 256];
        while !String::from_utf8_lossy(&answer).contains("100 Continue") {
            use tokio::io::AsyncReadExt as _;
            let read = stalled.read(&mut buffer).await.unwrap();
            assert!(read > 0, "the origin closed the connection");
            answer.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .expect("the origin asks for the body");
    stalled.write_all(b"{\"email\":").await.unwrap();
    stalled.flush().await.unwrap();
    let terminated_at = Instant::now();
    let terminated = std::process::Command::new("kill")
        .args(["-TERM", &origin.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let exit = tokio::time::timeout(PATIENCE, origin.wait())
        .await
        .expect("the origin exits though the request never completes")
        .unwrap();

    assert!(exit.success(), "clean exit: {exit:?}");
    assert!(
        terminated_at.elapsed() >= grace,
        "the stalled request was given the grace first"
    );
    assert!(!healthcheck(port), "nothing answers once it has stopped");
    drop(stalled);
    sqlx::query(&format!("drop database {name} with (force)"))
        .execute(&admin)
        .await
        .unwrap();
}
