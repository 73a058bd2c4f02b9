//! `cargo xtask dev`: a local stack for trying Gatehouse by hand. Starts PostgreSQL (unless
//! `DATABASE_URL` is given), migrates, creates an API key, starts the origin and, in front of it,
//! the edge worker under `wrangler dev`; prints how to use them and writes
//! `target/gatehouse-dev.env`. Ctrl-C stops everything it started. With `--release` the origin is
//! the optimised build that is deployed (and that `cargo xtask bench` measures).

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

use crate::pg::Postgres;

/// Where the origin listens in development (and what `wrangler.toml`'s `local` environment
/// points the edge at).
pub const ORIGIN_ADDR: &str = "127.0.0.1:8007";

/// Where the edge listens in development.
pub const EDGE_PORT: u16 = 8787;

/// Where the development SMTP server (maildev) takes mail, and serves its inbox and REST API.
pub const MAIL_SMTP_PORT: u16 = 1025;
pub const MAIL_WEB_PORT: u16 = 1080;

/// How long `wrangler dev` may take to print "Ready on".
const EDGE_STARTUP: Duration = Duration::from_secs(120);

/// How long the origin may take to answer `/health` after starting.
const STARTUP_ATTEMPTS: u32 = 300;
const STARTUP_POLL: Duration = Duration::from_millis(100);

pub async fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let release = match args {
        [] => false,
        [flag] if flag == "--release" => true,
        _ => bail!("usage: cargo xtask dev [--release]"),
    };
    let mut stack = Stack::start(release, None, &[]).await?;
    stack.print_usage();
    let edge_exit = async {
        match stack.edge.as_mut() {
            Some(edge) => edge.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => eprintln!("\nxtask: stopping"),
        status = stack.origin.wait() => eprintln!("xtask: the origin exited ({})", status?),
        status = edge_exit => eprintln!("xtask: wrangler dev exited ({})", status?),
    }
    stack.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// PostgreSQL (when xtask started it) and the origin, running.
pub struct Stack {
    pub postgres: Option<Postgres>,
    pub origin: Child,
    pub origin_url: String,
    /// `wrangler dev` serving the edge, in its own process group.
    pub edge: Option<Child>,
    pub edge_url: String,
    /// maildev, receiving what the origin's courier sends.
    pub mail: Option<Child>,
    pub api_key: String,
    pub database_url: String,
    /// This run's edge secret, shared by the origin and `wrangler dev`.
    pub edge_secret: String,
}

impl Stack {
    /// Builds and starts the origin (in release mode when `release`) on a fresh or given
    /// database, its log going to `log` when given, else to this terminal.
    pub async fn start(
        release: bool,
        log: Option<&Path>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let target = crate::target_dir();
        let (postgres, database_url) = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => (None, url),
            _ => {
                let postgres = Postgres::start(&target.join("gatehouse-pg-dev"), false)?;
                postgres.create_database("gatehouse")?;
                let url = postgres.url("gatehouse");
                (Some(postgres), url)
            }
        };

        let binary = build_origin(release)?;
        let edge_secret = fresh_secret();
        let (origin, api_key) =
            start_origin(&binary, &database_url, ORIGIN_ADDR, log, &edge_secret, env)?;
        let origin_url = format!("http://{ORIGIN_ADDR}");
        let mut stack = Stack {
            postgres,
            origin,
            origin_url,
            edge: None,
            edge_url: format!("http://127.0.0.1:{EDGE_PORT}"),
            mail: None,
            api_key,
            database_url,
            edge_secret,
        };
        let started = async {
            stack.wait_until_healthy().await?;
            crate::edge::build()?;
            stack.mail = Some(start_mail()?);
            let edge_log = log.map(|path| path.with_extension("edge.log"));
            stack.edge = Some(start_edge(edge_log.as_deref(), &stack.edge_secret).await?);
            anyhow::Ok(())
        };
        if let Err(error) = started.await {
            stack.stop().await;
            return Err(error);
        }
        write_env_file(&target.join("gatehouse-dev.env"), &stack)?;
        Ok(stack)
    }

    async fn wait_until_healthy(&mut self) -> anyhow::Result<()> {
        wait_until_healthy(&mut self.origin, &self.origin_url).await
    }

    /// Stops the origin gracefully (SIGTERM, so requests in flight finish), then PostgreSQL.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.edge.as_ref().and_then(Child::id) {
            // wrangler runs workerd as a child: end the whole group.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", "--", &format!("-{pid}")])
                .status();
        }
        if let Some(pid) = self.origin.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if tokio::time::timeout(Duration::from_secs(10), self.origin.wait())
                .await
                .is_err()
            {
                let _ = self.origin.kill().await;
            }
        }
        if let Some(mail) = self.mail.as_mut() {
            let _ = mail.kill().await;
        }
        // Dropping the cluster stops it.
        self.postgres.take();
    }

    fn print_usage(&self) {
        println!(
            "\nGatehouse is running.\n\
             \n  edge        {edge}  (wrangler dev, workerd)\
             \n  origin      {url}\
             \n  API key     {key}\
             \n  database    {db}\
             \n  mail        http://127.0.0.1:{MAIL_WEB_PORT}  (maildev: every mail the origin sends)\
             \n  env file    {env}  (EDGE_URL, ORIGIN_URL, API_KEY, DATABASE_URL, MAIL_URL)\
             \n\nTry it from the repository root:\n{curl}\nPress Ctrl-C to stop.",
            url = self.origin_url,
            edge = self.edge_url,
            key = self.api_key,
            db = self.database_url,
            env = crate::target_dir().join("gatehouse-dev.env").display(),
            curl = CURL_EXAMPLES,
        );
    }
}

/// The same lines as the README's "Try it" section.
const CURL_EXAMPLES: &str = r#"
  set -a; . target/gatehouse-dev.env; set +a
  curl -s -X POST "$EDGE_URL/auth/register" -H "X-API-Key: $API_KEY" -H 'Content-Type: application/json' \
       -d '{"email":"ada@example.com","password":"correct horse battery staple"}'
  TOKEN=$(curl -s -X POST "$EDGE_URL/auth/login" -H "X-API-Key: $API_KEY" -H 'Content-Type: application/json' \
       -d '{"email":"ada@example.com","password":"correct horse battery staple"}' | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
  curl -s "$EDGE_URL/auth/verify"  -H "X-API-Key: $API_KEY" -H "Authorization: Bearer $TOKEN"
  curl -s "$EDGE_URL/auth/profile" -H "X-API-Key: $API_KEY" -H "Authorization: Bearer $TOKEN"
  curl -s "$ORIGIN_URL/.well-known/jwks.json"
"#;

/// `wrangler dev --env local` on 127.0.0.1:8787, in its own process group; returns once it is
/// ready. Its output goes to `log` when given, else to this terminal.
async fn start_edge(log: Option<&Path>, edge_secret: &str) -> anyhow::Result<Child> {
    let secret = format!("EDGE_SECRET:{edge_secret}");
    start_wrangler(
        "wrangler.toml",
        Some("local"),
        EDGE_PORT,
        &[secret.as_str()],
        log,
    )
    .await
}

/// `wrangler dev` of the worker `config` describes (relative to the repository root), in `env`
/// when given, on 127.0.0.1:`port`, with `vars` (`NAME:value`), in its own process group; returns
/// once it is ready. Its output goes to `log` when given, else to this terminal.
pub async fn start_wrangler(
    config: &str,
    env: Option<&str>,
    port: u16,
    vars: &[&str],
    log: Option<&Path>,
) -> anyhow::Result<Child> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    let mut command = Command::new(crate::edge::node_bin("wrangler"));
    command
        .current_dir(crate::root())
        .args(["dev", "--config", config, "--ip", "127.0.0.1"])
        .args(["--port", &port.to_string(), "--inspector-port", "0"])
        .args(["--show-interactive-dev-session=false"]);
    if let Some(env) = env {
        command.args(["--env", env]);
    }
    for var in vars {
        command.args(["--var", var]);
    }
    // A log file takes wrangler's output directly: it writes a line per request, and copying
    // each through this process cost the bench a tenth of a core while it measured.
    let stdout = match log {
        Some(path) => Stdio::from(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Stdio::piped(),
    };
    let mut wrangler = command
        .env("WRANGLER_SEND_METRICS", "false")
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .stdin(Stdio::null())
        .stdout(stdout)
        .process_group(0)
        .spawn()
        .context("starting wrangler dev")?;
    let mut lines = wrangler
        .stdout
        .take()
        .map(|stdout| BufReader::new(stdout).lines());
    let ready = tokio::time::timeout(EDGE_STARTUP, async {
        match (&mut lines, log) {
            (Some(lines), _) => {
                let mut terminal = tokio::io::stdout();
                while let Some(line) = lines.next_line().await? {
                    terminal.write_all(format!("{line}\n").as_bytes()).await?;
                    if line.contains("Ready on") {
                        return anyhow::Ok(());
                    }
                }
            }
            (None, Some(path)) => {
                while wrangler.try_wait()?.is_none() {
                    if tokio::fs::read_to_string(path).await?.contains("Ready on") {
                        return anyhow::Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            (None, None) => unreachable!("stdout is piped when there is no log file"),
        }
        bail!("wrangler dev exited before it was ready; is port {port} in use?")
    })
    .await;
    let failure = match ready {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(_) => Some(anyhow::anyhow!(
            "wrangler dev was not ready within {EDGE_STARTUP:?}"
        )),
    };
    if let Some(error) = failure {
        if let Some(pid) = wrangler.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", "--", &format!("-{pid}")])
                .status();
        }
        return Err(error);
    }
    if let Some(mut lines) = lines {
        tokio::spawn(async move {
            let mut terminal = tokio::io::stdout();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = terminal.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
    }
    Ok(wrangler)
}

/// maildev on [`MAIL_SMTP_PORT`] (SMTP) and [`MAIL_WEB_PORT`] (inbox and REST API), from the
/// edge's pinned npm tools.
fn start_mail() -> anyhow::Result<Child> {
    Command::new(crate::edge::node_bin("maildev"))
        .args(["--ip", "127.0.0.1", "--web-ip", "127.0.0.1", "--silent"])
        .args(["--smtp", &MAIL_SMTP_PORT.to_string()])
        .args(["--web", &MAIL_WEB_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting maildev")
}

/// The development root secret, made once and kept in `target/`: mail queued before a restart
/// can still be sent after it.
fn dev_server_secret() -> anyhow::Result<PathBuf> {
    let path = crate::target_dir().join("gatehouse-dev-server-secret");
    if !path.exists() {
        std::fs::write(&path, fresh_secret())?;
    }
    Ok(path)
}

/// A new random secret (244 random bits in 64 hex digits). Each run of the stack gets its own
/// edge secret: the origin runs as production, which refuses every secret published in the
/// repository.
pub fn fresh_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Creates an API key on `database_url` and starts `binary` serving at `addr` with the
/// development signing key, `edge_secret`, plus `env`; returns the process and the key.
pub fn start_origin(
    binary: &Path,
    database_url: &str,
    addr: &str,
    log: Option<&Path>,
    edge_secret: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(Child, String)> {
    let sh = xshell::Shell::new()?;
    let key_file = crate::target_dir().join("gatehouse-dev-signing-key.pem");
    if !key_file.exists() {
        let key = xshell::cmd!(sh, "{binary} keygen").read()?;
        std::fs::write(&key_file, key + "\n")?;
    }
    let api_key = xshell::cmd!(sh, "{binary} api-key create development")
        .env("DATABASE_URL", database_url)
        .quiet()
        .read()
        .context("creating an API key")?;
    let origin = Command::new(binary)
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("LISTEN_ADDR", addr)
        .env("JWT_SIGNING_KEY_FILE", &key_file)
        .env("JWT_ISSUER", format!("http://{ORIGIN_ADDR}"))
        .env("EDGE_SECRET", edge_secret)
        .env("SERVER_SECRET_FILE", dev_server_secret()?)
        .env("SMTP_URL", format!("smtp://127.0.0.1:{MAIL_SMTP_PORT}"))
        .env("MAIL_FROM", "Gatehouse <gatehouse@localhost>")
        .env("MAIL_LINK_BASE_URL", "http://localhost:3000")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stderr(match log {
            Some(path) => Stdio::from(std::fs::File::create(path)?),
            None => Stdio::inherit(),
        })
        .kill_on_drop(true)
        .spawn()
        .context("starting gatehouse-origin")?;
    Ok((origin, api_key))
}

/// Waits until `origin` answers `GET {url}/health`, failing if it exits first.
pub async fn wait_until_healthy(origin: &mut Child, url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..STARTUP_ATTEMPTS {
        if let Some(status) = origin.try_wait()? {
            bail!(
                "gatehouse-origin exited during start-up ({status}); is its port already in use?"
            );
        }
        let health = client.get(format!("{url}/health")).send().await;
        if health.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(STARTUP_POLL).await;
    }
    bail!("gatehouse-origin did not answer /health at {url}")
}

pub fn build_origin(release: bool) -> anyhow::Result<PathBuf> {
    let mut build = crate::cargo();
    build.args([
        "build",
        "--package",
        "gatehouse-origin",
        "--bin",
        "gatehouse-origin",
    ]);
    if release {
        build.arg("--release");
    }
    if !build.status()?.success() {
        bail!("building gatehouse-origin failed");
    }
    let profile = if release { "release" } else { "debug" };
    Ok(crate::target_dir().join(profile).join("gatehouse-origin"))
}

fn write_env_file(path: &Path, stack: &Stack) -> anyhow::Result<()> {
    let contents = format!(
        "EDGE_URL={}\nORIGIN_URL={}\nAPI_KEY={}\nDATABASE_URL={}\nMAIL_URL=http://127.0.0.1:{MAIL_WEB_PORT}\nEDGE_SECRET={}\n",
        stack.edge_url, stack.origin_url, stack.api_key, stack.database_url, stack.edge_secret
    );
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
