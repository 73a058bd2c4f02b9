//! HTTP routes, one module per concern, each router merged in [`crate::app`]; the answers more
//! than one of them give are here.

pub mod account;
pub mod auth;
pub mod edge;
pub mod health;
pub mod jwks;
pub mod mfa;
pub mod passkeys;
pub mod sessions;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gatehouse_shared::api::{ENDED_SESSIONS_HEADER, FieldError, TOKEN_TYPE, TokenResponse};
use time::OffsetDateTime;

use crate::AppState;
use crate::sessions::{self as session_store, Grant};
use crate::users::User;

/// How a sensitive action refuses before it acts (see `credentials::reauthenticate`); for the
/// OpenAPI description only.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum ReauthenticationRefused {
    /// The account has a second factor and this session did not use one in the last 10 minutes:
    /// step up (`insufficient_user_authentication`, RFC 9470 challenge)
    #[response(status = 401, content_type = "application/problem+json")]
    StepUpRequired(gatehouse_shared::api::Problem),
    /// `current_password` is wrong (`wrong_password`)
    #[response(status = 403, content_type = "application/problem+json")]
    WrongPassword(gatehouse_shared::api::Problem),
    /// A brute-force limit is reached; see Retry-After
    #[response(status = 429, content_type = "application/problem+json")]
    Limited(gatehouse_shared::api::Problem),
}

/// The token response for `user` in the session `grant` describes, at `now`.
pub(crate) fn token_response(
    state: &AppState,
    user: User,
    grant: Grant,
    now: OffsetDateTime,
) -> TokenResponse {
    let issued = state.tokens.issue(
        &user,
        grant.session_id,
        &grant.authentication,
        now,
        grant.expires_at,
    );
    TokenResponse {
        access_token: issued.token.into(),
        token_type: TOKEN_TYPE.into(),
        expires_in: issued.expires_in,
        refresh_token: grant.refresh_token.expose().into(),
        device_token: None,
        password_change_required: false,
        session_id: grant.session_id,
        user: user.into(),
    }
}

/// 204, telling the edge which sessions ended so that it refuses their tokens at once.
pub(crate) fn ended_response(state: &AppState, ended: &[session_store::Ended]) -> Response {
    let header = session_store::ended_header(ended, state.tokens.longest_validity());
    let mut response = StatusCode::NO_CONTENT.into_response();
    if !ended.is_empty()
        && let Ok(value) = HeaderValue::from_str(&header)
    {
        response.headers_mut().insert(ENDED_SESSIONS_HEADER, value);
    }
    response
}

/// The rules every new password meets, at registration, reset and change: the length rules, then
/// not common or guessable from the account's own words (`user_inputs`, see
/// [`crate::password_policy`]). `Ok(Err(why))` refuses it. zxcvbn's matching costs milliseconds of
/// CPU, more for long passwords, so it runs on the blocking pool, never on the async workers that
/// answer token checks.
pub(crate) async fn password_refusal(
    state: &AppState,
    password: &gatehouse_shared::SecretString,
    user_inputs: &[&str],
) -> crate::error::Result<std::result::Result<(), String>> {
    use gatehouse_shared::ExposeSecret as _;
    if let Err(message) = gatehouse_shared::input::check_password(password.expose_secret()) {
        return Ok(Err(message.to_owned()));
    }
    let (password, min_score) = (password.clone(), state.password_min_score);
    let inputs: Vec<String> = user_inputs
        .iter()
        .map(|input| (*input).to_owned())
        .collect();
    tokio::task::spawn_blocking(move || {
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        crate::password_policy::check(password.expose_secret(), &inputs, min_score)
    })
    .await
    .map_err(|error| crate::error::ApiError::Internal(error.into()))
}

/// [`password_refusal`] for a `new_password` field: 422 naming it.
pub(crate) async fn check_new_password(
    state: &AppState,
    password: &gatehouse_shared::SecretString,
    user_inputs: &[&str],
) -> crate::error::Result<()> {
    password_refusal(state, password, user_inputs)
        .await?
        .map_err(|message| crate::error::invalid_field("new_password", &message))
}

/// Names are trimmed; an empty name is no name.
pub(crate) fn normalize_name(name: Option<String>) -> Option<String> {
    name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty())
}

/// Adds `field`'s refusal, if `outcome` is one, to `errors`.
pub(crate) fn push_error(
    errors: &mut Vec<FieldError>,
    field: &str,
    outcome: std::result::Result<(), impl Into<String>>,
) {
    if let Err(message) = outcome {
        errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}
