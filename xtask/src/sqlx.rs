//! Compile-time-checked SQL. The origin's queries are `sqlx::query!` macros; builds read what
//! each query takes and returns from the offline data committed in `.sqlx/` (`SQLX_OFFLINE=true`
//! in `.cargo/config.toml`), so no build needs a database.
//!
//! That data is only as good as its freshness, so:
//! - `cargo xtask sqlx-prepare` describes every query against a throwaway database migrated from
//!   `migrations/` and rewrites `.sqlx/` (what `cargo sqlx prepare` does, without installing
//!   sqlx-cli: the macros write their data when `SQLX_OFFLINE_DIR` is set on an online build);
//! - `cargo xtask test` does the same into `target/` and fails when the result differs from
//!   `.sqlx/`, so a migration that breaks a query fails the run, not only a later deploy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context as _, bail};

use crate::pg::Postgres;

/// The package whose queries are checked.
const PACKAGE: &str = "gatehouse-origin";

/// The database the queries are described against.
const DATABASE: &str = "gatehouse_sqlx";

/// `cargo xtask sqlx-prepare`: rewrites `.sqlx/` from the current code and migrations.
pub fn prepare() -> anyhow::Result<ExitCode> {
    let postgres = Postgres::start(&crate::target_dir().join("gatehouse-pg-sqlx"), true)?;
    let described = describe(&postgres)?;
    let committed = committed_dir();
    if committed.exists() {
        std::fs::remove_dir_all(&committed)?;
    }
    std::fs::create_dir_all(&committed)?;
    let queries = read_queries(&described)?;
    for (name, text) in &queries {
        std::fs::write(committed.join(name), text)?;
    }
    println!(
        "xtask sqlx-prepare: {} queries written to {}",
        queries.len(),
        committed.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Whether `.sqlx/` matches the queries as they are now, described on `postgres`; prints what
/// differs when it does not.
pub fn is_fresh(postgres: &Postgres) -> anyhow::Result<bool> {
    let described = read_queries(&describe(postgres)?)?;
    let committed = read_queries(&committed_dir())?;
    let mut problems = Vec::new();
    for (name, text) in &described {
        match committed.get(name) {
            None => problems.push(format!("missing: {name}")),
            Some(stored) if !same_json(stored, text) => problems.push(format!("stale: {name}")),
            Some(_) => {}
        }
    }
    for name in committed
        .keys()
        .filter(|name| !described.contains_key(*name))
    {
        problems.push(format!("no longer used: {name}"));
    }
    if problems.is_empty() {
        println!("xtask: .sqlx is fresh ({} queries)", described.len());
        return Ok(true);
    }
    eprintln!(
        "xtask: .sqlx does not match the queries and migrations; run `cargo xtask sqlx-prepare`\n  {}",
        problems.join("\n  ")
    );
    Ok(false)
}

/// Describes every query of [`PACKAGE`] against a freshly migrated database on `postgres`,
/// into a directory under `target/`, and returns that directory.
fn describe(postgres: &Postgres) -> anyhow::Result<PathBuf> {
    let _ = postgres.drop_database(DATABASE);
    postgres.create_database(DATABASE)?;
    postgres.apply_sql_files(DATABASE, &crate::root().join("migrations"))?;
    let out = crate::target_dir().join("sqlx-described");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;
    // The macros run again only when the crate recompiles; a newer source file makes it.
    let lib = crate::root().join("origin/src/lib.rs");
    std::fs::File::options()
        .append(true)
        .open(&lib)
        .and_then(|file| file.set_modified(SystemTime::now()))
        .with_context(|| format!("touching {}", lib.display()))?;
    let status = crate::cargo()
        .args(["check", "--quiet", "-p", PACKAGE, "--lib"])
        .env("SQLX_OFFLINE", "false")
        .env("DATABASE_URL", postgres.url(DATABASE))
        .env("SQLX_OFFLINE_DIR", &out)
        .status()
        .context("running cargo check")?;
    if !status.success() {
        bail!("the queries do not compile against the migrated schema");
    }
    Ok(out)
}

fn committed_dir() -> PathBuf {
    crate::root().join(".sqlx")
}

/// The `query-*.json` files of `dir`, by name.
fn read_queries(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut queries = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(queries);
    };
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        if name.starts_with("query-") && name.ends_with(".json") {
            queries.insert(name.to_owned(), std::fs::read_to_string(&path)?);
        }
    }
    Ok(queries)
}

/// Equal as JSON, whatever the formatting.
fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::same_json;

    #[test]
    fn query_data_compares_as_json_not_as_text() {
        assert!(same_json(r#"{"a": [1, 2]}"#, "{\"a\":[1,2]}\n"));
        assert!(!same_json(r#"{"a": [1, 2]}"#, r#"{"a": [2, 1]}"#));
    }
}
