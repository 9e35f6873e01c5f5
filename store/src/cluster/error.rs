//! Why the private cluster could not be used.

use std::path::PathBuf;
use std::process::ExitStatus;

use super::MAX_SOCKET_PATH;

/// Why the private cluster could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found in {searched}: install the \
         `postgresql` package (Debian/Ubuntu: apt-get install postgresql) or set database.postgres_bindir"
    )]
    BinariesNotFound {
        /// Where we looked.
        searched: String,
    },
    /// Running as root with no `postgres` system user to run the cluster as.
    #[error(
        "running as root, and PostgreSQL refuses to run as root: no `postgres` system user exists \
         to run the private cluster; run fleetd as an unprivileged user or install the postgresql package"
    )]
    RootWithoutPostgresUser,
    /// The cluster's user cannot reach its directory.
    #[error(
        "the private cluster runs as system user `{user}`, which cannot enter {blocked}; \
         choose a data directory that user can reach (for example under /var/lib or /tmp)"
    )]
    DirectoryNotReachable {
        /// The cluster's system user.
        user: String,
        /// The first directory it cannot traverse.
        blocked: PathBuf,
    },
    /// A directory or file in the cluster (or the data directory above it) could be changed by
    /// someone other than the cluster's user: another owner, or writable by group or others.
    #[error("{} is {found}; required: {required}", path.display())]
    UntrustedPath {
        /// The directory or file.
        path: PathBuf,
        /// Its owner and mode.
        found: String,
        /// What is required of it.
        required: String,
    },
    /// The socket path would be longer than a Unix socket address allows.
    #[error("the socket path {path} is {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of Unix sockets; use a shorter data directory")]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// `initdb` failed.
    #[error("initdb failed ({status}):\n{output}")]
    InitdbFailed {
        /// Its exit status.
        status: ExitStatus,
        /// What it printed.
        output: String,
    },
    /// `postgres` exited or did not accept connections in time.
    #[error("the private PostgreSQL cluster did not start: {reason}; its log ({log}) ends with:\n{log_tail}")]
    StartFailed {
        /// What went wrong.
        reason: String,
        /// The log file.
        log: PathBuf,
        /// Its last lines.
        log_tail: String,
    },
    /// A file system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// Talking to the cluster failed once it was up.
    #[error("private cluster: {0}")]
    Database(#[from] sqlx::Error),
    /// A tool asked for the cluster of a directory that holds none. Only fleetd creates a
    /// cluster: a mistyped data directory must not become a new, empty one.
    #[error(
        "{} holds no fleetd database (no PostgreSQL cluster in {}); only fleetd creates one: \
         check the data directory, or start fleetd with it first",
        data_dir.display(),
        dir.display()
    )]
    NoCluster {
        /// The data directory the cluster was looked for in (the cluster directory's parent).
        data_dir: PathBuf,
        /// The cluster directory that holds no cluster.
        dir: PathBuf,
    },
}

pub(super) fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}
