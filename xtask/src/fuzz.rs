//! schemathesis against the origin's own OpenAPI description: generated requests, valid and
//! invalid, for every documented operation; the run fails on any 5xx and on any response the
//! description does not allow (status, content type, headers, body schema).
//!
//! schemathesis comes from PyPI at a pinned version, into a virtual environment under `target/`.
//! The origin runs a debug build at bcrypt cost 4 on its own database, with an API key and a
//! bearer token supplied to every request so the generated inputs reach the handlers.

use anyhow::{Context as _, bail};
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{EDGE_SECRET_HEADER, RegisterRequest, TokenResponse};

use crate::pg::Postgres;

/// The schemathesis release the checks were written against.
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// Examples per operation: enough to cover each schema's edges, few enough for CI.
const MAX_EXAMPLES: &str = "50";

/// Operations (by operation id) that can end the session of the token the run uses.
const SESSION_ENDING: &[&str] = &["deactivate_profile", "logout_user", "change_password"];

/// The checks that together mean "no 5xx, and nothing the description does not allow".
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

/// `cargo xtask fuzz`: the pass on its own, on a throwaway PostgreSQL.
pub fn run_alone() -> anyhow::Result<std::process::ExitCode> {
    let postgres = Postgres::start(&crate::target_dir().join("gatehouse-pg-fuzz"), true)?;
    let binary = crate::dev::build_origin(false)?;
    Ok(if run(&postgres, &binary)? {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// Runs the fuzzing pass against the debug origin `binary`; `Ok(false)` when schemathesis
/// reported failures.
pub fn run(postgres: &Postgres, binary: &std::path::Path) -> anyhow::Result<bool> {
    let schemathesis = crate::pypi_tool("schemathesis", SCHEMATHESIS_VERSION, "schemathesis")?;
    postgres.create_database("gatehouse_fuzz")?;
    let database_url = postgres.url("gatehouse_fuzz");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let addr = format!("127.0.0.1:{}", crate::pg::free_port()?);
        let url = format!("http://{addr}");
        let log = crate::target_dir().join("gatehouse-fuzz-origin.log");
        let edge_secret = crate::dev::fresh_secret();
        let (mut origin, api_key) = crate::dev::start_origin(
            binary,
            &database_url,
            &addr,
            Some(&log),
            &edge_secret,
            // Every generated request comes from 127.0.0.1: the login limits are lifted so
            // that they do not turn the later operations into a run of 429s.
            &[
                ("PASSWORD_HASH_ROUNDS", "4"),
                ("METRICS_LISTEN_ADDR", "off"),
                ("LOGIN_LIMIT_PER_IP", "1000000"),
                ("LOGIN_LIMIT_PER_ACCOUNT", "1000000"),
                ("LOGIN_LIMIT_PER_ACCOUNT_AND_IP", "1000000"),
                ("REFRESH_LIMIT_PER_SESSION", "1000000"),
                ("REGISTER_LIMIT_PER_IP", "1000000"),
                ("MAIL_LIMIT_PER_IP", "1000000"),
            ],
        )?;
        let outcome = async {
            crate::dev::wait_until_healthy(&mut origin, &url).await?;
            println!("\nschemathesis {SCHEMATHESIS_VERSION} against {url}/openapi.json");
            // Operations that can end the token's session run after the rest, each in a pass of
            // its own with a fresh account, so that every operation meets a live session.
            let mut all_passed = true;
            let passes =
                std::iter::once(("--exclude-operation-id-regex", SESSION_ENDING.join("|"))).chain(
                    SESSION_ENDING
                        .iter()
                        .map(|id| ("--include-operation-id", (*id).to_owned())),
                );
            for (index, (filter, operations)) in passes.enumerate() {
                let token = bearer_token(&url, &api_key, index).await?;
                let status = tokio::process::Command::new(&schemathesis)
                    .args(["run", &format!("{url}/openapi.json")])
                    .args([filter, &operations])
                    .args(["--checks", CHECKS, "--max-examples", MAX_EXAMPLES])
                    .args(["--phases", "examples,coverage,fuzzing", "--seed", "1"])
                    .args(["--workers", "1", "--request-timeout", "10", "--no-color"])
                    .args(["-H", &format!("X-API-Key: {api_key}")])
                    .args(["-H", &format!("Authorization: Bearer {token}")])
                    .args(["-H", &format!("{EDGE_SECRET_HEADER}: {edge_secret}")])
                    .current_dir(crate::target_dir())
                    .status()
                    .await
                    .context("running schemathesis")?;
                all_passed &= status.success();
            }
            anyhow::Ok(all_passed)
        }
        .await;
        let _ = origin.kill().await;
        if outcome.is_err() {
            eprintln!("xtask: the origin's log is {}", log.display());
        }
        outcome
    })
}

/// A user's access token, so that operations behind a bearer token are exercised past the check.
async fn bearer_token(url: &str, api_key: &str, index: usize) -> anyhow::Result<String> {
    let response = reqwest::Client::new()
        .post(format!("{url}/auth/register"))
        .header("x-api-key", api_key)
        .json(&RegisterRequest {
            email: format!("fuzz-{index}@example.com"),
            password: "correct horse battery staple".into(),
            first_name: None,
            last_name: None,
        })
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("registering the fuzzing user: {}", response.status());
    }
    Ok(response
        .json::<TokenResponse>()
        .await?
        .access_token
        .expose_secret()
        .to_owned())
}
