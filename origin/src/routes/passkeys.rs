//! Passkeys under `/auth/passkeys` and a passkey second step under `/auth/mfa/passkey` (see
//! [`crate::passkeys`] for the rules). With passkeys off (`WEBAUTHN_RP_ID` unset in production)
//! every route answers 404.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{
    CeremonyStart, MfaPasskeyFinish, MfaPasskeyStart, PasskeyAssertion, PasskeyInfo, PasskeyList,
    PasskeyRegistered, PasskeyRegistration, Problem, ReauthenticateRequest, TokenResponse,
};
use gatehouse_shared::assurance::Method;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, PasskeyAuthentication, PublicKeyCredential,
    RegisterPublicKeyCredential,
};
use webauthn_rs_proto::ResidentKeyRequirement;

use super::mfa::{finish_login, refuse_second_step};
use super::{ReauthenticationRefused, ended_response, token_response};
use crate::error::{ApiError, Result, invalid_field};
use crate::extract::{ApiJson, ApiPath, AuthUser, ClientMeta};
use crate::mail::Template;
use crate::passkeys::{self, MAX_PER_USER, Purpose, Stored};
use crate::sessions::{self, EndReason, Which};
use crate::{AppState, credentials, mfa, users};

/// The passkey routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_registration))
        .routes(routes!(finish_registration))
        .routes(routes!(list_passkeys))
        .routes(routes!(delete_passkey))
        .routes(routes!(start_sign_in))
        .routes(routes!(finish_sign_in))
        .routes(routes!(start_second_factor))
        .routes(routes!(finish_second_factor))
}

fn webauthn(state: &AppState) -> Result<&webauthn_rs::Webauthn> {
    state.webauthn.as_deref().ok_or(ApiError::NotFound)
}

fn options(value: &impl serde::Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|error| ApiError::Internal(error.into()))
}

fn credential<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value)
        .map_err(|_| invalid_field("credential", "is not a WebAuthn credential in JSON form"))
}

fn info(stored: &Stored) -> PasskeyInfo {
    PasskeyInfo {
        id: stored.id,
        name: stored.name.clone(),
        created_at: stored.created_at,
        last_used_at: stored.last_used_at,
    }
}

/// `POST /auth/passkeys/register/start {current_password}`: the options for
/// `navigator.credentials.create()`. A sensitive action (see [`credentials::reauthenticate`]).
#[utoipa::path(
    post, path = "/auth/passkeys/register/start", tag = "passkeys", security(("api_key" = [], "bearer" = [])),
    request_body = ReauthenticateRequest,
    responses(
        (status = 200, description = "The creation options and the ceremony's id", body = CeremonyStart),
        (status = 404, description = "Passkeys are off (WEBAUTHN_RP_ID unset)", body = Problem, content_type = "application/problem+json"),
        ReauthenticationRefused,
    )
)]
pub(crate) async fn start_registration(
    State(state): State<AppState>,
    user: AuthUser,
    meta: ClientMeta,
    ApiJson(request): ApiJson<ReauthenticateRequest>,
) -> Result<Json<CeremonyStart>> {
    let webauthn = webauthn(&state)?;
    let account =
        credentials::reauthenticate(&state, &user, request.current_password, meta.ip).await?;
    let mut connection = state.db.acquire().await?;
    let existing = passkeys::list(&mut connection, user.user_id).await?;
    if existing.len() as i64 >= MAX_PER_USER {
        return Err(invalid_field(
            "passkey",
            &format!("an account holds at most {MAX_PER_USER} passkeys; delete one first"),
        ));
    }
    let exclude = existing
        .iter()
        .map(|stored| stored.credential.cred_id().clone())
        .collect();
    let display = [account.first_name.as_deref(), account.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let display = if display.is_empty() {
        &account.email
    } else {
        &display
    };
    let (mut creation, registration) = webauthn
        .start_passkey_registration(user.user_id, &account.email, display, Some(exclude))
        .map_err(|error| ApiError::Internal(error.into()))?;
    // Discoverable, so that the passkey alone signs in with no address typed (WebAuthn section
    // 5.4.6); webauthn-rs asks for "discouraged" by default.
    if let Some(selection) = creation.public_key.authenticator_selection.as_mut() {
        selection.resident_key = Some(ResidentKeyRequirement::Required);
        selection.require_resident_key = true;
    }
    let now = state.clock.now();
    let id = passkeys::save_ceremony(
        &mut connection,
        Purpose::Register,
        Some(user.user_id),
        &registration,
        now,
    )
    .await?;
    Ok(Json(CeremonyStart {
        ceremony_id: id,
        options: options(&creation)?,
    }))
}

/// `POST /auth/passkeys/register/finish {ceremony_id, credential, name?}`: verifies the
/// authenticator's answer and stores the passkey. The account's first second factor also gets
/// its recovery codes.
#[utoipa::path(
    post, path = "/auth/passkeys/register/finish", tag = "passkeys", security(("api_key" = [], "bearer" = [])),
    request_body = PasskeyRegistration,
    responses(
        (status = 201, description = "Registered", body = PasskeyRegistered),
        (status = 400, description = "The ceremony is unknown, expired, another user's or finished", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Passkeys are off", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "This credential is registered already", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The answer does not verify, or the name is invalid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn finish_registration(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(request): ApiJson<PasskeyRegistration>,
) -> Result<Response> {
    let webauthn = webauthn(&state)?;
    let name = request
        .name
        .as_deref()
        .map(str::trim)
        .unwrap_or("passkey")
        .to_owned();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(invalid_field(
            "name",
            "must be 1 to 64 printable characters",
        ));
    }
    let answer: RegisterPublicKeyCredential = credential(request.credential)?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let (owner, registration) =
        passkeys::take_ceremony(&mut tx, request.ceremony_id, Purpose::Register, now).await?;
    // A refused answer spends the ceremony too: it is single use whatever the outcome.
    if owner != Some(user.user_id) {
        tx.commit().await?;
        return Err(ApiError::CeremonyInvalid);
    }
    let passkey = match webauthn.finish_passkey_registration(&answer, &registration) {
        Ok(passkey) => passkey,
        Err(error) => {
            tracing::info!(user_id = %user.user_id, %error, "passkey registration refused");
            tx.commit().await?;
            return Err(ApiError::PasskeyInvalid);
        }
    };
    // One factor change of an account at a time: the count and whether this is the first
    // factor are read under the account's lock.
    mfa::lock_account(&mut tx, user.user_id).await?;
    let account = users::find(&mut tx, user.user_id)
        .await?
        .ok_or(ApiError::SessionEnded)?;
    let factors = mfa::factors(&mut tx, user.user_id).await?;
    if i64::from(factors.passkeys) >= MAX_PER_USER {
        return Err(invalid_field(
            "passkey",
            &format!("an account holds at most {MAX_PER_USER} passkeys; delete one first"),
        ));
    }
    let first_factor = !factors.any();
    let verified = account.email_verified_at.is_some();
    let id = passkeys::insert(&mut tx, user.user_id, &passkey, &name, verified, now).await?;
    let recovery_codes = match first_factor {
        true => Some(mfa::replace_recovery_codes(&mut tx, &state, user.user_id, now).await?),
        false => None,
    };
    let added = Template::SecondFactorAdded;
    let noticed = mfa::notify(&state, &mut tx, user.user_id, added, now).await?;
    tx.commit().await?;
    mfa::notice_committed(&state, noticed);
    tracing::info!(user_id = %user.user_id, passkey_id = %id, "passkey registered");
    let body = PasskeyRegistered {
        passkey: PasskeyInfo {
            id,
            name,
            created_at: now,
            last_used_at: None,
        },
        recovery_codes: recovery_codes
            .map(|codes| codes.iter().map(|code| code.display().into()).collect()),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /auth/passkeys`.
#[utoipa::path(
    get, path = "/auth/passkeys", tag = "passkeys", security(("api_key" = [], "bearer" = [])),
    responses((status = 200, description = "The user's passkeys", body = PasskeyList))
)]
pub(crate) async fn list_passkeys(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<PasskeyList>> {
    let mut connection = state.db.acquire().await?;
    let stored = passkeys::list(&mut connection, user.user_id).await?;
    Ok(Json(PasskeyList {
        passkeys: stored.iter().map(info).collect(),
    }))
}

/// `DELETE /auth/passkeys/{id} {current_password}`: removes a passkey (a sensitive action);
/// every other session of the account ends.
#[utoipa::path(
    delete, path = "/auth/passkeys/{id}", tag = "passkeys", security(("api_key" = [], "bearer" = [])),
    params(("id" = Uuid, Path, description = "The passkey's id")),
    request_body = ReauthenticateRequest,
    responses(
        (status = 204, description = "Removed; every other session ended"),
        (status = 404, description = "No such passkey of the user", body = Problem, content_type = "application/problem+json"),
        ReauthenticationRefused,
    )
)]
pub(crate) async fn delete_passkey(
    State(state): State<AppState>,
    user: AuthUser,
    meta: ClientMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(request): ApiJson<ReauthenticateRequest>,
) -> Result<Response> {
    credentials::reauthenticate(&state, &user, request.current_password, meta.ip).await?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    if !passkeys::delete(&mut tx, user.user_id, id).await? {
        return Err(ApiError::PasskeyNotFound);
    }
    mfa::forget_codes_without_factors(&mut tx, user.user_id).await?;
    let (others, reason) = (Which::AllExcept(user.session_id), EndReason::FactorRemoved);
    let ended = sessions::end(&mut tx, &state, user.user_id, others, reason, now).await?;
    let removed = Template::SecondFactorRemoved;
    let noticed = mfa::notify(&state, &mut tx, user.user_id, removed, now).await?;
    tx.commit().await?;
    mfa::notice_committed(&state, noticed);
    tracing::info!(user_id = %user.user_id, passkey_id = %id, "passkey removed");
    Ok(ended_response(&state, &ended))
}

/// `POST /auth/passkeys/login/start`: the options for `navigator.credentials.get()` for a
/// sign-in with a passkey alone (discoverable credentials: the authenticator names the account).
#[utoipa::path(
    post, path = "/auth/passkeys/login/start", tag = "passkeys", security(("api_key" = [])),
    responses(
        (status = 200, description = "The request options and the ceremony's id", body = CeremonyStart),
        (status = 404, description = "Passkeys are off", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn start_sign_in(State(state): State<AppState>) -> Result<Json<CeremonyStart>> {
    let webauthn = webauthn(&state)?;
    let (request, authentication) = webauthn
        .start_discoverable_authentication()
        .map_err(|error| ApiError::Internal(error.into()))?;
    let mut connection = state.db.acquire().await?;
    let now = state.clock.now();
    let id = passkeys::save_ceremony(&mut connection, Purpose::SignIn, None, &authentication, now)
        .await?;
    Ok(Json(CeremonyStart {
        ceremony_id: id,
        options: options(&request)?,
    }))
}

/// `POST /auth/passkeys/login/finish {ceremony_id, credential}`: a new session at `aal2`
/// (`amr: ["swk","user","mfa"]`).
#[utoipa::path(
    post, path = "/auth/passkeys/login/finish", tag = "passkeys", security(("api_key" = [])),
    request_body = PasskeyAssertion,
    responses(
        (status = 200, description = "Signed in", body = TokenResponse),
        (status = 400, description = "The ceremony is unknown, expired or finished", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The passkey was not accepted (passkey_refused), or the account is deactivated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "With REQUIRE_VERIFIED_EMAIL: the address is not verified yet", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Passkeys are off", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn finish_sign_in(
    State(state): State<AppState>,
    meta: ClientMeta,
    ApiJson(request): ApiJson<PasskeyAssertion>,
) -> Result<Json<TokenResponse>> {
    let webauthn = webauthn(&state)?;
    let answer: PublicKeyCredential = credential(request.credential)?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let (_, authentication): (_, DiscoverableAuthentication) =
        passkeys::take_ceremony(&mut tx, request.ceremony_id, Purpose::SignIn, now).await?;
    let stored = passkeys::finish_sign_in(&mut tx, webauthn, &answer, authentication, now).await;
    let stored = match stored {
        Ok(stored) => stored,
        Err(error) => {
            // The ceremony is spent either way: a refused answer cannot be retried against it.
            tx.commit().await?;
            return Err(error);
        }
    };
    let Some(user) = users::find(&mut tx, stored.user_id)
        .await?
        .filter(|user| user.is_active)
    else {
        tx.commit().await?;
        return Err(ApiError::PasskeyRefused);
    };
    if state.accounts.require_verified_email && user.email_verified_at.is_none() {
        // The ceremony and the counter are spent: the same answer cannot be sent again later.
        tx.commit().await?;
        return Err(ApiError::EmailNotVerified);
    }
    let grant = sessions::begin(&mut tx, &state, user.id, &meta, Method::Passkey, now).await?;
    tx.commit().await?;
    state.metrics.login("success");
    tracing::info!(user_id = %user.id, method = "passkey", "login succeeded");
    Ok(Json(token_response(&state, user, grant, now)))
}

/// `POST /auth/mfa/passkey/start {mfa_token}`: the options for `navigator.credentials.get()`,
/// allowing the account's passkeys, for a login's second step.
#[utoipa::path(
    post, path = "/auth/mfa/passkey/start", tag = "mfa", security(("api_key" = [])),
    request_body = MfaPasskeyStart,
    responses(
        (status = 200, description = "The request options and the ceremony's id", body = CeremonyStart),
        (status = 401, description = "The mfa_token is unknown, expired, used or out of tries", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Passkeys are off, or the account has none", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn start_second_factor(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<MfaPasskeyStart>,
) -> Result<Json<CeremonyStart>> {
    let webauthn = webauthn(&state)?;
    let token = mfa::parse_token(request.mfa_token.expose_secret())?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let user_id = mfa::lock_challenge(&mut tx, &token, now).await?.user_id;
    let registered = passkeys::list(&mut tx, user_id).await?;
    if registered.is_empty() {
        return Err(ApiError::PasskeyNotFound);
    }
    let keys: Vec<_> = registered.into_iter().map(|s| s.credential).collect();
    let (request, authentication) = webauthn
        .start_passkey_authentication(&keys)
        .map_err(|error| ApiError::Internal(error.into()))?;
    let purpose = Purpose::SecondFactor;
    let id = passkeys::save_ceremony(&mut tx, purpose, Some(user_id), &authentication, now).await?;
    tx.commit().await?;
    Ok(Json(CeremonyStart {
        ceremony_id: id,
        options: options(&request)?,
    }))
}

/// `POST /auth/mfa/passkey/finish {mfa_token, ceremony_id, credential}`: completes the login with
/// a passkey, the session at `aal2` (`amr: ["pwd","swk","user","mfa"]`). A refused answer counts
/// as a wrong code: against the `mfa_token`'s tries and `MFA_LIMIT_PER_ACCOUNT`.
#[utoipa::path(
    post, path = "/auth/mfa/passkey/finish", tag = "mfa", security(("api_key" = [])),
    request_body = MfaPasskeyFinish,
    responses(
        (status = 200, description = "Signed in with two factors", body = TokenResponse),
        (status = 400, description = "The ceremony is unknown, expired or finished", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The passkey was not accepted (passkey_refused), or the mfa_token is invalid (mfa_token_invalid)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Passkeys are off", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "MFA_LIMIT_PER_ACCOUNT failures on the account in this window; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn finish_second_factor(
    State(state): State<AppState>,
    meta: ClientMeta,
    ApiJson(request): ApiJson<MfaPasskeyFinish>,
) -> Result<Json<TokenResponse>> {
    let webauthn = webauthn(&state)?;
    let token = mfa::parse_token(request.mfa_token.expose_secret())?;
    let answer: PublicKeyCredential = credential(request.credential)?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let challenge = mfa::lock_challenge(&mut tx, &token, now).await?;
    let user_id = challenge.user_id;
    mfa::check_limit(&mut tx, &state, user_id, now).await?;
    let (owner, authentication): (_, PasskeyAuthentication) =
        passkeys::take_ceremony(&mut tx, request.ceremony_id, Purpose::SecondFactor, now).await?;
    let verified = match owner == Some(user_id) {
        true => {
            passkeys::finish_second_factor(
                &mut tx,
                webauthn,
                user_id,
                &answer,
                &authentication,
                now,
            )
            .await?
        }
        false => None,
    };
    if verified.is_none() {
        mfa::count_wrong_code(&mut tx, &state, user_id, now).await?;
        let refusal = (ApiError::PasskeyRefused, "passkey_refused");
        return Err(refuse_second_step(&state, tx, &token, refusal).await);
    }
    let method = Method::PasswordPasskey;
    finish_login(&state, tx, &token, &challenge, method, &meta, now).await
}
