//! Request extractors: JSON bodies with our error shape, and the authenticated user.

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use gatehouse_shared::token::AccessClaims;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

/// `axum::Json`, but rejections come back as problem details rather than plain text.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// The user behind a valid bearer token whose session is live and whose account is active.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The user's id (`sub`).
    pub user_id: Uuid,
    /// The session (`sid`).
    pub session_id: Uuid,
    /// The verified claims.
    pub claims: AccessClaims,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts)?;
        let claims = state
            .tokens
            .verify(token, state.clock.now())
            .map_err(ApiError::InvalidToken)?;
        // The signature proves who issued the token; only the database knows whether the session
        // was ended or the account deactivated since.
        let mut connection = state.db.acquire().await?;
        let live: bool = sqlx::query_scalar(
            "select exists (select 1 from sessions s join users u on u.id = s.user_id
              where s.id = $1 and s.user_id = $2 and s.revoked_at is null and u.is_active)",
        )
        .bind(claims.sid)
        .bind(claims.sub)
        .fetch_one(&mut *connection)
        .await?;
        if !live {
            return Err(ApiError::SessionEnded);
        }
        Ok(AuthUser {
            user_id: claims.sub,
            session_id: claims.sid,
            claims,
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header (RFC 6750 section 2.1; the scheme is
/// case-insensitive per RFC 9110 section 11.1).
fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or(ApiError::MissingToken)?
        .to_str()
        .map_err(|_| ApiError::InvalidToken(gatehouse_shared::token::TokenError::Malformed))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::InvalidToken(
            gatehouse_shared::token::TokenError::Malformed,
        )),
    }
}
