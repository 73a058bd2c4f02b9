//! The Gatehouse edge: a Cloudflare Worker in front of the origin.
//!
//! It answers what it can next to the user and forwards the rest, route by route as the table in
//! [`routes`] says (a path it does not list is 404 here, a method it does not list 405):
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
pub mod routes;

use std::net::IpAddr;

use gatehouse_shared::api::{API_KEY_HEADER, BlockSize, REQUEST_ID_HEADER, VerifyResponse};
use gatehouse_shared::assurance::Requirement;
use gatehouse_shared::token::{AccessClaims, TokenError};
use wasm_bindgen::prelude::wasm_bindgen;
use worker::{Context, Date, Env, Request, Response, event};

use crate::config::EdgeConfig;
use crate::error::AppError;
use crate::routes::Gate;

#[wasm_bindgen(inline_js = r#"
export function set_header_lines(headers, lines) {
  const parts = lines.split("\n");
  for (let i = 0; i + 1 < parts.length; i += 2) headers.set(parts[i], parts[i + 1]);
}"#)]
extern "C" {
    fn set_header_lines(headers: &worker::worker_sys::web_sys::Headers, lines: &str);
}

/// Sets every `(name, value)` of `pairs` on `headers` in one call into JavaScript instead of one
/// per header: each crossing costs string conversions both ways, and a response sets up to eight.
/// Names and values cannot hold a newline (RFC 9110 section 5.5), so newlines separate them.
pub(crate) fn set_headers(headers: &worker::Headers, pairs: &[(&str, &str)]) {
    let mut lines = String::new();
    for (name, value) in pairs {
        debug_assert!(!name.contains('\n') && !value.contains('\n'));
        lines.push_str(name);
        lines.push('\n');
        lines.push_str(value);
        lines.push('\n');
    }
    set_header_lines(&headers.0, &lines);
}

#[wasm_bindgen]
extern "C" {
    /// `crypto.randomUUID()`, available in every Workers isolate.
    #[wasm_bindgen(js_namespace = crypto, js_name = randomUUID)]
    pub(crate) fn random_uuid() -> String;
}

#[event(fetch)]
async fn fetch(request: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let request_id = request_id(&request);
    let origin = request.headers().get("origin").ok().flatten();
    let started = Date::now().as_millis();
    let method = request.method();
    let path = request.path();

    let (response, config) = match EdgeConfig::for_isolate(&env) {
        Ok(config) => (handle(request, &config, &request_id).await, Some(config)),
        Err(error) => (Err(error), None),
    };
    let mut response = response.unwrap_or_else(|error| error.into_response(&request_id));
    let headers = response.headers_mut();
    match &config {
        Some(config) => cors::decorate(headers, origin.as_deref(), &request_id, config),
        None => set_headers(headers, &[(REQUEST_ID_HEADER, &request_id)]),
    }
    // Every failure is logged; successes one in `SUCCESS_LOG_EVERY` (under `wrangler dev` the
    // line cost more CPU than the rest of a cheap request, and in production it is billed CPU).
    let status = response.status_code();
    let every = config.as_ref().map_or(1, |config| config.success_log_every);
    if status >= 400 || sampled(every) {
        worker::console_log!(
            "{}",
            serde_json::json!({
                "request_id": request_id,
                "method": method.to_string(),
                "path": path,
                "status": status,
                "ms": Date::now().as_millis().saturating_sub(started),
            })
        );
    }
    Ok(response)
}

/// Whether this success is the one in `every` that is logged (0: none).
fn sampled(every: u64) -> bool {
    thread_local! {
        static SUCCESSES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    every != 0
        && SUCCESSES.with(|count| {
            let next = count.get().wrapping_add(1);
            count.set(next);
            next % every == 0
        })
}

/// The request id the edge and the origin log: Cloudflare's `cf-ray` when present, else a UUID.
/// A client-supplied `X-Request-Id` is not trusted, so logs cannot be forged to collide.
fn request_id(request: &Request) -> String {
    let ray = request.headers().get("cf-ray").ok().flatten();
    trusted_ray(ray).unwrap_or_else(random_uuid)
}

/// `cf-ray` as a request id, when it looks like one: short, letters, digits and dashes only, so
/// that it cannot break a log line or a header.
fn trusted_ray(ray: Option<String>) -> Option<String> {
    ray.filter(|ray| {
        !ray.is_empty()
            && ray.len() <= 64
            && ray.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

async fn handle(
    request: Request,
    config: &EdgeConfig,
    request_id: &str,
) -> Result<Response, AppError> {
    let path = request.path();
    let method = request.inner().method();
    if method == "OPTIONS" && request.headers().has("access-control-request-method")? {
        return cors::preflight(&request, &path, config);
    }
    if !routes::is_canonical(&path) {
        return Err(AppError::NonCanonicalPath);
    }
    let route = routes::classify(&method, &path)?;

    let client = client_ip(&request)?;
    // Before anything costs the origin a request, including the API-key lookup.
    if route.throttled {
        throttle_credentials(client.as_ref(), config).await?;
    }
    if route.gate != Gate::Open {
        let key = request.headers().get(API_KEY_HEADER)?;
        // Key misses are counted per IPv4 address or IPv6 /48 (the widest block counted
        // anywhere): a client with a valid key rarely misses, and a /48 holds 65,536 /64s.
        let miss_block = client
            .and_then(|ip| gatehouse_shared::api::client_blocks(ip).pop())
            .map(|(_, block)| block)
            .unwrap_or_default();
        api_keys::require_valid(key.as_deref(), &miss_block, config, request_id).await?;
    }
    if route.gate == Gate::User {
        let claims = authenticate(&request, config, request_id).await?;
        if route.answered_here && method == "GET" {
            return verify_response(&request, claims);
        }
    }
    let mut response = proxy::forward(request, config, request_id).await?;
    // The origin names the sessions a request ended; refused here from now on.
    revocations::learn_from(&mut response)?;
    Ok(response)
}

/// The client's address, as Cloudflare reports it; `None` when absent or unreadable (never in
/// production, where Cloudflare always sets it).
fn client_ip(request: &Request) -> Result<Option<IpAddr>, AppError> {
    let header = request.headers().get("cf-connecting-ip")?;
    Ok(header.and_then(|ip| ip.trim().parse().ok()))
}

/// Throttles a credential route ([`routes::Route::throttled`]) per client with the Workers
/// rate-limiting bindings, so a flood from one address stops here: per client block, and for
/// IPv6 also per /56 and /48, each with its own binding (a binding's limit is fixed), counted in
/// the blocks the origin counts (`gatehouse_shared::api::client_blocks`). The origin keeps its own
/// limits in PostgreSQL; these layers answer different attacks (one address hammering versus one
/// account guessed from many).
async fn throttle_credentials(
    client: Option<&IpAddr>,
    config: &EdgeConfig,
) -> Result<(), AppError> {
    let limiters = config.limiters();
    let blocks = match client {
        Some(ip) => gatehouse_shared::api::client_blocks(*ip),
        None => vec![(BlockSize::Client, String::new())],
    };
    for (size, block) in blocks {
        let limiter = match size {
            BlockSize::Client => &limiters.auth,
            BlockSize::Ipv6Slash56 => &limiters.auth_ipv6_56,
            BlockSize::Ipv6Slash48 => &limiters.auth_ipv6_48,
        };
        let Some(limiter) = limiter else {
            continue;
        };
        match limiter.limit(format!("ip:{block}")).await {
            Ok(outcome) if outcome.success => {}
            Ok(_) => return Err(AppError::RateLimited),
            // The origin's own limits still apply; a limiter outage must not take logins down.
            Err(error) => {
                worker::console_error!(
                    "the rate limiter failed, letting the request through: {error}"
                );
            }
        }
    }
    Ok(())
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
    // The header passed validation, so its kid is there.
    let kid = gatehouse_shared::token::key_id(token).map_err(AppError::InvalidToken)?;
    revocations::check(claims.sid, &kid, now, config, request_id).await?;
    Ok(claims)
}

/// `GET /auth/verify`'s answer, with RFC 9470's `acr_values` and `max_age` judged here by the
/// origin's rule (`gatehouse_shared::assurance::Requirement`), so a step-up demand costs no
/// origin request either.
fn verify_response(request: &Request, claims: AccessClaims) -> Result<Response, AppError> {
    let requirement = step_up_requirement(request)?;
    if !requirement.is_none() {
        let now = (Date::now().as_millis() / 1000) as i64;
        requirement
            .check(&claims, now)
            .map_err(|short| AppError::InsufficientAuthentication(Box::new(short)))?;
    }
    let body = VerifyResponse::from_claims(claims)
        .ok_or(AppError::InvalidToken(TokenError::InvalidClaims))?;
    let mut response = Response::from_json(&body)?;
    response.headers_mut().set("cache-control", "no-store")?;
    Ok(response)
}

/// The `acr_values` and `max_age` query parameters, form-decoded (`aal1+aal2` is two values).
fn step_up_requirement(request: &Request) -> Result<Requirement, AppError> {
    // Most checks carry no query: the URL is parsed only when one does (this is the edge's
    // hottest route).
    if !request.inner().url().contains('?') {
        return Ok(Requirement::none());
    }
    let url = request.url()?;
    let (mut acr_values, mut max_age) = (None, None);
    for (name, value) in url.query_pairs() {
        match &*name {
            "acr_values" => acr_values = Some(value.into_owned()),
            "max_age" => max_age = Some(value.into_owned()),
            _ => {}
        }
    }
    Requirement::parse(acr_values.as_deref(), max_age.as_deref())
        .map_err(|_| AppError::InvalidQuery)
}

#[cfg(test)]
mod tests {
    use super::trusted_ray;

    #[test]
    fn a_cf_ray_is_the_request_id_when_it_looks_like_one() {
        let ray = "8f1c2a3b4c5d6e7f-AMS".to_owned();
        assert_eq!(trusted_ray(Some(ray.clone())), Some(ray));
    }

    #[test]
    fn a_cf_ray_that_could_break_a_log_line_or_a_header_is_not_used() {
        for ray in ["", "a b", "id\nforged: 1", "id\"}", &"a".repeat(65)] {
            assert_eq!(trusted_ray(Some(ray.to_owned())), None, "{ray:?}");
        }
        assert_eq!(trusted_ray(None), None);
    }
}
