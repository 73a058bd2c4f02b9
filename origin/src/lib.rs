//! The Gatehouse origin: registers users and logs them in with bcrypt, issues Ed25519-signed
//! access tokens, keeps sessions in PostgreSQL and publishes its public keys.
//!
//! `main.rs` only reads configuration and starts things; everything else is here so tests link
//! it. [`app`] builds the router from an [`AppState`]; [`serve`] runs it until SIGTERM or Ctrl-C.

pub mod api_keys;
pub mod config;
pub mod credentials;
pub mod db;
pub mod error;
pub mod extract;
pub mod import;
pub mod janitor;
pub mod links;
pub mod mail;
pub mod memory;
pub mod metrics;
pub mod mfa;
pub mod openapi;
pub mod passkeys;
pub mod password;
pub mod password_policy;
pub mod routes;
pub mod server_secret;
pub mod sessions;
pub mod signing_keys;
pub mod telemetry;
pub mod throttle;
pub mod tokens;
pub mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::middleware;
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::token::Validation;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::config::{Config, SigningKeySource};
use crate::db::Database;
use crate::error::ApiError;
use crate::password::PasswordHasher;
use crate::tokens::Tokens;

pub use crate::db::MIGRATOR;

/// The source of "now". Production reads the system clock; tests substitute their own so that
/// expiry can be tested without sleeping.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> OffsetDateTime + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock(Arc::new(OffsetDateTime::now_utc))
    }

    /// A clock that asks `now` for the time.
    pub fn from_fn(now: impl Fn() -> OffsetDateTime + Send + Sync + 'static) -> Self {
        Clock(Arc::new(now))
    }

    /// The current time.
    pub fn now(&self) -> OffsetDateTime {
        (self.0)()
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The database pool and its health.
    pub db: Database,
    /// The bcrypt pool.
    pub hasher: PasswordHasher,
    /// Token issuing and checking.
    pub tokens: Arc<Tokens>,
    /// The time source.
    pub clock: Clock,
    /// `Cache-Control: max-age` of the JWKS document.
    pub jwks_max_age: Duration,
    /// Largest request body accepted.
    pub body_limit_bytes: usize,
    /// Session lifetimes and the refresh-token reuse window.
    pub sessions: sessions::SessionPolicy,
    /// Brute-force limits on password checks.
    pub login_limits: throttle::LoginLimits,
    /// Prometheus metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// The secret the edge adds to forwarded requests; see [`extract::ClientMeta`].
    pub edge_secret: Option<Arc<str>>,
    /// The keys derived from `SERVER_SECRET`.
    pub server_keys: server_secret::ServerKeys,
    /// The key that vouches for refresh tokens, derived from `server_keys`.
    pub refresh_key: gatehouse_shared::refresh::RefreshKey,
    /// The key that names brute-force counters, derived from `server_keys`.
    pub counter_names: throttle::CounterNames,
    /// Signing keys revoked in an emergency, as the JWKS route sees them.
    pub revoked_keys: signing_keys::RevokedKeys,
    /// Outgoing mail; `None` when `MAIL_ENABLED` is false, and the mail routes answer 404.
    pub mail: Option<mail::Mail>,
    /// Erasure of deactivated and never-verified accounts; whether sign-in needs a verified
    /// address.
    pub accounts: users::AccountPolicy,
    /// The zxcvbn score a new password must reach.
    pub password_min_score: u8,
    /// The service name in TOTP enrolment URIs (`TOTP_ISSUER`).
    pub totp_issuer: Arc<str>,
    /// The WebAuthn relying party; `None` when passkeys are off (their routes answer 404).
    pub webauthn: Option<Arc<webauthn_rs::Webauthn>>,
    /// API-key verdicts and live sessions remembered, kept true by PostgreSQL notifications.
    pub memory: Arc<memory::Memory>,
    /// Where those notifications are listened for (`LISTEN_DATABASE_URL`).
    pub listen_on: memory::ListenOn,
    /// The listening task, once [`AppState::follow_changes`] started it.
    pub follower: Option<Arc<memory::Follower>>,
}

impl AppState {
    /// The state described by `config`, on `db`. Takes the signing keys out of `config`; with
    /// `SIGNING_KEYS=database`, [`signing_keys::load_into`] must have read them.
    pub fn from_config(config: Config, db: Database) -> anyhow::Result<Self> {
        let (signer, others) = match config.signing_key {
            SigningKeySource::Configured(signer) => (signer, Vec::from_iter(config.previous_key)),
            SigningKeySource::Ephemeral(signer) => {
                tracing::warn!(
                    kid = signer.kid(),
                    "DEVELOPMENT MODE: JWT_SIGNING_KEY is not set, so an ephemeral signing key was \
                     generated. Tokens will not survive a restart. Never run production like this."
                );
                (signer, Vec::new())
            }
            SigningKeySource::Database { loaded, .. } => {
                let keys = loaded.context("SIGNING_KEYS=database: the keys were not read")?;
                (keys.signer, keys.others)
            }
        };
        let validation =
            Validation::new(config.issuer, config.audience).with_leeway(config.leeway_secs);
        let hasher = PasswordHasher::new(
            config.hash_workers,
            config.hash_queue_limit,
            config.password_hash_rounds,
        );
        Ok(AppState {
            db,
            metrics: Arc::new(metrics::Metrics::new(&hasher)),
            hasher,
            tokens: Arc::new(
                Tokens::new(signer, &others, validation, config.access_token_ttl)
                    .with_cache(config.token_cache_entries),
            ),
            clock: Clock::system(),
            jwks_max_age: config.jwks_max_age,
            body_limit_bytes: config.body_limit_bytes,
            sessions: config.sessions,
            login_limits: config.login_limits,
            edge_secret: config
                .edge_secret
                .map(|secret| Arc::from(secret.expose_secret())),
            refresh_key: config.server_keys.refresh_key(),
            counter_names: config.server_keys.counter_names(),
            revoked_keys: signing_keys::RevokedKeys::default(),
            server_keys: config.server_keys,
            mail: config.mail.map(mail::Mail::new),
            accounts: config.accounts,
            password_min_score: config.password_min_score,
            webauthn: config
                .webauthn
                .as_ref()
                .map(|rp| relying_party(rp, &config.totp_issuer))
                .transpose()?
                .map(Arc::new),
            totp_issuer: Arc::from(config.totp_issuer),
            memory: Arc::new(memory::Memory::new()),
            listen_on: config.listen_on,
            follower: None,
        })
    }

    /// Starts listening for change notifications, so that API-key verdicts and live sessions
    /// are remembered (see [`memory`]); until it has subscribed, and without it, every check reads
    /// the database. Listening stops when the last clone of this state is dropped.
    pub fn follow_changes(&mut self) {
        self.follower = memory::spawn(&self.memory, self.db.pool(), &self.listen_on).map(Arc::new);
    }
}

/// The WebAuthn relying party of `config`, named `name` to users.
fn relying_party(
    config: &config::WebauthnConfig,
    name: &str,
) -> anyhow::Result<webauthn_rs::Webauthn> {
    let (first, others) = config
        .origins
        .split_first()
        .context("WEBAUTHN_ORIGINS names no origin")?;
    let mut builder = webauthn_rs::WebauthnBuilder::new(&config.rp_id, first)
        .context("WEBAUTHN_RP_ID and WEBAUTHN_ORIGINS")?
        .rp_name(name);
    for origin in others {
        builder = builder.append_allowed_origin(origin);
    }
    builder
        .build()
        .context("WEBAUTHN_RP_ID and WEBAUTHN_ORIGINS")
}

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    let edge_secret = state.edge_secret.clone();
    // Token responses and profiles must not be stored by any cache (RFC 6749 section 5.1).
    let auth = routes::auth::router()
        .merge(routes::sessions::router())
        .merge(routes::account::router())
        .merge(routes::mfa::router())
        .merge(routes::passkeys::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            api_keys::require_api_key,
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    let (routes, api) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(auth)
        .merge(routes::edge::router())
        .merge(routes::jwks::router())
        .merge(routes::health::router())
        .split_for_parts();
    let router = routes
        .merge(openapi::router(api))
        .route_layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track_unmatched,
        ))
        .layer(DefaultBodyLimit::max(state.body_limit_bytes))
        .with_state(state);
    telemetry::layer(router, edge_secret)
}

/// Serves `app` on `listener` until SIGTERM or Ctrl-C, then lets requests in flight finish for
/// up to `grace` (`SHUTDOWN_GRACE_SECS`).
pub async fn serve(listener: TcpListener, app: Router, grace: Duration) -> std::io::Result<()> {
    let (signalled, signal) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = signalled.send(());
    })
    .into_future();
    // An orchestrator kills what is still running after its own grace period (Kubernetes: 30 s):
    // past `grace` the requests still in flight are dropped and the process exits cleanly, before
    // that kill, rather than be cut off in the middle of a log line.
    let deadline = async move {
        match signal.await {
            Ok(()) => tokio::time::sleep(grace).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        outcome = server => outcome,
        () = deadline => {
            tracing::warn!(grace_secs = grace.as_secs(), "requests still in flight after SHUTDOWN_GRACE_SECS: stopping");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
