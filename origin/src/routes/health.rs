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
    })
}

/// The database answered the monitor's last check. A busy pool does not make the instance
/// unready: the monitor uses its own connection.
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
        Ok(Json(HealthResponse {
            status: "ok".into(),
        }))
    } else {
        Err(ApiError::DatabaseUnavailable(None))
    }
}
