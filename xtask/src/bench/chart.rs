//! The storm's latency-over-time chart, drawn with plotters' SVG backend: every login as a dot at
//! its answer, and the p99 of the verifications in each half second as a line per side, on a
//! logarithmic latency axis.

use std::time::Duration;

use plotters::prelude::*;

use super::scenarios::{Storm, windows};

const SIZE: (u32, u32) = (900, 480);
/// The latency axis, in seconds: 0.1 ms to 100 s.
const LATENCY_RANGE: std::ops::Range<f64> = 1e-4..100.0;
/// The width of the windows whose verify p99 is drawn.
pub const WINDOW: Duration = Duration::from_millis(500);

const LOGIN: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const FAILED_LOGIN: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const VERIFY_ORIGIN: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const VERIFY_EDGE: RGBColor = RGBColor(0xff, 0x7f, 0x0e);

/// The chart of `storm` as an SVG document.
pub fn svg(storm: &Storm, title: &str) -> anyhow::Result<String> {
    let mut svg = String::new();
    draw(
        storm,
        title,
        SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(),
    )
    .map_err(|error| anyhow::anyhow!("drawing the storm chart: {error}"))?;
    Ok(svg)
}

fn draw<DB: DrawingBackend>(
    storm: &Storm,
    title: &str,
    area: DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    area.fill(&WHITE)?;
    let seconds = storm.wall.as_secs_f64().max(1.0);
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..seconds, LATENCY_RANGE.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds into the storm")
        .y_desc("latency (log)")
        .y_label_formatter(&|seconds| latency_label(*seconds))
        .light_line_style(WHITE)
        .draw()?;

    let clamp = |latency: Duration| {
        latency
            .as_secs_f64()
            .clamp(LATENCY_RANGE.start, LATENCY_RANGE.end)
    };
    chart
        .draw_series(storm.logins.iter().map(|login| {
            let colour = if login.ok { LOGIN } else { FAILED_LOGIN };
            Circle::new(
                (
                    (login.at + login.latency).as_secs_f64(),
                    clamp(login.latency),
                ),
                2,
                colour.mix(0.6).filled(),
            )
        }))?
        .label("login (each, at its answer)")
        .legend(|(x, y)| Circle::new((x + 6, y), 4, LOGIN.filled()));
    for (samples, colour, label) in [
        (
            &storm.verify_origin,
            VERIFY_ORIGIN,
            "verify at the origin, p99 per 0.5 s",
        ),
        (
            &storm.verify_edge,
            VERIFY_EDGE,
            "verify through the edge, p99 per 0.5 s",
        ),
    ] {
        let line = windows(samples, WINDOW)
            .into_iter()
            .map(|(at, p99)| (at, clamp(p99)));
        chart
            .draw_series(LineSeries::new(line, colour.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    area.present()
}

/// "0.1 ms", "10 ms", "1 s": a decade of the latency axis.
fn latency_label(seconds: f64) -> String {
    if seconds < 1.0 {
        let ms = seconds * 1000.0;
        if ms < 1.0 {
            format!("{ms:.1} ms")
        } else {
            format!("{ms:.0} ms")
        }
    } else {
        format!("{seconds:.0} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::client::Sample;

    #[test]
    fn the_chart_shows_every_login_and_both_verify_lines() {
        let sample = |at_ms, latency_ms, ok| Sample {
            at: Duration::from_millis(at_ms),
            latency: Duration::from_millis(latency_ms),
            ok,
        };
        let storm = Storm {
            logins: vec![sample(0, 200, true), sample(10, 400, false)],
            wall: Duration::from_secs(2),
            verify_origin: vec![sample(0, 1, true), sample(600, 2, true)],
            verify_edge: vec![sample(0, 5, true), sample(700, 6, true)],
        };

        let svg = svg(&storm, "a storm").unwrap();

        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("a storm"));
        assert_eq!(
            svg.matches("<circle").count(),
            3,
            "two logins and the legend's dot"
        );
        assert!(svg.contains("verify through the edge, p99 per 0.5 s"));
        assert_eq!(latency_label(1e-4), "0.1 ms");
        assert_eq!(latency_label(0.01), "10 ms");
        assert_eq!(latency_label(10.0), "10 s");
    }
}
