//! The edge's errors, answered as RFC 9457 problem details in the same shape as the origin's.

use crate::reply::Answer;
use gatehouse_shared::api::{BearerError, PROBLEM_CONTENT_TYPE, ProblemKind, ProblemReply};
use gatehouse_shared::token::TokenError;

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
    /// The token is valid but its sign-in is weaker or older than the request asks (401, RFC 9470).
    InsufficientAuthentication(Box<gatehouse_shared::assurance::Insufficient>),
    /// A query parameter is invalid, e.g. `max_age` not a number (422).
    InvalidQuery,
    /// The revocation list is too old and the origin cannot be reached to renew it (503).
    RevocationsUnavailable,
    /// A CORS preflight from an origin not in `ALLOWED_ORIGINS` (403).
    OriginNotAllowed,
    /// The request body is larger than the edge forwards (413).
    PayloadTooLarge,
    /// The request body could not be read, e.g. the client aborted the upload (400).
    UnreadableBody,
    /// A path with an empty segment or an encoded `/` or `\` (400).
    NonCanonicalPath,
    /// Too many credential requests from this client address (429).
    RateLimited,
    /// A path the edge does not serve (404).
    NotFound,
    /// A method the path does not serve (405), with the methods it does for `Allow`.
    MethodNotAllowed { allow: String },
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

impl From<BearerError> for AppError {
    fn from(error: BearerError) -> Self {
        match error {
            BearerError::Missing => AppError::MissingToken,
            BearerError::Malformed => AppError::InvalidToken(TokenError::Malformed),
        }
    }
}

impl AppError {
    /// The kind of problem each error is, from the contract in `gatehouse_shared::api`, which the
    /// origin answers from too.
    fn kind(&self) -> ProblemKind {
        match self {
            AppError::InvalidApiKey => ProblemKind::InvalidApiKey,
            AppError::MissingToken => ProblemKind::MissingToken,
            AppError::InvalidToken(_) | AppError::SessionEnded => ProblemKind::InvalidToken,
            AppError::InsufficientAuthentication(_) => ProblemKind::InsufficientUserAuthentication,
            AppError::InvalidQuery => ProblemKind::InvalidQuery,
            AppError::RevocationsUnavailable => ProblemKind::RevocationsUnavailable,
            AppError::OriginNotAllowed => ProblemKind::OriginNotAllowed,
            AppError::PayloadTooLarge => ProblemKind::PayloadTooLarge,
            AppError::UnreadableBody => ProblemKind::UnreadableBody,
            AppError::NotFound => ProblemKind::NotFound,
            AppError::NonCanonicalPath => ProblemKind::NonCanonicalPath,
            AppError::RateLimited => ProblemKind::TooManyRequests,
            AppError::MethodNotAllowed { .. } => ProblemKind::MethodNotAllowed,
            AppError::OriginUnreachable => ProblemKind::OriginUnreachable,
            AppError::OriginTimeout => ProblemKind::OriginTimeout,
            AppError::Config(_) | AppError::Internal(_) => ProblemKind::InternalError,
        }
    }

    /// The problem answer.
    pub fn into_answer(self, request_id: &str) -> Answer {
        match &self {
            AppError::Config(name) => worker::console_error!(
                "request {request_id}: configuration {name} is missing or invalid"
            ),
            AppError::Internal(error) => worker::console_error!("request {request_id}: {error}"),
            _ => {}
        }
        let reply = match &self {
            AppError::InsufficientAuthentication(short) => short.reply(),
            _ => ProblemReply::from(self.kind()),
        };
        let reply = match &self {
            AppError::InvalidToken(reason) => reply.with_detail(reason.to_string()),
            AppError::SessionEnded => reply.with_detail("session has ended"),
            _ => reply,
        };
        let body = serde_json::to_string(&reply.problem()).expect("a problem always serializes");
        let mut answer = Answer::with_body(reply.status().as_u16(), PROBLEM_CONTENT_TYPE, body);
        for (name, value) in &reply.headers() {
            if name.as_str() != "content-type"
                && let Ok(value) = value.to_str()
            {
                answer = answer.header(name.as_str(), value);
            }
        }
        if let AppError::MethodNotAllowed { allow } = &self {
            answer = answer.header("allow", allow);
        }
        answer
    }
}
