//! `cargo xtask test`: every test of the project, with whatever it needs installed and started,
//! and cleanup whatever the outcome:
//! - the edge worker built (installing its tools when missing) for the end-to-end tests, and the
//!   origin binary for the tests that run several instances of it;
//! - a fresh PostgreSQL for the origin and end-to-end tests, on which the committed `.sqlx/`
//!   query data is first checked against the migrations (see [`crate::sqlx`]);
//! - the workspace's tests natively, then schemathesis against the origin's OpenAPI description,
//!   then the Prometheus alerting rules' unit tests and the Grafana dashboard's queries
//!   (promtool), then `shared`'s tests again on
//!   wasm32 under Node.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context as _;

use crate::pg::Postgres;

pub fn run(extra: &[String]) -> anyhow::Result<ExitCode> {
    crate::edge::build()?;
    let postgres = Postgres::start(&crate::target_dir().join("gatehouse-pg-test"), true)?;
    // Ctrl-C reaches cargo and the tests directly; xtask only has to outlive them to clean up.
    ignore_interrupts();
    let extra = extra.strip_prefix(&["--".to_owned()]).unwrap_or(extra);
    let mut totals = Totals::default();
    let sqlx_fresh = crate::sqlx::is_fresh(&postgres)?;
    if sqlx_fresh {
        totals.passed += 1;
    } else {
        totals.failed += 1;
    }

    // The multi-instance tests run the real binary, several at once (`gatehouse_tests::cluster`).
    let status = crate::cargo()
        .args([
            "build",
            "-p",
            "gatehouse-origin",
            "--bin",
            "gatehouse-origin",
        ])
        .status()
        .context("building gatehouse-origin")?;
    anyhow::ensure!(status.success(), "building gatehouse-origin failed");
    let origin_bin = crate::target_dir().join("debug/gatehouse-origin");
    let mut native = crate::cargo();
    native
        .args(["test", "--no-fail-fast"])
        .args(extra)
        .env("DATABASE_URL", postgres.url("postgres"))
        .env("GATEHOUSE_ORIGIN_BIN", origin_bin);
    let native_ok = run_counted(&mut native, &mut totals)?;
    // The API description against the running origin; one entry in the totals. Skipped with a
    // filter, like the wasm run.
    let fuzz_ok = !extra.is_empty() || {
        let ok = crate::fuzz::run(&postgres)?;
        if ok {
            totals.passed += 1;
        } else {
            totals.failed += 1;
        }
        ok
    };
    drop(postgres);
    // The Prometheus alerting rules against their unit tests; one entry in the totals.
    let rules_ok = !extra.is_empty() || {
        let ok = alert_rules()?;
        if ok {
            totals.passed += 1;
        } else {
            totals.failed += 1;
        }
        ok
    };

    // The edge compiles `shared` for wasm32; the same tests prove it validates identically there.
    let mut wasm = crate::cargo();
    wasm.args([
        "test",
        "-p",
        "gatehouse-shared",
        "--features",
        "signing",
        "--target",
        "wasm32-unknown-unknown",
    ])
    .env(
        "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
        crate::edge::cargo_bin("wasm-bindgen-test-runner"),
    );
    // With a filter given (`cargo xtask test -- <args>`), only the native tests run.
    let wasm_ok = !extra.is_empty() || run_counted(&mut wasm, &mut totals)?;

    println!(
        "\nxtask test: {} passed, {} failed",
        totals.passed, totals.failed
    );
    Ok(
        if sqlx_fresh && native_ok && fuzz_ok && rules_ok && wasm_ok && totals.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// `promtool check rules` and `promtool test rules` on `ops/prometheus/`, installing Debian's
/// `prometheus` package (which has promtool) when missing and this is a Debian machine run as
/// root. Fails loudly when promtool cannot be had.
fn alert_rules() -> anyhow::Result<bool> {
    let dir = crate::root().join("ops/prometheus");
    let has_promtool = || {
        Command::new("promtool")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !has_promtool() && std::path::Path::new("/usr/bin/apt-get").exists() {
        eprintln!("xtask: promtool not found; installing Debian's prometheus package");
        let updated = Command::new("apt-get").args(["update", "-q"]).status()?;
        let installed = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "prometheus",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        anyhow::ensure!(
            updated.success() && installed.success(),
            "installing prometheus (for promtool) failed"
        );
    }
    anyhow::ensure!(
        has_promtool(),
        "promtool is needed for the alerting rules' tests: install Debian's prometheus package"
    );
    println!("\npromtool: alerting rules in {}", dir.display());
    let checked = Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir)
        .status()?;
    let tested = Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir)
        .status()?;
    // The dashboard's queries, as recording rules, so promtool parses each one's PromQL.
    let dashboard = crate::root().join("ops/grafana/gatehouse.json");
    println!("promtool: the queries of {}", dashboard.display());
    let rules = crate::target_dir().join("grafana-queries.rules.yml");
    std::fs::write(
        &rules,
        dashboard_rules(&std::fs::read_to_string(&dashboard)?)?,
    )?;
    let parsed = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .status()?;
    Ok(checked.success() && tested.success() && parsed.success())
}

/// A Prometheus rules file recording every panel query of the Grafana dashboard `json`, with
/// Grafana's variables replaced by values PromQL accepts.
fn dashboard_rules(json: &str) -> anyhow::Result<String> {
    let dashboard: serde_json::Value = serde_json::from_str(json)?;
    let mut rules = String::from("groups:\n  - name: grafana-dashboard-queries\n    rules:\n");
    let panels = dashboard["panels"]
        .as_array()
        .context("the dashboard has panels")?;
    let mut count = 0;
    for target in panels
        .iter()
        .filter_map(|panel| panel["targets"].as_array())
        .flatten()
    {
        let expr = target["expr"]
            .as_str()
            .context("every target has an expr")?;
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        count += 1;
        // A JSON string is a YAML string.
        rules.push_str(&format!(
            "      - record: grafana_query_{count}\n        expr: {}\n",
            serde_json::Value::String(expr)
        ));
    }
    anyhow::ensure!(count > 0, "the dashboard has no queries");
    Ok(rules)
}

/// Runs a `cargo test`, passing its output through and adding up each test binary's
/// "test result" line, so the whole run ends with one total.
fn run_counted(command: &mut Command, totals: &mut Totals) -> anyhow::Result<bool> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    for line in BufReader::new(child.stdout.take().expect("stdout is piped")).lines() {
        let line = line?;
        println!("{line}");
        totals.add(&line);
    }
    Ok(child.wait()?.success())
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
