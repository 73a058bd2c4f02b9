//! The one error type every handler returns, rendered as RFC 9457 problem details.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gatehouse_shared::api::{
    ENDED_SESSIONS_HEADER, FieldError, PROBLEM_CONTENT_TYPE, Problem, RevokedSession,
};
use gatehouse_shared::token::TokenError;

use crate::password::HashError;

/// Handler results.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Seconds a client is asked to wait after a 503 (RFC 9110 section 10.2.3).
const RETRY_AFTER_SECS: &str = "1";

/// Everything that can go wrong in a request, from the client's point of view.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Fields failed validation (422).
    #[error("request fields are invalid")]
    Validation(Vec<FieldError>),
    /// The body is not valid JSON (400).
    #[error("request body is not valid JSON")]
    MalformedJson(String),
    /// The JSON has the wrong shape: missing fields, wrong types, unknown members (422).
    #[error("request body has the wrong shape")]
    InvalidBody(String),
    /// The body is not declared as `application/json` (415).
    #[error("request body must be application/json")]
    UnsupportedMediaType,
    /// The body is over the configured limit (413).
    #[error("request body is too large")]
    PayloadTooLarge,
    /// The body could not be read (400).
    #[error("request body could not be read")]
    UnreadableBody,
    /// The `X-API-Key` header is missing, malformed, unknown or revoked (401).
    #[error("a valid X-API-Key header is required")]
    InvalidApiKey,
    /// No bearer token was presented (401).
    #[error("a bearer token is required")]
    MissingToken,
    /// The bearer token failed validation (401).
    #[error("bearer token is invalid")]
    InvalidToken(TokenError),
    /// The token verified but its session has ended or its user is deactivated (401).
    #[error("session has ended")]
    SessionEnded,
    /// The refresh token is malformed, unknown, or belongs to an ended session (401).
    #[error("refresh token is invalid")]
    InvalidRefreshToken,
    /// A spent refresh token came back outside the reuse rule; its session was ended (401). The
    /// ended session travels to the edge in the ended-sessions header.
    #[error("refresh token was already used; the session has been ended")]
    RefreshTokenReused(RevokedSession),
    /// The session passed its idle timeout or its absolute lifetime (401).
    #[error("session has expired; sign in again")]
    SessionExpired,
    /// `current_password` of a password change is wrong (403: the bearer token itself is fine).
    #[error("current password is incorrect")]
    WrongPassword,
    /// No live session with that id belongs to the user (404).
    #[error("no such session")]
    SessionNotFound,
    /// A query parameter is missing or invalid (422).
    #[error("query parameters are invalid")]
    InvalidQuery,
    /// An `/edge/*` request without the edge secret (401).
    #[error("this route is for the Gatehouse edge only")]
    NotFromEdge,
    /// Wrong email or password, or a deactivated account; deliberately indistinguishable (401).
    #[error("email or password is incorrect")]
    InvalidCredentials,
    /// The email address belongs to an account already (409).
    #[error("an account with this email already exists")]
    EmailTaken,
    /// No such route (404).
    #[error("no such resource")]
    NotFound,
    /// The route exists but not for this method (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Too many failed password checks for this account or address; retry after the delay (429).
    #[error("too many failed attempts; try again later")]
    RateLimited {
        /// Seconds until the limiting window ends.
        retry_after_secs: u64,
    },
    /// The hashing queue is full; the request was shed (503).
    #[error("too many password operations in progress")]
    Overloaded,
    /// PostgreSQL is unreachable or the pool is exhausted (503).
    #[error("database unavailable")]
    DatabaseUnavailable(#[source] Option<sqlx::Error>),
    /// A bug or an unexpected failure; the cause is logged, never sent (500).
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// The HTTP status for each kind of error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) | ApiError::InvalidBody(_) | ApiError::InvalidQuery => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::MalformedJson(_) | ApiError::UnreadableBody => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::InvalidApiKey
            | ApiError::MissingToken
            | ApiError::InvalidToken(_)
            | ApiError::SessionEnded
            | ApiError::InvalidRefreshToken
            | ApiError::RefreshTokenReused(_)
            | ApiError::SessionExpired
            | ApiError::NotFromEdge
            | ApiError::InvalidCredentials => StatusCode::UNAUTHORIZED,
            ApiError::WrongPassword => StatusCode::FORBIDDEN,
            ApiError::EmailTaken => StatusCode::CONFLICT,
            ApiError::NotFound | ApiError::SessionNotFound => StatusCode::NOT_FOUND,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Overloaded | ApiError::DatabaseUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_) => "validation_failed",
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnreadableBody => "unreadable_body",
            ApiError::InvalidApiKey => "invalid_api_key",
            ApiError::MissingToken => "missing_token",
            ApiError::InvalidToken(_) | ApiError::SessionEnded => "invalid_token",
            ApiError::InvalidRefreshToken => "invalid_refresh_token",
            ApiError::RefreshTokenReused(_) => "refresh_token_reused",
            ApiError::SessionExpired => "session_expired",
            ApiError::WrongPassword => "wrong_password",
            ApiError::SessionNotFound => "session_not_found",
            ApiError::InvalidQuery => "invalid_query",
            ApiError::NotFromEdge => "not_from_edge",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::EmailTaken => "email_taken",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::RateLimited { .. } => "too_many_attempts",
            ApiError::Overloaded => "overloaded",
            ApiError::DatabaseUnavailable(_) => "database_unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::MalformedJson(detail) | ApiError::InvalidBody(detail) => detail.clone(),
            // Which check failed is the client's own business and helps them debug; it reveals
            // nothing about keys or users.
            ApiError::InvalidToken(reason) => reason.to_string(),
            ApiError::Overloaded | ApiError::DatabaseUnavailable(_) => {
                "the service is busy or degraded; retry after the Retry-After delay".into()
            }
            _ => self.to_string(),
        }
    }
}

/// A single 422 for one refused field.
pub fn invalid_field(field: &str, message: &str) -> ApiError {
    ApiError::Validation(vec![FieldError {
        field: field.into(),
        message: message.into(),
    }])
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let self_retry = match &self {
            ApiError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        };
        let ended = match &self {
            ApiError::RefreshTokenReused(ended) => Some(RevokedSession::to_header(&[*ended])),
            _ => None,
        };
        match &self {
            ApiError::Internal(cause) => tracing::error!(error = ?cause, "internal error"),
            ApiError::DatabaseUnavailable(Some(cause)) => {
                tracing::warn!(error = %cause, "database unavailable");
            }
            _ => {}
        }
        let mut problem = Problem::new(
            status.as_u16(),
            self.code(),
            status.canonical_reason().unwrap_or("Error"),
            self.detail(),
        );
        if let ApiError::Validation(errors) = self {
            problem.errors = errors;
        }
        let body = serde_json::to_vec(&problem).expect("a problem always serializes");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // RFC 6750 section 3: a 401 for a bearer-protected resource names the scheme, and adds
        // error="invalid_token" when a token was presented but refused.
        let challenge = match problem.code.as_str() {
            "missing_token" => Some(r#"Bearer realm="gatehouse""#),
            "invalid_token" => Some(r#"Bearer realm="gatehouse", error="invalid_token""#),
            "invalid_api_key" => Some(r#"ApiKey realm="gatehouse", header="X-API-Key""#),
            "invalid_credentials"
            | "invalid_refresh_token"
            | "refresh_token_reused"
            | "session_expired" => Some(r#"Bearer realm="gatehouse""#),
            "not_from_edge" => Some(r#"EdgeSecret realm="gatehouse""#),
            _ => None,
        };
        if let Some(challenge) = challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if let Some(value) = ended.and_then(|value| HeaderValue::from_str(&value).ok()) {
            headers.insert(ENDED_SESSIONS_HEADER, value);
        }
        if let Some(retry_after_secs) = self_retry {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => ApiError::DatabaseUnavailable(Some(error)),
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|code| is_unavailable(&code)) =>
            {
                ApiError::DatabaseUnavailable(Some(error))
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<HashError> for ApiError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Overloaded => ApiError::Overloaded,
            HashError::Failed(cause) => ApiError::Internal(cause.into()),
            HashError::WorkerGone => ApiError::Internal(anyhow::anyhow!("hashing pool stopped")),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            // serde's messages can quote the submitted values back; the details stay fixed.
            JsonRejection::JsonDataError(_) => ApiError::InvalidBody(
                "a required field is missing, or a field has the wrong type".into(),
            ),
            JsonRejection::JsonSyntaxError(_) => {
                ApiError::MalformedJson("the body is not valid JSON".into())
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge
            }
            _ => ApiError::UnreadableBody,
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(_: QueryRejection) -> Self {
        ApiError::InvalidQuery
    }
}

impl From<PathRejection> for ApiError {
    /// Path parameters are resource names: one that does not parse names no resource.
    fn from(_: PathRejection) -> Self {
        ApiError::NotFound
    }
}

/// SQLSTATEs that mean "the server is going away or cannot take writes now", not "your query is
/// wrong" (PostgreSQL appendix A): class 08 connection exceptions, 57P01-57P03 shutdown and
/// cannot-connect-now, 25006 read-only transaction (a standby after a failover), and 40001/40P01
/// (serialization failure, deadlock): transient, so the client is asked to retry.
fn is_unavailable(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "25006" | "40001" | "40P01"
        )
}

/// Maps a unique or foreign-key violation to the error its constraint stands for, by the
/// constraint's name as declared in `migrations/` (never by the message text).
pub fn on_constraint(error: sqlx::Error, map: impl FnOnce(&str) -> Option<ApiError>) -> ApiError {
    if let sqlx::Error::Database(db_error) = &error
        && let Some(mapped) = db_error.constraint().and_then(map)
    {
        return mapped;
    }
    error.into()
}
