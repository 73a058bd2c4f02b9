//! The worker's configuration: `vars` and secrets from `wrangler.toml` and the dashboard.

use gatehouse_shared::token::Validation;
use worker::Env;

use crate::error::AppError;

/// Longest a revoked API key may keep working at the edge; the bound.
const MAX_API_KEY_CACHE_SECS: u64 = 60;

/// Everything the edge reads from its environment.
pub struct EdgeConfig {
    /// `ORIGIN_URL`, without a trailing slash.
    pub origin_url: String,
    /// `JWT_ISSUER` and `JWT_AUDIENCE`, as the origin issues them.
    pub validation: Validation,
    /// `ALLOWED_ORIGINS`, comma-separated; empty allows no cross-origin browser calls.
    pub allowed_origins: Vec<String>,
    /// `API_KEY_CACHE_TTL_SECS` (default 30, at most 60): how long a key's verdict is reused.
    pub api_key_cache_secs: u64,
    /// `JWKS_REFETCH_COOLDOWN_SECS` (default 30): least time between two fetches of the key set
    /// triggered by unknown key ids.
    pub jwks_refetch_cooldown_secs: u64,
    /// `ORIGIN_TIMEOUT_MS` (default 10000): how long to wait for the origin before a 504.
    pub origin_timeout_ms: u64,
    /// `EDGE_SECRET` (a secret): sent to the origin so it believes the client-IP header.
    pub edge_secret: Option<String>,
}

impl EdgeConfig {
    /// Reads the bindings; a missing or invalid one is a 500 naming it in the log only.
    pub fn from_env(env: &Env) -> Result<Self, AppError> {
        let text = |name: &'static str| -> Option<String> {
            env.var(name)
                .ok()
                .map(|value| value.to_string())
                .filter(|value| !value.trim().is_empty())
        };
        let required = |name: &'static str| text(name).ok_or(AppError::Config(name));
        let number = |name: &'static str, default: u64| -> Result<u64, AppError> {
            text(name).map_or(Ok(default), |value| {
                value.trim().parse().map_err(|_| AppError::Config(name))
            })
        };
        let origin_url = required("ORIGIN_URL")?.trim_end_matches('/').to_owned();
        let api_key_cache_secs = number("API_KEY_CACHE_TTL_SECS", 30)?;
        if api_key_cache_secs > MAX_API_KEY_CACHE_SECS {
            return Err(AppError::Config("API_KEY_CACHE_TTL_SECS"));
        }
        Ok(EdgeConfig {
            validation: Validation::new(required("JWT_ISSUER")?, required("JWT_AUDIENCE")?)
                .with_leeway(number("JWT_LEEWAY_SECS", 5)?),
            allowed_origins: text("ALLOWED_ORIGINS")
                .map(|list| {
                    list.split(',')
                        .map(|o| o.trim().to_owned())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            api_key_cache_secs,
            jwks_refetch_cooldown_secs: number("JWKS_REFETCH_COOLDOWN_SECS", 30)?,
            origin_timeout_ms: number("ORIGIN_TIMEOUT_MS", 10_000)?,
            edge_secret: env
                .secret("EDGE_SECRET")
                .ok()
                .map(|s| s.to_string())
                .or_else(|| text("EDGE_SECRET")),
            origin_url,
        })
    }
}
