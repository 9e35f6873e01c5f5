//! A scenario's result: a table of figures (ours, the peer's, the ratio), the resources fleetd and
//! PostgreSQL used, a time series; printed as a table, written as JSON and as an SVG chart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::procfs::Machine;

/// One row of a scenario's table.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub what: String,
    pub unit: &'static str,
    /// fleetplane's figure; `None` when it could not be measured here (`note` says why).
    pub ours: Option<f64>,
    /// What the peer is (Mosquitto 2.0, the PostgreSQL ceiling, wrk, a goal).
    pub peer: Option<String>,
    pub peer_value: Option<f64>,
    /// ours / peer_value.
    pub ratio: Option<f64>,
    pub note: Option<String>,
}

impl Figure {
    pub fn ours(what: impl Into<String>, unit: &'static str, value: f64) -> Self {
        Self {
            what: what.into(),
            unit,
            ours: Some(value),
            peer: None,
            peer_value: None,
            ratio: None,
            note: None,
        }
    }

    /// A figure that this machine cannot produce, and why.
    pub fn unmeasured(what: impl Into<String>, unit: &'static str, why: impl Into<String>) -> Self {
        Self {
            ours: None,
            note: Some(why.into()),
            ..Self::ours(what, unit, 0.0)
        }
    }

    pub fn against(mut self, peer: impl Into<String>, value: f64) -> Self {
        self.peer = Some(peer.into());
        self.peer_value = Some(value);
        self.ratio = self.ours.filter(|_| value > 0.0).map(|ours| ours / value);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// CPU and memory over a scenario's measured phase.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Resources {
    pub wall_seconds: f64,
    pub fleetd_cpu_seconds: f64,
    pub fleetd_peak_rss_mib: f64,
    /// Every PostgreSQL process of the machine (other databases' included).
    pub postgres_cpu_seconds: f64,
    /// fleet-bench itself: the simulated devices (TLS, MQTT, encoding) and its measuring.
    pub load_cpu_seconds: f64,
}

impl Resources {
    /// Cores busy on average: fleetd, PostgreSQL, the load.
    pub fn cores(&self) -> (f64, f64, f64) {
        let wall = self.wall_seconds.max(1e-9);
        (
            self.fleetd_cpu_seconds / wall,
            self.postgres_cpu_seconds / wall,
            self.load_cpu_seconds / wall,
        )
    }
}

/// One second of a run: committed records per second and publish-to-commit latency.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub t_seconds: f64,
    pub rate: f64,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub command: String,
    pub started_at: String,
    pub machine: Machine,
    pub figures: Vec<Figure>,
    pub resources: Option<Resources>,
    /// What the series' `rate` counts.
    pub rate_unit: &'static str,
    /// What the series' `p99_ms` is the p99 of.
    pub latency_label: &'static str,
    pub series: Vec<Sample>,
    pub notes: Vec<String>,
    /// Why the run did not do what it set out to (devices that failed to connect, records not
    /// committed): its figures are then not a result, and fleet-bench exits non-zero.
    pub incomplete: Vec<String>,
}

impl Report {
    pub fn new(scenario: &'static str, machine: Machine) -> Self {
        let now = time::OffsetDateTime::now_utc();
        let now = now.replace_nanosecond(0).unwrap_or(now);
        Self {
            scenario,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            started_at: now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            machine,
            figures: Vec::new(),
            resources: None,
            rate_unit: "records/s",
            latency_label: "p99 publish-to-commit (ack), ms",
            series: Vec::new(),
            notes: Vec::new(),
            incomplete: Vec::new(),
        }
    }

    /// Records that the run fell short (`what`) unless `ok`.
    pub fn require(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.incomplete.push(what());
        }
    }

    pub fn push(&mut self, figure: Figure) {
        self.figures.push(figure);
    }

    /// The p50, p99 and max of `sorted` latencies, as figures named `what p50` and so on.
    pub fn push_latencies(&mut self, what: &str, sorted: &[Duration]) {
        for (name, q) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            self.push(Figure::ours(
                format!("{what} {name}"),
                "ms",
                quantile_ms(sorted, q),
            ));
        }
    }

    /// The table as printed at the end of a run (and pasted into BENCHMARKS.md).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| what | ours | peer | peer's | ratio | note |");
        let _ = writeln!(out, "|---|---:|---|---:|---:|---|");
        for f in &self.figures {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                f.what,
                f.ours.map_or("not measured".into(), |v| number(v, f.unit)),
                f.peer.as_deref().unwrap_or(""),
                f.peer_value.map_or(String::new(), |v| number(v, f.unit)),
                f.ratio.map_or(String::new(), |r| format!("{r:.2}")),
                f.note.as_deref().unwrap_or(""),
            );
        }
        if let Some(r) = &self.resources {
            let _ = writeln!(
                out,
                "\nmeasured phase: {:.1} s wall; fleetd {:.2} CPU s, peak RSS {:.1} MiB; PostgreSQL {:.2} CPU s; the load (fleet-bench) {:.2} CPU s",
                r.wall_seconds, r.fleetd_cpu_seconds, r.fleetd_peak_rss_mib, r.postgres_cpu_seconds, r.load_cpu_seconds
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        for reason in &self.incomplete {
            let _ = writeln!(out, "- INCOMPLETE: {reason}");
        }
        out
    }

    /// Writes `<dir>/<scenario>.json` and, with a series, `<dir>/<scenario>.svg`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join(format!("{}.json", self.scenario));
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")?;
        let mut written = vec![json];
        if self.series.len() >= 2 {
            let svg = dir.join(format!("{}.svg", self.scenario));
            std::fs::write(&svg, chart(self))?;
            written.push(svg);
        }
        Ok(written)
    }
}

/// `v` with thousands separators, or with two decimals when small; counts (whole numbers)
/// without decimals.
pub fn number(v: f64, unit: &str) -> String {
    let body = if v.abs() >= 100.0 || v.fract() == 0.0 {
        let whole = v.round() as i64;
        let digits = whole.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if whole < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    format!("{body} {unit}")
}

/// The `q` quantile of sorted durations (nearest rank), in ms.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

/// A chart of the series: rate above, p99 latency below, against seconds; plain SVG.
pub fn chart(report: &Report) -> String {
    const W: f64 = 760.0;
    const PANEL: f64 = 200.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 70.0;
    const GAP: f64 = 60.0;
    let series = &report.series;
    let t_max = series.iter().map(|s| s.t_seconds).fold(1.0, f64::max);
    let x = |t: f64| LEFT + (W - LEFT - RIGHT) * t / t_max;
    let mut svg = String::new();
    let height = TOP + 2.0 * PANEL + GAP + 50.0;
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">fleet-bench {}</text><text x="{LEFT}" y="40" fill="#555555">{}, {} cores, {}</text>"##,
        report.scenario,
        escape(&report.started_at),
        report.machine.cores,
        escape(&report.machine.postgres)
    );
    // (title, points, colour) of each panel.
    type Panel<'a> = (&'a str, Vec<(f64, f64)>, &'a str);
    let panels: [Panel; 2] = [
        (
            report.rate_unit,
            series.iter().map(|s| (s.t_seconds, s.rate)).collect(),
            "#1f77b4",
        ),
        (
            report.latency_label,
            series
                .iter()
                .filter_map(|s| s.p99_ms.map(|p| (s.t_seconds, p)))
                .collect(),
            "#d62728",
        ),
    ];
    for (i, (label, points, colour)) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL + GAP);
        let bottom = top + PANEL;
        let y_max = nice_ceiling(points.iter().map(|p| p.1).fold(0.0, f64::max));
        let y = |v: f64| bottom - PANEL * v / y_max;
        let _ = writeln!(
            svg,
            r##"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"##,
            top - 8.0,
            escape(label)
        );
        for tick in 0..=4 {
            let v = y_max * f64::from(tick) / 4.0;
            let (x_end, y_line, x_label, y_label) = (W - RIGHT, y(v), LEFT - 6.0, y(v) + 4.0);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" x2="{x_end}" y1="{y_line}" y2="{y_line}" stroke="#dddddd"/><text x="{x_label}" y="{y_label}" text-anchor="end">{}</text>"##,
                escape(number(v, "").trim())
            );
        }
        let step = nice_ceiling(t_max / 8.0).max(1.0);
        let mut t = 0.0;
        while t <= t_max + 1e-9 {
            let _ = writeln!(
                svg,
                r##"<text x="{}" y="{}" text-anchor="middle">{t:.0}</text>"##,
                x(t),
                bottom + 16.0
            );
            t += step;
        }
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{LEFT}" y1="{top}" y2="{bottom}" stroke="#000000"/><line x1="{LEFT}" x2="{}" y1="{bottom}" y2="{bottom}" stroke="#000000"/>"##,
            W - RIGHT
        );
        let path: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"##,
            path.join(" ")
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle">seconds since the start of the measured phase</text>"##,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        height - 12.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// The smallest 1, 2 or 5 × 10^k at or above `v` (1 for nothing).
fn nice_ceiling(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * magnitude)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The progress line of a running phase (to stderr; hidden when stderr is not a terminal).
pub fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine::describe("PostgreSQL 15".into(), 1024)
    }

    #[test]
    fn numbers_read_as_the_tables_print_them() {
        assert_eq!(number(212_747.4, "msg/s"), "212,747 msg/s");
        assert_eq!(number(-1_234.0, "x"), "-1,234 x");
        assert_eq!(number(12.34, "KiB"), "12.3 KiB");
        assert_eq!(number(0.456, ""), "0.46 ");
        assert_eq!(number(20.0, "devices"), "20 devices");
        assert_eq!(number(0.0, "devices"), "0 devices");
    }

    #[test]
    fn ratios_need_a_peer_and_a_figure() {
        let f = Figure::ours("rate", "/s", 300.0).against("Mosquitto", 100.0);
        assert_eq!(f.ratio, Some(3.0));
        let f = Figure::unmeasured("idle 50k", "KiB", "ulimit").against("goal", 16.0);
        assert_eq!(f.ratio, None);
        assert!(f.ours.is_none());
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&sorted, 0.5), 50.0);
        assert_eq!(quantile_ms(&sorted, 0.99), 99.0);
        assert_eq!(quantile_ms(&sorted, 1.0), 100.0);
        assert!(quantile_ms(&[], 0.5).is_nan());
    }

    #[test]
    fn a_chart_has_both_panels_and_escapes_its_text() {
        let mut report = Report::new("ingest", machine());
        report.machine.postgres = "PG <15> & co".into();
        report.series = (0..10)
            .map(|i| Sample {
                t_seconds: f64::from(i),
                rate: 1000.0 * f64::from(i),
                p99_ms: (i > 0).then_some(10.0 + f64::from(i)),
            })
            .collect();
        let svg = chart(&report);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("PG &lt;15&gt; &amp; co"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(nice_ceiling(9_001.0), 10_000.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(150.0), 200.0);
    }
}
