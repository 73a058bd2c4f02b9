//! `gatehouse-origin import-users --from URL`: brings the accounts of the FastAPI service Gatehouse
//! replaces into Gatehouse, so every user signs in with the password they already have.
//!
//! The source is that service's `platform_users` table (SQLAlchemy: `id` integer, `email` unique,
//! `password_hash` bcrypt `$2b$`, `is_active`, `created_at`/`updated_at` naive UTC, `first_name`,
//! `last_name`, `meta_data` JSON). Each account keeps its address, names, active flag, creation
//! time and hash; its old id becomes `legacy_id` (returned in the profile and in access tokens,
//! since the platform's other services store it) and `meta_data` is kept as it was. The existing
//! rehash-on-login raises hashes made at cost 4 to the configured cost at each user's next
//! sign-in.
//!
//! Rules, each for a reason:
//! - Idempotent: an account whose address (in any case) or `legacy_id` Gatehouse already has is
//!   skipped, never overwritten, so a second run changes nothing and a user who registered here
//!   meanwhile keeps their account.
//! - Addresses that collide once compared without case (the old unique index was
//!   case-sensitive) import none of their group: which of them owns the address is for a person
//!   to decide. They are listed.
//! - Addresses Gatehouse's rules refuse, and hashes that are not bcrypt, are listed and skipped:
//!   such an account could never sign in here.
//! - Imported accounts count as existing ones: never erased for being unverified.
//! - The old service cut passwords at 72 bytes without a word, so a user's real password may be
//!   longer than Gatehouse accepts; `legacy_password` lets login check such a password on its
//!   first 72 bytes, as the old service did, until the user sets a new one.

use std::collections::HashMap;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// An account as the source stores it.
#[derive(Debug, sqlx::FromRow)]
struct Source {
    id: i64,
    email: String,
    password_hash: String,
    /// NULL in rows written without the model's Python-side default, which was active.
    is_active: Option<bool>,
    created_at: Option<OffsetDateTime>,
    first_name: Option<String>,
    last_name: Option<String>,
    meta_data: Option<serde_json::Value>,
}

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Accounts in the source.
    pub read: usize,
    /// Accounts created here.
    pub imported: usize,
    /// Accounts Gatehouse already had (same address in any case, or same `legacy_id`).
    pub already_here: usize,
    /// Addresses shared, without case, by several source accounts: none of them imported.
    pub colliding: Vec<String>,
    /// Addresses Gatehouse's rules refuse.
    pub invalid_email: Vec<String>,
    /// Accounts whose hash is not bcrypt, by address.
    pub unusable_hash: Vec<String>,
}

/// Imports the accounts of the `platform_users` table at `source_url` into `target`.
pub async fn import_users(target: &PgPool, source_url: &str) -> anyhow::Result<Report> {
    use anyhow::Context as _;
    let source = PgPool::connect(source_url)
        .await
        .context("connecting to the source database (--from)")?;
    // Plain SQL: the source schema is not Gatehouse's, so it is not checked at build time.
    let accounts: Vec<Source> = sqlx::query_as(
        "select id::bigint as id, trim(email) as email, password_hash, is_active,
                created_at at time zone 'UTC' as created_at, first_name, last_name,
                meta_data::jsonb as meta_data
         from platform_users order by id",
    )
    .fetch_all(&source)
    .await
    .context("reading platform_users")?;
    source.close().await;

    let mut report = Report {
        read: accounts.len(),
        ..Report::default()
    };
    let mut by_address: HashMap<String, usize> = HashMap::new();
    for account in &accounts {
        *by_address.entry(account.email.to_lowercase()).or_default() += 1;
    }
    let now = OffsetDateTime::now_utc();
    for account in accounts {
        if by_address[&account.email.to_lowercase()] > 1 {
            report.colliding.push(account.email);
            continue;
        }
        if gatehouse_shared::input::check_email(&account.email).is_err() {
            report.invalid_email.push(account.email);
            continue;
        }
        if !is_bcrypt(&account.password_hash) {
            report.unusable_hash.push(account.email);
            continue;
        }
        let inserted = sqlx::query!(
            "insert into users (id, email, password_hash, first_name, last_name, is_active,
                                created_at, updated_at, legacy_id, legacy_metadata,
                                legacy_password, erase_if_unverified)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, true, false)
             on conflict do nothing",
            Uuid::now_v7(),
            account.email,
            account.password_hash,
            account.first_name,
            account.last_name,
            account.is_active.unwrap_or(true),
            account.created_at.unwrap_or(now),
            now,
            account.id,
            account.meta_data,
        )
        .execute(target)
        .await
        .with_context(|| format!("importing {}", account.email))?
        .rows_affected();
        if inserted == 1 {
            report.imported += 1;
        } else {
            report.already_here += 1;
        }
    }
    report.colliding.sort();
    Ok(report)
}

/// Whether `hash` is a bcrypt hash the origin can verify (`$2a$`, `$2b$`, `$2y$`).
fn is_bcrypt(hash: &str) -> bool {
    hash.len() == 60
        && ["$2a$", "$2b$", "$2y$"]
            .iter()
            .any(|prefix| hash.starts_with(prefix))
}
