//! `fleetctl db`: the database's schema. Migrations run here and at fleetd's start, never as a
//! side effect of another command (which refuses a schema other than its own, exit 6).

use clap::Subcommand;
use serde_json::json;
use store::Purpose;

use super::{show, Ctx};
use crate::db;
use crate::error::Failure;

/// `fleetctl db ...`.
#[derive(Subcommand)]
pub enum DbCommand {
    /// Apply the migrations this fleetctl carries that the database lacks (on the database, as
    /// fleetd does at start). Refuses a database migrated by a newer release.
    Migrate,
}

/// Runs `fleetctl db ...`.
pub async fn run(ctx: &Ctx, command: DbCommand) -> Result<(), Failure> {
    match command {
        DbCommand::Migrate => migrate(ctx).await,
    }
}

async fn migrate(ctx: &Ctx) -> Result<(), Failure> {
    ctx.refuse_tenant("db migrate")?;
    let database = db::open_as(&ctx.bootstrap_location()?, Purpose::Migrate).await?;
    let version = async { database.admin()?.schema_version().await }.await;
    db::close(database).await?;
    let version = version?.found;
    show(ctx, &json!({ "schema_version": version }), || {
        Ok(format!("database schema is at version {version}\n"))
    })
}
