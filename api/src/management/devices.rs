//! `/v1/devices`: list with filters, show, rename, labels, move, revoke; presence, its history and
//! ingest health; telemetry records, bucketed aggregates and charts. Everything is limited to the caller's
//! group scope: a device outside it is not found.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use store::device_certificates;
use store::devices::{self, Device, DeviceFilter, DeviceStatus};
use store::records::{self, RecordKind};
use store::{ingest_state, DeviceId, EnrollmentTokenId, TenantTx};
use time::{OffsetDateTime, UtcOffset};
use utoipa::ToSchema;

use super::{rfc3339, rfc3339_opt};
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{
    invalid, ApiJson, NoBody, NoQuery, Page, PageRequest, PathId, Query, Resource,
};
use crate::views::chart::{self, ChartInput};
use crate::views::telemetry::{Aggregation, Aggregator, TelemetrySample, Window};
use crate::Ctx;

/// A device.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceView {
    /// Its id (also its certificate's common name).
    #[schema(value_type = String, format = Uuid)]
    pub id: DeviceId,
    /// Display name.
    pub name: String,
    /// Its group's name.
    pub group: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `active` or `revoked`.
    pub status: String,
    /// Connected now.
    pub online: bool,
    /// When it was created.
    pub created_at: String,
    /// When it last connected or disconnected.
    pub last_seen_at: Option<String>,
    /// Security updates pending in its newest inventory; null before its first inventory.
    pub pending_security_updates: Option<i32>,
    /// Whether its newest inventory says it needs a reboot; null before its first inventory.
    pub reboot_required: Option<bool>,
    /// When the device took its newest inventory, by its own clock; null before the first.
    pub inventory_at: Option<String>,
}

impl From<&Device> for DeviceView {
    fn from(d: &Device) -> Self {
        Self {
            id: d.id,
            name: d.name.clone(),
            group: d.group.clone(),
            labels: d.labels.clone(),
            status: d.status.as_str().into(),
            online: d.online,
            created_at: rfc3339(d.created_at),
            last_seen_at: rfc3339_opt(d.last_seen_at),
            pending_security_updates: d.patch.map(|p| p.pending_security_updates),
            reboot_required: d.patch.map(|p| p.reboot_required),
            inventory_at: rfc3339_opt(d.patch.map(|p| p.inventory_at)),
        }
    }
}

/// A certificate issued to the device.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateView {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: String,
    /// End of validity.
    pub not_after: String,
    /// When it was issued.
    pub issued_at: String,
    /// The enrollment token it was issued through (none for renewals).
    #[schema(value_type = Option<String>, format = Uuid)]
    pub enrollment_token_id: Option<EnrollmentTokenId>,
}

/// A device with its certificates.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDetail {
    /// The device.
    #[serde(flatten)]
    pub device: DeviceView,
    /// Certificates issued to it, newest expiry first.
    pub certificates: Vec<CertificateView>,
}

/// Devices in the caller's scope matching every filter given, by id.
#[utoipa::path(get, path = "/v1/devices", tag = "devices",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 500), ("cursor" = Option<String>, Query),
           ("group" = Option<String>, Query, description = "group name"),
           ("label" = Option<String>, Query, description = "key=value"),
           ("status" = Option<String>, Query, description = "active or revoked"),
           ("online" = Option<bool>, Query),
           ("pending_security_updates" = Option<bool>, Query),
           ("last_seen_before" = Option<String>, Query, format = DateTime),
           ("last_seen_after" = Option<String>, Query, format = DateTime),
           ("name_prefix" = Option<String>, Query),
           ("reboot_required" = Option<bool>, Query,
            description = "by the newest inventory; devices without one match neither"),
           ("search" = Option<String>, Query,
            description = "name contains this (ignoring case, taken literally) or id is exactly this; at most 200 bytes")),
    responses((status = 200, body = Page<DeviceView>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn list(
    State(ctx): State<Ctx>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<DeviceView>>, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let page = query.page()?;
    let filter = device_filter(&mut query)?;
    query.finish()?;
    let after: Option<DeviceId> = page.after()?;
    let mut tx = caller.begin(&ctx).await?;
    let found = devices::list(&mut tx, caller.scope(), &filter, after, page.limit).await?;
    tx.commit().await?;
    let views = found.iter().map(DeviceView::from).collect();
    Ok(Json(page.page(views, |d: &DeviceView| d.id)))
}

fn device_filter(query: &mut Query) -> Result<DeviceFilter, ApiError> {
    let label = query
        .text("label")?
        .map(|text| match text.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(invalid("label", "expected key=value")),
        })
        .transpose()?;
    let status = query
        .text("status")?
        .map(|s| {
            DeviceStatus::parse(&s).map_err(|_| invalid("status", "expected active or revoked"))
        })
        .transpose()?;
    Ok(DeviceFilter {
        group: query.text("group")?,
        label,
        status,
        online: query.boolean("online")?,
        pending_security_updates: query.boolean("pending_security_updates")?,
        last_seen_before: query.time("last_seen_before")?,
        last_seen_after: query.time("last_seen_after")?,
        name_prefix: query.text("name_prefix")?,
        reboot_required: query.boolean("reboot_required")?,
        // An empty search box searches for nothing, not for every name.
        search: query.text("search")?.filter(|s| !s.is_empty()),
    })
}

/// One device with its certificates.
#[utoipa::path(get, path = "/v1/devices/{id}", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceDetail), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)))]
pub(crate) async fn show(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<DeviceId>,
) -> Result<Json<DeviceDetail>, ApiError> {
    let (mut tx, device) = visible(&ctx, &caller, id).await?;
    let certificates = device_certificates::list_for_device(&mut tx, device.id).await?;
    tx.commit().await?;
    Ok(Json(DeviceDetail {
        device: DeviceView::from(&device),
        certificates: certificates
            .into_iter()
            .map(|c| CertificateView {
                serial: c.serial,
                not_before: rfc3339(c.not_before),
                not_after: rfc3339(c.not_after),
                issued_at: rfc3339(c.issued_at),
                enrollment_token_id: c.enrollment_token_id,
            })
            .collect(),
    }))
}

/// A change to a device; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceUpdate {
    /// A new display name.
    pub name: Option<String>,
    /// New labels, replacing all of the current ones.
    pub labels: Option<BTreeMap<String, String>>,
    /// The name of the group to move it to (within the caller's scope).
    pub group: Option<String>,
}

/// Renames a device, replaces its labels or moves it to another group, in one transaction.
#[utoipa::path(patch, path = "/v1/devices/{id}", tag = "devices", params(("id" = String, Path)),
    request_body = DeviceUpdate,
    responses((status = 200, body = DeviceView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn update(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<DeviceId>,
    ApiJson(change): ApiJson<DeviceUpdate>,
) -> Result<Json<DeviceView>, ApiError> {
    let (mut tx, mut device) = visible(&ctx, &caller, id).await?;
    let actor = caller.actor();
    if let Some(name) = &change.name {
        device = devices::rename(&mut tx, device.id, name, caller.scope(), &actor).await?;
    }
    if let Some(labels) = &change.labels {
        device = devices::set_labels(&mut tx, device.id, labels, caller.scope(), &actor).await?;
    }
    if let Some(group) = &change.group {
        device = devices::move_to_group(&mut tx, device.id, group, caller.scope(), &actor).await?;
    }
    tx.commit().await?;
    Ok(Json(DeviceView::from(&device)))
}

/// Revokes a device: its next connection is refused and its live session is closed within
/// seconds, on every fleetd. Revoking a revoked device changes nothing.
#[utoipa::path(post, path = "/v1/devices/{id}/revoke", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)))]
pub(crate) async fn revoke(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<DeviceId>,
    _no_body: NoBody,
) -> Result<Json<DeviceView>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    devices::revoke(&mut tx, id, caller.scope(), &caller.actor()).await?;
    let device = devices::get(&mut tx, id)
        .await?
        .ok_or_else(DeviceId::not_found)?;
    tx.commit().await?;
    tracing::info!(tenant = %caller.tenant(), device = %id, by = %caller.actor(), "device revoked");
    Ok(Json(DeviceView::from(&device)))
}

/// Presence and what ingest saw from the device.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceHealth {
    /// The device.
    #[schema(value_type = String, format = Uuid)]
    pub device_id: DeviceId,
    /// Connected now.
    pub online: bool,
    /// Last connect or disconnect.
    pub last_seen_at: Option<String>,
    /// Every sequence number up to this one is handled.
    pub watermark: i64,
    /// Records committed, ever.
    pub records_committed: i64,
    /// Refused records by reason.
    pub rejects: BTreeMap<String, i64>,
    /// The last refusal.
    pub last_error: Option<String>,
    /// Its reason.
    pub last_error_reason: Option<String>,
    /// When.
    pub last_error_at: Option<String>,
}

/// Presence and ingest health of a device.
#[utoipa::path(get, path = "/v1/devices/{id}/health", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceHealth), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem)))]
pub(crate) async fn health(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    PathId(id): PathId<DeviceId>,
) -> Result<Json<DeviceHealth>, ApiError> {
    let (mut tx, device) = visible(&ctx, &caller, id).await?;
    let state = ingest_state::get(&mut tx, device.id)
        .await?
        .unwrap_or_default();
    tx.commit().await?;
    Ok(Json(DeviceHealth {
        device_id: device.id,
        online: device.online,
        last_seen_at: rfc3339_opt(device.last_seen_at),
        watermark: state.watermark,
        records_committed: state.records_committed,
        rejects: state.rejects,
        last_error: state.last_error,
        last_error_reason: state.last_error_reason,
        last_error_at: rfc3339_opt(state.last_error_at),
    }))
}

/// One telemetry record.
#[derive(Debug, Serialize, ToSchema)]
pub struct TelemetryRecord {
    /// The device's sequence number.
    pub seq: i64,
    /// The device's clock.
    pub recorded_at: String,
    /// When fleetd received it.
    pub received_at: String,
    /// The sample.
    pub sample: TelemetrySample,
}

/// The default window of telemetry queries: the last day.
const DEFAULT_WINDOW: time::Duration = time::Duration::days(1);

/// A device's telemetry records in a time range, oldest first.
#[utoipa::path(get, path = "/v1/devices/{id}/telemetry", tag = "telemetry", params(("id" = String, Path),
        ("from" = Option<String>, Query, format = DateTime, description = "default: 24 h before `to`"),
        ("to" = Option<String>, Query, format = DateTime, description = "default: now"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<TelemetryRecord>), (status = 400, body = Problem),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
pub(crate) async fn telemetry(
    State(ctx): State<Ctx>,
    caller: Caller,
    PathId(id): PathId<DeviceId>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<TelemetryRecord>>, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let page = query.page()?;
    let (from, to) = time_range(&mut query)?;
    query.finish()?;
    let after: Option<RecordPosition> = page.after()?;
    let (mut tx, device) = visible(&ctx, &caller, id).await?;
    let stored = records::list_in_range(
        &mut tx,
        device.id,
        RecordKind::Telemetry,
        from,
        to,
        after.map(|p| (p.at, p.seq)),
        page.limit,
    )
    .await?;
    tx.commit().await?;
    let mut items = Vec::with_capacity(stored.len());
    for record in stored {
        // Only telemetry is selected; a body that no longer decodes is skipped, not fatal.
        if let Ok(wire::Body::Telemetry(sample)) = wire::decode_body(&record.body) {
            items.push((
                RecordPosition {
                    at: record.recorded_at,
                    seq: record.seq,
                },
                TelemetryRecord {
                    seq: record.seq,
                    recorded_at: rfc3339(record.recorded_at),
                    received_at: rfc3339(record.received_at),
                    sample: TelemetrySample::from(&sample),
                },
            ));
        }
    }
    Ok(Json(positioned_page(&page, items)))
}

/// A page of items listed by (time, number), whose cursor is the last item's position.
fn positioned_page<T>(page: &PageRequest, items: Vec<(RecordPosition, T)>) -> Page<T> {
    let last = items.last().map(|(position, _)| *position);
    let mut page = page.page(items.into_iter().map(|(_, r)| r).collect(), |_| {
        String::new()
    });
    if page.next_cursor.is_some() {
        page.next_cursor = last.map(|p| crate::extract::cursor_for(&p));
    }
    page
}

/// Where a page of records (or presence events) ends: (recorded_at, seq), as
/// `<unix nanos>.<seq>`.
#[derive(Clone, Copy, Debug)]
struct RecordPosition {
    at: OffsetDateTime,
    seq: i64,
}

impl std::fmt::Display for RecordPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.at.unix_timestamp_nanos(), self.seq)
    }
}

impl std::str::FromStr for RecordPosition {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (nanos, seq) = s.split_once('.').ok_or(())?;
        let at = OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().map_err(|_| ())?)
            .map_err(|_| ())?;
        Ok(Self {
            at,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// Most records one aggregate reads; a wider range must use a coarser question.
const MAX_AGGREGATED_RECORDS: i64 = 100_000;
const AGGREGATE_PAGE: i64 = 5_000;

/// Bucketed min/avg/max per metric, for charts.
#[utoipa::path(get, path = "/v1/devices/{id}/telemetry/aggregate", tag = "telemetry", params(("id" = String, Path),
        ("from" = Option<String>, Query, format = DateTime), ("to" = Option<String>, Query, format = DateTime),
        ("bucket" = Option<String>, Query, description = "bucket width, e.g. 5m (default 1h)"),
        ("metric" = Option<String>, Query, description = "metric names, comma-separated or repeated (default all)")),
    responses((status = 200, body = Aggregation), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn telemetry_aggregate(
    State(ctx): State<Ctx>,
    caller: Caller,
    PathId(id): PathId<DeviceId>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Aggregation>, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let (from, to) = time_range(&mut query)?;
    let bucket = query
        .duration("bucket")?
        .unwrap_or(std::time::Duration::from_secs(3600));
    let bucket = time::Duration::try_from(bucket).map_err(|_| invalid("bucket", "too long"))?;
    let metrics: BTreeSet<String> = query.list("metric").into_iter().collect();
    query.finish()?;
    let window = Window::new(from, to, bucket).map_err(|e| invalid("bucket", &e.to_string()))?;
    let filter = (!metrics.is_empty()).then_some(metrics);
    let aggregator =
        Aggregator::new(window, filter).map_err(|e| invalid("metric", &e.to_string()))?;
    let (mut tx, device) = visible(&ctx, &caller, id).await?;
    let aggregation = aggregate(&mut tx, &device, aggregator).await?;
    tx.commit().await?;
    Ok(Json(aggregation))
}

/// Feeds `aggregator` the device's telemetry in its window, read in pages (one query up to
/// 5,000 records), refusing past [`MAX_AGGREGATED_RECORDS`].
async fn aggregate(
    tx: &mut TenantTx,
    device: &Device,
    mut aggregator: Aggregator,
) -> Result<Aggregation, ApiError> {
    let (from, to) = (aggregator.window().from(), aggregator.window().to());
    let mut after = None;
    let mut read = 0;
    loop {
        let page = records::list_in_range(
            tx,
            device.id,
            RecordKind::Telemetry,
            from,
            to,
            after,
            AGGREGATE_PAGE,
        )
        .await?;
        read += page.len() as i64;
        if read > MAX_AGGREGATED_RECORDS {
            return Err(invalid(
                "from",
                "the range holds more than 100000 samples; ask for a shorter range",
            ));
        }
        for record in &page {
            if let Ok(wire::Body::Telemetry(sample)) = wire::decode_body(&record.body) {
                aggregator.add(record.recorded_at, &sample);
            }
        }
        match page.last() {
            Some(last) if page.len() as i64 == AGGREGATE_PAGE => {
                after = Some((last.recorded_at, last.seq));
            }
            _ => return Ok(aggregator.finish()),
        }
    }
}

/// The widest viewer offset either way: UTC−12:00 to UTC+14:00.
const MAX_OFFSET_MINUTES: i32 = 14 * 60;

/// About this many buckets in a chart whose bucket is not given: finer is noise at its width.
const CHART_BUCKETS: i64 = 120;

/// One metric's telemetry drawn as an SVG chart (`image/svg+xml`), bucketed as the aggregate
/// route buckets it: the mean as a line, min–max as a band, empty buckets as gaps (never
/// interpolated); network counters as rates. The axis has the metric's unit; the times are in
/// the viewer's offset, written under the axis. A range without data answers a chart that says
/// so. The SVG has no style or script (it is served under the API's Content-Security-Policy).
#[utoipa::path(get, path = "/v1/devices/{id}/telemetry/chart.svg", tag = "telemetry", params(("id" = String, Path),
        ("metric" = String, Query, description = "one metric name, as the aggregate route names them, e.g. cpu_usage_percent or temperature_celsius:cpu"),
        ("from" = Option<String>, Query, format = DateTime, description = "default: 24 h before `to`"),
        ("to" = Option<String>, Query, format = DateTime, description = "default: now"),
        ("bucket" = Option<String>, Query, description = "bucket width, e.g. 5m (default: the range in about 120 buckets, rounded to 1, 2, 5, 10, 15 or 30 minutes, or hours)"),
        ("tz_offset_minutes" = Option<i32>, Query, minimum = -720, maximum = 840,
         description = "the viewer's offset from UTC in minutes, east positive: +60 for CET, -300 for EST (the negation of JavaScript's Date.getTimezoneOffset()); default 0")),
    responses((status = 200, content_type = "image/svg+xml", body = String), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn telemetry_chart(
    State(ctx): State<Ctx>,
    caller: Caller,
    PathId(id): PathId<DeviceId>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let (from, to) = time_range(&mut query)?;
    let metric = query
        .text("metric")?
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            invalid(
                "metric",
                "required: one metric name, e.g. cpu_usage_percent",
            )
        })?;
    let bucket = match query.duration("bucket")? {
        Some(bucket) => {
            time::Duration::try_from(bucket).map_err(|_| invalid("bucket", "too long"))?
        }
        None => chart_bucket(to - from),
    };
    let offset = viewer_offset(&mut query)?;
    query.finish()?;
    let window = Window::new(from, to, bucket).map_err(|e| invalid("bucket", &e.to_string()))?;
    let aggregator = Aggregator::new(window, Some(BTreeSet::from([metric.clone()])))
        .map_err(|e| invalid("metric", &e.to_string()))?;
    let (mut tx, device) = visible(&ctx, &caller, id).await?;
    let aggregation = aggregate(&mut tx, &device, aggregator).await?;
    tx.commit().await?;
    let points = aggregation
        .series
        .into_iter()
        .next()
        .map(|series| series.points)
        .unwrap_or_default();
    let svg = chart::render(&ChartInput {
        metric: &metric,
        subject: &device.name,
        window,
        points: &points,
        offset,
    });
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        svg,
    )
        .into_response())
}

/// `tz_offset_minutes`, checked.
fn viewer_offset(query: &mut Query) -> Result<UtcOffset, ApiError> {
    let minutes = query
        .parsed::<i32>("tz_offset_minutes", "whole minutes east of UTC, e.g. 60")?
        .unwrap_or(0);
    if !(-12 * 60..=MAX_OFFSET_MINUTES).contains(&minutes) {
        return Err(invalid("tz_offset_minutes", "must be between -720 and 840"));
    }
    UtcOffset::from_whole_seconds(minutes * 60)
        .map_err(|_| invalid("tz_offset_minutes", "must be between -720 and 840"))
}

/// The round bucket width that cuts `span` into at most about [`CHART_BUCKETS`] buckets.
fn chart_bucket(span: time::Duration) -> time::Duration {
    const ROUND_MINUTES: [i64; 12] = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440];
    let rough = span / CHART_BUCKETS as i32;
    ROUND_MINUTES
        .iter()
        .map(|&m| time::Duration::minutes(m))
        .find(|&width| width >= rough)
        .unwrap_or_else(|| time::Duration::days(rough.whole_days() + 1))
}

/// One connect or disconnect.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceEventView {
    /// When the broker saw it (RFC 3339).
    pub at: String,
    /// Connected (true) or disconnected (false).
    pub online: bool,
}

/// A device's connects and disconnects, newest first (the newest 1,000 are kept).
#[utoipa::path(get, path = "/v1/devices/{id}/presence", tag = "devices", params(("id" = String, Path),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<PresenceEventView>), (status = 400, body = Problem),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
pub(crate) async fn presence(
    State(ctx): State<Ctx>,
    caller: Caller,
    PathId(id): PathId<DeviceId>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<PresenceEventView>>, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let page = query.page()?;
    query.finish()?;
    let before: Option<RecordPosition> = page.after()?;
    let (mut tx, device) = visible(&ctx, &caller, id).await?;
    let events = devices::presence_history(
        &mut tx,
        device.id,
        before.map(|p| (p.at, p.seq)),
        page.limit,
    )
    .await?;
    tx.commit().await?;
    let items = events
        .iter()
        .map(|e| {
            let position = RecordPosition {
                at: e.at,
                seq: e.event_id,
            };
            let view = PresenceEventView {
                at: rfc3339(e.at),
                online: e.online,
            };
            (position, view)
        })
        .collect();
    Ok(Json(positioned_page(&page, items)))
}

/// `from` and `to` (default: the last day up to now); `from` must be before `to`.
fn time_range(query: &mut Query) -> Result<(OffsetDateTime, OffsetDateTime), ApiError> {
    let to = query.time("to")?.unwrap_or_else(OffsetDateTime::now_utc);
    let from = query.time("from")?.unwrap_or(to - DEFAULT_WINDOW);
    if from >= to {
        return Err(invalid("from", "must be before to"));
    }
    Ok((from, to))
}

/// The device `id` if the caller may see it, with the open transaction.
async fn visible(ctx: &Ctx, caller: &Caller, id: DeviceId) -> Result<(TenantTx, Device), ApiError> {
    let mut tx = caller.begin(ctx).await?;
    let device = devices::get_scoped(&mut tx, id, caller.scope())
        .await?
        .ok_or_else(DeviceId::not_found)?;
    Ok((tx, device))
}
