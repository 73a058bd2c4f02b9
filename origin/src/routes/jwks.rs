//! The public signing keys (RFC 7517), for the edge and for anyone verifying tokens.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
#[allow(unused_imports)] // named by the OpenAPI annotation
use gatehouse_shared::jwk::JwkSet;

use crate::AppState;

/// `GET /.well-known/jwks.json`.
pub fn router() -> Router<AppState> {
    Router::new().route("/.well-known/jwks.json", get(get_jwks))
}

#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "keys",
    responses((status = 200, description = "The public signing keys (RFC 7517)", body = JwkSet))
)]
pub(crate) async fn get_jwks(State(state): State<AppState>) -> impl IntoResponse {
    let cache_control =
        HeaderValue::from_str(&format!("public, max-age={}", state.jwks_max_age.as_secs()))
            .expect("digits are a valid header value");
    (
        [(header::CACHE_CONTROL, cache_control)],
        Json(state.tokens.jwks().clone()),
    )
}
