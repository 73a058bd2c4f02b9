//! `cargo xtask bench`: the figures the issues ask for, measured against a running stack
//! (`ORIGIN_URL`, `EDGE_URL` and `API_KEY`, or the stack `cargo xtask dev` wrote to
//! `target/gatehouse-dev.env`) or against a release build started for the occasion.
//!
//! Scenarios:
//! - bcrypt: the time of one hash at the origin's cost, measured here (median of 5);
//! - sequential: 20 register → login → verify → profile flows one after another, at the origin
//!   and through the edge;
//! - concurrent: 20 such flows started at once, while one client keeps verifying a token;
//! - verify alone: sequential verifications on idle services, and throughput with
//!   `THROUGHPUT_CLIENTS` concurrent clients, at the origin and through the edge (workerd);
//! - refresh: `THROUGHPUT_CLIENTS` sessions rotating their refresh tokens concurrently, at the
//!   origin and through the edge;
//! - the built worker's gzipped size against the free plan's 3 MiB.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use gatehouse_shared::api::{LoginRequest, RefreshRequest, RegisterRequest, TokenResponse};
use reqwest::{Client, StatusCode};

use crate::dev::Stack;

/// Flows per scenario, as the issue states them.
const FLOWS: usize = 20;
/// Verifications in the idle reference runs.
const IDLE_VERIFIES: usize = 500;
/// Concurrent clients of the verify throughput runs, and requests each sends.
const THROUGHPUT_CLIENTS: usize = 16;
const THROUGHPUT_PER_CLIENT: usize = 200;
const THROUGHPUT_REQUESTS: usize = THROUGHPUT_CLIENTS * THROUGHPUT_PER_CLIENT;
/// Refresh-token rotations each throughput client performs in a row.
const REFRESHES_PER_CLIENT: usize = 50;
const REFRESH_REQUESTS: usize = THROUGHPUT_CLIENTS * REFRESHES_PER_CLIENT;
/// bcrypt hashes timed to estimate the cost of one.
const HASH_SAMPLES: usize = 5;
/// What a flow may cost beyond its two bcrypt operations.
const FLOW_OVERHEAD_BUDGET: Duration = Duration::from_millis(20);
/// The verify p99 the issue requires during the concurrent flows.
const VERIFY_P99_BUDGET: Duration = Duration::from_millis(20);
/// Cloudflare's free-plan limit on a worker's compressed size.
const WORKER_SIZE_LIMIT: u64 = 3 * 1024 * 1024;
const PASSWORD: &str = "correct horse battery staple";

struct Target {
    url: String,
    edge_url: String,
    api_key: String,
    stack: Option<Stack>,
}

pub async fn run(_args: &[String]) -> anyhow::Result<ExitCode> {
    let mut target = find_target().await?;
    let outcome = tokio::select! {
        outcome = measure(&target) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Some(stack) = target.stack.as_mut() {
        stack.stop().await;
    }
    outcome
}

async fn measure(target: &Target) -> anyhow::Result<ExitCode> {
    let client = Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(60))
        .build()?;
    let origin = Bench {
        client: client.clone(),
        url: target.url.clone(),
        api_key: target.api_key.clone(),
    };
    let edge = Bench {
        client,
        url: target.edge_url.clone(),
        api_key: target.api_key.clone(),
    };
    let cost: u32 = std::env::var("PASSWORD_HASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    println!(
        "origin {}, edge {} (bcrypt cost {cost} assumed; {} cores)",
        origin.url,
        edge.url,
        cores()
    );

    let hash = median(
        &(0..HASH_SAMPLES)
            .map(|_| time_hash(cost))
            .collect::<Vec<_>>(),
    );
    let budget = hash * 2 + FLOW_OVERHEAD_BUDGET;

    // Warm connection pools and caches so that first requests are not outliers.
    origin
        .flow()
        .await
        .outcome
        .context("warm-up flow at the origin failed")?;
    edge.flow()
        .await
        .outcome
        .context("warm-up flow through the edge failed")?;

    let mut sequential = Vec::new();
    for _ in 0..FLOWS {
        sequential.push(origin.flow().await);
    }
    let idle = origin.verify_loop(IDLE_VERIFIES, None).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let verifier = {
        let origin = origin.clone();
        tokio::spawn(async move { origin.verify_loop(usize::MAX, Some(stop_rx)).await })
    };
    let flows: Vec<_> = (0..FLOWS)
        .map(|_| {
            let origin = origin.clone();
            tokio::spawn(async move { origin.flow().await })
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

    let mut edge_sequential = Vec::new();
    for _ in 0..FLOWS {
        edge_sequential.push(edge.flow().await);
    }
    let edge_idle = edge.verify_loop(IDLE_VERIFIES, None).await?;
    let origin_rate = origin.verify_throughput().await?;
    let edge_rate = edge.verify_throughput().await?;
    let origin_refresh = origin.refresh_throughput().await?;
    let edge_refresh = edge.refresh_throughput().await?;
    let worker_gz = worker_gzipped_size()?;

    let succeeded = |flows: &[Flow]| flows.iter().filter(|f| f.outcome.is_ok()).count();
    let mean_of = |flows: &[Flow]| mean(&flows.iter().map(|f| f.elapsed).collect::<Vec<_>>());
    let (seq_ok, conc_ok, edge_ok) = (
        succeeded(&sequential),
        succeeded(&concurrent),
        succeeded(&edge_sequential),
    );
    let seq_mean = mean_of(&sequential);
    for failure in sequential
        .iter()
        .chain(&concurrent)
        .chain(&edge_sequential)
        .filter_map(|f| f.outcome.as_ref().err())
    {
        eprintln!("flow failed: {failure:#}");
    }

    println!();
    println!("{:<50} {:>16} {:>14}", "measure", "value", "target");
    let row = |name: &str, value: String, target: String| {
        println!("{name:<50} {value:>16} {target:>14}");
    };
    let pair = |a: Duration, b: Duration| format!("{} / {}", ms(a), ms(b));
    row("bcrypt hash, one, median of 5", ms(hash), String::new());
    row(
        "origin: sequential flows succeeded",
        format!("{seq_ok}/{FLOWS}"),
        format!("{FLOWS}/{FLOWS}"),
    );
    row(
        "origin: sequential flow, mean",
        ms(seq_mean),
        format!("<= {}", ms(budget)),
    );
    row(
        "origin: sequential flow, mean minus two hashes",
        ms(seq_mean.saturating_sub(hash * 2)),
        format!("<= {}", ms(FLOW_OVERHEAD_BUDGET)),
    );
    row(
        "origin: concurrent flows succeeded",
        format!("{conc_ok}/{FLOWS}"),
        format!("{FLOWS}/{FLOWS}"),
    );
    row(
        "origin: concurrent flow, mean",
        ms(mean_of(&concurrent)),
        String::new(),
    );
    row(
        "origin: concurrent flows, wall time",
        ms(concurrent_wall),
        String::new(),
    );
    row(
        "origin: verify idle, p50 / p99",
        pair(
            percentile(&idle.latencies, 50.0),
            percentile(&idle.latencies, 99.0),
        ),
        String::new(),
    );
    row(
        "origin: verify during concurrent flows, n",
        format!("{}/{} ok", during.ok, during.latencies.len()),
        String::new(),
    );
    row(
        "origin: verify during concurrent flows, p50",
        ms(percentile(&during.latencies, 50.0)),
        String::new(),
    );
    row(
        "origin: verify during concurrent flows, p99",
        ms(percentile(&during.latencies, 99.0)),
        format!("< {}", ms(VERIFY_P99_BUDGET)),
    );
    row(
        &format!("origin: verify throughput, {THROUGHPUT_CLIENTS} clients"),
        format!("{:.0} req/s", origin_rate.per_second),
        format!("{}/{THROUGHPUT_REQUESTS} ok", origin_rate.ok),
    );
    row(
        "origin: verify under that load, p50 / p99",
        pair(origin_rate.p50, origin_rate.p99),
        String::new(),
    );
    row(
        &format!("origin: refresh throughput, {THROUGHPUT_CLIENTS} sessions"),
        format!("{:.0} req/s", origin_refresh.per_second),
        format!("{}/{REFRESH_REQUESTS} ok", origin_refresh.ok),
    );
    row(
        "origin: refresh under that load, p50 / p99",
        pair(origin_refresh.p50, origin_refresh.p99),
        String::new(),
    );
    row(
        "edge: sequential flows succeeded",
        format!("{edge_ok}/{FLOWS}"),
        format!("{FLOWS}/{FLOWS}"),
    );
    row(
        "edge: sequential flow, mean",
        ms(mean_of(&edge_sequential)),
        String::new(),
    );
    row(
        "edge: verify idle, p50 / p99",
        pair(
            percentile(&edge_idle.latencies, 50.0),
            percentile(&edge_idle.latencies, 99.0),
        ),
        String::new(),
    );
    row(
        &format!("edge: verify throughput, {THROUGHPUT_CLIENTS} clients"),
        format!("{:.0} req/s", edge_rate.per_second),
        format!("{}/{THROUGHPUT_REQUESTS} ok", edge_rate.ok),
    );
    row(
        "edge: verify under that load, p50 / p99",
        pair(edge_rate.p50, edge_rate.p99),
        String::new(),
    );
    row(
        &format!("edge: refresh throughput, {THROUGHPUT_CLIENTS} sessions"),
        format!("{:.0} req/s", edge_refresh.per_second),
        format!("{}/{REFRESH_REQUESTS} ok", edge_refresh.ok),
    );
    row(
        "edge: refresh under that load, p50 / p99",
        pair(edge_refresh.p50, edge_refresh.p99),
        String::new(),
    );
    row(
        "edge: worker gzipped (wasm + js)",
        format!("{:.0} KiB", worker_gz as f64 / 1024.0),
        "<= 3072 KiB".into(),
    );

    let met = seq_ok == FLOWS
        && conc_ok == FLOWS
        && edge_ok == FLOWS
        && seq_mean <= budget
        && during.ok == during.latencies.len()
        && percentile(&during.latencies, 99.0) < VERIFY_P99_BUDGET
        && origin_rate.ok == THROUGHPUT_REQUESTS
        && edge_rate.ok == THROUGHPUT_REQUESTS
        && origin_refresh.ok == REFRESH_REQUESTS
        && edge_refresh.ok == REFRESH_REQUESTS
        && worker_gz <= WORKER_SIZE_LIMIT;
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
    if let (Ok(url), Ok(edge_url), Ok(api_key)) = (
        std::env::var("ORIGIN_URL"),
        std::env::var("EDGE_URL"),
        std::env::var("API_KEY"),
    ) {
        return Ok(Target {
            url,
            edge_url,
            api_key,
            stack: None,
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
        if let (Some(url), Some(edge_url), Some(api_key)) =
            (get("ORIGIN_URL"), get("EDGE_URL"), get("API_KEY"))
        {
            let healthy = |url: String| async move {
                reqwest::get(format!("{url}/health"))
                    .await
                    .is_ok_and(|r| r.status().is_success())
            };
            if healthy(url.clone()).await && healthy(edge_url.clone()).await {
                eprintln!(
                    "xtask: measuring the running stack from {}",
                    env_file.display()
                );
                return Ok(Target {
                    url,
                    edge_url,
                    api_key,
                    stack: None,
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
        edge_url: stack.edge_url.clone(),
        api_key: stack.api_key.clone(),
        stack: Some(stack),
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

    /// `THROUGHPUT_REQUESTS` verifications from `THROUGHPUT_CLIENTS` concurrent clients.
    async fn verify_throughput(&self) -> anyhow::Result<Throughput> {
        let token = self.token().await?;
        let per_client = THROUGHPUT_PER_CLIENT;
        let started = Instant::now();
        let clients: Vec<_> = (0..THROUGHPUT_CLIENTS)
            .map(|_| {
                let (bench, token) = (self.clone(), token.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(per_client);
                    let mut ok = 0;
                    for _ in 0..per_client {
                        let sent = Instant::now();
                        let response = bench
                            .client
                            .get(format!("{}/auth/verify", bench.url))
                            .header("x-api-key", &bench.api_key)
                            .bearer_auth(&token)
                            .send()
                            .await;
                        if let Ok(response) = response {
                            let good = response.status() == StatusCode::OK;
                            ok += usize::from(good && response.bytes().await.is_ok());
                        }
                        latencies.push(sent.elapsed());
                    }
                    (latencies, ok)
                })
            })
            .collect();
        Throughput::gather(clients, started).await
    }

    /// `THROUGHPUT_CLIENTS` concurrent clients, each with its own session, each rotating its
    /// refresh token `REFRESHES_PER_CLIENT` times in a row (every refresh spends the token the
    /// previous one returned).
    async fn refresh_throughput(&self) -> anyhow::Result<Throughput> {
        let mut sessions = Vec::with_capacity(THROUGHPUT_CLIENTS);
        for _ in 0..THROUGHPUT_CLIENTS {
            sessions.push(self.session().await?.refresh_token);
        }
        let started = Instant::now();
        let clients: Vec<_> = sessions
            .into_iter()
            .map(|mut refresh_token| {
                let bench = self.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(REFRESHES_PER_CLIENT);
                    let mut ok = 0;
                    for _ in 0..REFRESHES_PER_CLIENT {
                        let sent = Instant::now();
                        let response = bench
                            .client
                            .post(format!("{}/auth/refresh", bench.url))
                            .header("x-api-key", &bench.api_key)
                            .json(&RefreshRequest {
                                refresh_token: refresh_token.clone(),
                            })
                            .send()
                            .await;
                        latencies.push(sent.elapsed());
                        let Ok(response) = response else { break };
                        if response.status() != StatusCode::OK {
                            break;
                        }
                        let Ok(next) = response.json::<TokenResponse>().await else {
                            break;
                        };
                        refresh_token = next.refresh_token;
                        ok += 1;
                    }
                    (latencies, ok)
                })
            })
            .collect();
        Throughput::gather(clients, started).await
    }

    async fn token(&self) -> anyhow::Result<String> {
        Ok(self.session().await?.access_token)
    }

    /// A new account and its first session.
    async fn session(&self) -> anyhow::Result<TokenResponse> {
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
        Ok(response.json::<TokenResponse>().await?)
    }
}

struct Throughput {
    per_second: f64,
    ok: usize,
    p50: Duration,
    p99: Duration,
}

type ClientRun = tokio::task::JoinHandle<(Vec<Duration>, usize)>;

impl Throughput {
    /// Waits for `clients` (each returning its latencies and successes) and sums them up.
    async fn gather(clients: Vec<ClientRun>, started: Instant) -> anyhow::Result<Throughput> {
        let mut latencies = Vec::new();
        let mut ok = 0;
        for client in clients {
            let (mut client_latencies, client_ok) = client.await?;
            latencies.append(&mut client_latencies);
            ok += client_ok;
        }
        let elapsed = started.elapsed();
        Ok(Throughput {
            per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
            ok,
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
        })
    }
}

/// gzip -9 of the worker's wasm module and JavaScript glue, the size Cloudflare limits.
fn worker_gzipped_size() -> anyhow::Result<u64> {
    let build = crate::edge::dir().join("build");
    let mut total = 0;
    for file in ["index_bg.wasm", "index.js"] {
        let output = std::process::Command::new("gzip")
            .args(["-9", "-c"])
            .arg(build.join(file))
            .output()
            .context("running gzip")?;
        if !output.status.success() {
            bail!("gzip {file} failed; is the worker built?");
        }
        total += output.stdout.len() as u64;
    }
    Ok(total)
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
