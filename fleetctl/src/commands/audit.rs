//! `fleetctl audit`: the audit trail over HTTPS (events, verification, CSV export), and
//! verification of every tenant's chain on the database.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::{json, Value};
use store::audit::{self, ChainVerdict};
use store::audit_checkpoints::{
    self, Checkpoint, CheckpointDocument, CheckpointKey, CheckpointVerifier, PublicKey,
};
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
    /// chain on the database, or only --tenant's. With --checkpoints and --public-key, every
    /// event is also checked against the signed checkpoints: a rewritten event, a cut tail, a
    /// rewound head or a forged checkpoint is named by the first bad seq.
    Verify(VerifyArgs),
    /// Export audit events as CSV or JSON Lines (with seq, hashes and the covering signed
    /// checkpoint, checkable without fleetplane: tools/verify_audit_export.py).
    Export(ExportArgs),
    /// Sign a checkpoint of the chain now (fleetd also does so every audit.checkpoint_interval).
    Checkpoint,
    /// Print the public key that verifies checkpoints (PEM), from fleetd's checkpoint key file.
    PublicKey(PublicKeyArgs),
    /// Erase the personal data in an event (owner or admin): its details become a tombstone
    /// with their SHA-256, so the chain and the checkpoints still verify; audited as
    /// audit.erase. Events written before canonical version 2 cannot be erased.
    Erase(EraseArgs),
    /// Remove events older than each tenant's audit retention, only up to the newest signed
    /// checkpoint covering them (on the database: every tenant, or --tenant's); audited as
    /// audit.prune. Verification then starts from that checkpoint.
    Prune,
}

/// `fleetctl audit erase`.
#[derive(Args)]
pub struct EraseArgs {
    /// The event's seq.
    #[arg(value_name = "SEQ")]
    seq: u64,
    /// Why, e.g. the erasure request's reference (recorded; must not hold the personal data).
    #[arg(long)]
    reason: String,
}

/// `fleetctl audit verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// fleetd's checkpoint directory (audit.checkpoint_dir, files <tenant>/<seq>.json), or over
    /// HTTPS the URL <server>/v1/audit-checkpoints (the database's copy: signatures are checked
    /// all the same, but only the directory shows a checkpoint deleted from the database).
    #[arg(long, value_name = "DIR|URL", requires = "public_key")]
    checkpoints: Option<String>,
    /// The pinned checkpoint public key (PEM, as `fleetctl audit public-key` prints it, or 64
    /// hex characters).
    #[arg(long, value_name = "FILE", requires = "checkpoints")]
    public_key: Option<PathBuf>,
}

/// `fleetctl audit public-key`.
#[derive(Args)]
pub struct PublicKeyArgs {
    /// The checkpoint key file (audit.checkpoint_key); default <data-dir>/audit-checkpoint.key.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

/// `fleetctl audit export --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// RFC 4180 CSV, a trailing `checkpoint,<JSON>` record.
    Csv,
    /// JSON Lines: the whole chain, then the checkpoint (no --since/--until).
    Jsonl,
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
    /// Write the export to this file (replaced only once the export is complete) instead of
    /// standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// csv or jsonl.
    #[arg(long, value_enum, default_value = "csv")]
    format: ExportFormat,
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
        AuditCommand::Verify(args) => {
            let checkpoints = match (&args.checkpoints, &args.public_key) {
                (Some(source), Some(key)) => {
                    Some((CheckpointSource::parse(ctx, source)?, read_public_key(key)?))
                }
                _ => None,
            };
            match (ctx.database_location()?, checkpoints) {
                (Some(_), Some((CheckpointSource::Api, _))) => Err(over_https_only()),
                (Some(location), Some((CheckpointSource::Dir(dir), key))) => {
                    verify_on_database(ctx, &location, Some(&(dir, key))).await
                }
                (Some(location), None) => verify_on_database(ctx, &location, None).await,
                (None, None) => verify(ctx).await,
                (None, Some((source, key))) => {
                    verify_export_with_checkpoints(ctx, &source, &key).await
                }
            }
        }
        AuditCommand::Export(args) => export(ctx, args).await,
        AuditCommand::Checkpoint => checkpoint(ctx).await,
        AuditCommand::PublicKey(args) => public_key(ctx, args),
        AuditCommand::Erase(args) => erase(ctx, args).await,
        AuditCommand::Prune => match ctx.database_location()? {
            Some(location) => prune_on_database(ctx, &location).await,
            None => Err(Failure::usage(
                "audit prune runs on the database: give --data-dir or --database-url",
            )),
        },
    }
}

/// Where `audit verify --checkpoints` reads checkpoints from.
enum CheckpointSource {
    /// fleetd's push directory.
    Dir(PathBuf),
    /// `GET /v1/audit-checkpoints` of --server.
    Api,
}

impl CheckpointSource {
    fn parse(ctx: &Ctx, text: &str) -> Result<Self, Failure> {
        if !(text.starts_with("https://") || text.starts_with("http://")) {
            return Ok(Self::Dir(PathBuf::from(text)));
        }
        if ctx.database_location()?.is_some() {
            return Err(over_https_only());
        }
        let url = reqwest::Url::parse(text)
            .map_err(|e| Failure::usage(format!("--checkpoints {text}: {e}")))?;
        let server = ctx.server();
        if url.origin() != server.origin()
            || url.path().trim_end_matches('/') != "/v1/audit-checkpoints"
        {
            let expected = server
                .join("v1/audit-checkpoints")
                .map_or_else(|_| "v1/audit-checkpoints".to_owned(), String::from);
            return Err(Failure::usage(format!(
                "--checkpoints {text}: a URL must be {expected} (of --server)"
            )));
        }
        Ok(Self::Api)
    }
}

fn over_https_only() -> Failure {
    Failure::usage(
        "--checkpoints URL applies over HTTPS; on the database give the checkpoint directory",
    )
}

fn read_public_key(path: &Path) -> Result<PublicKey, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("--public-key {}: {e}", path.display())))?;
    PublicKey::parse(&text)
        .map_err(|e| Failure::usage(format!("--public-key {}: {e}", path.display())))
}

/// Over HTTPS: the key's tenant chain as a JSON Lines export, checked here against the
/// checkpoint files and the pinned key (not against what the server says of itself).
async fn verify_export_with_checkpoints(
    ctx: &Ctx,
    source: &CheckpointSource,
    key: &PublicKey,
) -> Result<(), Failure> {
    let api = ctx.api("audit verify").await.map_err(|f| {
        f.hint_without_key(
            "to verify every tenant on the database, give --data-dir or --database-url",
        )
    })?;
    let mut body = Vec::new();
    api.download("v1/audit-events.jsonl", &[], &mut body)
        .await?;
    let text = String::from_utf8(body)
        .map_err(|_| Failure::new(Exit::Refused, "audit-export", "the export is not UTF-8"))?;
    let export = audit::parse_jsonl(&text)?;
    let Some(tenant) = export.events.first().map(|e| e.tenant_id) else {
        return Err(Failure::new(
            Exit::Refused,
            "audit-export",
            "the export holds no events",
        ));
    };
    let checkpoints = match source {
        CheckpointSource::Dir(dir) => audit_checkpoints::read_dir(dir, tenant)?,
        CheckpointSource::Api => {
            let every = http::Paging {
                limit: None,
                cursor: None,
            };
            let page = api.list("v1/audit-checkpoints", &[], &every).await?;
            page.items
                .into_iter()
                .map(|item| {
                    let doc: CheckpointDocument = http::decode(item)?;
                    Ok(Checkpoint::try_from(doc)?)
                })
                .collect::<Result<Vec<_>, Failure>>()?
        }
    };
    let count = checkpoints.len();
    let verdict = match CheckpointVerifier::new(tenant, checkpoints, key) {
        Ok(mut verifier) => audit::verify_exported(export.events, &mut verifier),
        Err((seq, reason)) => ChainVerdict::Broken { seq, reason },
    };
    report_verdicts(
        ctx,
        &[(tenant.to_string(), "-".to_owned(), verdict, Some(count))],
    )
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

async fn verify_on_database(
    ctx: &Ctx,
    location: &Location,
    checkpoints: Option<&(PathBuf, PublicKey)>,
) -> Result<(), Failure> {
    let database = db::open(location).await?;
    let outcome = async {
        let chosen = match ctx.tenant() {
            Some(wanted) => vec![db::find_tenant(&database, wanted).await?],
            None => database.admin()?.list_tenants().await?,
        };
        let mut verdicts = Vec::new();
        for tenant in chosen {
            let mut tx = database.app.begin(tenant.id).await?;
            let (verdict, count) = match checkpoints {
                None => (audit::verify(&mut tx).await?, None),
                Some((dir, key)) => {
                    let found = audit_checkpoints::read_dir(dir, tenant.id)?;
                    let count = found.len();
                    (
                        audit::verify_with_checkpoints(&mut tx, found, key).await?,
                        Some(count),
                    )
                }
            };
            tx.rollback().await?;
            verdicts.push((tenant.id.to_string(), tenant.name, verdict, count));
        }
        Ok::<_, Failure>(verdicts)
    }
    .await;
    let closed = db::close(database).await;
    let verdicts = outcome?;
    closed?;
    report_verdicts(ctx, &verdicts)
}

/// Shows (tenant id, name, verdict, checkpoints checked) rows; exits 1 naming the first bad seq
/// when any chain is broken.
fn report_verdicts(
    ctx: &Ctx,
    verdicts: &[(String, String, ChainVerdict, Option<usize>)],
) -> Result<(), Failure> {
    let items: Vec<Value> = verdicts
        .iter()
        .map(|(id, name, verdict, checkpoints)| {
            let mut item = match verdict {
                ChainVerdict::Intact { events } => json!({
                    "tenant_id": id, "name": name, "status": "intact", "events": events,
                }),
                ChainVerdict::Broken { seq, reason } => json!({
                    "tenant_id": id, "name": name, "status": "broken", "seq": seq,
                    "reason": reason.as_str(), "description": reason.describe(),
                }),
            };
            if let Some(count) = checkpoints {
                item["checkpoints"] = json!(count);
            }
            item
        })
        .collect();
    show(ctx, &json!({ "items": items }), || {
        let mut table = Table::new(&["TENANT", "NAME", "CHAIN", "EVENTS", "BROKEN AT", "REASON"]);
        for (id, name, verdict, _) in verdicts {
            let (status, events, seq, reason) = match verdict {
                ChainVerdict::Intact { events } => {
                    ("intact", events.to_string(), "-".into(), "-".into())
                }
                ChainVerdict::Broken { seq, reason } => (
                    "broken",
                    "-".into(),
                    seq.to_string(),
                    format!("{} ({})", reason.describe(), reason.as_str()),
                ),
            };
            table.row(vec![
                id.clone(),
                name.clone(),
                status.to_owned(),
                events,
                seq,
                reason,
            ]);
        }
        Ok(table.render())
    })?;
    let broken: Vec<_> = verdicts
        .iter()
        .filter_map(|(id, _, v, _)| match v {
            ChainVerdict::Broken { seq, reason } => Some((id, *seq, *reason)),
            ChainVerdict::Intact { .. } => None,
        })
        .collect();
    if let Some((id, seq, reason)) = broken.first() {
        return Err(Failure::new(
            Exit::Refused,
            "audit-chain-broken",
            format!(
                "{} of {} audit chains are broken; first: tenant {id} at seq {seq}: {}",
                broken.len(),
                verdicts.len(),
                reason.as_str()
            ),
        ));
    }
    Ok(())
}

async fn erase(ctx: &Ctx, args: EraseArgs) -> Result<(), Failure> {
    let api = ctx.api("audit erase").await?;
    let path = format!("v1/audit-events/{}/erase", args.seq);
    let value = api.post(&path, &json!({ "reason": args.reason })).await?;
    show(ctx, &value, || {
        let mut table = Table::new(&["SEQ", "ACTION", "TARGET", "ACTOR"]);
        table.row(vec![
            value["seq"].to_string(),
            value["action"].as_str().unwrap_or("-").to_owned(),
            value["target"].as_str().unwrap_or("-").to_owned(),
            value["actor"].as_str().unwrap_or("-").to_owned(),
        ]);
        Ok(table.render())
    })
}

async fn prune_on_database(ctx: &Ctx, location: &Location) -> Result<(), Failure> {
    let actor = db::operator()?;
    let database = db::open(location).await?;
    let outcome = async {
        let chosen = match ctx.tenant() {
            Some(wanted) => vec![db::find_tenant(&database, wanted).await?],
            None => database.admin()?.list_tenants().await?,
        };
        let mut rows = Vec::new();
        for tenant in chosen {
            let mut tx = database.app.begin(tenant.id).await?;
            let pruned = audit::prune(&mut tx, &actor).await?;
            tx.commit().await?;
            rows.push((tenant, pruned));
        }
        Ok::<_, Failure>(rows)
    }
    .await;
    let closed = db::close(database).await;
    let rows = outcome?;
    closed?;
    let items: Vec<Value> = rows
        .iter()
        .map(|(tenant, pruned)| {
            json!({
                "tenant_id": tenant.id.to_string(), "name": tenant.name,
                "anchor_seq": pruned.anchor_seq, "deleted": pruned.deleted,
                "event_seq": pruned.event_seq,
            })
        })
        .collect();
    let value = json!({ "items": items });
    show(ctx, &value, || {
        let mut table = Table::new(&["TENANT", "NAME", "DELETED", "ANCHOR SEQ"]);
        for (tenant, pruned) in &rows {
            table.row(vec![
                tenant.id.to_string(),
                tenant.name.clone(),
                pruned.deleted.to_string(),
                pruned.anchor_seq.to_string(),
            ]);
        }
        Ok(table.render())
    })
}

async fn checkpoint(ctx: &Ctx) -> Result<(), Failure> {
    let api = ctx.api("audit checkpoint").await?;
    let value = api.post("v1/audit-checkpoints", &json!({})).await?;
    show(ctx, &value, || {
        let mut table = Table::new(&["FIRST SEQ", "SEQ", "CREATED", "KEY"]);
        table.row(vec![
            value["first_seq"].to_string(),
            value["seq"].to_string(),
            value["created_at"].as_str().unwrap_or("-").to_owned(),
            value["key_fingerprint"].as_str().unwrap_or("-").to_owned(),
        ]);
        Ok(table.render())
    })
}

fn public_key(ctx: &Ctx, args: PublicKeyArgs) -> Result<(), Failure> {
    let path = match args.key {
        Some(path) => path,
        None => match ctx.database_location()? {
            Some(Location::DataDir(dir)) => dir.join("audit-checkpoint.key"),
            _ => PathBuf::from(db::DEFAULT_DATA_DIR).join("audit-checkpoint.key"),
        },
    };
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(&path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?,
    );
    let seed: &[u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| Failure::usage(format!("{} must hold exactly 32 bytes", path.display())))?;
    let public = CheckpointKey::from_seed(seed)?.public_key();
    if ctx.json() {
        let value = json!({ "pem": public.to_pem(), "raw": hex::encode(public.0), "fingerprint": public.fingerprint() });
        println!("{value}");
    } else {
        print!("{}", public.to_pem());
    }
    Ok(())
}

async fn export(ctx: &Ctx, args: ExportArgs) -> Result<(), Failure> {
    if ctx.json() {
        return Err(Failure::usage(
            "audit export writes CSV or JSON Lines (--format); --json does not apply",
        ));
    }
    let route = match args.format {
        ExportFormat::Csv => "v1/audit-events.csv",
        ExportFormat::Jsonl if args.since.is_some() || args.until.is_some() => {
            return Err(Failure::usage(
                "--format jsonl exports the whole chain; --since and --until apply to csv",
            ))
        }
        ExportFormat::Jsonl => "v1/audit-events.jsonl",
    };
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
            api.download(route, &query, &mut stdout).await?;
            Ok(())
        }
        Some(path) => {
            let mut file = temp_beside(path)?;
            let bytes = api.download(route, &query, file.as_file_mut()).await?;
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
