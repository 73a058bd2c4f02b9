//! The account routes that work through emailed links: verifying an address, asking again for a
//! verification link, recovering a forgotten password, and changing the address (confirmed by
//! the new one, undoable from the old one). They answer 404 while mail is disabled.
//!
//! The two routes that take an address (`forgot`, `resend`) answer 202 with an empty body and do
//! the same work whether or not an account has it: they queue a request that the courier resolves,
//! so neither the answer nor its timing tells who has an account (OWASP Forgot Password Cheat
//! Sheet: "Return a consistent message for both existent and non-existent accounts" and "Ensure
//! that responses return in a consistent amount of time").

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{
    ChangeEmailRequest, EmailRequest, LinkTokenRequest, Problem, ResetPasswordRequest,
};
use gatehouse_shared::input::{check_email, normalize_email};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{check_new_password, ended_response};
use crate::AppState;
use crate::error::{ApiError, Result, invalid_field};
use crate::extract::{ApiJson, AuthUser, ClientMeta};
use crate::links::{self, Purpose};
use crate::mail::{Letter, MAIL_IP_WINDOW, Mail, Recipient, Template};
use crate::sessions::{self, EndReason, Which};
use crate::{credentials, mfa, password_policy, throttle, users};

/// The account routes; under `/auth`, so the API-key gate applies.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(verify_email))
        .routes(routes!(resend_verification))
        .routes(routes!(forgot_password))
        .routes(routes!(reset_password))
        .routes(routes!(change_email))
        .routes(routes!(confirm_email_change))
        .routes(routes!(undo_email_change))
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
    throttle::count_request(
        &mut tx,
        state,
        "mail",
        meta.ip,
        mail.config.limit_per_ip,
        MAIL_IP_WINDOW,
        now,
    )
    .await?;
    let letter = Letter::new(Recipient::Address(email), template);
    let queued = mail.queue(state, &mut tx, letter, now).await?;
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
    // The link is checked before bcrypt runs, so a flood of bad links costs no hashing; it is
    // checked again, and spent, under its row lock once the hash is ready.
    let mailed_to = {
        let mut tx = state.db.begin().await?;
        let token = request.token.expose_secret();
        let peeked = links::redeem(&mut tx, token, Purpose::ResetPassword, state.clock.now());
        let email = peeked.await?.email;
        tx.rollback().await?;
        email
    };
    let inputs = password_policy::user_inputs(&mailed_to, &[]);
    check_new_password(&state, &request.new_password, &inputs).await?;
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
    if !users::reset_password(&mut tx, user.id, &new_hash, &redeemed.email, now).await? {
        return Err(ApiError::LinkTokenInvalid);
    }
    // A pending email change must not outlive a reset: it may be a hijacker's.
    for stale in [Purpose::ResetPassword, Purpose::ChangeEmail] {
        links::void(&mut tx, user.id, stale).await?;
    }
    // Nor a login's second step whose first step used the old password.
    mfa::forget_pending(&mut tx, user.id).await?;
    let ended = sessions::end(
        &mut tx,
        &state,
        user.id,
        Which::All,
        EndReason::PasswordReset,
        now,
    )
    .await?;
    // The address just proved itself; a factor set while it was unverified may be a squatter's.
    let notice = match mfa::remove_unverified_factors(&mut tx, user.id).await? {
        true => Template::PasswordResetFactorsRemoved,
        false => Template::PasswordChanged,
    };
    let noticed = mail
        .queue(
            &state,
            &mut tx,
            Letter::new(Recipient::User(&user), notice),
            now,
        )
        .await?;
    tx.commit().await?;
    mail.queued_after_commit(&state, noticed);
    tracing::info!(user_id = %user.id, ended = ended.len(), "password reset");
    Ok(ended_response(&state, &ended))
}

/// `PUT /auth/email {new_email, current_password}`: asks to move the account to `new_email`. 202
/// whatever the new address: it gets a confirmation link, or, when it has an account of its own, a
/// notice saying so (so the answer does not tell whether it has); the old address gets a notice
/// with a link that undoes the change for a week. Nothing changes until the new address confirms.
#[utoipa::path(
    put, path = "/auth/email", tag = "account", security(("api_key" = [], "bearer" = [])),
    request_body = ChangeEmailRequest,
    responses(
        (status = 202, description = "Mails are on their way to the new and the old address"),
        (status = 403, description = "current_password is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Mail is disabled, so the route does not exist", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A brute-force limit is reached; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn change_email(
    State(state): State<AppState>,
    user: AuthUser,
    meta: ClientMeta,
    ApiJson(request): ApiJson<ChangeEmailRequest>,
) -> Result<StatusCode> {
    let mail = mail(&state)?;
    let new_email = normalize_email(&request.new_email);
    check_email(new_email).map_err(|message| invalid_field("new_email", message))?;
    let account =
        credentials::reauthenticate(&state, &user, request.current_password, meta.ip).await?;
    if new_email.eq_ignore_ascii_case(&account.email) {
        return Err(invalid_field(
            "new_email",
            "is the account's address already",
        ));
    }
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    // Only the latest request can be confirmed.
    links::void(&mut tx, account.id, Purpose::ChangeEmail).await?;
    // The same statements whether or not the new address has an account, so timing does not
    // tell: a token is issued either way, and one for a taken address can only meet 409.
    let purpose = Purpose::ChangeEmail;
    let session = Some(user.session_id);
    let token = links::issue(&mut tx, account.id, purpose, new_email, session, now).await?;
    let letter = match users::find_by_email(&mut tx, new_email).await? {
        Some(_) => Letter::new(Recipient::Address(new_email), Template::EmailChangeTaken),
        None => {
            let to = Recipient::UserAt(&account, new_email);
            Letter::new(to, Template::EmailChangeConfirm).with_link(&token)
        }
    };
    let to_new = mail.queue(&state, &mut tx, letter, now).await?;
    let purpose = Purpose::UndoEmailChange;
    let undo = links::issue(&mut tx, account.id, purpose, &account.email, None, now).await?;
    let letter = Letter::new(Recipient::User(&account), Template::EmailChangeNotice)
        .with_link(&undo)
        .naming(new_email);
    let to_old = mail.queue(&state, &mut tx, letter, now).await?;
    tx.commit().await?;
    mail.queued_after_commit(&state, to_new);
    mail.queued_after_commit(&state, to_old);
    tracing::info!(user_id = %account.id, "email change requested");
    Ok(StatusCode::ACCEPTED)
}

/// `POST /auth/email/confirm {token}`: the new address confirms, so the account moves to it,
/// verified. Every session but the one that asked for the change ends; tokens issued from now on
/// carry the new address.
#[utoipa::path(
    post, path = "/auth/email/confirm", tag = "account", security(("api_key" = [])),
    request_body = LinkTokenRequest,
    responses(
        (status = 204, description = "The account has its new address; every other session ended"),
        LinkRefused,
        (status = 409, description = "The link was already used, or another account took the address meanwhile (email_taken)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn confirm_email_change(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<LinkTokenRequest>,
) -> Result<impl IntoResponse> {
    let purpose = Purpose::ChangeEmail;
    move_account(&state, request, purpose, EndReason::EmailChanged).await
}

/// `POST /auth/email/undo {token}`: the old address takes the account back, verified, and every
/// session ends (the change may have been a hijack).
#[utoipa::path(
    post, path = "/auth/email/undo", tag = "account", security(("api_key" = [])),
    request_body = LinkTokenRequest,
    responses(
        (status = 204, description = "The account has its old address back; every session ended"),
        LinkRefused,
        (status = 409, description = "The link was already used, or another account took the address meanwhile (email_taken)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn undo_email_change(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<LinkTokenRequest>,
) -> Result<impl IntoResponse> {
    let purpose = Purpose::UndoEmailChange;
    move_account(&state, request, purpose, EndReason::EmailChangeUndone).await
}

/// Moves the account a `purpose` link names to the address the link proves, voids the links an
/// address change makes stale, and ends sessions: all of them, or, for a confirmation, all but
/// the one that asked.
async fn move_account(
    state: &AppState,
    request: LinkTokenRequest,
    purpose: Purpose,
    reason: EndReason,
) -> Result<Response> {
    mail(state)?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let redeemed = links::redeem(&mut tx, request.token.expose_secret(), purpose, now).await?;
    if !users::change_email(&mut tx, redeemed.user_id, &redeemed.email, now).await? {
        return Err(ApiError::LinkTokenInvalid);
    }
    // Links mailed to the address the account left, or for a move it no longer needs, die here.
    for stale in [
        Purpose::VerifyEmail,
        Purpose::ResetPassword,
        Purpose::ChangeEmail,
    ] {
        links::void(&mut tx, redeemed.user_id, stale).await?;
    }
    let which = match (purpose, redeemed.session_id) {
        (Purpose::ChangeEmail, Some(kept)) => Which::AllExcept(kept),
        _ => Which::All,
    };
    let ended = sessions::end(&mut tx, state, redeemed.user_id, which, reason, now).await?;
    tx.commit().await?;
    tracing::info!(user_id = %redeemed.user_id, ended = ended.len(), ?reason, "email address moved");
    Ok(ended_response(state, &ended))
}
