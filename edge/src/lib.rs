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
mod reply;
mod revocations;
pub mod routes;

use std::net::IpAddr;

use gatehouse_shared::api::{API_KEY_HEADER, BlockSize, REQUEST_ID_HEADER, VerifyResponse};
use gatehouse_shared::assurance::Requirement;
use gatehouse_shared::token::{AccessClaims, TokenError};
use wasm_bindgen::JsValue;
use wasm_bindgen::prelude::wasm_bindgen;
use worker::worker_sys::web_sys;
use worker::{Env, Headers, Request};

use crate::config::EdgeConfig;
use crate::error::AppError;
use crate::reply::{Answer, Reply};
use crate::routes::Gate;

#[wasm_bindgen]
extern "C" {
    /// `crypto.randomUUID()`, available in every Workers isolate.
    #[wasm_bindgen(js_namespace = crypto, js_name = randomUUID)]
    pub(crate) fn random_uuid() -> String;
}

/// What every route reads of a request, read from the runtime once.
///
/// The entry point takes the runtime's own request instead of `worker::Request`, whose
/// conversion also materialises `request.cf`, Cloudflare's object of about thirty properties
/// (geolocation, TLS, bot scores) that the edge never reads: a V8 profile of the preflight put
/// 8 % of the isolate's time in that getter. A forwarded request is converted when it is sent.
pub(crate) struct Incoming {
    raw: web_sys::Request,
    headers: Headers,
    method: String,
    url: String,
    path: String,
}

impl Incoming {
    fn new(raw: web_sys::Request) -> Self {
        let url = raw.url();
        Incoming {
            headers: Headers(raw.headers()),
            method: raw.method(),
            path: path_of(&url).to_owned(),
            url,
            raw,
        }
    }

    pub(crate) fn header(&self, name: &str) -> Result<Option<String>, AppError> {
        Ok(self.headers.get(name)?)
    }

    /// The request for the worker crate's API, to forward it.
    fn into_request(self) -> Request {
        Request::from(self.raw)
    }
}

/// The path of a URL as the runtime serialises it (WHATWG URL: scheme, `://`, the host, then a
/// path that starts with `/` and in which `?` and `#` are percent-encoded), without parsing it.
fn path_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    let rest = &url[after_scheme..];
    let Some(start) = rest
        .find(['/', '?', '#'])
        .filter(|&at| rest[at..].starts_with('/'))
    else {
        return "/";
    };
    let path = &rest[start..];
    &path[..path.find(['?', '#']).unwrap_or(path.len())]
}

/// Milliseconds since the Unix epoch: `Date.now()`, one call into JavaScript (the worker crate's
/// `Date::now()` makes a `Date` object and asks it, two).
pub(crate) fn now_millis() -> u64 {
    js_sys::Date::now() as u64
}

/// The fetch handler (the worker crate's `#[event(fetch)]` without its conversions).
///
/// What needs no I/O (a preflight, a path or method the table refuses, a bad configuration) is
/// answered before returning, as a `Response`; the rest returns a `Promise`. The runtime takes
/// either, and the first skips wrapping the work in a future, scheduling it as a microtask and
/// settling a promise, all crossings into JavaScript.
#[wasm_bindgen]
pub fn fetch(request: web_sys::Request, env: Env, _ctx: worker::worker_sys::Context) -> JsValue {
    let request = Incoming::new(request);
    let exchange = Exchange::new(&request);
    let config = match EdgeConfig::for_isolate(&env) {
        Ok(config) => config,
        Err(error) => return exchange.finish(Err(error), None).into(),
    };
    match route(&request, exchange.origin.as_deref(), &config) {
        // Unwind-safe as the worker crate's macro asserts it: a panic ends the isolate's instance.
        Ok(Routed::Handle(route)) => {
            js_sys::futures::future_to_promise(std::panic::AssertUnwindSafe(async move {
                let reply = handle(request, route, &config, &exchange.request_id).await;
                Ok(exchange.finish(reply, Some(&config)).into())
            }))
            .into()
        }
        Ok(Routed::Preflight(answer)) => exchange
            .finish(Ok(Reply::Preflight(answer)), Some(&config))
            .into(),
        Err(error) => exchange.finish(Err(error), Some(&config)).into(),
    }
}

/// What answering a request needs of it after the request itself is handed on: the request id,
/// the browser origin for CORS, and the method, path and start for the log line.
struct Exchange {
    request_id: String,
    origin: Option<String>,
    method: String,
    path: String,
    started: u64,
}

impl Exchange {
    fn new(request: &Incoming) -> Self {
        Exchange {
            request_id: request_id(request),
            origin: request.header("origin").ok().flatten(),
            method: request.method.clone(),
            path: request.path.clone(),
            started: now_millis(),
        }
    }

    /// The response sent: the reply or the error's problem, with the request id and CORS
    /// headers, logged when it failed or is the sampled success.
    fn finish(
        self,
        reply: Result<Reply, AppError>,
        config: Option<&EdgeConfig>,
    ) -> web_sys::Response {
        let mut reply =
            reply.unwrap_or_else(|error| Reply::Answer(error.into_answer(&self.request_id)));
        match config {
            Some(config) => {
                cors::decorate(&mut reply, self.origin.as_deref(), &self.request_id, config)
            }
            None => reply.set_headers(&[(REQUEST_ID_HEADER, &self.request_id)]),
        }
        // Every failure is logged; successes one in `SUCCESS_LOG_EVERY` (under `wrangler dev` the
        // line cost more CPU than the rest of a cheap request, and in production it is billed
        // CPU).
        let status = reply.status();
        let every = config.map_or(1, |config| config.success_log_every);
        if status >= 400 || sampled(every) {
            worker::console_log!(
                "{}",
                serde_json::json!({
                    "request_id": self.request_id,
                    "method": self.method,
                    "path": self.path,
                    "status": status,
                    "ms": now_millis().saturating_sub(self.started),
                })
            );
        }
        reply.into_response()
    }
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
fn request_id(request: &Incoming) -> String {
    let ray = request.header("cf-ray").ok().flatten();
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

/// Where the route table sends a request.
enum Routed {
    /// A preflight, answered already.
    Preflight(Answer),
    /// To [`handle`] on this route: answered here after checks that may wait, or forwarded.
    Handle(&'static routes::Route),
}

/// The checks that need no I/O: preflights, the path's form, the route table.
fn route(
    request: &Incoming,
    origin: Option<&str>,
    config: &EdgeConfig,
) -> Result<Routed, AppError> {
    let (method, path) = (request.method.as_str(), request.path.as_str());
    if method == "OPTIONS" && request.headers.has("access-control-request-method")? {
        return cors::preflight(origin, path, config).map(Routed::Preflight);
    }
    if !routes::is_canonical(path) {
        return Err(AppError::NonCanonicalPath);
    }
    routes::classify(method, path).map(Routed::Handle)
}

/// A routed request: throttled, its API key and token checked, then answered here or forwarded.
async fn handle(
    request: Incoming,
    route: &routes::Route,
    config: &EdgeConfig,
    request_id: &str,
) -> Result<Reply, AppError> {
    let client = client_ip(&request)?;
    // Before anything costs the origin a request, including the API-key lookup.
    if route.throttled {
        throttle_credentials(client.as_ref(), config).await?;
    }
    if route.gate != Gate::Open {
        let key = request.header(API_KEY_HEADER)?;
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
        if route.answered_here && request.method == "GET" {
            return verify_response(&request, claims).map(Reply::Answer);
        }
    }
    let mut response = proxy::forward(request.into_request(), config, request_id).await?;
    // The origin names the sessions a request ended; refused here from now on.
    revocations::learn_from(&mut response)?;
    Ok(Reply::Forwarded(response))
}

/// The client's address, as Cloudflare reports it; `None` when absent or unreadable (never in
/// production, where Cloudflare always sets it).
fn client_ip(request: &Incoming) -> Result<Option<IpAddr>, AppError> {
    let header = request.header("cf-connecting-ip")?;
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
    request: &Incoming,
    config: &EdgeConfig,
    request_id: &str,
) -> Result<AccessClaims, AppError> {
    let header = request.header("authorization")?;
    let token = gatehouse_shared::api::bearer_token(header.as_deref().map(str::as_bytes))?;
    let now = (now_millis() / 1000) as i64;
    let claims = jwks::validate(token, config, now, request_id).await?;
    // The header passed validation, so its kid is there.
    let kid = gatehouse_shared::token::key_id(token).map_err(AppError::InvalidToken)?;
    revocations::check(claims.sid, &kid, now, config, request_id).await?;
    Ok(claims)
}

/// `GET /auth/verify`'s answer, with RFC 9470's `acr_values` and `max_age` judged here by the
/// origin's rule (`gatehouse_shared::assurance::Requirement`), so a step-up demand costs no
/// origin request either.
fn verify_response(request: &Incoming, claims: AccessClaims) -> Result<Answer, AppError> {
    let requirement = step_up_requirement(request)?;
    if !requirement.is_none() {
        let now = (now_millis() / 1000) as i64;
        requirement
            .check(&claims, now)
            .map_err(|short| AppError::InsufficientAuthentication(Box::new(short)))?;
    }
    let body = VerifyResponse::from_claims(claims)
        .ok_or(AppError::InvalidToken(TokenError::InvalidClaims))?;
    let body = serde_json::to_string(&body).map_err(|error| AppError::Internal(error.into()))?;
    Ok(Answer::with_body(200, "application/json", body).header("cache-control", "no-store"))
}

/// The `acr_values` and `max_age` query parameters, form-decoded (`aal1+aal2` is two values).
fn step_up_requirement(request: &Incoming) -> Result<Requirement, AppError> {
    // Most checks carry no query: the URL is parsed only when one does (this is the edge's
    // hottest route).
    if !request.url.contains('?') {
        return Ok(Requirement::none());
    }
    // The runtime's URL always parses; a failure would be ours (500), not the client's.
    let url = worker::Url::parse(&request.url).map_err(|error| AppError::Internal(error.into()))?;
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
    use super::{path_of, trusted_ray};

    #[test]
    fn the_path_is_what_follows_the_host_up_to_a_query_or_fragment() {
        for (url, path) in [
            ("https://auth.example.com/auth/verify", "/auth/verify"),
            (
                "https://auth.example.com/auth/verify?max_age=60",
                "/auth/verify",
            ),
            ("https://auth.example.com/a/b#part", "/a/b"),
            ("http://127.0.0.1:8787/", "/"),
            ("http://127.0.0.1:8787", "/"),
            ("https://h.example?q=/x", "/"),
            ("https://h.example#/x", "/"),
            ("https://h.example/%3F?q=/x", "/%3F"),
        ] {
            assert_eq!(path_of(url), path, "{url}");
        }
    }

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
