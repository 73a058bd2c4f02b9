//! What `cargo xtask bench` prints and writes: latency summaries kept in HDR histograms, and one
//! table whose rows are printed as they come and written as JSON at the end.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

/// Latencies in microseconds, from 1 µs to 10 minutes at three significant figures (0.1 %), which
/// is finer than any figure the bench reports.
#[derive(Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"))
    }
}

impl FromIterator<Duration> for Latencies {
    fn from_iter<I: IntoIterator<Item = Duration>>(latencies: I) -> Self {
        let mut histogram = Latencies::default();
        for latency in latencies {
            histogram.record(latency);
        }
        histogram
    }
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    /// Adds every latency of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        self.0.add(&other.0).expect("histograms of one shape");
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn quantile(&self, quantile: f64) -> Duration {
        Duration::from_micros(self.0.value_at_quantile(quantile))
    }

    pub fn median(&self) -> Duration {
        self.quantile(0.5)
    }

    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.0.max())
    }

    pub fn mean(&self) -> Duration {
        Duration::from_secs_f64(self.0.mean() / 1e6)
    }
}

/// A row of the table as JSON: `value` is the text printed, `figures` the numbers behind it.
#[derive(Serialize)]
struct Row {
    measure: String,
    value: String,
    target: String,
    /// Whether the target was met; `None` for a figure without one.
    met: Option<bool>,
    figures: Value,
}

/// The bench's table, printed as rows are added.
#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn push(&mut self, row: Row) {
        if self.rows.is_empty() {
            println!("\n{:<58} {:>22} {:>14}", "measure", "value", "target");
        }
        let target = match row.met {
            Some(false) => format!("MISSED {}", row.target),
            _ => row.target.clone(),
        };
        println!("{:<58} {:>22} {:>14}", row.measure, row.value, target);
        self.rows.push(row);
    }

    /// A figure with no target.
    pub fn value(&mut self, measure: &str, value: String, figures: impl Serialize) {
        self.push(Row {
            measure: measure.into(),
            value,
            target: String::new(),
            met: None,
            figures: serde_json::to_value(figures).expect("figures serialise"),
        });
    }

    /// A figure with a target it meets or misses.
    pub fn check(&mut self, measure: &str, value: String, target: &str, met: bool) {
        self.push(Row {
            measure: measure.into(),
            figures: Value::String(value.clone()),
            value,
            target: target.into(),
            met: Some(met),
        });
    }

    /// `succeeded` of `total` against the target that all succeed.
    pub fn all_succeeded(&mut self, measure: &str, succeeded: u64, total: u64) {
        self.check(
            measure,
            format!("{succeeded}/{total}"),
            &format!("{total}/{total}"),
            succeeded == total,
        );
    }

    /// p50 / p99 of `latencies`, checking the p99 against `budget` when given.
    pub fn latencies(&mut self, measure: &str, latencies: &Latencies, budget: Option<Duration>) {
        let (p50, p99) = (latencies.median(), latencies.p99());
        let measure = format!("{measure}, p50 / p99 (n={})", latencies.len());
        let value = format!("{} / {}", ms(p50), ms(p99));
        let figures =
            serde_json::json!({"p50_ms": ms_f(p50), "p99_ms": ms_f(p99), "n": latencies.len()});
        match budget {
            Some(budget) => {
                self.check(
                    &measure,
                    value,
                    &format!("p99 < {}", ms(budget)),
                    p99 < budget,
                );
                if let Some(row) = self.rows.last_mut() {
                    row.figures = figures;
                }
            }
            None => self.value(&measure, value, figures),
        }
    }

    /// Requests per second over a run of `requests`, all of which must succeed, and their p50 / p99.
    pub fn throughput(
        &mut self,
        measure: &str,
        per_second: f64,
        ok: u64,
        requests: u64,
        latencies: &Latencies,
    ) {
        self.check(
            &format!("{measure}, throughput"),
            format!("{per_second:.0} req/s"),
            &format!("{requests}/{requests} ok"),
            ok == requests,
        );
        if let Some(row) = self.rows.last_mut() {
            row.figures =
                serde_json::json!({"per_second": per_second, "ok": ok, "requests": requests});
        }
        self.latencies(measure, latencies, None);
    }

    pub fn all_met(&self) -> bool {
        self.rows.iter().all(|row| row.met != Some(false))
    }

    /// Success when every target was met.
    pub fn exit_code(&self) -> std::process::ExitCode {
        if self.all_met() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }
    }

    /// The table as JSON, with `meta` saying what was measured.
    pub fn json(&self, meta: Value) -> Value {
        serde_json::json!({ "meta": meta, "measures": self.rows })
    }
}

pub fn ms_f(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

pub fn ms(duration: Duration) -> String {
    format!("{:.1} ms", ms_f(duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_recorded_latencies() {
        let latencies: Latencies = (1..=100).map(Duration::from_millis).collect();

        assert_eq!(latencies.len(), 100);
        // Three significant figures: within 0.1 % of the exact nearest-rank values.
        let close = |actual: Duration, expected_ms: f64| {
            (ms_f(actual) - expected_ms).abs() <= expected_ms / 1000.0
        };
        assert!(close(latencies.median(), 50.0), "{:?}", latencies.median());
        assert!(close(latencies.p99(), 99.0), "{:?}", latencies.p99());
        assert!(close(latencies.max(), 100.0), "{:?}", latencies.max());
        assert!(close(latencies.mean(), 50.5), "{:?}", latencies.mean());
    }

    #[test]
    fn a_missed_target_fails_the_report() {
        let mut report = Report::default();
        report.check("met", "1".into(), "1", true);
        assert!(report.all_met());

        report.check("missed", "2".into(), "1", false);

        assert!(!report.all_met());
        let json = report.json(Value::Null);
        assert_eq!(json["measures"][1]["met"], Value::Bool(false));
    }
}
