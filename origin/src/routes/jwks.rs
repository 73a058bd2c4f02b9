//! The public signing keys (RFC 7517), for the edge and for anyone verifying tokens.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
#[allow(unused_imports)] // named by the OpenAPI annotation
use gatehouse_shared::jwk::JwkSet;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

/// `GET /.well-known/jwks.json`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_jwks))
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
