//! Liveness and readiness probes.

use axum::Json;
use gatehouse_shared::api::{HealthResponse, Problem};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::{ApiError, Result};

/// `GET /health` and `GET /ready`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
}

/// The process is up and serving; touches nothing else.
#[utoipa::path(
    get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process is serving", body = HealthResponse))
)]
pub(crate) async fn health() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
        notifications: None,
    })
}

/// The database answered the monitor's last check. A busy pool does not make the instance
/// unready: the monitor uses its own connection. Not hearing change notifications does not make
/// it unready either (checks read the database meanwhile); the body says so.
#[utoipa::path(
    get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "PostgreSQL answers", body = HealthResponse),
        (status = 503, description = "PostgreSQL is unreachable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn ready(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Json<HealthResponse>> {
    if state.db.is_up() {
        let notifications = match (&state.listen_on, state.memory.is_subscribed()) {
            (crate::memory::ListenOn::Off, _) => "off",
            (_, true) => "subscribed",
            (_, false) => "unsubscribed",
        };
        Ok(Json(HealthResponse {
            status: "ok".into(),
            notifications: Some(notifications.into()),
        }))
    } else {
        Err(ApiError::DatabaseUnavailable(None))
    }
}
