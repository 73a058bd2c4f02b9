//! Issue 14's figures, from one run: throughput with wrk, the origin's token check against its
//! own cheapest route (`/health`) and the edge against a hello-world JavaScript Worker under the
//! same `wrangler dev`; each with and without what it remembers; and how long a logout at one
//! origin takes to be refused by another.
//!
//! The variants run as extra processes beside the measured stack, on its database: two more
//! origins (one without the verified-token cache, one remembering nothing, as every check was
//! before) and, one after another, the hello Worker (measured in turn with the edge's cheapest
//! answer, three rounds) and two more edges (one without the token cache, one logging
//! every success). Only one of them is under load at a time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use reqwest::StatusCode;
use serde_json::json;
use tokio::process::Child;

use super::report::Report;
use super::wrk::{self, Rate};
use super::{BENCH_ORIGIN_ENV, Target};
use crate::dev;

/// How long each wrk run lasts.
const WRK_RUN: Duration = Duration::from_secs(8);
/// Logouts timed from one origin to another.
const PROPAGATION_SAMPLES: usize = 20;
/// The ratios the issue sets.
const ORIGIN_VERIFY_OF_HEALTH: f64 = 0.35;
const EDGE_CHEAPEST_OF_HELLO: f64 = 0.8;
const EDGE_VERIFY_OF_CHEAPEST: f64 = 0.8;
/// Where the extra edges and the hello Worker listen.
const HELLO_PORT: u16 = 8788;
const EXTRA_EDGE_PORT: u16 = 8789;
/// The browser origin `wrangler.toml`'s `local` environment allows, for the preflight.
const ALLOWED_ORIGIN: &str = "http://localhost:3000";

pub async fn measure(target: &Target, report: &mut Report) -> anyhow::Result<()> {
    wrk::ensure_installed()?;
    let origin = &target.origin;
    let token = origin.token().await?;
    let bearer = format!("Bearer {token}");
    let verify_headers = [
        ("X-API-Key", origin.api_key.as_str()),
        ("Authorization", bearer.as_str()),
    ];

    // The origin against its own cheapest routes.
    let health = load(&format!("{}/health", origin.url), &[]).await?;
    let jwks = load(&format!("{}/.well-known/jwks.json", origin.url), &[]).await?;
    let verify = load(&format!("{}/auth/verify", origin.url), &verify_headers).await?;
    let extra = ExtraOrigins::start(target).await?;
    let no_token_cache = load(
        &format!("{}/auth/verify", extra.no_token_cache.1),
        &verify_headers,
    )
    .await?;
    let nothing_remembered = load(
        &format!("{}/auth/verify", extra.nothing_remembered.1),
        &verify_headers,
    )
    .await?;
    let propagation = propagation(target, &extra.no_token_cache.1).await;
    drop(extra);
    let propagation = propagation?;

    rate(report, "origin: GET /health (wrk)", &health);
    rate(report, "origin: GET /.well-known/jwks.json (wrk)", &jwks);
    rate(report, "origin: GET /auth/verify (wrk)", &verify);
    ratio(
        report,
        "origin: verify / health",
        &verify,
        &health,
        ORIGIN_VERIFY_OF_HEALTH,
    );
    rate(
        report,
        "origin: GET /auth/verify, TOKEN_CACHE_ENTRIES=0 (wrk)",
        &no_token_cache,
    );
    rate(
        report,
        "origin: GET /auth/verify, nothing remembered (LISTEN_DATABASE_URL=off, TOKEN_CACHE_ENTRIES=0; as before) (wrk)",
        &nothing_remembered,
    );
    let mut sorted = propagation.clone();
    sorted.sort();
    let (p50, max) = (sorted[sorted.len() / 2], sorted[sorted.len() - 1]);
    report.check(
        &format!(
            "origin: logout at one instance until refused at another, p50 / max (n={})",
            sorted.len()
        ),
        format!("{} / {}", super::ms(p50), super::ms(max)),
        "max < 100 ms",
        max < Duration::from_millis(100),
    );

    measure_edge(target, report).await
}

/// The edge's rows: its cheapest answer against a hello-world Worker, verify against that answer,
/// and the variants. Also `cargo xtask bench edge` on its own.
pub async fn measure_edge(target: &Target, report: &mut Report) -> anyhow::Result<()> {
    wrk::ensure_installed()?;
    let (origin, edge) = (&target.origin, &target.edge);
    let token = origin.token().await?;
    let bearer = format!("Bearer {token}");
    let verify_headers = [
        ("X-API-Key", origin.api_key.as_str()),
        ("Authorization", bearer.as_str()),
    ];

    // The edge against a hello-world Worker under the same wrangler dev, runs taken in turn (hello
    // answering a GET, hello answering the edge's very preflight, the edge), so drift over the
    // minute (the machine's other processes settling, CPU frequency) falls on all alike; each
    // figure is the median of its runs and each ratio the median of the rounds' ratios. The
    // second reference isolates the worker's own cost: `wrangler dev` (not production) wraps
    // every worker in a middleware that drains an unread request body, and an OPTIONS request
    // has one, empty, where a GET has none.
    let preflight = write_preflight_script()?;
    let rounds = {
        let worker = Wrangler::start(
            "xtask/assets/hello-worker/wrangler.toml",
            None,
            HELLO_PORT,
            &[],
        )
        .await?;
        let mut rounds = Vec::with_capacity(HELLO_ROUNDS);
        for _ in 0..HELLO_ROUNDS {
            let hello = load(&worker.url(), &[]).await?;
            let hello_preflight = edge_preflight(&worker.url(), &preflight).await?;
            let cheapest = edge_preflight(&edge.url, &preflight).await?;
            rounds.push([hello, hello_preflight, cheapest]);
        }
        drop(worker);
        rounds
    };
    let [hello, hello_preflight, cheapest] = medians(&rounds);
    let of_hello = median_ratio(&rounds, 2, 0);
    let of_hello_preflight = median_ratio(&rounds, 2, 1);
    let not_found = load(&format!("{}/no-such-path", edge.url), &[]).await?;
    let edge_verify = load(&format!("{}/auth/verify", edge.url), &verify_headers).await?;
    let secret = format!("EDGE_SECRET:{}", edge.edge_secret);
    let (edge_no_cache, edge_logging_all) = {
        let worker = Wrangler::start(
            "wrangler.toml",
            Some("local"),
            EXTRA_EDGE_PORT,
            &[&secret, "TOKEN_CACHE_ENTRIES:0"],
        )
        .await?;
        let no_cache = load(&format!("{}/auth/verify", worker.url()), &verify_headers).await;
        drop(worker);
        let worker = Wrangler::start(
            "wrangler.toml",
            Some("local"),
            EXTRA_EDGE_PORT,
            &[&secret, "SUCCESS_LOG_EVERY:1"],
        )
        .await?;
        let logging = edge_preflight(&worker.url(), &preflight).await;
        drop(worker);
        (no_cache?, logging?)
    };

    rate(
        report,
        "edge reference: hello-world JavaScript Worker, GET (wrk)",
        &hello,
    );
    rate(
        report,
        "edge reference: hello-world JavaScript Worker, the edge's preflight request (wrk)",
        &hello_preflight,
    );
    rate(
        report,
        "edge: cheapest answer, a CORS preflight answered at the edge (wrk)",
        &cheapest,
    );
    report.check(
        &format!("edge: cheapest answer / hello Worker's GET, median of {HELLO_ROUNDS} rounds"),
        format!("{of_hello:.2}"),
        &format!(">= {EDGE_CHEAPEST_OF_HELLO:.2}"),
        of_hello >= EDGE_CHEAPEST_OF_HELLO,
    );
    report.value(
        &format!(
            "edge: cheapest answer / hello Worker answering the same request, median of {HELLO_ROUNDS} rounds"
        ),
        format!("{of_hello_preflight:.2}"),
        of_hello_preflight,
    );
    rate(
        report,
        "edge: the preflight with every success logged, SUCCESS_LOG_EVERY=1 (wrk)",
        &edge_logging_all,
    );
    failing_rate(
        report,
        "edge: 404 answered at the edge, logged as every failure is (wrk)",
        &not_found,
    );
    rate(report, "edge: GET /auth/verify (wrk)", &edge_verify);
    ratio(
        report,
        "edge: verify / cheapest answer",
        &edge_verify,
        &cheapest,
        EDGE_VERIFY_OF_CHEAPEST,
    );
    rate(
        report,
        "edge: GET /auth/verify, TOKEN_CACHE_ENTRIES=0 (wrk)",
        &edge_no_cache,
    );
    Ok(())
}

/// Rounds of runs taken in turn: each worker measured that many times.
const HELLO_ROUNDS: usize = 3;

/// Each column's median run (by rate).
fn medians<const N: usize>(rounds: &[[Rate; N]]) -> [Rate; N] {
    std::array::from_fn(|column| {
        let mut runs: Vec<Rate> = rounds.iter().map(|round| round[column]).collect();
        runs.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
        runs[runs.len() / 2]
    })
}

/// The median over the rounds of column `of` / column `to`.
fn median_ratio<const N: usize>(rounds: &[[Rate; N]], of: usize, to: usize) -> f64 {
    let mut ratios: Vec<f64> = rounds
        .iter()
        .map(|round| round[of].per_second / round[to].per_second)
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// One wrk run, off the async workers.
async fn load(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Rate> {
    let url = url.to_owned();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        wrk::run(&url, &headers, WRK_RUN)
    })
    .await?
}

/// wrk sending CORS preflights for `/auth/verify` from the allowed browser origin.
async fn edge_preflight(edge_url: &str, script: &std::path::Path) -> anyhow::Result<Rate> {
    let url = format!("{edge_url}/auth/verify");
    let script = script.to_owned();
    tokio::task::spawn_blocking(move || {
        wrk::run_script(
            &url,
            &[
                ("Origin", ALLOWED_ORIGIN),
                ("Access-Control-Request-Method", "GET"),
            ],
            &script,
            WRK_RUN,
        )
    })
    .await?
}

/// A wrk script that sends `OPTIONS`.
fn write_preflight_script() -> anyhow::Result<PathBuf> {
    let path = crate::target_dir().join("bench").join("options.lua");
    std::fs::create_dir_all(path.parent().expect("a parent"))?;
    std::fs::write(&path, "wrk.method = \"OPTIONS\"\n")?;
    Ok(path)
}

/// A throughput row: requests per second and wrk's latencies; any answer outside 200-399 is
/// shown, and the row fails, since the route should have answered every request.
fn rate(report: &mut Report, measure: &str, rate: &Rate) {
    throughput_row(report, measure, rate, false);
}

/// [`rate`] for a route whose answers are all failures by design (a 404): shown, never checked.
fn failing_rate(report: &mut Report, measure: &str, rate: &Rate) {
    throughput_row(report, measure, rate, true);
}

fn throughput_row(report: &mut Report, measure: &str, rate: &Rate, expected_failures: bool) {
    let value = format!(
        "{:.0} req/s (p50 {:.2} ms, p99 {:.2} ms){}",
        rate.per_second,
        rate.p50_ms,
        rate.p99_ms,
        if expected_failures || rate.non_2xx == 0 {
            String::new()
        } else {
            format!(", {} of {} not 2xx", rate.non_2xx, rate.requests)
        }
    );
    let figures = json!({
        "per_second": rate.per_second,
        "requests": rate.requests,
        "non_2xx": rate.non_2xx,
        "p50_ms": rate.p50_ms,
        "p99_ms": rate.p99_ms,
    });
    if expected_failures {
        report.value(measure, value, figures);
    } else {
        report.check(
            measure,
            value,
            "every answer 2xx",
            rate.non_2xx == 0 && rate.requests > 0,
        );
    }
}

/// `part / whole` against `at_least`.
fn ratio(report: &mut Report, measure: &str, part: &Rate, whole: &Rate, at_least: f64) {
    let ratio = part.per_second / whole.per_second;
    report.check(
        measure,
        format!("{ratio:.2}"),
        &format!(">= {at_least:.2}"),
        ratio >= at_least,
    );
}

/// The two extra origins, each `(process, url)`; stopped when dropped.
struct ExtraOrigins {
    no_token_cache: (Child, String),
    nothing_remembered: (Child, String),
}

impl ExtraOrigins {
    async fn start(target: &Target) -> anyhow::Result<Self> {
        let database_url = target
            .database_url
            .as_deref()
            .context("the bench needs the stack's DATABASE_URL to start its extra origins")?;
        let binary = dev::build_origin(true)?;
        let start = |variant: &'static [(&'static str, &'static str)]| {
            let binary = binary.clone();
            async move {
                let addr = format!("127.0.0.1:{}", crate::pg::free_port()?);
                let mut env: Vec<(&str, &str)> = BENCH_ORIGIN_ENV.to_vec();
                env.push(("METRICS_LISTEN_ADDR", "off"));
                env.extend_from_slice(variant);
                let (mut child, _) = dev::start_origin(
                    &binary,
                    database_url,
                    &addr,
                    Some(&crate::target_dir().join("gatehouse-bench-extra-origin.log")),
                    &target.origin.edge_secret,
                    &env,
                )?;
                let url = format!("http://{addr}");
                dev::wait_until_healthy(&mut child, &url).await?;
                anyhow::Ok((child, url))
            }
        };
        let no_token_cache = start(&[("TOKEN_CACHE_ENTRIES", "0")]).await?;
        let nothing_remembered =
            start(&[("TOKEN_CACHE_ENTRIES", "0"), ("LISTEN_DATABASE_URL", "off")]).await?;
        // Its first requests would otherwise run before it hears notifications.
        wait_subscribed(&no_token_cache.1).await?;
        Ok(ExtraOrigins {
            no_token_cache,
            nothing_remembered,
        })
    }
}

/// Polls `/ready` until it says the origin hears change notifications.
async fn wait_subscribed(url: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        let ready: serde_json::Value = reqwest::get(format!("{url}/ready")).await?.json().await?;
        if ready["notifications"] == "subscribed" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the origin at {url} never subscribed to change notifications")
}

/// For each of [`PROPAGATION_SAMPLES`] new sessions: verified at `other` (which then remembers
/// it), logged out at the stack's origin, then checked at `other` back to back until refused;
/// the time from the logout's answer to the first refusal.
async fn propagation(target: &Target, other: &str) -> anyhow::Result<Vec<Duration>> {
    let origin = &target.origin;
    let mut times = Vec::with_capacity(PROPAGATION_SAMPLES);
    for _ in 0..PROPAGATION_SAMPLES {
        let token = origin.token().await?;
        let at_other = |token: &str| {
            origin
                .client
                .get(format!("{other}/auth/verify"))
                .header("x-api-key", &origin.api_key)
                .bearer_auth(token)
                .send()
        };
        anyhow::ensure!(at_other(&token).await?.status() == StatusCode::OK);
        let logout = origin
            .post("/auth/logout")
            .bearer_auth(&token)
            .send()
            .await?;
        anyhow::ensure!(logout.status() == StatusCode::NO_CONTENT, "logout failed");
        let logged_out = Instant::now();
        loop {
            let status = at_other(&token).await?.status();
            if status == StatusCode::UNAUTHORIZED {
                break;
            }
            anyhow::ensure!(
                logged_out.elapsed() < Duration::from_secs(10),
                "the other origin still accepts a session ended 10 s ago"
            );
        }
        times.push(logged_out.elapsed());
    }
    Ok(times)
}

/// A `wrangler dev` started for the bench; stopped (its whole process group) when dropped.
struct Wrangler {
    child: Child,
    port: u16,
}

impl Wrangler {
    async fn start(
        config: &str,
        env: Option<&str>,
        port: u16,
        vars: &[&str],
    ) -> anyhow::Result<Self> {
        let log = crate::target_dir().join(format!("gatehouse-bench-wrangler-{port}.log"));
        let child = dev::start_wrangler(config, env, port, vars, Some(&log)).await?;
        Ok(Wrangler { child, port })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Wrangler {
    fn drop(&mut self) {
        // wrangler runs workerd as a child: end the whole group.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", "--", &format!("-{pid}")])
                .status();
        }
    }
}
