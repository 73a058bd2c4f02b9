//! The one error type every handler returns, rendered as RFC 9457 problem details.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gatehouse_shared::api::{
    BearerError, ENDED_SESSIONS_HEADER, FieldError, ProblemKind, ProblemReply, RevokedSession,
};
use gatehouse_shared::token::TokenError;

use crate::password::HashError;

/// Handler results.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Everything that can go wrong in a request, from the client's point of view.
#[derive(Debug)]
pub enum ApiError {
    /// Fields failed validation (422).
    Validation(Vec<FieldError>),
    /// The body is not valid JSON (400).
    MalformedJson(String),
    /// The JSON has the wrong shape: missing fields, wrong types, unknown members (422).
    InvalidBody(String),
    /// The body is not declared as `application/json` (415).
    UnsupportedMediaType,
    /// The body is over the configured limit (413).
    PayloadTooLarge,
    /// The body could not be read (400).
    UnreadableBody,
    /// The `X-API-Key` header is missing, malformed, unknown or revoked (401).
    InvalidApiKey,
    /// No bearer token was presented (401).
    MissingToken,
    /// The bearer token failed validation (401).
    InvalidToken(TokenError),
    /// The token verified but its session has ended or its user is deactivated (401).
    SessionEnded,
    /// The refresh token is malformed, unknown, or belongs to an ended session (401).
    InvalidRefreshToken,
    /// A spent refresh token came back outside the reuse rule; its session was ended (401). The
    /// ended session travels to the edge in the ended-sessions header.
    RefreshTokenReused(RevokedSession),
    /// The session passed its idle timeout or its absolute lifetime (401).
    SessionExpired,
    /// `current_password` of a password change is wrong (403: the bearer token itself is fine).
    WrongPassword,
    /// No live session with that id belongs to the user (404).
    SessionNotFound,
    /// A query parameter is missing or invalid (422).
    InvalidQuery,
    /// An `/edge/*` request without the edge secret (401).
    NotFromEdge,
    /// Wrong email or password, or a deactivated account; deliberately indistinguishable (401).
    InvalidCredentials,
    /// The email address belongs to an account already (409).
    EmailTaken,
    /// The password is right but the address must be verified first (403).
    EmailNotVerified,
    /// An emailed link's token is unknown, voided, malformed or for another purpose (400).
    LinkTokenInvalid,
    /// An emailed link's token has expired (410).
    LinkTokenExpired,
    /// An emailed link's token was already used (409).
    LinkTokenUsed,
    /// The token is valid but its sign-in is weaker or older than the request needs (401, with
    /// RFC 9470's challenge).
    InsufficientAuthentication(Box<gatehouse_shared::assurance::Insufficient>),
    /// The `mfa_token` of a login's second step is unknown, expired, used or out of tries (401).
    MfaTokenInvalid,
    /// A login's second step got a wrong code (401).
    InvalidMfaCode,
    /// A signed-in request's code is wrong or already used (403).
    WrongCode,
    /// A TOTP authenticator is enrolled already (409).
    FactorExists,
    /// No such factor is enrolled (404).
    FactorNotFound,
    /// A passkey ceremony is unknown, expired or finished (400).
    CeremonyInvalid,
    /// A passkey sign-in or second step did not verify (401).
    PasskeyRefused,
    /// A passkey registration did not verify (422).
    PasskeyInvalid,
    /// The credential is registered already (409).
    PasskeyExists,
    /// No such passkey belongs to the user (404).
    PasskeyNotFound,
    /// No such route (404).
    NotFound,
    /// The route exists but not for this method (405).
    MethodNotAllowed,
    /// A limit is reached (password checks, mail, refreshes); retry after the delay (429).
    RateLimited {
        /// Seconds until the limiting window ends.
        retry_after_secs: u64,
    },
    /// The hashing queue is full; the request was shed (503).
    Overloaded,
    /// PostgreSQL is unreachable or the pool is exhausted (503).
    DatabaseUnavailable(Option<sqlx::Error>),
    /// A bug or an unexpected failure; the cause is logged, never sent (500).
    Internal(anyhow::Error),
}

impl ApiError {
    /// 429 until `until`, a limiting window's end: `Retry-After` in whole seconds, rounded up
    /// so a client that waits exactly that long finds the window over (RFC 9110 section 10.2.3).
    pub fn limited_until(until: time::OffsetDateTime, now: time::OffsetDateTime) -> Self {
        let left = until - now;
        let secs = left.whole_seconds() + i64::from(left.subsec_nanoseconds() > 0);
        ApiError::RateLimited {
            retry_after_secs: u64::try_from(secs).unwrap_or(0).max(1),
        }
    }

    /// The kind of problem each error is, from the contract in `gatehouse_shared::api`: code,
    /// status, title and challenge all follow from it.
    pub fn kind(&self) -> ProblemKind {
        match self {
            ApiError::Validation(_) => ProblemKind::ValidationFailed,
            ApiError::MalformedJson(_) => ProblemKind::MalformedJson,
            ApiError::InvalidBody(_) => ProblemKind::InvalidBody,
            ApiError::UnsupportedMediaType => ProblemKind::UnsupportedMediaType,
            ApiError::PayloadTooLarge => ProblemKind::PayloadTooLarge,
            ApiError::UnreadableBody => ProblemKind::UnreadableBody,
            ApiError::InvalidApiKey => ProblemKind::InvalidApiKey,
            ApiError::MissingToken => ProblemKind::MissingToken,
            ApiError::InvalidToken(_) | ApiError::SessionEnded => ProblemKind::InvalidToken,
            ApiError::InvalidRefreshToken => ProblemKind::InvalidRefreshToken,
            ApiError::RefreshTokenReused(_) => ProblemKind::RefreshTokenReused,
            ApiError::SessionExpired => ProblemKind::SessionExpired,
            ApiError::WrongPassword => ProblemKind::WrongPassword,
            ApiError::SessionNotFound => ProblemKind::SessionNotFound,
            ApiError::InvalidQuery => ProblemKind::InvalidQuery,
            ApiError::NotFromEdge => ProblemKind::NotFromEdge,
            ApiError::InvalidCredentials => ProblemKind::InvalidCredentials,
            ApiError::EmailTaken => ProblemKind::EmailTaken,
            ApiError::EmailNotVerified => ProblemKind::EmailNotVerified,
            ApiError::LinkTokenInvalid => ProblemKind::LinkTokenInvalid,
            ApiError::LinkTokenExpired => ProblemKind::LinkTokenExpired,
            ApiError::LinkTokenUsed => ProblemKind::LinkTokenUsed,
            ApiError::InsufficientAuthentication(_) => ProblemKind::InsufficientUserAuthentication,
            ApiError::MfaTokenInvalid => ProblemKind::MfaTokenInvalid,
            ApiError::InvalidMfaCode => ProblemKind::InvalidMfaCode,
            ApiError::WrongCode => ProblemKind::WrongCode,
            ApiError::FactorExists => ProblemKind::FactorExists,
            ApiError::FactorNotFound => ProblemKind::FactorNotFound,
            ApiError::CeremonyInvalid => ProblemKind::CeremonyInvalid,
            ApiError::PasskeyRefused => ProblemKind::PasskeyRefused,
            ApiError::PasskeyInvalid => ProblemKind::PasskeyInvalid,
            ApiError::PasskeyExists => ProblemKind::PasskeyExists,
            ApiError::PasskeyNotFound => ProblemKind::PasskeyNotFound,
            ApiError::NotFound => ProblemKind::NotFound,
            ApiError::MethodNotAllowed => ProblemKind::MethodNotAllowed,
            ApiError::RateLimited { .. } => ProblemKind::TooManyAttempts,
            ApiError::Overloaded => ProblemKind::Overloaded,
            ApiError::DatabaseUnavailable(_) => ProblemKind::DatabaseUnavailable,
            ApiError::Internal(_) => ProblemKind::InternalError,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.kind().status()
    }

    /// The problem reply: the kind's defaults plus what only this occurrence knows.
    fn reply(self) -> ProblemReply {
        let reply = ProblemReply::from(self.kind());
        match self {
            ApiError::Validation(errors) => reply.with_errors(errors),
            ApiError::MalformedJson(detail) | ApiError::InvalidBody(detail) => {
                reply.with_detail(detail)
            }
            // Which check failed is the client's own business and helps them debug; it reveals
            // nothing about keys or users.
            ApiError::InvalidToken(reason) => reply.with_detail(reason.to_string()),
            ApiError::SessionEnded => reply.with_detail("session has ended"),
            ApiError::RateLimited { retry_after_secs } => reply.with_retry_after(retry_after_secs),
            ApiError::InsufficientAuthentication(insufficient) => insufficient.reply(),
            _ => reply,
        }
    }
}

/// The kind's default detail: the text logs and the problem body agree on.
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind().default_detail())
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApiError::DatabaseUnavailable(Some(cause)) => Some(cause),
            ApiError::Internal(cause) => Some(cause.as_ref()),
            _ => None,
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

impl From<BearerError> for ApiError {
    fn from(error: BearerError) -> Self {
        match error {
            BearerError::Missing => ApiError::MissingToken,
            BearerError::Malformed => ApiError::InvalidToken(TokenError::Malformed),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(cause) => tracing::error!(error = ?cause, "internal error"),
            ApiError::DatabaseUnavailable(Some(cause)) => {
                tracing::warn!(error = %cause, "database unavailable");
            }
            _ => {}
        }
        let ended = match &self {
            ApiError::RefreshTokenReused(ended) => {
                HeaderValue::from_str(&RevokedSession::to_header(&[*ended])).ok()
            }
            _ => None,
        };
        let reply = self.reply();
        let mut response = (reply.status(), reply.body()).into_response();
        response.headers_mut().extend(reply.headers());
        if let Some(value) = ended {
            response.headers_mut().insert(ENDED_SESSIONS_HEADER, value);
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
