//! The database side, for bootstrap and break-glass only: opening fleetd's database (the private
//! cluster of a data directory, attached to a running fleetd's or started for the command, never
//! created; or a server by URL), naming tenants, and the operator as the audit actor.

use std::path::PathBuf;
use std::time::Duration;

use store::audit::{Actor, OperatorName};
use store::tenants::Tenant;
use store::{Database, DatabaseSettings, DatabaseUrl, Purpose, TenantId};

use crate::error::{Exit, Failure};

/// fleetd's default data directory, resolved the same way (against the current directory).
pub const DEFAULT_DATA_DIR: &str = "fleetd-data";

/// Where the database is.
#[derive(Clone, Debug)]
pub enum Location {
    /// The private cluster of fleetd's data directory (absolute).
    DataDir(PathBuf),
    /// A PostgreSQL server, by the owner role's URL.
    Url(DatabaseUrl),
}

/// Opens the database as a tool: no migrations (a schema other than this build's is refused,
/// exit 6: `fleetctl db migrate` applies them), no chain-head check (so `audit verify` can report
/// the damage), the private cluster attached to or started but never created.
pub async fn open(location: &Location) -> Result<Database, Failure> {
    open_as(location, Purpose::Tool).await
}

/// [`open`] for `purpose`: [`Purpose::Migrate`] for `fleetctl db migrate`.
pub async fn open_as(location: &Location, purpose: Purpose) -> Result<Database, Failure> {
    let (url, data_dir) = match location {
        Location::Url(url) => (Some(url.clone()), PathBuf::from(DEFAULT_DATA_DIR)),
        Location::DataDir(dir) => (None, dir.clone()),
    };
    let settings = DatabaseSettings {
        url,
        data_dir,
        app_password: std::env::var("FLEETD_DATABASE__APP_PASSWORD").ok(),
        postgres_bindir: std::env::var_os("FLEETD_DATABASE__POSTGRES_BINDIR")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from),
        max_connections: 4,
        connect_timeout: Duration::from_secs(10),
    };
    Ok(Database::open(&settings, purpose).await?)
}

/// Closes the database (and stops the private cluster if this process started it).
pub async fn close(db: Database) -> Result<(), Failure> {
    Ok(db.close().await?)
}

/// The tenant named by `text`: its id, or its name when exactly one tenant has it (names are
/// compared ignoring case, as the store keeps them unique). Exit 3 when none matches.
pub async fn find_tenant(db: &Database, text: &str) -> Result<Tenant, Failure> {
    let tenants = db.admin()?.list_tenants().await?;
    if let Ok(id) = text.parse::<TenantId>() {
        return tenants
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| unknown_tenant(text));
    }
    let wanted = text.to_lowercase();
    let mut named: Vec<Tenant> = tenants
        .into_iter()
        .filter(|t| t.name.to_lowercase() == wanted)
        .collect();
    match named.len() {
        0 => Err(unknown_tenant(text)),
        1 => Ok(named.remove(0)),
        // Only possible for tenants created before names were unique.
        n => Err(Failure::new(
            Exit::Refused,
            "ambiguous-tenant",
            format!("{n} tenants are named {text:?}: give the tenant id (fleetctl tenant list)"),
        )),
    }
}

/// The failure for a `--tenant` that names no tenant (exit 3, whichever side was asked).
pub fn unknown_tenant(text: &str) -> Failure {
    Failure::new(
        Exit::NotFound,
        "not-found",
        format!("no tenant {text:?} (give a tenant id or name; fleetctl tenant list shows them)"),
    )
}

/// The audit actor for work done here: the person at the terminal, `$SUDO_USER` (who ran sudo)
/// before `$USER`.
pub fn operator() -> Result<Actor, Failure> {
    let user = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        // Non-interactive shells (cron, containers, CI) often set no USER: ask the system.
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .ok_or_else(|| {
            Failure::usage(
                "cannot tell who is acting (no SUDO_USER, no USER, and the user id has no name): \
                 the audit trail needs to name who acts",
            )
        })?;
    let name = OperatorName::new(&user).map_err(|e| {
        Failure::usage(format!(
            "user name {user:?} cannot name the audit actor: {e}"
        ))
    })?;
    Ok(Actor::Operator(name))
}
