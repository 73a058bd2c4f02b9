//! The edge worker in workerd, in front of the real origin on a real PostgreSQL, driven over
//! HTTP. A counting relay between the edge and the origin proves which requests the edge
//! answered itself. Needs `DATABASE_URL`, Node and the built worker; `cargo xtask test` provides
//! all three, and without them every test fails.

mod cluster;
mod cors;
mod flow;
mod hardening;
mod keys;
mod mail;
mod mfa;
mod passkeys;
mod sessions;
mod tokens;
mod wrangler;

use gatehouse_shared::api::TokenResponse;
use gatehouse_tests::edge::{CountingRelay, Edge, bindings};
use gatehouse_tests::{Options, PASSWORD, TestApp, spawn_server};
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

/// The origin on a test database, a counting relay in front of it, and the edge in front of
/// that.
pub struct Stack {
    pub app: TestApp,
    pub relay: CountingRelay,
    pub edge: Edge,
    pub client: Client,
    _server: tokio::task::JoinHandle<()>,
}

impl Stack {
    pub async fn start(pool: PgPool) -> Stack {
        Stack::with(pool, Options::default(), |_| {}).await
    }

    pub async fn with(
        pool: PgPool,
        options: Options,
        edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> Stack {
        let app = TestApp::with(pool, options).await;
        let (addr, server) = spawn_server(app.state.clone()).await;
        let relay = CountingRelay::start(&format!("http://{addr}")).await;
        let mut bindings = bindings(&relay.url);
        edit(&mut bindings);
        let edge = Edge::start(bindings).await;
        Stack {
            app,
            relay,
            edge,
            client: gatehouse_tests::edge::client(),
            _server: server,
        }
    }

    /// A request to the edge carrying the app's API key.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.edge.url))
            .header("x-api-key", &self.app.api_key)
    }

    /// Registers through the edge.
    pub async fn register(&self, email: &str) -> TokenResponse {
        self.credentials("/auth/register", email, StatusCode::CREATED)
            .await
    }

    /// Logs in through the edge with [`PASSWORD`].
    pub async fn login(&self, email: &str) -> TokenResponse {
        self.credentials("/auth/login", email, StatusCode::OK).await
    }

    async fn credentials(&self, path: &str, email: &str, expected: StatusCode) -> TokenResponse {
        let response = self
            .request(Method::POST, path)
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{path}");
        response.json().await.unwrap()
    }

    /// A request with no body and no token through the edge.
    pub async fn send(&self, method: Method, path: &str) -> reqwest::Response {
        self.request(method, path).send().await.unwrap()
    }

    /// A request to the edge carrying the app's API key and `access_token`.
    pub fn authorized(&self, method: Method, path: &str, access_token: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(access_token)
    }

    /// Asserts that the edge accepts `token`.
    pub async fn assert_verifies(&self, token: &str) {
        let response = self.verify(token).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the edge accepts the token"
        );
    }

    /// `POST path` through the edge with a JSON body and, when given, a bearer token.
    pub async fn post_json(
        &self,
        path: &str,
        access_token: Option<&str>,
        body: Value,
    ) -> reqwest::Response {
        let request = match access_token {
            Some(token) => self.authorized(Method::POST, path, token),
            None => self.request(Method::POST, path),
        };
        request.json(&body).send().await.unwrap()
    }

    /// `GET /auth/verify` through the edge with `token`.
    pub async fn verify(&self, token: &str) -> reqwest::Response {
        self.authorized(Method::GET, "/auth/verify", token)
            .send()
            .await
            .unwrap()
    }
}

/// The body of `response` as `T`, after checking that its status is `status`.
pub async fn json_of<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    status: StatusCode,
) -> T {
    assert_eq!(response.status(), status, "{}", response.url());
    response.json().await.unwrap()
}

/// Asserts that `response` is a problem with `status` and `code`.
pub async fn assert_problem(response: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(problem(response).await.0, code);
}

/// The `code` and `detail` of a problem response, after checking its media type.
pub async fn problem(response: reqwest::Response) -> (String, String) {
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    (
        body["code"].as_str().unwrap().to_owned(),
        body["detail"].as_str().unwrap().to_owned(),
    )
}
