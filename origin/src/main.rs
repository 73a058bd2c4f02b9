//! `gatehouse-origin`: configuration, pool, migrations, serve; plus operator subcommands.

use std::process::ExitCode;

use anyhow::Context as _;
use gatehouse_origin::config::{Config, SigningKeySource};
use gatehouse_origin::db::{Database, MIGRATOR};
use gatehouse_origin::{AppState, api_keys, app, janitor, serve, signing_keys, telemetry, users};
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::signing::TokenSigner;

const USAGE: &str = "\
usage: gatehouse-origin [COMMAND]

commands:
  serve                   run the HTTP service (the default); applies migrations first
  migrate                 apply database migrations and exit
  api-key create NAME     create an API key and print it (shown only this once)
  api-key list            list API keys (ids and names, never secrets)
  api-key revoke ID       revoke an API key by its id
  user reactivate EMAIL   reactivate a deactivated account before it is erased
  user erase EMAIL        erase an account and all its data now (its unexpired access tokens
                          still pass the edge until they expire; deactivate first to end them)
  user mfa-reset EMAIL    remove every second factor of an account (a user who lost both the
                          authenticator and the recovery codes, once identified otherwise), end
                          its sessions and mail the address a notice; reads the whole
                          configuration, as serve does
  import-users --from URL bring the accounts of the FastAPI service Gatehouse replaces
                          (its platform_users table at the PostgreSQL URL) over; idempotent
  healthcheck             exit 0 if the server on LISTEN_ADDR answers /health, else 1 (for a
                          container HEALTHCHECK: the image has no curl)
  keygen                  print a new Ed25519 signing key (PKCS#8 PEM) for JWT_SIGNING_KEY
  key rotate              with SIGNING_KEYS=database: add the next signing key, published now and
                          signing once every cache has seen it (no restarts)
  key revoke KID          emergency: stop publishing and accepting a signing key everywhere
                          (origins refuse its tokens at once, edges within their revocation
                          refresh); then restart every origin with a new JWT_SIGNING_KEY, or,
                          with SIGNING_KEYS=database, instances move to a new key by themselves

configuration comes from environment variables; see README.md";

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = match args.as_slice() {
        [] | ["serve"] => run_server().await,
        ["migrate"] => migrate().await,
        ["api-key", "create", name] => create_api_key(name).await,
        ["api-key", "list"] => list_api_keys().await,
        ["api-key", "revoke", id] => revoke_api_key(id).await,
        [
            "user",
            action @ ("reactivate" | "erase" | "mfa-reset"),
            email,
        ] => user_command(action, email).await,
        ["key", "revoke", kid] => revoke_signing_key(kid).await,
        ["key", "rotate"] => rotate_signing_key().await,
        ["import-users", "--from", url] => import_users(url).await,
        ["healthcheck"] => healthcheck().await,
        ["keygen"] => {
            print!(
                "{}",
                *TokenSigner::generate(&mut rand_core::OsRng).to_pkcs8_pem()
            );
            Ok(())
        }
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gatehouse-origin: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The pool `config` describes, with the migrations applied.
async fn migrated_database(config: &Config) -> anyhow::Result<Database> {
    let db = Database::connect(config.database_url.expose_secret(), &config.database)
        .context("DATABASE_URL")?;
    MIGRATOR
        .run(db.pool())
        .await
        .context("applying migrations")?;
    Ok(db)
}

async fn run_server() -> anyhow::Result<()> {
    let config = Config::from_env().context("invalid configuration")?;
    let db = migrated_database(&config).await?;
    refuse_revoked_signing_key(&db, &config).await?;
    let config = signing_keys::load_into(config, &db, time::OffsetDateTime::now_utc())
        .await
        .context("reading the signing keys from the database")?;
    let stored_keys = match &config.signing_key {
        SigningKeySource::Database { settings, .. } => Some(*settings),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("binding LISTEN_ADDR {}", config.listen_addr))?;
    let addr = listener.local_addr()?;
    let (rounds, workers) = (config.password_hash_rounds, config.hash_workers);
    let metrics_listener = match config.metrics_listen_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding METRICS_LISTEN_ADDR {addr}"))?,
        ),
        None => None,
    };
    let grace = config.shutdown_grace;
    let mut state = AppState::from_config(config, db)?;
    state.follow_changes();
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
        let router = gatehouse_origin::metrics::router(state.clone());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "the metrics listener stopped");
            }
        });
    }
    tracing::info!(%addr, bcrypt_cost = rounds, hash_workers = workers, "listening");
    let janitor = tokio::spawn(janitor::run(state.clone()));
    let key_follower = stored_keys.map(|settings| {
        tracing::info!(
            kid = state.tokens.signing_kid(),
            "signing keys from the database"
        );
        tokio::spawn(signing_keys::follow(state.clone(), settings))
    });
    let courier = gatehouse_origin::mail::courier::spawn(&state).context("SMTP_URL")?;
    serve(listener, app(state), grace).await?;
    janitor.abort();
    if let Some(follower) = key_follower {
        follower.abort();
    }
    if let Some(courier) = courier {
        courier.stop().await;
    }
    Ok(())
}

/// An origin told to sign with a revoked key would issue tokens every other part refuses.
async fn refuse_revoked_signing_key(db: &Database, config: &Config) -> anyhow::Result<()> {
    let kid = match &config.signing_key {
        SigningKeySource::Configured(signer) | SigningKeySource::Ephemeral(signer) => {
            signer.kid().to_owned()
        }
        // Revoked stored keys are never chosen (`signing_keys::select`).
        SigningKeySource::Database { .. } => return Ok(()),
    };
    let mut connection = db.acquire().await?;
    if signing_keys::revoked(&mut connection).await?.contains(&kid) {
        anyhow::bail!(
            "JWT_SIGNING_KEY: key {kid} has been revoked (`gatehouse-origin key revoke`); \
             configure a new one (`gatehouse-origin keygen`)"
        );
    }
    Ok(())
}

async fn revoke_signing_key(kid: &str) -> anyhow::Result<()> {
    // Key ids are RFC 7638 thumbprints: SHA-256 in unpadded base64url, 43 characters. Anything
    // else is a typo, which would leave the leaked key working while reporting success.
    let thumbprint = kid.len() == 43
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !thumbprint {
        anyhow::bail!("{kid} is not a key id (43 characters of base64url, as the JWKS shows)");
    }
    let pool = command_pool().await?;
    MIGRATOR.run(&pool).await.context("applying migrations")?;
    let mut connection = pool.acquire().await?;
    let now = time::OffsetDateTime::now_utc();
    if signing_keys::revoke(&mut connection, kid, now).await? {
        eprintln!(
            "revoked signing key {kid}: origins refuse its tokens now, edges within their \
             revocation refresh. With JWT_SIGNING_KEY, restart every origin still signing with \
             it with a new key; with SIGNING_KEYS=database, instances sign with a new key from \
             their next refresh"
        );
    } else {
        eprintln!("signing key {kid} was already revoked");
    }
    Ok(())
}

async fn rotate_signing_key() -> anyhow::Result<()> {
    let config = Config::from_env().context("invalid configuration")?;
    let SigningKeySource::Database { settings, .. } = &config.signing_key else {
        anyhow::bail!(
            "SIGNING_KEYS: key rotate needs the keys in PostgreSQL (SIGNING_KEYS=database); with \
             JWT_SIGNING_KEY, rotate by moving the old key to JWT_PREVIOUS_KEY (README)"
        );
    };
    let db = migrated_database(&config).await?;
    let lead = signing_keys::lead_time(settings, config.jwks_max_age);
    let cipher = config.server_keys.signing_key_cipher();
    let (kid, activates_at) =
        signing_keys::rotate(&db, &cipher, time::OffsetDateTime::now_utc(), lead).await?;
    println!("{kid}");
    eprintln!(
        "added signing key {kid}: published by every instance within {} s, signing from \
         {activates_at} ({} s from now); the current key stays published until its tokens expire",
        settings.refresh.as_secs(),
        lead.as_secs()
    );
    Ok(())
}

async fn import_users(source_url: &str) -> anyhow::Result<()> {
    let pool = command_pool().await?;
    MIGRATOR.run(&pool).await.context("applying migrations")?;
    let report = gatehouse_origin::import::import_users(&pool, source_url).await?;
    println!(
        "read {}, imported {}, already here {}, refused {}",
        report.read,
        report.imported,
        report.already_here,
        report.colliding.len() + report.invalid_email.len() + report.unusable_hash.len()
    );
    let lists = [
        (
            "addresses shared without case by several accounts (none imported)",
            &report.colliding,
        ),
        ("addresses Gatehouse refuses", &report.invalid_email),
        ("accounts whose hash is not bcrypt", &report.unusable_hash),
    ];
    for (what, list) in lists {
        if !list.is_empty() {
            println!("{what}:");
            for email in list {
                println!("  {email}");
            }
        }
    }
    Ok(())
}

/// `healthcheck`: GET /health on this machine's LISTEN_ADDR port, over a raw socket (no HTTP
/// client in the binary, no curl in the image), within 3 s.
async fn healthcheck() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listen: std::net::SocketAddr = std::env::var("LISTEN_ADDR")
        .unwrap_or_else(|_| "0.0.0.0:8007".into())
        .trim()
        .parse()
        .context("LISTEN_ADDR")?;
    let target = match listen.ip() {
        ip if ip.is_unspecified() => std::net::SocketAddr::from(([127, 0, 0, 1], listen.port())),
        _ => listen,
    };
    let check = async {
        let mut socket = tokio::net::TcpStream::connect(target).await?;
        socket
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer).await?;
        anyhow::Ok(answer.starts_with(b"HTTP/1.1 200"))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), check).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => anyhow::bail!("{target}/health did not answer 200"),
        Ok(Err(error)) => Err(error.context(format!("asking {target}/health"))),
        Err(_) => anyhow::bail!("{target}/health did not answer within 3 s"),
    }
}

/// `user mfa-reset EMAIL`: it ends sessions and queues mail as the service does, so it reads the
/// service's whole configuration (as `serve` does) rather than `DATABASE_URL` alone.
async fn mfa_reset(email: &str) -> anyhow::Result<()> {
    use gatehouse_origin::mfa::{self, Reset};
    let mut config = Config::from_env().context("invalid configuration")?;
    // The command signs nothing: a throwaway key stands in for the service's, so it neither reads
    // nor creates stored keys (after SERVER_SECRET changes they no longer open, and this is the
    // command the README sends operators to then).
    config.signing_key = SigningKeySource::Configured(TokenSigner::generate(&mut rand_core::OsRng));
    let db = migrated_database(&config).await?;
    let state = AppState::from_config(config, db)?;
    match mfa::reset(&state, email).await? {
        Some(Reset::Removed {
            ended_sessions,
            noticed,
        }) => {
            let notice = if noticed {
                "a notice to the address is queued (a running instance sends it)"
            } else {
                "no notice (MAIL_ENABLED is false)"
            };
            eprintln!(
                "removed every second factor (authenticator, passkeys, recovery codes) of the \
                 account of {email} and ended every live session ({ended_sessions}); {notice}"
            );
            Ok(())
        }
        Some(Reset::NothingToRemove) => {
            eprintln!("the account of {email} has no second factor; nothing changed");
            Ok(())
        }
        None => anyhow::bail!("no account has the address {email}"),
    }
}

/// A pool for one-off commands, which need only `DATABASE_URL`.
async fn command_pool() -> anyhow::Result<sqlx::PgPool> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is required")?;
    sqlx::PgPool::connect(&url)
        .await
        .context("connecting to DATABASE_URL")
}

async fn migrate() -> anyhow::Result<()> {
    let pool = command_pool().await?;
    MIGRATOR.run(&pool).await.context("applying migrations")?;
    eprintln!("migrations applied");
    Ok(())
}

async fn create_api_key(name: &str) -> anyhow::Result<()> {
    let pool = command_pool().await?;
    MIGRATOR.run(&pool).await.context("applying migrations")?;
    let key = api_keys::create(&pool, name).await?;
    eprintln!(
        "created API key {} ({name}); it is shown only this once:",
        key.id()
    );
    println!("{}", key.expose());
    Ok(())
}

async fn list_api_keys() -> anyhow::Result<()> {
    let pool = command_pool().await?;
    println!("{:<16}  {:<24}  {:<25}  status", "id", "name", "created");
    for key in api_keys::list(&pool).await? {
        let status = key
            .revoked_at
            .map_or("active".to_owned(), |at| format!("revoked {at}"));
        println!(
            "{:<16}  {:<24}  {:<25}  {status}",
            key.id,
            key.name,
            key.created_at.to_string()
        );
    }
    Ok(())
}

async fn revoke_api_key(id: &str) -> anyhow::Result<()> {
    let pool = command_pool().await?;
    if api_keys::revoke(&pool, id).await? {
        eprintln!("revoked API key {id}");
        Ok(())
    } else {
        anyhow::bail!("no active API key with id {id}")
    }
}

/// `user reactivate EMAIL` and `user erase EMAIL` (`user mfa-reset EMAIL`: [`mfa_reset`]).
async fn user_command(action: &str, email: &str) -> anyhow::Result<()> {
    if action == "mfa-reset" {
        return mfa_reset(email).await;
    }
    let pool = command_pool().await?;
    let (done, success, failure) = match action {
        "erase" => (
            users::erase(&pool, email).await?,
            "erased, with all it owned, the account",
            "no account has the address",
        ),
        _ => (
            users::reactivate(&pool, email).await?,
            "reactivated the account",
            "no deactivated account has the address",
        ),
    };
    if done {
        eprintln!("{success} of {email}");
        Ok(())
    } else {
        anyhow::bail!("{failure} {email}")
    }
}
