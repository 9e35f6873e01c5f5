//! `fleetctl audit`: the audit trail over HTTPS (events, verification, CSV export), and
//! verification of every tenant's chain on the database.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::{json, Value};
use store::audit::{self, ChainVerdict};
use time::OffsetDateTime;

use super::{more_notice, show, Ctx, ListArgs};
use crate::db::{self, Location};
use crate::error::{Exit, Failure};
use crate::http;
use crate::output::{self, Table};
use crate::parse;

/// `fleetctl audit ...`.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// List audit events, oldest first.
    List(ListFilters),
    /// Recompute the audit chain and name the first broken event; exits 1 if it is broken.
    ///
    /// Over HTTPS: the API key's tenant. With --data-dir or --database-url: every tenant's
    /// chain on the database, or only --tenant's.
    Verify,
    /// Export audit events as CSV (with seq and hashes, checkable without fleetplane).
    Export(ExportArgs),
}

/// `fleetctl audit list` filters.
#[derive(Args)]
pub struct ListFilters {
    /// Only events by this actor, e.g. api_key:AbCdEf123456 or operator:alice@fleetctl.
    #[arg(long)]
    actor: Option<String>,
    /// Only events of this action, e.g. device.revoke.
    #[arg(long)]
    action: Option<String>,
    /// Only events about this target, e.g. device:<id>.
    #[arg(long)]
    target: Option<String>,
    /// Only events at or after this time (RFC 3339, or a duration ago such as 7d).
    #[arg(long, value_name = "TIME", value_parser = parse::moment)]
    since: Option<OffsetDateTime>,
    /// Only events before this time (RFC 3339, or a duration ago).
    #[arg(long, value_name = "TIME", value_parser = parse::moment)]
    until: Option<OffsetDateTime>,
    #[command(flatten)]
    list: ListArgs,
}

/// `fleetctl audit export`.
#[derive(Args)]
pub struct ExportArgs {
    /// Only events at or after this time (RFC 3339, or a duration ago such as 30d).
    #[arg(long, value_name = "TIME", value_parser = parse::moment)]
    since: Option<OffsetDateTime>,
    /// Only events before this time (RFC 3339, or a duration ago).
    #[arg(long, value_name = "TIME", value_parser = parse::moment)]
    until: Option<OffsetDateTime>,
    /// Write the CSV to this file (replaced only once the export is complete) instead of
    /// standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Deserialize)]
struct EventView {
    seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    occurred_at: OffsetDateTime,
    actor: String,
    action: String,
    target: String,
    #[serde(default)]
    details: Value,
}

#[derive(Deserialize)]
struct VerdictView {
    status: String,
    events: Option<i64>,
    seq: Option<i64>,
    description: Option<String>,
    reason: Option<String>,
}

/// Runs `fleetctl audit ...`.
pub async fn run(ctx: &Ctx, command: AuditCommand) -> Result<(), Failure> {
    match command {
        AuditCommand::List(filters) => list(ctx, filters).await,
        AuditCommand::Verify => match ctx.database_location()? {
            Some(location) => verify_on_database(ctx, &location).await,
            None => verify(ctx).await,
        },
        AuditCommand::Export(args) => export(ctx, args).await,
    }
}

async fn list(ctx: &Ctx, f: ListFilters) -> Result<(), Failure> {
    let api = ctx.api("audit list").await?;
    let mut query = Vec::new();
    for (name, value) in [
        ("actor", f.actor),
        ("action", f.action),
        ("target", f.target),
    ] {
        if let Some(value) = value {
            query.push((name, value));
        }
    }
    if let Some(since) = f.since {
        query.push(("since", parse::api_time(since)));
    }
    if let Some(until) = f.until {
        query.push(("until", parse::api_time(until)));
    }
    let page = api
        .list("v1/audit-events", &query, &f.list.paging())
        .await?;
    show(ctx, &page, || {
        let mut table = Table::new(&["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "DETAILS"]);
        for item in &page.items {
            let e: EventView = http::decode(item.clone())?;
            table.row(vec![
                e.seq.to_string(),
                output::time(e.occurred_at),
                e.actor,
                e.action,
                e.target,
                match e.details {
                    Value::Null => "-".to_owned(),
                    Value::Object(ref map) if map.is_empty() => "-".to_owned(),
                    details => details.to_string(),
                },
            ]);
        }
        more_notice(page.next_cursor.as_deref());
        Ok(table.render())
    })
}

async fn verify(ctx: &Ctx) -> Result<(), Failure> {
    let api = ctx.api("audit verify").await.map_err(|f| {
        f.hint_without_key(
            "to verify every tenant on the database, give --data-dir or --database-url",
        )
    })?;
    let value = api.get("v1/audit-events/verify", &[]).await?;
    let verdict: VerdictView = http::decode(value.clone())?;
    show(ctx, &value, || {
        let mut table = Table::new(&["CHAIN", "EVENTS", "BROKEN AT", "REASON"]);
        table.row(vec![
            verdict.status.clone(),
            output::opt(verdict.events),
            output::opt(verdict.seq),
            output::opt(
                verdict
                    .description
                    .clone()
                    .or_else(|| verdict.reason.clone()),
            ),
        ]);
        Ok(table.render())
    })?;
    if verdict.status == "intact" {
        return Ok(());
    }
    Err(Failure::new(
        Exit::Refused,
        "audit-chain-broken",
        format!(
            "the audit chain is {} at seq {}: {}",
            verdict.status,
            output::opt(verdict.seq),
            output::opt(verdict.description.or(verdict.reason))
        ),
    ))
}

async fn verify_on_database(ctx: &Ctx, location: &Location) -> Result<(), Failure> {
    let database = db::open(location).await?;
    let outcome = async {
        let chosen = match ctx.tenant() {
            Some(wanted) => vec![db::find_tenant(&database, wanted).await?],
            None => database.admin()?.list_tenants().await?,
        };
        let mut verdicts = Vec::new();
        for tenant in chosen {
            let mut tx = database.app.begin(tenant.id).await?;
            let verdict = audit::verify(&mut tx).await?;
            tx.rollback().await?;
            verdicts.push((tenant, verdict));
        }
        Ok::<_, Failure>(verdicts)
    }
    .await;
    let closed = db::close(database).await;
    let verdicts = outcome?;
    closed?;

    let items: Vec<Value> = verdicts
        .iter()
        .map(|(tenant, verdict)| match verdict {
            ChainVerdict::Intact { events } => json!({
                "tenant_id": tenant.id, "name": tenant.name, "status": "intact", "events": events,
            }),
            ChainVerdict::Broken { seq, reason } => json!({
                "tenant_id": tenant.id, "name": tenant.name, "status": "broken", "seq": seq,
                "reason": reason.as_str(), "description": reason.describe(),
            }),
        })
        .collect();
    show(ctx, &json!({ "items": items }), || {
        let mut table = Table::new(&["TENANT", "NAME", "CHAIN", "EVENTS", "BROKEN AT", "REASON"]);
        for (tenant, verdict) in &verdicts {
            let (status, events, seq, reason) = match verdict {
                ChainVerdict::Intact { events } => {
                    ("intact", events.to_string(), "-".into(), "-".into())
                }
                ChainVerdict::Broken { seq, reason } => (
                    "broken",
                    "-".into(),
                    seq.to_string(),
                    reason.describe().to_owned(),
                ),
            };
            table.row(vec![
                tenant.id.to_string(),
                tenant.name.clone(),
                status.to_owned(),
                events,
                seq,
                reason,
            ]);
        }
        Ok(table.render())
    })?;
    let broken = verdicts
        .iter()
        .filter(|(_, v)| matches!(v, ChainVerdict::Broken { .. }))
        .count();
    if broken > 0 {
        return Err(Failure::new(
            Exit::Refused,
            "audit-chain-broken",
            format!("{broken} of {} audit chains are broken", verdicts.len()),
        ));
    }
    Ok(())
}

async fn export(ctx: &Ctx, args: ExportArgs) -> Result<(), Failure> {
    if ctx.json() {
        return Err(Failure::usage(
            "audit export writes CSV; --json does not apply",
        ));
    }
    let api = ctx.api("audit export").await?;
    let mut query = Vec::new();
    if let Some(since) = args.since {
        query.push(("since", parse::api_time(since)));
    }
    if let Some(until) = args.until {
        query.push(("until", parse::api_time(until)));
    }
    match &args.output {
        None => {
            let mut stdout = std::io::stdout().lock();
            api.download("v1/audit-events.csv", &query, &mut stdout)
                .await?;
            Ok(())
        }
        Some(path) => {
            let mut file = temp_beside(path)?;
            let bytes = api
                .download("v1/audit-events.csv", &query, file.as_file_mut())
                .await?;
            file.as_file_mut()
                .sync_all()
                .map_err(|e| write_failure(path, &e))?;
            file.persist(path)
                .map_err(|e| write_failure(path, &e.error))?;
            output::notice(&format!("wrote {bytes} bytes to {}", path.display()));
            Ok(())
        }
    }
}

/// A temporary file in the directory of `path`, so that the finished export replaces `path` by
/// a rename and a failed one leaves nothing that looks complete.
fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile, Failure> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    tempfile::Builder::new()
        .prefix(".fleetctl-export-")
        .tempfile_in(&dir)
        .map_err(|e| write_failure(path, &e))
}

fn write_failure(path: &Path, e: &std::io::Error) -> Failure {
    Failure::new(
        Exit::Refused,
        "output",
        format!("writing {}: {e}", path.display()),
    )
}
