//! The Gatehouse edge: a Cloudflare Worker in front of the origin.
//!
//! It answers what it can next to the user and forwards the rest:
//! - every `/auth/*` request must carry a valid `X-API-Key`, checked here ([`api_keys`]);
//! - `GET /auth/verify` is answered here from the token alone, with `gatehouse_shared`'s
//!   validation against the origin's published keys ([`jwks`]): no origin round trip;
//! - tokens of sessions the origin has ended are refused here too ([`revocations`]);
//! - routes that need a user are refused here when the token is missing or invalid;
//! - everything else is forwarded to `ORIGIN_URL` ([`proxy`]) with the client IP and a request id;
//! - CORS preflights are answered here ([`cors`]).
//!
//! Errors are RFC 9457 problem details, built in [`error`]; none escapes to the runtime.

mod api_keys;
mod cache;
mod config;
mod cors;
mod error;
mod jwks;
mod proxy;
mod revocations;

use gatehouse_shared::api::{API_KEY_HEADER, REQUEST_ID_HEADER, VerifiedUser, VerifyResponse};
use gatehouse_shared::token::{AccessClaims, TokenError};
use wasm_bindgen::prelude::wasm_bindgen;
use worker::{Context, Date, Env, Method, Request, Response, event};

use crate::config::EdgeConfig;
use crate::error::AppError;

/// Methods the API uses. The runtime's method type reads any other as GET, so the raw method is
/// checked first: `FOO /auth/verify` must not be answered as a verify.
const ALLOWED_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Routes that act for a signed-in user: a request without a valid token stops here. The session
/// routes are guarded ahead of the origin serving them.
const USER_ROUTES: &[&str] = &[
    "/auth/profile",
    "/auth/sessions",
    "/auth/logout",
    "/auth/password",
];

#[wasm_bindgen]
extern "C" {
    /// `crypto.randomUUID()`, available in every Workers isolate.
    #[wasm_bindgen(js_namespace = crypto, js_name = randomUUID)]
    fn random_uuid() -> String;
}

#[event(fetch)]
async fn fetch(request: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let request_id = request_id(&request);
    let origin = request.headers().get("origin").ok().flatten();
    let started = Date::now().as_millis();
    let method = request.method();
    let path = request.path();

    let (response, config) = match EdgeConfig::from_env(&env) {
        Ok(config) => (handle(request, &config, &request_id).await, Some(config)),
        Err(error) => (Err(error), None),
    };
    let mut response = response.unwrap_or_else(|error| error.into_response(&request_id));
    let headers = response.headers_mut();
    let _ = headers.set(REQUEST_ID_HEADER, &request_id);
    if let Some(config) = &config {
        cors::decorate(headers, origin.as_deref(), config);
    }
    worker::console_log!(
        "{}",
        serde_json::json!({
            "request_id": request_id,
            "method": method.to_string(),
            "path": path,
            "status": response.status_code(),
            "ms": Date::now().as_millis().saturating_sub(started),
        })
    );
    Ok(response)
}

/// The request id the edge and the origin log: Cloudflare's `cf-ray` when present, else a UUID.
/// A client-supplied `X-Request-Id` is not trusted, so logs cannot be forged to collide.
fn request_id(request: &Request) -> String {
    request
        .headers()
        .get("cf-ray")
        .ok()
        .flatten()
        .filter(|ray| {
            ray.len() <= 64 && ray.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .unwrap_or_else(random_uuid)
}

async fn handle(
    request: Request,
    config: &EdgeConfig,
    request_id: &str,
) -> Result<Response, AppError> {
    if !ALLOWED_METHODS.contains(&request.inner().method().as_str()) {
        return Err(AppError::MethodNotAllowed);
    }
    if request.method() == Method::Options
        && request.headers().has("access-control-request-method")?
    {
        return cors::preflight(&request, config);
    }
    let path = request.path();
    // The origin's routes for the edge itself: the edge secret it adds to what it forwards must
    // never open them to a client.
    if path == "/edge" || path.starts_with("/edge/") {
        return Err(AppError::NotFound);
    }
    if !path.starts_with("/auth/") {
        let mut response = proxy::forward(request, config, request_id).await?;
        revocations::learn_from(&mut response)?;
        return Ok(response);
    }

    // Before anything costs the origin a request, including the API-key lookup.
    throttle_credentials(&request, &path, config).await?;
    let key = request.headers().get(API_KEY_HEADER)?;
    api_keys::require_valid(key.as_deref(), config, request_id).await?;

    if path == "/auth/verify" && request.method() == Method::Get {
        let claims = authenticate(&request, config, request_id).await?;
        return verify_response(claims);
    }
    if USER_ROUTES
        .iter()
        .any(|route| path == *route || path.starts_with(&format!("{route}/")))
    {
        authenticate(&request, config, request_id).await?;
    }
    let mut response = proxy::forward(request, config, request_id).await?;
    // The origin names the sessions a request ended; refused here from now on.
    revocations::learn_from(&mut response)?;
    Ok(response)
}

/// Routes that run bcrypt: the expensive ones a flood targets. Refresh is not among them: it costs
/// one indexed lookup, and a whole office behind one address refreshes routinely.
const CREDENTIAL_ROUTES: &[(&str, &str)] = &[
    ("POST", "/auth/login"),
    ("POST", "/auth/register"),
    ("PUT", "/auth/password"),
];

/// Throttles credential routes per client address with the Workers rate-limiting binding, so a
/// flood from one address stops here. The origin keeps its own per-account limits in PostgreSQL;
/// these two layers answer different attacks (one address hammering versus one account guessed
/// from many).
async fn throttle_credentials(
    request: &Request,
    path: &str,
    config: &EdgeConfig,
) -> Result<(), AppError> {
    let method = request.inner().method();
    if !CREDENTIAL_ROUTES.contains(&(method.as_str(), path)) {
        return Ok(());
    }
    let Some(limiter) = &config.auth_rate_limiter else {
        return Ok(());
    };
    let ip = request
        .headers()
        .get("cf-connecting-ip")?
        .unwrap_or_default();
    // Counted per client block, as the origin counts it (see `client_block`).
    let client = ip
        .parse()
        .map_or(ip.clone(), gatehouse_shared::api::client_block);
    match limiter.limit(format!("ip:{client}")).await {
        Ok(outcome) if outcome.success => Ok(()),
        Ok(_) => Err(AppError::RateLimited),
        // The origin's own limits still apply; a limiter outage must not take logins down.
        Err(error) => {
            worker::console_error!("the rate limiter failed, letting the request through: {error}");
            Ok(())
        }
    }
}

/// Validates the bearer token against the origin's keys with the shared rules.
async fn authenticate(
    request: &Request,
    config: &EdgeConfig,
    request_id: &str,
) -> Result<AccessClaims, AppError> {
    let header = request.headers().get("authorization")?;
    let token = gatehouse_shared::api::bearer_token(header.as_deref().map(str::as_bytes))?;
    let now = (Date::now().as_millis() / 1000) as i64;
    let claims = jwks::validate(token, config, now, request_id).await?;
    revocations::check(claims.sid, now, config, request_id).await?;
    Ok(claims)
}

fn verify_response(claims: AccessClaims) -> Result<Response, AppError> {
    let expires_at = time::OffsetDateTime::from_unix_timestamp(claims.exp)
        .map_err(|_| AppError::InvalidToken(TokenError::InvalidClaims))?;
    let body = VerifyResponse {
        valid: true,
        user: VerifiedUser {
            id: claims.sub,
            email: claims.email,
        },
        expires_at,
    };
    let mut response = Response::from_json(&body)?;
    response.headers_mut().set("cache-control", "no-store")?;
    Ok(response)
}
