//! `/v1/audit-events`: the tenant's audit trail, listed with filters, verified, and exported
//! as CSV that a third party can re-verify without fleetplane.
//!
//! The CSV format (columns, quoting, how to re-hash a row) is documented at
//! [`store::audit::CSV_HEADER`], next to the canonical encoding it must agree with.

use std::fmt::Write as _;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use store::audit::{self, AuditEvent, AuditFilter, ChainVerdict, Target};
use store::DeviceId;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{invalid, NoQuery, Page, Query};
use crate::Ctx;

/// Events read per transaction while exporting.
const CSV_PAGE_ROWS: i64 = 1_000;

/// One audit event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventView {
    /// Position in the tenant's chain, from 1 without gaps.
    pub seq: i64,
    /// When it happened: RFC 3339, UTC, with microseconds (what the hash covers).
    #[schema(example = "2026-12-01T09:30:00.123456Z")]
    pub occurred_at: String,
    /// Who did it, e.g. `api-key:AbCdEf123456`, `operator:alice`, `system`.
    pub actor: String,
    /// What was done, e.g. `device.revoke`.
    pub action: String,
    /// What it was done to, e.g. `device:<id>`.
    pub target: String,
    /// Further details. The hash covers the stored JSON text, which the CSV export carries
    /// byte for byte; a stored text that is not JSON shows here as a JSON string.
    pub details: serde_json::Value,
    /// The previous event's hash (lowercase hex; 64 zeros before the first event).
    pub prev_hash: String,
    /// SHA-256 of `prev_hash` and the event's canonical encoding (lowercase hex).
    pub hash: String,
}

impl From<AuditEvent> for AuditEventView {
    fn from(e: AuditEvent) -> Self {
        let details = serde_json::from_str(&e.details)
            .unwrap_or_else(|_| serde_json::Value::String(e.details.clone()));
        Self {
            seq: e.seq,
            occurred_at: audit::rfc3339_micros(e.occurred_at),
            actor: e.actor,
            action: e.action,
            target: e.target,
            details,
            prev_hash: hex(&e.prev_hash),
            hash: hex(&e.hash),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The outcome of recomputing the chain. A broken chain is still a successful request (200).
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ChainStatusView {
    /// Every event re-hashes, links to the one before it, and the head points at the last.
    Intact {
        /// Events checked.
        events: i64,
    },
    /// The first place where the chain does not hold.
    Broken {
        /// The seq of the first broken row.
        seq: i64,
        /// `content_changed`, `link_broken`, `row_missing`, `head_mismatch` or `head_missing`.
        #[schema(example = "content_changed")]
        reason: String,
        /// The reason, for people.
        description: String,
    },
}

impl From<ChainVerdict> for ChainStatusView {
    fn from(verdict: ChainVerdict) -> Self {
        match verdict {
            ChainVerdict::Intact { events } => Self::Intact { events },
            ChainVerdict::Broken { seq, reason } => Self::Broken {
                seq,
                reason: reason.as_str().to_owned(),
                description: reason.describe().to_owned(),
            },
        }
    }
}

/// `since` and `until`, checked: the range is `[since, until)`.
fn time_range(query: &mut Query) -> Result<AuditFilter, ApiError> {
    let since = query.time("since")?;
    let until = query.time("until")?;
    if let (Some(since), Some(until)) = (since, until) {
        if until <= since {
            return Err(invalid("until", "must be later than since"));
        }
    }
    Ok(AuditFilter {
        since,
        until,
        ..AuditFilter::default()
    })
}

/// `target`, or `device` as the target `device:<id>` (every event about a device names it so).
fn target(query: &mut Query) -> Result<Option<String>, ApiError> {
    let target = query.text("target")?;
    let device = query
        .text("device")?
        .map(|id| {
            id.parse::<DeviceId>()
                .map_err(|_| invalid("device", "expected a device id (a UUID)"))
        })
        .transpose()?;
    match (target, device) {
        (Some(_), Some(_)) => Err(invalid("device", "give target or device, not both")),
        (target, None) => Ok(target),
        (None, Some(device)) => Ok(Some(Target::Device(device).to_string())),
    }
}

/// Lists the tenant's audit events, oldest first.
///
/// Filters match exactly; `since` and `until` select `[since, until)`.
#[utoipa::path(get, path = "/v1/audit-events", tag = "audit",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 500), ("cursor" = Option<String>, Query),
           ("actor" = Option<String>, Query, description = "exactly this actor, e.g. api-key:AbCdEf123456"),
           ("action" = Option<String>, Query, description = "exactly this action, e.g. device.revoke"),
           ("target" = Option<String>, Query, description = "exactly this target, e.g. device:<id>"),
           ("device" = Option<String>, Query, format = Uuid,
            description = "events about this device (its target device:<id>); not with target"),
           ("since" = Option<String>, Query, format = DateTime, description = "occurred at or after (RFC 3339)"),
           ("until" = Option<String>, Query, format = DateTime, description = "occurred before (RFC 3339)")),
    responses((status = 200, body = Page<AuditEventView>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn list(
    State(ctx): State<Ctx>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<AuditEventView>>, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let page = query.page()?;
    let filter = AuditFilter {
        actor: query.text("actor")?,
        action: query.text("action")?,
        target: target(&mut query)?,
        ..time_range(&mut query)?
    };
    query.finish()?;
    let after: i64 = page.after()?.unwrap_or(0);
    let mut tx = caller.begin(&ctx).await?;
    let events = audit::list(&mut tx, &filter, after, page.limit).await?;
    tx.commit().await?;
    let views = events.into_iter().map(AuditEventView::from).collect();
    Ok(Json(page.page(views, |e: &AuditEventView| e.seq)))
}

/// Verifies the tenant's audit chain.
///
/// Recomputes every event's hash from the first and names the first broken row, if any. A
/// broken chain is a successful answer (200) with `status: broken`.
#[utoipa::path(get, path = "/v1/audit-events/verify", tag = "audit",
    responses((status = 200, body = ChainStatusView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn verify(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
) -> Result<Json<ChainStatusView>, ApiError> {
    let mut tx = caller.begin(&ctx).await?;
    let verdict = audit::verify(&mut tx).await?;
    tx.commit().await?;
    if let ChainVerdict::Broken { seq, reason } = verdict {
        tracing::warn!(tenant = %caller.tenant(), seq, reason = reason.as_str(), "audit chain broken");
    }
    Ok(Json(verdict.into()))
}

/// Exports the tenant's audit events as CSV.
///
/// RFC 4180, by seq, streamed. The export ends at the last event that existed when it started;
/// every row carries its hashes, `occurred_at_micros` and the exact `details` text, so the chain
/// can be re-verified from the file alone: each `hash` is SHA-256 of `prev_hash` and the event's
/// canonical encoding (version 1, documented in the store's `audit` module). Each page of 1,000
/// rows is read in its own short transaction; a failure after the first page ends the transfer
/// early (incomplete, never silently short).
#[utoipa::path(get, path = "/v1/audit-events.csv", tag = "audit",
    params(("since" = Option<String>, Query, format = DateTime, description = "occurred at or after (RFC 3339)"),
           ("until" = Option<String>, Query, format = DateTime, description = "occurred before (RFC 3339)")),
    responses((status = 200, content_type = "text/csv", body = String,
               description = "header tenant_id,seq,occurred_at,occurred_at_micros,actor,action,target,details,prev_hash,hash"),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
pub(crate) async fn export_csv(
    State(ctx): State<Ctx>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let mut filter = time_range(&mut query)?;
    query.finish()?;
    // The first page is read before answering, so a refusal or failure there is a proper error.
    let mut tx = caller.begin(&ctx).await?;
    filter.through_seq = Some(audit::last_event_seq(&mut tx).await?);
    let first = audit::list(&mut tx, &filter, 0, CSV_PAGE_ROWS).await?;
    tx.commit().await?;
    let filename = format!("attachment; filename=\"audit-{}.csv\"", caller.tenant());
    let disposition = HeaderValue::try_from(filename)
        .map_err(|e| ApiError::Internal(format!("content disposition: {e}")))?;
    let mut chunk = audit::CSV_HEADER.to_owned();
    let next = render(&mut chunk, &first);
    tracing::info!(tenant = %caller.tenant(), by = %caller.actor(), since = ?filter.since, until = ?filter.until, "audit export");
    let export = Export {
        ctx,
        caller,
        filter,
    };
    let body = Body::from_stream(futures_util::stream::unfold(
        (export, Step::Send(chunk, next)),
        step,
    ));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response())
}

/// What the export's pages are read with.
struct Export {
    ctx: Ctx,
    caller: Caller,
    filter: AuditFilter,
}

/// Where the export is.
enum Step {
    /// Send this chunk, then read after this seq (`None`: it was the last).
    Send(String, Option<i64>),
    /// Read the page after this seq.
    Read(i64),
    /// Done, or failed.
    Done,
}

/// Appends the rows of `events`; the seq to read after when the page was full.
fn render(chunk: &mut String, events: &[AuditEvent]) -> Option<i64> {
    for event in events {
        chunk.push_str(&audit::csv_row(event));
    }
    let full = i64::try_from(events.len()).unwrap_or(i64::MAX) >= CSV_PAGE_ROWS;
    events.last().filter(|_| full).map(|last| last.seq)
}

async fn step(
    (export, step): (Export, Step),
) -> Option<(Result<Bytes, std::io::Error>, (Export, Step))> {
    match step {
        Step::Send(chunk, next) => {
            let then = next.map_or(Step::Done, Step::Read);
            Some((Ok(Bytes::from(chunk)), (export, then)))
        }
        Step::Read(after) => match read_page(&export, after).await {
            Ok(events) if events.is_empty() => None,
            Ok(events) => {
                let mut chunk = String::new();
                let next = render(&mut chunk, &events);
                let then = next.map_or(Step::Done, Step::Read);
                Some((Ok(Bytes::from(chunk)), (export, then)))
            }
            Err(e) => {
                tracing::warn!(tenant = %export.caller.tenant(), after, error = %e, "audit export ended early");
                let error = std::io::Error::other("the audit export failed; the error was logged");
                Some((Err(error), (export, Step::Done)))
            }
        },
        Step::Done => None,
    }
}

/// One page in its own transaction, which also re-checks that the key is still live.
async fn read_page(export: &Export, after: i64) -> Result<Vec<AuditEvent>, ApiError> {
    let mut tx = export.caller.begin(&export.ctx).await?;
    let events = audit::list(&mut tx, &export.filter, after, CSV_PAGE_ROWS).await?;
    tx.commit().await?;
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::audit::ChainBreak;
    use store::TenantId;
    use time::OffsetDateTime;

    fn event(seq: i64, details: &str) -> AuditEvent {
        AuditEvent {
            tenant_id: TenantId(uuid::Uuid::from_u128(7)),
            seq,
            occurred_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000)
                .unwrap(),
            actor: "operator:alice".into(),
            action: "device.revoke".into(),
            target: "device:1".into(),
            details: details.into(),
            prev_hash: [0; 32],
            hash: [0xab; 32],
        }
    }

    #[test]
    fn events_show_parsed_details_hex_hashes_and_microseconds() {
        let view = AuditEventView::from(event(3, r#"{"reason":"lost, \"really\""}"#));
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["seq"], 3);
        assert_eq!(json["occurred_at"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(json["details"]["reason"], "lost, \"really\"");
        assert_eq!(json["prev_hash"], "0".repeat(64));
        assert_eq!(json["hash"], "ab".repeat(32));
        // A row whose text is no longer JSON (tampered) still lists.
        let view = AuditEventView::from(event(4, "{not json"));
        assert_eq!(view.details, serde_json::json!("{not json"));
    }

    #[test]
    fn verdicts_are_tagged_by_status() {
        let intact =
            serde_json::to_value(ChainStatusView::from(ChainVerdict::Intact { events: 9 }))
                .unwrap();
        assert_eq!(
            intact,
            serde_json::json!({ "status": "intact", "events": 9 })
        );
        let broken = serde_json::to_value(ChainStatusView::from(ChainVerdict::Broken {
            seq: 4,
            reason: ChainBreak::LinkBroken,
        }))
        .unwrap();
        assert_eq!(broken["status"], "broken");
        assert_eq!(broken["seq"], 4);
        assert_eq!(broken["reason"], "link_broken");
        assert_eq!(broken["description"], ChainBreak::LinkBroken.describe());
    }

    #[test]
    fn a_full_page_asks_for_the_next_and_a_short_one_ends() {
        let mut chunk = String::new();
        assert_eq!(render(&mut chunk, &[event(1, "{}"), event(2, "{}")]), None);
        assert_eq!(chunk.matches("\r\n").count(), 2);
        let page: Vec<AuditEvent> = (1..=CSV_PAGE_ROWS).map(|s| event(s, "{}")).collect();
        assert_eq!(render(&mut String::new(), &page), Some(CSV_PAGE_ROWS));
        assert_eq!(render(&mut String::new(), &[]), None);
    }

    #[test]
    fn a_device_filter_is_its_target_and_excludes_target() {
        let id = "0b6f1f9e-5a57-4c1e-9d56-2f0f6d1d8f10";
        let mut q = Query::parse(Some(&format!("device={id}")));
        assert_eq!(target(&mut q).unwrap(), Some(format!("device:{id}")));
        let mut q = Query::parse(Some("target=api_key:AbCdEf123456"));
        assert_eq!(
            target(&mut q).unwrap().as_deref(),
            Some("api_key:AbCdEf123456")
        );
        for refused in ["device=lab-1", &format!("device={id}&target=device:{id}")] {
            let mut q = Query::parse(Some(refused));
            assert!(
                matches!(target(&mut q), Err(ApiError::InvalidField { field, .. }) if field == "device"),
                "{refused}"
            );
        }
    }

    #[test]
    fn since_must_come_before_until() {
        let mut q = Query::parse(Some(
            "since=2026-12-01T10:00:00Z&until=2026-12-01T09:00:00Z",
        ));
        assert!(matches!(
            time_range(&mut q),
            Err(ApiError::InvalidField { field, .. }) if field == "until"
        ));
        let mut q = Query::parse(Some("since=yesterday"));
        assert!(time_range(&mut q).is_err());
        let mut q = Query::parse(Some("since=2026-12-01T09:00:00Z"));
        assert!(time_range(&mut q).unwrap().since.is_some());
    }
}
