//! The account routes that work through emailed links: verifying an address, asking again for a
//! verification link, and recovering a forgotten password. They answer 404 while mail is
//! disabled.
//!
//! The two routes that take an address (`forgot`, `resend`) answer 202 with an empty body and do
//! the same work whether or not an account has it: they queue a request that the courier resolves,
//! so neither the answer nor its timing tells who has an account (OWASP Forgot Password Cheat
//! Sheet: "Return a consistent message for both existent and non-existent accounts" and "Ensure
//! that responses return in a consistent amount of time").

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{EmailRequest, LinkTokenRequest, Problem, ResetPasswordRequest};
use gatehouse_shared::input::{check_email, normalize_email};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{check_new_password, ended_response};
use crate::AppState;
use crate::error::{ApiError, Result, invalid_field};
use crate::extract::{ApiJson, ClientMeta};
use crate::links::{self, Purpose};
use crate::mail::{MAIL_IP_WINDOW, Mail, Recipient, Template};
use crate::sessions::{self, EndReason, Which};
use crate::{throttle, users};

/// The account routes; under `/auth`, so the API-key gate applies.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(verify_email))
        .routes(routes!(resend_verification))
        .routes(routes!(forgot_password))
        .routes(routes!(reset_password))
}

/// How a route taking a link token refuses it; for the OpenAPI description only.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum LinkRefused {
    /// The link is invalid: unknown, replaced, or not for this route (`link_token_invalid`)
    #[response(status = 400, content_type = "application/problem+json")]
    Invalid(Problem),
    /// Mail is disabled, so the route does not exist
    #[response(status = 404, content_type = "application/problem+json")]
    MailDisabled(Problem),
    /// The link was already used (`link_token_used`)
    #[response(status = 409, content_type = "application/problem+json")]
    Used(Problem),
    /// The link has expired (`link_token_expired`)
    #[response(status = 410, content_type = "application/problem+json")]
    Expired(Problem),
}

/// How a route asking for a link by address refuses; for the OpenAPI description only.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum RequestRefused {
    /// Mail is disabled, so the route does not exist
    #[response(status = 404, content_type = "application/problem+json")]
    MailDisabled(Problem),
    /// Too many requests from this client; see Retry-After
    #[response(status = 429, content_type = "application/problem+json")]
    TooMany(Problem),
}

/// Mail, or 404 when it is disabled: the routes that depend on it then do not exist.
fn mail(state: &AppState) -> Result<&Mail> {
    state.mail.as_ref().ok_or(ApiError::NotFound)
}

/// `POST /auth/email/verify`: marks the address verified. Tokens issued from now on say
/// `email_verified: true`; a client refreshes to get one.
#[utoipa::path(
    post, path = "/auth/email/verify", tag = "account", security(("api_key" = [])),
    request_body = LinkTokenRequest,
    responses((status = 204, description = "The address is verified"), LinkRefused)
)]
pub(crate) async fn verify_email(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<LinkTokenRequest>,
) -> Result<StatusCode> {
    mail(&state)?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let redeemed = links::redeem(
        &mut tx,
        request.token.expose_secret(),
        Purpose::VerifyEmail,
        now,
    )
    .await?;
    // The address may have changed, or the account been deactivated, since the link was mailed.
    if !users::mark_verified(&mut tx, redeemed.user_id, &redeemed.email, now).await? {
        return Err(ApiError::LinkTokenInvalid);
    }
    tx.commit().await?;
    tracing::info!(user_id = %redeemed.user_id, "email verified");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /auth/email/verify/resend`: mails a new verification link if an unverified account has
/// the address. 202 and an empty body whatever the case.
#[utoipa::path(
    post, path = "/auth/email/verify/resend", tag = "account", security(("api_key" = [])),
    request_body = EmailRequest,
    responses(
        (status = 202, description = "If an unverified account has this address, a link is on its way"),
        RequestRefused,
    )
)]
pub(crate) async fn resend_verification(
    State(state): State<AppState>,
    meta: ClientMeta,
    ApiJson(request): ApiJson<EmailRequest>,
) -> Result<StatusCode> {
    request_link(&state, &meta, &request.email, Template::VerifyEmail).await
}

/// `POST /auth/password/forgot`: mails a reset link if an active account has the address. 202 and
/// an empty body whatever the case.
#[utoipa::path(
    post, path = "/auth/password/forgot", tag = "account", security(("api_key" = [])),
    request_body = EmailRequest,
    responses(
        (status = 202, description = "If an account has this address, a reset link is on its way"),
        RequestRefused,
    )
)]
pub(crate) async fn forgot_password(
    State(state): State<AppState>,
    meta: ClientMeta,
    ApiJson(request): ApiJson<EmailRequest>,
) -> Result<StatusCode> {
    request_link(&state, &meta, &request.email, Template::ResetPassword).await
}

/// Queues a request for a `template` link to `email`, which the courier resolves.
async fn request_link(
    state: &AppState,
    meta: &ClientMeta,
    email: &str,
    template: Template,
) -> Result<StatusCode> {
    let mail = mail(state)?;
    let email = normalize_email(email);
    check_email(email).map_err(|message| invalid_field("email", message))?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let limit = mail.config.limit_per_ip;
    throttle::count_request(&mut tx, "mail", meta.ip, limit, MAIL_IP_WINDOW, now).await?;
    let to = Recipient::Address(email);
    let queued = mail.queue(state, &mut tx, to, template, None, now).await?;
    tx.commit().await?;
    mail.queued_after_commit(state, queued);
    Ok(StatusCode::ACCEPTED)
}

/// `POST /auth/password/reset`: sets a new password through a reset link. The link proves the
/// address, so the address becomes verified; every session of the account ends (a session of
/// whoever knew the old password too), and the endings reach the edge like any other.
#[utoipa::path(
    post, path = "/auth/password/reset", tag = "account", security(("api_key" = [])),
    request_body = ResetPasswordRequest,
    responses(
        (status = 204, description = "The password is set; every session ended"),
        LinkRefused,
    )
)]
pub(crate) async fn reset_password(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ResetPasswordRequest>,
) -> Result<impl IntoResponse> {
    let mail = mail(&state)?;
    check_new_password(&request.new_password)?;
    // The link is checked before bcrypt runs, so a flood of bad links costs no hashing; it is
    // checked again, and spent, under its row lock once the hash is ready.
    {
        let mut tx = state.db.begin().await?;
        let token = request.token.expose_secret();
        links::redeem(&mut tx, token, Purpose::ResetPassword, state.clock.now()).await?;
        tx.rollback().await?;
    }
    let new_hash = state.hasher.hash(request.new_password).await?;

    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let token = request.token.expose_secret();
    let redeemed = links::redeem(&mut tx, token, Purpose::ResetPassword, now).await?;
    let Some(user) = users::find(&mut tx, redeemed.user_id)
        .await?
        .filter(|user| user.is_active)
    else {
        return Err(ApiError::LinkTokenInvalid);
    };
    users::reset_password(&mut tx, user.id, &new_hash, &redeemed.email, now).await?;
    links::void(&mut tx, user.id, Purpose::ResetPassword).await?;
    let ended = sessions::end(
        &mut tx,
        &state.sessions,
        user.id,
        Which::All,
        EndReason::PasswordReset,
        now,
    )
    .await?;
    let notice = Template::PasswordChanged;
    let noticed = mail
        .queue(&state, &mut tx, Recipient::User(&user), notice, None, now)
        .await?;
    tx.commit().await?;
    mail.queued_after_commit(&state, noticed);
    tracing::info!(user_id = %user.id, ended = ended.len(), "password reset");
    Ok(ended_response(&state, &ended, now))
}
