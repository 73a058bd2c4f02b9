//! A throwaway PostgreSQL cluster from the machine's own binaries, for tests and development.
//! `cargo xtask` uses this file too (by path), for its test and development clusters.
//!
//! initdb and postgres refuse to run as root, so when xtask runs as root they run as the
//! `postgres` user. The cluster listens on 127.0.0.1 only, on a free port, with durability
//! switched off: its data is disposable by design.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Where Debian and Ubuntu put versioned PostgreSQL binaries.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";

/// A running cluster; stopped when dropped.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

impl Postgres {
    /// Starts a cluster in `data`, creating it if needed, or from scratch when `fresh`.
    pub fn start(data: &Path, fresh: bool) -> anyhow::Result<Self> {
        let bin = find_binaries()?;
        let as_postgres_user = is_root();
        let data = usable_data_dir(data, as_postgres_user)?;
        if fresh && data.exists() {
            std::fs::remove_dir_all(&data)
                .with_context(|| format!("removing {}", data.display()))?;
        }
        let cluster = Postgres {
            bin,
            data,
            port: free_port()?,
            as_postgres_user,
        };
        if !cluster.data.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&cluster.data)?;
            if as_postgres_user {
                run(Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&cluster.data))?;
            }
            run(cluster
                .command("initdb")
                .args([
                    "--auth=trust",
                    "--username=postgres",
                    "--encoding=UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&cluster.data))
            .context("initdb")?;
        }
        // A cluster left running by a killed run would hold the data directory.
        let _ = cluster
            .command("pg_ctl")
            .arg("-D")
            .arg(&cluster.data)
            .args(["-m", "immediate", "stop"])
            .output();
        cluster.start_server()?;
        Ok(cluster)
    }

    /// A URL for database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates database `name` unless it exists.
    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let output = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
                &self.port.to_string(),
                name,
            ])
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() && !stderr.contains("already exists") {
            bail!("createdb {name}: {stderr}");
        }
        Ok(())
    }

    /// Drops database `name` if it exists.
    pub fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        run(Command::new(self.bin.join("dropdb"))
            .args(["--if-exists", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.port.to_string(), name]))
    }

    /// Applies every `*.sql` file of `migrations`, in name order, to database `name` with psql,
    /// each in one transaction: a schema without the sqlx bookkeeping, for describing queries.
    pub fn apply_sql_files(&self, name: &str, migrations: &Path) -> anyhow::Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(migrations)
            .with_context(|| format!("reading {}", migrations.display()))?
            .filter_map(|entry| Some(entry.ok()?.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
            .collect();
        files.sort();
        for file in files {
            run(Command::new(self.bin.join("psql"))
                .args(["-q", "-X", "-1", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
                .args([
                    "-U",
                    "postgres",
                    "-p",
                    &self.port.to_string(),
                    "-d",
                    name,
                    "-f",
                ])
                .arg(&file))
            .with_context(|| format!("applying {}", file.display()))?;
        }
        Ok(())
    }

    /// Stops the server as an operator would (`pg_ctl stop -m fast`: sessions are cut, open
    /// transactions roll back, committed data stays).
    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .output();
    }

    /// Starts the server of this cluster (again, after [`Postgres::stop`]), on the same port
    /// with the same data.
    pub fn start_server(&self) -> anyhow::Result<()> {
        let options = self.options();
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("server.log"))
            .args(["-o", &options, "-w", "-t", "60", "start"]))
        .with_context(|| {
            format!(
                "starting PostgreSQL; see {}",
                self.data.join("server.log").display()
            )
        })
    }

    fn options(&self) -> String {
        format!(
            "-p {} -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=400 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port
        )
    }

    /// A PostgreSQL program, run as the postgres user when xtask runs as root.
    fn command(&self, program: &str) -> Command {
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join(program));
            command
        } else {
            Command::new(self.bin.join(program))
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `PG_BIN` if set, else the newest version under /usr/lib/postgresql, else `pg_config --bindir`.
/// When none is found and this is a Debian machine run by root, installs PostgreSQL with apt.
fn find_binaries() -> anyhow::Result<PathBuf> {
    if let Some(bin) = locate_binaries() {
        return Ok(bin);
    }
    if is_root() && Path::new("/usr/bin/apt-get").exists() {
        eprintln!("xtask: PostgreSQL not found; installing it with apt-get");
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "postgresql"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        if let Some(bin) = locate_binaries() {
            return Ok(bin);
        }
    }
    bail!(
        "PostgreSQL server binaries not found: install PostgreSQL or set PG_BIN to its bin directory"
    )
}

fn locate_binaries() -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("PG_BIN") {
        return Some(PathBuf::from(bin));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_PG_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    let bin = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    bin.join("initdb").exists().then_some(bin)
}

/// The postgres user must reach the data directory; a checkout under a private home directory
/// does not allow that, and then the cluster lives under the temporary directory instead.
fn usable_data_dir(preferred: &Path, as_postgres_user: bool) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(preferred.parent().unwrap_or(preferred))?;
    let preferred = std::path::absolute(preferred)?;
    if !as_postgres_user {
        return Ok(preferred);
    }
    let parent = preferred.parent().unwrap_or(&preferred);
    let reachable = Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(parent)
        .status()
        .is_ok_and(|status| status.success());
    if reachable {
        return Ok(preferred);
    }
    let name = preferred
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let fallback = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    eprintln!(
        "xtask: the postgres user cannot reach {}; using {} instead",
        parent.display(),
        fallback.display()
    );
    Ok(fallback)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
