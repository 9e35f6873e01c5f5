//! The commands, one module per resource, and what they share: the run's [`Ctx`] (which side to
//! talk to, and how) and the list options.

pub mod api_key;
pub mod audit;
pub mod backup;
pub mod database;
pub mod device;
pub mod enrollment_token;
pub mod group;
pub mod patch;
pub mod pki;
pub mod report;
pub mod tenant;
pub mod user;

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;
use store::DatabaseUrl;

use crate::cli::{Command, Global};
use crate::db::{self, Location};
use crate::error::{Exit, Failure};
use crate::http::{self, ApiClient, Paging};

/// Runs one command.
pub async fn run(command: Command, global: Global) -> Result<(), Failure> {
    let ctx = Ctx { global };
    match command {
        Command::Tenant(c) => tenant::run(&ctx, c).await,
        Command::ApiKey(c) => api_key::run(&ctx, c).await,
        Command::EnrollmentToken(c) => enrollment_token::run(&ctx, c).await,
        Command::Group(c) => group::run(&ctx, c).await,
        Command::Device(c) => device::run(&ctx, c).await,
        Command::PatchSummary(args) => patch::summary(&ctx, args).await,
        Command::Audit(c) => audit::run(&ctx, c).await,
        Command::Db(c) => database::run(&ctx, c).await,
        Command::Backup(c) => backup::run(&ctx, c).await,
        Command::Pki(c) => pki::run(&ctx, c),
        Command::Report(c) => report::run(&ctx, c).await,
        Command::User(c) => user::run(&ctx, c).await,
    }
}

/// What every command is given: the global options, and from them the way to the API or to the
/// database.
pub struct Ctx {
    global: Global,
}

impl Ctx {
    /// Whether to print JSON.
    pub fn json(&self) -> bool {
        self.global.json
    }

    /// The `--server` URL.
    pub fn server(&self) -> &reqwest::Url {
        &self.global.server
    }

    /// The `--tenant` value, if given.
    pub fn tenant(&self) -> Option<&str> {
        self.global.tenant.as_deref()
    }

    /// The database, when one is named on the command line or in FLEETD_DATABASE_URL(_FILE) or
    /// FLEETD_DATA_DIR: the commands that exist on both sides (`api-key create`, `audit verify`)
    /// then use it.
    pub fn database_location(&self) -> Result<Option<Location>, Failure> {
        if let Some(url) = self.database_url()? {
            return Ok(Some(Location::Url(url)));
        }
        let dir = self.global.data_dir.clone().or_else(|| {
            std::env::var_os("FLEETD_DATA_DIR")
                .filter(|d| !d.is_empty())
                .map(Into::into)
        });
        Ok(dir.map(Location::DataDir))
    }

    /// The database URL of --database-url, --database-url-file, FLEETD_DATABASE_URL or
    /// FLEETD_DATABASE_URL_FILE (in that order; empty means unset). No error quotes the URL.
    fn database_url(&self) -> Result<Option<DatabaseUrl>, Failure> {
        let from_file = |path: PathBuf, source: &str| -> Result<String, Failure> {
            std::fs::read_to_string(&path)
                .map(|text| text.trim_end().to_owned())
                .map_err(|e| Failure::usage(format!("{source} {}: {e}", path.display())))
        };
        let env_file = std::env::var_os("FLEETD_DATABASE_URL_FILE").filter(|f| !f.is_empty());
        let (text, source) = if let Some(arg) = &self.global.database_url {
            (arg.expose().to_owned(), "--database-url")
        } else if let Some(path) = self.global.database_url_file.clone() {
            (
                from_file(path, "--database-url-file")?,
                "--database-url-file",
            )
        } else if let Some(url) = std::env::var("FLEETD_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        {
            (url, "FLEETD_DATABASE_URL")
        } else if let Some(path) = env_file {
            (
                from_file(path.into(), "FLEETD_DATABASE_URL_FILE")?,
                "FLEETD_DATABASE_URL_FILE",
            )
        } else {
            return Ok(None);
        };
        if text.is_empty() {
            return Ok(None);
        }
        DatabaseUrl::parse(text)
            .map(Some)
            .map_err(|e| Failure::usage(format!("{source}: {e}")))
    }

    /// The database for the bootstrap commands: as named, else fleetd's default data directory.
    /// A relative directory is resolved here, once, against the current directory.
    pub fn bootstrap_location(&self) -> Result<Location, Failure> {
        let location = self
            .database_location()?
            .unwrap_or_else(|| Location::DataDir(db::DEFAULT_DATA_DIR.into()));
        Ok(match location {
            Location::DataDir(dir) => Location::DataDir(
                std::path::absolute(&dir)
                    .map_err(|e| Failure::usage(format!("--data-dir {}: {e}", dir.display())))?,
            ),
            url => url,
        })
    }

    /// Refuses `--tenant` for a command that has no use for it, rather than ignoring it.
    pub fn refuse_tenant(&self, command: &str) -> Result<(), Failure> {
        match self.tenant() {
            Some(_) => Err(Failure::usage(format!(
                "--tenant does not apply to {command}"
            ))),
            None => Ok(()),
        }
    }

    /// A client of the management API. With `--tenant`, checks first that the API key belongs to
    /// that tenant (exit 3 otherwise, as for an unknown tenant on the database).
    pub async fn api(&self, command: &str) -> Result<ApiClient, Failure> {
        if self.global.data_dir.is_some()
            || self.global.database_url.is_some()
            || self.global.database_url_file.is_some()
        {
            return Err(Failure::usage(format!(
                "{command} talks to the API (--server); --data-dir and --database-url apply to \
                 db migrate, tenant create, tenant list, api-key create (break-glass) and audit \
                 verify"
            )));
        }
        let key = http::load_api_key(self.global.api_key_file.as_deref())?;
        let tls = http::tls_config(self.global.ca.as_deref())?;
        let api = ApiClient::new(self.global.server.clone(), tls, &key)?;
        if let Some(wanted) = self.tenant() {
            check_tenant(&api, wanted).await?;
        }
        Ok(api)
    }
}

async fn check_tenant(api: &ApiClient, wanted: &str) -> Result<(), Failure> {
    #[derive(Deserialize)]
    struct Own {
        id: String,
        name: String,
    }
    let own: Own = http::decode(api.get("v1/tenant", &[]).await?)?;
    let matches = match wanted.parse::<uuid::Uuid>() {
        Ok(id) => own.id.parse::<uuid::Uuid>().is_ok_and(|own| own == id),
        Err(_) => own.name.to_lowercase() == wanted.to_lowercase(),
    };
    if matches {
        Ok(())
    } else {
        Err(Failure::new(
            Exit::NotFound,
            "not-found",
            format!("no tenant {wanted:?} for this API key (the key belongs to another tenant)"),
        ))
    }
}

/// When a credential (an API key, an enrollment token) was created, revoked and last used, and
/// by whom, as the API shows it.
#[derive(Deserialize)]
pub struct Lifecycle {
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub created_at: Option<time::OffsetDateTime>,
    pub created_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub revoked_at: Option<time::OffsetDateTime>,
    pub revoked_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_used_at: Option<time::OffsetDateTime>,
}

/// How much of a list to show.
#[derive(Args, Clone, Debug, Default)]
pub struct ListArgs {
    /// Show at most this many (default: all, fetched page by page).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Continue after this cursor (the `next_cursor` of an earlier `--json --limit` listing).
    #[arg(long)]
    pub cursor: Option<String>,
}

impl ListArgs {
    /// The paging these ask for.
    pub fn paging(&self) -> Paging {
        Paging {
            limit: self.limit,
            cursor: self.cursor.clone(),
        }
    }
}

/// Tells the person at the terminal that a listing was cut short, and how to go on.
pub fn more_notice(next_cursor: Option<&str>) {
    if let Some(cursor) = next_cursor {
        crate::output::notice(&format!("(more: --cursor {cursor})"));
    }
}

/// `<noun> show` over HTTPS: the one resource at `path`, as the API answers it.
pub async fn get_one(ctx: &Ctx, command: &str, path: &str) -> Result<serde_json::Value, Failure> {
    ctx.api(command).await?.get(path, &[]).await
}

/// `<noun> revoke` over HTTPS: DELETE `path`, then print the API's answer (`{"id": ...}` when it
/// has no body) as JSON, or "<noun> <id> revoked".
pub async fn revoke(
    ctx: &Ctx,
    command: &str,
    path: &str,
    noun: &str,
    id: &str,
) -> Result<(), Failure> {
    let api = ctx.api(command).await?;
    let value = api.delete(path).await?;
    let value = value.unwrap_or_else(|| serde_json::json!({ "id": id }));
    show(ctx, &value, || Ok(format!("{noun} {id} revoked\n")))
}

/// Prints JSON for scripts, or the rendered text for people.
pub fn show<T: serde::Serialize + ?Sized>(
    ctx: &Ctx,
    json: &T,
    text: impl FnOnce() -> Result<String, Failure>,
) -> Result<(), Failure> {
    if ctx.json() {
        crate::output::emit_json(json)
    } else {
        crate::output::emit(&text()?)
    }
}
