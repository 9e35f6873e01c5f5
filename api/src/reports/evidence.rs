//! `GET /v1/reports/evidence`: the compliance evidence report (issue 15). One model, built here
//! from the system's own records, maps each control the product implements to timestamped
//! evidence, each row naming where it came from; it is answered as JSON (`Accept:
//! application/json`) or as one self-contained printable HTML page (inline CSS, no script, a
//! page per section when printed). Rows that show a gap are findings. Secrets never appear: keys
//! and tokens are listed by id and name, from store records that carry no hash.
//!
//! Every export is recorded in the tenant's audit trail (`report.evidence_export`).

use std::fmt::Write as _;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use store::api_keys::Role;
use store::audit::{self, ChainVerdict};
use store::audit_checkpoints;
use store::TenantTx;
use time::{Duration, OffsetDateTime};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{invalid, Query};
use crate::management::{rfc3339, rfc3339_opt};
use crate::views::markup::escape;
use crate::Ctx;

/// A backup verified longer ago than this is a finding.
pub const BACKUP_VERIFICATION_MAX_AGE: Duration = Duration::days(7);

/// Rows read per listing (keys, tokens); the report says when a listing was cut.
const MAX_LISTED: i64 = 500;

/// The report.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvidenceReport {
    /// The tenant.
    pub tenant_id: String,
    /// Its name.
    pub tenant_name: String,
    /// The period `[from, to)` (RFC 3339).
    pub from: String,
    /// End of the period (exclusive).
    pub to: String,
    /// When the report was made.
    pub generated_at: String,
    /// Who made it (audit actor text).
    pub generated_by: String,
    /// How many rows are findings.
    pub findings: usize,
    /// One section per control.
    pub sections: Vec<EvidenceSection>,
}

/// One control and its evidence.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvidenceSection {
    /// Short id, e.g. `audit_integrity`.
    pub control: String,
    /// Its title.
    pub title: String,
    /// What the product does for it.
    pub statement: String,
    /// The evidence.
    pub rows: Vec<EvidenceRow>,
}

/// One piece of evidence.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvidenceRow {
    /// What it is, e.g. `API key AbCdEf123456`.
    pub evidence: String,
    /// What the system says about it.
    pub value: String,
    /// When it was observed or happened (RFC 3339).
    pub observed_at: String,
    /// Where it came from, e.g. `table api_keys via store::api_keys::list`.
    pub source: String,
    /// Set when the row shows a gap: what is wrong.
    pub finding: Option<String>,
}

impl EvidenceRow {
    fn new(
        evidence: impl Into<String>,
        value: impl Into<String>,
        at: OffsetDateTime,
        source: &str,
    ) -> Self {
        Self {
            evidence: evidence.into(),
            value: value.into(),
            observed_at: rfc3339_seconds(at),
            source: source.to_owned(),
            finding: None,
        }
    }

    fn finding(mut self, why: impl Into<String>) -> Self {
        self.finding = Some(why.into());
        self
    }
}

/// Builds the compliance evidence report for the caller's tenant.
///
/// Maps each control (tenant isolation, audit integrity, access control with MFA, encryption in
/// transit, device identity, enrollment limits, backups) to evidence from the system itself,
/// each row with its source; gaps are marked as findings. `from` and `to` (RFC 3339, `[from,
/// to)`) bound the period of the chain checkpoints and revoked devices shown. HTML (one
/// self-contained printable page) unless `Accept: application/json`. Each export is audited as
/// `report.evidence_export`.
#[utoipa::path(get, path = "/v1/reports/evidence", tag = "reports",
    params(("from" = String, Query, format = DateTime, description = "start of the period (RFC 3339)"),
           ("to" = String, Query, format = DateTime, description = "end of the period, exclusive (RFC 3339)")),
    responses((status = 200, body = EvidenceReport, description = "JSON with Accept: application/json"),
              (status = 200, content_type = "text/html", body = String, description = "otherwise: the printable page"),
              (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn evidence(
    State(ctx): State<Ctx>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = Query::parse(raw.as_deref());
    let from = query
        .time("from")?
        .ok_or_else(|| invalid("from", "required: the start of the period (RFC 3339)"))?;
    let to = query
        .time("to")?
        .ok_or_else(|| invalid("to", "required: the end of the period (RFC 3339)"))?;
    query.finish()?;
    if to <= from {
        return Err(invalid("to", "must be later than from"));
    }
    let json = wants_json(&headers);
    let mut tx = caller.begin(&ctx).await?;
    let report = build(&ctx, &caller, &mut tx, from, to).await?;
    store::evidence::record_export(
        &mut tx,
        &caller.actor(),
        from,
        to,
        if json { "json" } else { "html" },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(tenant = %caller.tenant(), by = %caller.actor(), findings = report.findings, "evidence report export");
    let no_store = (header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if json {
        return Ok(([no_store], Json(report)).into_response());
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            no_store,
        ],
        render_html(&report),
    )
        .into_response())
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.split(';').next().unwrap_or("").trim() == "application/json")
}

async fn build(
    ctx: &Ctx,
    caller: &Caller,
    tx: &mut TenantTx,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<EvidenceReport, ApiError> {
    let now = OffsetDateTime::now_utc();
    let tenant = store::tenants::get(tx).await?;
    let sections = vec![
        isolation(tx, now).await?,
        audit_integrity(ctx, tx, now, from, to).await?,
        access_control(tx, now).await?,
        encryption_in_transit(now),
        device_identity(tx, now, from, to).await?,
        enrollment_limits(tx, now).await?,
        backups(tx, now).await?,
    ];
    let findings = sections
        .iter()
        .flat_map(|s| &s.rows)
        .filter(|r| r.finding.is_some())
        .count();
    Ok(EvidenceReport {
        tenant_id: tenant.id.to_string(),
        tenant_name: tenant.name,
        from: rfc3339(from),
        to: rfc3339(to),
        generated_at: rfc3339_seconds(now),
        generated_by: caller.actor().to_string(),
        findings,
        sections,
    })
}

fn section(control: &str, title: &str, statement: &str, rows: Vec<EvidenceRow>) -> EvidenceSection {
    EvidenceSection {
        control: control.to_owned(),
        title: title.to_owned(),
        statement: statement.to_owned(),
        rows,
    }
}

async fn isolation(tx: &mut TenantTx, now: OffsetDateTime) -> Result<EvidenceSection, ApiError> {
    const SOURCE: &str = "catalog pg_class, pg_policy via store::evidence::tenant_table_isolation";
    let tables = store::evidence::tenant_table_isolation(tx).await?;
    let mut rows: Vec<EvidenceRow> = tables
        .iter()
        .map(|t| {
            let value = format!(
                "row-level security {}, forced {}, {} polic{}",
                on_off(t.rls_enabled),
                on_off(t.rls_forced),
                t.policies,
                if t.policies == 1 { "y" } else { "ies" }
            );
            let row = EvidenceRow::new(format!("table {}", t.table), value, now, SOURCE);
            if !(t.rls_enabled && t.rls_forced && t.policies > 0) {
                row.finding("tenant rows not isolated by forced row-level security")
            } else {
                row
            }
        })
        .collect();
    if rows.is_empty() {
        rows.push(
            EvidenceRow::new("tenant tables", "none found", now, SOURCE)
                .finding("no tenant table found in the catalog"),
        );
    }
    Ok(section(
        "tenant_isolation",
        "Tenant isolation",
        "Every table holding tenant rows has row-level security enabled and forced, so even its \
         owner reads only the tenant of the transaction (app.tenant_id).",
        rows,
    ))
}

async fn audit_integrity(
    ctx: &Ctx,
    tx: &mut TenantTx,
    now: OffsetDateTime,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<EvidenceSection, ApiError> {
    let checkpoints = audit_checkpoints::list(tx, 0, i64::MAX).await?;
    let key = ctx.state.audit_checkpoints.as_ref().map(|c| c.public_key());
    let mut rows = Vec::new();
    let (verdict, source) = match &key {
        Some(key) => (
            audit::verify_with_checkpoints(tx, checkpoints.clone(), key).await?,
            "table audit_events via store::audit::verify_with_checkpoints",
        ),
        None => (
            audit::verify(tx).await?,
            "table audit_events via store::audit::verify",
        ),
    };
    let row = match verdict {
        ChainVerdict::Intact { events } => EvidenceRow::new(
            "audit chain verification",
            format!("intact: {events} events re-hashed and linked"),
            now,
            source,
        ),
        ChainVerdict::Broken { seq, reason } => EvidenceRow::new(
            "audit chain verification",
            format!("broken at seq {seq}: {}", reason.describe()),
            now,
            source,
        )
        .finding(format!("audit chain broken at seq {seq}")),
    };
    rows.push(row);
    match &key {
        Some(key) => rows.push(EvidenceRow::new(
            "checkpoint signing key",
            format!("Ed25519, fingerprint {}", key.fingerprint()),
            now,
            "fleetd [audit] configuration via store::audit_checkpoints::Checkpointer",
        )),
        None => rows.push(
            EvidenceRow::new(
                "checkpoint signing key",
                "not configured: checkpoints not checked against a pinned key",
                now,
                "fleetd [audit] configuration",
            )
            .finding("no pinned checkpoint key"),
        ),
    }
    const CHECKPOINTS: &str = "table audit_checkpoints via store::audit_checkpoints::list";
    let in_period: Vec<_> = checkpoints
        .iter()
        .filter(|c| c.created_at >= from && c.created_at < to)
        .collect();
    for c in &in_period {
        rows.push(EvidenceRow::new(
            format!("signed checkpoint seq {}", c.seq),
            format!(
                "covers seq {}..{}, signed by key {}",
                c.first_seq, c.seq, c.key_fingerprint
            ),
            c.created_at,
            CHECKPOINTS,
        ));
    }
    if in_period.is_empty() {
        rows.push(
            EvidenceRow::new("signed checkpoints in the period", "none", now, CHECKPOINTS)
                .finding("no signed checkpoint was made in the period"),
        );
    }
    Ok(section(
        "audit_integrity",
        "Audit integrity",
        "Every change is an event in an append-only, hash-chained audit trail per tenant; signed \
         checkpoints pin the chain so that a rewrite with recomputed hashes is detected.",
        rows,
    ))
}

async fn access_control(
    tx: &mut TenantTx,
    now: OffsetDateTime,
) -> Result<EvidenceSection, ApiError> {
    const USERS: &str = "table users via store::users::list";
    const KEYS: &str = "table api_keys via store::api_keys::list (no secret or hash)";
    let policy = store::users::policy(tx).await?;
    let sso = store::sso::provider(tx).await?;
    let mut rows = vec![EvidenceRow::new(
        "sign-in policy",
        format!(
            "TOTP required for all users: {}; single sign-on: {}; idle timeout {}, absolute timeout {}",
            yes_no(policy.totp_required_for_all),
            if sso.is_some() { "configured" } else { "not configured" },
            policy.idle_timeout,
            policy.absolute_timeout
        ),
        now,
        "table tenants via store::users::policy, table tenant_oidc_providers via store::sso::provider",
    )];
    for user in store::users::list(tx).await? {
        let mfa = user.totp_enabled_at.is_some();
        let value = format!(
            "role {}{}; MFA {}; password {}; {}",
            user.role,
            if user.group_scope.is_some() {
                " (group-scoped)"
            } else {
                ""
            },
            if mfa { "on (TOTP)" } else { "off" },
            if user.has_password {
                "set"
            } else {
                "none (single sign-on only)"
            },
            match user.disabled_at {
                Some(at) => format!("disabled {}", rfc3339(at)),
                None => "enabled".to_owned(),
            }
        );
        let mut row = EvidenceRow::new(format!("user {}", user.email), value, now, USERS);
        let privileged = matches!(user.role, Role::Owner | Role::Admin);
        if privileged && !mfa && user.has_password && user.disabled_at.is_none() {
            row = row.finding(format!(
                "{} signs in with a password and no second factor",
                user.role
            ));
        }
        rows.push(row);
    }
    let keys = store::api_keys::list(tx, None, MAX_LISTED).await?;
    let cut = keys.len() as i64 >= MAX_LISTED;
    for key in keys {
        let value = format!(
            "name {:?}; role {}; scope {}; created {} by {}; last used {}; expires {}; {}",
            key.name,
            key.role,
            if key.group_scope.is_some() {
                "groups"
            } else {
                "tenant"
            },
            rfc3339(key.created_at),
            key.created_by,
            rfc3339_opt(key.last_used_at).unwrap_or_else(|| "never".to_owned()),
            rfc3339_opt(key.expires_at).unwrap_or_else(|| "never".to_owned()),
            match key.revoked_at {
                Some(at) => format!("revoked {}", rfc3339(at)),
                None if key.is_expired(now) => "expired".to_owned(),
                None => "live".to_owned(),
            }
        );
        rows.push(EvidenceRow::new(
            format!("API key {}", key.id),
            value,
            now,
            KEYS,
        ));
    }
    if cut {
        rows.push(EvidenceRow::new(
            "API keys",
            format!("only the first {MAX_LISTED} listed"),
            now,
            KEYS,
        ));
    }
    Ok(section(
        "access_control",
        "Access control with MFA",
        "People and API keys each have one role (owner, admin, operator, auditor), optionally \
         limited to device groups; one permission table decides every route; people sign in with \
         a password and TOTP or through the tenant's single sign-on.",
        rows,
    ))
}

fn encryption_in_transit(now: OffsetDateTime) -> EvidenceSection {
    const SOURCE: &str = "fleetd TLS policy api::tls::policy (certs::tls)";
    let policy = crate::tls::policy();
    let rows = vec![
        EvidenceRow::new("protocol versions", policy.versions.join(", "), now, SOURCE),
        EvidenceRow::new(
            "cipher suites",
            policy.cipher_suites.join(", "),
            now,
            SOURCE,
        ),
        EvidenceRow::new(
            "key exchange groups",
            policy.key_exchange_groups.join(", "),
            now,
            SOURCE,
        ),
        EvidenceRow::new("ALPN", policy.alpn.join(", "), now, SOURCE),
        EvidenceRow::new(
            "HSTS",
            format!("Strict-Transport-Security: {}", policy.hsts),
            now,
            "api::HSTS",
        ),
        EvidenceRow::new(
            "device client certificates",
            policy.device_client_certificates,
            now,
            SOURCE,
        ),
    ];
    section(
        "encryption_in_transit",
        "Encryption in transit",
        "The API and the device broker speak only TLS (1.3, or 1.2 with forward-secret AEAD \
         suites); there is no plaintext listener.",
        rows,
    )
}

async fn device_identity(
    tx: &mut TenantTx,
    now: OffsetDateTime,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<EvidenceSection, ApiError> {
    const SOURCE: &str = "table devices via store::evidence::revoked_devices";
    let revoked = store::evidence::revoked_devices(tx, from, to).await?;
    let mut rows: Vec<EvidenceRow> = revoked
        .into_iter()
        .map(|d| {
            EvidenceRow::new(
                format!("revoked device {}", d.device_id),
                format!(
                    "name {:?}, group {:?}: revoked, its certificates refused",
                    d.name, d.device_group
                ),
                d.revoked_at,
                SOURCE,
            )
        })
        .collect();
    if rows.is_empty() {
        rows.push(EvidenceRow::new(
            "revoked devices in the period",
            "none",
            now,
            SOURCE,
        ));
    }
    Ok(section(
        "device_identity",
        "Device identity",
        "Each device holds a private key it generated and a certificate from the tenant's issuing \
         CA; a revoked device's certificates are refused by the broker and the API at once.",
        rows,
    ))
}

async fn enrollment_limits(
    tx: &mut TenantTx,
    now: OffsetDateTime,
) -> Result<EvidenceSection, ApiError> {
    const SOURCE: &str =
        "table enrollment_tokens via store::enrollment_tokens::list (no secret or hash)";
    let tokens = store::enrollment_tokens::list(tx, None, MAX_LISTED).await?;
    let cut = tokens.len() as i64 >= MAX_LISTED;
    let mut rows: Vec<EvidenceRow> = tokens
        .into_iter()
        .map(|t| {
            let cidrs: Vec<String> = t.allowed_cidrs.iter().map(ToString::to_string).collect();
            let value = format!(
                "name {:?}; from {}; {} a day ({} today); {} uses{}; expires {}; {}",
                t.name,
                cidrs.join(", "),
                t.daily_limit,
                t.used_today,
                t.uses,
                t.max_uses.map(|m| format!(" of {m}")).unwrap_or_default(),
                rfc3339(t.expires_at),
                t.state(now).as_str()
            );
            EvidenceRow::new(format!("enrollment token {}", t.id), value, now, SOURCE)
        })
        .collect();
    if rows.is_empty() {
        rows.push(EvidenceRow::new("enrollment tokens", "none", now, SOURCE));
    }
    if cut {
        rows.push(EvidenceRow::new(
            "enrollment tokens",
            format!("only the first {MAX_LISTED} listed"),
            now,
            SOURCE,
        ));
    }
    Ok(section(
        "enrollment_limits",
        "Enrollment limits",
        "Devices enroll only with a token that limits where from (CIDR), how many a day and in \
         total, and until when.",
        rows,
    ))
}

async fn backups(tx: &mut TenantTx, now: OffsetDateTime) -> Result<EvidenceSection, ApiError> {
    const SOURCE: &str = "table backup_verifications via store::evidence::last_backup_verification";
    let row = match store::evidence::last_backup_verification(tx).await? {
        None => EvidenceRow::new("last backup verification", "none recorded", now, SOURCE)
            .finding("no backup verification recorded (fleetctl backup verify)"),
        Some(v) => {
            let value = format!(
                "{}: file {}, made {}, dump SHA-256 {}",
                if v.verified {
                    "verified"
                } else {
                    "NOT verified"
                },
                v.file_name,
                rfc3339_opt(v.backup_created_at).unwrap_or_else(|| "unknown".to_owned()),
                v.dump_sha256.as_deref().unwrap_or("unknown")
            );
            let row = EvidenceRow::new("last backup verification", value, v.verified_at, SOURCE);
            if !v.verified {
                row.finding("the last backup verification failed")
            } else if now - v.verified_at > BACKUP_VERIFICATION_MAX_AGE {
                row.finding(format!(
                    "no backup verified in the last {} days",
                    BACKUP_VERIFICATION_MAX_AGE.whole_days()
                ))
            } else {
                row
            }
        }
    };
    Ok(section(
        "backups",
        "Backups",
        "Backups are encrypted and authenticated; each verification restores one into a scratch \
         database and checks its row counts and every audit chain.",
        vec![row],
    ))
}

/// RFC 3339 to the second: evidence times are read by people; the audit trail and the
/// checkpoints keep the exact ones.
fn rfc3339_seconds(at: OffsetDateTime) -> String {
    rfc3339(at.replace_nanosecond(0).unwrap_or(at))
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

fn yes_no(yes: bool) -> &'static str {
    if yes {
        "yes"
    } else {
        "no"
    }
}

const STYLE: &str = "
body { font: 10.5pt/1.4 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1b1f24; margin: 2em; }
h1 { font-size: 18pt; margin: 0 0 .2em; }
h2 { font-size: 13pt; margin: 1.6em 0 .3em; border-bottom: 2px solid #1b1f24; padding-bottom: .2em; }
p.statement { margin: .2em 0 .6em; color: #444; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; margin: .6em 0 1em; }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
th, td { border: 1px solid #c8ccd1; padding: .3em .45em; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
th { background: #eef0f3; }
col.evidence { width: 21%; } col.value { width: 38%; } col.at { width: 15%; } col.source { width: 26%; }
td.at { overflow-wrap: normal; }
tr.finding td { background: #fdecea; }
.flag { display: inline-block; font-weight: 700; color: #a4161a; margin-top: .2em; }
.ok { color: #1a7f37; font-weight: 600; }
.summary.bad { color: #a4161a; font-weight: 700; }
code, .mono { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: 9pt; }
@media print {
  body { margin: 0; font-size: 9pt; }
  code, .mono { font-size: 7.5pt; }
  section { break-before: page; }
  section:first-of-type { break-before: auto; }
  tr { break-inside: avoid; }
  thead { display: table-header-group; }
}
@page { size: A4; margin: 14mm; }
";

/// The report as one self-contained HTML page.
pub fn render_html(report: &EvidenceReport) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Compliance evidence: {name}</title><style>{STYLE}</style></head><body>\
         <h1>Compliance evidence report</h1><dl class=\"meta\">\
         <dt>Tenant</dt><dd>{name} <span class=\"mono\">{id}</span></dd>\
         <dt>Period</dt><dd>{from} to {to} (end exclusive)</dd>\
         <dt>Generated</dt><dd>{at} by <span class=\"mono\">{by}</span></dd>\
         <dt>Findings</dt><dd class=\"summary{bad}\">{findings}</dd></dl>",
        name = escape(&report.tenant_name),
        id = escape(&report.tenant_id),
        from = escape(&report.from),
        to = escape(&report.to),
        at = escape(&report.generated_at),
        by = escape(&report.generated_by),
        bad = if report.findings > 0 { " bad" } else { "" },
        findings = report.findings,
    );
    for section in &report.sections {
        let findings = section.rows.iter().filter(|r| r.finding.is_some()).count();
        let _ = write!(
            out,
            "<section id=\"{control}\"><h2>{title} {status}</h2><p class=\"statement\">{statement}</p>\
             <table><colgroup><col class=\"evidence\"><col class=\"value\"><col class=\"at\">\
             <col class=\"source\"></colgroup><thead><tr><th>Evidence</th><th>Value</th>\
             <th>Observed at</th><th>Source</th></tr></thead><tbody>",
            control = escape(&section.control),
            title = escape(&section.title),
            status = if findings == 0 {
                "<span class=\"ok\">&#10003;</span>".to_owned()
            } else {
                format!("<span class=\"flag\">{findings} finding{}</span>", if findings == 1 { "" } else { "s" })
            },
            statement = escape(&section.statement),
        );
        for row in &section.rows {
            let (class, flag) = match &row.finding {
                Some(why) => (
                    " class=\"finding\"",
                    format!("<br><span class=\"flag\">FINDING: {}</span>", escape(why)),
                ),
                None => ("", String::new()),
            };
            let _ = write!(
                out,
                "<tr{class}><td>{evidence}</td><td>{value}{flag}</td><td class=\"mono at\">{at}</td>\
                 <td class=\"mono\">{source}</td></tr>",
                evidence = escape(&row.evidence),
                value = escape(&row.value),
                // A line break may fall between the date and the time, nowhere else.
                at = escape(&row.observed_at).replacen('T', "<wbr>T", 1),
                source = escape(&row.source),
            );
        }
        out.push_str("</tbody></table></section>");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_what_it_shows() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn json_is_chosen_by_accept_only() {
        let mut headers = HeaderMap::new();
        assert!(!wants_json(&headers));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, application/json;q=0.9"),
        );
        assert!(wants_json(&headers));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/jsonl"),
        );
        assert!(!wants_json(&headers));
    }
}
