//! The built edge worker (`edge/build`, from `cargo xtask build-edge`) running in workerd
//! through Miniflare, and a counting HTTP relay between it and the origin, so tests can prove
//! which requests reached the origin.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{AUDIENCE, EDGE_SECRET, ISSUER};

/// How long workerd may take to start; it takes about a second here.
pub const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// An HTTP client for talking to the edge. It opens a connection per request: workerd closes a
/// connection whose request body it did not read (an upload refused early), and a pooled client
/// would then send its next request into that closing connection.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client builds")
}

/// The edge crate's directory.
pub fn edge_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../edge")
}

/// The worker running in workerd.
pub struct Edge {
    /// Base URL, without a trailing slash.
    pub url: String,
    _process: Child,
    _group: KillGroup,
}

/// Kills a whole process group when dropped: Node and the workerd it started. Killing Node
/// alone would leave workerd running.
pub struct KillGroup(pub u32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .status();
    }
}

/// Whether `edge/build` exists and is newer than every source file of the worker, so a test
/// never runs yesterday's worker against today's code.
fn build_is_current(dir: &std::path::Path) -> bool {
    fn newest(path: &std::path::Path) -> std::time::SystemTime {
        let Ok(meta) = std::fs::metadata(path) else {
            return std::time::SystemTime::UNIX_EPOCH;
        };
        if !meta.is_dir() {
            return meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
        }
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| newest(&entry.path()))
            .max()
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
    }
    let Ok(built) = std::fs::metadata(dir.join("build/index.js")).and_then(|m| m.modified()) else {
        return false;
    };
    [dir.join("src"), dir.join("../shared/src")]
        .iter()
        .all(|sources| newest(sources) < built)
}

/// Bindings for a test edge in front of `origin_url`; tests override single entries.
pub fn bindings(origin_url: &str) -> serde_json::Map<String, Value> {
    json!({
        "ORIGIN_URL": origin_url,
        "JWT_ISSUER": ISSUER,
        "JWT_AUDIENCE": AUDIENCE,
        "ALLOWED_ORIGINS": "https://app.example.com",
        "API_KEY_CACHE_TTL_SECS": "1",
        "JWKS_REFETCH_COOLDOWN_SECS": "0",
        "ORIGIN_TIMEOUT_MS": "5000",
        "EDGE_SECRET": EDGE_SECRET,
        // Generous, so only the tests about them ever meet them.
        "AUTH_RATE_LIMITER": { "simple": { "limit": 1000, "period": 60 } },
        "AUTH_RATE_LIMITER_IPV6_56": { "simple": { "limit": 1000, "period": 60 } },
        "AUTH_RATE_LIMITER_IPV6_48": { "simple": { "limit": 1000, "period": 60 } },
        "API_KEY_MISS_LIMITER": { "simple": { "limit": 1000, "period": 60 } },
    })
    .as_object()
    .cloned()
    .expect("an object")
}

/// How the harness runs a worker beyond its bindings.
#[derive(Debug, Default, Clone)]
pub struct Runtime {
    /// Persist the Cache API in this directory, so a later instance finds what an earlier one
    /// stored, as a new isolate of a data centre finds it.
    pub cache_dir: Option<PathBuf>,
    /// Run this JavaScript module instead of the built worker: another Worker of the same zone.
    pub script: Option<String>,
}

impl Edge {
    /// Starts the built worker with `bindings`. Panics, naming the fix, when the worker has not
    /// been built or Node's tooling is missing: these tests never pass by skipping.
    pub async fn start(bindings: serde_json::Map<String, Value>) -> Edge {
        Edge::start_in(bindings, Runtime::default()).await
    }

    /// Starts a worker with `bindings` in `runtime`.
    pub async fn start_in(bindings: serde_json::Map<String, Value>, runtime: Runtime) -> Edge {
        let dir = edge_dir();
        assert!(
            dir.join("node_modules/miniflare").exists() && build_is_current(&dir),
            "the edge worker is missing or older than its sources: run `cargo xtask test` \
             (or `cargo xtask build-edge`)"
        );
        let mut command = Command::new("node");
        command
            .arg(dir.join("test-harness.mjs"))
            .env("EDGE_BINDINGS", Value::Object(bindings).to_string());
        if let Some(cache_dir) = &runtime.cache_dir {
            command.env("EDGE_CACHE_DIR", cache_dir);
        }
        if let Some(script) = &runtime.script {
            command.env("EDGE_SCRIPT", script);
        }
        let mut process = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("node starts the Miniflare harness");
        let group = KillGroup(process.id().expect("the harness is running"));
        let stdout = process.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = async {
            loop {
                match lines.next_line().await.expect("harness output is readable") {
                    Some(line) => {
                        if let Some(url) = line.strip_prefix("READY ") {
                            break url.trim_end_matches('/').to_owned();
                        }
                    }
                    None => panic!("the Miniflare harness exited before it was ready"),
                }
            }
        };
        let url = tokio::time::timeout(STARTUP_TIMEOUT, ready)
            .await
            .expect("the Miniflare harness was not ready in time");
        // Keep draining the harness output so its pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Edge {
            url,
            _process: process,
            _group: group,
        }
    }
}

/// One request the relay saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method and path, e.g. `GET /auth/verify`.
    pub route: String,
    /// Request headers, lower-case names.
    pub headers: HashMap<String, String>,
}

/// An HTTP relay to the origin that records every request passing through it.
#[derive(Clone)]
pub struct CountingRelay {
    /// The relay's own address, for the edge's `ORIGIN_URL`.
    pub url: String,
    state: Arc<RelayState>,
}

struct RelayState {
    target: Mutex<String>,
    seen: Mutex<Vec<Seen>>,
    client: reqwest::Client,
}

impl CountingRelay {
    /// Relays to `target` (a base URL).
    pub async fn start(target: &str) -> CountingRelay {
        let state = Arc::new(RelayState {
            target: Mutex::new(target.to_owned()),
            seen: Mutex::new(Vec::new()),
            // Transparent: a redirect goes back to the edge as the origin sent it.
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a client builds"),
        });
        let router = axum::Router::new()
            .fallback(relay)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        CountingRelay {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// Sends what follows to another origin, as a redeployed origin would appear.
    pub fn retarget(&self, target: &str) {
        *self.state.target.lock().unwrap() = target.to_owned();
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// How many requests went to `route` (`"GET /auth/verify"`).
    pub fn count(&self, route: &str) -> usize {
        self.seen()
            .iter()
            .filter(|seen| seen.route == route)
            .count()
    }
}

async fn relay(State(state): State<Arc<RelayState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let headers: HashMap<String, String> = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    state.seen.lock().unwrap().push(Seen {
        route: format!("{} {}", parts.method, parts.uri.path()),
        headers,
    });
    let target = format!("{}{path_and_query}", state.target.lock().unwrap());
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut outbound = state.client.request(parts.method, target).body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            outbound = outbound.header(name, value);
        }
    }
    match outbound.send().await {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                if name != "content-length" && name != "transfer-encoding" {
                    response = response.header(name, value);
                }
            }
            let bytes = answer.bytes().await.unwrap_or_default();
            response.body(Body::from(bytes)).unwrap()
        }
        // The origin is down: the relay drops the connection like a dead host would.
        Err(_) => Response::builder().status(502).body(Body::empty()).unwrap(),
    }
}
