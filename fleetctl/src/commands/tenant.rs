//! `fleetctl tenant`: create and list tenants on the database (bootstrap), show and change the
//! API key's own tenant over HTTPS.

use clap::{ArgGroup, Subcommand};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use store::api_keys::KeyEnv;
use store::{tenants, StoreError};
use time::OffsetDateTime;

use super::{get_one, show, Ctx};
use crate::db;
use crate::error::{Exit, Failure};
use crate::http;
use crate::output::{self, Fields, Table};

/// `fleetctl tenant ...`.
#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant, its audit chain and its first owner key (on the database). Prints the
    /// tenant id and the owner key; the key is shown this once and cannot be recovered.
    Create {
        /// Display name, unique in this installation (ignoring case).
        name: String,
        /// Write the owner key to this new file (mode 0600) instead of printing it; give it to
        /// fleetctl with --api-key-file.
        #[arg(long, value_name = "FILE")]
        key_file: Option<std::path::PathBuf>,
    },
    /// List every tenant (on the database).
    List,
    /// Show the API key's tenant and its settings.
    Show,
    /// Change the API key's tenant's settings (owner only).
    #[command(group(ArgGroup::new("change").required(true).multiple(true)))]
    Set {
        /// A new display name.
        #[arg(long, group = "change")]
        name: Option<String>,
        /// How long telemetry and other records are kept, in days (1 to 3650).
        #[arg(long, value_name = "DAYS", group = "change")]
        record_retention_days: Option<u32>,
        /// The most devices connected at once on one gateway (1 to 10,000,000); further
        /// devices are refused until one disconnects.
        #[arg(long, value_name = "COUNT", group = "change")]
        max_device_connections: Option<u32>,
        /// Forward the tenant's audit trail to the installation's SIEM collector (`on`/`off`).
        #[arg(long, value_name = "on|off", group = "change", value_parser = parse_on_off)]
        siem_forwarding: Option<bool>,
        /// How long audit events are kept, in days (30 to 36500; 365 by default); older ones
        /// are removed only behind a signed checkpoint (`fleetctl audit prune`).
        #[arg(long, value_name = "DAYS", group = "change")]
        audit_retention_days: Option<u32>,
    },
}

/// A tenant as the API shows it.
#[derive(Deserialize)]
struct TenantView {
    id: String,
    name: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    record_retention_days: Option<i64>,
    max_device_connections: Option<i64>,
    siem_forwarding: Option<bool>,
    audit_retention_days: Option<i64>,
}

/// Runs `fleetctl tenant ...`.
pub async fn run(ctx: &Ctx, command: TenantCommand) -> Result<(), Failure> {
    match command {
        TenantCommand::Create { name, key_file } => create(ctx, &name, key_file.as_deref()).await,
        TenantCommand::List => list(ctx).await,
        TenantCommand::Show => render(ctx, get_one(ctx, "tenant show", "v1/tenant").await?),
        TenantCommand::Set {
            name,
            record_retention_days,
            max_device_connections,
            siem_forwarding,
            audit_retention_days,
        } => {
            let api = ctx.api("tenant set").await?;
            let mut body = Map::new();
            if let Some(name) = name {
                body.insert("name".into(), Value::String(name));
            }
            if let Some(days) = record_retention_days {
                body.insert("record_retention_days".into(), json!(days));
            }
            if let Some(quota) = max_device_connections {
                body.insert("max_device_connections".into(), json!(quota));
            }
            if let Some(on) = siem_forwarding {
                body.insert("siem_forwarding".into(), json!(on));
            }
            if let Some(days) = audit_retention_days {
                body.insert("audit_retention_days".into(), json!(days));
            }
            let value = api.patch("v1/tenant", &Value::Object(body)).await?;
            render(ctx, value)
        }
    }
}

fn render(ctx: &Ctx, value: Value) -> Result<(), Failure> {
    show(ctx, &value.clone(), || {
        let t: TenantView = http::decode(value)?;
        let mut fields = Fields::new();
        fields
            .field("id", t.id)
            .field("name", t.name)
            .field("created", output::time(t.created_at))
            .field(
                "record retention",
                t.record_retention_days
                    .map_or_else(|| "-".to_owned(), |d| format!("{d} days")),
            )
            .field(
                "max device connections",
                t.max_device_connections
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            )
            .field(
                "siem forwarding",
                match t.siem_forwarding {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "-",
                },
            )
            .field(
                "audit retention",
                t.audit_retention_days
                    .map_or_else(|| "-".to_owned(), |d| format!("{d} days")),
            );
        Ok(fields.render())
    })
}

async fn create(ctx: &Ctx, name: &str, key_file: Option<&std::path::Path>) -> Result<(), Failure> {
    ctx.refuse_tenant("tenant create")?;
    let actor = db::operator()?;
    let key_file = output::SecretFile::create(key_file)?;
    let database = db::open(&ctx.bootstrap_location()?).await?;
    let created =
        tenants::create_with_owner_key(&database.app, name, &KeyEnv::live(), &actor).await;
    // The key exists only in this process now: print it before anything else can fail.
    let printed = match created {
        Ok((tenant, key)) => print_created(ctx, &tenant, key.secret.expose(), key_file),
        Err(StoreError::Conflict(_)) => Err(Failure::new(
            Exit::Refused,
            "conflict",
            format!("a tenant named {name:?} exists already (names are unique, ignoring case)"),
        )),
        Err(e) => Err(e.into()),
    };
    let closed = db::close(database).await;
    printed.and(closed)
}

fn print_created(
    ctx: &Ctx,
    tenant: &tenants::Tenant,
    secret: &str,
    key_file: Option<output::SecretFile>,
) -> Result<(), Failure> {
    let mut value = json!({ "tenant_id": tenant.id, "owner_key": secret });
    output::stash_secret(&mut value, "owner_key", key_file)?;
    let shown = value["owner_key"].as_str().unwrap_or_default().to_owned();
    show(ctx, &value, || {
        Ok(format!("tenant {}\nowner key {shown}\n", tenant.id))
    })?;
    output::notice(
        "The owner key is shown this once and cannot be recovered: store it now (a password \
         manager, a secret store), then give it to fleetctl with FLEETCTL_API_KEY or --api-key-file.",
    );
    Ok(())
}

async fn list(ctx: &Ctx) -> Result<(), Failure> {
    ctx.refuse_tenant("tenant list")?;
    let database = db::open(&ctx.bootstrap_location()?).await?;
    let listed = async { database.admin()?.list_tenants().await }.await;
    db::close(database).await?;
    let tenants = listed?;
    let items: Vec<Value> = tenants
        .iter()
        .map(|t| {
            json!({
                "id": t.id,
                "name": t.name,
                "created_at": crate::parse::api_time(t.created_at),
            })
        })
        .collect();
    show(ctx, &json!({ "items": items, "next_cursor": null }), || {
        let mut table = Table::new(&["ID", "NAME", "CREATED"]);
        for t in &tenants {
            table.row(vec![
                t.id.to_string(),
                t.name.clone(),
                output::time(t.created_at),
            ]);
        }
        Ok(table.render())
    })
}

/// `on` or `off` (also `true`/`false`), as the flag's help says.
fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        other => Err(format!("expected on or off, not {other:?}")),
    }
}

#[cfg(test)]
mod siem_flag_tests {
    use super::parse_on_off;

    #[test]
    fn the_siem_flag_takes_on_or_off() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("off"), Ok(false));
        assert!(parse_on_off("yes").unwrap_err().contains("on or off"));
    }
}
