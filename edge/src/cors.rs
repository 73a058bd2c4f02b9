//! CORS (Fetch standard, "CORS protocol"): preflights answered here, and response headers for
//! origins listed in `ALLOWED_ORIGINS`. An origin not on the list is never reflected.

use gatehouse_shared::api::REQUEST_ID_HEADER;

use crate::config::EdgeConfig;
use crate::error::AppError;
use crate::reply::{Answer, Reply};
use crate::routes;

const ALLOWED_HEADERS: &str = "authorization, content-type, x-api-key, x-request-id";
const EXPOSED_HEADERS: &str = "x-request-id, retry-after, www-authenticate";
/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE_SECS: &str = "600";

/// Answers a preflight: 204 for a listed origin, with the methods the path serves from the route
/// table, 403 for any other origin.
pub fn preflight(
    origin: Option<&str>,
    path: &str,
    config: &EdgeConfig,
) -> Result<Answer, AppError> {
    if !is_allowed(origin, config) {
        return Err(AppError::OriginNotAllowed);
    }
    Ok(Answer::empty(204)
        .header(
            "access-control-allow-methods",
            &routes::allowed_methods(path),
        )
        .header("access-control-allow-headers", ALLOWED_HEADERS)
        .header("access-control-max-age", PREFLIGHT_MAX_AGE_SECS))
}

/// Adds the CORS response headers when the request's origin is listed. `Vary: Origin` always,
/// so a cache never serves one origin's answer to another. A preflight's answer exposes no
/// headers: `Access-Control-Expose-Headers` applies to actual responses only.
pub fn decorate(reply: &mut Reply, origin: Option<&str>, request_id: &str, config: &EdgeConfig) {
    reply.vary_on_origin();
    let exposes = !matches!(reply, Reply::Preflight(_));
    match origin.filter(|origin| is_allowed(Some(origin), config)) {
        Some(origin) if exposes => reply.set_headers(&[
            (REQUEST_ID_HEADER, request_id),
            ("access-control-allow-origin", origin),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", EXPOSED_HEADERS),
        ]),
        Some(origin) => reply.set_headers(&[
            (REQUEST_ID_HEADER, request_id),
            ("access-control-allow-origin", origin),
            ("access-control-allow-credentials", "true"),
        ]),
        None => reply.set_headers(&[(REQUEST_ID_HEADER, request_id)]),
    }
}

fn is_allowed(origin: Option<&str>, config: &EdgeConfig) -> bool {
    origin.is_some_and(|origin| {
        config
            .allowed_origins
            .iter()
            .any(|allowed| allowed == origin)
    })
}
