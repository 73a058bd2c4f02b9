//! The public signing keys (RFC 7517), for the edge and for anyone verifying tokens.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
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
    let revoked = state
        .revoked_keys
        .current(&state.db, state.clock.now())
        .await;
    let mut jwks = state.tokens.jwks();
    jwks.keys
        .retain(|key| !key.kid.as_ref().is_some_and(|kid| revoked.contains(kid)));
    ([(header::CACHE_CONTROL, cache_control)], Json(jwks))
}
