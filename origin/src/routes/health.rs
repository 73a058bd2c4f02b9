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

/// The database answers right now.
async fn ready(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Json<HealthResponse>> {
    if state.db.check().await {
        Ok(Json(HealthResponse {
            status: "ok".into(),
        }))
    } else {
        Err(ApiError::DatabaseUnavailable(None))
    }
}
