//! Several real `gatehouse-origin` processes on one test database, as behind a load balancer:
//! what "every instance shares the counts and the sessions" has to be shown on. Each process runs
//! the built binary (`cargo xtask test` builds it and names it in `GATEHOUSE_ORIGIN_BIN`) with the
//! test app's signing key, secrets and API key, so a token or refresh token from one is good at
//! the others, and the test app's pool sees what they write.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::edge::KillGroup;
use crate::{AUDIENCE, EDGE_SECRET, ISSUER, SERVER_SECRET, TestApp};

/// How long an origin process may take to answer `/health`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// One origin process.
pub struct OriginProcess {
    /// Base URL, without a trailing slash.
    pub url: String,
    _process: Child,
    _group: KillGroup,
}

/// Origin processes sharing the test app's database.
pub struct Cluster {
    /// The processes, in start order.
    pub origins: Vec<OriginProcess>,
}

impl Cluster {
    /// Starts `instances` origins on `app`'s database with its signing key and secrets, mail off,
    /// the test bcrypt cost, plus `env` (which wins).
    pub async fn start(app: &TestApp, instances: usize, env: &[(&str, &str)]) -> Cluster {
        let binary = origin_binary();
        let database_url = database_url(app).await;
        // With `SIGNING_KEYS=database` in `env` the instances share the keys in PostgreSQL
        // instead of the test app's.
        let stored_keys = env.contains(&("SIGNING_KEYS", "database"));
        let signing_key = app.signer.to_pkcs8_pem();
        let mut origins = Vec::with_capacity(instances);
        for _ in 0..instances {
            let mut command = Command::new(&binary);
            command.env_clear();
            if !stored_keys {
                command.env("JWT_SIGNING_KEY", signing_key.as_str());
            }
            // Port 0: the origin binds a free port itself and logs it, so no other test can take
            // the port between choosing it and binding it.
            let mut process = command
                .arg("serve")
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("GATEHOUSE_ENV", "development")
                .env("DATABASE_URL", &database_url)
                .env("LISTEN_ADDR", "127.0.0.1:0")
                .env("METRICS_LISTEN_ADDR", "off")
                .env("JWT_ISSUER", ISSUER)
                .env("JWT_AUDIENCE", AUDIENCE)
                .env("EDGE_SECRET", EDGE_SECRET)
                .env("SERVER_SECRET", SERVER_SECRET)
                .env("MAIL_ENABLED", "false")
                .env("PASSWORD_HASH_ROUNDS", crate::TEST_HASH_COST.to_string())
                .env("RUST_LOG", "warn,gatehouse_origin=info")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .expect("gatehouse-origin starts");
            let group = KillGroup(process.id().expect("the origin is running"));
            let stderr = process.stderr.take().expect("stderr is piped");
            let url = format!("http://{}", listening_on(stderr).await);
            wait_until_healthy(&mut process, &url).await;
            origins.push(OriginProcess {
                url,
                _process: process,
                _group: group,
            });
        }
        Cluster { origins }
    }
}

/// The built `gatehouse-origin` binary.
pub fn origin_binary() -> String {
    std::env::var("GATEHOUSE_ORIGIN_BIN")
        .expect("GATEHOUSE_ORIGIN_BIN names the built gatehouse-origin: run `cargo xtask test`")
}

/// The URL of `app`'s own database, on the server `DATABASE_URL` names.
pub async fn database_url(app: &TestApp) -> String {
    let name: String = sqlx::query_scalar("select current_database()")
        .fetch_one(&app.pool)
        .await
        .expect("the test database answers");
    let server = std::env::var("DATABASE_URL").expect("DATABASE_URL names the test server");
    let base = server.split('?').next().unwrap_or(&server);
    let (root, _) = base.rsplit_once('/').expect("a URL with a database path");
    format!("{root}/{name}")
}

/// The address in the origin's "listening" log line; the rest of its log is drained so the
/// pipe never fills.
async fn listening_on(stderr: tokio::process::ChildStderr) -> String {
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let found = tokio::time::timeout(STARTUP_TIMEOUT, async {
        while let Some(line) = lines
            .next_line()
            .await
            .expect("the origin's log is readable")
        {
            if line.contains("listening")
                && let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
            {
                return addr.to_owned();
            }
        }
        panic!("gatehouse-origin exited before it was listening");
    })
    .await
    .expect("gatehouse-origin logs where it listens");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found
}

async fn wait_until_healthy(process: &mut Child, url: &str) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(Some(status)) = process.try_wait() {
            panic!("gatehouse-origin exited before it was healthy: {status}");
        }
        let health = client.get(format!("{url}/health")).send().await;
        if health.is_ok_and(|response| response.status().is_success()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gatehouse-origin at {url} was not healthy within {STARTUP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl OriginProcess {
    /// A request to this origin with the test app's API key, as the edge forwards it for a client
    /// at `client_ip`.
    pub fn request(
        &self,
        app: &TestApp,
        method: reqwest::Method,
        path: &str,
        client_ip: &str,
    ) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .header("x-api-key", &app.api_key)
            .header(gatehouse_shared::api::EDGE_SECRET_HEADER, EDGE_SECRET)
            .header(gatehouse_shared::api::CLIENT_IP_HEADER, client_ip)
    }

    /// Polls `/ready` until its `notifications` is `state` (`subscribed`, `unsubscribed`); panics
    /// after ten seconds.
    pub async fn wait_for_notifications(&self, state: &str) {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ready: serde_json::Value = client
                .get(format!("{}/ready", self.url))
                .send()
                .await
                .expect("the origin answers")
                .json()
                .await
                .expect("/ready answers JSON");
            if ready["notifications"] == state {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "notifications never {state}: {ready}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /auth/verify` with `token`: its status.
    pub async fn verify(&self, app: &TestApp, token: &str) -> reqwest::StatusCode {
        self.request(app, reqwest::Method::GET, "/auth/verify", "192.0.2.1")
            .bearer_auth(token)
            .send()
            .await
            .expect("the origin answers")
            .status()
    }
}
