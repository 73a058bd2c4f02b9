//! Registration, login, token verification and the profile: everything under `/auth`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{
    DeactivateRequest, LoginRequest, LoginResponse, MfaRequired, Problem, RegisterRequest,
    RegistrationPending, TokenResponse, UpdateProfileRequest, UserProfile, VerifyResponse,
};
use gatehouse_shared::assurance::{Method, Requirement};
use gatehouse_shared::device::DeviceToken;
use gatehouse_shared::input::{check_email, check_name, normalize_email};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ended_response, normalize_name, password_refusal, push_error, token_response};
use crate::error::{ApiError, Result, invalid_field};
use crate::extract::{ApiJson, ApiQuery, AuthUser, ClientMeta};
use crate::links::Purpose;
use crate::mail::{Letter, Recipient, Template};
use crate::sessions::{self, EndReason, Which};
use crate::users::{self, NameChange, NewUser};
use crate::{AppState, credentials, mfa, password_policy, throttle};

/// The `/auth/*` routes; the API-key gate is layered on in [`crate::app`].
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_user))
        .routes(routes!(login_user))
        .routes(routes!(verify_token))
        .routes(routes!(check_api_key))
        .routes(routes!(get_profile, update_profile, deactivate_profile))
}

/// `POST /auth/register`: creates the account and its first session.
#[utoipa::path(
    post, path = "/auth/register", tag = "auth", security(("api_key" = [])),
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account and first session created", body = TokenResponse),
        (status = 202, description = "With REQUIRE_VERIFIED_EMAIL: a verification link is on its way if the address was free (the answer is the same if it was not)", body = RegistrationPending),
        (status = 409, description = "The email address has an account", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "REGISTER_LIMIT_PER_IP is reached for this client; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn register_user(
    State(state): State<AppState>,
    meta: ClientMeta,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<Response> {
    let email = normalize_email(&request.email).to_owned();
    let first_name = normalize_name(request.first_name);
    let last_name = normalize_name(request.last_name);
    let names = [first_name.as_deref(), last_name.as_deref()];
    let inputs = password_policy::user_inputs(&email, &names);
    let mut errors = Vec::new();
    push_error(&mut errors, "email", check_email(&email));
    let password = password_refusal(&state, &request.password, &inputs).await?;
    push_error(&mut errors, "password", password);
    for (field, value) in [("first_name", &first_name), ("last_name", &last_name)] {
        if let Some(name) = value {
            push_error(&mut errors, field, check_name(name));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }

    // Each registration costs a hash on the pool logins share, so clients are limited here too,
    // not only at the edge: the origin may be reached directly.
    {
        let mut connection = state.db.acquire().await?;
        let limits = &state.login_limits;
        throttle::count_request(
            &mut connection,
            &state,
            "register",
            meta.ip,
            limits.register_per_ip,
            limits.window,
            state.clock.now(),
        )
        .await?;
    }
    // Hash before touching the database: no pooled connection waits on bcrypt.
    let password_hash = state.hasher.hash(request.password).await?;

    let now = state.clock.now();
    let new = NewUser {
        id: Uuid::now_v7(),
        email: &email,
        password_hash: &password_hash,
        first_name: first_name.as_deref(),
        last_name: last_name.as_deref(),
        erase_if_unverified: state.mail.is_some(),
    };
    if state.accounts.require_verified_email {
        return register_pending(&state, new, now).await;
    }
    let mut tx = state.db.begin().await?;
    let user = users::create(&mut tx, new).await?;
    let grant = sessions::begin(&mut tx, &state, user.id, &meta, Method::Password, now).await?;
    let queued = match &state.mail {
        Some(mail) => {
            mail.queue_link(&state, &mut tx, &user, Purpose::VerifyEmail, now)
                .await?
        }
        None => false,
    };
    tx.commit().await?;
    if let Some(mail) = &state.mail {
        mail.queued_after_commit(&state, queued);
    }

    tracing::info!(user_id = %user.id, "user registered");
    let tokens = token_response(&state, user, grant, now);
    Ok((StatusCode::CREATED, Json(tokens)).into_response())
}

/// Registration while addresses must be verified before sign-in: the same 202 after the same
/// hash for a new address and a taken one, so the answer does not tell whether an address has an
/// account (OWASP Authentication Cheat Sheet, "Account Creation"). A new address gets its
/// verification link; the owner of a taken one hears that someone tried.
async fn register_pending(
    state: &AppState,
    new: NewUser<'_>,
    now: time::OffsetDateTime,
) -> Result<Response> {
    let mail = state.mail.as_ref().ok_or(ApiError::NotFound)?;
    let email = new.email;
    let mut tx = state.db.begin().await?;
    let queued = match users::create_if_free(&mut tx, new).await? {
        Some(user) => {
            tracing::info!(user_id = %user.id, "user registered, unverified");
            mail.queue_link(state, &mut tx, &user, Purpose::VerifyEmail, now)
                .await?
        }
        None => match users::find_by_email(&mut tx, email).await? {
            Some(owner) => {
                let letter = Letter::new(Recipient::User(&owner), Template::RegisterAttempt);
                mail.queue(state, &mut tx, letter, now).await?
            }
            None => false,
        },
    };
    tx.commit().await?;
    mail.queued_after_commit(state, queued);
    let pending = RegistrationPending {
        status: "verification_sent".into(),
    };
    Ok((StatusCode::ACCEPTED, Json(pending)).into_response())
}

/// `POST /auth/login`: one answer for a wrong password, an unknown email and a deactivated
/// account, at the same cost (OWASP Authentication Cheat Sheet, "Authentication and Error
/// Messages").
#[utoipa::path(
    post, path = "/auth/login", tag = "auth", security(("api_key" = [])),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A new session, or, when the account has a second factor, the mfa_token for POST /auth/mfa/verify (mfa_required: true)", body = LoginResponse),
        (status = 401, description = "Wrong email or password, a deactivated account, or a bad X-API-Key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "With REQUIRE_VERIFIED_EMAIL: the password is right but the address is not verified yet", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A brute-force limit is reached; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn login_user(
    State(state): State<AppState>,
    meta: ClientMeta,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>> {
    let outcome = check_login(&state, meta, request).await;
    state.metrics.login(match &outcome {
        Ok(LoginResponse::Tokens(_)) => "success",
        Ok(LoginResponse::MfaRequired(_)) => "mfa_required",
        Err(ApiError::InvalidCredentials) => "invalid_credentials",
        Err(ApiError::EmailNotVerified) => "email_not_verified",
        Err(ApiError::RateLimited { .. }) => "rate_limited",
        Err(ApiError::Overloaded) => "shed",
        Err(ApiError::Validation(_)) => "invalid_request",
        Err(ApiError::DatabaseUnavailable(_)) => "database_unavailable",
        Err(_) => "error",
    });
    outcome.map(Json)
}

async fn check_login(
    state: &AppState,
    meta: ClientMeta,
    request: LoginRequest,
) -> Result<LoginResponse> {
    let email = normalize_email(&request.email);
    // Registration applied the same rule, so an address failing it has no account; refusing it
    // here reveals nothing and keeps bytes PostgreSQL rejects (NUL) away from the query.
    if let Err(message) = check_email(email) {
        return Err(invalid_field("email", message));
    }
    let password = request.password;
    // Only an imported account accepts a password past bcrypt's 72 bytes (see
    // `credentials::check`); it is then asked to choose one Gatehouse can hold in full.
    let beyond_bcrypt =
        password.expose_secret().len() > gatehouse_shared::input::MAX_PASSWORD_BYTES;
    // A malformed device token is as good as none: it is a hint, never a reason to refuse.
    let device = request
        .device_token
        .and_then(|token| DeviceToken::parse(token.expose_secret()).ok());
    let Some(mut user) = credentials::check(
        state,
        credentials::Account::Email(email),
        password.clone(),
        meta.ip,
        device.as_ref(),
    )
    .await?
    else {
        tracing::info!("login refused");
        return Err(ApiError::InvalidCredentials);
    };
    credentials::upgrade_hash(state, &mut user, password).await;

    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    // The hash verified above must still be the account's: a password change or deactivation
    // that committed while bcrypt ran would otherwise be outlived by this new session. The share
    // lock makes a concurrent change wait for this transaction, or this one see its result.
    let current = users::lock_credentials(&mut tx, user.id).await?;
    if current != Some((user.password_hash.clone(), true)) {
        tracing::info!(user_id = %user.id, "login refused: the account changed during the check");
        return Err(ApiError::InvalidCredentials);
    }
    // Only the holder of the right password learns this, so it reveals nothing to a guesser.
    if state.accounts.require_verified_email && user.email_verified_at.is_none() {
        tracing::info!(user_id = %user.id, "login refused: address not verified");
        return Err(ApiError::EmailNotVerified);
    }
    let factors = mfa::factors(&mut tx, user.id).await?;
    if factors.any() {
        // The password was right: the second step opens, and only its holder learns that the
        // account has a second factor.
        let change_required = beyond_bcrypt && user.legacy_password;
        let token = mfa::open_challenge(&mut tx, user.id, &meta, change_required, now).await?;
        let device =
            throttle::trust_device(&mut tx, &state.counter_names, &user.email, device, now).await?;
        tx.commit().await?;
        tracing::info!(user_id = %user.id, "login waits for a second factor");
        return Ok(LoginResponse::MfaRequired(MfaRequired {
            mfa_required: true,
            mfa_token: token.expose().into(),
            expires_in: mfa::CHALLENGE_TTL.as_secs(),
            methods: factors.methods(),
            device_token: Some(device.expose().into()),
        }));
    }
    let grant = sessions::begin(&mut tx, state, user.id, &meta, Method::Password, now).await?;
    let device =
        throttle::trust_device(&mut tx, &state.counter_names, &user.email, device, now).await?;
    tx.commit().await?;

    tracing::info!(user_id = %user.id, "login succeeded");
    let password_change_required = beyond_bcrypt && user.legacy_password;
    let mut response = token_response(state, user, grant, now);
    response.device_token = Some(device.expose().into());
    response.password_change_required = password_change_required;
    Ok(LoginResponse::Tokens(Box::new(response)))
}

/// `acr_values` and `max_age` of `GET /auth/verify` (RFC 9470 section 2).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct VerifyParams {
    acr_values: Option<String>,
    max_age: Option<String>,
}

/// `GET /auth/verify[?acr_values=aal2&max_age=300]`: the token is valid, its session live, its
/// account active, and, when asked, its sign-in strong and recent enough (RFC 9470; the same
/// rule as the edge, `gatehouse_shared::assurance::Requirement`).
#[utoipa::path(
    get, path = "/auth/verify", tag = "auth", security(("api_key" = [], "bearer" = [])),
    params(
        ("acr_values" = Option<String>, Query, description = "Space-separated levels (aal1, aal2); the token's level must be at least the lowest listed"),
        ("max_age" = Option<u64>, Query, description = "Seconds since the user last authenticated (the token's auth_time), at most"),
    ),
    responses(
        (status = 200, description = "The token is valid and its session live", body = VerifyResponse),
        (status = 401, description = "The token is invalid, or its sign-in is weaker or older than asked: error=\"insufficient_user_authentication\" with acr_values and max_age in WWW-Authenticate (RFC 9470)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn verify_token(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(params): ApiQuery<VerifyParams>,
) -> Result<Json<VerifyResponse>> {
    let requirement = Requirement::parse(params.acr_values.as_deref(), params.max_age.as_deref())
        .map_err(|_| ApiError::InvalidQuery)?;
    requirement
        .check(&user.claims, state.clock.now().unix_timestamp())
        .map_err(|short| ApiError::InsufficientAuthentication(Box::new(short)))?;
    VerifyResponse::from_claims(user.claims)
        .map(Json)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a validated token's exp is no time")))
}

/// `GET /auth/api-key`: 204 when the presented `X-API-Key` is valid (the gate in front of every
/// `/auth/*` route has already checked it). The edge asks this to learn about keys it has not
/// seen, then caches the answer briefly.
#[utoipa::path(
    get, path = "/auth/api-key", tag = "auth", security(("api_key" = [])),
    responses((status = 204, description = "The X-API-Key is valid"))
)]
pub(crate) async fn check_api_key() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// `GET /auth/profile`.
#[utoipa::path(
    get, path = "/auth/profile", tag = "profile", security(("api_key" = [], "bearer" = [])),
    responses((status = 200, description = "The signed-in user", body = UserProfile))
)]
pub(crate) async fn get_profile(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<UserProfile>> {
    let mut connection = state.db.acquire().await?;
    // The extractor has just seen the account active; a row gone since speaks for nobody.
    let row = users::find(&mut connection, user.user_id)
        .await?
        .ok_or(ApiError::SessionEnded)?;
    Ok(Json(row.into()))
}

/// `PATCH /auth/profile`: members left out stay, `null` clears.
#[utoipa::path(
    patch, path = "/auth/profile", tag = "profile", security(("api_key" = [], "bearer" = [])),
    request_body = UpdateProfileRequest,
    responses((status = 200, description = "The updated profile", body = UserProfile))
)]
pub(crate) async fn update_profile(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(request): ApiJson<UpdateProfileRequest>,
) -> Result<Json<UserProfile>> {
    let first_name = request.first_name.map(normalize_name);
    let last_name = request.last_name.map(normalize_name);
    let mut errors = Vec::new();
    for (field, value) in [("first_name", &first_name), ("last_name", &last_name)] {
        if let Some(Some(name)) = value {
            push_error(&mut errors, field, check_name(name));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }

    let mut connection = state.db.acquire().await?;
    let row = users::update_names(
        &mut connection,
        user.user_id,
        NameChange {
            first_name: first_name.as_ref().map(Option::as_deref),
            last_name: last_name.as_ref().map(Option::as_deref),
        },
    )
    .await?;
    Ok(Json(row.into()))
}

/// `DELETE /auth/profile {current_password}`: deactivates the account and ends all its sessions
/// in one transaction, so its tokens stop working at the origin at once and reach the edge's
/// revocation list. Its personal data is erased `ACCOUNT_ERASE_AFTER_SECS` later (GDPR art. 17),
/// unless an operator reactivates it first.
#[utoipa::path(
    delete, path = "/auth/profile", tag = "profile", security(("api_key" = [], "bearer" = [])),
    request_body = DeactivateRequest,
    responses(
        (status = 204, description = "Deactivated; every session ended"),
        (status = 403, description = "current_password is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A brute-force limit is reached; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn deactivate_profile(
    State(state): State<AppState>,
    user: AuthUser,
    meta: ClientMeta,
    ApiJson(request): ApiJson<DeactivateRequest>,
) -> Result<impl IntoResponse> {
    credentials::reauthenticate(&state, &user, request.current_password, meta.ip).await?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    users::deactivate(&mut tx, user.user_id, now).await?;
    mfa::forget_pending(&mut tx, user.user_id).await?;
    let ended = sessions::end(
        &mut tx,
        &state,
        user.user_id,
        Which::All,
        EndReason::Deactivated,
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.user_id, "account deactivated");
    Ok(ended_response(&state, &ended))
}
