//! The worker's configuration: `vars` and secrets from `wrangler.toml` and the dashboard.

use gatehouse_shared::token::Validation;
use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use worker::{Env, RateLimiter};

use crate::error::AppError;

/// The rate-limiting bindings `wrangler.toml` declares, by name.
const AUTH_RATE_LIMITER: &str = "AUTH_RATE_LIMITER";
const AUTH_RATE_LIMITER_IPV6_56: &str = "AUTH_RATE_LIMITER_IPV6_56";
const AUTH_RATE_LIMITER_IPV6_48: &str = "AUTH_RATE_LIMITER_IPV6_48";
const API_KEY_MISS_LIMITER: &str = "API_KEY_MISS_LIMITER";

thread_local! {
    /// The limiters already warned about as missing, so the log says it once per isolate.
    static WARNED_NO_LIMITER: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

/// The rate-limiting bindings. Each is absent (with a warning in the log) when the deployment
/// has not declared it, and a limiter's failure lets requests through: the origin's limits stand
/// behind each.
pub struct Limiters {
    /// Credential routes per client block (an IPv4 address or an IPv6 /64).
    pub auth: Option<RateLimiter>,
    /// Credential routes per IPv6 /56; a binding's limit is fixed, so each size has its own.
    pub auth_ipv6_56: Option<RateLimiter>,
    /// Credential routes per IPv6 /48.
    pub auth_ipv6_48: Option<RateLimiter>,
    /// Lookups of API keys never seen valid, per client block.
    pub api_key_misses: Option<RateLimiter>,
}

impl Limiters {
    fn from_env(env: &Env) -> Self {
        let binding = |name: &'static str| {
            let limiter = env.rate_limiter(name).ok();
            if limiter.is_none() {
                WARNED_NO_LIMITER.with_borrow_mut(|warned| {
                    if !warned.contains(&name) {
                        warned.push(name);
                        worker::console_warn!(
                            "the {name} rate-limiting binding is missing: not limited at the edge"
                        );
                    }
                });
            }
            limiter
        };
        Limiters {
            auth: binding(AUTH_RATE_LIMITER),
            auth_ipv6_56: binding(AUTH_RATE_LIMITER_IPV6_56),
            auth_ipv6_48: binding(AUTH_RATE_LIMITER_IPV6_48),
            api_key_misses: binding(API_KEY_MISS_LIMITER),
        }
    }
}

/// Whether the edge may send its secrets to `origin_url`: over `https`, or plain `http` to this
/// machine only (development, tests). Anything else would put the edge secret and API keys on
/// the wire in clear.
fn origin_url_is_safe(origin_url: &str) -> bool {
    let Ok(url) = worker::Url::parse(origin_url) else {
        return false;
    };
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(worker::url::Host::Domain(domain)) => domain == "localhost",
            Some(worker::url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(worker::url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

/// Longest a revoked API key may keep working at the edge.
pub const MAX_API_KEY_CACHE_SECS: u64 = 60;

/// Longest origin timeout accepted: a minute is past any client's patience, and keeps the value
/// well inside the runtime timer's 32-bit range.
const MAX_ORIGIN_TIMEOUT_MS: u64 = 60_000;

/// Longest refetch cooldown accepted: an hour. 0 disables the cooldown (the tests use it).
const MAX_REFETCH_COOLDOWN_SECS: u64 = 3_600;

/// Longest revocation refresh interval accepted: a minute, which is then the revocation bound.
const MAX_REVOCATION_REFRESH_SECS: u64 = 60;

/// Longest a stale revocation list may be used while the origin is unreachable: an hour.
const MAX_REVOCATION_STALE_SECS: u64 = 3_600;

/// Largest verified-token cache accepted per isolate (about 300 bytes a token; an isolate has
/// 128 MB).
const MAX_TOKEN_CACHE_ENTRIES: u64 = 1_000_000;

/// Everything the edge reads from its environment.
pub struct EdgeConfig {
    /// `ORIGIN_URL`, without a trailing slash.
    pub origin_url: String,
    /// `JWT_ISSUER` and `JWT_AUDIENCE`, as the origin issues them, and `JWT_LEEWAY_SECS`.
    pub validation: Validation,
    /// `ALLOWED_ORIGINS`, comma-separated; empty allows no cross-origin browser calls.
    pub allowed_origins: Vec<String>,
    /// `API_KEY_CACHE_TTL_SECS` (default 30, at most 60): how long a key's verdict is reused.
    pub api_key_cache_secs: u64,
    /// `JWKS_REFETCH_COOLDOWN_SECS` (default 30, at most 3600): least time between two fetches
    /// of the key set triggered by unknown key ids.
    pub jwks_refetch_cooldown_secs: u64,
    /// `ORIGIN_TIMEOUT_MS` (default 10000, 1 to 60000): how long to wait for the origin.
    pub origin_timeout_ms: u64,
    /// `REVOCATION_REFRESH_SECS` (default 5, at most 60): how long the revocation list is used
    /// before the origin is asked again; the bound on revocations reaching this edge.
    pub revocation_refresh_secs: u64,
    /// `REVOCATION_MAX_STALE_SECS` (default 300, at most 3600): how long the last revocation list
    /// is used while the origin cannot be reached, before verification answers 503.
    pub revocation_max_stale_secs: u64,
    /// `SUCCESS_LOG_EVERY` (default 100; 1 logs every request, 0 no success): one successful
    /// request in this many is logged per isolate; every failure (status 400 and up) is.
    pub success_log_every: u64,
    /// `TOKEN_CACHE_ENTRIES` (default 4096, at most 1,000,000; 0 turns it off): tokens each
    /// isolate remembers as verified (see `gatehouse_shared::token_cache`).
    pub token_cache_entries: u64,
    /// The rate-limiting bindings, read on first use: most requests need none.
    limiters: OnceCell<Limiters>,
    /// Tags and checks what the edge keeps in the Cache API, keyed from `EDGE_SECRET`; derived on
    /// first use: a request answered from isolate memory never touches the Cache API.
    cache_tags: OnceCell<crate::cache::Tagger>,
    /// The bindings, for what is read on first use.
    env: Env,
    /// `EDGE_SECRET` (a secret, required): sent to the origin, which then believes the client-IP
    /// header and hands out its revocation list.
    pub edge_secret: String,
}

impl EdgeConfig {
    /// The rate-limiting bindings.
    pub fn limiters(&self) -> &Limiters {
        self.limiters.get_or_init(|| Limiters::from_env(&self.env))
    }

    /// The tagger of what the edge keeps in the Cache API.
    pub fn cache_tags(&self) -> &crate::cache::Tagger {
        self.cache_tags
            .get_or_init(|| crate::cache::Tagger::new(&self.edge_secret))
    }

    /// The configuration of this isolate: read from the bindings on its first request and kept,
    /// since a deployment's variables and secrets are fixed for the isolates that run it (a new
    /// deployment, or a changed secret, starts new isolates). Reading them costs a crossing into
    /// JavaScript per variable, which every request paid before.
    pub fn for_isolate(env: &Env) -> Result<Rc<Self>, AppError> {
        thread_local! {
            static CONFIG: OnceCell<Rc<EdgeConfig>> = const { OnceCell::new() };
        }
        if let Some(config) = CONFIG.with(|config| config.get().cloned()) {
            return Ok(config);
        }
        // An invalid configuration is not kept: each request reports it until it is fixed.
        let config = Rc::new(EdgeConfig::from_env(env)?);
        CONFIG.with(|held| {
            let _ = held.set(Rc::clone(&config));
        });
        Ok(config)
    }

    /// Reads the bindings; a missing or invalid one is a 500 naming it in the log only.
    pub fn from_env(env: &Env) -> Result<Self, AppError> {
        let text = |name: &'static str| -> Option<String> {
            env.var(name)
                .ok()
                .map(|value| value.to_string())
                .filter(|value| !value.trim().is_empty())
        };
        let required = |name: &'static str| text(name).ok_or(AppError::Config(name));
        let number = |name: &'static str, default: u64, max: u64| -> Result<u64, AppError> {
            let value = text(name).map_or(Ok(default), |value| {
                value.trim().parse().map_err(|_| AppError::Config(name))
            })?;
            if value > max {
                return Err(AppError::Config(name));
            }
            Ok(value)
        };
        let origin_timeout_ms = number("ORIGIN_TIMEOUT_MS", 10_000, MAX_ORIGIN_TIMEOUT_MS)?;
        if origin_timeout_ms == 0 {
            return Err(AppError::Config("ORIGIN_TIMEOUT_MS"));
        }
        // Required: without it the origin refuses the revocation list, so the edge could not
        // vouch for any token, and would record its own address as every client's.
        let edge_secret = env
            .secret("EDGE_SECRET")
            .ok()
            .map(|secret| secret.to_string())
            .or_else(|| text("EDGE_SECRET"))
            .ok_or(AppError::Config("EDGE_SECRET"))?;
        let origin_url = required("ORIGIN_URL")?.trim_end_matches('/').to_owned();
        if !origin_url_is_safe(&origin_url) {
            return Err(AppError::Config("ORIGIN_URL"));
        }
        Ok(EdgeConfig {
            limiters: OnceCell::new(),
            cache_tags: OnceCell::new(),
            env: env.clone(),
            origin_url,
            validation: Validation::new(required("JWT_ISSUER")?, required("JWT_AUDIENCE")?)
                .with_leeway(number("JWT_LEEWAY_SECS", 5, 30)?),
            allowed_origins: text("ALLOWED_ORIGINS")
                .map(|list| {
                    list.split(',')
                        .map(|origin| origin.trim().to_owned())
                        .filter(|origin| !origin.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            api_key_cache_secs: number("API_KEY_CACHE_TTL_SECS", 30, MAX_API_KEY_CACHE_SECS)?,
            jwks_refetch_cooldown_secs: number(
                "JWKS_REFETCH_COOLDOWN_SECS",
                30,
                MAX_REFETCH_COOLDOWN_SECS,
            )?,
            origin_timeout_ms,
            revocation_refresh_secs: number(
                "REVOCATION_REFRESH_SECS",
                5,
                MAX_REVOCATION_REFRESH_SECS,
            )?,
            revocation_max_stale_secs: number(
                "REVOCATION_MAX_STALE_SECS",
                300,
                MAX_REVOCATION_STALE_SECS,
            )?,
            token_cache_entries: number("TOKEN_CACHE_ENTRIES", 4_096, MAX_TOKEN_CACHE_ENTRIES)?,
            success_log_every: number("SUCCESS_LOG_EVERY", 100, u64::MAX)?,
            edge_secret,
        })
    }
}
