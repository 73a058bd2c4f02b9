//! The login storm of `cargo xtask bench`: many clients logging in at once at the production
//! bcrypt cost, optionally while other clients keep verifying tokens; and the comparison of
//! login times for unknown and known emails. Every request is timed from the start of its phase,
//! so the figures and the latency-over-time chart come from the same samples.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use gatehouse_shared::api::{CLIENT_IP_HEADER, EDGE_SECRET_HEADER, LoginRequest, RegisterRequest};
use reqwest::StatusCode;

use crate::bench::{Bench, PASSWORD};

/// One timed request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was sent, from the start of the phase.
    pub at: Duration,
    /// How long it took.
    pub latency: Duration,
    /// Whether it got the expected answer.
    pub ok: bool,
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

impl Bench {
    /// Registers `count` accounts with [`PASSWORD`], a few at a time so that the hashing queue
    /// never sheds them.
    pub async fn accounts(&self, count: usize) -> anyhow::Result<Vec<String>> {
        let mut emails = Vec::with_capacity(count);
        for chunk in (0..count).collect::<Vec<_>>().chunks(8) {
            let registrations: Vec<_> = chunk
                .iter()
                .map(|_| {
                    let bench = self.clone();
                    tokio::spawn(async move {
                        let email = format!("storm-{}@example.com", uuid::Uuid::new_v4());
                        let response = bench
                            .client
                            .post(format!("{}/auth/register", bench.url))
                            .header("x-api-key", &bench.api_key)
                            .json(&RegisterRequest {
                                email: email.clone(),
                                password: PASSWORD.into(),
                                first_name: None,
                                last_name: None,
                            })
                            .send()
                            .await?;
                        anyhow::ensure!(
                            response.status() == StatusCode::CREATED,
                            "registering a storm account: {}",
                            response.status()
                        );
                        anyhow::Ok(email)
                    })
                })
                .collect();
            for registration in registrations {
                emails.push(registration.await??);
            }
        }
        Ok(emails)
    }

    /// One login, timed from `start`; `ok` when the status is `expected`. With `client_ip`, the
    /// request carries the local edge secret and that address, as the edge would forward it.
    async fn timed_login(
        &self,
        email: &str,
        password: &str,
        expected: StatusCode,
        start: Instant,
        client_ip: Option<&str>,
    ) -> Sample {
        let sent = Instant::now();
        let mut request = self
            .client
            .post(format!("{}/auth/login", self.url))
            .header("x-api-key", &self.api_key)
            .json(&LoginRequest {
                email: email.into(),
                password: password.into(),
            });
        if let Some(ip) = client_ip {
            request = request
                .header(EDGE_SECRET_HEADER, crate::dev::LOCAL_EDGE_SECRET)
                .header(CLIENT_IP_HEADER, ip);
        }
        let response = request.send().await;
        let ok = match response {
            Ok(response) => response.status() == expected && response.bytes().await.is_ok(),
            Err(_) => false,
        };
        Sample {
            at: sent - start,
            latency: sent.elapsed(),
            ok,
        }
    }

    /// Logins with unknown emails and failed logins of known accounts, interleaved so that both
    /// see the same machine; `samples` of each. Failed logins of known accounts are what an
    /// attacker probing for accounts sees, so these are the two that must not differ.
    pub async fn unknown_versus_known(
        &self,
        known: &[String],
        samples: usize,
    ) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
        let start = Instant::now();
        let (mut unknown, mut known_times) = (Vec::new(), Vec::new());
        for (i, email) in known.iter().cycle().take(samples).enumerate() {
            // Each pair from its own address in the benchmarking range (RFC 2544), so repeated
            // runs do not use up the per-address login limit of 127.0.0.1 (a stack without the
            // local edge secret ignores the address and counts 127.0.0.1).
            let ip = format!("198.18.{}.{}", i / 250, i % 250 + 1);
            let stranger = format!("nobody-{}@example.com", uuid::Uuid::new_v4());
            let wrong = "wrong password";
            let expected = StatusCode::UNAUTHORIZED;
            // Alternating which goes first, so neither always meets a warmer machine.
            let (a, b) = if i % 2 == 0 {
                let a = self
                    .timed_login(&stranger, wrong, expected, start, Some(&ip))
                    .await;
                (
                    a,
                    self.timed_login(email, wrong, expected, start, Some(&ip))
                        .await,
                )
            } else {
                let b = self
                    .timed_login(email, wrong, expected, start, Some(&ip))
                    .await;
                (
                    self.timed_login(&stranger, wrong, expected, start, Some(&ip))
                        .await,
                    b,
                )
            };
            anyhow::ensure!(a.ok && b.ok, "a comparison login did not get its 401");
            unknown.push(a.latency);
            known_times.push(b.latency);
        }
        Ok((unknown, known_times))
    }

    /// `accounts.len()` clients each logging in `per_client` times in a row, all at once; with
    /// `verifiers` clients each at the origin (`self`) and through `edge` verifying a token for
    /// as long as the storm lasts.
    pub async fn storm(
        &self,
        edge: &Bench,
        accounts: &[String],
        per_client: usize,
        verifiers: usize,
    ) -> anyhow::Result<Storm> {
        let origin_token = self.token().await.context("token for the storm")?;
        let edge_token = edge.token().await.context("token for the storm")?;
        let start = Instant::now();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let verify = |bench: &Bench, token: &String| {
            (0..verifiers)
                .map(|_| {
                    let (bench, token, stop) = (bench.clone(), token.clone(), stop_rx.clone());
                    tokio::spawn(async move { bench.verify_until(&token, stop, start).await })
                })
                .collect::<Vec<_>>()
        };
        let origin_verifiers = verify(self, &origin_token);
        let edge_verifiers = verify(edge, &edge_token);
        let clients: Vec<_> = accounts
            .iter()
            .map(|email| {
                let (bench, email) = (self.clone(), email.clone());
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        samples.push(
                            bench
                                .timed_login(&email, PASSWORD, StatusCode::OK, start, None)
                                .await,
                        );
                    }
                    samples
                })
            })
            .collect();
        let mut logins = Vec::new();
        for client in clients {
            logins.extend(client.await?);
        }
        let wall = start.elapsed();
        stop_tx.send(true)?;
        let verify_origin = gather(origin_verifiers).await?;
        let verify_edge = gather(edge_verifiers).await?;
        Ok(Storm {
            logins,
            wall,
            verify_origin,
            verify_edge,
        })
    }

    /// Verifies `token` back to back until `stop` turns true.
    async fn verify_until(
        &self,
        token: &str,
        mut stop: tokio::sync::watch::Receiver<bool>,
        start: Instant,
    ) -> Vec<Sample> {
        let mut samples = Vec::new();
        while !*stop.borrow_and_update() {
            let sent = Instant::now();
            let ok = self.verify_once(token).await;
            samples.push(Sample {
                at: sent - start,
                latency: sent.elapsed(),
                ok,
            });
        }
        samples
    }
}

async fn gather(handles: Vec<tokio::task::JoinHandle<Vec<Sample>>>) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for handle in handles {
        samples.extend(handle.await?);
    }
    Ok(samples)
}

/// The latency-over-time chart of a storm as SVG: every login as a dot, and the p99 of the
/// verifications in each half second as a line per side, on a logarithmic latency axis.
pub fn chart(storm: &Storm, title: &str) -> String {
    const WIDTH: f64 = 900.0;
    const HEIGHT: f64 = 480.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 60.0;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let seconds = storm.wall.as_secs_f64().max(1.0);
    // 0.1 ms to 100 s, decades.
    let (low, high) = (-4.0_f64, 2.0_f64);
    let x = |at: f64| LEFT + plot_w * (at / seconds).clamp(0.0, 1.0);
    let y = |latency: f64| {
        let log = latency.max(1e-4).log10().clamp(low, high);
        TOP + plot_h * (1.0 - (log - low) / (high - low))
    };
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="24" font-size="15">{title}</text>
"##
    );
    for decade in -4..=2 {
        let label = match decade {
            -4 => "0.1 ms".to_owned(),
            -3 => "1 ms".to_owned(),
            -2 => "10 ms".to_owned(),
            -1 => "100 ms".to_owned(),
            0 => "1 s".to_owned(),
            1 => "10 s".to_owned(),
            _ => "100 s".to_owned(),
        };
        let gy = y(10f64.powi(decade));
        svg += &format!(
            r##"<line x1="{LEFT}" x2="{}" y1="{gy:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>
"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            gy + 4.0
        );
    }
    let step = if seconds > 30.0 { 10 } else { 5 };
    for tick in (0..=seconds as u64).step_by(step) {
        let gx = x(tick as f64);
        svg += &format!(
            r##"<line x1="{gx:.1}" x2="{gx:.1}" y1="{TOP}" y2="{}" stroke="#eee"/><text x="{gx:.1}" y="{}" text-anchor="middle">{tick} s</text>
"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    for sample in &storm.logins {
        let colour = if sample.ok { "#1f77b4" } else { "#d62728" };
        svg += &format!(
            r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}" fill-opacity="0.6"/>
"##,
            x((sample.at + sample.latency).as_secs_f64()),
            y(sample.latency.as_secs_f64())
        );
    }
    for (samples, colour) in [
        (&storm.verify_origin, "#2ca02c"),
        (&storm.verify_edge, "#ff7f0e"),
    ] {
        let points: Vec<String> = buckets(samples, Duration::from_millis(500))
            .into_iter()
            .map(|(at, p99)| format!("{:.1},{:.1}", x(at), y(p99)))
            .collect();
        svg += &format!(
            r##"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>
"##,
            points.join(" ")
        );
    }
    let legend = [
        ("#1f77b4", "login (each, at its answer)"),
        ("#2ca02c", "verify at the origin, p99 per 0.5 s"),
        ("#ff7f0e", "verify through the edge, p99 per 0.5 s"),
    ];
    for (i, (colour, label)) in legend.iter().enumerate() {
        let lx = LEFT + 10.0 + 280.0 * i as f64;
        let ly = HEIGHT - 16.0;
        svg += &format!(
            r##"<rect x="{lx}" y="{}" width="12" height="12" fill="{colour}"/><text x="{}" y="{ly}">{label}</text>
"##,
            ly - 10.0,
            lx + 16.0
        );
    }
    svg += &format!(
        r##"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">latency (log)</text>
</svg>
"##,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    svg
}

/// (middle of the bucket in seconds, p99 latency in seconds) for each `width` of time.
pub fn buckets(samples: &[Sample], width: Duration) -> Vec<(f64, f64)> {
    let mut grouped: std::collections::BTreeMap<u64, Vec<Duration>> = Default::default();
    for sample in samples {
        let index = (sample.at.as_secs_f64() / width.as_secs_f64()) as u64;
        grouped.entry(index).or_default().push(sample.latency);
    }
    grouped
        .into_iter()
        .map(|(index, latencies)| {
            (
                (index as f64 + 0.5) * width.as_secs_f64(),
                crate::bench::percentile(&latencies, 99.0).as_secs_f64(),
            )
        })
        .collect()
}
