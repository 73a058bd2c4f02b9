//! `cargo xtask image`: the origin's container image, built with podman from the repository's
//! `Dockerfile` and smoke-tested against a throwaway PostgreSQL.
//!
//! - `cargo xtask image` builds the Dockerfile's `prebuilt` target: the runtime stage around a
//!   release binary built here on the host, so it does not pay for a second cold release build
//!   inside the image.
//! - `cargo xtask image --binary PATH` does the same with a binary built already: CI passes the
//!   debug binary its tests ran, since what the smoke test checks does not depend on the
//!   optimisation level and a cold release build would add a quarter to CI's CPU time.
//! - `cargo xtask image --full` runs the whole multi-stage build (rustup and a release build in the
//!   build stage), timed, then the same smoke test.
//!
//! No registry answers on these machines, so the `debian:bookworm-slim` base the Dockerfile names
//! is built from Debian's packages with mmdebstrap and tagged with that name: the Dockerfile itself
//! stays the one that builds anywhere. Podman, runc and mmdebstrap are installed from Debian's
//! packages when missing (as root on Debian). Containers run with runc and explicit limits: the
//! default runtime, crun, fails on these machines' hybrid cgroups.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use xshell::{Shell, cmd};

use crate::bench::client::Bench;
use crate::pg::Postgres;

/// The base both Dockerfile stages start from, as the Dockerfile names it.
const BASE_IMAGE: &str = "docker.io/library/debian:bookworm-slim";
/// The smoke-tested image's tag.
const TAG: &str = "localhost/gatehouse-origin:smoke";
/// The smoke test's container.
const CONTAINER: &str = "gatehouse-image-smoke";
/// The origin's default `SHUTDOWN_GRACE_SECS`: SIGTERM must end the container within it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// How long the container may take to answer `/health` (it migrates first).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// The podman-compose release `compose.yaml` is checked with.
const PODMAN_COMPOSE_VERSION: &str = "1.6.0";
/// Locale, documentation and manual pages, which the slim image leaves out too.
const SLIM_EXCLUDES: [&str; 4] = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
];

/// How the image gets its binary.
enum Source {
    /// Built here in release (`cargo xtask image`).
    HostBuild,
    /// Built here already (`--binary PATH`: CI passes the debug binary its tests ran).
    HostBinary(PathBuf),
    /// The Dockerfile's own build stage (`--full`).
    Full,
}

pub async fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let source = match args {
        [] => Source::HostBuild,
        [flag] if flag == "--full" => Source::Full,
        [flag, path] if flag == "--binary" => Source::HostBinary(PathBuf::from(path)),
        _ => bail!("usage: cargo xtask image [--full | --binary PATH]"),
    };
    let sh = Shell::new()?;
    sh.change_dir(crate::root());
    install_tools(&sh)?;
    check_compose(&sh)?;
    base_image(&sh)?;
    let binary = match source {
        Source::Full => None,
        Source::HostBuild => Some(crate::dev::build_origin(true)?),
        Source::HostBinary(path) => Some(path),
    };
    if let Some(binary) = binary {
        // The build context holds the one binary, not the whole target directory; without its
        // line tables, as the Dockerfile's build stage ships it.
        let context = crate::target_dir().join("image-context");
        std::fs::create_dir_all(&context)?;
        let stripped = context.join("gatehouse-origin");
        cmd!(sh, "objcopy --strip-debug {binary} {stripped}").run()?;
        let host_binary = format!("host-binary={}", context.display());
        cmd!(
            sh,
            "podman build --isolation chroot --format docker --target prebuilt --build-context {host_binary} --tag {TAG} ."
        )
        .run()
        .context("building the image around the host's binary")?;
    } else {
        // The host's CA bundle, for a network behind a TLS-intercepting proxy (as here).
        let ca = "id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt";
        let started = Instant::now();
        cmd!(
            sh,
            "podman build --isolation chroot --format docker --secret {ca} --tag {TAG} ."
        )
        .run()
        .context("the full image build")?;
        println!(
            "image: the full multi-stage build took {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    let format = "{{.Size}}";
    let size: u64 = cmd!(sh, "podman image inspect --format {format} {TAG}")
        .read()?
        .trim()
        .parse()
        .context("podman's image size")?;
    println!("image: {TAG}, {:.1} MB", size as f64 / 1e6);
    smoke(&sh).await?;
    println!("image: smoke test passed");
    Ok(ExitCode::SUCCESS)
}

/// podman, runc and mmdebstrap from Debian's packages when one is missing.
fn install_tools(sh: &Shell) -> anyhow::Result<()> {
    let missing = ["podman", "runc", "mmdebstrap"].into_iter().any(|tool| {
        cmd!(sh, "{tool} --version")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_err()
    });
    if !missing {
        return Ok(());
    }
    ensure!(
        Path::new("/usr/bin/apt-get").exists(),
        "the image step needs podman, runc and mmdebstrap (Debian packages of those names)"
    );
    eprintln!("xtask: installing podman, runc and mmdebstrap from Debian's packages");
    cmd!(sh, "apt-get update -q").run()?;
    cmd!(
        sh,
        "apt-get install -y -q --no-install-recommends podman runc mmdebstrap"
    )
    .env("DEBIAN_FRONTEND", "noninteractive")
    .run()?;
    Ok(())
}

/// `podman-compose config` on `compose.yaml`: it parses, its variables resolve, and the metrics
/// port is not published to the host.
fn check_compose(sh: &Shell) -> anyhow::Result<()> {
    let compose = crate::pypi_tool("podman-compose", PODMAN_COMPOSE_VERSION, "podman-compose")?;
    let config = cmd!(sh, "{compose} --file compose.yaml config")
        .env("POSTGRES_PASSWORD", "compose-config-check")
        .read()
        .context("podman-compose config on compose.yaml")?;
    ensure!(
        !config.contains(":9007"),
        "compose.yaml publishes the metrics port (9007) to the host:\n{config}"
    );
    println!("image: compose.yaml is valid (podman-compose config)");
    Ok(())
}

/// Builds [`BASE_IMAGE`] from Debian's packages (minbase, without documentation) unless podman
/// already has it, pulled or built.
fn base_image(sh: &Shell) -> anyhow::Result<()> {
    if cmd!(sh, "podman image exists {BASE_IMAGE}")
        .quiet()
        .run()
        .is_ok()
    {
        return Ok(());
    }
    eprintln!("xtask: building {BASE_IMAGE} from Debian's packages (mmdebstrap)");
    let tarball = crate::target_dir().join("image-base.tar");
    let dpkg_options = SLIM_EXCLUDES.map(|exclude| format!("--dpkgopt={exclude}"));
    // The merged-/usr hook does what the usrmerge package would, without the perl it pulls in.
    let hooks = "/usr/share/mmdebstrap/hooks/merged-usr";
    let built = cmd!(
        sh,
        "mmdebstrap --quiet --variant=minbase --include=libssl3 --hook-dir={hooks} {dpkg_options...} bookworm {tarball} http://deb.debian.org/debian"
    )
    .ignore_status()
    .output()?;
    ensure!(
        built.status.success(),
        "mmdebstrap failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    cmd!(sh, "podman import --quiet {tarball} {BASE_IMAGE}").run()?;
    std::fs::remove_file(&tarball)?;
    Ok(())
}

/// The image against a throwaway PostgreSQL: a bad configuration exits non-zero naming the
/// variable; the server migrates, answers `/health`, `/ready` and its `HEALTHCHECK`, runs as a
/// non-root user, serves register → login → verify → profile; SIGTERM ends it with exit 0 within
/// the shutdown grace.
async fn smoke(sh: &Shell) -> anyhow::Result<()> {
    let postgres = Postgres::start(&crate::target_dir().join("gatehouse-pg-image"), true)?;
    postgres.create_database("gatehouse")?;
    let database_url = postgres.url("gatehouse");
    let _ = cmd!(sh, "podman rm --force --ignore {CONTAINER}")
        .quiet()
        .ignore_stdout()
        .run();
    // runc, with limits: podman's default open-files limit is more than runc may set here.
    let limits = [
        "--runtime",
        "runc",
        "run",
        "--network",
        "host",
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
        // No timer for the HEALTHCHECK (podman would ask systemd for one); the smoke test runs
        // it itself with `podman healthcheck run`.
        "--health-interval",
        "disable",
    ];
    let signing_key = cmd!(sh, "podman {limits...} --rm {TAG} keygen")
        .read()
        .context("keygen in the image")?;
    let edge_secret = crate::dev::fresh_secret();
    let server_secret = crate::dev::fresh_secret();
    // Secrets reach podman through its environment (`--env NAME` without a value), never its
    // command line.
    let env = [
        "--env",
        "GATEHOUSE_ENV=production",
        "--env",
        "DATABASE_URL",
        "--env",
        "JWT_SIGNING_KEY",
        "--env",
        "EDGE_SECRET",
        "--env",
        "SERVER_SECRET",
        "--env",
        "MAIL_ENABLED=false",
    ];
    let _database_guard = sh.push_env("DATABASE_URL", &database_url);

    // A production configuration without its signing key: refused at start, naming the variable.
    let refused = cmd!(
        sh,
        "podman {limits...} --rm --env GATEHOUSE_ENV=production --env DATABASE_URL {TAG}"
    )
    .quiet()
    .ignore_status()
    .output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && stderr.contains("JWT_SIGNING_KEY"),
        "a configuration without JWT_SIGNING_KEY should exit non-zero naming it; got {} and {stderr:?}",
        refused.status
    );
    println!(
        "image: without JWT_SIGNING_KEY it exits {} naming it",
        refused.status.code().unwrap_or(-1)
    );

    let _key_guard = sh.push_env("JWT_SIGNING_KEY", signing_key.trim());
    let _edge_guard = sh.push_env("EDGE_SECRET", &edge_secret);
    let _server_guard = sh.push_env("SERVER_SECRET", &server_secret);

    let port = crate::pg::free_port()?.to_string();
    let listen = format!("LISTEN_ADDR=127.0.0.1:{port}");
    let metrics = format!("METRICS_LISTEN_ADDR=127.0.0.1:{}", crate::pg::free_port()?);
    cmd!(sh, "podman {limits...} --detach --name {CONTAINER} {env...} --env {listen} --env {metrics} {TAG}")
        .quiet()
        .ignore_stdout()
        .run()
        .context("starting the container")?;
    let _container = Container;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_for_health(sh, &client, &url).await?;
    let ready = client.get(format!("{url}/ready")).send().await?.status();
    ensure!(ready.is_success(), "/ready answered {ready}");
    cmd!(sh, "podman healthcheck run {CONTAINER}")
        .quiet()
        .run()
        .context("the image's HEALTHCHECK")?;

    // The server process itself, as the host sees it.
    let format = "{{.State.Pid}}";
    let pid = cmd!(sh, "podman inspect --format {format} {CONTAINER}").read()?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))?;
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .context("the server's uid")?;
    ensure!(uid != "0", "the server runs as root");
    println!("image: the server runs as uid {uid}");

    let api_key = cmd!(
        sh,
        "podman exec {CONTAINER} gatehouse-origin api-key create image-smoke"
    )
    .quiet()
    .read()
    .context("creating an API key in the container")?;
    let bench = Bench {
        client: client.clone(),
        url: url.clone(),
        api_key,
        edge_secret: edge_secret.clone(),
    };
    bench
        .flow()
        .await
        .context("register, login, verify, profile")?;
    println!("image: register, login, verify and profile answered");

    let stopping = Instant::now();
    cmd!(sh, "podman kill --signal TERM {CONTAINER}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let wait = tokio::process::Command::new("podman")
        .args(["wait", CONTAINER])
        .output();
    let exit = tokio::time::timeout(SHUTDOWN_GRACE, wait)
        .await
        .context("the container outlived SHUTDOWN_GRACE_SECS after SIGTERM")??;
    let exit = String::from_utf8_lossy(&exit.stdout);
    ensure!(
        exit.trim() == "0",
        "the container exited {exit} after SIGTERM"
    );
    println!(
        "image: SIGTERM ended the container with exit 0 in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Polls `/health` until it answers, failing if the container stops or [`STARTUP_TIMEOUT`] ends.
async fn wait_for_health(sh: &Shell, client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        let health = client.get(format!("{url}/health")).send().await;
        if health.is_ok_and(|response| response.status().is_success()) {
            return Ok(());
        }
        let format = "{{.State.Status}}";
        let state = cmd!(sh, "podman inspect --format {format} {CONTAINER}").read()?;
        if state.trim() != "running" {
            let logs = cmd!(sh, "podman logs {CONTAINER}")
                .ignore_status()
                .output()?;
            bail!(
                "the container stopped ({state}) before answering /health:\n{}",
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the container did not answer {url}/health within {STARTUP_TIMEOUT:?}")
}

/// Removes the smoke test's container, whatever the outcome.
struct Container;

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .args(["rm", "--force", "--ignore", CONTAINER])
            .stdout(std::process::Stdio::null())
            .status();
    }
}
