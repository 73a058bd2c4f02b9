//! `cargo xtask bench`: the figures the issues ask for, measured against a running stack
//! (`ORIGIN_URL` and `API_KEY`, or the stack `cargo xtask dev` wrote to `target/gatehouse-dev.env`)
//! or against a release build started for the occasion.
//!
//! Scenarios:
//! - bcrypt: the time of one hash at the origin's cost, measured here (median of 5);
//! - sequential: 20 register → login → verify → profile flows one after another;
//! - concurrent: 20 such flows started at once, while one client keeps verifying a token;
//! - verify alone: sequential verifications on an idle origin, for reference.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use gatehouse_shared::api::{LoginRequest, RegisterRequest, TokenResponse};
use reqwest::{Client, StatusCode};

use crate::dev::Stack;

/// Flows per scenario, as the issue states them.
const FLOWS: usize = 20;
/// Verifications in the idle reference run.
const IDLE_VERIFIES: usize = 500;
/// bcrypt hashes timed to estimate the cost of one.
const HASH_SAMPLES: usize = 5;
/// What a flow may cost beyond its two bcrypt operations.
const FLOW_OVERHEAD_BUDGET: Duration = Duration::from_millis(20);
/// The verify p99 the issue requires during the concurrent flows.
const VERIFY_P99_BUDGET: Duration = Duration::from_millis(20);
const PASSWORD: &str = "correct horse battery staple";

struct Target {
    url: String,
    api_key: String,
    _stack: Option<Stack>,
}

pub async fn run(_args: &[String]) -> anyhow::Result<ExitCode> {
    let target = find_target().await?;
    let client = Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(60))
        .build()?;
    let bench = Bench {
        client,
        url: target.url.clone(),
        api_key: target.api_key.clone(),
    };
    let cost: u32 = std::env::var("PASSWORD_HASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    println!(
        "target {} (bcrypt cost {cost} assumed; {} cores)",
        bench.url,
        cores()
    );

    let hash = median(
        &(0..HASH_SAMPLES)
            .map(|_| time_hash(cost))
            .collect::<Vec<_>>(),
    );
    let budget = hash * 2 + FLOW_OVERHEAD_BUDGET;

    // Warm the connection pool and the origin's caches so the first flow is not an outlier.
    let warm = bench.flow().await;
    warm.outcome.context("warm-up flow failed")?;

    let mut sequential = Vec::new();
    for _ in 0..FLOWS {
        sequential.push(bench.flow().await);
    }

    let idle = bench.verify_loop(IDLE_VERIFIES, None).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let verifier = {
        let bench = bench.clone();
        tokio::spawn(async move { bench.verify_loop(usize::MAX, Some(stop_rx)).await })
    };
    let flows: Vec<_> = (0..FLOWS)
        .map(|_| {
            let bench = bench.clone();
            tokio::spawn(async move { bench.flow().await })
        })
        .collect();
    let started = Instant::now();
    let mut concurrent = Vec::new();
    for flow in flows {
        concurrent.push(flow.await?);
    }
    let concurrent_wall = started.elapsed();
    stop_tx.send(true)?;
    let during = verifier.await??;

    let seq_ok = sequential.iter().filter(|f| f.outcome.is_ok()).count();
    let conc_ok = concurrent.iter().filter(|f| f.outcome.is_ok()).count();
    let seq_mean = mean(&sequential.iter().map(|f| f.elapsed).collect::<Vec<_>>());
    let conc_mean = mean(&concurrent.iter().map(|f| f.elapsed).collect::<Vec<_>>());
    for failure in sequential
        .iter()
        .chain(&concurrent)
        .filter_map(|f| f.outcome.as_ref().err())
    {
        eprintln!("flow failed: {failure:#}");
    }

    println!();
    println!("{:<46} {:>14} {:>14}", "measure", "value", "target");
    let row =
        |name: &str, value: String, target: String| println!("{name:<46} {value:>14} {target:>14}");
    row("bcrypt hash, one, median of 5", ms(hash), String::new());
    row(
        "sequential flows succeeded",
        format!("{seq_ok}/{FLOWS}"),
        format!("{FLOWS}/{FLOWS}"),
    );
    row(
        "sequential flow, mean",
        ms(seq_mean),
        format!("<= {}", ms(budget)),
    );
    row(
        "sequential flow, mean minus two hashes",
        ms(seq_mean.saturating_sub(hash * 2)),
        format!("<= {}", ms(FLOW_OVERHEAD_BUDGET)),
    );
    row(
        "concurrent flows succeeded",
        format!("{conc_ok}/{FLOWS}"),
        format!("{FLOWS}/{FLOWS}"),
    );
    row("concurrent flow, mean", ms(conc_mean), String::new());
    row(
        "concurrent flows, wall time",
        ms(concurrent_wall),
        String::new(),
    );
    row(
        "verify idle, p50",
        ms(percentile(&idle.latencies, 50.0)),
        String::new(),
    );
    row(
        "verify idle, p99",
        ms(percentile(&idle.latencies, 99.0)),
        String::new(),
    );
    row(
        &format!(
            "verify during concurrent flows, n={}",
            during.latencies.len()
        ),
        format!("{}/{} ok", during.ok, during.latencies.len()),
        String::new(),
    );
    row(
        "verify during concurrent flows, p50",
        ms(percentile(&during.latencies, 50.0)),
        String::new(),
    );
    row(
        "verify during concurrent flows, p99",
        ms(percentile(&during.latencies, 99.0)),
        format!("< {}", ms(VERIFY_P99_BUDGET)),
    );

    let met = seq_ok == FLOWS
        && conc_ok == FLOWS
        && seq_mean <= budget
        && during.ok == during.latencies.len()
        && percentile(&during.latencies, 99.0) < VERIFY_P99_BUDGET;
    println!(
        "\n{}",
        if met {
            "all targets met"
        } else {
            "SOME TARGETS MISSED"
        }
    );
    Ok(if met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn find_target() -> anyhow::Result<Target> {
    if let (Ok(url), Ok(api_key)) = (std::env::var("ORIGIN_URL"), std::env::var("API_KEY")) {
        return Ok(Target {
            url,
            api_key,
            _stack: None,
        });
    }
    let env_file = crate::target_dir().join("gatehouse-dev.env");
    if let Ok(contents) = std::fs::read_to_string(&env_file) {
        let get = |name: &str| {
            contents.lines().find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix('=')
                    .map(str::to_owned)
            })
        };
        if let (Some(url), Some(api_key)) = (get("ORIGIN_URL"), get("API_KEY")) {
            let up = reqwest::get(format!("{url}/health"))
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                eprintln!(
                    "xtask: measuring the running stack from {}",
                    env_file.display()
                );
                return Ok(Target {
                    url,
                    api_key,
                    _stack: None,
                });
            }
        }
    }
    let log = crate::target_dir().join("gatehouse-bench-origin.log");
    eprintln!(
        "xtask: no running stack; starting a release build (log: {})",
        log.display()
    );
    let stack = Stack::start(true, Some(&log)).await?;
    Ok(Target {
        url: stack.origin_url.clone(),
        api_key: stack.api_key.clone(),
        _stack: Some(stack),
    })
}

#[derive(Clone)]
struct Bench {
    client: Client,
    url: String,
    api_key: String,
}

struct Flow {
    elapsed: Duration,
    outcome: anyhow::Result<()>,
}

struct Verifies {
    latencies: Vec<Duration>,
    ok: usize,
}

impl Bench {
    /// register → login → verify → profile for a new user.
    async fn flow(&self) -> Flow {
        let started = Instant::now();
        let outcome = self.flow_steps().await;
        Flow {
            elapsed: started.elapsed(),
            outcome,
        }
    }

    async fn flow_steps(&self) -> anyhow::Result<()> {
        let email = format!("bench-{}@example.com", uuid::Uuid::new_v4());
        let register = self
            .client
            .post(format!("{}/auth/register", self.url))
            .header("x-api-key", &self.api_key)
            .json(&RegisterRequest {
                email: email.clone(),
                password: PASSWORD.into(),
                first_name: Some("Bench".into()),
                last_name: None,
            })
            .send()
            .await?;
        expect(register.status(), StatusCode::CREATED, "register")?;
        let login = self
            .client
            .post(format!("{}/auth/login", self.url))
            .header("x-api-key", &self.api_key)
            .json(&LoginRequest {
                email,
                password: PASSWORD.into(),
            })
            .send()
            .await?;
        expect(login.status(), StatusCode::OK, "login")?;
        let token = login.json::<TokenResponse>().await?.access_token;
        for path in ["/auth/verify", "/auth/profile"] {
            let response = self
                .client
                .get(format!("{}{path}", self.url))
                .header("x-api-key", &self.api_key)
                .bearer_auth(&token)
                .send()
                .await?;
            expect(response.status(), StatusCode::OK, path)?;
        }
        Ok(())
    }

    /// Verifies one token repeatedly: `count` times, or until `stop` turns true.
    async fn verify_loop(
        &self,
        count: usize,
        mut stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> anyhow::Result<Verifies> {
        let token = self.token().await?;
        let mut latencies = Vec::new();
        let mut ok = 0;
        while latencies.len() < count {
            if stop.as_mut().is_some_and(|stop| *stop.borrow_and_update()) {
                break;
            }
            let started = Instant::now();
            let response = self
                .client
                .get(format!("{}/auth/verify", self.url))
                .header("x-api-key", &self.api_key)
                .bearer_auth(&token)
                .send()
                .await;
            let success = match response {
                Ok(response) => {
                    response.status() == StatusCode::OK && response.bytes().await.is_ok()
                }
                Err(_) => false,
            };
            latencies.push(started.elapsed());
            ok += usize::from(success);
        }
        Ok(Verifies { latencies, ok })
    }

    async fn token(&self) -> anyhow::Result<String> {
        let email = format!("bench-verify-{}@example.com", uuid::Uuid::new_v4());
        let response = self
            .client
            .post(format!("{}/auth/register", self.url))
            .header("x-api-key", &self.api_key)
            .json(&RegisterRequest {
                email,
                password: PASSWORD.into(),
                first_name: None,
                last_name: None,
            })
            .send()
            .await?;
        expect(response.status(), StatusCode::CREATED, "register")?;
        Ok(response.json::<TokenResponse>().await?.access_token)
    }
}

fn expect(actual: StatusCode, expected: StatusCode, step: &str) -> anyhow::Result<()> {
    if actual != expected {
        bail!("{step}: expected {expected}, got {actual}");
    }
    Ok(())
}

fn time_hash(cost: u32) -> Duration {
    let started = Instant::now();
    bcrypt::hash(PASSWORD, cost).expect("a valid cost");
    started.elapsed()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn median(samples: &[Duration]) -> Duration {
    percentile(samples, 50.0)
}

/// Nearest-rank percentile.
fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mean(samples: &[Duration]) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.iter().sum::<Duration>() / samples.len() as u32
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}
