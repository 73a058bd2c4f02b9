//! Registration, login, token verification and the profile: everything under `/auth`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use gatehouse_shared::api::{
    FieldError, LoginRequest, Problem, RegisterRequest, TOKEN_TYPE, TokenResponse,
    UpdateProfileRequest, UserProfile, VerifiedUser, VerifyResponse,
};
use gatehouse_shared::input::{check_email, check_name, check_password, normalize_email};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, Result, invalid_field, on_constraint};
use crate::extract::{ApiJson, AuthUser, ClientMeta};
use crate::sessions::{self, EndReason, Grant, Which};
use crate::throttle::{self, Counters};

/// The `/auth/*` routes; the API-key gate is layered on in [`crate::app`].
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/register", post(register_user))
        .route("/auth/login", post(login_user))
        .route("/auth/verify", get(verify_token))
        .route("/auth/api-key", get(check_api_key))
        .route(
            "/auth/profile",
            get(get_profile)
                .patch(update_profile)
                .delete(deactivate_profile),
        )
        .merge(super::sessions::router())
}

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: Uuid,
    email: String,
    password_hash: String,
    first_name: Option<String>,
    last_name: Option<String>,
    is_active: bool,
    created_at: OffsetDateTime,
}

impl From<UserRow> for UserProfile {
    fn from(row: UserRow) -> Self {
        UserProfile {
            id: row.id,
            email: row.email,
            first_name: row.first_name,
            last_name: row.last_name,
            is_active: row.is_active,
            created_at: row.created_at,
        }
    }
}

pub(crate) const USER_COLUMNS: &str =
    "id, email, password_hash, first_name, last_name, is_active, created_at";

/// `POST /auth/register`: creates the account and its first session.
#[utoipa::path(
    post, path = "/auth/register", tag = "auth", security(("api_key" = [])),
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account and first session created", body = TokenResponse),
        (status = 409, description = "The email address has an account", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn register_user(
    State(state): State<AppState>,
    meta: ClientMeta,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<TokenResponse>)> {
    let email = normalize_email(&request.email).to_owned();
    let first_name = normalize_name(request.first_name);
    let last_name = normalize_name(request.last_name);
    let mut errors = Vec::new();
    push_error(&mut errors, "email", check_email(&email));
    push_error(&mut errors, "password", check_password(&request.password));
    for (field, value) in [("first_name", &first_name), ("last_name", &last_name)] {
        if let Some(name) = value {
            push_error(&mut errors, field, check_name(name));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }

    // Hash before touching the database: no pooled connection waits on bcrypt.
    let password_hash = state.hasher.hash(request.password).await?;

    let user_id = Uuid::now_v7();
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let user: UserRow = sqlx::query_as(&format!(
        "insert into users (id, email, password_hash, first_name, last_name)
         values ($1, $2, $3, $4, $5) returning {USER_COLUMNS}"
    ))
    .bind(user_id)
    .bind(&email)
    .bind(&password_hash)
    .bind(&first_name)
    .bind(&last_name)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        on_constraint(e, |name| {
            (name == "users_email_key").then_some(ApiError::EmailTaken)
        })
    })?;
    let grant = sessions::begin(&mut tx, &state.sessions, user.id, &meta, now).await?;
    tx.commit().await?;

    tracing::info!(user_id = %user.id, "user registered");
    Ok((
        StatusCode::CREATED,
        Json(token_response(&state, user, grant, now)),
    ))
}

/// `POST /auth/login`: one answer for a wrong password, an unknown email and a deactivated
/// account, at the same cost (OWASP Authentication Cheat Sheet, "Authentication and Error
/// Messages").
#[utoipa::path(
    post, path = "/auth/login", tag = "auth", security(("api_key" = [])),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A new session", body = TokenResponse),
        (status = 401, description = "Wrong email or password, a deactivated account, or a bad X-API-Key", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A brute-force limit is reached; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn login_user(
    State(state): State<AppState>,
    meta: ClientMeta,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>> {
    let outcome = check_login(&state, meta, request).await;
    state.metrics.login(match &outcome {
        Ok(_) => "success",
        Err(ApiError::InvalidCredentials) => "invalid_credentials",
        Err(ApiError::RateLimited { .. }) => "rate_limited",
        Err(ApiError::Overloaded) => "shed",
        Err(ApiError::Validation(_)) => "invalid_request",
        Err(ApiError::DatabaseUnavailable(_)) => "database_unavailable",
        Err(_) => "error",
    });
    outcome
}

async fn check_login(
    state: &AppState,
    meta: ClientMeta,
    request: LoginRequest,
) -> Result<Json<TokenResponse>> {
    let email = normalize_email(&request.email);
    // Registration applied the same rule, so an address failing it has no account; refusing it
    // here reveals nothing and keeps bytes PostgreSQL rejects (NUL) away from the query.
    if let Err(message) = check_email(email) {
        return Err(invalid_field("email", message));
    }
    if request.password.len() > gatehouse_shared::input::MAX_PASSWORD_BYTES {
        // No stored password can be this long, so refusing says nothing about the account.
        return Err(invalid_field("password", "must be at most 72 bytes"));
    }

    let now = state.clock.now();
    let (counters, user): (Counters, Option<UserRow>) = {
        let mut connection = state.db.acquire().await?;
        let counters =
            Counters::for_check(&mut connection, &state.login_limits, email, meta.ip).await?;
        // Counted before the password is checked: concurrent guesses cannot all pass a limit.
        throttle::reserve(&mut connection, &state.login_limits, &counters, now).await?;
        let user = sqlx::query_as(&format!(
            "select {USER_COLUMNS} from users where lower(email) = lower($1)"
        ))
        .bind(email)
        .fetch_optional(&mut *connection)
        .await?;
        (counters, user)
    };

    let password = request.password;
    let stored = user.as_ref().map(|user| user.password_hash.clone());
    let verified = state.hasher.verify(password.clone(), stored).await?;
    let Some(mut user) = user.filter(|user| verified && user.is_active) else {
        tracing::info!("login refused");
        return Err(ApiError::InvalidCredentials);
    };
    throttle::give_back(&state.db, &counters, now).await;

    if state.hasher.needs_rehash(&user.password_hash) {
        // The cost was raised (or lowered) since this hash was made; OWASP Password Storage
        // Cheat Sheet, "Upgrading the work factor".
        // Best effort: the password is verified, so a busy hashing pool or database must not fail
        // the login; the next login tries again.
        match rehash(state, user.id, &user.password_hash, password).await {
            Ok(Some(upgraded)) => {
                tracing::info!(user_id = %user.id, cost = state.hasher.cost(), "password rehashed");
                user.password_hash = upgraded;
            }
            // The hash changed meanwhile; the check below refuses the login.
            Ok(None) => {}
            Err(error) => tracing::warn!(user_id = %user.id, %error, "password rehash postponed"),
        }
    }

    let mut tx = state.db.begin().await?;
    // The hash verified above must still be the account's: a password change or deactivation
    // that committed while bcrypt ran would otherwise be outlived by this new session. The share
    // lock makes a concurrent change wait for this transaction, or this one see its result.
    let current: Option<(String, bool)> =
        sqlx::query_as("select password_hash, is_active from users where id = $1 for share")
            .bind(user.id)
            .fetch_optional(&mut *tx)
            .await?;
    if current != Some((user.password_hash.clone(), true)) {
        tracing::info!(user_id = %user.id, "login refused: the account changed during the check");
        return Err(ApiError::InvalidCredentials);
    }
    let grant = sessions::begin(&mut tx, &state.sessions, user.id, &meta, now).await?;
    tx.commit().await?;

    tracing::info!(user_id = %user.id, "login succeeded");
    Ok(Json(token_response(state, user, grant, now)))
}

/// Replaces `old_hash` with a hash at the configured cost; `None` when the stored hash was no
/// longer `old_hash`.
async fn rehash(
    state: &AppState,
    user_id: Uuid,
    old_hash: &str,
    password: String,
) -> Result<Option<String>> {
    let upgraded = state.hasher.hash(password).await?;
    let mut connection = state.db.acquire().await?;
    let replaced = sqlx::query(
        "update users set password_hash = $2, updated_at = now() where id = $1 and password_hash = $3",
    )
    .bind(user_id)
    .bind(&upgraded)
    .bind(old_hash)
    .execute(&mut *connection)
    .await?
    .rows_affected();
    Ok((replaced == 1).then_some(upgraded))
}

/// `GET /auth/verify`: the token is valid, its session live, its account active.
#[utoipa::path(
    get, path = "/auth/verify", tag = "auth", security(("api_key" = [], "bearer" = [])),
    responses((status = 200, description = "The token is valid and its session live", body = VerifyResponse))
)]
pub(crate) async fn verify_token(user: AuthUser) -> Result<Json<VerifyResponse>> {
    let expires_at = OffsetDateTime::from_unix_timestamp(user.claims.exp)
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Json(VerifyResponse {
        valid: true,
        user: VerifiedUser {
            id: user.user_id,
            email: user.claims.email,
        },
        expires_at,
    }))
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
    let row: UserRow = sqlx::query_as(&format!("select {USER_COLUMNS} from users where id = $1"))
        .bind(user.user_id)
        .fetch_one(&mut *connection)
        .await?;
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
    let row: UserRow = sqlx::query_as(&format!(
        "update users set
           first_name = case when $2 then $3 else first_name end,
           last_name = case when $4 then $5 else last_name end,
           updated_at = now()
         where id = $1 returning {USER_COLUMNS}"
    ))
    .bind(user.user_id)
    .bind(first_name.is_some())
    .bind(first_name.flatten())
    .bind(last_name.is_some())
    .bind(last_name.flatten())
    .fetch_one(&mut *connection)
    .await?;
    Ok(Json(row.into()))
}

/// `DELETE /auth/profile`: deactivates the account and ends all its sessions in one
/// transaction, so its tokens stop working at the origin at once and reach the edge's
/// revocation list.
#[utoipa::path(
    delete, path = "/auth/profile", tag = "profile", security(("api_key" = [], "bearer" = [])),
    responses((status = 204, description = "Deactivated; every session ended"))
)]
pub(crate) async fn deactivate_profile(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<impl IntoResponse> {
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    sqlx::query("update users set is_active = false, updated_at = now() where id = $1")
        .bind(user.user_id)
        .execute(&mut *tx)
        .await?;
    let ended = sessions::end(
        &mut tx,
        &state.sessions,
        user.user_id,
        Which::All,
        EndReason::Deactivated,
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.user_id, "account deactivated");
    Ok(super::sessions::ended_response(&state, &ended, now))
}

/// The token response for `user` in the session `grant` describes, at `now`.
pub(crate) fn token_response(
    state: &AppState,
    user: UserRow,
    grant: Grant,
    now: OffsetDateTime,
) -> TokenResponse {
    let issued = state.tokens.issue(
        user.id,
        &user.email,
        grant.session_id,
        now,
        grant.expires_at,
    );
    TokenResponse {
        access_token: issued.token,
        token_type: TOKEN_TYPE.into(),
        expires_in: issued.expires_in,
        refresh_token: grant.refresh_token.expose().to_owned(),
        session_id: grant.session_id,
        user: user.into(),
    }
}

/// Names are trimmed; an empty name is no name.
fn normalize_name(name: Option<String>) -> Option<String> {
    name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty())
}

pub(crate) fn push_error(
    errors: &mut Vec<FieldError>,
    field: &str,
    outcome: std::result::Result<(), &str>,
) {
    if let Err(message) = outcome {
        errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}
