//! Test support for Gatehouse's end-to-end tests: the real origin on a real PostgreSQL database
//! (one fresh database per test, from `#[sqlx::test]`), called in process through the router or
//! over a real socket, plus a TCP relay that can cut the database off and bring it back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use gatehouse_origin::config::{Config, SigningKeySource};
use gatehouse_origin::db::Database;
use gatehouse_origin::mail::courier::{self, CourierHandle};
use gatehouse_origin::sessions::SessionPolicy;
use gatehouse_origin::throttle::LoginLimits;
use gatehouse_origin::users::AccountPolicy;
use gatehouse_origin::{AppState, Clock, api_keys, app};
use gatehouse_shared::api::{API_KEY_HEADER, Problem, RegisterRequest, TokenResponse};
use gatehouse_shared::signing::TokenSigner;
use gatehouse_shared::token::AccessClaims;
use gatehouse_shared::{ExposeSecret, SecretString};
use serde_json::Value;
use sqlx::PgPool;
use time::OffsetDateTime;
use tower::ServiceExt as _;

/// The cheapest bcrypt cost, so that tests spend their time on behaviour, not on hashing.
pub const TEST_HASH_COST: u32 = 4;
/// The issuer tokens carry in tests.
pub const ISSUER: &str = "https://gatehouse.test";
/// The audience tokens carry in tests.
pub const AUDIENCE: &str = "gatehouse-tests";
/// The secret the test edge and the test origin share.
pub const EDGE_SECRET: &str = "test-edge-secret-0123456789abcdef0123456789";
/// The root server secret of every test origin: instances on one database share it, as in
/// production (refresh tokens and counter names derive from it).
pub const SERVER_SECRET: &str = "test-server-secret-0123456789abcdef0123456789";
/// A password that passes every rule.
pub const PASSWORD: &str = "correct horse battery staple";
/// The client application whose pages mailed links open.
pub const MAIL_LINK_BASE_URL: &str = "https://app.example.test";

/// A clock the test moves by hand.
#[derive(Clone)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    /// Starts at the real current time.
    pub fn new() -> Self {
        ManualClock(Arc::new(Mutex::new(OffsetDateTime::now_utc())))
    }

    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }

    /// As the origin's clock type.
    pub fn clock(&self) -> Clock {
        let now = Arc::clone(&self.0);
        Clock::from_fn(move || *now.lock().unwrap())
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

/// How to build a test app; `Default` is what most tests want.
pub struct Options {
    /// bcrypt cost.
    pub hash_cost: u32,
    /// Hashing threads.
    pub hash_workers: usize,
    /// Hashes allowed to wait for a thread before requests are shed.
    pub hash_queue_limit: usize,
    /// The signing key.
    pub signer: TokenSigner,
    /// A previous key still accepted.
    pub previous: Option<ed25519_dalek::VerifyingKey>,
    /// The clock.
    pub clock: ManualClock,
    /// Session lifetimes and the refresh reuse window.
    pub sessions: SessionPolicy,
    /// Brute-force limits.
    pub login_limits: LoginLimits,
    /// What becomes of mail.
    pub mail: MailSetting,
    /// Account erasure and whether sign-in needs a verified address.
    pub accounts: AccountPolicy,
}

/// What becomes of the mail a test app queues.
#[derive(Debug, Clone, Default)]
pub enum MailSetting {
    /// Mail is on and queued in the outbox, but no courier sends it.
    #[default]
    Queued,
    /// A courier delivers it to the SMTP server at this URL (a [`mail::MailServer`]).
    SentTo(String),
    /// `MAIL_ENABLED=false`.
    Disabled,
}

/// What `Config::from_lookup` reads in tests: nothing beyond the test issuer, audience and edge
/// secret, so every other value is the production default. Tests hand the app its pool, so the
/// database URL is a placeholder; development mode lets the signing key come from [`Options`].
fn test_variable(name: &str) -> Option<String> {
    let value = match name {
        "DATABASE_URL" => "postgres://the-test-passes-its-own-pool",
        "GATEHOUSE_ENV" => "development",
        "JWT_ISSUER" => ISSUER,
        "JWT_AUDIENCE" => AUDIENCE,
        "EDGE_SECRET" => EDGE_SECRET,
        "SERVER_SECRET" => SERVER_SECRET,
        _ => return None,
    };
    Some(value.to_owned())
}

/// The configuration test apps start from: the origin's own defaults, read by
/// `Config::from_lookup`, so tests cannot drift from what production runs with.
pub fn test_config() -> Config {
    Config::from_lookup(test_variable).expect("the test configuration is valid")
}

impl Default for Options {
    fn default() -> Self {
        let defaults = test_config();
        Options {
            hash_cost: TEST_HASH_COST,
            hash_workers: 2,
            hash_queue_limit: 64,
            signer: TokenSigner::generate(&mut rand_core::OsRng),
            previous: None,
            clock: ManualClock::new(),
            sessions: defaults.sessions,
            login_limits: defaults.login_limits,
            mail: MailSetting::default(),
            accounts: defaults.accounts,
        }
    }
}

impl Options {
    /// The defaults with `REFRESH_LIMIT_PER_SESSION` out of the way, for tests that refresh in a
    /// loop.
    pub fn lifted_refresh_limit() -> Self {
        let defaults = Options::default();
        Options {
            sessions: SessionPolicy {
                refresh_limit: u32::MAX,
                ..defaults.sessions
            },
            ..defaults
        }
    }
}

/// The origin on a test database, with an API key to call it.
pub struct TestApp {
    /// The state the router runs on.
    pub state: AppState,
    /// The router.
    pub router: Router,
    /// A valid API key.
    pub api_key: String,
    /// The pool of the test database, for assertions on rows.
    pub pool: PgPool,
    /// The clock the app reads.
    pub clock: ManualClock,
    /// A copy of the app's signing key, for crafting tokens with chosen claims.
    pub signer: TokenSigner,
    /// The courier, when mail is sent.
    pub courier: Option<CourierHandle>,
}

/// A response, with its body parsed as JSON when there is one.
#[derive(Debug)]
pub struct TestResponse {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The body as JSON (`Value::Null` when empty).
    pub body: Value,
}

impl TestResponse {
    /// The body as an RFC 9457 problem; panics with the body if it is not one.
    pub fn problem(&self) -> Problem {
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "error responses are problem+json: {:?}",
            self.body
        );
        serde_json::from_value(self.body.clone())
            .unwrap_or_else(|e| panic!("not a problem ({e}): {}", self.body))
    }

    /// The body as `T`; panics with the body if it does not parse.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.body.clone())
            .unwrap_or_else(|e| panic!("unexpected body ({e}): {}", self.body))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The state a test app runs on: built by `AppState::from_config` as in production, from
/// [`test_config`] with `options` applied, on the test's clock.
pub fn test_state(db: Database, options: Options) -> AppState {
    let mut config = test_config();
    config.signing_key = SigningKeySource::Configured(options.signer);
    config.previous_key = options.previous;
    config.password_hash_rounds = options.hash_cost;
    config.hash_workers = options.hash_workers;
    config.hash_queue_limit = options.hash_queue_limit;
    config.sessions = options.sessions;
    config.login_limits = options.login_limits;
    config.accounts = options.accounts;
    match options.mail {
        MailSetting::Queued => {}
        MailSetting::SentTo(smtp_url) => {
            let mail = config.mail.as_mut().expect("mail is on by default");
            mail.smtp_url = smtp_url.into();
            mail.from = "Gatehouse <gatehouse@example.test>".parse().unwrap();
            mail.link_base_url = MAIL_LINK_BASE_URL.into();
            // Retries within a second, so an outage test waits for the server, not the back-off.
            mail.retry_max = Duration::from_secs(1);
        }
        MailSetting::Disabled => config.mail = None,
    }
    let mut state = AppState::from_config(config, db).expect("a configured signing key");
    state.clock = options.clock.clock();
    state.follow_changes();
    state
}

impl TestApp {
    /// The origin with default options on `pool`.
    pub async fn new(pool: PgPool) -> Self {
        TestApp::with(pool, Options::default()).await
    }

    /// The origin with `MAIL_ENABLED=false` on `pool`.
    pub async fn without_mail(pool: PgPool) -> Self {
        let options = Options {
            mail: MailSetting::Disabled,
            ..Options::default()
        };
        TestApp::with(pool, options).await
    }

    /// The origin with default options on `pool`, its courier delivering to `server`.
    pub async fn sending_mail_to(pool: PgPool, server: &mail::MailServer) -> Self {
        let options = Options {
            mail: MailSetting::SentTo(server.smtp_url()),
            ..Options::default()
        };
        TestApp::with(pool, options).await
    }

    /// The origin with `options` on `pool`.
    pub async fn with(pool: PgPool, options: Options) -> Self {
        TestApp::on(Database::from_pool(pool.clone()), pool, options).await
    }

    /// The origin reaching its database through `db`, with `pool` a direct line to the same
    /// database for setup and assertions.
    pub async fn on(db: Database, pool: PgPool, options: Options) -> Self {
        let clock = options.clock.clone();
        let signer =
            TokenSigner::from_pkcs8_pem(&options.signer.to_pkcs8_pem()).expect("a key round-trips");
        let sends_mail = matches!(options.mail, MailSetting::SentTo(_));
        let state = test_state(db, options);
        let courier = sends_mail.then(|| {
            courier::spawn(&state)
                .expect("the test SMTP URL is valid")
                .expect("mail is enabled")
        });
        let api_key = api_keys::create(&pool, "tests")
            .await
            .expect("the test database accepts an API key")
            .expose()
            .to_owned();
        TestApp {
            router: app(state.clone()),
            state,
            api_key,
            pool,
            clock,
            signer,
            courier,
        }
    }

    /// Sends a request through the router with the app's API key.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> TestResponse {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(API_KEY_HEADER, &self.api_key);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        self.send(request.unwrap()).await
    }

    /// `POST path` with a JSON body and no token.
    pub async fn post(&self, path: &str, body: Value) -> TestResponse {
        self.call(Method::POST, path, None, Some(body)).await
    }

    /// `GET path` with a bearer token.
    pub async fn get(&self, path: &str, token: &str) -> TestResponse {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// `DELETE path` with a bearer token.
    pub async fn delete(&self, path: &str, token: &str) -> TestResponse {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// `DELETE /auth/profile` with the account's password ([`PASSWORD`]), as re-authentication
    /// requires.
    pub async fn deactivate(&self, access_token: &str) -> TestResponse {
        let body = serde_json::json!({ "current_password": PASSWORD });
        self.call(
            Method::DELETE,
            "/auth/profile",
            Some(access_token),
            Some(body),
        )
        .await
    }

    /// `PATCH path` with a bearer token and a JSON body.
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> TestResponse {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    /// `PUT path` with a bearer token and a JSON body.
    pub async fn put(&self, path: &str, token: &str, body: Value) -> TestResponse {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    /// `POST /auth/refresh` with `refresh_token`.
    pub async fn refresh(&self, refresh_token: &str) -> TestResponse {
        self.post(
            "/auth/refresh",
            serde_json::json!({ "refresh_token": refresh_token }),
        )
        .await
    }

    /// `POST path` with a bearer token and no body.
    pub async fn post_empty(&self, path: &str, token: &str) -> TestResponse {
        self.call(Method::POST, path, Some(token), None).await
    }

    /// Sends a request exactly as built.
    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("body is not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        TestResponse {
            status,
            headers,
            body,
        }
    }

    /// Registers `email` with [`PASSWORD`] and returns the token response.
    pub async fn register(&self, email: &str) -> TokenResponse {
        let response = self
            .call(
                Method::POST,
                "/auth/register",
                None,
                Some(register_body(email)),
            )
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{:?}", response.body);
        response.json()
    }

    /// Asserts that logging in as `email` with `password` is answered `status`.
    pub async fn assert_login(&self, email: &str, password: &str, status: StatusCode) {
        let response = self.login(email, password).await;
        assert_eq!(
            response.status, status,
            "login {email}: {:?}",
            response.body
        );
    }

    /// Logs in and returns the raw response.
    pub async fn login(&self, email: &str, password: &str) -> TestResponse {
        self.call(
            Method::POST,
            "/auth/login",
            None,
            Some(serde_json::json!({ "email": email, "password": password })),
        )
        .await
    }

    /// Logs `email` in with [`PASSWORD`]; panics unless it succeeds.
    pub async fn sign_in(&self, email: &str) -> TokenResponse {
        let response = self.login(email, PASSWORD).await;
        assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
        response.json()
    }

    /// Refreshes with `refresh_token`; panics unless it succeeds.
    pub async fn refreshed(&self, refresh_token: &str) -> TokenResponse {
        let response = self.refresh(refresh_token).await;
        assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
        response.json()
    }

    /// The claims of `access_token`, which must be valid now.
    pub fn claims(&self, access_token: &SecretString) -> AccessClaims {
        self.state
            .tokens
            .verify(access_token.expose_secret(), self.state.clock.now())
            .expect("a valid access token")
    }

    /// `access_token` still verifies at the origin.
    pub async fn assert_verifies(&self, access_token: &str) {
        let response = self.get("/auth/verify", access_token).await;
        assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    }

    /// The session of `pair` has ended: its access token and its refresh token are both refused.
    pub async fn assert_ended(&self, pair: &TokenResponse) {
        assert_refused(
            &self
                .get("/auth/verify", pair.access_token.expose_secret())
                .await,
            "invalid_token",
        );
        assert_refused(
            &self.refresh(pair.refresh_token.expose_secret()).await,
            "invalid_refresh_token",
        );
    }

    /// Whether the row of session `session_id` says it has not been ended.
    pub async fn session_live(&self, session_id: uuid::Uuid) -> bool {
        sqlx::query_scalar("select revoked_at is null from sessions where id = $1")
            .bind(session_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// What the database holds for a session's refresh tokens: its live generation, and the rows
    /// in `refresh_tokens` (only sessions begun before generations have any).
    pub async fn refresh_state(&self, session_id: uuid::Uuid) -> (i64, i64) {
        sqlx::query_as(
            "select refresh_generation,
                    (select count(*) from refresh_tokens t where t.session_id = s.id)
             from sessions s where id = $1",
        )
        .bind(session_id)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// Moves the clock past the refresh-token reuse window, so that a spent token presented again
    /// counts as reuse rather than a racing tab.
    pub fn pass_reuse_window(&self) {
        self.clock
            .advance(self.state.sessions.reuse_window + Duration::from_secs(1));
    }

    /// Polls `/ready` until it answers `status`, and returns that answer. The database monitor
    /// checks once a second and needs two failures to report an outage; panics after ten
    /// seconds, so a readiness that never changes fails the test instead of hanging it.
    pub async fn wait_until_ready_is(&self, status: StatusCode) -> TestResponse {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let response = self.call(Method::GET, "/ready", None, None).await;
            if response.status == status {
                return response;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/ready never answered {status}: {:?}",
                response.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `/ready` until it says the app hears change notifications (see
    /// `gatehouse_origin::memory`), so that what it reads from then on is remembered; panics after
    /// ten seconds.
    pub async fn wait_until_subscribed(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let response = self.call(Method::GET, "/ready", None, None).await;
            if response.body["notifications"] == "subscribed" {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never subscribed: {:?}",
                response.body
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The number a `select count(*) ...` query answers on the test database.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("the test database answers")
    }

    /// The number of rows in every table of the database, by table name.
    pub async fn table_rows(&self) -> Vec<(String, i64)> {
        sqlx::query_as(
            "select table_name::text, (xpath('/row/n/text()', query_to_xml(
                      format('select count(*) as n from %I', table_name), false, true, '')))[1]
                      ::text::bigint
             from information_schema.tables
             where table_schema = 'public' and table_type = 'BASE TABLE' order by table_name",
        )
        .fetch_all(&self.pool)
        .await
        .expect("the test database answers")
    }

    /// `PUT /auth/password` from `current` to `new`.
    pub async fn change_password(
        &self,
        access_token: &str,
        current: &str,
        new: &str,
    ) -> TestResponse {
        let body = serde_json::json!({ "current_password": current, "new_password": new });
        self.put("/auth/password", access_token, body).await
    }

    /// The addresses of every account, sorted.
    pub async fn emails(&self) -> Vec<String> {
        sqlx::query_scalar("select email from users order by email")
            .fetch_all(&self.pool)
            .await
            .expect("the test database answers")
    }

    /// Number of accounts in the database.
    pub async fn user_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from users")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// `response` is a 401 with problem code `code`.
pub fn assert_refused(response: &TestResponse, code: &str) {
    assert_eq!(
        response.status,
        StatusCode::UNAUTHORIZED,
        "{:?}",
        response.body
    );
    assert_eq!(response.problem().code, code);
}

/// Asserts that `response` is a 422 whose first refused field is `field`.
pub fn assert_invalid_field(response: &TestResponse, field: &str) {
    assert_eq!(
        response.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        response.body
    );
    assert_eq!(response.problem().errors[0].field, field);
}

/// How many of `responses` have `status`.
pub fn count_status(responses: &[TestResponse], status: StatusCode) -> usize {
    responses.iter().filter(|r| r.status == status).count()
}

/// A registration body for `email` with [`PASSWORD`].
pub fn register_body(email: &str) -> Value {
    serde_json::to_value(RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
    })
    .unwrap()
}

/// Serves `state` on a real socket at 127.0.0.1 on a free port until the returned handle drops.
pub async fn spawn_server(state: AppState) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        gatehouse_origin::serve(listener, app(state), Duration::from_secs(25))
            .await
            .unwrap();
    });
    (addr, server)
}

pub mod cluster;
pub mod edge;
pub mod mail;
pub mod passkey;
pub mod pg;
pub mod relay;

/// A row of the test database locked by the test (`select ... for update` in a transaction it
/// holds), so that concurrent requests can be made to queue on it and then let go together: how a
/// race test knows its requests truly overlap, with no guess at timing.
pub struct RowLock {
    /// A connection taken before the requests start, so watching never waits for the pool they
    /// are using up.
    watcher: sqlx::pool::PoolConnection<sqlx::Postgres>,
    /// The transaction holding the lock; statements run in it take effect on release.
    pub tx: sqlx::Transaction<'static, sqlx::Postgres>,
}

impl RowLock {
    /// Locks the row of `table` whose `id` is `id`.
    pub async fn take(pool: &PgPool, table: &str, id: uuid::Uuid) -> Self {
        let watcher = pool.acquire().await.expect("a connection to watch with");
        let mut tx = pool.begin().await.expect("a transaction to lock in");
        sqlx::query(&format!("select 1 from {table} where id = $1 for update"))
            .bind(id)
            .execute(&mut *tx)
            .await
            .expect("the row locks");
        RowLock { watcher, tx }
    }

    /// Waits until `n` sessions of the database are blocked on a lock. Panics after a generous
    /// deadline, so a request that never blocks fails the test instead of hanging it.
    pub async fn wait_for_waiters(&mut self, n: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and wait_event_type = 'Lock'",
            )
            .fetch_one(&mut *self.watcher)
            .await
            .expect("pg_stat_activity is readable");
            if waiting >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {waiting} of {n} requests blocked on the held lock"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Commits the holding transaction: the lock is released and its statements take effect.
    pub async fn release(self) {
        self.tx
            .commit()
            .await
            .expect("the holding transaction commits");
    }
}
