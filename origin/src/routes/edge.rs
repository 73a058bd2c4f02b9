//! Routes only the Gatehouse edge calls, authenticated by the edge secret.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use gatehouse_shared::api::{Problem, RevocationList};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::Result;
use crate::extract::FromEdge;
use crate::{sessions, signing_keys};

/// `GET /edge/revocations`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_revocations))
}

/// The sessions ended recently enough that one of their access tokens may still be unexpired,
/// and the signing keys revoked. The edge refuses tokens of these sessions and keys; older
/// sessions need no entry, their tokens have expired. Every revocation is here whatever caused it
/// and whichever way its request came.
#[utoipa::path(
    get, path = "/edge/revocations", tag = "edge",
    security(("edge_secret" = [])),
    responses(
        (status = 200, description = "Sessions ended while their tokens may be unexpired", body = RevocationList),
        (status = 503, description = "PostgreSQL is unreachable", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The edge secret is missing or wrong", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_revocations(
    State(state): State<AppState>,
    _edge: FromEdge,
) -> Result<impl IntoResponse> {
    let now = state.clock.now();
    let mut connection = state.db.acquire().await?;
    let revoked = sessions::revoked_since(
        &mut connection,
        now - state.tokens.longest_validity(),
        state.tokens.longest_validity(),
    )
    .await?;
    let revoked_kids = signing_keys::revoked(&mut connection).await?;
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(RevocationList {
            generated_at: now.unix_timestamp(),
            revoked,
            revoked_kids,
        }),
    ))
}
