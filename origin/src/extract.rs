//! Request extractors: JSON bodies with our error shape, and the authenticated user.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, USER_AGENT};
use axum::http::request::Parts;
use gatehouse_shared::api::{CLIENT_IP_HEADER, EDGE_SECRET_HEADER};
use gatehouse_shared::token::AccessClaims;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::memory::Remembered;
use crate::sessions;

/// `axum::Json`, but rejections come back as problem details rather than plain text.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query`, with rejections as problem details (422).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `axum::extract::Path`, with rejections as problem details (404).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The user behind a valid bearer token whose session is live and whose account is active: from
/// memory when this instance has read it before and no notification has said otherwise since
/// (see [`crate::memory`]), else from the database.
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
        let token = gatehouse_shared::api::bearer_token(
            parts
                .headers
                .get(AUTHORIZATION)
                .map(|value| value.as_bytes()),
        )?;
        let now = state.clock.now();
        let claims = state.tokens.verify(token, now).map_err(|error| {
            state.metrics.verification(error.code());
            ApiError::InvalidToken(error)
        })?;
        // The header passed validation, so its kid is there.
        let kid = gatehouse_shared::token::key_id(token).map_err(ApiError::InvalidToken)?;
        let remembered = state.memory.session(claims.sid, claims.sub, &kid, now);
        if remembered == Remembered::Ended {
            state.metrics.verification("session_ended");
            return Err(ApiError::SessionEnded);
        }
        if remembered == Remembered::Unknown {
            let ticket = state.memory.ticket();
            let mut connection = state.db.acquire().await?;
            let live_until = sessions::live_until(
                &mut connection,
                &state.sessions,
                claims.sid,
                claims.sub,
                &kid,
                now,
            )
            .await?;
            drop(connection);
            let Some(until) = live_until else {
                state.metrics.verification("session_ended");
                return Err(ApiError::SessionEnded);
            };
            state
                .memory
                .remember_session(ticket, claims.sid, claims.sub, &kid, until);
        }
        state.metrics.verification("valid");
        Ok(AuthUser {
            user_id: claims.sub,
            session_id: claims.sid,
            claims,
        })
    }
}

/// Longest user agent kept with a session; the rest is cut (it is informational only).
const MAX_USER_AGENT_CHARS: usize = 512;

/// Where a request came from, as far as the origin can trust it.
#[derive(Debug, Clone)]
pub struct ClientMeta {
    /// The `User-Agent`, cut to a bounded length.
    pub user_agent: Option<String>,
    /// The client's address: the edge's `X-Gatehouse-Client-IP` when the request carries the
    /// edge secret, else the TCP peer. Anyone can send the header; only the edge knows the secret,
    /// so a client cannot choose the IP its session and rate limits are tied to.
    pub ip: Option<IpAddr>,
}

impl FromRequestParts<AppState> for ClientMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        let user_agent = header(USER_AGENT.as_str())
            .map(|agent| agent.chars().take(MAX_USER_AGENT_CHARS).collect());
        let from_edge = is_from_edge(&parts.headers, state.edge_secret.as_deref());
        let forwarded = header(CLIENT_IP_HEADER).and_then(|ip| ip.trim().parse().ok());
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        let ip = if from_edge { forwarded.or(peer) } else { peer };
        Ok(ClientMeta { user_agent, ip })
    }
}

/// Whether `headers` carry the edge secret, compared in constant time. With no secret
/// configured nothing comes from the edge.
pub fn is_from_edge(headers: &HeaderMap, edge_secret: Option<&str>) -> bool {
    match (edge_secret, headers.get(EDGE_SECRET_HEADER)) {
        (Some(secret), Some(presented)) => {
            subtle::ConstantTimeEq::ct_eq(secret.as_bytes(), presented.as_bytes()).into()
        }
        _ => false,
    }
}

/// A request proved to come from the Gatehouse edge; refused with 401 otherwise.
#[derive(Debug, Clone, Copy)]
pub struct FromEdge;

impl FromRequestParts<AppState> for FromEdge {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if is_from_edge(&parts.headers, state.edge_secret.as_deref()) {
            Ok(FromEdge)
        } else {
            Err(ApiError::NotFromEdge)
        }
    }
}
