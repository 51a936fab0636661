//! The latency-over-time PNG of `gavel bench bids --plot`: per interval of the measured window,
//! the p50, p99 and max latency of the decisions due or sent in it, on a log scale, and below
//! the decisions (or etcd puts) answered per second, through the drain after the end.
//!
//! Drawn with plotters' bitmap backend; the labels use a font embedded in the binary (DejaVu
//! Sans Mono cut down to ASCII, see `DejaVuSansMono-LICENSE.txt`), so nothing depends on the
//! machine's fonts or on fontconfig.

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use plotters::prelude::*;

use super::bids_load::Tally;

/// The embedded font: printable ASCII and the micro sign, 8 KiB.
const FONT_TTF: &[u8] = include_bytes!("DejaVuSansMono-ascii.ttf");
/// The family name plotters knows the embedded font by.
const FONT_FAMILY: &str = "sans-serif";
const WIDTH_PX: u32 = 1200;
const HEIGHT_PX: u32 = 800;

/// One point of the latency series (by due or send time).
struct Point {
    t_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn register_font() -> anyhow::Result<()> {
    static REGISTER: Once = Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        result = plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_TTF)
            .map_err(|_| anyhow::anyhow!("the embedded font is not a valid TTF"));
    });
    result
}

fn points(series: &[Histogram<u64>], interval: Duration) -> Vec<Point> {
    let ms = |us: u64| (us as f64 / 1000.0).max(0.001);
    series
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.is_empty())
        .map(|(i, h)| Point {
            t_s: (i as f64 + 0.5) * interval.as_secs_f64(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        })
        .collect()
}

/// Decisions per second by the time they were answered, up to the last answer.
fn rates(answered: &[u64], interval: Duration) -> Vec<(f64, f64)> {
    let last = answered.iter().rposition(|&n| n > 0).map_or(0, |i| i + 1);
    answered[..last]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let t_s = (i as f64 + 0.5) * interval.as_secs_f64();
            (t_s, n as f64 / interval.as_secs_f64())
        })
        .collect()
}

/// Writes the PNG to `path`.
pub fn write(path: &Path, title: &str, unit: &str, tally: &Tally) -> anyhow::Result<()> {
    register_font()?;
    let interval = tally.series_interval;
    let points = points(&tally.series, interval);
    let rates = rates(&tally.answered, interval);
    let window_s = tally.series.len() as f64 * interval.as_secs_f64();
    let t_max = rates
        .last()
        .map_or(window_s, |(t_s, _)| t_s.max(window_s))
        .max(0.1);
    let root = BitMapBackend::new(path, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(HEIGHT_PX * 2 / 3);
        latency_chart(&top, title, &points, t_max)?;
        rate_chart(&bottom, unit, &rates, t_max)?;
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot draw {}", path.display()))
}

/// A latency line: its legend, its colour and what it shows of a point.
type Line = (&'static str, RGBColor, fn(&Point) -> f64);

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn latency_chart(
    area: &Area<'_>,
    title: &str,
    points: &[Point],
    t_max: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let y_max = points.iter().map(|p| p.max_ms).fold(1.0, f64::max) * 1.5;
    let y_min = points
        .iter()
        .map(|p| p.p50_ms)
        .fold(y_max, f64::min)
        .max(0.01)
        / 1.5;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT_FAMILY, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds into the measured window (by due or send time)")
        .y_desc("latency, ms (log)")
        .y_label_formatter(&|ms| format!("{ms:.prec$}", prec = usize::from(*ms < 10.0)))
        .x_label_formatter(&|s| format!("{s:.1}"))
        .label_style((FONT_FAMILY, 14))
        .draw()?;
    let lines: [Line; 3] = [
        ("p50", BLUE, |p| p.p50_ms),
        ("p99", RGBColor(230, 120, 0), |p| p.p99_ms),
        ("max", RED, |p| p.max_ms),
    ];
    for (name, color, value) in lines {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.t_s, value(p))),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font((FONT_FAMILY, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn rate_chart(
    area: &Area<'_>,
    unit: &str,
    rates: &[(f64, f64)],
    t_max: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let y_max = rates.iter().map(|(_, r)| *r).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the measured window (by answer time)")
        .y_desc(format!("{unit}/s"))
        .y_label_formatter(&|n| format!("{n:.0}"))
        .x_label_formatter(&|s| format!("{s:.1}"))
        .label_style((FONT_FAMILY, 14))
        .draw()?;
    chart.draw_series(LineSeries::new(
        rates.iter().copied(),
        BLACK.stroke_width(2),
    ))?;
    Ok(())
}
