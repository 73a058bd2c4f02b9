//! The edge's errors, answered as RFC 9457 problem details in the same shape as the origin's.

use gatehouse_shared::api::{PROBLEM_CONTENT_TYPE, Problem};
use gatehouse_shared::token::TokenError;
use worker::{Headers, Response};

/// Everything that stops a request at the edge.
#[derive(Debug)]
pub enum AppError {
    /// `X-API-Key` missing, malformed, unknown or revoked (401).
    InvalidApiKey,
    /// No bearer token on a route that needs one (401).
    MissingToken,
    /// The bearer token failed validation (401).
    InvalidToken(TokenError),
    /// The token is valid but the origin has ended its session (401).
    SessionEnded,
    /// The revocation list is too old and the origin cannot be reached to renew it (503).
    RevocationsUnavailable,
    /// A CORS preflight from an origin not in `ALLOWED_ORIGINS` (403).
    OriginNotAllowed,
    /// The request body is larger than the edge forwards (413).
    PayloadTooLarge,
    /// The request body could not be read, e.g. the client aborted the upload (400).
    UnreadableBody,
    /// Too many credential requests from this client address (429).
    RateLimited,
    /// A path the edge does not serve (404).
    NotFound,
    /// A method the API does not use (405).
    MethodNotAllowed,
    /// The origin could not be reached or answered with a server error when asked (502).
    OriginUnreachable,
    /// The origin did not answer within `ORIGIN_TIMEOUT_MS` (504).
    OriginTimeout,
    /// A binding is missing or invalid; named in the log, not in the response (500).
    Config(&'static str),
    /// A runtime call failed; logged, never sent (500).
    Internal(worker::Error),
}

impl From<worker::Error> for AppError {
    fn from(error: worker::Error) -> Self {
        AppError::Internal(error)
    }
}

impl AppError {
    fn parts(&self) -> (u16, &'static str, &'static str) {
        match self {
            AppError::InvalidApiKey => (
                401,
                "invalid_api_key",
                "a valid X-API-Key header is required",
            ),
            AppError::MissingToken => (401, "missing_token", "a bearer token is required"),
            AppError::InvalidToken(_) => (401, "invalid_token", ""),
            AppError::SessionEnded => (401, "invalid_token", "session has ended"),
            AppError::RevocationsUnavailable => (
                503,
                "revocations_unavailable",
                "token revocations cannot be checked right now; retry after the Retry-After delay",
            ),
            AppError::OriginNotAllowed => (
                403,
                "origin_not_allowed",
                "this origin may not call the API",
            ),
            AppError::PayloadTooLarge => (413, "payload_too_large", "request body is too large"),
            AppError::UnreadableBody => (400, "unreadable_body", "request body could not be read"),
            AppError::NotFound => (404, "not_found", "no such resource"),
            AppError::RateLimited => (
                429,
                "too_many_requests",
                "too many requests from this address; retry after the Retry-After delay",
            ),
            AppError::MethodNotAllowed => (405, "method_not_allowed", "method not allowed"),
            AppError::OriginUnreachable => (
                502,
                "origin_unreachable",
                "the authentication service could not be reached",
            ),
            AppError::OriginTimeout => (
                504,
                "origin_timeout",
                "the authentication service did not answer in time",
            ),
            AppError::Config(_) | AppError::Internal(_) => {
                (500, "internal_error", "internal error")
            }
        }
    }

    /// The problem response. Cannot fail: a response that cannot be built is a bare status.
    pub fn into_response(self, request_id: &str) -> Response {
        match &self {
            AppError::Config(name) => worker::console_error!(
                "request {request_id}: configuration {name} is missing or invalid"
            ),
            AppError::Internal(error) => worker::console_error!("request {request_id}: {error}"),
            _ => {}
        }
        let (status, code, detail) = self.parts();
        let detail = match &self {
            AppError::InvalidToken(reason) => reason.to_string(),
            _ => detail.to_owned(),
        };
        let title = match status {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            429 => "Too Many Requests",
            405 => "Method Not Allowed",
            413 => "Payload Too Large",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Internal Server Error",
        };
        let problem = Problem::new(status, code, title, detail);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let headers = Headers::new();
        let _ = headers.set("content-type", PROBLEM_CONTENT_TYPE);
        let _ = headers.set("cache-control", "no-store");
        // RFC 6750 section 3 challenges, as the origin sends them.
        let challenge = match code {
            "missing_token" => Some(r#"Bearer realm="gatehouse""#),
            "invalid_token" => Some(r#"Bearer realm="gatehouse", error="invalid_token""#),
            "invalid_api_key" => Some(r#"ApiKey realm="gatehouse", header="X-API-Key""#),
            _ => None,
        };
        if let Some(challenge) = challenge {
            let _ = headers.set("www-authenticate", challenge);
        }
        if matches!(status, 502..=504) {
            let _ = headers.set("retry-after", "1");
        }
        if status == 429 {
            // The binding counts over 10 or 60 s and does not say when a client may retry; the
            // longer period is the safe answer.
            let _ = headers.set("retry-after", "60");
        }
        Response::builder()
            .with_status(status)
            .with_headers(headers)
            .fixed(body)
    }
}
