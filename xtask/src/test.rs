//! `cargo xtask test`: a fresh PostgreSQL, every test of the workspace, and cleanup whatever
//! the outcome.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::pg::Postgres;

pub fn run(extra: &[String]) -> anyhow::Result<ExitCode> {
    let postgres = Postgres::start(&crate::target_dir().join("gatehouse-pg-test"), true)?;
    // Ctrl-C reaches cargo and the tests directly; xtask only has to outlive them to clean up.
    ignore_interrupts();
    let extra = extra.strip_prefix(&["--".to_owned()]).unwrap_or(extra);
    let status = crate::cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
        .env("DATABASE_URL", postgres.url("postgres"))
        .status()
        .context("running cargo test")?;
    drop(postgres);
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn ignore_interrupts() {
    // A tokio signal listener replaces the default "terminate" action for SIGINT.
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(runtime) = runtime {
            runtime.block_on(async {
                loop {
                    let _ = tokio::signal::ctrl_c().await;
                }
            });
        }
    });
}
