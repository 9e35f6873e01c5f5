//! `fleetctl api-key`: API keys over HTTPS, and the break-glass owner key on the database for an
//! owner locked out of the API.

use std::time::Duration;

use clap::{Args, Subcommand};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use store::api_keys::{self, KeyEnv};
use store::ApiKeyId;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{get_one, group, more_notice, revoke, show, Ctx, Lifecycle, ListArgs};
use crate::db::{self, Location};
use crate::error::Failure;
use crate::http;
use crate::output::{self, Fields, Table};
use crate::parse;

/// `fleetctl api-key ...`.
#[derive(Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key; prints it this once (it is stored only as a hash).
    ///
    /// Over HTTPS, for the caller's tenant, never above the caller's own role. With --data-dir
    /// or --database-url it is the break-glass path for an owner locked out of the API: an
    /// unrestricted owner key for --tenant, written on the database and audited as
    /// api_key.break_glass_create.
    Create(CreateArgs),
    /// List the tenant's keys (never their secrets).
    List(ListArgs),
    /// Show one key.
    Show {
        /// The key's id (the third part of the key, shown by `list`).
        id: ApiKeyId,
    },
    /// Revoke a key: it is refused from its next request on.
    Revoke {
        /// The key's id.
        id: ApiKeyId,
    },
}

/// `fleetctl api-key create`.
#[derive(Args)]
pub struct CreateArgs {
    /// Display name (required over HTTPS).
    #[arg(long)]
    name: Option<String>,
    /// What the key may do.
    #[arg(long, value_parser = ["owner", "admin", "operator", "auditor"])]
    role: String,
    /// Limit the key to this device group, by id or name (repeatable; default: every group).
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// When the key stops working, as a duration from now (e.g. 90d; default: never).
    #[arg(long, value_parser = parse::duration, conflicts_with = "expires_at")]
    expires_in: Option<Duration>,
    /// When the key stops working, as an RFC 3339 time.
    #[arg(long, value_parser = parse::moment)]
    expires_at: Option<OffsetDateTime>,
    /// Network the key may be used from (repeatable; default: anywhere).
    #[arg(long = "cidr", value_name = "CIDR")]
    cidrs: Vec<IpNet>,
    /// Browser origin allowed to use the key, e.g. https://console.example.com (repeatable).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// Write the key to this new file (mode 0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    key_file: Option<std::path::PathBuf>,
}

/// An API key as the API shows it.
#[derive(Deserialize)]
struct KeyView {
    id: String,
    name: String,
    role: String,
    state: String,
    group_ids: Option<Vec<Uuid>>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    expires_at: Option<OffsetDateTime>,
    allowed_cidrs: Option<Vec<String>>,
    cors_origins: Option<Vec<String>>,
    #[serde(flatten)]
    lifecycle: Lifecycle,
    last_used_ip: Option<String>,
    /// Only in the answer to a creation.
    key: Option<String>,
}

const SHOWN_ONCE: &str = "The key is shown this once and cannot be recovered: store it now.";

/// Runs `fleetctl api-key ...`.
pub async fn run(ctx: &Ctx, command: ApiKeyCommand) -> Result<(), Failure> {
    match command {
        ApiKeyCommand::Create(args) => match ctx.database_location()? {
            Some(location) => break_glass(ctx, &location, args).await,
            None => create(ctx, args).await,
        },
        ApiKeyCommand::List(args) => {
            let api = ctx.api("api-key list").await?;
            let page = api.list("v1/api-keys", &[], &args.paging()).await?;
            show(ctx, &page, || {
                let mut table = Table::new(&[
                    "ID",
                    "NAME",
                    "ROLE",
                    "STATE",
                    "GROUPS",
                    "EXPIRES",
                    "LAST USED",
                ]);
                for item in &page.items {
                    let k: KeyView = http::decode(item.clone())?;
                    table.row(vec![
                        k.id,
                        k.name,
                        k.role,
                        k.state,
                        k.group_ids
                            .map_or_else(|| "all".to_owned(), |ids| ids.len().to_string()),
                        output::opt_time(k.expires_at),
                        output::opt_time(k.lifecycle.last_used_at),
                    ]);
                }
                more_notice(page.next_cursor.as_deref());
                Ok(table.render())
            })
        }
        ApiKeyCommand::Show { id } => render(
            ctx,
            get_one(ctx, "api-key show", &format!("v1/api-keys/{id}")).await?,
        ),
        ApiKeyCommand::Revoke { id } => {
            let path = format!("v1/api-keys/{id}");
            revoke(ctx, "api-key revoke", &path, "api key", id.as_str()).await
        }
    }
}

async fn create(ctx: &Ctx, args: CreateArgs) -> Result<(), Failure> {
    // The key first: someone after the break-glass path who forgot --data-dir learns that
    // rather than that --name is missing.
    let key_file = output::SecretFile::create(args.key_file.as_deref())?;
    let api = ctx.api("api-key create").await.map_err(|f| {
        f.hint_without_key(
            "for a break-glass owner key on the database, give --data-dir or --database-url",
        )
    })?;
    let name = args.name.ok_or_else(|| {
        Failure::usage("--name is required: it is how the key is recognised in listings")
    })?;
    let mut body = Map::new();
    body.insert("name".into(), json!(name));
    body.insert("role".into(), json!(args.role));
    if !args.groups.is_empty() {
        let mut ids = Vec::new();
        for g in &args.groups {
            ids.push(group::resolve(&api, g).await?.id);
        }
        body.insert("group_ids".into(), json!(ids));
    }
    let expires_at = match (args.expires_in, args.expires_at) {
        (Some(d), _) => {
            Some(parse::from_now(d).map_err(|e| Failure::usage(format!("--expires-in: {e}")))?)
        }
        (None, Some(at)) => Some(parse::api_time(at)),
        (None, None) => None,
    };
    if let Some(at) = expires_at {
        body.insert("expires_at".into(), json!(at));
    }
    if !args.cidrs.is_empty() {
        let cidrs: Vec<String> = args.cidrs.iter().map(ToString::to_string).collect();
        body.insert("allowed_cidrs".into(), json!(cidrs));
    }
    if !args.cors_origins.is_empty() {
        body.insert("cors_origins".into(), json!(args.cors_origins));
    }
    let mut value = api.post("v1/api-keys", &Value::Object(body)).await?;
    output::stash_secret(&mut value, "key", key_file)?;
    render(ctx, value)?;
    output::notice(SHOWN_ONCE);
    Ok(())
}

/// An owner key written on the database: for an owner who cannot reach the API with any key.
async fn break_glass(ctx: &Ctx, location: &Location, args: CreateArgs) -> Result<(), Failure> {
    if args.role != "owner" {
        return Err(Failure::usage(
            "on the database only owner keys are created (break-glass); create other roles over the API",
        ));
    }
    if !args.groups.is_empty()
        || args.expires_in.is_some()
        || args.expires_at.is_some()
        || !args.cidrs.is_empty()
        || !args.cors_origins.is_empty()
    {
        return Err(Failure::usage(
            "a break-glass key is an unrestricted owner key: --group, --expires-in, --expires-at, \
             --cidr and --cors-origin apply over the API only",
        ));
    }
    let wanted = ctx.tenant().ok_or_else(|| {
        Failure::usage("--tenant ID_OR_NAME is required on the database: which tenant's owner key")
    })?;
    let name = args
        .name
        .unwrap_or_else(|| "break-glass owner key".to_owned());
    let actor = db::operator()?;
    let key_file = output::SecretFile::create(args.key_file.as_deref())?;
    let database = db::open(location).await?;
    let outcome = async {
        let tenant = db::find_tenant(&database, wanted).await?;
        let mut tx = database.app.begin(tenant.id).await?;
        let issued = api_keys::create_break_glass(&mut tx, &name, &KeyEnv::live(), &actor).await?;
        tx.commit().await?;
        let k = &issued.key;
        let mut value = json!({
            "tenant_id": tenant.id,
            "id": k.id.as_str(),
            "name": k.name,
            "role": k.role.as_str(),
            "state": "active",
            "group_ids": null,
            "expires_at": null,
            "allowed_cidrs": null,
            "cors_origins": null,
            "created_at": crate::parse::api_time(k.created_at),
            "created_by": k.created_by,
            "revoked_at": null,
            "revoked_by": null,
            "last_used_at": null,
            "last_used_ip": null,
            "key": issued.secret.expose(),
        });
        // The key exists only in this process now: print it before anything else can fail.
        output::stash_secret(&mut value, "key", key_file)?;
        render(ctx, value)?;
        output::notice(SHOWN_ONCE);
        Ok::<(), Failure>(())
    }
    .await;
    let closed = db::close(database).await;
    outcome.and(closed)
}

fn render(ctx: &Ctx, value: Value) -> Result<(), Failure> {
    show(ctx, &value.clone(), || {
        let k: KeyView = http::decode(value)?;
        let mut fields = Fields::new();
        fields
            .field("id", k.id)
            .field("name", k.name)
            .field("role", k.role)
            .field("state", k.state)
            .field(
                "groups",
                k.group_ids
                    .map_or_else(|| "all".to_owned(), |ids| output::list(&ids)),
            )
            .field(
                "expires",
                k.expires_at
                    .map_or_else(|| "never".to_owned(), output::time),
            )
            .field(
                "allowed from",
                k.allowed_cidrs
                    .map_or_else(|| "anywhere".to_owned(), |c| output::list(&c)),
            )
            .field(
                "cors origins",
                k.cors_origins
                    .map_or_else(|| "none".to_owned(), |o| output::list(&o)),
            )
            .field("created", output::opt_time(k.lifecycle.created_at))
            .field("created by", output::opt(k.lifecycle.created_by))
            .field("last used", output::opt_time(k.lifecycle.last_used_at))
            .field("last used from", output::opt(k.last_used_ip))
            .field("revoked", output::opt_time(k.lifecycle.revoked_at))
            .field("revoked by", output::opt(k.lifecycle.revoked_by));
        if let Some(key) = k.key {
            fields.field("key", key);
        }
        Ok(fields.render())
    })
}
