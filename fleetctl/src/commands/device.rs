//! `fleetctl device`: devices over HTTPS: listing with filters, details with certificates,
//! changes, revocation, health, telemetry records and aggregates, patch status.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::{json, Value};
use store::DeviceId;
use time::OffsetDateTime;

use super::{get_one, more_notice, patch, show, Ctx, ListArgs};
use crate::error::Failure;
use crate::http;
use crate::output::{self, Fields, Table};
use crate::parse;

/// `fleetctl device ...`.
#[derive(Subcommand)]
pub enum DeviceCommand {
    /// List devices, optionally filtered.
    List(ListFilters),
    /// Show a device and its certificates.
    Show {
        /// The device's id.
        id: DeviceId,
    },
    /// Rename a device.
    Rename {
        /// The device's id.
        id: DeviceId,
        /// The new display name.
        name: String,
    },
    /// Replace a device's labels with the ones given (all of them: labels not named are removed).
    #[command(arg_required_else_help = true)]
    Label {
        /// The device's id.
        id: DeviceId,
        /// A label, key=value (repeatable).
        #[arg(value_name = "KEY=VALUE", value_parser = parse::label, required_unless_present = "clear")]
        labels: Vec<(String, String)>,
        /// Remove every label.
        #[arg(long, conflicts_with = "labels")]
        clear: bool,
    },
    /// Move a device to another group.
    Move {
        /// The device's id.
        id: DeviceId,
        /// The group's name.
        group: String,
    },
    /// Revoke a device, for good: its next connection is refused with CONNACK 5 "not
    /// authorized" and its live session is closed within seconds; its certificate can no
    /// longer be renewed. To bring the device back, enroll it again.
    Revoke {
        /// The device's id.
        id: DeviceId,
    },
    /// Show a device's connection and ingest health: presence, acknowledged watermark,
    /// rejected messages and the last error.
    Health {
        /// The device's id.
        id: DeviceId,
    },
    /// List a device's telemetry records in a time range.
    Telemetry(TelemetryArgs),
    /// Aggregate a device's metrics into time buckets (count, min, avg, max).
    Metrics(MetricsArgs),
    /// Show a device's patch status: OS, reboot, upgradable packages.
    Patch {
        /// The device's id.
        id: DeviceId,
    },
}

/// `fleetctl device list` filters.
#[derive(Args)]
pub struct ListFilters {
    /// Only devices of this group (by name).
    #[arg(long)]
    group: Option<String>,
    /// Only devices with this label, key=value.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse::label)]
    label: Option<(String, String)>,
    /// Only devices with this status.
    #[arg(long, value_parser = ["active", "revoked"])]
    status: Option<String>,
    /// Only devices connected now (true) or not (false).
    #[arg(long, value_name = "true|false")]
    online: Option<bool>,
    /// Only devices with (true) or without (false) pending security updates.
    #[arg(long, value_name = "true|false")]
    pending_security_updates: Option<bool>,
    /// Only devices last seen before this time (RFC 3339, or a duration ago such as 7d).
    #[arg(long, value_name = "TIME", value_parser = parse::moment)]
    last_seen_before: Option<OffsetDateTime>,
    /// Only devices last seen after this time (RFC 3339, or a duration ago such as 1h).
    #[arg(long, value_name = "TIME", value_parser = parse::moment)]
    last_seen_after: Option<OffsetDateTime>,
    /// Only devices whose name starts with this.
    #[arg(long)]
    name_prefix: Option<String>,
    #[command(flatten)]
    list: ListArgs,
}

impl ListFilters {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        let mut push = |name, value: Option<String>| {
            if let Some(value) = value {
                query.push((name, value));
            }
        };
        push("group", self.group.clone());
        push(
            "label",
            self.label.as_ref().map(|(k, v)| format!("{k}={v}")),
        );
        push("status", self.status.clone());
        push("online", self.online.map(|b| b.to_string()));
        push(
            "pending_security_updates",
            self.pending_security_updates.map(|b| b.to_string()),
        );
        push(
            "last_seen_before",
            self.last_seen_before.map(parse::api_time),
        );
        push("last_seen_after", self.last_seen_after.map(parse::api_time));
        push("name_prefix", self.name_prefix.clone());
        query
    }
}

/// `fleetctl device telemetry`.
#[derive(Args)]
pub struct TelemetryArgs {
    /// The device's id.
    id: DeviceId,
    /// Start of the range (RFC 3339, or a duration ago such as 24h; default: 24 h ago).
    #[arg(long, value_name = "TIME", value_parser = parse::moment)]
    from: Option<OffsetDateTime>,
    /// End of the range (RFC 3339, or a duration ago; default: now).
    #[arg(long, value_name = "TIME", value_parser = parse::moment)]
    to: Option<OffsetDateTime>,
    #[command(flatten)]
    list: ListArgs,
}

/// `fleetctl device metrics`.
#[derive(Args)]
pub struct MetricsArgs {
    /// The device's id.
    id: DeviceId,
    /// Start of the range (RFC 3339, or a duration ago such as 24h; default: the server's).
    #[arg(long, value_name = "TIME", value_parser = parse::moment)]
    from: Option<OffsetDateTime>,
    /// End of the range (RFC 3339, or a duration ago; default: the server's).
    #[arg(long, value_name = "TIME", value_parser = parse::moment)]
    to: Option<OffsetDateTime>,
    /// Width of a bucket, e.g. 5m or 1h.
    #[arg(long, value_parser = parse::duration)]
    bucket: Duration,
    /// A metric to aggregate, e.g. cpu_usage_percent or disk_used_percent:/ (repeatable;
    /// default: all).
    #[arg(long = "metric", value_name = "NAME")]
    metrics: Vec<String>,
}

/// A device as the API shows it.
#[derive(Deserialize)]
struct DeviceView {
    id: String,
    name: String,
    group: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    status: String,
    online: bool,
    #[serde(with = "time::serde::rfc3339::option", default)]
    created_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    last_seen_at: Option<OffsetDateTime>,
    /// Only in `GET /v1/devices/{id}`.
    certificates: Option<Vec<CertificateView>>,
}

#[derive(Deserialize)]
struct CertificateView {
    serial: String,
    #[serde(with = "time::serde::rfc3339::option", default)]
    not_before: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    not_after: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    issued_at: Option<OffsetDateTime>,
    enrollment_token_id: Option<String>,
}

#[derive(Deserialize)]
struct HealthView {
    device_id: String,
    online: bool,
    #[serde(with = "time::serde::rfc3339::option", default)]
    last_seen_at: Option<OffsetDateTime>,
    watermark: Option<i64>,
    records_committed: Option<i64>,
    #[serde(default)]
    rejects: BTreeMap<String, u64>,
    last_error: Option<String>,
    last_error_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    last_error_at: Option<OffsetDateTime>,
}

#[derive(Deserialize)]
struct RecordView {
    seq: i64,
    #[serde(with = "time::serde::rfc3339::option", default)]
    recorded_at: Option<OffsetDateTime>,
    sample: Option<SampleView>,
}

#[derive(Deserialize)]
struct SampleView {
    cpu_usage_percent: Option<f64>,
    memory: Option<MemoryView>,
    uptime_secs: Option<u64>,
    load: Option<LoadView>,
    #[serde(default)]
    disks: Vec<DiskView>,
    #[serde(default)]
    temperatures: Vec<TemperatureView>,
}

#[derive(Deserialize)]
struct MemoryView {
    total_bytes: u64,
    available_bytes: u64,
}

#[derive(Deserialize)]
struct LoadView {
    // The contract says one/five/fifteen, the API's views module one_minute/...: take either.
    #[serde(alias = "one_minute")]
    one: f64,
    #[serde(alias = "five_minutes")]
    five: f64,
    #[serde(alias = "fifteen_minutes")]
    fifteen: f64,
}

#[derive(Deserialize)]
struct DiskView {
    mount: String,
    total_bytes: u64,
    free_bytes: u64,
}

#[derive(Deserialize)]
struct TemperatureView {
    zone: String,
    celsius: f64,
}

#[derive(Deserialize)]
struct AggregationView {
    #[serde(default)]
    series: Vec<SeriesView>,
    #[serde(default)]
    dropped_metrics: u64,
}

#[derive(Deserialize)]
struct SeriesView {
    metric: String,
    #[serde(default)]
    points: Vec<PointView>,
}

#[derive(Deserialize)]
struct PointView {
    #[serde(with = "time::serde::rfc3339")]
    start: OffsetDateTime,
    count: u64,
    min: f64,
    avg: f64,
    max: f64,
}

/// Runs `fleetctl device ...`.
pub async fn run(ctx: &Ctx, command: DeviceCommand) -> Result<(), Failure> {
    match command {
        DeviceCommand::List(filters) => {
            let api = ctx.api("device list").await?;
            let page = api
                .list("v1/devices", &filters.query(), &filters.list.paging())
                .await?;
            show(ctx, &page, || {
                let mut table = Table::new(&[
                    "ID",
                    "NAME",
                    "GROUP",
                    "STATUS",
                    "ONLINE",
                    "LAST SEEN",
                    "LABELS",
                ]);
                for item in &page.items {
                    let d: DeviceView = http::decode(item.clone())?;
                    table.row(vec![
                        d.id,
                        d.name,
                        d.group,
                        d.status,
                        output::yes_no(d.online),
                        output::opt_time(d.last_seen_at),
                        output::labels(&d.labels),
                    ]);
                }
                more_notice(page.next_cursor.as_deref());
                Ok(table.render())
            })
        }
        DeviceCommand::Show { id } => render(
            ctx,
            get_one(ctx, "device show", &format!("v1/devices/{id}")).await?,
        ),
        DeviceCommand::Rename { id, name } => {
            change(ctx, "device rename", id, json!({ "name": name })).await
        }
        DeviceCommand::Label { id, labels, clear } => {
            let labels: BTreeMap<String, String> = if clear {
                BTreeMap::new()
            } else {
                labels.into_iter().collect()
            };
            change(ctx, "device label", id, json!({ "labels": labels })).await
        }
        DeviceCommand::Move { id, group } => {
            change(ctx, "device move", id, json!({ "group": group })).await
        }
        DeviceCommand::Revoke { id } => {
            let api = ctx.api("device revoke").await?;
            let value = api
                .post(&format!("v1/devices/{id}/revoke"), &json!({}))
                .await?;
            show(ctx, &value, || {
                Ok(format!(
                    "device {id} revoked: its next connection is refused and its live session is closed\n"
                ))
            })
        }
        DeviceCommand::Health { id } => {
            let api = ctx.api("device health").await?;
            let value = api.get(&format!("v1/devices/{id}/health"), &[]).await?;
            show(ctx, &value.clone(), || {
                let h: HealthView = http::decode(value)?;
                let rejects: Vec<String> = h
                    .rejects
                    .iter()
                    .map(|(reason, n)| format!("{reason}={n}"))
                    .collect();
                let mut fields = Fields::new();
                fields
                    .field("device", h.device_id)
                    .field("online", output::yes_no(h.online))
                    .field("last seen", output::opt_time(h.last_seen_at))
                    .field("watermark", output::opt(h.watermark))
                    .field("records committed", output::opt(h.records_committed))
                    .field("rejected", output::list(&rejects))
                    .field("last error", output::opt(h.last_error))
                    .field("last error reason", output::opt(h.last_error_reason))
                    .field("last error at", output::opt_time(h.last_error_at));
                Ok(fields.render())
            })
        }
        DeviceCommand::Telemetry(args) => telemetry(ctx, args).await,
        DeviceCommand::Metrics(args) => metrics(ctx, args).await,
        DeviceCommand::Patch { id } => patch::device(ctx, id).await,
    }
}

async fn change(ctx: &Ctx, command: &str, id: DeviceId, body: Value) -> Result<(), Failure> {
    let api = ctx.api(command).await?;
    let value = api.patch(&format!("v1/devices/{id}"), &body).await?;
    render(ctx, value)
}

fn render(ctx: &Ctx, value: Value) -> Result<(), Failure> {
    show(ctx, &value.clone(), || {
        let d: DeviceView = http::decode(value)?;
        let mut fields = Fields::new();
        fields
            .field("id", d.id)
            .field("name", d.name)
            .field("group", d.group)
            .field("status", d.status)
            .field("online", output::yes_no(d.online))
            .field("labels", output::labels(&d.labels))
            .field("created", output::opt_time(d.created_at))
            .field("last seen", output::opt_time(d.last_seen_at));
        let mut text = fields.render();
        if let Some(certificates) = d.certificates {
            let mut table = Table::new(&["SERIAL", "NOT BEFORE", "NOT AFTER", "ISSUED", "TOKEN"]);
            for c in certificates {
                table.row(vec![
                    c.serial,
                    output::opt_time(c.not_before),
                    output::opt_time(c.not_after),
                    output::opt_time(c.issued_at),
                    output::opt(c.enrollment_token_id),
                ]);
            }
            text.push_str("\ncertificates:\n");
            text.push_str(&table.render());
        }
        Ok(text)
    })
}

async fn telemetry(ctx: &Ctx, args: TelemetryArgs) -> Result<(), Failure> {
    let api = ctx.api("device telemetry").await?;
    let mut query = Vec::new();
    if let Some(from) = args.from {
        query.push(("from", parse::api_time(from)));
    }
    if let Some(to) = args.to {
        query.push(("to", parse::api_time(to)));
    }
    let page = api
        .list(
            &format!("v1/devices/{}/telemetry", args.id),
            &query,
            &args.list.paging(),
        )
        .await?;
    show(ctx, &page, || {
        let mut table = Table::new(&[
            "SEQ",
            "RECORDED",
            "CPU",
            "MEMORY USED",
            "LOAD",
            "DISK USED",
            "TEMPERATURE",
            "UPTIME",
        ]);
        for item in &page.items {
            let r: RecordView = http::decode(item.clone())?;
            let s = r.sample.as_ref();
            table.row(vec![
                r.seq.to_string(),
                output::opt_time(r.recorded_at),
                output::opt(s.and_then(|s| s.cpu_usage_percent).map(percent)),
                output::opt(
                    s.and_then(|s| s.memory.as_ref())
                        .map(|m| used_percent(m.total_bytes, m.available_bytes)),
                ),
                output::opt(
                    s.and_then(|s| s.load.as_ref())
                        .map(|l| format!("{:.2} {:.2} {:.2}", l.one, l.five, l.fifteen)),
                ),
                s.map_or_else(
                    || "-".to_owned(),
                    |s| {
                        let disks: Vec<String> = s
                            .disks
                            .iter()
                            .map(|d| {
                                format!("{} {}", d.mount, used_percent(d.total_bytes, d.free_bytes))
                            })
                            .collect();
                        output::list(&disks)
                    },
                ),
                s.map_or_else(
                    || "-".to_owned(),
                    |s| {
                        let zones: Vec<String> = s
                            .temperatures
                            .iter()
                            .map(|t| format!("{} {:.1}°C", t.zone, t.celsius))
                            .collect();
                        output::list(&zones)
                    },
                ),
                output::opt(s.and_then(|s| s.uptime_secs).map(uptime)),
            ]);
        }
        more_notice(page.next_cursor.as_deref());
        Ok(table.render())
    })
}

async fn metrics(ctx: &Ctx, args: MetricsArgs) -> Result<(), Failure> {
    let api = ctx.api("device metrics").await?;
    let mut query = vec![(
        "bucket",
        humantime::format_duration(args.bucket).to_string(),
    )];
    if let Some(from) = args.from {
        query.push(("from", parse::api_time(from)));
    }
    if let Some(to) = args.to {
        query.push(("to", parse::api_time(to)));
    }
    for metric in &args.metrics {
        query.push(("metric", metric.clone()));
    }
    let value = api
        .get(
            &format!("v1/devices/{}/telemetry/aggregate", args.id),
            &query,
        )
        .await?;
    show(ctx, &value.clone(), || {
        let a: AggregationView = http::decode(value)?;
        let mut table = Table::new(&["METRIC", "START", "COUNT", "MIN", "AVG", "MAX"]);
        for series in &a.series {
            for p in &series.points {
                table.row(vec![
                    series.metric.clone(),
                    output::time(p.start),
                    p.count.to_string(),
                    number(p.min),
                    number(p.avg),
                    number(p.max),
                ]);
            }
        }
        if a.dropped_metrics > 0 {
            output::notice(&format!(
                "({} more metrics were left out: name the ones you want with --metric)",
                a.dropped_metrics
            ));
        }
        Ok(table.render())
    })
}

fn percent(value: f64) -> String {
    format!("{value:.1}%")
}

fn used_percent(total: u64, free: u64) -> String {
    if total == 0 {
        return "-".to_owned();
    }
    let used = (total.saturating_sub(free)) as f64 / total as f64 * 100.0;
    percent(used)
}

/// A number to at most three decimals, without trailing zeros.
fn number(value: f64) -> String {
    if value.abs() < 0.0005 {
        return "0".to_owned();
    }
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `3d 4h 12m`, `5m`, `42s`.
fn uptime(secs: u64) -> String {
    let (days, hours, minutes) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60);
    let parts: Vec<String> = [(days, "d"), (hours, "h"), (minutes, "m")]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if parts.is_empty() {
        format!("{secs}s")
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(number(12.0), "12");
        assert_eq!(number(0.125), "0.125");
        assert_eq!(number(48.3), "48.3");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(-0.0001), "0");
        assert_eq!(number(100.0), "100");
        assert_eq!(uptime(42), "42s");
        assert_eq!(uptime(3 * 86_400 + 4 * 3_600 + 12 * 60 + 5), "3d 4h 12m");
        assert_eq!(used_percent(200, 50), "75.0%");
        assert_eq!(used_percent(0, 0), "-");
    }
}
