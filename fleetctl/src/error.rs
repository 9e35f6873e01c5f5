//! What went wrong, as one line for people and an exit code for scripts.
//!
//! Every failure, whichever side it comes from (the API's problem details, the database, the
//! network, the command line), becomes a [`Failure`]: an [`Exit`] code, a problem type slug and a
//! detail. `main` prints it as `fleetctl: <detail> (<slug>)`. HTTP problems keep the API's slug
//! (`urn:fleetplane:problem:<slug>`); failures that never reached the API get slugs of their own.

use std::fmt;
use std::process::ExitCode;

use store::cluster::ClusterError;
use store::StoreError;

/// The exit codes scripts can rely on (listed in `fleetctl --help` and the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 1: the server or the database refused (a 4xx other than those below, a conflict, an
    /// invalid value), or a verification failed (a broken audit chain).
    Refused,
    /// 2: the command line is wrong (clap's own errors exit 2 as well).
    Usage,
    /// 3: not found: an HTTP 404, or an unknown `--tenant`.
    NotFound,
    /// 4: authentication or permission: HTTP 401 or 403, no or a malformed API key, a database
    /// role that may not do this.
    Auth,
    /// 5: the server or the database cannot be reached, or failed (HTTP 5xx, TLS, timeouts).
    Unavailable,
    /// 6: the database's schema is older or newer than this fleetctl's migrations.
    SchemaMismatch,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Refused => 1,
            Exit::Usage => 2,
            Exit::NotFound => 3,
            Exit::Auth => 4,
            Exit::Unavailable => 5,
            Exit::SchemaMismatch => 6,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// A failure to report: printed as `fleetctl: <detail> (<slug>)`, then the process exits with
/// `exit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exit code.
    pub exit: Exit,
    /// The problem type slug (the API's, or one of fleetctl's own).
    pub slug: String,
    /// What happened, on one line.
    pub detail: String,
}

impl Failure {
    /// A failure with this exit code, slug and detail (made single-line).
    pub fn new(exit: Exit, slug: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            exit,
            slug: slug.into(),
            detail: one_line(&detail.into()),
        }
    }

    /// For a command that also exists on the database: when it failed for want of an API key,
    /// says how to reach the database instead.
    pub fn hint_without_key(mut self, hint: &str) -> Self {
        if self.slug == "no-api-key" {
            self.detail = format!("{}; {hint}", self.detail);
        }
        self
    }

    /// A usage error of fleetctl's own (exit 2).
    pub fn usage(detail: impl Into<String>) -> Self {
        Self::new(Exit::Usage, "usage", detail)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.detail, self.slug)
    }
}

/// Collapses text to one printable line: the error line must stay one line whatever a server or a
/// database put in its message, and must not carry terminal control sequences.
pub fn one_line(text: &str) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    crate::output::printable(&joined)
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => {
                Failure::new(Exit::NotFound, "not-found", format!("{what} not found"))
            }
            StoreError::Conflict(why) => Failure::new(Exit::Refused, "conflict", why),
            StoreError::Invalid { field, reason } => {
                Failure::new(Exit::Refused, "invalid-field", format!("{field}: {reason}"))
            }
            StoreError::InvalidUrl(why) => Failure::usage(format!("--database-url: {why}")),
            StoreError::OwnerCannotSeeAllTenants { .. } => {
                Failure::new(Exit::Auth, "forbidden", e.to_string())
            }
            StoreError::UnsupportedServerVersion { .. } | StoreError::AppRoleTooPowerful { .. } => {
                Failure::new(Exit::Refused, "database-refused", e.to_string())
            }
            StoreError::OwnerPoolClosed => {
                Failure::new(Exit::Unavailable, "database-unavailable", e.to_string())
            }
            StoreError::Cluster(cluster) => cluster_failure(cluster),
            StoreError::Database(ref db) if is_auth_error(db) => {
                Failure::new(Exit::Auth, "database-authentication", e.to_string())
            }
            StoreError::Database(ref db) if reached_database(db) && !e.is_transient() => {
                Failure::new(Exit::Refused, "database-refused", e.to_string())
            }
            StoreError::Database(_) | StoreError::Migrate(_) => {
                Failure::new(Exit::Unavailable, "database-unavailable", e.to_string())
            }
            StoreError::SchemaMismatch { found, expected } => {
                let what_to_do = if found < expected {
                    "run `fleetctl db migrate` (or start this release's fleetd, which migrates)"
                } else {
                    "the database was migrated by a newer release: use its fleetctl"
                };
                Failure::new(
                    Exit::SchemaMismatch,
                    "schema-mismatch",
                    format!(
                        "database schema is at version {found}, this fleetctl expects \
                         {expected}: {what_to_do}"
                    ),
                )
            }
            StoreError::MissingChainHead { .. } => {
                Failure::new(Exit::Refused, "audit-chain-broken", e.to_string())
            }
        }
    }
}

fn cluster_failure(e: ClusterError) -> Failure {
    match e {
        ClusterError::NoCluster { .. } => {
            Failure::new(Exit::Unavailable, "no-cluster", e.to_string())
        }
        // postgres's last complaint says why; the rest of the tail stays in the log.
        ClusterError::StartFailed {
            reason,
            log,
            log_tail,
        } => {
            let said = log_tail
                .lines()
                .rev()
                .find(|l| ["FATAL:", "PANIC:", "ERROR:"].iter().any(|k| l.contains(k)))
                .or_else(|| log_tail.lines().rev().find(|l| !l.trim().is_empty()))
                .unwrap_or("");
            Failure::new(
                Exit::Unavailable,
                "database-unavailable",
                format!(
                    "the database cluster did not start: {reason}; postgres said: {said} (log: {})",
                    log.display()
                ),
            )
        }
        ClusterError::Io { ref source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Failure::new(Exit::Auth, "permission-denied", e.to_string())
        }
        other => Failure::new(Exit::Unavailable, "database-unavailable", other.to_string()),
    }
}

/// Whether the server answered the statement (as opposed to the connection failing).
fn reached_database(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(_) | sqlx::Error::RowNotFound)
}

/// Invalid password or authorization (SQLSTATE class 28).
fn is_auth_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("28")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_documented_ones() {
        let codes: Vec<u8> = [
            Exit::Refused,
            Exit::Usage,
            Exit::NotFound,
            Exit::Auth,
            Exit::Unavailable,
            Exit::SchemaMismatch,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_failure_is_one_line_without_control_characters() {
        let f = Failure::new(Exit::Refused, "conflict", "first\n\n  second\x1b[31m");
        assert_eq!(f.to_string(), "first; second\\u{1b}[31m (conflict)");
    }

    #[test]
    fn store_refusals_map_to_their_exit_codes() {
        let f = Failure::from(StoreError::NotFound("tenant"));
        assert_eq!((f.exit, f.slug.as_str()), (Exit::NotFound, "not-found"));
        let f = Failure::from(StoreError::Conflict("a tenant with this name exists"));
        assert_eq!((f.exit, f.slug.as_str()), (Exit::Refused, "conflict"));
        let f = Failure::from(StoreError::Invalid {
            field: "name",
            reason: "must not be empty".into(),
        });
        assert_eq!(f.detail, "name: must not be empty");
        assert_eq!(
            Failure::from(StoreError::Database(sqlx::Error::PoolTimedOut)).exit,
            Exit::Unavailable
        );
    }
}
