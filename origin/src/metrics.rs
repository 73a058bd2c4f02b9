//! Prometheus metrics, served at `/metrics` on their own listener (`METRICS_LISTEN_ADDR`), so the
//! edge, which forwards the public API, can never expose them.
//!
//! Requests are labelled by route template (`/auth/sessions/{id}`), never by raw path, so a
//! scanner cannot grow the label set; nothing user-controlled becomes a label.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::error::ApiError;

/// Labels of the request metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// One label, named by the metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// Every metric the origin keeps.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
    logins: Family<OutcomeLabels, Counter>,
    verifications: Family<OutcomeLabels, Counter>,
    hash_queue_depth: Gauge,
    db_connections: Family<StateLabels, Gauge>,
    db_connections_max: Gauge,
    db_up: Gauge,
    peak_memory: Gauge,
    mail: Family<OutcomeLabels, Counter>,
    mail_waiting: Gauge,
    mail_oldest_age: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 16 s: a token check to a login queued behind a storm.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

impl Metrics {
    /// A registry holding every metric; the hashing pool's own metrics are registered too.
    pub fn new(hasher: &crate::password::PasswordHasher) -> Self {
        let mut registry = Registry::with_prefix("gatehouse");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> _,
        );
        let logins = Family::<OutcomeLabels, Counter>::default();
        let verifications = Family::<OutcomeLabels, Counter>::default();
        let hash_queue_depth = Gauge::default();
        let db_connections = Family::<StateLabels, Gauge>::default();
        let db_up = Gauge::default();
        let db_connections_max = Gauge::default();
        let peak_memory = Gauge::default();
        let mail = Family::<OutcomeLabels, Counter>::default();
        let mail_waiting = Gauge::default();
        let mail_oldest_age = Gauge::default();
        let bcrypt_cost: Gauge = Gauge::default();
        bcrypt_cost.set(i64::from(hasher.cost()));
        registry.register(
            "bcrypt_cost",
            "The bcrypt cost new hashes are made at",
            bcrypt_cost.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method, route template and status",
            latency.clone(),
        );
        registry.register("logins", "Login attempts by outcome", logins.clone());
        registry.register(
            "token_verifications",
            "Access-token checks by outcome (valid, a token error code, or session_ended)",
            verifications.clone(),
        );
        registry.register(
            "hash_queue_depth",
            "Password hashes waiting for a worker",
            hash_queue_depth.clone(),
        );
        registry.register(
            "hash_queue_wait_seconds",
            "How long password hashes waited for a worker",
            hasher.wait_histogram(),
        );
        registry.register(
            "hash_shed",
            "Requests refused with 503 because the hashing queue was full",
            hasher.shed_counter(),
        );
        registry.register(
            "db_connections",
            "Pooled database connections by state (in_use, idle)",
            db_connections.clone(),
        );
        registry.register(
            "db_connections_max",
            "The pool's size limit (DATABASE_MAX_CONNECTIONS), against which db_connections is judged",
            db_connections_max.clone(),
        );
        registry.register(
            "db_up",
            "1 while the database monitor reaches PostgreSQL",
            db_up.clone(),
        );
        registry.register(
            "process_peak_resident_memory_bytes",
            "Peak resident set size of the process (VmHWM)",
            peak_memory.clone(),
        );
        registry.register(
            "mail",
            "Mails by outcome: queued, sent, failed (an attempt, retried later), discarded",
            mail.clone(),
        );
        registry.register(
            "mail_waiting",
            "Mails in the outbox not yet sent, as the courier last saw it",
            mail_waiting.clone(),
        );
        registry.register(
            "mail_oldest_unsent_age_seconds",
            "Age of the oldest mail not yet sent, as the courier last saw it (0: none)",
            mail_oldest_age.clone(),
        );
        Metrics {
            registry,
            mail,
            mail_waiting,
            mail_oldest_age,
            requests,
            latency,
            logins,
            verifications,
            hash_queue_depth,
            db_connections,
            db_connections_max,
            db_up,
            peak_memory,
        }
    }

    /// Counts a login by its outcome.
    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a token check by its outcome.
    pub fn verification(&self, outcome: &'static str) {
        self.verifications
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a mail by its outcome.
    pub fn mail(&self, outcome: &'static str) {
        self.mail.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// The outbox's backlog: mails waiting, and the oldest one's age in seconds.
    pub fn mail_backlog(&self, waiting: i64, oldest_age_secs: i64) {
        self.mail_waiting.set(waiting);
        self.mail_oldest_age.set(oldest_age_secs);
    }

    fn render(&self, state: &AppState) -> Result<String, std::fmt::Error> {
        self.hash_queue_depth.set(state.hasher.queue_depth() as i64);
        let pool = state.db.pool();
        let idle = pool.num_idle() as i64;
        self.db_connections
            .get_or_create(&StateLabels { state: "idle" })
            .set(idle);
        self.db_connections
            .get_or_create(&StateLabels { state: "in_use" })
            .set(i64::from(pool.size()) - idle);
        self.db_connections_max
            .set(i64::from(pool.options().get_max_connections()));
        self.db_up.set(i64::from(state.db.is_up()));
        if let Some(peak) = peak_resident_bytes() {
            self.peak_memory.set(peak);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// `VmHWM` from `/proc/self/status`, in bytes; `None` where there is no procfs.
fn peak_resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Marks a response already counted by [`track`], so [`track_unmatched`] skips it.
#[derive(Clone, Copy)]
struct Counted;

/// Route-layer middleware recording each routed request's count and latency under its route
/// template.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(Counted);
    metrics.observe(method, route, &response, started);
    response
}

/// Outer middleware counting what no route matched (404s, 405s) as route `unmatched`; the
/// method label is kept only for methods the API uses, so it stays bounded too.
pub async fn track_unmatched(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = match request.method().as_str() {
        known @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => known,
        _ => "other",
    }
    .to_owned();
    let response = next.run(request).await;
    if response.extensions().get::<Counted>().is_none() {
        metrics.observe(method, "unmatched".to_owned(), &response, started);
    }
    response
}

impl Metrics {
    fn observe(&self, method: String, route: String, response: &Response, started: Instant) {
        let labels = RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The `/metrics` router, for the metrics listener.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

/// `GET /metrics`: the Prometheus text format (OpenMetrics 1.0 text).
async fn render_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state
        .metrics
        .render(&state)
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}
