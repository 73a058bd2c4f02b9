//! The bench's HTTP client for one side of the stack (the origin or the edge): the requests
//! every scenario is made of, each answering whether it got the status it expected.

use std::time::{Duration, Instant};

use anyhow::bail;
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{
    CLIENT_IP_HEADER, EDGE_SECRET_HEADER, LoginRequest, RefreshRequest, RegisterRequest,
    TokenResponse,
};
use reqwest::{Client, RequestBuilder, StatusCode};

/// The password of every account the bench creates.
pub const PASSWORD: &str = "correct horse battery staple";

/// One side of the stack, as a client sees it.
#[derive(Clone)]
pub struct Bench {
    pub client: Client,
    pub url: String,
    pub api_key: String,
    /// The stack's edge secret, for requests sent as the edge forwards them (with a client IP).
    pub edge_secret: String,
}

/// One timed request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was sent, from the start of its phase.
    pub at: Duration,
    /// How long it took.
    pub latency: Duration,
    /// Whether it got the expected answer.
    pub ok: bool,
}

impl Sample {
    /// Times `request`, sent now, from `start`.
    pub async fn take(start: Instant, request: impl Future<Output = bool>) -> Sample {
        let sent = Instant::now();
        let ok = request.await;
        Sample {
            at: sent - start,
            latency: sent.elapsed(),
            ok,
        }
    }
}

impl Bench {
    pub fn post(&self, path: &str) -> RequestBuilder {
        self.client
            .post(format!("{}{path}", self.url))
            .header("x-api-key", &self.api_key)
    }

    fn get(&self, path: &str, token: &str) -> RequestBuilder {
        self.client
            .get(format!("{}{path}", self.url))
            .header("x-api-key", &self.api_key)
            .bearer_auth(token)
    }

    /// Registers `email` with [`PASSWORD`] and returns its first session.
    pub async fn register(&self, email: String) -> anyhow::Result<TokenResponse> {
        let response = self
            .post("/auth/register")
            .json(&RegisterRequest {
                email,
                password: PASSWORD.into(),
                first_name: Some("Bench".into()),
                last_name: None,
            })
            .send()
            .await?;
        expect(response.status(), StatusCode::CREATED, "register")?;
        Ok(response.json().await?)
    }

    /// A new account and its first session.
    pub async fn session(&self) -> anyhow::Result<TokenResponse> {
        self.register(unique_email("bench")).await
    }

    /// A new account's access token.
    pub async fn token(&self) -> anyhow::Result<String> {
        Ok(self
            .session()
            .await?
            .access_token
            .expose_secret()
            .to_owned())
    }

    /// `POST /auth/login` as `email` with [`PASSWORD`], whatever the answer.
    pub async fn login_response(&self, email: &str) -> anyhow::Result<reqwest::Response> {
        let response = self
            .post("/auth/login")
            .json(&LoginRequest {
                email: email.to_owned(),
                password: PASSWORD.into(),
                device_token: None,
            })
            .send()
            .await?;
        expect(response.status(), StatusCode::OK, "login")?;
        Ok(response)
    }

    /// Logs `email` in with [`PASSWORD`]; the whole answer read.
    pub async fn sign_in(&self, email: &str) -> anyhow::Result<()> {
        self.login_response(email).await?.bytes().await?;
        Ok(())
    }

    /// register → login → verify → profile for a new user.
    pub async fn flow(&self) -> anyhow::Result<()> {
        let email = unique_email("bench-flow");
        self.register(email.clone()).await?;
        let login = self
            .post("/auth/login")
            .json(&LoginRequest {
                email,
                password: PASSWORD.into(),
                device_token: None,
            })
            .send()
            .await?;
        expect(login.status(), StatusCode::OK, "login")?;
        let token = login.json::<TokenResponse>().await?.access_token;
        for path in ["/auth/verify", "/auth/profile"] {
            let response = self.get(path, token.expose_secret()).send().await?;
            expect(response.status(), StatusCode::OK, path)?;
        }
        Ok(())
    }

    /// One `GET /auth/verify` with `token`: whether it was answered 200 with its whole body.
    pub async fn verify(&self, token: &str) -> bool {
        match self.get("/auth/verify", token).send().await {
            Ok(response) => response.status() == StatusCode::OK && response.bytes().await.is_ok(),
            Err(_) => false,
        }
    }

    /// One rotation of `refresh_token`: its successor, or `None` when it was not answered 200.
    pub async fn refresh(&self, refresh_token: &RefreshRequest) -> Option<TokenResponse> {
        let response = self
            .post("/auth/refresh")
            .json(refresh_token)
            .send()
            .await
            .ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        response.json().await.ok()
    }

    /// One login: whether it was answered `expected`. With `client_ip`, the request carries the
    /// local edge secret and that address, as the edge would forward it.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        expected: StatusCode,
        client_ip: Option<&str>,
    ) -> bool {
        let mut request = self.post("/auth/login").json(&LoginRequest {
            email: email.into(),
            password: password.into(),
            device_token: None,
        });
        if let Some(ip) = client_ip {
            request = request
                .header(EDGE_SECRET_HEADER, &self.edge_secret)
                .header(CLIENT_IP_HEADER, ip);
        }
        match request.send().await {
            Ok(response) => response.status() == expected && response.bytes().await.is_ok(),
            Err(_) => false,
        }
    }
}

impl Bench {
    /// `POST /auth/password/forgot` for `email` from the client at `client_ip` (as the edge
    /// forwards it): whether it was answered 202.
    pub async fn forgot(&self, email: &str, client_ip: &str) -> bool {
        let request = self
            .post("/auth/password/forgot")
            .json(&serde_json::json!({ "email": email }))
            .header(EDGE_SECRET_HEADER, &self.edge_secret)
            .header(CLIENT_IP_HEADER, client_ip);
        match request.send().await {
            Ok(response) => response.status() == StatusCode::ACCEPTED,
            Err(_) => false,
        }
    }
}

/// An address no earlier run has registered.
pub fn unique_email(prefix: &str) -> String {
    format!("{prefix}-{}@example.com", uuid::Uuid::new_v4())
}

fn expect(actual: StatusCode, expected: StatusCode, step: &str) -> anyhow::Result<()> {
    if actual != expected {
        bail!("{step}: expected {expected}, got {actual}");
    }
    Ok(())
}
