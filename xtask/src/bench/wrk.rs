//! Throughput measured with wrk (Debian's package, `wrk -t2 -c16`), as issue 14's reference table
//! was: a closed-loop Rust client in this process cannot drive tens of thousands of requests a
//! second on two cores beside the service it measures. Installed with apt when missing.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// wrk's threads and connections.
pub const THREADS: u32 = 2;
pub const CONNECTIONS: u32 = 16;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Requests per second over the run.
    pub per_second: f64,
    /// Requests completed.
    pub requests: u64,
    /// Answers with a status outside 200-399.
    pub non_2xx: u64,
    /// Latency percentiles (wrk's `--latency` distribution), in milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Installs wrk from Debian's packages when it is missing and this is a Debian machine run as
/// root.
pub fn ensure_installed() -> anyhow::Result<()> {
    let present = || {
        Command::new("wrk")
            .arg("--version")
            .output()
            .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains("wrk"))
    };
    if present() {
        return Ok(());
    }
    anyhow::ensure!(
        std::path::Path::new("/usr/bin/apt-get").exists(),
        "wrk is needed for the throughput rows: install it (Debian: apt-get install wrk)"
    );
    eprintln!("xtask: wrk not found; installing Debian's wrk package");
    let update = Command::new("apt-get").args(["update", "-q"]).status()?;
    let install = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", "wrk"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    anyhow::ensure!(
        update.success() && install.success() && present(),
        "installing wrk failed"
    );
    Ok(())
}

/// `wrk -t2 -c16 -d{duration} --latency` against `url` with `headers`.
pub fn run(url: &str, headers: &[(&str, &str)], duration: Duration) -> anyhow::Result<Rate> {
    measure(Command::new("wrk"), url, headers, duration)
}

/// [`run`] with the Lua `script` (to send another method, say).
pub fn run_script(
    url: &str,
    headers: &[(&str, &str)],
    script: &std::path::Path,
    duration: Duration,
) -> anyhow::Result<Rate> {
    let mut command = Command::new("wrk");
    command.arg("-s").arg(script);
    measure(command, url, headers, duration)
}

fn measure(
    mut command: Command,
    url: &str,
    headers: &[(&str, &str)],
    duration: Duration,
) -> anyhow::Result<Rate> {
    command
        .arg(format!("-t{THREADS}"))
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{}s", duration.as_secs()))
        .arg("--latency");
    for (name, value) in headers {
        command.arg("-H").arg(format!("{name}: {value}"));
    }
    let output = command.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed on {url}: {}{text}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&text).with_context(|| format!("reading wrk's report on {url}:\n{text}"))
}

/// Reads wrk's report.
fn parse(text: &str) -> anyhow::Result<Rate> {
    let field = |prefix: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let per_second: f64 = field("Requests/sec:").context("no Requests/sec")?.parse()?;
    let requests = text
        .lines()
        .find_map(|line| line.trim().split_once(" requests in "))
        .context("no request count")?
        .0
        .parse()?;
    let non_2xx = field("Non-2xx or 3xx responses:").map_or(Ok(0), str::parse)?;
    let percentile = |name: &str| -> anyhow::Result<f64> {
        latency_ms(field(name).with_context(|| format!("no {name} latency"))?)
    };
    Ok(Rate {
        per_second,
        requests,
        non_2xx,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
    })
}

/// `221.00us`, `1.02ms`, `1.50s` in milliseconds.
fn latency_ms(text: &str) -> anyhow::Result<f64> {
    let (number, scale) = if let Some(number) = text.strip_suffix("us") {
        (number, 0.001)
    } else if let Some(number) = text.strip_suffix("ms") {
        (number, 1.0)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1000.0)
    } else {
        bail!("not a latency: {text}")
    };
    Ok(number.parse::<f64>()? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_report() {
        let report = "Running 10s test @ http://127.0.0.1:8007/health
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   254.91us  300.12us  12.50ms   95.00%
    Req/Sec    31.20k     1.10k   33.00k    70.00%
  Latency Distribution
     50%  221.00us
     75%  300.00us
     90%  400.00us
     99%    1.02ms
  624123 requests in 10.00s, 85.11MB read
  Non-2xx or 3xx responses: 12
Requests/sec:  62400.12
Transfer/sec:      8.51MB
";
        let rate = parse(report).unwrap();
        assert_eq!(rate.requests, 624_123);
        assert_eq!(rate.non_2xx, 12);
        assert!((rate.per_second - 62_400.12).abs() < 1e-6);
        assert!((rate.p50_ms - 0.221).abs() < 1e-9);
        assert!((rate.p99_ms - 1.02).abs() < 1e-9);
    }
}
