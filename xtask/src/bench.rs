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
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{LoginRequest, RefreshRequest, RegisterRequest, TokenResponse};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

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
/// Clients of the login storm, the logins each sends in a row, and the clients verifying tokens
/// at the origin and at the edge during the second storm.
const STORM_CLIENTS: usize = 50;
const STORM_LOGINS_PER_CLIENT: usize = 4;
const STORM_VERIFIERS: usize = 2;
/// Failed logins timed for unknown and for known emails each.
const COMPARISON_SAMPLES: usize = 25;
/// Cloudflare's free-plan limit on a worker's compressed size.
const WORKER_SIZE_LIMIT: u64 = 3 * 1024 * 1024;
pub(crate) const PASSWORD: &str = "correct horse battery staple";

struct Target {
    url: String,
    edge_url: String,
    api_key: String,
    /// Where the origin serves `/metrics` (`METRICS_URL`, default the origin's default port).
    metrics_url: String,
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
    // The cost the origin actually runs at, from its metrics; the bench times one hash at it.
    let cost = metric(&target.metrics_url, "gatehouse_bcrypt_cost")
        .await
        .map(|cost| cost as u32)
        .context("reading gatehouse_bcrypt_cost from the origin's /metrics (METRICS_URL)")?;
    println!(
        "origin {}, edge {} (bcrypt cost {cost}, read from the origin's /metrics; {} cores)",
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
    // The storm: accounts first (registration hashes too), then the comparison of failed logins,
    // then the storm alone and the storm under verification load.
    let accounts = origin.accounts(STORM_CLIENTS).await?;
    let (unknown, known) = origin
        .unknown_versus_known(&accounts, COMPARISON_SAMPLES)
        .await?;
    let storm = origin
        .storm(&edge, &accounts, STORM_LOGINS_PER_CLIENT, 0)
        .await?;
    let loaded = origin
        .storm(&edge, &accounts, STORM_LOGINS_PER_CLIENT, STORM_VERIFIERS)
        .await?;
    let peak_memory = metric(
        &target.metrics_url,
        "gatehouse_process_peak_resident_memory_bytes",
    )
    .await;
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

    let mut report = Report::default();
    let bcrypt_limit = cores() as f64 / hash.as_secs_f64();
    report.value(
        "bcrypt hash, one, median of 5",
        ms(hash),
        "",
        json!(ms_f(hash)),
    );
    report.value(
        "bcrypt limit (cores / one hash)",
        format!("{bcrypt_limit:.2} /s"),
        "",
        json!(bcrypt_limit),
    );
    report.check(
        "origin: sequential flows succeeded",
        format!("{seq_ok}/{FLOWS}"),
        format!("{FLOWS}/{FLOWS}"),
        seq_ok == FLOWS,
    );
    report.check(
        "origin: sequential flow, mean",
        ms(seq_mean),
        format!("<= {}", ms(budget)),
        seq_mean <= budget,
    );
    report.value(
        "origin: sequential flow, mean minus two hashes",
        ms(seq_mean.saturating_sub(hash * 2)),
        "",
        json!(ms_f(seq_mean.saturating_sub(hash * 2))),
    );
    report.check(
        "origin: concurrent flows succeeded",
        format!("{conc_ok}/{FLOWS}"),
        format!("{FLOWS}/{FLOWS}"),
        conc_ok == FLOWS,
    );
    report.value(
        "origin: concurrent flows, wall time",
        ms(concurrent_wall),
        "",
        json!(ms_f(concurrent_wall)),
    );
    report.latencies("origin: verify idle", &idle.latencies, None);
    report.latencies(
        "origin: verify during concurrent flows",
        &during.latencies,
        Some(VERIFY_P99_BUDGET),
    );
    report.check(
        "origin: verify during concurrent flows, answered",
        format!("{}/{}", during.ok, during.latencies.len()),
        "all".into(),
        during.ok == during.latencies.len(),
    );
    report.throughput(
        &format!("origin: verify, {THROUGHPUT_CLIENTS} clients"),
        &origin_rate,
        THROUGHPUT_REQUESTS,
    );
    report.throughput(
        &format!("origin: refresh, {THROUGHPUT_CLIENTS} sessions"),
        &origin_refresh,
        REFRESH_REQUESTS,
    );
    report.check(
        "edge: sequential flows succeeded",
        format!("{edge_ok}/{FLOWS}"),
        format!("{FLOWS}/{FLOWS}"),
        edge_ok == FLOWS,
    );
    report.value(
        "edge: sequential flow, mean",
        ms(mean_of(&edge_sequential)),
        "",
        json!(ms_f(mean_of(&edge_sequential))),
    );
    report.latencies("edge: verify idle", &edge_idle.latencies, None);
    report.throughput(
        &format!("edge: verify, {THROUGHPUT_CLIENTS} clients"),
        &edge_rate,
        THROUGHPUT_REQUESTS,
    );
    report.throughput(
        &format!("edge: refresh, {THROUGHPUT_CLIENTS} sessions"),
        &edge_refresh,
        REFRESH_REQUESTS,
    );
    let (unknown_median, known_median) = (median(&unknown), median(&known));
    let ratio = unknown_median.as_secs_f64() / known_median.as_secs_f64();
    report.value(
        "login, unknown email, median",
        ms(unknown_median),
        "",
        json!(ms_f(unknown_median)),
    );
    report.value(
        "login, known email and wrong password, median",
        ms(known_median),
        "",
        json!(ms_f(known_median)),
    );
    report.check(
        "login, unknown / known median ratio",
        format!("{ratio:.3}"),
        "0.95 - 1.05".into(),
        (0.95..=1.05).contains(&ratio),
    );
    for (label, run, verifiers) in [
        ("storm", &storm, 0),
        ("storm + verify", &loaded, STORM_VERIFIERS),
    ] {
        let ok = run.logins.iter().filter(|s| s.ok).count();
        let total = run.logins.len();
        let fraction = run.logins_per_second() / bcrypt_limit;
        let latencies: Vec<Duration> = run.logins.iter().map(|s| s.latency).collect();
        let title = format!("{label}: {STORM_CLIENTS} clients, {total} logins");
        if verifiers == 0 {
            report.check(
                &format!("{title}, succeeded"),
                format!("{ok}/{total}"),
                "100%".into(),
                ok == total,
            );
            report.check(
                &format!("{label}: logins/s, of the bcrypt limit"),
                format!(
                    "{:.2} /s, {:.1}%",
                    run.logins_per_second(),
                    fraction * 100.0
                ),
                ">= 90%".into(),
                fraction >= 0.9,
            );
        } else {
            report.check(
                &format!("{title}, succeeded"),
                format!("{ok}/{total}"),
                "100%".into(),
                ok == total,
            );
            report.value(
                &format!("{label}: logins/s, of the bcrypt limit"),
                format!(
                    "{:.2} /s, {:.1}%",
                    run.logins_per_second(),
                    fraction * 100.0
                ),
                "",
                json!({"per_second": run.logins_per_second(), "fraction": fraction}),
            );
        }
        report.latencies(&format!("{label}: login"), &latencies, None);
    }
    for (side, samples) in [
        ("origin", &loaded.verify_origin),
        ("edge", &loaded.verify_edge),
    ] {
        let latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
        let ok = samples.iter().filter(|s| s.ok).count();
        let budget = (side == "origin").then_some(VERIFY_P99_BUDGET);
        report.latencies(
            &format!("{side}: verify during the storm, {STORM_VERIFIERS} clients"),
            &latencies,
            budget,
        );
        // Closed-loop clients send fewer requests while the service stalls, so the overall p99
        // can hide stalls: the slowest request and the worst half second are shown too.
        let worst_window = crate::storm::buckets(samples, Duration::from_millis(500))
            .into_iter()
            .map(|(_, p99)| p99)
            .fold(0.0, f64::max);
        let slowest = latencies.iter().max().copied().unwrap_or_default();
        report.value(
            &format!("{side}: verify during the storm, slowest / worst 0.5 s p99"),
            format!("{} / {:.1} ms", ms(slowest), worst_window * 1000.0),
            "",
            json!({"max_ms": ms_f(slowest), "worst_window_p99_ms": worst_window * 1000.0}),
        );
        report.check(
            &format!("{side}: verify during the storm, answered"),
            format!(
                "{ok}/{}, {:.0} req/s",
                samples.len(),
                samples.len() as f64 / loaded.wall.as_secs_f64()
            ),
            "all".into(),
            ok == samples.len(),
        );
    }
    match peak_memory {
        Some(bytes) => report.value(
            "origin: peak resident memory",
            format!("{:.1} MiB", bytes / 1_048_576.0),
            "",
            json!(bytes),
        ),
        None => report.value(
            "origin: peak resident memory",
            "unknown".into(),
            "",
            Value::Null,
        ),
    }
    report.check(
        "edge: worker gzipped (wasm + js)",
        format!("{:.0} KiB", worker_gz as f64 / 1024.0),
        "<= 3072 KiB".into(),
        worker_gz <= WORKER_SIZE_LIMIT,
    );

    let met = report.all_met();
    println!(
        "\n{}",
        if met {
            "all targets met"
        } else {
            "SOME TARGETS MISSED"
        }
    );
    let out = crate::target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let meta = json!({
        "origin": origin.url,
        "edge": edge.url,
        "bcrypt_cost": cost,
        "cores": cores(),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "all_targets_met": met,
    });
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&report.json(meta))?,
    )?;
    let title = format!(
        "Login storm at bcrypt cost {cost}: {STORM_CLIENTS} clients, {STORM_VERIFIERS} verify clients each at the origin and the edge"
    );
    std::fs::write(out.join("storm.svg"), crate::storm::chart(&loaded, &title))?;
    println!(
        "figures: {}\nchart:   {}",
        out.join("bench.json").display(),
        out.join("storm.svg").display()
    );
    Ok(if met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The table as it is printed, and the same figures as JSON.
#[derive(Default)]
struct Report {
    rows: Vec<(String, String, String, Option<bool>, Value)>,
}

impl Report {
    fn print(name: &str, value: &str, target: &str) {
        println!("{name:<58} {value:>22} {target:>14}");
    }

    /// A figure with no target.
    fn value(&mut self, name: &str, value: String, target: &str, number: Value) {
        if self.rows.is_empty() {
            println!();
            Report::print("measure", "value", "target");
        }
        Report::print(name, &value, target);
        self.rows
            .push((name.into(), value, target.into(), None, number));
    }

    /// A figure with a target it meets or misses.
    fn check(&mut self, name: &str, value: String, target: String, met: bool) {
        let marked = if met {
            target.clone()
        } else {
            format!("MISSED {target}")
        };
        self.value(name, value.clone(), &marked, json!(value));
        if let Some(row) = self.rows.last_mut() {
            row.3 = Some(met);
        }
    }

    /// p50 / p99 of `latencies`, checking the p99 against `budget` when given.
    fn latencies(&mut self, name: &str, latencies: &[Duration], budget: Option<Duration>) {
        let (p50, p99) = (percentile(latencies, 50.0), percentile(latencies, 99.0));
        let value = format!("{} / {}", ms(p50), ms(p99));
        let name = format!("{name}, p50 / p99 (n={})", latencies.len());
        match budget {
            Some(budget) => self.check(&name, value, format!("p99 < {}", ms(budget)), p99 < budget),
            None => self.value(
                &name,
                value,
                "",
                json!({"p50_ms": ms_f(p50), "p99_ms": ms_f(p99)}),
            ),
        }
        if let Some(row) = self.rows.last_mut() {
            row.4 = json!({"p50_ms": ms_f(p50), "p99_ms": ms_f(p99), "n": latencies.len()});
        }
    }

    fn throughput(&mut self, name: &str, rate: &Throughput, expected: usize) {
        self.check(
            &format!("{name}, throughput"),
            format!("{:.0} req/s", rate.per_second),
            format!("{}/{expected} ok", rate.ok),
            rate.ok == expected,
        );
        if let Some(row) = self.rows.last_mut() {
            row.4 = json!({"per_second": rate.per_second, "ok": rate.ok, "requests": expected});
        }
        self.value(
            &format!("{name}, p50 / p99"),
            format!("{} / {}", ms(rate.p50), ms(rate.p99)),
            "",
            json!({"p50_ms": ms_f(rate.p50), "p99_ms": ms_f(rate.p99)}),
        );
    }

    fn all_met(&self) -> bool {
        self.rows.iter().all(|row| row.3 != Some(false))
    }

    fn json(&self, meta: Value) -> Value {
        json!({
            "meta": meta,
            "measures": self.rows.iter().map(|(name, value, target, met, number)| json!({
                "measure": name,
                "value": value,
                "target": target,
                "met": met,
                "figures": number,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The value of the unlabelled sample `name` in the origin's `/metrics`.
async fn metric(metrics_url: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{metrics_url}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' '))
        })?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

fn metrics_url() -> String {
    std::env::var("METRICS_URL").unwrap_or_else(|_| "http://127.0.0.1:9007".into())
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
            metrics_url: metrics_url(),
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
                    metrics_url: metrics_url(),
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

    let stack = Stack::start(true, Some(&log), &[]).await?;
    Ok(Target {
        url: stack.origin_url.clone(),
        edge_url: stack.edge_url.clone(),
        api_key: stack.api_key.clone(),
        metrics_url: metrics_url(),
        stack: Some(stack),
    })
}

#[derive(Clone)]
pub(crate) struct Bench {
    pub(crate) client: Client,
    pub(crate) url: String,
    pub(crate) api_key: String,
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
                .bearer_auth(token.expose_secret())
                .send()
                .await?;
            expect(response.status(), StatusCode::OK, path)?;
        }
        Ok(())
    }

    /// Verifies one token repeatedly: `count` times, or until `stop` turns true.
    /// One `GET /auth/verify` with `token`; whether it was answered 200 with its whole body.
    pub(crate) async fn verify_once(&self, token: &str) -> bool {
        let response = self
            .client
            .get(format!("{}/auth/verify", self.url))
            .header("x-api-key", &self.api_key)
            .bearer_auth(token)
            .send()
            .await;
        match response {
            Ok(response) => response.status() == StatusCode::OK && response.bytes().await.is_ok(),
            Err(_) => false,
        }
    }

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
            let success = self.verify_once(&token).await;
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
                        ok += usize::from(bench.verify_once(&token).await);
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

    pub(crate) async fn token(&self) -> anyhow::Result<String> {
        Ok(self
            .session()
            .await?
            .access_token
            .expose_secret()
            .to_owned())
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
pub(crate) fn percentile(samples: &[Duration], p: f64) -> Duration {
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

fn ms_f(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}
