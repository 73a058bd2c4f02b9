//! The scenarios of `cargo xtask bench`: flows, verification and refresh loads, the login storm
//! and the comparison of failed logins. Each returns what it measured; the caller reports it.
//! Requests of the storm are timed from the start of their phase, so the figures and the chart
//! come from the same samples.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use gatehouse_shared::api::RefreshRequest;
use reqwest::StatusCode;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::{Bench, PASSWORD, Sample, unique_email};
use super::report::Latencies;

/// Flows run one after another or all at once.
pub struct Flows {
    pub times: Latencies,
    pub succeeded: u64,
    pub total: u64,
    /// From the first start to the last end.
    pub wall: Duration,
}

/// `count` register → login → verify → profile flows, one after another or all at once.
pub async fn flows(bench: &Bench, count: usize, concurrent: bool) -> anyhow::Result<Flows> {
    let timed = |bench: Bench| async move {
        let started = Instant::now();
        let outcome = bench.flow().await;
        (started.elapsed(), outcome)
    };
    let started = Instant::now();
    let mut results = Vec::with_capacity(count);
    if concurrent {
        let handles: Vec<_> = (0..count)
            .map(|_| tokio::spawn(timed(bench.clone())))
            .collect();
        for handle in handles {
            results.push(handle.await?);
        }
    } else {
        for _ in 0..count {
            results.push(timed(bench.clone()).await);
        }
    }
    let wall = started.elapsed();
    for failure in results
        .iter()
        .filter_map(|(_, outcome)| outcome.as_ref().err())
    {
        eprintln!("flow failed: {failure:#}");
    }
    Ok(Flows {
        times: results.iter().map(|(elapsed, _)| *elapsed).collect(),
        succeeded: results
            .iter()
            .filter(|(_, outcome)| outcome.is_ok())
            .count() as u64,
        total: count as u64,
        wall,
    })
}

/// Verifies `token` back to back while `go_on(requests sent so far)` says so.
pub async fn verify_while(
    bench: &Bench,
    token: &str,
    start: Instant,
    mut go_on: impl FnMut(usize) -> bool,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    while go_on(samples.len()) {
        samples.push(Sample::take(start, bench.verify(token)).await);
    }
    samples
}

/// `clients` verifiers of one token each (a new account's) at `bench`, until `stop` turns true.
fn verifiers(
    bench: &Bench,
    token: &str,
    clients: usize,
    start: Instant,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<Vec<Sample>>> {
    (0..clients)
        .map(|_| {
            let (bench, token, stop) = (bench.clone(), token.to_owned(), stop.clone());
            tokio::spawn(
                async move { verify_while(&bench, &token, start, |_| !*stop.borrow()).await },
            )
        })
        .collect()
}

/// Concurrent flows at `bench` while one client keeps verifying a token there.
pub async fn flows_under_verification(
    bench: &Bench,
    count: usize,
) -> anyhow::Result<(Flows, Vec<Sample>)> {
    let token = bench.token().await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let verifier = verifiers(bench, &token, 1, Instant::now(), &stop_rx);
    let flows = flows(bench, count, true).await?;
    stop_tx.send(true)?;
    Ok((flows, gather(verifier).await?))
}

/// Requests per second of one load, and their latencies.
pub struct Throughput {
    pub per_second: f64,
    pub ok: u64,
    pub requests: u64,
    pub times: Latencies,
}

/// Runs `clients` copies of a client loop at once; each returns its latencies and successes.
async fn throughput<F>(clients: Vec<F>) -> anyhow::Result<Throughput>
where
    F: Future<Output = (Latencies, u64)> + Send + 'static,
{
    let started = Instant::now();
    let handles: Vec<_> = clients.into_iter().map(tokio::spawn).collect();
    let (mut times, mut ok) = (Latencies::default(), 0);
    for handle in handles {
        let (client_times, client_ok) = handle.await?;
        times.merge(&client_times);
        ok += client_ok;
    }
    Ok(Throughput {
        per_second: times.len() as f64 / started.elapsed().as_secs_f64(),
        ok,
        requests: times.len(),
        times,
    })
}

/// `clients` concurrent clients each verifying one token `per_client` times.
pub async fn verify_throughput(
    bench: &Bench,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<Throughput> {
    let token = bench.token().await?;
    let start = Instant::now();
    throughput(
        (0..clients)
            .map(|_| {
                let (bench, token) = (bench.clone(), token.clone());
                async move {
                    let samples = verify_while(&bench, &token, start, |n| n < per_client).await;
                    let ok = samples.iter().filter(|s| s.ok).count() as u64;
                    (samples.iter().map(|s| s.latency).collect(), ok)
                }
            })
            .collect(),
    )
    .await
}

/// `clients` concurrent clients, each with its own session, each rotating its refresh token
/// `per_client` times in a row (every refresh spends the token the previous one returned).
pub async fn refresh_throughput(
    bench: &Bench,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<Throughput> {
    let mut sessions = Vec::with_capacity(clients);
    for _ in 0..clients {
        sessions.push(bench.session().await?.refresh_token);
    }
    throughput(
        sessions
            .into_iter()
            .map(|refresh_token| {
                let bench = bench.clone();
                async move {
                    let mut request = RefreshRequest { refresh_token };
                    let (mut times, mut ok) = (Latencies::default(), 0);
                    for _ in 0..per_client {
                        let sent = Instant::now();
                        let next = bench.refresh(&request).await;
                        times.record(sent.elapsed());
                        let Some(next) = next else { break };
                        request.refresh_token = next.refresh_token;
                        ok += 1;
                    }
                    (times, ok)
                }
            })
            .collect(),
    )
    .await
    .map(|mut run| {
        // A chain stops at its first failure; the requests it did not send count as failed.
        run.requests = (clients * per_client) as u64;
        run
    })
}

/// One session refreshed `count` times in a row by one client: the latencies of its first and its
/// last `window` refreshes. With a row per refresh token the last ones would wait on a table grown
/// by `count` rows; with generations they should not differ.
pub async fn long_refresh_chain(
    bench: &Bench,
    count: usize,
    window: usize,
) -> anyhow::Result<(Latencies, Latencies)> {
    let mut request = RefreshRequest {
        refresh_token: bench.session().await?.refresh_token,
    };
    let (mut first, mut last) = (Latencies::default(), Latencies::default());
    for n in 0..count {
        let sent = Instant::now();
        let next = bench
            .refresh(&request)
            .await
            .with_context(|| format!("refresh {} of {count} failed", n + 1))?;
        let took = sent.elapsed();
        if n < window {
            first.record(took);
        } else if n >= count - window {
            last.record(took);
        }
        request.refresh_token = next.refresh_token;
    }
    Ok((first, last))
}

/// Registers `count` accounts with [`PASSWORD`], a few at a time so that the hashing queue
/// never sheds them.
pub async fn accounts(bench: &Bench, count: usize) -> anyhow::Result<Vec<String>> {
    let mut emails = Vec::with_capacity(count);
    while emails.len() < count {
        let batch: Vec<_> = (0..(count - emails.len()).min(8))
            .map(|_| {
                let bench = bench.clone();
                tokio::spawn(async move {
                    let email = unique_email("storm");
                    bench.register(email.clone()).await.map(|_| email)
                })
            })
            .collect();
        for registration in batch {
            emails.push(registration.await?.context("registering a storm account")?);
        }
    }
    Ok(emails)
}

/// What an attacker probing for accounts compares: the same request for unknown and for known
/// addresses. `probe(address, client)` sends one and says whether it got its expected answer.
/// The two kinds are interleaved so that both see the same machine, alternating which goes
/// first so neither always meets a warmer one; `samples` of each. Each pair comes from its own
/// client address in the benchmarking range (RFC 2544, `198.18.0.0/15`), so no per-client limit
/// bites (a stack without the local edge secret ignores the address and counts 127.0.0.1).
pub async fn unknown_versus_known<P, F>(
    known: impl Fn(usize) -> String,
    unknown: impl Fn(usize) -> String,
    samples: usize,
    probe: P,
) -> anyhow::Result<(Latencies, Latencies)>
where
    P: Fn(String, String) -> F,
    F: Future<Output = bool>,
{
    let start = Instant::now();
    let (mut unknown_times, mut known_times) = (Latencies::default(), Latencies::default());
    for i in 0..samples {
        let client = format!("198.18.{}.{}", i / 250, i % 250 + 1);
        let timed = |address: String| Sample::take(start, probe(address, client.clone()));
        let (stranger, member) = if i % 2 == 0 {
            let stranger = timed(unknown(i)).await;
            (stranger, timed(known(i)).await)
        } else {
            let member = timed(known(i)).await;
            (timed(unknown(i)).await, member)
        };
        anyhow::ensure!(
            stranger.ok && member.ok,
            "a comparison request got another answer"
        );
        unknown_times.record(stranger.latency);
        known_times.record(member.latency);
    }
    Ok((unknown_times, known_times))
}

/// Failed logins: unknown addresses against known accounts with a wrong password, both 401.
pub async fn failed_logins(
    bench: &Bench,
    known: &[String],
    samples: usize,
) -> anyhow::Result<(Latencies, Latencies)> {
    let known = |i: usize| known[i % known.len()].clone();
    let probe = |address: String, client: String| {
        let bench = bench.clone();
        async move {
            let expected = StatusCode::UNAUTHORIZED;
            bench
                .login(&address, "wrong password", expected, Some(&client))
                .await
        }
    };
    unknown_versus_known(known, |_| unique_email("nobody"), samples, probe).await
}

/// Password-reset requests: one address without an account against one with, both 202. One of
/// each, repeated, so that both meet the per-address mail cap alike.
pub async fn forgotten_passwords(
    bench: &Bench,
    known: &str,
    samples: usize,
) -> anyhow::Result<(Latencies, Latencies)> {
    let stranger = unique_email("nobody");
    let probe = |address: String, client: String| {
        let bench = bench.clone();
        async move { bench.forgot(&address, &client).await }
    };
    unknown_versus_known(|_| known.to_owned(), |_| stranger.clone(), samples, probe).await
}

/// What a storm measured.
pub struct Storm {
    /// Every login.
    pub logins: Vec<Sample>,
    /// From the first request to the last answer.
    pub wall: Duration,
    /// Verifications during the storm, at the origin and through the edge.
    pub verify_origin: Vec<Sample>,
    pub verify_edge: Vec<Sample>,
}

impl Storm {
    /// Successful logins per second over the storm.
    pub fn logins_per_second(&self) -> f64 {
        self.logins.iter().filter(|s| s.ok).count() as f64 / self.wall.as_secs_f64()
    }
}

/// One client per account in `accounts`, each logging in `per_client` times in a row at
/// `origin`, all at once; with `verifiers` clients each at `origin` and through `edge` verifying
/// a token for as long as the storm lasts.
pub async fn storm(
    origin: &Bench,
    edge: &Bench,
    accounts: &[String],
    per_client: usize,
    verifiers_per_side: usize,
) -> anyhow::Result<Storm> {
    let origin_token = origin.token().await.context("token for the storm")?;
    let edge_token = edge.token().await.context("token for the storm")?;
    let start = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let origin_verifiers = verifiers(origin, &origin_token, verifiers_per_side, start, &stop_rx);
    let edge_verifiers = verifiers(edge, &edge_token, verifiers_per_side, start, &stop_rx);
    let clients: Vec<_> = accounts
        .iter()
        .map(|email| {
            let (bench, email) = (origin.clone(), email.clone());
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let login = bench.login(&email, PASSWORD, StatusCode::OK, None);
                    samples.push(Sample::take(start, login).await);
                }
                samples
            })
        })
        .collect();
    let logins = gather(clients).await?;
    let wall = start.elapsed();
    stop_tx.send(true)?;
    Ok(Storm {
        logins,
        wall,
        verify_origin: gather(origin_verifiers).await?,
        verify_edge: gather(edge_verifiers).await?,
    })
}

async fn gather(handles: Vec<JoinHandle<Vec<Sample>>>) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for handle in handles {
        samples.extend(handle.await?);
    }
    Ok(samples)
}

/// (middle of the window in seconds, p99 latency) for each `width` of time, in order.
pub fn windows(samples: &[Sample], width: Duration) -> Vec<(f64, Duration)> {
    let mut grouped: std::collections::BTreeMap<u64, Latencies> = Default::default();
    for sample in samples {
        let index = (sample.at.as_secs_f64() / width.as_secs_f64()) as u64;
        grouped.entry(index).or_default().record(sample.latency);
    }
    grouped
        .into_iter()
        .map(|(index, latencies)| ((index as f64 + 0.5) * width.as_secs_f64(), latencies.p99()))
        .collect()
}

/// Logins with and without a second factor, one at a time on an idle origin.
pub struct TotpLogins {
    /// `POST /auth/login` of an account without a factor: the password step alone.
    pub login_alone: Latencies,
    /// The same account's login once a TOTP authenticator is enrolled, both steps.
    pub login_with_totp: Latencies,
    /// `POST /auth/mfa/verify` alone, the second step.
    pub second_step: Latencies,
    /// Sequential refreshes of one session in the same run, the reference for the second step.
    pub refresh: Latencies,
}

/// For each of `accounts` new accounts: a login while it has no factor, then the enrolment of a
/// TOTP authenticator (codes from this machine's clock, which the origin shares), then a login
/// with it; then `refreshes` sequential refreshes of one session as the reference.
pub async fn totp_logins(
    bench: &Bench,
    accounts: usize,
    refreshes: usize,
) -> anyhow::Result<TotpLogins> {
    use gatehouse_shared::ExposeSecret as _;
    use gatehouse_shared::totp::Secret;
    let mut logins = TotpLogins {
        login_alone: Latencies::default(),
        login_with_totp: Latencies::default(),
        second_step: Latencies::default(),
        refresh: Latencies::default(),
    };
    for _ in 0..accounts {
        let email = unique_email("bench-totp");
        let session = bench.register(email.clone()).await?;
        let access = session.access_token.expose_secret();
        let sent = Instant::now();
        bench.sign_in(&email).await?;
        logins.login_alone.record(sent.elapsed());

        let enrolment: serde_json::Value = bench
            .post("/auth/mfa/totp")
            .bearer_auth(access)
            .json(&serde_json::json!({ "current_password": PASSWORD }))
            .send()
            .await?
            .json()
            .await?;
        let secret = enrolment["secret"]
            .as_str()
            .and_then(Secret::from_base32)
            .context("the enrolment's secret")?;
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        };
        let confirm_at = now();
        let confirmed = bench
            .post("/auth/mfa/totp/confirm")
            .bearer_auth(access)
            .json(&serde_json::json!({ "code": secret.code_at(confirm_at) }))
            .send()
            .await?;
        anyhow::ensure!(
            confirmed.status() == StatusCode::OK,
            "confirm: {}",
            confirmed.status()
        );
        // The confirmation spent this step's code; the next step's is accepted as one step of
        // skew, so the login need not wait for the clock.
        let code = secret.code_at(confirm_at + gatehouse_shared::totp::STEP_SECS);

        let sent = Instant::now();
        let first: serde_json::Value = bench.login_response(&email).await?.json().await?;
        let mfa_token = first["mfa_token"].as_str().context("an mfa_token")?;
        let second_sent = Instant::now();
        let second = bench
            .post("/auth/mfa/verify")
            .json(&serde_json::json!({ "mfa_token": mfa_token, "code": code }))
            .send()
            .await?;
        let status = second.status();
        second.bytes().await?;
        logins.second_step.record(second_sent.elapsed());
        logins.login_with_totp.record(sent.elapsed());
        anyhow::ensure!(status == StatusCode::OK, "second step: {status}");
    }
    let mut request = RefreshRequest {
        refresh_token: bench.session().await?.refresh_token,
    };
    for _ in 0..refreshes {
        let sent = Instant::now();
        let next = bench.refresh(&request).await.context("a refresh failed")?;
        logins.refresh.record(sent.elapsed());
        request.refresh_token = next.refresh_token;
    }
    Ok(logins)
}
