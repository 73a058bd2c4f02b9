//! Building the edge worker: the pinned tools it needs, installed when missing, and worker-build.
//!
//! worker-build would download wasm-bindgen and wasm-opt itself; here they come from crates.io
//! and npm instead, pinned, and worker-build is pointed at them (`WASM_BINDGEN_BIN`,
//! `WASM_OPT_BIN`, `ESBUILD_BIN`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};
use xshell::{Shell, cmd};

/// The worker-build release this project is built and tested with.
const WORKER_BUILD_VERSION: &str = "0.8.7";

/// The edge crate's directory.
pub fn dir() -> PathBuf {
    crate::root().join("edge")
}

/// The built worker's entry module.
pub fn entry() -> PathBuf {
    dir().join("build").join("index.js")
}

/// An npm-installed tool of the edge's `package.json`.
pub fn node_bin(name: &str) -> PathBuf {
    dir().join("node_modules").join(".bin").join(name)
}

/// Installs whatever the edge build and tests need and is missing.
pub fn ensure_tools() -> anyhow::Result<()> {
    let sh = Shell::new()?;
    cmd!(sh, "rustup target add wasm32-unknown-unknown").run()?;
    // npm ci again whenever package-lock.json changed since the last install.
    let lock =
        std::fs::read(dir().join("package-lock.json")).context("reading edge/package-lock.json")?;
    let stamp_path = dir().join("node_modules").join(".gatehouse-lock");
    let stamp = format!("{:x}", Sha256::digest(&lock));
    let installed = std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp);
    if !installed || !node_bin("wrangler").exists() || !node_bin("wasm-opt").exists() {
        eprintln!("xtask: installing the edge's npm tools (npm ci)");
        sh.change_dir(dir());
        cmd!(sh, "npm ci --no-audit --no-fund").run()?;
        std::fs::write(&stamp_path, &stamp)?;
    }
    let wasm_bindgen = wasm_bindgen_version()?;
    install_if_missing(&sh, "worker-build", "worker-build", WORKER_BUILD_VERSION)?;
    install_if_missing(&sh, "wasm-bindgen-cli", "wasm-bindgen", &wasm_bindgen)?;
    Ok(())
}

/// Builds the worker into `edge/build` (release mode: what is deployed and what tests run),
/// unless the build is newer than every source it comes from.
pub fn build() -> anyhow::Result<()> {
    ensure_tools()?;
    if is_fresh()? {
        eprintln!("xtask: edge/build is up to date");
        return Ok(());
    }
    let sh = Shell::new()?;
    sh.change_dir(dir());
    let worker_build = cargo_bin("worker-build");
    cmd!(sh, "{worker_build} --release")
        .env("WASM_BINDGEN_BIN", cargo_bin("wasm-bindgen"))
        .env("WASM_OPT_BIN", node_bin("wasm-opt"))
        .env("ESBUILD_BIN", node_bin("esbuild"))
        .run()?;
    Ok(())
}

/// Whether `edge/build` is newer than the sources of the worker: the edge and shared crates,
/// the lock file and the manifests.
fn is_fresh() -> anyhow::Result<bool> {
    let Ok(built) = std::fs::metadata(entry()).and_then(|m| m.modified()) else {
        return Ok(false);
    };
    let root = crate::root();
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    let mut pending = vec![
        root.join("edge/src"),
        root.join("shared/src"),
        root.join("edge/Cargo.toml"),
        root.join("shared/Cargo.toml"),
        root.join("Cargo.toml"),
        root.join("Cargo.lock"),
    ];
    while let Some(path) = pending.pop() {
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        } else {
            newest = newest.max(meta.modified()?);
        }
    }
    Ok(built > newest)
}

/// The `wasm-bindgen` version in Cargo.lock: the CLI must match it exactly.
fn wasm_bindgen_version() -> anyhow::Result<String> {
    let lock = std::fs::read_to_string(crate::root().join("Cargo.lock"))?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == r#"name = "wasm-bindgen""# {
            let version = lines
                .next()
                .and_then(|l| l.strip_prefix("version = \"")?.strip_suffix('"'));
            return version
                .map(str::to_owned)
                .context("wasm-bindgen has no version in Cargo.lock");
        }
    }
    bail!("wasm-bindgen is not in Cargo.lock")
}

/// `cargo install --debug` (same output as a release build of the tool, several times faster to
/// compile) without debug info (nobody debugs these tools here: wasm-bindgen-cli then installs in
/// 60 s instead of 81 s on two cores) unless the binary already reports `version`. Not `--locked`:
/// one of wasm-bindgen-cli's locked dependencies is no longer on crates.io.
fn install_if_missing(sh: &Shell, krate: &str, binary: &str, version: &str) -> anyhow::Result<()> {
    let binary = cargo_bin(binary);
    let installed = cmd!(sh, "{binary} --version")
        .quiet()
        .ignore_stderr()
        .read()
        // "worker-build 0.8.7": the version is the last word, compared exactly.
        .is_ok_and(|out| out.split_whitespace().last() == Some(version));
    if installed {
        return Ok(());
    }
    eprintln!("xtask: installing {krate} {version} (a few minutes, once)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    cmd!(
        sh,
        "{cargo} install {krate} --version {version} --debug --force"
    )
    .env("CARGO_PROFILE_DEV_DEBUG", "false")
    .run()?;
    Ok(())
}

/// Where `cargo install` puts binaries.
pub fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"));
    home.join("bin").join(name)
}
