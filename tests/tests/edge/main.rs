//! The edge worker in workerd, in front of the real origin on a real PostgreSQL, driven over
//! HTTP. A counting relay between the edge and the origin proves which requests the edge
//! answered itself. Needs `DATABASE_URL`, Node and the built worker; `cargo xtask test` provides
//! all three, and without them every test fails.

mod cors;
mod flow;
mod keys;
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
        let response = self
            .request(Method::POST, "/auth/register")
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    /// `GET /auth/verify` through the edge with `token`.
    pub async fn verify(&self, token: &str) -> reqwest::Response {
        self.request(Method::GET, "/auth/verify")
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }
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
