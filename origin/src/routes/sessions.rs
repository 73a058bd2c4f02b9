//! The session routes: refresh, logout, password change, and listing and ending sessions. The
//! rules they follow are in [`crate::sessions`].

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{
    ChangePasswordRequest, LogoutScope, Problem, RefreshRequest, SessionInfo, SessionList,
    TokenResponse,
};
use gatehouse_shared::refresh::RefreshToken;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{check_new_password, ended_response, token_response};
use crate::AppState;
use crate::error::{ApiError, Result};
use crate::extract::{ApiJson, ApiPath, ApiQuery, AuthUser, ClientMeta};
use crate::links::{self, Purpose};
use crate::mail::{Letter, Recipient, Template};
use crate::sessions::{self, EndReason, Which};
use crate::users;
use crate::{credentials, password_policy};

/// The session routes; under `/auth`, so the API-key gate applies.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(refresh_session))
        .routes(routes!(logout_user))
        .routes(routes!(change_password))
        .routes(routes!(list_sessions))
        .routes(routes!(end_session))
}

/// `POST /auth/refresh`: a new access token and the next refresh token of the session.
#[utoipa::path(
    post, path = "/auth/refresh", tag = "sessions", security(("api_key" = [])),
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new access token and the next refresh token", body = TokenResponse),
        (status = 401, description = "The refresh token is invalid, reused (the session is now ended) or its session expired, or the X-API-Key is bad", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The session refreshed more than REFRESH_LIMIT_PER_SESSION times this minute; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn refresh_session(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>> {
    let presented = RefreshToken::parse(request.refresh_token.expose_secret())
        .map_err(|_| ApiError::InvalidRefreshToken)?;
    let refreshed = sessions::refresh(
        &state.db,
        &state.memory,
        &state.sessions,
        &state.refresh_key,
        &presented,
        &state.clock,
        state.tokens.longest_validity(),
    )
    .await?;
    let user = {
        let mut connection = state.db.acquire().await?;
        users::find(&mut connection, refreshed.user_id).await?
    };
    let user = user.ok_or(ApiError::InvalidRefreshToken)?;
    Ok(Json(token_response(
        &state,
        user,
        refreshed.grant,
        refreshed.now,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogoutParams {
    #[serde(default)]
    scope: LogoutScope,
}

/// `POST /auth/logout[?scope=current|all|others]`.
#[utoipa::path(
    post, path = "/auth/logout", tag = "sessions", security(("api_key" = [], "bearer" = [])),
    params(("scope" = Option<LogoutScope>, Query, description = "Which sessions end: current (default), all, others")),
    responses((status = 204, description = "The sessions ended"))
)]
pub(crate) async fn logout_user(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(params): ApiQuery<LogoutParams>,
) -> Result<impl IntoResponse> {
    let (which, reason) = match params.scope {
        LogoutScope::Current => (Which::One(user.session_id), EndReason::Logout),
        LogoutScope::All => (Which::All, EndReason::LogoutAll),
        LogoutScope::Others => (Which::AllExcept(user.session_id), EndReason::LogoutOthers),
    };
    let ended = end_now(&state, user.user_id, which, reason).await?;
    tracing::info!(user_id = %user.user_id, ended = ended.len(), scope = ?params.scope, "logged out");
    Ok(ended_response(&state, &ended))
}

/// `PUT /auth/password`: needs the current password; ends every other session of the user
/// (OWASP ASVS 5.0 7.4.3: a password change offers to end other sessions; here it always does,
/// since a change is the usual answer to a suspected compromise).
#[utoipa::path(
    put, path = "/auth/password", tag = "sessions", security(("api_key" = [], "bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 204, description = "Changed; every other session ended"),
        (status = 403, description = "current_password is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A brute-force limit is reached; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn change_password(
    State(state): State<AppState>,
    user: AuthUser,
    meta: ClientMeta,
    ApiJson(request): ApiJson<ChangePasswordRequest>,
) -> Result<impl IntoResponse> {
    let email = user.claims.email.clone();
    check_new_password(
        &state,
        &request.new_password,
        &password_policy::user_inputs(&email, &[]),
    )
    .await?;
    let checked =
        credentials::reauthenticate(&state, &user, request.current_password, meta.ip).await?;
    let new_hash = state.hasher.hash(request.new_password).await?;

    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    // Of two concurrent changes, the second finds the hash it verified against gone and is
    // refused rather than silently overwriting the first.
    if !users::replace_password_hash(
        &mut tx,
        user.user_id,
        &checked.password_hash,
        &new_hash,
        users::Replacement::NewPassword,
    )
    .await?
    {
        return Err(ApiError::WrongPassword);
    }
    let ended = sessions::end(
        &mut tx,
        &state,
        user.user_id,
        Which::AllExcept(user.session_id),
        EndReason::PasswordChanged,
        now,
    )
    .await?;
    // A reset link mailed before the change must not undo it (OWASP Forgot Password Cheat Sheet),
    // nor a pending email change, perhaps a hijacker's, outlive it.
    for stale in [Purpose::ResetPassword, Purpose::ChangeEmail] {
        links::void(&mut tx, user.user_id, stale).await?;
    }
    // Nor a login's second step whose first step used the old password.
    crate::mfa::forget_pending(&mut tx, user.user_id).await?;
    let noticed = match &state.mail {
        Some(mail) => {
            let letter = Letter::new(Recipient::User(&checked), Template::PasswordChanged);
            mail.queue(&state, &mut tx, letter, now).await?
        }
        None => false,
    };
    tx.commit().await?;
    if let Some(mail) = &state.mail {
        mail.queued_after_commit(&state, noticed);
    }
    tracing::info!(user_id = %user.user_id, ended = ended.len(), "password changed");
    Ok(ended_response(&state, &ended))
}

/// `GET /auth/sessions`: the user's live sessions, newest first.
#[utoipa::path(
    get, path = "/auth/sessions", tag = "sessions", security(("api_key" = [], "bearer" = [])),
    responses((status = 200, description = "The user's live sessions, newest first", body = SessionList))
)]
pub(crate) async fn list_sessions(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<SessionList>> {
    let now = state.clock.now();
    let mut connection = state.db.acquire().await?;
    let rows = sessions::list_live(&mut connection, &state.sessions, user.user_id, now).await?;
    let sessions = rows
        .into_iter()
        .map(|row| SessionInfo {
            expires_at: state.sessions.expires_at(row.created_at, row.last_used_at),
            current: row.id == user.session_id,
            id: row.id,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            user_agent: row.user_agent,
            ip: row.ip,
        })
        .collect();
    Ok(Json(SessionList { sessions }))
}

/// `DELETE /auth/sessions/{id}`: ends one of the user's sessions (the current one included).
/// Another user's session id is answered exactly like an unknown one.
#[utoipa::path(
    delete, path = "/auth/sessions/{id}", tag = "sessions", security(("api_key" = [], "bearer" = [])),
    params(("id" = Uuid, Path, description = "A session id of the user")),
    responses(
        (status = 204, description = "The session ended"),
        (status = 404, description = "No live session of the user has this id", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn end_session(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(session_id): ApiPath<Uuid>,
) -> Result<impl IntoResponse> {
    let which = Which::One(session_id);
    let ended = end_now(&state, user.user_id, which, EndReason::EndedByUser).await?;
    if ended.is_empty() {
        return Err(ApiError::SessionNotFound);
    }
    tracing::info!(user_id = %user.user_id, %session_id, "session ended by its user");
    Ok(ended_response(&state, &ended))
}

/// Ends `which` sessions of `user_id` now, on a connection of its own: the sessions that were
/// live.
async fn end_now(
    state: &AppState,
    user_id: Uuid,
    which: Which,
    reason: EndReason,
) -> Result<Vec<sessions::Ended>> {
    let now = state.clock.now();
    // In a transaction, so that this instance marks the sessions as ending before the commit
    // (see `crate::memory`).
    let mut tx = state.db.begin().await?;
    let ended = sessions::end(&mut tx, state, user_id, which, reason, now).await?;
    tx.commit().await?;
    Ok(ended)
}
