//! The command line: global options and the command tree. Each command's own arguments live
//! with its code in [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use reqwest::Url;

use crate::commands::{
    api_key, audit, backup, database, device, enrollment_token, group, patch, pki, report, tenant,
    user,
};

/// The heading of the options every command takes.
const GLOBAL: &str = "Global options";

/// What `fleetctl --help` ends with: the exit codes scripts can rely on.
pub const AFTER_HELP: &str = "\
Where commands go:
  Over HTTPS to the management API (--server), authenticated with an API key from
  FLEETCTL_API_KEY or --api-key-file: every command except those below.
  On the database (--data-dir or --database-url, for bootstrap and break-glass):
  db migrate, tenant create, tenant list, user reset-mfa|set-password|create-owner,
  backup create|verify|restore (backup keygen works locally),
  and api-key create / audit verify when
  --data-dir, --database-url or --database-url-file (or FLEETD_DATA_DIR,
  FLEETD_DATABASE_URL, FLEETD_DATABASE_URL_FILE) is given. A URL with a password belongs
  in the file or the environment: arguments are visible to every local user.
  They never migrate the database: fleetd does at start, and fleetctl db migrate.

Exit codes:
  0  success
  1  refused by the server or the database (a 4xx other than those below, a conflict,
     an invalid value), a verification failed (a broken audit chain), or the output
     could not be written
  2  usage error (the command line)
  3  not found (HTTP 404, or an unknown --tenant)
  4  authentication or permission (HTTP 401/403, no or a malformed API key)
  5  cannot reach the server or the database, or it failed (HTTP 5xx, TLS, timeout)
  6  the database's schema is not this fleetctl's (older: run fleetctl db migrate;
     newer: use the fleetctl of the release that migrated it)
Errors are one line on stderr: fleetctl: <detail> (<problem type>)";

/// fleetplane operator CLI: tenants, API keys, enrollment tokens, device groups, devices,
/// patch status and the audit trail of a fleetd.
#[derive(Parser)]
#[command(name = "fleetctl", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Args, Clone, Debug)]
pub struct Global {
    /// The management API.
    #[arg(
        long,
        env = "FLEETCTL_SERVER",
        default_value = "https://localhost:8443",
        value_name = "URL",
        value_parser = crate::http::parse_server,
        global = true,
        hide_env_values = true,
        help_heading = GLOBAL
    )]
    pub server: Url,
    /// The fleet root CA (PEM) to trust for --server, e.g. fleetd's <data_dir>/pki/root-ca.pem.
    /// Without it the system's root certificates are trusted.
    #[arg(long, env = "FLEETCTL_CA", value_name = "FILE", global = true, hide_env_values = true, help_heading = GLOBAL)]
    pub ca: Option<PathBuf>,
    /// A file holding the API key (default: the FLEETCTL_API_KEY environment variable). The key
    /// itself is never an argument: arguments show in `ps` and shell history.
    #[arg(long, env = "FLEETCTL_API_KEY_FILE", value_name = "FILE", global = true, help_heading = GLOBAL)]
    pub api_key_file: Option<PathBuf>,
    /// Print JSON (the API's) instead of tables, for scripts.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
    /// The tenant, by id or by name. On the database: the tenant to act on. Over HTTPS the API
    /// key decides the tenant; with --tenant, fleetctl first checks that it is this one.
    #[arg(long, value_name = "ID_OR_NAME", global = true, help_heading = GLOBAL)]
    pub tenant: Option<String>,
    /// fleetd's data directory, whose database cluster to use [env: FLEETD_DATA_DIR] [default
    /// for bootstrap: fleetd-data, as fleetd's]. Relative paths are resolved against the current
    /// directory. fleetctl never creates a database: the directory must be fleetd's.
    #[arg(long, value_name = "DIR", global = true, help_heading = GLOBAL)]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL of the owner role, instead of the private cluster of --data-dir
    /// [env: FLEETD_DATABASE_URL]. Arguments are visible to every local user (/proc, ps): give
    /// a URL with a password in --database-url-file or the environment instead.
    #[arg(long, value_name = "URL", global = true, help_heading = GLOBAL)]
    pub database_url: Option<SecretArg>,
    /// A file holding the PostgreSQL URL of the owner role (one line)
    /// [env: FLEETD_DATABASE_URL_FILE].
    #[arg(long, value_name = "FILE", global = true, help_heading = GLOBAL)]
    pub database_url_file: Option<PathBuf>,
}

/// An argument that may hold a secret (a database URL with its password): `Debug` hides it, and
/// it parses whatever is given, so clap never quotes it in an error; it is checked afterwards.
#[derive(Clone)]
pub struct SecretArg(String);

impl SecretArg {
    /// The argument as given.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for SecretArg {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretArg(<redacted>)")
    }
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Tenants: create and list them (database); show and change the API key's own (HTTPS).
    #[command(subcommand)]
    Tenant(tenant::TenantCommand),
    /// API keys: how scripts, integrations and fleetctl reach the API.
    #[command(subcommand)]
    ApiKey(api_key::ApiKeyCommand),
    /// Enrollment tokens: what devices exchange for their certificate.
    #[command(subcommand)]
    EnrollmentToken(enrollment_token::TokenCommand),
    /// Device groups.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Devices: listing, details, changes, revocation, health, telemetry and patch status.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Patch status across the fleet: pending security updates, reboots, stale inventories.
    PatchSummary(patch::SummaryArgs),
    /// The audit trail: events, chain verification (with signed checkpoints), signed
    /// checkpoints, CSV and JSON Lines export.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// The fleet PKI.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// The database's schema: apply migrations (on the database).
    #[command(subcommand)]
    Db(database::DbCommand),
    /// Encrypted backups of the database: keygen, create, verify (by restoring into a scratch
    /// database), restore.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// People, break-glass on the database: reset a user's TOTP, set a password, create an
    /// owner.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Reports from fleetd's own records: the compliance evidence report (HTML, PDF, JSON).
    #[command(subcommand)]
    Report(report::ReportCommand),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
