//! PostgreSQL's side of a backup: reaching the database with pg_dump and pg_restore of a
//! version that can read it, the catalog queries (row counts, the application role's
//! privileges), and granting those privileges after a restore.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::PgConnection;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use zeroize::Zeroizing;

use super::{BackupError, Grant};
use crate::{DatabaseUrl, StoreError};

/// How to reach a database as its owner role, from this process and from pg_dump/pg_restore.
/// `Debug` shows no password.
#[derive(Clone)]
pub struct PgAccess {
    pub(crate) options: PgConnectOptions,
    /// The password, for the tools' environment (PGPASSWORD: never their arguments).
    password: Option<Zeroizing<String>>,
    /// Where the PostgreSQL binaries are, when configured.
    bindir: Option<PathBuf>,
}

impl std::fmt::Debug for PgAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAccess")
            .field("host", &self.options.get_host())
            .field("database", &self.options.get_database())
            .finish_non_exhaustive()
    }
}

impl PgAccess {
    pub(crate) fn new(
        options: PgConnectOptions,
        password: Option<Zeroizing<String>>,
        bindir: Option<PathBuf>,
    ) -> Self {
        Self {
            options,
            password,
            bindir,
        }
    }

    /// The database at `url`, as the URL's role; pg_dump and pg_restore from `bindir` when given.
    pub fn from_url(url: &DatabaseUrl, bindir: Option<PathBuf>) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .expose()
            .parse()
            .map_err(|e: sqlx::Error| StoreError::InvalidUrl(e.to_string()))?;
        Ok(Self::new(options, url.password(), bindir))
    }

    /// The same server and role, another database.
    pub(crate) fn for_database(&self, database: &str) -> Self {
        Self {
            options: self.options.clone().database(database),
            ..self.clone()
        }
    }

    /// `program` with libpq's environment pointing at this database (and nothing of the
    /// caller's PG* environment that could point elsewhere).
    pub(crate) fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        for var in [
            "PGHOST",
            "PGHOSTADDR",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGSERVICE",
            "PGSSLMODE",
            "PGOPTIONS",
        ] {
            command.env_remove(var);
        }
        let host = match self.options.get_socket() {
            Some(dir) => dir.display().to_string(),
            None => self.options.get_host().to_owned(),
        };
        command
            .env("PGHOST", host)
            .env("PGPORT", self.options.get_port().to_string())
            .env("PGUSER", self.options.get_username())
            .env(
                "PGDATABASE",
                self.options.get_database().unwrap_or("postgres"),
            )
            .env("PGSSLMODE", ssl_mode(self.options.get_ssl_mode()))
            .env("PGAPPNAME", "fleetctl-backup");
        if let Some(password) = &self.password {
            command.env("PGPASSWORD", password.as_str());
        }
        command
    }
}

fn ssl_mode(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// The server's major version.
pub(crate) async fn server_major(conn: &mut PgConnection) -> Result<u32, BackupError> {
    let num: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(conn)
        .await?;
    Ok((num / 10_000) as u32)
}

/// `name` (pg_dump, pg_restore) of a major version at least the server's: from the configured
/// directory, else Debian's directory of the server's major version, else `pg_config --bindir`,
/// else the search path. An older one cannot read the server's dump format.
pub(crate) async fn find_tool(
    name: &'static str,
    access: &PgAccess,
    server_major: u32,
) -> Result<PathBuf, BackupError> {
    let mut candidates = Vec::new();
    if let Some(dir) = &access.bindir {
        candidates.push(dir.join(name));
    } else {
        candidates.push(PathBuf::from(format!(
            "/usr/lib/postgresql/{server_major}/bin/{name}"
        )));
        if let Ok(out) = Command::new("pg_config")
            .arg("--bindir")
            .stdin(Stdio::null())
            .output()
            .await
        {
            if out.status.success() {
                let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                candidates.push(Path::new(&dir).join(name));
            }
        }
        candidates.push(PathBuf::from(name));
    }
    let mut found = Vec::new();
    for candidate in candidates {
        let Ok(out) = Command::new(&candidate)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
        else {
            continue;
        };
        // "pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"
        let text = String::from_utf8_lossy(&out.stdout);
        let major = text
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse::<u32>().ok());
        match major {
            Some(major) if major >= server_major => return Ok(candidate),
            Some(major) => found.push(format!("{} is {major}", candidate.display())),
            None => {}
        }
    }
    let seen = if found.is_empty() {
        "none found".to_owned()
    } else {
        found.join(", ")
    };
    Err(BackupError::Tool {
        program: name,
        detail: format!(
            "needs version {server_major} or newer (the server's; {seen}): install \
             postgresql-client-{server_major} or set FLEETD_DATABASE__POSTGRES_BINDIR"
        ),
    })
}

/// Rows of every table of schema `public` (partitions, not their parents), by qualified name.
pub(crate) async fn row_counts(
    conn: &mut PgConnection,
) -> Result<BTreeMap<String, i64>, BackupError> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(c.relname) FROM pg_class c
          WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut counts = BTreeMap::new();
    for table in tables {
        // The name is the catalog's, quoted by quote_ident.
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM public.{table}"))
            .fetch_one(&mut *conn)
            .await?;
        counts.insert(table, rows);
    }
    Ok(counts)
}

/// Every privilege the database's application role holds in schema `public`.
pub(crate) async fn app_grants(conn: &mut PgConnection) -> Result<Vec<Grant>, BackupError> {
    let role = crate::app_role(conn).await?;
    let tables: Vec<(String, bool, String)> = sqlx::query_as(
        "SELECT format('public.%I', c.relname), c.relkind = 'S', a.privilege_type
           FROM pg_class c, aclexplode(c.relacl) a
          WHERE c.relnamespace = 'public'::regnamespace
            AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)
          ORDER BY 1, 3",
    )
    .bind(&role)
    .fetch_all(&mut *conn)
    .await?;
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT format('public.%I', c.relname), at.attname::text, a.privilege_type
           FROM pg_attribute at JOIN pg_class c ON c.oid = at.attrelid, aclexplode(at.attacl) a
          WHERE c.relnamespace = 'public'::regnamespace
            AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)
          ORDER BY 1, 2, 3",
    )
    .bind(&role)
    .fetch_all(&mut *conn)
    .await?;
    // A function's ACL is NULL while it has its default, EXECUTE for PUBLIC; the migrations
    // revoke that from the privileged ones. Both are recorded: the restore skips all ACLs.
    let functions: Vec<(String, bool)> = sqlx::query_as(
        "SELECT p.oid::regprocedure::text, a.grantee = 0
           FROM pg_proc p,
                aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
          WHERE p.pronamespace = 'public'::regnamespace AND a.privilege_type = 'EXECUTE'
            AND (a.grantee = 0 OR a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1))
          ORDER BY 1, 2",
    )
    .bind(&role)
    .fetch_all(&mut *conn)
    .await?;
    let mut grants: Vec<Grant> = tables
        .into_iter()
        .map(|(table, sequence, privilege)| match sequence {
            true => Grant::Sequence {
                sequence: table,
                privilege,
            },
            false => Grant::Table { table, privilege },
        })
        .collect();
    grants.extend(
        columns
            .into_iter()
            .map(|(table, column, privilege)| Grant::Column {
                table,
                column,
                privilege,
            }),
    );
    grants.extend(
        functions
            .into_iter()
            .map(|(function, public)| match public {
                true => Grant::PublicFunction { function },
                false => Grant::Function { function },
            }),
    );
    Ok(grants)
}

/// Table, sequence and column privileges a grant may name: nothing else is ever spliced into SQL.
const PRIVILEGES: [&str; 8] = [
    "USAGE",
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
];

/// After a restore: this database's application role (created as migration 0005 creates it,
/// and held to the same limits), `grants` given to it, and the database's CONNECT to it only.
/// Returns the role's name.
pub(crate) async fn grant_to_app_role(
    conn: &mut PgConnection,
    grants: &[Grant],
) -> Result<String, BackupError> {
    let role = crate::app_role(conn).await?;
    let (exists, powerful): (bool, bool) = sqlx::query_as(
        "SELECT count(*) > 0, coalesce(bool_or(rolsuper OR rolbypassrls OR rolcreaterole OR rolcreatedb), false)
           FROM pg_roles WHERE rolname = $1",
    )
    .bind(&role)
    .fetch_one(&mut *conn)
    .await?;
    if powerful {
        return Err(StoreError::AppRoleTooPowerful {
            role,
            reason: "is superuser, BYPASSRLS, CREATEROLE or CREATEDB".into(),
        }
        .into());
    }
    let mut statements = Vec::with_capacity(grants.len() + 5);
    // pg_restore --no-acl leaves every function at its default, EXECUTE for PUBLIC: start from
    // none, then grant what the source granted.
    statements.push("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC".to_owned());
    if !exists {
        statements.push(format_sql(
            conn,
            "SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION', $1::text)",
            &[&role],
        ).await?);
    }
    for grant in grants {
        let statement = match grant {
            Grant::Table { table, privilege } => {
                check_privilege(privilege)?;
                format_sql(
                    conn,
                    "SELECT format('GRANT %s ON TABLE %s TO %I', $1::text, $2::regclass, $3::text)",
                    &[privilege, table, &role],
                )
                .await?
            }
            Grant::Column {
                table,
                column,
                privilege,
            } => {
                check_privilege(privilege)?;
                format_sql(
                    conn,
                    "SELECT format('GRANT %s (%I) ON TABLE %s TO %I', $1::text, $2::text, $3::regclass, $4::text)",
                    &[privilege, column, table, &role],
                )
                .await?
            }
            Grant::Sequence {
                sequence,
                privilege,
            } => {
                check_privilege(privilege)?;
                format_sql(
                    conn,
                    "SELECT format('GRANT %s ON SEQUENCE %s TO %I', $1::text, $2::regclass, $3::text)",
                    &[privilege, sequence, &role],
                )
                .await?
            }
            Grant::Function { function } => format_sql(
                conn,
                "SELECT format('GRANT EXECUTE ON FUNCTION %s TO %I', $1::regprocedure, $2::text)",
                &[function, &role],
            )
            .await?,
            Grant::PublicFunction { function } => {
                format_sql(
                    conn,
                    "SELECT format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', $1::regprocedure)",
                    &[function],
                )
                .await?
            }
        };
        statements.push(statement);
    }
    statements.push(
        format_sql(
            conn,
            "SELECT format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', current_database())",
            &[],
        )
        .await?,
    );
    statements.push(
        format_sql(
            conn,
            "SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), $1::text)",
            &[&role],
        )
        .await?,
    );
    statements.push("REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_owned());
    for statement in statements {
        sqlx::query(&statement).execute(&mut *conn).await?;
    }
    Ok(role)
}

fn check_privilege(privilege: &str) -> Result<(), BackupError> {
    if PRIVILEGES.contains(&privilege) {
        Ok(())
    } else {
        Err(BackupError::Invalid("header's privileges"))
    }
}

/// A statement built by the server's `format()` (identifiers quoted by `%I`, names resolved by
/// `::regclass` / `::regprocedure`, which refuse what does not exist).
async fn format_sql(
    conn: &mut PgConnection,
    query: &str,
    binds: &[&String],
) -> Result<String, BackupError> {
    let mut query = sqlx::query_scalar::<_, String>(query);
    for bind in binds {
        query = query.bind(bind.as_str());
    }
    Ok(query.fetch_one(&mut *conn).await?)
}

pub(crate) fn spawn_failed(program: &'static str, e: std::io::Error) -> BackupError {
    BackupError::Tool {
        program,
        detail: format!("cannot start it: {e}"),
    }
}

pub(crate) fn tool_io(program: &'static str, e: std::io::Error) -> BackupError {
    BackupError::Tool {
        program,
        detail: format!("talking to it: {e}"),
    }
}

pub(crate) fn tool_failed(program: &'static str, status: ExitStatus, stderr: &str) -> BackupError {
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    BackupError::Tool {
        program,
        detail: format!("failed ({status}): {last}"),
    }
}

/// Reads a child's stderr to its end in the background, keeping the last 8 KiB.
pub(crate) fn collect_stderr(
    stderr: Option<tokio::process::ChildStderr>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let Some(mut stderr) = stderr else {
            return String::new();
        };
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 8192 {
                kept.drain(..kept.len() - 8192);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_or_too_old_pg_dump_is_refused_naming_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let access = PgAccess::new(PgConnectOptions::new(), None, Some(dir.path().to_owned()));
        let err = find_tool("pg_dump", &access, 15).await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains("postgresql-client-15"), "{message}");
        assert!(message.contains("none found"), "{message}");
        // A pg_dump of an older major than the server's cannot read its catalog.
        let old = dir.path().join("pg_dump");
        std::fs::write(&old, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.11'\n").unwrap();
        std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let err = find_tool("pg_dump", &access, 15).await.unwrap_err();
        assert!(err.to_string().contains("is 14"), "{err}");
        assert_eq!(find_tool("pg_dump", &access, 14).await.unwrap(), old);
    }
}
