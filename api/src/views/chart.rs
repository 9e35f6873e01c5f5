//! Telemetry charts as SVG, drawn on the server from the buckets of an [`Aggregation`]'s series,
//! for the console's device page. Pure code: the handler aggregates, this draws.
//!
//! What a reader gets: the metric's mean per bucket as a line, its min–max as a band behind it,
//! a y axis in the metric's unit (%, MiB/GiB, °C, bytes/s…) with ticks at round values, a time
//! axis in the viewer's UTC offset with the zone written, and gaps where buckets are empty: the
//! line breaks there and is never drawn across. Network counters (bytes, packets, errors since
//! boot) are drawn as rates between neighbouring buckets; a counter that went down (a reboot)
//! leaves a gap rather than a negative rate.
//!
//! The SVG obeys the strict Content-Security-Policy of every response (`default-src 'none'`):
//! presentation attributes only (`fill`, `stroke`, `font-size`, `transform`), no `<style>`
//! element, no `style` attribute, no script, no external reference. Every text that comes from a
//! device or a person (a metric's component, the device's name) is escaped. The colours pass
//! WCAG AA on white (text 4.5:1, the lines 3:1; see the tests).
//!
//! No chart crate: the drawing here is a few hundred lines of plain text, and the crates that
//! exist (plotters and its SVG backend, for one) bring fonts, styling and dependencies of their
//! own that would each have to be checked against the CSP, for axes and a polyline.
//!
//! [`Aggregation`]: super::telemetry::Aggregation

use std::fmt::Write as _;

use time::{Duration, OffsetDateTime, UtcOffset};

use super::markup::escape;
use super::telemetry::{BucketPoint, Window};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 76.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;

/// Text: 17.4:1 on white.
const INK: &str = "#1a1a1a";
/// Axes and tick labels: 7.0:1.
const AXIS: &str = "#595959";
/// Grid lines: decoration, no contrast needed.
const GRID: &str = "#e3e3e3";
/// The mean line: 6.4:1.
const SERIES: &str = "#1f5fa8";
/// The min–max band: the series colour, light; its edges are the data, not the fill.
const BAND_OPACITY: &str = "0.2";

/// Most y ticks, about; the nice step may give one or two fewer.
const Y_TICKS: f64 = 5.0;
/// Most time ticks.
const X_TICKS: i64 = 8;

/// What to draw.
#[derive(Debug, Clone)]
pub struct ChartInput<'a> {
    /// The metric, as [`super::telemetry::metric_values`] names it.
    pub metric: &'a str,
    /// Whose data (the device's name), for the title.
    pub subject: &'a str,
    /// The range and the buckets the points were aggregated in.
    pub window: Window,
    /// The metric's points, in time order, one per bucket with data.
    pub points: &'a [BucketPoint],
    /// The viewer's offset from UTC: the time axis is in it.
    pub offset: UtcOffset,
}

/// The chart as an SVG document.
pub fn render(input: &ChartInput<'_>) -> String {
    let quantity = Quantity::of(input.metric);
    let plotted = plot_values(input, quantity);
    let title = format!(
        "{} of {}, {} to {} ({})",
        describe(input.metric),
        input.subject,
        local_text(input.window.from(), input.offset),
        local_text(input.window.to(), input.offset),
        zone_name(input.offset)
    );
    let mut svg = String::with_capacity(8 * 1024);
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title chart-desc" font-family="system-ui, sans-serif" font-size="12" fill="{INK}">"#
    );
    let _ = write!(
        svg,
        r#"<title id="chart-title">{}</title><desc id="chart-desc">{}</desc>"#,
        escape(&title),
        escape(&description(input, quantity, &plotted))
    );
    let _ = write!(
        svg,
        r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/><text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"##,
        escape(&format!("{} ({})", describe(input.metric), input.subject))
    );
    let frame = Frame::new(input.window, &plotted, quantity);
    frame.draw_axes(&mut svg, input.offset, quantity);
    if plotted.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="14">No data in this range</text>"#,
            LEFT + plot_width() / 2.0,
            TOP + plot_height() / 2.0
        );
    } else {
        frame.draw_series(&mut svg, &plotted, quantity.is_rate());
        draw_legend(&mut svg, quantity.is_rate());
    }
    svg.push_str("</svg>");
    svg
}

fn plot_width() -> f64 {
    WIDTH - LEFT - RIGHT
}

fn plot_height() -> f64 {
    HEIGHT - TOP - BOTTOM
}

// --- what a metric is -------------------------------------------------------------------------

/// The kind of number a metric is, which decides its unit, its scale and whether it is a
/// counter drawn as a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quantity {
    /// 0 to 100, the axis always 0 to 100.
    Percent,
    /// Bytes, shown in B, KiB, MiB, GiB or TiB by size.
    Bytes,
    /// A byte counter, drawn as bytes per second.
    ByteRate,
    /// A counter of things, drawn per second (`packets/s`).
    CountRate(&'static str),
    /// Degrees Celsius.
    Celsius,
    /// Seconds, shown in hours.
    Hours,
    /// A number without a unit (load averages, custom metrics).
    Plain,
}

impl Quantity {
    fn of(metric: &str) -> Self {
        match metric.split_once(':').map_or(metric, |(kind, _)| kind) {
            "cpu_usage_percent" | "memory_used_percent" | "disk_used_percent" => Self::Percent,
            "memory_total_bytes"
            | "memory_available_bytes"
            | "disk_total_bytes"
            | "disk_free_bytes" => Self::Bytes,
            "net_rx_bytes" | "net_tx_bytes" => Self::ByteRate,
            "net_rx_packets" | "net_tx_packets" => Self::CountRate("packets/s"),
            "net_rx_errors" | "net_tx_errors" => Self::CountRate("errors/s"),
            "temperature_celsius" => Self::Celsius,
            "uptime_secs" => Self::Hours,
            _ => Self::Plain,
        }
    }

    fn is_rate(self) -> bool {
        matches!(self, Self::ByteRate | Self::CountRate(_))
    }

    /// Whether the axis starts at zero whatever the data (amounts), or fits the data (levels).
    fn axis_starts_at_zero(self) -> bool {
        matches!(
            self,
            Self::Percent | Self::Bytes | Self::ByteRate | Self::CountRate(_) | Self::Hours
        )
    }

    /// The unit for values up to `largest` and the divisor that brings values into it.
    fn unit(self, largest: f64) -> (String, f64) {
        match self {
            Self::Percent => ("%".into(), 1.0),
            Self::Bytes => binary_unit(largest, ""),
            Self::ByteRate => binary_unit(largest, "/s"),
            Self::CountRate(unit) => (unit.into(), 1.0),
            Self::Celsius => ("°C".into(), 1.0),
            Self::Hours => ("h".into(), 3600.0),
            Self::Plain => (String::new(), 1.0),
        }
    }
}

/// The binary unit (B to TiB) in which `largest` bytes is below 1024, and its size.
fn binary_unit(largest: f64, suffix: &str) -> (String, f64) {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut divisor = 1.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if largest.abs() / divisor < 1024.0 {
            break;
        }
        divisor *= 1024.0;
        unit = next;
    }
    (format!("{unit}{suffix}"), divisor)
}

/// The metric for people: `disk_used_percent:/data` is "Disk used: /data".
fn describe(metric: &str) -> String {
    let (kind, component) = match metric.split_once(':') {
        Some((kind, component)) => (kind, Some(component)),
        None => (metric, None),
    };
    let label = match kind {
        "cpu_usage_percent" => "CPU usage",
        "memory_used_percent" => "Memory used",
        "memory_total_bytes" => "Memory total",
        "memory_available_bytes" => "Memory available",
        "disk_used_percent" => "Disk used",
        "disk_free_bytes" => "Disk free",
        "disk_total_bytes" => "Disk size",
        "temperature_celsius" => "Temperature",
        "uptime_secs" => "Uptime",
        "load_1" => "Load average (1 min)",
        "load_5" => "Load average (5 min)",
        "load_15" => "Load average (15 min)",
        "net_rx_bytes" => "Network received",
        "net_tx_bytes" => "Network sent",
        "net_rx_packets" => "Packets received",
        "net_tx_packets" => "Packets sent",
        "net_rx_errors" => "Receive errors",
        "net_tx_errors" => "Send errors",
        "custom" => "Custom",
        other => other,
    };
    match component {
        Some(component) => format!("{label}: {component}"),
        None => label.to_owned(),
    }
}

// --- the values drawn -------------------------------------------------------------------------

/// One bucket's values as drawn: raw units (bytes, seconds), not yet scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Plotted {
    /// The bucket's index in the window: neighbours differ by one, a gap by more.
    index: i64,
    min: f64,
    mean: f64,
    max: f64,
}

fn plot_values(input: &ChartInput<'_>, quantity: Quantity) -> Vec<Plotted> {
    let bucket_nanos = input.window.bucket().whole_nanoseconds().max(1);
    let indexed = input.points.iter().map(|p| {
        let index = (p.start - input.window.from()).whole_nanoseconds() / bucket_nanos;
        (i64::try_from(index).unwrap_or(i64::MAX), p)
    });
    if !quantity.is_rate() {
        return indexed
            .map(|(index, p)| Plotted {
                index,
                min: p.min,
                mean: p.avg,
                max: p.max,
            })
            .collect();
    }
    // A counter's rate between two neighbouring buckets: the rise of its largest value (its
    // newest, as counters only grow) over one bucket width.
    let seconds = input.window.bucket().as_seconds_f64();
    let indexed: Vec<_> = indexed.collect();
    indexed
        .windows(2)
        .filter_map(|pair| {
            let ((before, earlier), (index, later)) = (pair[0], pair[1]);
            let rate = (later.max - earlier.max) / seconds;
            (index == before + 1 && rate >= 0.0).then_some(Plotted {
                index,
                min: rate,
                mean: rate,
                max: rate,
            })
        })
        .collect()
}

/// The runs of neighbouring buckets: each is drawn as one line, and a gap starts a new run.
fn runs(plotted: &[Plotted]) -> Vec<&[Plotted]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=plotted.len() {
        if i == plotted.len() || plotted[i].index != plotted[i - 1].index + 1 {
            if i > start {
                runs.push(&plotted[start..i]);
            }
            start = i;
        }
    }
    runs
}

fn description(input: &ChartInput<'_>, quantity: Quantity, plotted: &[Plotted]) -> String {
    let bucket = humantime::format_duration(input.window.bucket().unsigned_abs());
    if plotted.is_empty() {
        return format!(
            "No data in this range. {} of {} per {bucket} bucket.",
            input.metric, input.subject
        );
    }
    let what = if quantity.is_rate() {
        "the rate of the counter between neighbouring buckets"
    } else {
        "the mean per bucket, with the band from minimum to maximum"
    };
    let largest = plotted.iter().map(|p| p.max).fold(f64::MIN, f64::max);
    let smallest = plotted.iter().map(|p| p.min).fold(f64::MAX, f64::min);
    let (unit, divisor) = quantity.unit(largest.abs().max(smallest.abs()));
    format!(
        "Line chart of {} ({what}), {bucket} buckets; {} of {} buckets hold data and empty \
         buckets are gaps in the line. Lowest {} {unit}, highest {} {unit}.",
        input.metric,
        plotted.len(),
        input.window.buckets(),
        number(smallest / divisor, 2),
        number(largest / divisor, 2),
    )
}

// --- axes and drawing -------------------------------------------------------------------------

/// The mapping from time and value to the drawing, with the value axis's unit and ticks.
struct Frame {
    from: OffsetDateTime,
    to: OffsetDateTime,
    bucket: Duration,
    unit: String,
    divisor: f64,
    ticks: Vec<f64>,
    decimals: usize,
}

impl Frame {
    fn new(window: Window, plotted: &[Plotted], quantity: Quantity) -> Self {
        let (mut low, mut high) = plotted.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
            (lo.min(p.min), hi.max(p.max))
        });
        if plotted.is_empty() {
            (low, high) = (0.0, 1.0);
        }
        if quantity.axis_starts_at_zero() {
            low = low.min(0.0);
        }
        let (unit, divisor) = quantity.unit(low.abs().max(high.abs()));
        let (low, high) = (low / divisor, high / divisor);
        let (ticks, decimals) = if quantity == Quantity::Percent {
            (vec![0.0, 25.0, 50.0, 75.0, 100.0], 0)
        } else {
            value_ticks(low, high)
        };
        Self {
            from: window.from(),
            to: window.to(),
            bucket: window.bucket(),
            unit,
            divisor,
            ticks,
            decimals,
        }
    }

    fn x(&self, at: OffsetDateTime) -> f64 {
        let span = (self.to - self.from)
            .as_seconds_f64()
            .max(f64::MIN_POSITIVE);
        let share = ((at - self.from).as_seconds_f64() / span).clamp(0.0, 1.0);
        LEFT + share * plot_width()
    }

    /// The middle of bucket `index`, or the end of the window for a short last bucket.
    fn x_of_bucket(&self, index: i64) -> f64 {
        let middle = self.bucket.as_seconds_f64() * (index as f64 + 0.5);
        let at = self.from + Duration::seconds_f64(middle);
        self.x(at.min(self.to))
    }

    /// `value` in raw units.
    fn y(&self, value: f64) -> f64 {
        let (low, high) = (self.ticks[0], self.ticks[self.ticks.len() - 1]);
        let share = ((value / self.divisor - low) / (high - low)).clamp(0.0, 1.0);
        TOP + (1.0 - share) * plot_height()
    }

    fn draw_axes(&self, svg: &mut String, offset: UtcOffset, quantity: Quantity) {
        let bottom = TOP + plot_height();
        let right = LEFT + plot_width();
        for &tick in &self.ticks {
            let y = self.y(tick * self.divisor);
            let _ = write!(
                svg,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="{GRID}"/><text x="{}" y="{:.1}" text-anchor="end" fill="{AXIS}">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                number(tick, self.decimals)
            );
        }
        let axis_title = match quantity {
            Quantity::Plain if self.unit.is_empty() => "value".to_owned(),
            _ => self.unit.clone(),
        };
        let middle = TOP + plot_height() / 2.0;
        let _ = write!(
            svg,
            r#"<text x="16" y="{middle}" text-anchor="middle" transform="rotate(-90 16 {middle})">{}</text>"#,
            escape(&axis_title)
        );
        for (at, lines) in time_ticks(self.from, self.to, offset) {
            let x = self.x(at);
            let _ = write!(
                svg,
                r#"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{}" stroke="{AXIS}"/>"#,
                bottom + 5.0
            );
            for (n, line) in lines.iter().enumerate() {
                let _ = write!(
                    svg,
                    r#"<text x="{x:.1}" y="{}" text-anchor="middle" fill="{AXIS}">{line}</text>"#,
                    bottom + 18.0 + 14.0 * n as f64
                );
            }
        }
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">Time ({})</text>"#,
            right,
            HEIGHT - 6.0,
            zone_name(offset)
        );
        let _ = write!(
            svg,
            r#"<path d="M{LEFT} {TOP}V{bottom}H{right}" fill="none" stroke="{AXIS}"/>"#
        );
    }

    /// The band (unless drawing rates, which have none) and the mean line, run by run; a run of
    /// one bucket is a dot with a whisker from min to max.
    fn draw_series(&self, svg: &mut String, plotted: &[Plotted], rate: bool) {
        for run in runs(plotted) {
            if run.len() == 1 {
                let p = run[0];
                let x = self.x_of_bucket(p.index);
                if !rate {
                    let _ = write!(
                        svg,
                        r#"<line class="band" x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{SERIES}" stroke-width="2"/>"#,
                        self.y(p.min),
                        self.y(p.max)
                    );
                }
                let _ = write!(
                    svg,
                    r#"<circle class="point" cx="{x:.1}" cy="{:.1}" r="3" fill="{SERIES}"/>"#,
                    self.y(p.mean)
                );
                continue;
            }
            if !rate {
                let mut d = String::new();
                for p in run {
                    let _ = write!(d, "L{:.1} {:.1}", self.x_of_bucket(p.index), self.y(p.max));
                }
                for p in run.iter().rev() {
                    let _ = write!(d, "L{:.1} {:.1}", self.x_of_bucket(p.index), self.y(p.min));
                }
                let _ = write!(
                    svg,
                    r#"<path class="band" d="M{}Z" fill="{SERIES}" fill-opacity="{BAND_OPACITY}" stroke="none"/>"#,
                    &d[1..]
                );
            }
            let mut d = String::new();
            for p in run {
                let _ = write!(d, "L{:.1} {:.1}", self.x_of_bucket(p.index), self.y(p.mean));
            }
            let _ = write!(
                svg,
                r#"<path class="mean" d="M{}" fill="none" stroke="{SERIES}" stroke-width="2" stroke-linejoin="round"/>"#,
                &d[1..]
            );
        }
    }
}

fn draw_legend(svg: &mut String, rate: bool) {
    let x = WIDTH - RIGHT - 200.0;
    let _ = write!(
        svg,
        r#"<line x1="{x}" y1="30" x2="{}" y2="30" stroke="{SERIES}" stroke-width="2"/><text x="{}" y="34">{}</text>"#,
        x + 20.0,
        x + 26.0,
        if rate { "rate" } else { "mean" }
    );
    if !rate {
        let _ = write!(
            svg,
            r#"<rect x="{}" y="24" width="20" height="12" fill="{SERIES}" fill-opacity="{BAND_OPACITY}"/><text x="{}" y="34">min–max</text>"#,
            x + 80.0,
            x + 106.0
        );
    }
}

/// Ticks at round values (1, 2 or 5 times a power of ten) covering `[low, high]`, and the
/// decimals their labels need.
fn value_ticks(low: f64, high: f64) -> (Vec<f64>, usize) {
    let (low, high) = if high - low < f64::EPSILON * high.abs().max(1.0) {
        // A flat line: a range around it.
        (
            low - low.abs().max(1.0) / 2.0,
            high + high.abs().max(1.0) / 2.0,
        )
    } else {
        (low, high)
    };
    let step = nice_step((high - low) / (Y_TICKS - 1.0));
    let first = (low / step).floor();
    let last = (high / step).ceil();
    let ticks = (0..=((last - first) as i64))
        .map(|n| (first + n as f64) * step)
        .collect();
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    (ticks, decimals)
}

/// The round step at least `rough`.
fn nice_step(rough: f64) -> f64 {
    let power = 10f64.powf(rough.log10().floor());
    let fraction = rough / power;
    let nice = match fraction {
        f if f <= 1.0 => 1.0,
        f if f <= 2.0 => 2.0,
        f if f <= 5.0 => 5.0,
        _ => 10.0,
    };
    nice * power
}

/// `value` with `decimals` decimals, never `-0`.
fn number(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    if text
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        text.trim_start_matches('-').to_owned()
    } else {
        text
    }
}

/// Time ticks at round local times (every 1, 5, 15 or 30 minutes, 1, 3, 6 or 12 hours, or days),
/// each with its label lines: the time, and the date under the first tick and where the date
/// changes.
fn time_ticks(
    from: OffsetDateTime,
    to: OffsetDateTime,
    offset: UtcOffset,
) -> Vec<(OffsetDateTime, Vec<String>)> {
    const STEPS_MINUTES: [i64; 13] = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 10080];
    let span_minutes = (to - from).whole_minutes().max(1);
    let step = STEPS_MINUTES
        .iter()
        .copied()
        .find(|step| span_minutes / step < X_TICKS)
        .unwrap_or(10080)
        * 60;
    let local_start = from.unix_timestamp() + i64::from(offset.whole_seconds());
    let first_local = local_start.div_euclid(step) * step + step;
    let mut ticks = Vec::new();
    let mut previous_date = None;
    let mut local = first_local;
    while local - i64::from(offset.whole_seconds()) < to.unix_timestamp() {
        let Ok(at) = OffsetDateTime::from_unix_timestamp(local - i64::from(offset.whole_seconds()))
        else {
            break;
        };
        let shown = at.to_offset(offset);
        let date = format!("{} {:02}", month_name(shown.month()), shown.day());
        let mut lines = Vec::with_capacity(2);
        if step < 86_400 {
            lines.push(format!("{:02}:{:02}", shown.hour(), shown.minute()));
            if previous_date.as_ref() != Some(&date) {
                lines.push(date.clone());
            }
        } else {
            lines.push(date.clone());
        }
        previous_date = Some(date);
        ticks.push((at, lines));
        local += step;
    }
    ticks
}

fn month_name(month: time::Month) -> &'static str {
    use time::Month::*;
    match month {
        January => "Jan",
        February => "Feb",
        March => "Mar",
        April => "Apr",
        May => "May",
        June => "Jun",
        July => "Jul",
        August => "Aug",
        September => "Sep",
        October => "Oct",
        November => "Nov",
        December => "Dec",
    }
}

/// `UTC+01:00`, `UTC-03:30` as written under the axis (`UTC` for an offset of zero).
fn zone_name(offset: UtcOffset) -> String {
    if offset.is_utc() {
        return "UTC".to_owned();
    }
    let sign = if offset.is_negative() { '-' } else { '+' };
    format!(
        "UTC{sign}{:02}:{:02}",
        offset.whole_hours().unsigned_abs(),
        offset.minutes_past_hour().unsigned_abs()
    )
}

/// `2026-12-01 09:30` in the viewer's offset.
fn local_text(at: OffsetDateTime, offset: UtcOffset) -> String {
    let at = at.to_offset(offset);
    format!(
        "{}-{:02}-{:02} {:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(hours: i64, bucket_minutes: i64) -> Window {
        // 2026-12-01T00:00:00Z.
        let from = OffsetDateTime::from_unix_timestamp(1_796_083_200).unwrap();
        Window::new(
            from,
            from + Duration::hours(hours),
            Duration::minutes(bucket_minutes),
        )
        .unwrap()
    }

    fn point(window: &Window, index: i64, value: f64) -> BucketPoint {
        BucketPoint {
            start: window.from() + window.bucket() * index as i32,
            count: 1,
            min: value - 1.0,
            avg: value,
            max: value + 1.0,
        }
    }

    fn chart(metric: &str, window: Window, points: &[BucketPoint], offset: UtcOffset) -> String {
        render(&ChartInput {
            metric,
            subject: "lab-1",
            window,
            points,
            offset,
        })
    }

    #[test]
    fn an_empty_bucket_breaks_the_line_in_two() {
        let w = window(1, 10);
        let points: Vec<_> = [0, 1, 2, 4, 5]
            .into_iter()
            .map(|i| point(&w, i, 40.0 + i as f64))
            .collect();
        let svg = chart("cpu_usage_percent", w, &points, UtcOffset::UTC);
        assert_eq!(svg.matches(r#"class="mean""#).count(), 2, "{svg}");
        assert_eq!(svg.matches(r#"<path class="band""#).count(), 2, "{svg}");
        // Three points, then two: no segment spans the gap.
        let means: Vec<&str> = svg
            .split(r#"class="mean" d=""#)
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
            .collect();
        assert_eq!(means[0].matches('L').count(), 2, "{}", means[0]);
        assert_eq!(means[1].matches('L').count(), 1, "{}", means[1]);
    }

    #[test]
    fn a_lone_bucket_is_a_dot_not_nothing() {
        let w = window(1, 10);
        let points = [point(&w, 0, 10.0), point(&w, 3, 20.0)];
        let svg = chart("cpu_usage_percent", w, &points, UtcOffset::UTC);
        assert_eq!(svg.matches(r#"class="point""#).count(), 2, "{svg}");
        assert!(!svg.contains(r#"class="mean""#), "{svg}");
    }

    #[test]
    fn the_axis_carries_the_unit_scaled_to_the_data() {
        let w = window(1, 10);
        let gib = 1024.0 * 1024.0 * 1024.0;
        let points = [point(&w, 0, 3.0 * gib), point(&w, 1, 3.5 * gib)];
        let svg = chart("memory_available_bytes", w, &points, UtcOffset::UTC);
        assert!(svg.contains(">GiB</text>"), "{svg}");
        assert!(svg.contains(">Memory available (lab-1)</text>"), "{svg}");
        let svg = chart("cpu_usage_percent", w, &points[..1], UtcOffset::UTC);
        assert!(
            svg.contains(">%</text>") && svg.contains(">100</text>"),
            "{svg}"
        );
        let svg = chart(
            "temperature_celsius:cpu",
            w,
            &[point(&w, 0, 48.0)],
            UtcOffset::UTC,
        );
        assert!(svg.contains(">°C</text>"), "{svg}");
        assert!(svg.contains("Temperature: cpu"), "{svg}");
    }

    #[test]
    fn counters_are_rates_and_a_reset_is_a_gap() {
        let w = window(1, 10);
        let counter = |index: i64, bytes: f64| BucketPoint {
            start: w.from() + w.bucket() * index as i32,
            count: 1,
            min: bytes,
            avg: bytes,
            max: bytes,
        };
        // 600 s buckets: +614,400 bytes is 1 KiB/s; then a reboot resets the counter.
        let points = [
            counter(0, 1_000_000.0),
            counter(1, 1_614_400.0),
            counter(2, 2_228_800.0),
            counter(3, 5.0),
            counter(4, 614_405.0),
        ];
        let plotted = plot_values(
            &ChartInput {
                metric: "net_rx_bytes:eth0",
                subject: "d",
                window: w,
                points: &points,
                offset: UtcOffset::UTC,
            },
            Quantity::ByteRate,
        );
        let rates: Vec<(i64, f64)> = plotted.iter().map(|p| (p.index, p.mean)).collect();
        assert_eq!(rates, [(1, 1024.0), (2, 1024.0), (4, 1024.0)]);
        let svg = chart("net_rx_bytes:eth0", w, &points, UtcOffset::UTC);
        assert!(svg.contains(">KiB/s</text>"), "{svg}");
        assert!(
            !svg.contains(r#"class="band""#),
            "a rate has no band: {svg}"
        );
    }

    #[test]
    fn the_viewers_offset_shifts_the_time_labels_and_is_written() {
        let w = window(6, 10);
        let points = [point(&w, 0, 1.0)];
        let utc = chart("load_1", w, &points, UtcOffset::UTC);
        assert!(
            utc.contains(">01:00</text>") && utc.contains("Time (UTC)"),
            "{utc}"
        );
        let cet = UtcOffset::from_whole_seconds(3600).unwrap();
        let shifted = chart("load_1", w, &points, cet);
        assert!(shifted.contains("Time (UTC+01:00)"), "{shifted}");
        // Midnight UTC is 01:00 in CET: the same instants, labelled an hour later.
        assert!(shifted.contains(">02:00</text>"), "{shifted}");
        assert!(!shifted.contains(">00:00</text>"), "{shifted}");
        let newfoundland = UtcOffset::from_whole_seconds(-(3 * 3600 + 1800)).unwrap();
        assert!(chart("load_1", w, &points, newfoundland).contains("Time (UTC-03:30)"));
    }

    #[test]
    fn device_text_is_escaped() {
        let w = window(1, 10);
        let metric = "temperature_celsius:<script>alert(1)</script>&\"'\u{1}";
        let svg = render(&ChartInput {
            metric,
            subject: "</title><a href=\"x\">",
            window: w,
            points: &[point(&w, 0, 1.0)],
            offset: UtcOffset::UTC,
        });
        assert!(!svg.contains("<script"), "{svg}");
        assert!(!svg.contains("<a "), "{svg}");
        assert!(svg.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#39;\u{FFFD}"));
        assert_eq!(svg.matches("<title").count(), 1);
    }

    #[test]
    fn no_data_says_so_and_obeys_the_csp() {
        let svg = chart("cpu_usage_percent", window(24, 15), &[], UtcOffset::UTC);
        assert!(svg.contains("No data in this range"), "{svg}");
        assert!(
            svg.contains(r#"role="img""#) && svg.contains("<desc"),
            "{svg}"
        );
        for forbidden in ["<style", "style=", "<script", "href", "url("] {
            assert!(!svg.contains(forbidden), "{forbidden} in {svg}");
        }
    }

    #[test]
    fn value_ticks_are_round() {
        assert_eq!(value_ticks(0.0, 7.3), (vec![0.0, 2.0, 4.0, 6.0, 8.0], 0));
        assert_eq!(
            value_ticks(41.2, 48.9).0,
            vec![40.0, 42.0, 44.0, 46.0, 48.0, 50.0]
        );
        let (ticks, decimals) = value_ticks(0.0, 0.34);
        let labels: Vec<String> = ticks.iter().map(|&t| number(t, decimals)).collect();
        assert_eq!(labels, ["0.0", "0.1", "0.2", "0.3", "0.4"]);
        let (flat, _) = value_ticks(5.0, 5.0);
        assert!(flat[0] < 5.0 && *flat.last().unwrap() > 5.0, "{flat:?}");
        assert_eq!(number(-0.0001, 1), "0.0");
    }

    /// WCAG 2 contrast ratio of `#rrggbb` on white.
    fn contrast_on_white(colour: &str) -> f64 {
        let channel = |i: usize| {
            let c = f64::from(u8::from_str_radix(&colour[i..i + 2], 16).unwrap()) / 255.0;
            if c <= 0.039_28 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        let luminance = 0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5);
        1.05 / (luminance + 0.05)
    }

    #[test]
    fn colours_pass_wcag_aa_on_white() {
        assert!(contrast_on_white(INK) >= 4.5);
        assert!(contrast_on_white(AXIS) >= 4.5);
        // The line is a graphical object (3:1), and also passes as text.
        assert!(contrast_on_white(SERIES) >= 4.5);
    }
}
