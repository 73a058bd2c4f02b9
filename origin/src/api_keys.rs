//! API keys at the origin: the `X-API-Key` gate on `/auth/*`, and the create, list and revoke
//! operations behind the `api-key` subcommands.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use gatehouse_shared::api::API_KEY_HEADER;
use gatehouse_shared::api_key::ApiKey;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::AppState;
use crate::error::{ApiError, Result};

/// Middleware: lets a request through only with a well-formed, known, unrevoked key. The stored
/// hash (or its absence) is remembered until a notification says the key changed (see
/// [`crate::memory`]); the presented secret is compared with it on every request.
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response> {
    let key = request
        .headers()
        .get(API_KEY_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| ApiKey::parse(text).ok())
        .ok_or(ApiError::InvalidApiKey)?;
    let stored = match state.memory.api_key(key.id()) {
        Some(remembered) => remembered,
        None => {
            let ticket = state.memory.ticket();
            let mut connection = state.db.acquire().await?;
            let stored = sqlx::query_scalar!(
                "select secret_hash from api_keys where id = $1 and revoked_at is null",
                key.id(),
            )
            .fetch_optional(&mut *connection)
            .await?;
            drop(connection);
            state
                .memory
                .remember_api_key(ticket, key.id(), stored.clone());
            stored
        }
    };
    match stored {
        Some(hash) if key.matches(&hash) => Ok(next.run(request).await),
        _ => Err(ApiError::InvalidApiKey),
    }
}

/// One key as listed by `api-key list`; never includes the secret.
#[derive(Debug)]
pub struct ApiKeyRecord {
    /// The public id.
    pub id: String,
    /// What the key is for.
    pub name: String,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
}

/// Creates and stores a new key; the returned key is the only copy of its secret.
pub async fn create(pool: &PgPool, name: &str) -> Result<ApiKey, sqlx::Error> {
    let key = ApiKey::generate(&mut rand_core::OsRng);
    let secret_hash = key.secret_hash();
    sqlx::query!(
        "insert into api_keys (id, name, secret_hash) values ($1, $2, $3)",
        key.id(),
        name,
        secret_hash.as_slice(),
    )
    .execute(pool)
    .await?;
    Ok(key)
}

/// Every key, newest first.
pub async fn list(pool: &PgPool) -> Result<Vec<ApiKeyRecord>, sqlx::Error> {
    sqlx::query_as!(
        ApiKeyRecord,
        "select id, name, created_at, revoked_at from api_keys order by created_at desc"
    )
    .fetch_all(pool)
    .await
}

/// Revokes the key with this id (with or without the `gth_` prefix). False if there is no such
/// active key.
pub async fn revoke(pool: &PgPool, id: &str) -> Result<bool, sqlx::Error> {
    let id = id
        .strip_prefix(gatehouse_shared::api_key::PREFIX)
        .unwrap_or(id);
    let id = id.split('_').next().unwrap_or(id);
    let result = sqlx::query!(
        "update api_keys set revoked_at = now() where id = $1 and revoked_at is null",
        id,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}
