//! The API's error contract, written once: every kind of problem either side can answer with,
//! its stable `code`, its status, its default detail and its `WWW-Authenticate` challenge. The
//! origin and the edge render their RFC 9457 problem details from [`ProblemReply`], so adding a
//! code is one line in [`problem_kinds!`]'s table plus its use.
//!
//! Codes are distinct per meaning: a client branches on `code`, and a code shared by two
//! meanings (a bad access token and, say, a bad emailed link) would send it down the wrong
//! branch, with the wrong challenge.

use http::StatusCode;
use http::header::{
    CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};

use super::{FieldError, PROBLEM_CONTENT_TYPE, Problem};

/// The `realm` of every challenge (RFC 9110 section 11.5).
pub const REALM: &str = "gatehouse";

/// Seconds a client is asked to wait after a 502, 503 or 504 (RFC 9110 section 10.2.3): the
/// causes (a shed request, a database failover, an origin restart) clear in about that time.
const RETRY_AFTER_UNAVAILABLE_SECS: u64 = 1;

/// Seconds a client is asked to wait after the edge's rate limiter refuses it. The Workers
/// binding counts over 10 or 60 s and does not say when a client may retry; the longer period is
/// the safe answer.
const RETRY_AFTER_EDGE_LIMIT_SECS: u64 = 60;

/// An authentication scheme a 401 challenges the client to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer <access token>` (RFC 6750).
    Bearer,
    /// The `X-API-Key` header every `/auth/*` request carries.
    ApiKey,
    /// The secret header only the Gatehouse edge sends (`/edge/*`).
    EdgeSecret,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Bearer => "Bearer",
            Scheme::ApiKey => "ApiKey",
            Scheme::EdgeSecret => "EdgeSecret",
        }
    }
}

/// A `WWW-Authenticate` challenge (RFC 9110 section 11.6.1): a scheme and its parameters, in
/// order. A kind's own challenge comes from [`ProblemKind::challenge`]; a request can add
/// parameters, e.g. RFC 9470's `acr_values` and `max_age` for a step-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    scheme: Scheme,
    params: Vec<(&'static str, String)>,
}

impl Challenge {
    /// A challenge for `scheme` in the Gatehouse realm.
    pub fn new(scheme: Scheme) -> Self {
        let mut challenge = Challenge {
            scheme,
            params: Vec::new(),
        }
        .with("realm", REALM);
        if scheme == Scheme::ApiKey {
            challenge = challenge.with("header", "X-API-Key");
        }
        challenge
    }

    /// The challenge with `name="value"` appended.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.params.push((name, value.into()));
        self
    }

    /// The challenge's scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The value of parameter `name`, if present.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(candidate, _)| *candidate == name)
            .map(|(_, value)| value.as_str())
    }

    /// The header value: every parameter as a quoted string, `"` and `\` escaped and control
    /// characters dropped (RFC 9110 section 5.6.4), so no parameter can break the header.
    pub fn render(&self) -> String {
        let mut out = self.scheme.name().to_owned();
        for (index, (name, value)) in self.params.iter().enumerate() {
            out.push_str(if index == 0 { " " } else { ", " });
            out.push_str(name);
            out.push_str("=\"");
            for c in value.chars().filter(|c| !c.is_control()) {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        out
    }
}

/// What a kind of problem says in its challenge: a scheme, and the RFC 6750 section 3 `error`
/// when a credential was presented but refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChallengeSpec {
    /// The scheme the client should use.
    pub scheme: Scheme,
    /// The `error` parameter, if any.
    pub error: Option<&'static str>,
}

const fn challenge(scheme: Scheme, error: Option<&'static str>) -> Option<ChallengeSpec> {
    Some(ChallengeSpec { scheme, error })
}

/// Defines [`ProblemKind`] from one table: variant, code, status, challenge, default detail.
macro_rules! problem_kinds {
    ($($(#[$doc:meta])* $kind:ident => $code:literal, $status:ident, $challenge:expr, $detail:literal;)*) => {
        /// Every kind of problem the API answers with, at the origin or at the edge.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ProblemKind {
            $($(#[$doc])* $kind,)*
        }

        impl ProblemKind {
            /// Every kind, in table order.
            pub const ALL: &[ProblemKind] = &[$(ProblemKind::$kind),*];

            /// The stable machine-readable code, also the last part of the problem's `type` URI.
            pub const fn code(self) -> &'static str {
                match self { $(ProblemKind::$kind => $code,)* }
            }

            /// The HTTP status.
            pub const fn status(self) -> StatusCode {
                match self { $(ProblemKind::$kind => StatusCode::$status,)* }
            }

            /// The challenge a response of this kind carries, before any per-request parameters.
            pub const fn challenge(self) -> Option<ChallengeSpec> {
                match self { $(ProblemKind::$kind => $challenge,)* }
            }

            /// The detail sent when the occurrence has nothing more specific to say.
            pub const fn default_detail(self) -> &'static str {
                match self { $(ProblemKind::$kind => $detail,)* }
            }
        }
    };
}

problem_kinds! {
    /// Fields failed validation; `errors` says which and why.
    ValidationFailed => "validation_failed", UNPROCESSABLE_ENTITY, None, "request fields are invalid";
    /// The body is not valid JSON.
    MalformedJson => "malformed_json", BAD_REQUEST, None, "the body is not valid JSON";
    /// The JSON has the wrong shape: missing fields, wrong types, unknown members.
    InvalidBody => "invalid_body", UNPROCESSABLE_ENTITY, None,
        "a required field is missing, or a field has the wrong type";
    /// A query parameter is missing or invalid.
    InvalidQuery => "invalid_query", UNPROCESSABLE_ENTITY, None, "query parameters are invalid";
    /// The body is not declared as `application/json`.
    UnsupportedMediaType => "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, None,
        "request body must be application/json";
    /// The body is over the limit.
    PayloadTooLarge => "payload_too_large", PAYLOAD_TOO_LARGE, None, "request body is too large";
    /// The body could not be read, e.g. the client aborted the upload.
    UnreadableBody => "unreadable_body", BAD_REQUEST, None, "request body could not be read";
    /// The path has an empty segment or an encoded `/` or `\`, which a proxy behind the edge
    /// could normalise into a path the edge never checked.
    NonCanonicalPath => "non_canonical_path", BAD_REQUEST, None,
        "the path has an empty segment or an encoded slash or backslash";
    /// `X-API-Key` missing, malformed, unknown or revoked.
    InvalidApiKey => "invalid_api_key", UNAUTHORIZED, challenge(Scheme::ApiKey, None),
        "a valid X-API-Key header is required";
    /// No bearer token on a route that needs one (RFC 6750 section 3.1: no `error` then).
    MissingToken => "missing_token", UNAUTHORIZED, challenge(Scheme::Bearer, None),
        "a bearer token is required";
    /// The bearer token failed validation, or its session has ended or its account is
    /// deactivated: to the client all mean "this access token no longer works".
    InvalidToken => "invalid_token", UNAUTHORIZED,
        challenge(Scheme::Bearer, Some("invalid_token")), "bearer token is invalid";
    /// The token is valid but its sign-in is weaker or older than the request demands (RFC 9470
    /// section 3); the challenge carries `acr_values` and, when age failed, `max_age`.
    InsufficientUserAuthentication => "insufficient_user_authentication", UNAUTHORIZED,
        challenge(Scheme::Bearer, Some("insufficient_user_authentication")),
        "this request needs a stronger or more recent sign-in";
    /// The `mfa_token` of a login's second step is unknown, expired, used, or spent its tries:
    /// the client starts the login again.
    MfaTokenInvalid => "mfa_token_invalid", UNAUTHORIZED, challenge(Scheme::Bearer, None),
        "the sign-in attempt is invalid or has expired; sign in again";
    /// The second factor's code is wrong (or already used) at a login's second step.
    InvalidMfaCode => "invalid_mfa_code", UNAUTHORIZED, challenge(Scheme::Bearer, None),
        "the code is incorrect";
    /// A signed-in request's code is wrong or already used (403: the bearer token is fine).
    WrongCode => "wrong_code", FORBIDDEN, None, "the code is incorrect";
    /// A TOTP authenticator is enrolled already; remove it before enrolling another.
    FactorExists => "factor_exists", CONFLICT, None,
        "a TOTP authenticator is enrolled already; remove it first";
    /// No such factor is enrolled (or awaiting confirmation).
    FactorNotFound => "factor_not_found", NOT_FOUND, None, "no such factor is enrolled";
    /// A passkey ceremony's id is unknown, expired, for another purpose or already finished.
    CeremonyInvalid => "ceremony_invalid", BAD_REQUEST, None,
        "the passkey ceremony is unknown, expired or already finished; start again";
    /// A passkey sign-in or second step did not verify: a bad signature, an unknown credential
    /// or another account's, no user verification, or a signature counter that did not advance.
    PasskeyRefused => "passkey_refused", UNAUTHORIZED, challenge(Scheme::Bearer, None),
        "the passkey was not accepted";
    /// A passkey registration's answer did not verify.
    PasskeyInvalid => "passkey_invalid", UNPROCESSABLE_ENTITY, None,
        "the authenticator's answer does not verify; start again";
    /// The credential is registered already.
    PasskeyExists => "passkey_exists", CONFLICT, None, "this passkey is registered already";
    /// No such passkey belongs to the user.
    PasskeyNotFound => "passkey_not_found", NOT_FOUND, None, "no such passkey";
    /// The refresh token is malformed, unknown, or belongs to an ended session.
    InvalidRefreshToken => "invalid_refresh_token", UNAUTHORIZED, challenge(Scheme::Bearer, None),
        "refresh token is invalid";
    /// A spent refresh token came back outside the reuse rule; its session was ended.
    RefreshTokenReused => "refresh_token_reused", UNAUTHORIZED, challenge(Scheme::Bearer, None),
        "refresh token was already used; the session has been ended";
    /// The session passed its idle timeout or its absolute lifetime.
    SessionExpired => "session_expired", UNAUTHORIZED, challenge(Scheme::Bearer, None),
        "session has expired; sign in again";
    /// Wrong email or password, or a deactivated account; deliberately indistinguishable.
    InvalidCredentials => "invalid_credentials", UNAUTHORIZED, challenge(Scheme::Bearer, None),
        "email or password is incorrect";
    /// An `/edge/*` request without the edge secret.
    NotFromEdge => "not_from_edge", UNAUTHORIZED, challenge(Scheme::EdgeSecret, None),
        "this route is for the Gatehouse edge only";
    /// An emailed link's token is unknown, voided, malformed or for another purpose. Its own
    /// code and no challenge: it is not an access token, and a client must not sign out for it.
    LinkTokenInvalid => "link_token_invalid", BAD_REQUEST, None,
        "the link is invalid; ask for a new one";
    /// An emailed link's token has passed its lifetime.
    LinkTokenExpired => "link_token_expired", GONE, None, "the link has expired; ask for a new one";
    /// An emailed link's token was already used.
    LinkTokenUsed => "link_token_used", CONFLICT, None, "the link was already used";
    /// The password is right, but sign-in waits for a verified address (`REQUIRE_VERIFIED_EMAIL`).
    EmailNotVerified => "email_not_verified", FORBIDDEN, None,
        "the email address is not verified yet; follow the link mailed to it";
    /// `current_password` is wrong (403: the bearer token itself is fine).
    WrongPassword => "wrong_password", FORBIDDEN, None, "current password is incorrect";
    /// A CORS preflight from an origin not in `ALLOWED_ORIGINS` (edge).
    OriginNotAllowed => "origin_not_allowed", FORBIDDEN, None, "this origin may not call the API";
    /// No such route.
    NotFound => "not_found", NOT_FOUND, None, "no such resource";
    /// No live session with that id belongs to the user.
    SessionNotFound => "session_not_found", NOT_FOUND, None, "no such session";
    /// The route exists but not for this method, or the method is not one the API uses.
    MethodNotAllowed => "method_not_allowed", METHOD_NOT_ALLOWED, None, "method not allowed";
    /// The email address belongs to an account already.
    EmailTaken => "email_taken", CONFLICT, None, "an account with this email already exists";
    /// A brute-force limit on password checks is reached; `Retry-After` says when it ends.
    TooManyAttempts => "too_many_attempts", TOO_MANY_REQUESTS, None,
        "too many failed attempts; try again later";
    /// The edge's per-address rate limit on credential routes is reached.
    TooManyRequests => "too_many_requests", TOO_MANY_REQUESTS, None,
        "too many requests from this address; retry after the Retry-After delay";
    /// A bug or an unexpected failure; the cause is logged, never sent.
    InternalError => "internal_error", INTERNAL_SERVER_ERROR, None, "internal error";
    /// The origin could not be reached or answered with a server error (edge).
    OriginUnreachable => "origin_unreachable", BAD_GATEWAY, None,
        "the authentication service could not be reached";
    /// The hashing queue is full; the request was shed.
    Overloaded => "overloaded", SERVICE_UNAVAILABLE, None,
        "the service is busy or degraded; retry after the Retry-After delay";
    /// PostgreSQL is unreachable or the pool is exhausted.
    DatabaseUnavailable => "database_unavailable", SERVICE_UNAVAILABLE, None,
        "the service is busy or degraded; retry after the Retry-After delay";
    /// The edge's revocation list is too old and the origin cannot be reached to renew it.
    RevocationsUnavailable => "revocations_unavailable", SERVICE_UNAVAILABLE, None,
        "token revocations cannot be checked right now; retry after the Retry-After delay";
    /// The origin did not answer within `ORIGIN_TIMEOUT_MS` (edge).
    OriginTimeout => "origin_timeout", GATEWAY_TIMEOUT, None,
        "the authentication service did not answer in time";
}

impl ProblemKind {
    /// The problem's `title`: the same for every occurrence of a status (RFC 9457 section 3.1.3).
    pub fn title(self) -> &'static str {
        self.status().canonical_reason().unwrap_or("Error")
    }

    /// `Retry-After` seconds every response of this kind carries unless the occurrence knows
    /// better (a brute-force window's end).
    pub const fn retry_after_secs(self) -> Option<u64> {
        match self {
            ProblemKind::TooManyRequests => Some(RETRY_AFTER_EDGE_LIMIT_SECS),
            _ => match self.status().as_u16() {
                502..=504 => Some(RETRY_AFTER_UNAVAILABLE_SECS),
                _ => None,
            },
        }
    }

    /// The kind whose code is `code`.
    pub fn from_code(code: &str) -> Option<ProblemKind> {
        ProblemKind::ALL
            .iter()
            .copied()
            .find(|kind| kind.code() == code)
    }
}

/// One problem answer, the same at the origin and the edge: a kind, what went wrong this time,
/// and the per-request parts of its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProblemReply {
    /// The kind of problem.
    pub kind: ProblemKind,
    /// The `detail`: the kind's default unless the occurrence says more.
    pub detail: String,
    /// Refused fields, on validation problems.
    pub errors: Vec<FieldError>,
    /// The `WWW-Authenticate` challenge, if any.
    pub challenge: Option<Challenge>,
    /// The `Retry-After` seconds, if any.
    pub retry_after_secs: Option<u64>,
}

impl From<ProblemKind> for ProblemReply {
    fn from(kind: ProblemKind) -> Self {
        ProblemReply {
            kind,
            detail: kind.default_detail().to_owned(),
            errors: Vec::new(),
            challenge: kind.challenge().map(|spec| {
                let challenge = Challenge::new(spec.scheme);
                match spec.error {
                    Some(error) => challenge.with("error", error),
                    None => challenge,
                }
            }),
            retry_after_secs: kind.retry_after_secs(),
        }
    }
}

impl ProblemReply {
    /// The reply with its own detail instead of the kind's default.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// The reply listing the refused fields.
    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    /// The reply with another challenge (for parameters only this request knows).
    pub fn with_challenge(mut self, challenge: Challenge) -> Self {
        self.challenge = Some(challenge);
        self
    }

    /// The reply asking the client to wait `secs` seconds.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The problem details body.
    pub fn problem(&self) -> Problem {
        let kind = self.kind;
        let mut problem = Problem::new(
            kind.status().as_u16(),
            kind.code(),
            kind.title(),
            self.detail.clone(),
        );
        problem.errors = self.errors.clone();
        problem
    }

    /// The body as JSON bytes.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.problem()).expect("a problem always serializes")
    }

    /// The response headers: media type, `no-store` (a problem is about one request), and the
    /// challenge and `Retry-After` when there are any.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(value) = self
            .challenge
            .as_ref()
            .and_then(|challenge| HeaderValue::try_from(challenge.render()).ok())
        {
            headers.insert(WWW_AUTHENTICATE, value);
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn every_kind_has_a_unique_code_an_error_status_a_title_and_a_detail() {
        let mut codes = HashSet::new();
        for kind in ProblemKind::ALL {
            let status = kind.status();

            assert!(codes.insert(kind.code()), "{kind:?}: code used twice");
            assert_eq!(ProblemKind::from_code(kind.code()), Some(*kind));
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{kind:?}"
            );
            assert!(
                kind.code()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{kind:?}: codes are snake_case"
            );
            assert_ne!(kind.title(), "Error", "{kind:?}");
            assert!(!kind.default_detail().is_empty(), "{kind:?}");
            assert!(!kind.default_detail().ends_with('.'), "{kind:?}");
        }
    }

    #[test]
    fn every_401_challenges_and_nothing_else_does() {
        for kind in ProblemKind::ALL {
            let headers = ProblemReply::from(*kind).headers();

            assert_eq!(
                headers.contains_key(WWW_AUTHENTICATE),
                kind.status() == StatusCode::UNAUTHORIZED,
                "{kind:?}: RFC 9110 section 15.5.2 requires a challenge on every 401"
            );
        }
    }

    #[test]
    fn every_kind_renders_a_problem_json_body_that_matches_its_headers() {
        for kind in ProblemKind::ALL {
            let reply = ProblemReply::from(*kind);

            let body: Problem = serde_json::from_slice(&reply.body()).unwrap();
            let headers = reply.headers();

            assert_eq!(body.code, kind.code());
            assert_eq!(body.status, kind.status().as_u16());
            assert_eq!(body.type_, format!("urn:gatehouse:problem:{}", kind.code()));
            assert_eq!(headers[CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
            assert_eq!(headers[CACHE_CONTROL], "no-store");
            assert_eq!(
                headers.contains_key(RETRY_AFTER),
                matches!(kind.status().as_u16(), 502..=504)
                    || *kind == ProblemKind::TooManyRequests,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn challenges_render_as_rfc_6750_says() {
        let header = |kind| ProblemReply::from(kind).headers()[WWW_AUTHENTICATE].clone();

        assert_eq!(
            header(ProblemKind::MissingToken),
            r#"Bearer realm="gatehouse""#
        );
        assert_eq!(
            header(ProblemKind::InvalidToken),
            r#"Bearer realm="gatehouse", error="invalid_token""#
        );
        assert_eq!(
            header(ProblemKind::InvalidApiKey),
            r#"ApiKey realm="gatehouse", header="X-API-Key""#
        );
        assert_eq!(
            header(ProblemKind::NotFromEdge),
            r#"EdgeSecret realm="gatehouse""#
        );
    }

    #[test]
    fn per_request_parameters_are_quoted_and_cannot_break_the_header() {
        let challenge = Challenge::new(Scheme::Bearer)
            .with("error", "insufficient_user_authentication")
            .with("acr_values", "aal2 \"x\"\\")
            .with("max_age", "600\r\nSet-Cookie: a=b");

        let rendered = challenge.render();

        assert_eq!(
            rendered,
            "Bearer realm=\"gatehouse\", error=\"insufficient_user_authentication\", \
             acr_values=\"aal2 \\\"x\\\"\\\\\", max_age=\"600Set-Cookie: a=b\""
        );
        assert!(HeaderValue::try_from(rendered).is_ok());
        assert_eq!(challenge.param("acr_values"), Some("aal2 \"x\"\\"));
    }

    #[test]
    fn a_reply_keeps_its_own_detail_errors_and_retry_after() {
        let reply = ProblemReply::from(ProblemKind::TooManyAttempts)
            .with_retry_after(42)
            .with_detail("wait")
            .with_errors(vec![FieldError {
                field: "email".into(),
                message: "no".into(),
            }]);

        assert_eq!(reply.headers()[RETRY_AFTER], "42");
        assert_eq!(reply.problem().detail, "wait");
        assert_eq!(reply.problem().errors.len(), 1);
        assert_eq!(reply.problem().title, "Too Many Requests");
    }
}
