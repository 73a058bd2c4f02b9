//! Configuration from environment variables. Every variable, its default and its meaning is
//! listed in the README; a missing or invalid value stops start-up with a message naming it.

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use gatehouse_shared::signing::{TokenSigner, public_key_from_pem};
use gatehouse_shared::token::MAX_LEEWAY_SECS;
use gatehouse_shared::{ExposeSecret, SecretString};

use crate::db::PoolSettings;
use crate::mail::MailConfig;
use crate::memory::ListenOn;
use crate::password_policy;
use crate::server_secret::{MIN_SECRET_BYTES, ServerKeys};
use crate::sessions::SessionPolicy;
use crate::throttle::LoginLimits;
use crate::users::AccountPolicy;

/// Whether the process may take shortcuts meant for a developer's machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Every secret must be configured.
    Production,
    /// A missing signing key is replaced by an ephemeral one, with a warning.
    Development,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub name: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(name: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            name,
            reason: reason.into(),
        }
    }
}

/// Where the signing key came from.
#[derive(Debug)]
pub enum SigningKeySource {
    /// Loaded from `JWT_SIGNING_KEY` or `JWT_SIGNING_KEY_FILE`.
    Configured(TokenSigner),
    /// Generated at start-up in development mode; tokens die with the process.
    Ephemeral(TokenSigner),
    /// `SIGNING_KEYS=database`: kept in PostgreSQL, shared by every instance, rotated by
    /// `gatehouse-origin key rotate` or on a schedule (see [`crate::signing_keys`]). `loaded` is
    /// filled by [`crate::signing_keys::load_into`] before the state is built.
    Database {
        settings: StoredKeySettings,
        loaded: Option<crate::signing_keys::LoadedKeys>,
    },
}

/// How instances follow signing keys kept in PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub struct StoredKeySettings {
    /// `SIGNING_KEY_REFRESH_SECS`: how often each instance re-reads the keys.
    pub refresh: Duration,
    /// `SIGNING_KEY_ROTATE_DAYS`: rotate when the newest key is this old; `None` (0) rotates
    /// only on `gatehouse-origin key rotate`.
    pub rotate_every: Option<Duration>,
}

/// Longest signing-key refresh interval accepted: an hour.
const SIGNING_KEY_REFRESH_SECS: RangeInclusive<u64> = 1..=3_600;

/// Everything the origin reads from its environment. The database URL (which may carry a
/// password) and the edge secret are [`SecretString`]s, so `Debug` shows neither.
#[derive(Debug)]
pub struct Config {
    /// `GATEHOUSE_ENV`.
    pub environment: Environment,
    /// `LISTEN_ADDR`.
    pub listen_addr: SocketAddr,
    /// `SHUTDOWN_GRACE_SECS`: how long requests in flight may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// `METRICS_LISTEN_ADDR` (`off` disables): where `/metrics` is served, apart from the API.
    pub metrics_listen_addr: Option<SocketAddr>,
    /// `DATABASE_URL`.
    pub database_url: SecretString,
    /// `DATABASE_MAX_CONNECTIONS`, `DATABASE_ACQUIRE_TIMEOUT_SECS`, `DATABASE_TEST_BEFORE_ACQUIRE`.
    pub database: PoolSettings,
    /// `LISTEN_DATABASE_URL`: where change notifications are listened for (default: the pool's
    /// server; `off`: nothing is remembered, every check reads the database).
    pub listen_on: ListenOn,
    /// `TOKEN_CACHE_ENTRIES`: tokens remembered as verified (0: none).
    pub token_cache_entries: usize,
    /// `PASSWORD_HASH_ROUNDS`: the bcrypt cost.
    pub password_hash_rounds: u32,
    /// `HASH_WORKERS`: threads in the hashing pool.
    pub hash_workers: usize,
    /// `HASH_QUEUE_LIMIT`: hashes allowed to wait before requests are shed with 503.
    pub hash_queue_limit: usize,
    /// `JWT_ISSUER`.
    pub issuer: String,
    /// `JWT_AUDIENCE`.
    pub audience: String,
    /// `ACCESS_TOKEN_TTL_SECS`.
    pub access_token_ttl: Duration,
    /// `JWT_LEEWAY_SECS`.
    pub leeway_secs: u64,
    /// `JWT_SIGNING_KEY` or `JWT_SIGNING_KEY_FILE`.
    pub signing_key: SigningKeySource,
    /// `JWT_PREVIOUS_KEY` or `JWT_PREVIOUS_KEY_FILE`: still verified and published after a rotation.
    pub previous_key: Option<ed25519_dalek::VerifyingKey>,
    /// `JWKS_MAX_AGE_SECS`.
    pub jwks_max_age: Duration,
    /// `BODY_LIMIT_BYTES`.
    pub body_limit_bytes: usize,
    /// `LOGIN_LIMIT_WINDOW_SECS`, `LOGIN_LIMIT_PER_ACCOUNT`, `LOGIN_LIMIT_PER_ACCOUNT_AND_IP`,
    /// `LOGIN_LIMIT_PER_IP`, `REGISTER_LIMIT_PER_IP`, `MFA_LIMIT_PER_ACCOUNT`,
    /// `CLIENT_LIMIT_IPV6_56_FACTOR`, `CLIENT_LIMIT_IPV6_48_FACTOR`.
    pub login_limits: LoginLimits,
    /// `SESSION_IDLE_TIMEOUT_SECS`, `SESSION_MAX_LIFETIME_SECS`, `REFRESH_REUSE_WINDOW_SECS`,
    /// `REFRESH_LIMIT_PER_SESSION`.
    pub sessions: SessionPolicy,
    /// `EDGE_SECRET` or `EDGE_SECRET_FILE`: proves a request came through the edge, whose
    /// client-IP header is then believed.
    pub edge_secret: Option<SecretString>,
    /// `SERVER_SECRET` or `SERVER_SECRET_FILE`: the root of every server-side key.
    pub server_keys: ServerKeys,
    /// `MAIL_ENABLED` and the mail settings; `None` when mail is disabled.
    pub mail: Option<MailConfig>,
    /// `ACCOUNT_ERASE_AFTER_SECS`, `UNVERIFIED_ACCOUNT_TTL_SECS`, `REQUIRE_VERIFIED_EMAIL`.
    pub accounts: AccountPolicy,
    /// `PASSWORD_MIN_SCORE`: the zxcvbn score, 0 to 4, a new password must reach.
    pub password_min_score: u8,
    /// `TOTP_ISSUER`: the service name authenticator apps show beside a TOTP code.
    pub totp_issuer: String,
    /// `WEBAUTHN_RP_ID` and `WEBAUTHN_ORIGINS`; `None` (passkeys off) when unset in production.
    pub webauthn: Option<WebauthnConfig>,
}

/// The WebAuthn relying party: its id (a registrable domain) and the origins of the pages that
/// run ceremonies (WebAuthn Level 3 sections 5.1.3 and 13.4.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebauthnConfig {
    /// `WEBAUTHN_RP_ID`, e.g. `example.com`.
    pub rp_id: String,
    /// `WEBAUTHN_ORIGINS`, e.g. `https://app.example.com`; each must be on the RP id's domain.
    pub origins: Vec<webauthn_rs::prelude::Url>,
}

/// Default bcrypt cost: OWASP's floor for bcrypt is 10; 12 costs about a quarter second here.
pub const DEFAULT_HASH_ROUNDS: u32 = 12;

/// bcrypt costs accepted. bcrypt itself allows 4 to 31, but each step doubles the time: 18 is
/// about 13 s per login here, past any sensible login latency; the cap catches typos.
const HASH_ROUNDS: RangeInclusive<u32> = 4..=18;

/// Below this cost a warning is logged: fine for tests, too cheap for real passwords.
const MIN_RECOMMENDED_HASH_ROUNDS: u32 = 10;

/// Every secret value that appears, or has appeared, in the Gatehouse repository (test and
/// development values): a production origin refuses them, since anyone can read them. A test
/// walks the tree and fails on a secret value missing from this list; values that only the
/// history holds are added by hand when they leave the tree.
pub const PUBLISHED_SECRETS: &[&str] = &[
    // wrangler.toml's `local` environment and `cargo xtask dev`, before each run made its own.
    "local-development-edge-secret-not-for-production",
    // The test suite's (tests/src/lib.rs).
    "test-edge-secret-0123456789abcdef0123456789",
    "test-server-secret-0123456789abcdef0123456789",
    // The configuration tests' SERVER_SECRET until each run made its own.
    "0123456789abcdef0123456789abcdef",
];

/// Refuses, in production, a secret `value` read from `variable` that is published.
fn refuse_published(
    variable: &'static str,
    value: &str,
    environment: Environment,
) -> Result<(), ConfigError> {
    if environment == Environment::Production && PUBLISHED_SECRETS.contains(&value.trim()) {
        return Err(ConfigError::new(
            variable,
            "is a value published in the Gatehouse repository; make your own with \
             `openssl rand -hex 32`",
        ));
    }
    Ok(())
}

/// Default time requests in flight get after SIGTERM: 25 s, inside Kubernetes' default 30 s
/// before it kills the container, with room for the process to exit cleanly.
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 25;

/// Shutdown grace accepted: up to 10 minutes (a longer drain is an orchestrator setting).
const SHUTDOWN_GRACE_SECS: RangeInclusive<u64> = 1..=600;

/// Shortest edge secret accepted: 32 characters of a random string is beyond guessing.
const MIN_EDGE_SECRET_BYTES: usize = 32;

/// Longest wait between two delivery attempts of one mail: up to an hour, so a mail delayed by
/// an outage goes out within the hour after it ends.
const MAIL_RETRY_MAX_SECS: RangeInclusive<u64> = 1..=3_600;

/// Account retention periods accepted: an hour to a year. Under an hour an unverified account
/// could be gone before its verification mail arrives.
const RETENTION_SECS: RangeInclusive<u64> = 3_600..=365 * 86_400;

/// Default time before a deactivated account is erased: 30 days, to undo a mistake or a hijack.
const DEFAULT_ERASE_AFTER_SECS: u64 = 30 * 86_400;

/// Default lifetime of a never-verified account: 7 days, several times the link's 24 hours.
const DEFAULT_UNVERIFIED_TTL_SECS: u64 = 7 * 86_400;

/// Access-token lifetimes accepted: up to a day. Access tokens are meant to be short-lived
/// (RFC 9700 section 4.14); longer sessions are what refresh tokens are for.
const ACCESS_TOKEN_TTL_SECS: RangeInclusive<u64> = 1..=86_400;

/// Clock leeway accepted when checking token times: the ceiling `shared` enforces.
const LEEWAY_SECS: RangeInclusive<u64> = 0..=MAX_LEEWAY_SECS;

/// Reuse windows accepted: up to a minute. The window only has to cover two requests racing
/// from one client; every second more is a second in which a stolen, spent token still works.
const REFRESH_REUSE_WINDOW_SECS: RangeInclusive<u64> = 0..=60;

/// Session limits accepted: up to a year. Beyond it a session is no longer a session, and the
/// time arithmetic stays far from overflow.
const SESSION_SECS: RangeInclusive<u64> = 1..=365 * 86_400;

/// Default idle timeout of a session: a week without a refresh (OWASP ASVS 5.0 7.3.1 leaves the
/// value to the application's risk assessment; a week suits a "stay signed in" consumer app).
const DEFAULT_SESSION_IDLE_SECS: u64 = 7 * 86_400;

/// Default absolute lifetime of a session: 30 days, then the user signs in again (ASVS 7.3.2).
const DEFAULT_SESSION_MAX_LIFETIME_SECS: u64 = 30 * 86_400;

/// Brute-force windows accepted: up to a day.
const LOGIN_WINDOW_SECS: RangeInclusive<u64> = 1..=86_400;

/// OWASP ASVS 5.0 6.3.1's ceiling on failed attempts per account and hour; more logs a warning.
const MAX_FAILED_LOGINS_PER_HOUR: u64 = 100;

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let environment = match env.get("GATEHOUSE_ENV").as_deref() {
            None | Some("production") => Environment::Production,
            Some("development") => Environment::Development,
            Some(_) => {
                return Err(ConfigError::new(
                    "GATEHOUSE_ENV",
                    "must be production or development",
                ));
            }
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);

        let stored_keys = match env.get("SIGNING_KEYS").as_deref().map(str::trim) {
            None | Some("environment") => false,
            Some("database") => true,
            Some(_) => {
                return Err(ConfigError::new(
                    "SIGNING_KEYS",
                    "must be environment (JWT_SIGNING_KEY) or database (keys in PostgreSQL)",
                ));
            }
        };
        let signing_key = match env.secret("JWT_SIGNING_KEY", "JWT_SIGNING_KEY_FILE")? {
            Some((_, source)) if stored_keys => {
                return Err(ConfigError::new(
                    source,
                    "must be unset while SIGNING_KEYS=database (the keys are in PostgreSQL)",
                ));
            }
            None if stored_keys => SigningKeySource::Database {
                settings: StoredKeySettings {
                    refresh: Duration::from_secs(env.bounded(
                        "SIGNING_KEY_REFRESH_SECS",
                        60,
                        SIGNING_KEY_REFRESH_SECS,
                    )?),
                    rotate_every: match env.parse("SIGNING_KEY_ROTATE_DAYS", 0u64)? {
                        0 => None,
                        days => Some(Duration::from_secs(days.saturating_mul(86_400))),
                    },
                },
                loaded: None,
            },
            Some((pem, source)) => SigningKeySource::Configured(
                TokenSigner::from_pkcs8_pem(&pem)
                    .map_err(|e| ConfigError::new(source, e.to_string()))?,
            ),
            None if environment == Environment::Development => {
                SigningKeySource::Ephemeral(TokenSigner::generate(&mut rand_core::OsRng))
            }
            None => {
                return Err(ConfigError::new(
                    "JWT_SIGNING_KEY",
                    "required (or JWT_SIGNING_KEY_FILE; or SIGNING_KEYS=database); create one \
                     with `gatehouse-origin keygen`",
                ));
            }
        };
        let previous_key = env
            .secret("JWT_PREVIOUS_KEY", "JWT_PREVIOUS_KEY_FILE")?
            .map(|(pem, source)| {
                public_key_from_pem(&pem).map_err(|e| ConfigError::new(source, e.to_string()))
            })
            .transpose()?;
        if stored_keys && previous_key.is_some() {
            return Err(ConfigError::new(
                "JWT_PREVIOUS_KEY",
                "must be unset while SIGNING_KEYS=database (retired keys stay in PostgreSQL)",
            ));
        }

        let password_hash_rounds =
            env.bounded("PASSWORD_HASH_ROUNDS", DEFAULT_HASH_ROUNDS, HASH_ROUNDS)?;
        if password_hash_rounds < MIN_RECOMMENDED_HASH_ROUNDS {
            tracing::warn!(
                password_hash_rounds,
                "bcrypt cost below 10 is too weak for real passwords"
            );
        }

        let config = Config {
            environment,
            listen_addr: env.parse("LISTEN_ADDR", SocketAddr::from(([0, 0, 0, 0], 8007)))?,
            shutdown_grace: Duration::from_secs(env.bounded(
                "SHUTDOWN_GRACE_SECS",
                DEFAULT_SHUTDOWN_GRACE_SECS,
                SHUTDOWN_GRACE_SECS,
            )?),
            metrics_listen_addr: match env.get("METRICS_LISTEN_ADDR").as_deref().map(str::trim) {
                Some("off") => None,
                _ => Some(env.parse(
                    "METRICS_LISTEN_ADDR",
                    SocketAddr::from(([127, 0, 0, 1], 9007)),
                )?),
            },
            database_url: env
                .get("DATABASE_URL")
                .ok_or_else(|| {
                    ConfigError::new(
                        "DATABASE_URL",
                        "required, e.g. postgres://user:pass@host/gatehouse",
                    )
                })?
                .into(),
            database: read_pool(&env)?,
            listen_on: read_listen_on(&env)?,
            token_cache_entries: env.bounded(
                "TOKEN_CACHE_ENTRIES",
                DEFAULT_TOKEN_CACHE_ENTRIES,
                TOKEN_CACHE_ENTRIES,
            )?,
            password_hash_rounds,
            hash_workers: env.positive("HASH_WORKERS", cores)?,
            hash_queue_limit: env.positive("HASH_QUEUE_LIMIT", 128)?,
            issuer: env.non_empty("JWT_ISSUER", "gatehouse")?,
            audience: env.non_empty("JWT_AUDIENCE", "gatehouse")?,
            access_token_ttl: Duration::from_secs(env.bounded(
                "ACCESS_TOKEN_TTL_SECS",
                900,
                ACCESS_TOKEN_TTL_SECS,
            )?),
            leeway_secs: env.bounded("JWT_LEEWAY_SECS", 5, LEEWAY_SECS)?,
            signing_key,
            previous_key,
            jwks_max_age: Duration::from_secs(env.parse("JWKS_MAX_AGE_SECS", 300)?),
            body_limit_bytes: env.positive("BODY_LIMIT_BYTES", 16 * 1024)?,
            login_limits: read_login_limits(&env)?,
            sessions: read_sessions(&env)?,
            edge_secret: env
                .secret("EDGE_SECRET", "EDGE_SECRET_FILE")?
                .map(|(secret, _)| secret.trim().into()),
            server_keys: read_server_keys(&env, environment)?,
            mail: read_mail(&env, environment)?,
            accounts: read_accounts(&env)?,
            password_min_score: env.bounded(
                "PASSWORD_MIN_SCORE",
                password_policy::DEFAULT_MIN_SCORE,
                0..=4,
            )?,
            totp_issuer: env
                .get("TOTP_ISSUER")
                .map_or_else(|| "Gatehouse".to_owned(), |name| name.trim().to_owned()),
            webauthn: read_webauthn(&env, environment)?,
        };
        if config.accounts.require_verified_email && config.mail.is_none() {
            return Err(ConfigError::new(
                "REQUIRE_VERIFIED_EMAIL",
                "needs mail to verify addresses, but MAIL_ENABLED is false",
            ));
        }
        if let Some(secret) = &config.edge_secret {
            if secret.expose_secret().len() < MIN_EDGE_SECRET_BYTES {
                return Err(ConfigError::new(
                    "EDGE_SECRET",
                    format!("must be at least {MIN_EDGE_SECRET_BYTES} characters"),
                ));
            }
            refuse_published("EDGE_SECRET", secret.expose_secret(), config.environment)?;
        }
        Ok(config)
    }
}

/// Default verified-token cache: 16,384 tokens, about 5 MB; a token is checked again by its
/// holder every request for up to 15 minutes, so this covers that many concurrently active users.
const DEFAULT_TOKEN_CACHE_ENTRIES: usize = 16_384;

/// Verified-token cache sizes accepted (each entry is about 300 bytes).
const TOKEN_CACHE_ENTRIES: RangeInclusive<usize> = 0..=10_000_000;

/// `LISTEN_DATABASE_URL`: unset listens through the pool's server, `off` remembers nothing.
fn read_listen_on(env: &Env) -> Result<ListenOn, ConfigError> {
    match env.get("LISTEN_DATABASE_URL").as_deref().map(str::trim) {
        None => Ok(ListenOn::Pool),
        Some("off") => Ok(ListenOn::Off),
        Some(url) => {
            url.parse::<sqlx::postgres::PgConnectOptions>()
                .map_err(|_| {
                    ConfigError::new(
                        "LISTEN_DATABASE_URL",
                        "must be a PostgreSQL URL (postgres://...) or off",
                    )
                })?;
            Ok(ListenOn::Url(url.into()))
        }
    }
}

/// The keys derived from the root secret. Development without one gets a random secret: links
/// queued in the outbox then die with the process.
fn read_server_keys(env: &Env, environment: Environment) -> Result<ServerKeys, ConfigError> {
    match env.secret("SERVER_SECRET", "SERVER_SECRET_FILE")? {
        Some((secret, source)) => {
            let secret = secret.trim();
            refuse_published(source, secret, environment)?;
            if secret.len() < MIN_SECRET_BYTES {
                return Err(ConfigError::new(
                    source,
                    format!(
                        "must be at least {MIN_SECRET_BYTES} bytes, e.g. `openssl rand -hex 32`"
                    ),
                ));
            }
            Ok(ServerKeys::new(secret.as_bytes()))
        }
        None if environment == Environment::Development => {
            tracing::warn!(
                "DEVELOPMENT MODE: SERVER_SECRET is not set, so a random one is used; mail links \
                 queued now cannot be sent after a restart"
            );
            Ok(ServerKeys::random())
        }
        None => Err(ConfigError::new(
            "SERVER_SECRET",
            format!(
                "required (or SERVER_SECRET_FILE), at least {MIN_SECRET_BYTES} bytes, e.g. `openssl rand -hex 32`"
            ),
        )),
    }
}

/// Mail, unless `MAIL_ENABLED` is false. Production names each missing setting; development
/// defaults to a local SMTP server such as the one `cargo xtask dev` starts.
/// The passkey relying party. Development defaults to `localhost` and `http://localhost:3000`;
/// production runs without passkeys until both are set.
fn read_webauthn(
    env: &Env,
    environment: Environment,
) -> Result<Option<WebauthnConfig>, ConfigError> {
    let (rp_id, origins) = match (env.get("WEBAUTHN_RP_ID"), env.get("WEBAUTHN_ORIGINS")) {
        (Some(rp_id), Some(origins)) => (rp_id, origins),
        (None, None) if environment == Environment::Development => {
            ("localhost".to_owned(), "http://localhost:3000".to_owned())
        }
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(ConfigError::new(
                "WEBAUTHN_ORIGINS",
                "is required with WEBAUTHN_RP_ID",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "WEBAUTHN_RP_ID",
                "is required with WEBAUTHN_ORIGINS",
            ));
        }
    };
    let rp_id = rp_id.trim().to_ascii_lowercase();
    let mut parsed = Vec::new();
    for origin in origins.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let url = webauthn_rs::prelude::Url::parse(origin)
            .map_err(|_| ConfigError::new("WEBAUTHN_ORIGINS", format!("{origin} is not a URL")))?;
        let on_domain = url
            .domain()
            .is_some_and(|domain| domain == rp_id || domain.ends_with(&format!(".{rp_id}")));
        if !on_domain {
            return Err(ConfigError::new(
                "WEBAUTHN_ORIGINS",
                format!("{origin} is not on WEBAUTHN_RP_ID's domain {rp_id}"),
            ));
        }
        parsed.push(url);
    }
    if parsed.is_empty() {
        return Err(ConfigError::new("WEBAUTHN_ORIGINS", "names no origin"));
    }
    Ok(Some(WebauthnConfig {
        rp_id,
        origins: parsed,
    }))
}

fn read_mail(env: &Env, environment: Environment) -> Result<Option<MailConfig>, ConfigError> {
    if !env.parse("MAIL_ENABLED", true)? {
        return Ok(None);
    }
    let required = |name: &'static str, development: &str| match env.get(name) {
        Some(value) => Ok(value.trim().to_owned()),
        None if environment == Environment::Development => Ok(development.to_owned()),
        None => Err(ConfigError::new(
            name,
            "required while MAIL_ENABLED is true (set MAIL_ENABLED=false to run without mail)",
        )),
    };
    let smtp_url = required("SMTP_URL", "smtp://127.0.0.1:1025")?;
    if !(smtp_url.starts_with("smtp://") || smtp_url.starts_with("smtps://")) {
        return Err(ConfigError::new(
            "SMTP_URL",
            "must be an smtp:// or smtps:// URL",
        ));
    }
    let from = required("MAIL_FROM", "Gatehouse <gatehouse@localhost>")?;
    let from = from.parse().map_err(|_| {
        ConfigError::new(
            "MAIL_FROM",
            "must be an address, or a name and an address: Gatehouse <no-reply@example.com>",
        )
    })?;
    let link_base_url = required("MAIL_LINK_BASE_URL", "http://localhost:3000")?;
    if !(link_base_url.starts_with("https://") || link_base_url.starts_with("http://")) {
        return Err(ConfigError::new(
            "MAIL_LINK_BASE_URL",
            "must be an http:// or https:// URL",
        ));
    }
    Ok(Some(MailConfig {
        smtp_url: smtp_url.into(),
        from,
        link_base_url: link_base_url.trim_end_matches('/').to_owned(),
        limit_per_address: env.positive("MAIL_LIMIT_PER_ADDRESS", 3)?,
        limit_per_ip: env.positive("MAIL_LIMIT_PER_IP", 30)?,
        retry_max: Duration::from_secs(env.bounded(
            "MAIL_RETRY_MAX_SECS",
            300,
            MAIL_RETRY_MAX_SECS,
        )?),
    }))
}

/// Erasure of deactivated and never-verified accounts, and whether sign-in waits for a verified
/// address.
fn read_accounts(env: &Env) -> Result<AccountPolicy, ConfigError> {
    Ok(AccountPolicy {
        erase_after: Duration::from_secs(env.bounded(
            "ACCOUNT_ERASE_AFTER_SECS",
            DEFAULT_ERASE_AFTER_SECS,
            RETENTION_SECS,
        )?),
        unverified_ttl: Duration::from_secs(env.bounded(
            "UNVERIFIED_ACCOUNT_TTL_SECS",
            DEFAULT_UNVERIFIED_TTL_SECS,
            RETENTION_SECS,
        )?),
        require_verified_email: env.parse("REQUIRE_VERIFIED_EMAIL", false)?,
    })
}

/// The database pool: its size, how long a request may wait for a connection, and whether
/// connections are checked before use.
fn read_pool(env: &Env) -> Result<PoolSettings, ConfigError> {
    Ok(PoolSettings {
        max_connections: env.positive("DATABASE_MAX_CONNECTIONS", 15)?,
        acquire_timeout: Duration::from_secs(env.positive("DATABASE_ACQUIRE_TIMEOUT_SECS", 30)?),
        test_before_acquire: env.parse("DATABASE_TEST_BEFORE_ACQUIRE", true)?,
    })
}

/// Session lifetimes, the refresh-token reuse window and the refresh limit.
fn read_sessions(env: &Env) -> Result<SessionPolicy, ConfigError> {
    let policy = SessionPolicy {
        idle_timeout: Duration::from_secs(env.bounded(
            "SESSION_IDLE_TIMEOUT_SECS",
            DEFAULT_SESSION_IDLE_SECS,
            SESSION_SECS,
        )?),
        max_lifetime: Duration::from_secs(env.bounded(
            "SESSION_MAX_LIFETIME_SECS",
            DEFAULT_SESSION_MAX_LIFETIME_SECS,
            SESSION_SECS,
        )?),
        reuse_window: Duration::from_secs(env.bounded(
            "REFRESH_REUSE_WINDOW_SECS",
            10,
            REFRESH_REUSE_WINDOW_SECS,
        )?),
        refresh_limit: env.positive("REFRESH_LIMIT_PER_SESSION", 30)?,
    };
    if policy.idle_timeout > policy.max_lifetime {
        return Err(ConfigError::new(
            "SESSION_IDLE_TIMEOUT_SECS",
            "must not exceed SESSION_MAX_LIFETIME_SECS",
        ));
    }
    Ok(policy)
}

/// The brute-force limits on password checks.
fn read_login_limits(env: &Env) -> Result<LoginLimits, ConfigError> {
    let limits = LoginLimits {
        window: Duration::from_secs(env.bounded(
            "LOGIN_LIMIT_WINDOW_SECS",
            900,
            LOGIN_WINDOW_SECS,
        )?),
        per_account: env.positive("LOGIN_LIMIT_PER_ACCOUNT", 20)?,
        per_account_and_ip: env.positive("LOGIN_LIMIT_PER_ACCOUNT_AND_IP", 10)?,
        per_ip: env.positive("LOGIN_LIMIT_PER_IP", 100)?,
        register_per_ip: env.positive("REGISTER_LIMIT_PER_IP", 20)?,
        mfa_per_account: env.positive("MFA_LIMIT_PER_ACCOUNT", 10)?,
        ipv6_56_factor: env.positive("CLIENT_LIMIT_IPV6_56_FACTOR", 4)?,
        ipv6_48_factor: env.positive("CLIENT_LIMIT_IPV6_48_FACTOR", 16)?,
    };
    // Fixed windows: any hour overlaps at most ceil(3600 / window) + 1 of them.
    let per_hour = u64::from(limits.per_account) * (3600_u64.div_ceil(limits.window.as_secs()) + 1);
    if per_hour > MAX_FAILED_LOGINS_PER_HOUR {
        tracing::warn!(
            per_hour,
            "LOGIN_LIMIT_PER_ACCOUNT and LOGIN_LIMIT_WINDOW_SECS allow more than \
             {MAX_FAILED_LOGINS_PER_HOUR} failed logins per account per hour (OWASP ASVS 5.0 6.3.1)"
        );
    }
    Ok(limits)
}

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    /// A set, non-blank variable.
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|value| !value.trim().is_empty())
    }

    fn parse<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(value) => value
                .trim()
                .parse()
                .map_err(|e| ConfigError::new(name, format!("invalid value: {e}"))),
        }
    }

    fn positive<T: FromStr + PartialOrd + Default>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, ConfigError>
    where
        T::Err: Display,
    {
        let value = self.parse(name, default)?;
        if value <= T::default() {
            return Err(ConfigError::new(name, "must be greater than zero"));
        }
        Ok(value)
    }

    /// A number that must lie in `range`; the refusal names the range.
    fn bounded<T>(
        &self,
        name: &'static str,
        default: T,
        range: RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display,
        T::Err: Display,
    {
        let value = self.parse(name, default)?;
        if !range.contains(&value) {
            return Err(ConfigError::new(
                name,
                format!("must be between {} and {}", range.start(), range.end()),
            ));
        }
        Ok(value)
    }

    fn non_empty(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        Ok(self.get(name).unwrap_or_else(|| default.to_owned()))
    }

    /// A secret given inline in `name` or as a path in `file_name` (the container convention
    /// for mounted secrets), with the variable it came from. Setting both is refused as
    /// ambiguous.
    fn secret(
        &self,
        name: &'static str,
        file_name: &'static str,
    ) -> Result<Option<(String, &'static str)>, ConfigError> {
        match (self.get(name), self.get(file_name)) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                name,
                format!("set either {name} or {file_name}, not both"),
            )),
            (Some(inline), None) => Ok(Some((inline, name))),
            (None, Some(path)) => std::fs::read_to_string(path.trim())
                .map(|text| Some((text, file_name)))
                .map_err(|e| ConfigError::new(file_name, format!("cannot read {path}: {e}"))),
            (None, None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Production settings every test would otherwise repeat; a test unsets one by giving it as
    /// an empty value (blank variables count as unset).
    const BASE: &[(&str, &str)] = &[
        ("SMTP_URL", "smtp://mail.example.com:587?tls=required"),
        ("MAIL_FROM", "Gatehouse <no-reply@example.com>"),
        ("MAIL_LINK_BASE_URL", "https://app.example.com/"),
    ];

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        // A root secret of this run's own: a literal here would be a published secret.
        let secret = uuid::Uuid::new_v4().simple().to_string().repeat(2);
        let vars: HashMap<String, String> = [("SERVER_SECRET", secret.as_str())]
            .iter()
            .chain(BASE)
            .chain(vars)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    fn key_pem() -> String {
        TokenSigner::generate(&mut rand_core::OsRng)
            .to_pkcs8_pem()
            .to_string()
    }

    /// A production configuration with a database URL and a fresh signing key, plus `vars`
    /// (which win over both).
    fn production(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let pem = key_pem();
        let mut all = vec![
            ("DATABASE_URL", "postgres://x/g"),
            ("JWT_SIGNING_KEY", pem.as_str()),
        ];
        all.extend_from_slice(vars);
        config(&all)
    }

    #[test]
    fn defaults_apply_when_only_required_values_are_set() {
        let config = production(&[]).unwrap();

        assert_eq!(config.listen_addr.port(), 8007);
        assert_eq!(config.shutdown_grace, Duration::from_secs(25));
        assert_eq!(config.metrics_listen_addr.map(|a| a.port()), Some(9007));
        assert_eq!(config.password_hash_rounds, 12);
        assert_eq!(config.database.max_connections, 15);
        assert_eq!(config.database.acquire_timeout, Duration::from_secs(30));
        assert!(config.database.test_before_acquire);
        assert_eq!(config.access_token_ttl, Duration::from_secs(900));
        assert_eq!(config.environment, Environment::Production);
        assert_eq!(config.sessions.idle_timeout, Duration::from_secs(604_800));
        assert_eq!(config.sessions.max_lifetime, Duration::from_secs(2_592_000));
        assert_eq!(config.sessions.reuse_window, Duration::from_secs(10));
        assert_eq!(config.sessions.refresh_limit, 30);
        let limits = config.login_limits;
        assert_eq!(limits.window, Duration::from_secs(900));
        assert_eq!(
            (limits.per_account, limits.per_account_and_ip, limits.per_ip),
            (20, 10, 100)
        );
        assert_eq!(
            (
                limits.register_per_ip,
                limits.ipv6_56_factor,
                limits.ipv6_48_factor
            ),
            (20, 4, 16)
        );
        assert!(
            limits.per_account * 5 <= 100,
            "within ASVS 6.3.1 in any hour, which overlaps at most five 15-minute windows"
        );
        assert!(matches!(
            config.signing_key,
            SigningKeySource::Configured(_)
        ));
        assert_eq!(config.accounts.erase_after, Duration::from_secs(2_592_000));
        assert_eq!(config.accounts.unverified_ttl, Duration::from_secs(604_800));
        assert!(!config.accounts.require_verified_email);
        assert_eq!(config.password_min_score, 3);
        let mail = config.mail.expect("mail is on by default");
        assert_eq!(mail.link_base_url, "https://app.example.com");
        assert_eq!((mail.limit_per_address, mail.limit_per_ip), (3, 30));
        assert_eq!(mail.retry_max, Duration::from_secs(300));
    }

    #[test]
    fn production_refuses_every_published_secret_and_development_takes_them() {
        for published in PUBLISHED_SECRETS {
            for (variable, other) in [
                ("EDGE_SECRET", "SERVER_SECRET"),
                ("SERVER_SECRET", "EDGE_SECRET"),
            ] {
                let own = uuid::Uuid::new_v4().simple().to_string();

                let error = production(&[(variable, published), (other, &own)]).unwrap_err();
                let development = production(&[
                    (variable, published),
                    (other, &own),
                    ("GATEHOUSE_ENV", "development"),
                ]);

                assert_eq!(error.name, variable);
                assert!(error.reason.contains("published"), "{}", error.reason);
                assert!(development.is_ok(), "{variable}");
            }
        }
    }

    /// Every quoted value of 32 or more characters that could be a secret (letters, digits and
    /// `-_+/=` only) on a line of the repository that names a secret (`EDGE_SECRET`, `SERVER_SECRET`, ...), with where it was found.
    fn secret_values_in_the_tree() -> Vec<(String, String)> {
        fn walk(dir: &std::path::Path, found: &mut Vec<(String, String)>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if path.is_dir() {
                    if !["target", "node_modules", ".git", "build"].contains(&name.as_str()) {
                        walk(&path, found);
                    }
                    continue;
                }
                let text_file = [
                    "rs", "toml", "md", "mjs", "js", "json", "yaml", "yml", "env",
                ]
                .iter()
                .any(|ext| name.ends_with(&format!(".{ext}")));
                if !text_file {
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                for (number, line) in text.lines().enumerate() {
                    if !line.contains("SECRET") {
                        continue;
                    }
                    for (index, quoted) in line.split('"').enumerate() {
                        let token_like = quoted
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_+/=".contains(&b));
                        if index % 2 == 1 && quoted.len() >= 32 && token_like {
                            let at = format!("{}:{}", path.display(), number + 1);
                            found.push((quoted.to_owned(), at));
                        }
                    }
                }
            }
        }
        let mut found = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
            &mut found,
        );
        found
    }

    #[test]
    fn every_secret_value_in_the_repository_is_on_the_published_list() {
        let found = secret_values_in_the_tree();

        assert!(
            found.iter().any(|(value, _)| value == PUBLISHED_SECRETS[1]),
            "the walk finds the test suite's edge secret: {found:?}"
        );
        for (value, at) in found {
            assert!(
                PUBLISHED_SECRETS.contains(&value.as_str()),
                "{at}: {value} looks like a secret; add it to PUBLISHED_SECRETS"
            );
        }
    }

    #[test]
    fn production_names_each_missing_secret_and_mail_setting() {
        for name in [
            "SERVER_SECRET",
            "SMTP_URL",
            "MAIL_FROM",
            "MAIL_LINK_BASE_URL",
        ] {
            let error = production(&[(name, "")]).unwrap_err();

            assert_eq!(error.name, name);
        }
    }

    #[test]
    fn mail_can_be_turned_off_and_then_needs_no_settings() {
        let pem = key_pem();
        let mut vars = vec![
            ("DATABASE_URL", "postgres://x/g"),
            ("JWT_SIGNING_KEY", pem.as_str()),
            ("MAIL_ENABLED", "false"),
        ];
        vars.extend(["SMTP_URL", "MAIL_FROM", "MAIL_LINK_BASE_URL"].map(|name| (name, "")));

        let config = config(&vars).unwrap();
        vars.push(("REQUIRE_VERIFIED_EMAIL", "true"));
        let error = super::tests::config(&vars).unwrap_err();

        assert!(config.mail.is_none());
        assert_eq!(error.name, "REQUIRE_VERIFIED_EMAIL");
    }

    #[test]
    fn missing_database_url_names_the_variable() {
        let pem = key_pem();

        let error = config(&[("JWT_SIGNING_KEY", &pem)]).unwrap_err();

        assert_eq!(error.name, "DATABASE_URL");
    }

    #[test]
    fn production_without_a_signing_key_refuses_to_start() {
        let error = config(&[("DATABASE_URL", "postgres://localhost/g")]).unwrap_err();

        assert_eq!(error.name, "JWT_SIGNING_KEY");
    }

    #[test]
    fn development_fills_in_a_signing_key_a_secret_and_a_local_mail_server() {
        let config = config(&[
            ("DATABASE_URL", "postgres://x/g"),
            ("GATEHOUSE_ENV", "development"),
            ("SERVER_SECRET", ""),
            ("SMTP_URL", ""),
        ])
        .unwrap();

        assert!(matches!(config.signing_key, SigningKeySource::Ephemeral(_)));
        let mail = config.mail.unwrap();
        assert_eq!(mail.smtp_url.expose_secret(), "smtp://127.0.0.1:1025");
    }

    #[test]
    fn invalid_values_name_their_variable() {
        let pem = key_pem();
        let base = [
            ("DATABASE_URL", "postgres://x/g"),
            ("JWT_SIGNING_KEY", pem.as_str()),
        ];
        for (name, value) in [
            ("PASSWORD_HASH_ROUNDS", "3"),
            ("PASSWORD_HASH_ROUNDS", "19"),
            ("ACCESS_TOKEN_TTL_SECS", "86401"),
            ("PASSWORD_HASH_ROUNDS", "twelve"),
            ("DATABASE_MAX_CONNECTIONS", "0"),
            ("LISTEN_ADDR", "localhost"),
            ("JWT_LEEWAY_SECS", "31"),
            ("REFRESH_REUSE_WINDOW_SECS", "61"),
            ("SESSION_IDLE_TIMEOUT_SECS", "0"),
            ("SESSION_MAX_LIFETIME_SECS", "31536001"),
            ("LOGIN_LIMIT_WINDOW_SECS", "86401"),
            ("SESSION_IDLE_TIMEOUT_SECS", "2592001"),
            ("GATEHOUSE_ENV", "staging"),
            ("JWT_SIGNING_KEY_FILE", "/nonexistent/key.pem"),
            ("SMTP_URL", "mail.example.com:25"),
            ("MAIL_FROM", "not an address"),
            ("MAIL_LINK_BASE_URL", "app.example.com"),
            ("MAIL_LIMIT_PER_ADDRESS", "0"),
            ("MAIL_ENABLED", "maybe"),
        ] {
            let mut vars = base.to_vec();
            if name == "JWT_SIGNING_KEY_FILE" {
                vars.remove(1);
            }
            vars.push((name, value));

            let error = config(&vars).unwrap_err();

            assert_eq!(error.name, name, "{name}={value}");
        }
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_range_they_must_fall_in() {
        for (name, value, reason) in [
            ("PASSWORD_HASH_ROUNDS", "19", "must be between 4 and 18"),
            ("ACCESS_TOKEN_TTL_SECS", "0", "must be between 1 and 86400"),
            (
                "REFRESH_REUSE_WINDOW_SECS",
                "61",
                "must be between 0 and 60",
            ),
            ("JWT_LEEWAY_SECS", "31", "must be between 0 and 30"),
            ("EDGE_SECRET", "short", "must be at least 32 characters"),
            (
                "SERVER_SECRET",
                "short",
                "must be at least 32 bytes, e.g. `openssl rand -hex 32`",
            ),
            ("MAIL_RETRY_MAX_SECS", "3601", "must be between 1 and 3600"),
            ("PASSWORD_MIN_SCORE", "5", "must be between 0 and 4"),
            (
                "UNVERIFIED_ACCOUNT_TTL_SECS",
                "60",
                "must be between 3600 and 31536000",
            ),
        ] {
            let error = production(&[(name, value)]).unwrap_err();

            assert_eq!((error.name, error.reason.as_str()), (name, reason));
        }
    }

    #[test]
    fn garbage_signing_key_is_refused() {
        let error = production(&[("JWT_SIGNING_KEY", "not a key")]).unwrap_err();

        assert_eq!(error.name, "JWT_SIGNING_KEY");
    }

    #[test]
    fn debug_output_hides_the_database_url_the_smtp_password_and_the_server_secret() {
        let config = production(&[
            ("DATABASE_URL", "postgres://u:hunter2@x/g"),
            ("SMTP_URL", "smtps://mailer:hunter3@mail.example.com:465"),
        ])
        .unwrap();

        let debug = format!("{config:?}");

        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("hunter3"), "{debug}");
        assert!(!debug.contains(BASE[0].1), "{debug}");
    }

    #[test]
    fn debug_output_hides_the_edge_secret_and_the_signing_key() {
        let pem = key_pem();
        let secret = "s".repeat(MIN_EDGE_SECRET_BYTES);
        let config = config(&[
            ("DATABASE_URL", "postgres://x/g"),
            ("JWT_SIGNING_KEY", &pem),
            ("EDGE_SECRET", &secret),
        ])
        .unwrap();
        let pem_body = pem.lines().nth(1).unwrap();

        let debug = format!("{config:?}");

        assert!(debug.contains("kid"), "{debug}");
        assert!(!debug.contains(&secret), "{debug}");
        assert!(!debug.contains(pem_body), "{debug}");
        assert!(!debug.contains("secret_key"), "{debug}");
    }
}
