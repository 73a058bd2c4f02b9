//! Liveness and readiness probes.

use axum::routing::get;
use axum::{Json, Router};
use gatehouse_shared::api::HealthResponse;

use crate::AppState;
use crate::error::{ApiError, Result};

/// `GET /health` and `GET /ready`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
}

/// The process is up and serving; touches nothing else.
async fn health() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
    })
}

/// The database answered the monitor's last check. A busy pool does not make the instance
/// unready: the monitor uses its own connection.
async fn ready(
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
