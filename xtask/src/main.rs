//! Gatehouse's project automation, run as `cargo xtask <command>` (the cargo alias lives in
//! `.cargo/config.toml`; see matklad's xtask convention).

mod bench;
mod dev;
mod edge;
mod fuzz;
mod image;
// The cluster code is the test crate's, so tests that stop and start their own PostgreSQL and
// xtask share one implementation without xtask depending on the test crate.
#[path = "../../tests/src/pg.rs"]
mod pg;
mod sqlx;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  dev     start PostgreSQL (unless DATABASE_URL is set), the origin and the edge; print URLs
          and a key [--release: the origin as it is deployed, optimised]
  test    start a throwaway PostgreSQL and run every test [-- extra cargo test arguments]
  bench   measure the running stack (or start one) and print the figures
  image   build the origin's container image around a release binary built here and smoke-test
          it with podman (CI) [--full: the whole multi-stage build, timed]
  fuzz    run schemathesis against the origin's OpenAPI description on a throwaway PostgreSQL
  build-edge   install the edge's build tools if missing and build the worker into edge/build
  sqlx-prepare describe the origin's queries against the migrations and rewrite .sqlx/";

/// OpenSSL's headers and pkg-config, which the origin's build needs (webauthn-rs links the
/// system OpenSSL): installed from Debian's packages when missing.
fn ensure_openssl() -> anyhow::Result<()> {
    use std::process::{Command, Stdio};
    let present = || {
        Command::new("pkg-config")
            .args(["--exists", "openssl"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if present() {
        return Ok(());
    }
    anyhow::ensure!(
        std::path::Path::new("/usr/bin/apt-get").exists(),
        "the origin's build needs OpenSSL's headers and pkg-config (Debian: libssl-dev pkg-config)"
    );
    eprintln!("xtask: installing libssl-dev and pkg-config from Debian's packages");
    let updated = Command::new("apt-get").args(["update", "-q"]).status()?;
    let installed = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "libssl-dev",
            "pkg-config",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    anyhow::ensure!(
        updated.success() && installed.success() && present(),
        "installing libssl-dev and pkg-config failed"
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    // Every command but `build-edge` compiles the origin, which links OpenSSL (webauthn-rs).
    if !matches!(args.first().map(String::as_str), None | Some("build-edge"))
        && let Err(error) = ensure_openssl()
    {
        eprintln!("xtask: {error:#}");
        return ExitCode::FAILURE;
    }
    let outcome = match args.first().map(String::as_str) {
        Some("dev") => runtime.block_on(dev::run(&args[1..])),
        Some("test") => test::run(&args[1..]),
        Some("bench") => runtime.block_on(bench::run(&args[1..])),
        Some("image") => runtime.block_on(image::run(&args[1..])),
        Some("fuzz") => fuzz::run_alone(),
        Some("build-edge") => edge::build().map(|()| ExitCode::SUCCESS),
        Some("sqlx-prepare") => sqlx::prepare(),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask's manifest sits one level below it).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The workspace's target directory.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// The cargo that runs xtask, so nested builds use the same toolchain.
fn cargo() -> std::process::Command {
    let mut command =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root());
    command
}

/// `executable` of PyPI's `package` at `version`, installed into its own virtual environment
/// under `target/` when missing (Python 3 with venv is needed).
fn pypi_tool(package: &str, version: &str, executable: &str) -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    let venv = target_dir().join(format!("{package}-{version}"));
    let path = venv.join("bin").join(executable);
    if path.exists() {
        return Ok(path);
    }
    eprintln!("xtask: installing {package} {version} from PyPI");
    let sh = xshell::Shell::new()?;
    xshell::cmd!(sh, "python3 -m venv {venv}")
        .run()
        .with_context(|| format!("creating a virtual environment for {package} (Python 3)"))?;
    let pip = venv.join("bin").join("pip");
    let requirement = format!("{package}=={version}");
    let installed = xshell::cmd!(
        sh,
        "{pip} install --quiet --disable-pip-version-check {requirement}"
    )
    .run();
    if installed.is_err() {
        let _ = std::fs::remove_dir_all(&venv);
    }
    installed?;
    Ok(path)
}
