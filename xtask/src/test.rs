//! `cargo xtask test`: every test of the project, with whatever it needs installed and started,
//! and cleanup whatever the outcome:
//! - the edge worker built (installing its tools when missing) for the end-to-end tests, and the
//!   origin binary for the tests that run several instances of it;
//! - a fresh PostgreSQL for the origin and end-to-end tests, on which the committed `.sqlx/`
//!   query data is first checked against the migrations (see [`crate::sqlx`]);
//! - the workspace's tests natively, `shared`'s tests again on wasm32 under Node, the Prometheus
//!   alerting rules' unit tests and the Grafana dashboard's queries (promtool), and schemathesis
//!   against the origin's OpenAPI description, all beside the end-to-end tests through the edge,
//!   which mostly wait on workerd and sockets (the run takes about as long as they do).

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

    let origin_bin = crate::target_dir().join("debug/gatehouse-origin");
    let native = || {
        let mut native = crate::cargo();
        native
            .args(["test", "--no-fail-fast"])
            .env("DATABASE_URL", postgres.url("postgres"))
            .env("GATEHOUSE_ORIGIN_BIN", &origin_bin);
        native
    };
    if !extra.is_empty() {
        // A filter or a target chosen by hand: one cargo test, and nothing else, after the
        // origin's binary, which the multi-instance tests run (`gatehouse_tests::cluster`).
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
        let native_ok = run_counted(native().args(extra), &mut totals)?;
        return Ok(finish(&totals, sqlx_fresh && native_ok));
    }

    // Every test binary, and the origin's binary that the multi-instance tests run several of at
    // once (`gatehouse_tests::cluster`), built in one invocation. Every later invocation selects
    // the whole workspace too and picks its targets by kind and name: cargo resolves dependency
    // features for the packages a command selects, so runs with different `-p` sets each rebuilt
    // sqlx, hyper, axum, lettre and the origin with other features (17 crates compiled two or
    // three times on a fresh machine).
    let status = native()
        .args(["--workspace", "--no-run"])
        .status()
        .context("building the tests")?;
    anyhow::ensure!(status.success(), "building the tests failed");
    // Cargo builds the origin's binary here because the origin's own integration tests run it
    // (`CARGO_BIN_EXE_gatehouse-origin`), with the same features as everything else in this run.
    anyhow::ensure!(
        origin_bin.exists(),
        "{} was not built with the tests (do the origin's integration tests still run it?)",
        origin_bin.display()
    );

    // The end-to-end tests through the edge spend most of their time waiting on workerd and
    // sockets, so the rest of the run goes on beside them: every other test binary, the wasm32
    // run, the rules and schemathesis. Their output is shown after the rest, in one piece.
    const EDGE_TESTS: &str = "edge";
    let edge_tests = Background::spawn(native().args(["--workspace", "--test", EDGE_TESTS]))?;
    // Unit tests (the edge's run natively: they test its route table and helpers, not the
    // runtime), every other integration test, then the doc tests.
    let mut others = native();
    others.args(["--workspace", "--lib", "--bins"]);
    for name in integration_tests()?
        .iter()
        .filter(|name| *name != EDGE_TESTS)
    {
        others.args(["--test", name]);
    }
    let mut ok = run_counted(&mut others, &mut totals)?;
    ok &= run_counted(native().args(["--workspace", "--doc"]), &mut totals)?;

    // The edge compiles `shared` for wasm32; the same tests prove it validates identically there.
    let mut wasm = crate::cargo();
    wasm.args([
        "test",
        "-p",
        "gatehouse-shared",
        "--features",
        "signing,totp",
        "--target",
        "wasm32-unknown-unknown",
    ])
    .env(
        "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
        crate::edge::cargo_bin("wasm-bindgen-test-runner"),
    );
    ok &= run_counted(&mut wasm, &mut totals)?;

    // The Prometheus alerting rules against their unit tests, and the API description against a
    // running origin (schemathesis); one entry each in the totals.
    // schemathesis runs the origin binary the tests were built with: building it again with
    // `-p gatehouse-origin` alone would rebuild it with other features, and replace it while the
    // edge tests' clusters run it.
    for step_ok in [alert_rules()?, crate::fuzz::run(&postgres, &origin_bin)?] {
        if step_ok {
            totals.passed += 1;
        } else {
            totals.failed += 1;
        }
        ok &= step_ok;
    }

    ok &= edge_tests.finish(&mut totals)?;
    drop(postgres);
    Ok(finish(&totals, sqlx_fresh && ok))
}

/// The names of the workspace's integration test targets (`tests/*.rs`, `tests/*/main.rs`), from
/// `cargo metadata`, so that a new one runs without being listed here.
fn integration_tests() -> anyhow::Result<Vec<String>> {
    let output = crate::cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("running cargo metadata")?;
    anyhow::ensure!(output.status.success(), "cargo metadata failed");
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading cargo metadata")?;
    let targets = metadata["packages"]
        .as_array()
        .context("cargo metadata lists no packages")?
        .iter()
        .filter_map(|package| package["targets"].as_array())
        .flatten();
    let mut names: Vec<String> = targets
        .filter(|target| {
            target["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|kind| kind == "test"))
        })
        .filter_map(|target| target["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    anyhow::ensure!(
        !names.is_empty(),
        "cargo metadata lists no integration tests"
    );
    Ok(names)
}

/// Prints the total and turns the outcome into the exit code.
fn finish(totals: &Totals, ok: bool) -> ExitCode {
    let total = format!(
        "\nxtask test: {} passed, {} failed",
        totals.passed, totals.failed
    );
    if print_all(&[total]).is_err() {
        eprintln!(
            "xtask test: {} passed, {} failed",
            totals.passed, totals.failed
        );
    }
    if ok && totals.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A `cargo test` running beside the rest of the run, its output (stdout and stderr) held until
/// [`Background::finish`]; killed if the run ends without waiting for it.
struct Background {
    child: std::process::Child,
    output: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Background {
    fn spawn(command: &mut Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running cargo test")?;
        let lines = |stream: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                    .collect()
            })
        };
        let output = vec![
            lines(Box::new(child.stdout.take().expect("stdout is piped"))),
            lines(Box::new(child.stderr.take().expect("stderr is piped"))),
        ];
        Ok(Background { child, output })
    }

    /// Waits for it, prints what it printed (its stdout, then its stderr: cargo's progress and
    /// the tests' own messages) and adds its results to `totals`.
    fn finish(mut self, totals: &mut Totals) -> anyhow::Result<bool> {
        let status = self.child.wait()?;
        for reader in std::mem::take(&mut self.output) {
            let lines = reader.join().expect("the reader does not panic");
            for line in &lines {
                totals.add(line);
            }
            print_all(&lines)?;
        }
        Ok(status.success())
    }
}

/// Prints `lines` to stdout, waiting whenever it is full. Node, which the end-to-end tests run
/// and which inherits this process's stderr, makes a pipe it shares with stdout (as in
/// `cargo xtask test 2>&1 | tee`) non-blocking, so a burst of output can meet `WouldBlock`,
/// which `println!` turns into a panic.
fn print_all(lines: &[String]) -> std::io::Result<()> {
    use std::io::{ErrorKind, Write as _};
    let mut text = lines.join("\n");
    text.push('\n');
    let mut stdout = std::io::stdout().lock();
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        match stdout.write(rest) {
            Ok(written) => rest = &rest[written..],
            Err(error)
                if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(error) => return Err(error),
        }
    }
    loop {
        match stdout.flush() {
            Ok(()) => return Ok(()),
            Err(error)
                if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(error) => return Err(error),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Already reaped after `finish`; otherwise the run is ending early.
        let _ = self.child.kill();
    }
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
        totals.add(&line);
        print_all(std::slice::from_ref(&line))?;
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
