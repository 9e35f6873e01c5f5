//! `/v1/audit-events`: the tenant's audit trail, listed with filters, verified, and exported
//! as CSV that a third party can re-verify without fleetplane.
//!
//! The CSV format (columns, quoting, how to re-hash a row) is documented at
//! [`store::audit::CSV_HEADER`], next to the canonical encoding it must agree with.

use std::fmt::Write as _;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use store::audit::{self, AuditEvent, AuditFilter, ChainVerdict, Target};
use store::audit_checkpoints::{self, Checkpoint};
use store::DeviceId;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{invalid, ApiJson, NoBody, NoQuery, Page, Query};
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
    /// The canonical encoding the hash was computed with: 1 (details hashed as they are) or 2
    /// (their SHA-256 hashed, so they can be erased).
    pub canonical_version: i16,
    /// The seq of the `audit.erase` event that replaced `details` by a tombstone
    /// (`{"erased":true,"details_sha256":..,"by_event":..}`), if any.
    pub erased_by: Option<i64>,
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
            canonical_version: e.canonical_version,
            erased_by: e.erased_by,
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
        /// `content_changed`, `link_broken`, `row_missing`, `head_mismatch`, `head_missing`, or,
        /// against signed checkpoints, `checkpoint_signature_invalid`, `checkpoint_mismatch`,
        /// `behind_checkpoint` or `anchor_unsigned`.
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
/// canonical encoding (version 1, documented in the store's `audit` module). After the last
/// event, a record `checkpoint,<JSON>` carries the newest signed checkpoint at or before it
/// (none while no checkpoint exists). Each page of 1,000 rows is read in its own short
/// transaction; a failure after the first page ends the transfer early (incomplete, never
/// silently short).
#[utoipa::path(get, path = "/v1/audit-events.csv", tag = "audit",
    params(("since" = Option<String>, Query, format = DateTime, description = "occurred at or after (RFC 3339)"),
           ("until" = Option<String>, Query, format = DateTime, description = "occurred before (RFC 3339)")),
    responses((status = 200, content_type = "text/csv", body = String,
               description = "header tenant_id,seq,occurred_at,occurred_at_micros,actor,action,target,details,prev_hash,hash,canonical_version,erased_by; last record checkpoint,<checkpoint JSON>"),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
pub(crate) async fn export_csv(
    State(ctx): State<Ctx>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let filter = time_range(&mut query)?;
    query.finish()?;
    export(ctx, caller, filter, Format::Csv).await
}

/// Exports the tenant's whole audit chain as JSON Lines, with its covering checkpoint.
///
/// One JSON object per line. After a prune (audit retention), the first is
/// `{"record":"anchor","checkpoint":{...}}`: the signed checkpoint the remaining chain starts
/// from, whose `last_hash` is the first event's `prev_hash`. Then by seq from 1 (or from the
/// anchor's seq + 1): `{"record":"event",...}` with `seq`, `prev_hash`,
/// `hash` and every field the canonical encoding covers (`details` as the exact text hashed),
/// then `{"record":"checkpoint","checkpoint":{...}}`, the newest signed checkpoint at or before
/// the last event (absent while there is none). `tools/verify_audit_export.py` re-verifies the
/// file with the Python standard library and `openssl`. Streamed like the CSV export.
#[utoipa::path(get, path = "/v1/audit-events.jsonl", tag = "audit",
    responses((status = 200, content_type = "application/jsonl", body = String,
               description = "after a prune one anchor record, then event records, then one checkpoint record"),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
pub(crate) async fn export_jsonl(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
) -> Result<Response, ApiError> {
    export(ctx, caller, AuditFilter::default(), Format::Jsonl).await
}

/// The two export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Csv,
    Jsonl,
}

impl Format {
    fn event(self, event: &AuditEvent) -> String {
        match self {
            Format::Csv => audit::csv_row(event),
            Format::Jsonl => audit::jsonl_event_line(event),
        }
    }

    fn checkpoint(self, checkpoint: &Checkpoint) -> String {
        match self {
            Format::Csv => audit::csv_checkpoint_record(checkpoint),
            Format::Jsonl => audit::jsonl_checkpoint_line(checkpoint),
        }
    }
}

async fn export(
    ctx: Ctx,
    caller: Caller,
    mut filter: AuditFilter,
    format: Format,
) -> Result<Response, ApiError> {
    // The first page is read before answering, so a refusal or failure there is a proper error.
    let mut tx = caller.begin(&ctx).await?;
    filter.through_seq = Some(audit::last_event_seq(&mut tx).await?);
    let export = Export {
        ctx: ctx.clone(),
        caller: caller.clone(),
        filter,
        format,
    };
    let first = read_page_in(&mut tx, &export, 0).await?;
    let anchor = match format {
        Format::Jsonl => audit_checkpoints::anchor_checkpoint(&mut tx).await?,
        Format::Csv => None,
    };
    tx.commit().await?;
    let (extension, content_type) = match format {
        Format::Csv => ("csv", "text/csv; charset=utf-8"),
        Format::Jsonl => ("jsonl", "application/jsonl; charset=utf-8"),
    };
    let filename = format!(
        "attachment; filename=\"audit-{}.{extension}\"",
        caller.tenant()
    );
    let disposition = HeaderValue::try_from(filename)
        .map_err(|e| ApiError::Internal(format!("content disposition: {e}")))?;
    let mut chunk = match format {
        Format::Csv => audit::CSV_HEADER.to_owned(),
        Format::Jsonl => anchor
            .as_ref()
            .map(audit::jsonl_anchor_line)
            .unwrap_or_default(),
    };
    let next = render(&mut chunk, &first, format);
    tracing::info!(tenant = %caller.tenant(), by = %caller.actor(), since = ?export.filter.since, until = ?export.filter.until, format = extension, "audit export");
    let body = Body::from_stream(futures_util::stream::unfold(
        (export, Step::Send(chunk, next)),
        step,
    ));
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
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
    format: Format,
}

/// One page of an export, and on the last page the checkpoint that covers the export.
struct ExportPage {
    events: Vec<AuditEvent>,
    /// `Some` on the last page: the trailer (`None` inside when no checkpoint covers it yet).
    last: Option<Option<Checkpoint>>,
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

/// Appends the page's rows, and the trailer on the last page; the seq to read after when there
/// is more.
fn render(chunk: &mut String, page: &ExportPage, format: Format) -> Option<i64> {
    for event in &page.events {
        chunk.push_str(&format.event(event));
    }
    match &page.last {
        Some(checkpoint) => {
            if let Some(checkpoint) = checkpoint {
                chunk.push_str(&format.checkpoint(checkpoint));
            }
            None
        }
        None => page.events.last().map(|last| last.seq),
    }
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
            Ok(page) => {
                let mut chunk = String::new();
                let next = render(&mut chunk, &page, export.format);
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
async fn read_page(export: &Export, after: i64) -> Result<ExportPage, ApiError> {
    let mut tx = export.caller.begin(&export.ctx).await?;
    let page = read_page_in(&mut tx, export, after).await?;
    tx.commit().await?;
    Ok(page)
}

async fn read_page_in(
    tx: &mut store::TenantTx,
    export: &Export,
    after: i64,
) -> Result<ExportPage, ApiError> {
    let events = audit::list(tx, &export.filter, after, CSV_PAGE_ROWS).await?;
    let full = i64::try_from(events.len()).unwrap_or(i64::MAX) >= CSV_PAGE_ROWS;
    let last = if full {
        None
    } else {
        let through = export.filter.through_seq.unwrap_or(i64::MAX);
        Some(audit_checkpoints::latest_through(tx, through).await?)
    };
    Ok(ExportPage { events, last })
}

/// A signed checkpoint of the tenant's chain (store::audit_checkpoints documents the signed
/// bytes): Ed25519 over the tenant, `first_seq`, `seq`, `created_at_micros`, `last_hash` and the
/// SHA-256 of `event_hashes`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointView {
    /// Always 1.
    pub version: u32,
    /// The tenant.
    pub tenant_id: String,
    /// The first event covered.
    pub first_seq: i64,
    /// The last event covered.
    pub seq: i64,
    /// RFC 3339, UTC, with microseconds.
    #[schema(example = "2026-12-01T09:30:00.123456Z")]
    pub created_at: String,
    /// The same instant in microseconds since the Unix epoch (what the signature covers).
    pub created_at_micros: i64,
    /// The hash of event `seq` (lowercase hex).
    pub last_hash: String,
    /// The hashes of events `first_seq..=seq` (lowercase hex).
    pub event_hashes: Vec<String>,
    /// SHA-256 of the raw Ed25519 public key (lowercase hex).
    pub key_fingerprint: String,
    /// The Ed25519 signature (lowercase hex, 64 bytes).
    pub signature: String,
}

impl From<&Checkpoint> for CheckpointView {
    fn from(c: &Checkpoint) -> Self {
        let d = c.to_document();
        Self {
            version: d.version,
            tenant_id: d.tenant_id,
            first_seq: d.first_seq,
            seq: d.seq,
            created_at: d.created_at,
            created_at_micros: d.created_at_micros,
            last_hash: d.last_hash,
            event_hashes: d.event_hashes,
            key_fingerprint: d.key_fingerprint,
            signature: d.signature,
        }
    }
}

/// Lists the tenant's signed audit checkpoints, oldest first.
///
/// A copy kept in the database: a verifier checks them against the public key it pins (and
/// against the copies fleetd writes outside the database), never trusts them for being here.
#[utoipa::path(get, path = "/v1/audit-checkpoints", tag = "audit",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 500), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<CheckpointView>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn list_checkpoints(
    State(ctx): State<Ctx>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<CheckpointView>>, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let page = query.page()?;
    query.finish()?;
    let after: i64 = page.after()?.unwrap_or(0);
    let mut tx = caller.begin(&ctx).await?;
    let checkpoints = audit_checkpoints::list(&mut tx, after, page.limit).await?;
    tx.commit().await?;
    let views = checkpoints.iter().map(CheckpointView::from).collect();
    Ok(Json(page.page(views, |c: &CheckpointView| c.seq)))
}

/// Signs a checkpoint of the tenant's chain now.
///
/// 201 with the new checkpoint, covering every event since the previous one (recorded by an
/// `audit.checkpoint` event, which the next checkpoint covers); 200 with the newest checkpoint
/// when there is nothing new. 409 when the events after the last checkpoint do not verify: a
/// broken chain is never signed.
#[utoipa::path(post, path = "/v1/audit-checkpoints", tag = "audit",
    responses((status = 201, body = CheckpointView), (status = 200, body = CheckpointView),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn create_checkpoint(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    _no_body: NoBody,
) -> Result<(StatusCode, Json<CheckpointView>), ApiError> {
    let checkpointer = ctx
        .state
        .audit_checkpoints
        .clone()
        .ok_or(ApiError::Conflict(
            "audit checkpoints are not configured on this server",
        ))?;
    let mut tx = caller.begin(&ctx).await?;
    let written = checkpointer
        .write_on_request(&mut tx, &caller.actor())
        .await?;
    let answer = match written {
        Some(checkpoint) => {
            tx.commit().await?;
            checkpointer.push(ctx.state.app.metrics(), &checkpoint);
            tracing::info!(tenant = %caller.tenant(), by = %caller.actor(), seq = checkpoint.seq, "audit checkpoint written");
            (StatusCode::CREATED, checkpoint)
        }
        None => {
            let latest = audit_checkpoints::latest(&mut tx)
                .await?
                .ok_or(ApiError::ResourceNotFound("audit checkpoint"))?;
            tx.commit().await?;
            (StatusCode::OK, latest)
        }
    };
    Ok((answer.0, Json(CheckpointView::from(&answer.1))))
}

/// Why an event's details are erased.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    /// Recorded in the `audit.erase` event, e.g. the erasure request's reference (1 to 1000
    /// bytes, no control characters). Must not itself carry the personal data.
    pub reason: String,
}

/// Erases the personal data in an event: its details become a tombstone carrying their SHA-256,
/// so its hash, the chain and every signed checkpoint still verify. The erasure is itself an
/// `audit.erase` event, which is returned. Only events written with canonical version 2 can be
/// erased (422 for older ones); 409 when erased already.
#[utoipa::path(post, path = "/v1/audit-events/{seq}/erase", tag = "audit", request_body = EraseRequest,
    params(("seq" = i64, Path, description = "the event's seq")),
    responses((status = 201, body = AuditEventView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn erase(
    State(ctx): State<Ctx>,
    caller: Caller,
    _no_query: NoQuery,
    axum::extract::Path(seq): axum::extract::Path<String>,
    ApiJson(request): ApiJson<EraseRequest>,
) -> Result<(StatusCode, Json<AuditEventView>), ApiError> {
    let seq: i64 = seq
        .parse()
        .ok()
        .filter(|seq| *seq >= 1)
        .ok_or(ApiError::ResourceNotFound("audit event"))?;
    let mut tx = caller.begin(&ctx).await?;
    let erasure = audit::erase(&mut tx, seq, &request.reason, &caller.actor()).await?;
    tx.commit().await?;
    tracing::info!(tenant = %caller.tenant(), by = %caller.actor(), seq, "audit event details erased");
    Ok((StatusCode::CREATED, Json(AuditEventView::from(erasure))))
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
            canonical_version: 2,
            erased_by: None,
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
    fn a_full_page_asks_for_the_next_and_the_last_ends_with_its_checkpoint() {
        let mut chunk = String::new();
        let last = ExportPage {
            events: vec![event(1, "{}"), event(2, "{}")],
            last: Some(None),
        };
        assert_eq!(render(&mut chunk, &last, Format::Csv), None);
        assert_eq!(chunk.matches("\r\n").count(), 2);
        let full = ExportPage {
            events: (1..=CSV_PAGE_ROWS).map(|s| event(s, "{}")).collect(),
            last: None,
        };
        assert_eq!(
            render(&mut String::new(), &full, Format::Csv),
            Some(CSV_PAGE_ROWS)
        );
        let key = store::audit_checkpoints::CheckpointKey::from_seed(&[1; 32]).unwrap();
        let checkpoint = Checkpoint {
            tenant_id: TenantId(uuid::Uuid::from_u128(7)),
            first_seq: 1,
            seq: 1,
            last_hash: [0xab; 32],
            event_hashes: vec![[0xab; 32]],
            created_at: OffsetDateTime::UNIX_EPOCH,
            key_fingerprint: key.public_key().fingerprint(),
            signature: [0; 64],
        };
        let trailer = ExportPage {
            events: Vec::new(),
            last: Some(Some(checkpoint)),
        };
        let mut chunk = String::new();
        assert_eq!(render(&mut chunk, &trailer, Format::Csv), None);
        assert!(chunk.starts_with("checkpoint,\"{"), "{chunk}");
        let mut chunk = String::new();
        assert_eq!(render(&mut chunk, &trailer, Format::Jsonl), None);
        let line: serde_json::Value = serde_json::from_str(chunk.trim_end()).unwrap();
        assert_eq!(line["record"], "checkpoint");
        assert_eq!(line["checkpoint"]["seq"], 1);
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
