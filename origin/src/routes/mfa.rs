//! Second factors under `/auth/mfa`: enrolling and removing a TOTP authenticator, recovery
//! codes, a login's second step and a session's step-up (see [`crate::mfa`] for the rules).

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{
    AccessTokenResponse, MfaCodeRequest, MfaStatus, MfaVerifyRequest, Problem,
    ReauthenticateRequest, RecoveryCodes, RemoveTotpRequest, TOKEN_TYPE, TokenResponse,
    TotpEnrollment,
};
use gatehouse_shared::assurance::Method;
use gatehouse_shared::mfa::{MfaToken, RecoveryCode};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ReauthenticationRefused, ended_response, token_response};
use crate::error::{ApiError, Result};
use crate::extract::{ApiJson, AuthUser, ClientMeta};
use crate::mail::Template;
use crate::sessions::{self, EndReason, Which};
use crate::{AppState, credentials, mfa, users};

/// The `/auth/mfa/*` routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_factors))
        .routes(routes!(enroll_totp, remove_totp))
        .routes(routes!(confirm_totp))
        .routes(routes!(replace_recovery_codes))
        .routes(routes!(verify_second_factor))
        .routes(routes!(step_up_session))
}

/// `GET /auth/mfa`: what the account has enrolled.
#[utoipa::path(
    get, path = "/auth/mfa", tag = "mfa", security(("api_key" = [], "bearer" = [])),
    responses((status = 200, description = "The account's second factors", body = MfaStatus))
)]
pub(crate) async fn get_factors(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<MfaStatus>> {
    let mut connection = state.db.acquire().await?;
    let factors = mfa::factors(&mut connection, user.user_id).await?;
    Ok(Json(MfaStatus {
        totp_enrolled_at: factors.totp_enrolled_at,
        recovery_codes_remaining: if factors.any() {
            factors.recovery_codes
        } else {
            0
        },
        passkeys: factors.passkeys,
        methods: factors.methods(),
    }))
}

/// `POST /auth/mfa/totp {current_password}`: a new TOTP secret for the user's authenticator app,
/// not active until `POST /auth/mfa/totp/confirm` proves the app holds it. A sensitive action:
/// see [`credentials::reauthenticate`].
#[utoipa::path(
    post, path = "/auth/mfa/totp", tag = "mfa", security(("api_key" = [], "bearer" = [])),
    request_body = ReauthenticateRequest,
    responses(
        (status = 200, description = "The secret, its otpauth URI and a QR code of it; confirm with a code to activate", body = TotpEnrollment),
        (status = 409, description = "An authenticator is enrolled already", body = Problem, content_type = "application/problem+json"),
        ReauthenticationRefused,
    )
)]
pub(crate) async fn enroll_totp(
    State(state): State<AppState>,
    user: AuthUser,
    meta: ClientMeta,
    ApiJson(request): ApiJson<ReauthenticateRequest>,
) -> Result<Json<TotpEnrollment>> {
    let account =
        credentials::reauthenticate(&state, &user, request.current_password, meta.ip).await?;
    let now = state.clock.now();
    let verified = account.email_verified_at.is_some();
    let secret = {
        let mut connection = state.db.acquire().await?;
        mfa::start_totp(&mut connection, &state, user.user_id, verified, now).await?
    };
    let uri = secret.otpauth_uri(&state.totp_issuer, &account.email);
    let qr_svg = qr_svg(&uri)?;
    tracing::info!(user_id = %user.user_id, "totp enrolment started");
    Ok(Json(TotpEnrollment {
        secret: secret.to_base32().into(),
        otpauth_uri: uri.into(),
        qr_svg: qr_svg.into(),
    }))
}

/// `uri` as a QR code, an SVG document (medium error correction: it survives a phone camera).
fn qr_svg(uri: &str) -> Result<String> {
    let code = qrcode::QrCode::with_error_correction_level(uri, qrcode::EcLevel::M)
        .map_err(|error| ApiError::Internal(anyhow::anyhow!("QR code: {error}")))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build())
}

/// `POST /auth/mfa/totp/confirm {code}`: activates the pending authenticator with one of its
/// codes and returns the account's recovery codes, shown this once.
#[utoipa::path(
    post, path = "/auth/mfa/totp/confirm", tag = "mfa", security(("api_key" = [], "bearer" = [])),
    request_body = MfaCodeRequest,
    responses(
        (status = 200, description = "Active; ten recovery codes, shown once", body = RecoveryCodes),
        (status = 403, description = "The code is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No enrolment is waiting for confirmation", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "MFA_LIMIT_PER_ACCOUNT wrong codes were tried on the account in this window; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn confirm_totp(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(request): ApiJson<MfaCodeRequest>,
) -> Result<Json<RecoveryCodes>> {
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    mfa::lock_account(&mut tx, user.user_id).await?;
    mfa::check_limit(&mut tx, &state, user.user_id, now).await?;
    let code = request.code.expose_secret().trim();
    let Some(codes) = mfa::confirm_totp(&mut tx, &state, user.user_id, code, now).await? else {
        mfa::count_wrong_code(&mut tx, &state, user.user_id, now).await?;
        tx.commit().await?;
        return Err(ApiError::WrongCode);
    };
    let noticed = mfa::notify(
        &state,
        &mut tx,
        user.user_id,
        Template::SecondFactorAdded,
        now,
    )
    .await?;
    tx.commit().await?;
    mfa::notice_committed(&state, noticed);
    tracing::info!(user_id = %user.user_id, "totp enrolled");
    Ok(Json(recovery_codes(codes)))
}

/// `DELETE /auth/mfa/totp {current_password, code}`: removes the authenticator and the recovery
/// codes; every other session of the account ends.
#[utoipa::path(
    delete, path = "/auth/mfa/totp", tag = "mfa", security(("api_key" = [], "bearer" = [])),
    request_body = RemoveTotpRequest,
    responses(
        (status = 204, description = "Removed; every other session ended"),
        (status = 401, description = "This session did not use a second factor in the last 10 minutes: step up (RFC 9470 challenge)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "current_password or the code is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No authenticator is enrolled", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A brute-force limit is reached; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn remove_totp(
    State(state): State<AppState>,
    user: AuthUser,
    meta: ClientMeta,
    ApiJson(request): ApiJson<RemoveTotpRequest>,
) -> Result<Response> {
    credentials::reauthenticate(&state, &user, request.current_password, meta.ip).await?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    if mfa::factors(&mut tx, user.user_id)
        .await?
        .totp_enrolled_at
        .is_none()
    {
        return Err(ApiError::FactorNotFound);
    }
    let code = request.code.expose_secret().trim();
    if mfa::check_code_limited(&mut tx, &state, user.user_id, code, now)
        .await?
        .is_none()
    {
        tx.commit().await?;
        return Err(ApiError::WrongCode);
    }
    mfa::remove_totp(&mut tx, user.user_id).await?;
    let (others, reason) = (Which::AllExcept(user.session_id), EndReason::FactorRemoved);
    let ended = sessions::end(&mut tx, &state, user.user_id, others, reason, now).await?;
    let noticed = mfa::notify(
        &state,
        &mut tx,
        user.user_id,
        Template::SecondFactorRemoved,
        now,
    )
    .await?;
    tx.commit().await?;
    mfa::notice_committed(&state, noticed);
    tracing::info!(user_id = %user.user_id, ended = ended.len(), "totp removed");
    Ok(ended_response(&state, &ended))
}

/// `POST /auth/mfa/recovery-codes {current_password}`: a new set of recovery codes; the old set
/// stops working.
#[utoipa::path(
    post, path = "/auth/mfa/recovery-codes", tag = "mfa", security(("api_key" = [], "bearer" = [])),
    request_body = ReauthenticateRequest,
    responses(
        (status = 200, description = "Ten new recovery codes, shown once", body = RecoveryCodes),
        (status = 404, description = "The account has no second factor", body = Problem, content_type = "application/problem+json"),
        ReauthenticationRefused,
    )
)]
pub(crate) async fn replace_recovery_codes(
    State(state): State<AppState>,
    user: AuthUser,
    meta: ClientMeta,
    ApiJson(request): ApiJson<ReauthenticateRequest>,
) -> Result<Json<RecoveryCodes>> {
    credentials::reauthenticate(&state, &user, request.current_password, meta.ip).await?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    if !mfa::factors(&mut tx, user.user_id).await?.any() {
        return Err(ApiError::FactorNotFound);
    }
    let codes = mfa::replace_recovery_codes(&mut tx, &state, user.user_id, now).await?;
    let replaced = Template::RecoveryCodesReplaced;
    let noticed = mfa::notify(&state, &mut tx, user.user_id, replaced, now).await?;
    tx.commit().await?;
    mfa::notice_committed(&state, noticed);
    tracing::info!(user_id = %user.user_id, "recovery codes replaced");
    Ok(Json(recovery_codes(codes)))
}

/// `POST /auth/mfa/verify {mfa_token, code}`: a login's second step. A TOTP code or an unused
/// recovery code completes it with the usual token response, the session at `aal2`.
#[utoipa::path(
    post, path = "/auth/mfa/verify", tag = "mfa", security(("api_key" = [])),
    request_body = MfaVerifyRequest,
    responses(
        (status = 200, description = "Signed in with two factors", body = TokenResponse),
        (status = 401, description = "The code is wrong (invalid_mfa_code), or the mfa_token is unknown, expired, used or out of tries (mfa_token_invalid: sign in again)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "MFA_LIMIT_PER_ACCOUNT wrong codes were tried on the account in this window; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn verify_second_factor(
    State(state): State<AppState>,
    meta: ClientMeta,
    ApiJson(request): ApiJson<MfaVerifyRequest>,
) -> Result<Json<TokenResponse>> {
    let token = mfa::parse_token(request.mfa_token.expose_secret())?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    // Under the row's lock: a racing request with the same token waits, then finds it spent.
    let challenge = mfa::lock_challenge(&mut tx, &token, now).await?;
    let code = request.code.expose_secret().trim();
    let checked = mfa::check_code_limited(&mut tx, &state, challenge.user_id, code, now).await?;
    let Some(method) = checked else {
        let refusal = (ApiError::InvalidMfaCode, "invalid_mfa_code");
        return Err(refuse_second_step(&state, tx, &token, refusal).await);
    };
    finish_login(&state, tx, &token, &challenge, method, &meta, now).await
}

/// A login's second step refused: the `mfa_token` spends one of its tries, committed with
/// whatever the caller counted in `tx`; `refusal` is the error and its login-metric outcome.
pub(crate) async fn refuse_second_step(
    state: &AppState,
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    token: &MfaToken,
    (error, outcome): (ApiError, &'static str),
) -> ApiError {
    let recorded = async {
        mfa::fail_challenge(&mut tx, token).await?;
        tx.commit().await?;
        Ok::<_, ApiError>(())
    };
    if let Err(failure) = recorded.await {
        return failure;
    }
    state.metrics.login(outcome);
    tracing::info!("second factor refused");
    error
}

/// Completes a login whose second step `method` proved: the `mfa_token` is spent and the session
/// begins, unless the account was deactivated since the first step.
pub(crate) async fn finish_login(
    state: &AppState,
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    token: &MfaToken,
    challenge: &mfa::Challenge,
    method: Method,
    meta: &ClientMeta,
    now: time::OffsetDateTime,
) -> Result<Json<TokenResponse>> {
    let Some(user) = mfa::spend_challenge(&mut tx, token, now)
        .await?
        .filter(|user| user.is_active)
    else {
        return Err(ApiError::MfaTokenInvalid);
    };
    let grant = sessions::begin(&mut tx, state, user.id, meta, method, now).await?;
    tx.commit().await?;
    state.metrics.login("success");
    tracing::info!(user_id = %user.id, method = method.as_str(), "login succeeded");
    let mut response = token_response(state, user, grant, now);
    response.password_change_required = challenge.password_change_required;
    Ok(Json(response))
}

/// `POST /auth/mfa/step-up {code}`: raises the signed-in session to `aal2` with a TOTP code or a
/// recovery code, and returns a new access token saying so. The refresh token is unchanged;
/// refreshed tokens keep the level, and `auth_time` is now.
#[utoipa::path(
    post, path = "/auth/mfa/step-up", tag = "mfa", security(("api_key" = [], "bearer" = [])),
    request_body = MfaCodeRequest,
    responses(
        (status = 200, description = "A new access token for the same session at aal2", body = AccessTokenResponse),
        (status = 403, description = "The code is wrong or was used already", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The account has no second factor", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "MFA_LIMIT_PER_ACCOUNT wrong codes were tried on the account in this window; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn step_up_session(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(request): ApiJson<MfaCodeRequest>,
) -> Result<Json<AccessTokenResponse>> {
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let code = request.code.expose_secret().trim();
    let Some(method) = mfa::check_code_limited(&mut tx, &state, user.user_id, code, now).await?
    else {
        let any = mfa::factors(&mut tx, user.user_id).await?.any();
        tx.commit().await?;
        return Err(if any {
            ApiError::WrongCode
        } else {
            ApiError::FactorNotFound
        });
    };
    let policy = &state.sessions;
    let stepped = sessions::step_up(&mut tx, policy, user.session_id, user.user_id, method, now)
        .await?
        .ok_or(ApiError::SessionEnded)?;
    let account = users::find(&mut tx, user.user_id)
        .await?
        .ok_or(ApiError::SessionEnded)?;
    tx.commit().await?;
    let (authentication, session_end) = stepped;
    let issued = state
        .tokens
        .issue(&account, user.session_id, &authentication, now, session_end);
    tracing::info!(user_id = %user.user_id, method = method.as_str(), "session stepped up");
    Ok(Json(AccessTokenResponse {
        access_token: issued.token.into(),
        token_type: TOKEN_TYPE.into(),
        expires_in: issued.expires_in,
        session_id: user.session_id,
    }))
}

fn recovery_codes(codes: Vec<RecoveryCode>) -> RecoveryCodes {
    RecoveryCodes {
        recovery_codes: codes.iter().map(|code| code.display().into()).collect(),
    }
}
