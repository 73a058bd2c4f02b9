//! `cargo xtask test`: a fresh PostgreSQL, every test of the workspace, and cleanup whatever
//! the outcome.

use std::io::{BufRead as _, BufReader};
use std::process::{ExitCode, Stdio};

use anyhow::Context as _;

use crate::pg::Postgres;

pub fn run(extra: &[String]) -> anyhow::Result<ExitCode> {
    // The end-to-end tests run the built worker; building it also installs its tools.
    crate::edge::build()?;
    let postgres = Postgres::start(&crate::target_dir().join("gatehouse-pg-test"), true)?;
    // Ctrl-C reaches cargo and the tests directly; xtask only has to outlive them to clean up.
    ignore_interrupts();
    let extra = extra.strip_prefix(&["--".to_owned()]).unwrap_or(extra);
    let mut child = crate::cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
        .env("DATABASE_URL", postgres.url("postgres"))
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Pass the output through, adding up each test binary's "test result" line, so the run ends
    // with one total rather than with the last (often empty) binary's count.
    let mut totals = Totals::default();
    for line in BufReader::new(child.stdout.take().expect("stdout is piped")).lines() {
        let line = line?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait()?;
    drop(postgres);
    println!(
        "\nxtask test: {} passed, {} failed",
        totals.passed, totals.failed
    );
    Ok(if status.success() && totals.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    /// Reads `test result: ok. 37 passed; 0 failed; 0 ignored; ...`.
    fn add(&mut self, line: &str) {
        let Some(counts) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in counts.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(number)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += number,
                "failed" => self.failed += number,
                _ => {}
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn totals_add_up_every_result_line() {
        let mut totals = Totals::default();

        totals.add("test result: ok. 37 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 14.14s");
        totals
            .add("test result: FAILED. 10 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        totals.add("test something ... ok");

        assert_eq!((totals.passed, totals.failed), (47, 1));
    }
}
