//! Logs: one span per request carrying its request id, method and path (never the query string,
//! headers or body, which may hold tokens, keys or passwords).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, Request};
use axum::response::IntoResponse;
use tower::util::MapRequestLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::error::ApiError;

/// The header carrying the request id; the edge sets it, and the origin makes one when absent.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Longest request id kept from the edge.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// Wraps the router with request ids, request spans and panic recovery. An incoming
/// `X-Request-Id` is kept only from the edge (proved by `edge_secret`), so a caller that reaches
/// the origin directly cannot choose the ids in its logs.
pub fn layer(router: Router, edge_secret: Option<Arc<str>>) -> Router {
    let only_from_edge = move |mut request: Request<Body>| {
        let headers = request.headers();
        let from_edge = crate::extract::is_from_edge(headers, edge_secret.as_deref());
        let acceptable = headers
            .get(&REQUEST_ID_HEADER)
            .is_some_and(|id| id.len() <= MAX_REQUEST_ID_BYTES);
        if !(from_edge && acceptable) {
            request.headers_mut().remove(&REQUEST_ID_HEADER);
        }
        request
    };
    router
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let id = request
                        .extensions()
                        .get::<RequestId>()
                        .and_then(|id| id.header_value().to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        id,
                        method = %request.method(),
                        path = request.uri().path(),
                    )
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
        .layer(MapRequestLayer::new(only_from_edge))
}
