//! A private PostgreSQL cluster kept in fleetd's data directory: fleetd's embedded default.
//!
//! The cluster is created with the installed server binaries (`initdb`, `postgres`) on first use
//! and reused afterwards. It listens on a Unix socket inside its own directory (mode 0700) and on
//! no TCP port, with `trust` authentication: only the cluster's system user (and root) can reach
//! the socket.
//!
//! PostgreSQL refuses to run as root. When fleetd runs as root, the cluster runs as the `postgres`
//! system user (present wherever the Debian `postgresql` package is installed); the cluster
//! directory is handed to that user and every directory above it must be traversable by it.
//!
//! `postgres` runs under a small `sh` wrapper whose standard input is a pipe from this process.
//! End of file on that pipe — a clean [`PrivateCluster::stop`], a drop, or this process dying
//! however it dies — makes the wrapper ask postgres for a fast shutdown. So no cluster outlives
//! the process that supervises it, and tests need no cleanup hooks.

mod bindir;
mod error;
mod initdb;
mod layout;
mod process;
mod run_as;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ChildStdin;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::watch;

pub use bindir::find_bindir;
use error::io_error;
pub use error::ClusterError;
use layout::{
    absolute, check_socket_path, check_trusted_tree, log_path, prepare_dir, socket_path,
    start_failed,
};
pub use run_as::RunAs;

/// The superuser that `initdb` creates in a private cluster; fleetd's owner role there.
pub const SUPERUSER: &str = "fleetplane";
/// The database fleetd uses in a private cluster.
pub const DATABASE: &str = "fleetplane";
/// The socket file is `.s.PGSQL.<port>`; with no TCP listener the port only names the file.
const SOCKET_PORT: u16 = 5432;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How to run a private cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The cluster directory (PGDATA). Created when missing.
    pub dir: PathBuf,
    /// Where `initdb` and `postgres` are; searched for when `None`.
    pub bindir: Option<PathBuf>,
    /// `false` trades crash safety for speed (fsync off): for tests only.
    pub durable: bool,
    /// Delete the cluster directory once postgres has stopped: for throw-away test clusters.
    pub remove_when_stopped: bool,
}

impl ClusterOptions {
    /// A durable cluster in `dir` with binaries found automatically.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            bindir: None,
            durable: true,
            remove_when_stopped: false,
        }
    }
}

/// A running private cluster, or one found already running (then we do not own it).
pub struct PrivateCluster {
    dir: PathBuf,
    /// Closing it stops the cluster; `None` when attached to a cluster run by another process.
    stop_pipe: Option<ChildStdin>,
    exited: watch::Receiver<Option<String>>,
}

impl PrivateCluster {
    /// Starts the cluster, creating it first if `options.dir` holds none.
    pub async fn start(options: &ClusterOptions) -> Result<Self, ClusterError> {
        // postgres changes into its data directory before it creates the socket, so a relative
        // socket directory would name a path below the data directory ("could not create lock
        // file"). Resolve the directory once, against the current directory, before anything.
        let options = &ClusterOptions {
            dir: absolute(&options.dir)?,
            ..options.clone()
        };
        let bindir = find_bindir(options.bindir.as_deref()).await?;
        let run_as = RunAs::detect()?;
        if let Some(user) = &run_as {
            tracing::info!(user = %user.name, "running as root: the private PostgreSQL cluster runs as system user `{}`", user.name);
        }
        prepare_dir(&options.dir, run_as.as_ref())?;
        check_socket_path(&options.dir)?;
        if !options.dir.join("PG_VERSION").exists() {
            tracing::info!(dir = %options.dir.display(), "creating the private PostgreSQL cluster");
            initdb::run_initdb(&bindir, options, run_as.as_ref()).await?;
        }
        let log = log_path(&options.dir);
        let (stop_pipe, exited) = process::spawn_postgres(&bindir, options, run_as.as_ref(), &log)?;
        let cluster = Self {
            dir: options.dir.clone(),
            stop_pipe: Some(stop_pipe),
            exited,
        };
        cluster.wait_ready(&log).await?;
        cluster.ensure_database().await?;
        tracing::info!(socket_dir = %cluster.dir.display(), "private PostgreSQL cluster ready");
        Ok(cluster)
    }

    /// Uses the cluster in `options.dir` if a process (a running fleetd) already serves it,
    /// otherwise starts it; for fleetctl, which may run beside fleetd or alone. Never creates a
    /// cluster (nor any directory): [`ClusterError::NoCluster`] when `options.dir` holds none.
    pub async fn attach_or_start(options: &ClusterOptions) -> Result<Self, ClusterError> {
        let options = &ClusterOptions {
            dir: absolute(&options.dir)?,
            ..options.clone()
        };
        match fs::metadata(options.dir.join("PG_VERSION")) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClusterError::NoCluster {
                    data_dir: options
                        .dir
                        .parent()
                        .map_or_else(|| options.dir.clone(), Path::to_path_buf),
                    dir: options.dir.clone(),
                })
            }
            // Not ours to read (another user's fleetd): say so rather than "no cluster".
            Err(e) => {
                return Err(io_error(format!(
                    "looking for the cluster in {}",
                    options.dir.display()
                ))(e))
            }
        }
        check_trusted_tree(&options.dir, RunAs::detect()?.as_ref())?;
        if socket_path(&options.dir).exists() {
            let (_tx, exited) = watch::channel(None);
            let attached = Self {
                dir: options.dir.clone(),
                stop_pipe: None,
                exited,
            };
            if attached.try_connect("postgres").await.is_ok() {
                attached.ensure_database().await?;
                return Ok(attached);
            }
        }
        Self::start(options).await
    }

    /// Options to connect to `database` as the superuser over the socket.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .socket(&self.dir)
            .port(SOCKET_PORT)
            .username(SUPERUSER)
            .database(database)
    }

    /// A database URL for the same connection, for other processes (tests hand it to fleetd).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@localhost:{SOCKET_PORT}/{database}?host={}",
            self.dir.display()
        )
    }

    /// Resolves when the postgres process has exited, with a description of how; never resolves
    /// for an attached cluster. fleetd treats it as fatal.
    pub async fn exited(&self) -> String {
        let mut exited = self.exited.clone();
        let status = exited
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|s| s.clone());
        match status {
            Some(status) => status,
            // The sender is gone without a status only for an attached cluster.
            None => std::future::pending().await,
        }
    }

    /// Stops the cluster (fast shutdown: sessions are closed, data is checkpointed) and waits
    /// for it; a no-op for an attached cluster.
    pub async fn stop(mut self) -> Result<(), ClusterError> {
        let Some(pipe) = self.stop_pipe.take() else {
            return Ok(());
        };
        drop(pipe);
        let mut exited = self.exited.clone();
        let stopped = tokio::time::timeout(STOP_TIMEOUT, exited.wait_for(Option::is_some))
            .await
            .is_ok();
        if stopped {
            return Ok(());
        }
        Err(ClusterError::Io {
            context: "stopping the private cluster".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "postgres did not stop within 60 s",
            ),
        })
    }

    async fn wait_ready(&self, log: &Path) -> Result<(), ClusterError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited.borrow().clone() {
                return Err(start_failed(format!("postgres exited ({status})"), log));
            }
            match self.try_connect("postgres").await {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => return Err(start_failed(format!("no connection after 60 s: {e}"), log)),
            }
        }
    }

    async fn try_connect(&self, database: &str) -> Result<(), sqlx::Error> {
        let options = self.connect_options(database).disable_statement_logging();
        let conn = PgConnection::connect_with(&options).await?;
        conn.close().await
    }

    async fn ensure_database(&self) -> Result<(), ClusterError> {
        let mut conn = PgConnection::connect_with(&self.connect_options("postgres")).await?;
        let exists = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "exists!""#,
            DATABASE
        )
        .fetch_one(&mut conn)
        .await?;
        if !exists {
            // DDL: no parameters, nothing for the macros to check.
            sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
                .execute(&mut conn)
                .await?;
        }
        conn.close().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::layout::check_socket_path;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn a_missing_configured_bindir_names_the_package() {
        let err = find_bindir(Some(Path::new("/nonexistent")))
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("/nonexistent"), "{message}");
    }

    #[tokio::test]
    async fn a_tool_never_creates_a_cluster_where_there_is_none() {
        let base = std::env::temp_dir().join(format!("fleet-no-cluster-{}", std::process::id()));
        let dir = base.join("typo").join("postgres");
        let err = PrivateCluster::attach_or_start(&ClusterOptions::new(&dir))
            .await
            .err()
            .expect("no cluster to attach to");
        assert!(matches!(err, ClusterError::NoCluster { .. }), "{err}");
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
        assert!(!base.exists(), "nothing was created");
    }

    #[tokio::test]
    async fn a_cluster_directory_with_a_file_others_may_write_is_refused_naming_it() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("postgres");
        std::fs::create_dir_all(dir.join("base")).unwrap();
        let loose = dir.join("base").join("1");
        std::fs::write(&loose, "").unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = PrivateCluster::start(&ClusterOptions::new(&dir))
            .await
            .err()
            .expect("refused");
        let message = err.to_string();
        assert!(
            matches!(err, ClusterError::UntrustedPath { ref path, .. } if *path == loose),
            "{message}"
        );
        assert!(
            message.contains("mode 666") && message.contains("not writable by group or others"),
            "{message}"
        );
        assert!(
            !dir.join("PG_VERSION").exists(),
            "no cluster was made in it"
        );
    }

    #[tokio::test]
    async fn a_file_of_another_user_in_the_cluster_directory_is_refused_naming_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: handing a file to another user needs root");
            return;
        }
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("postgres");
        std::fs::create_dir_all(&dir).unwrap();
        let foreign = dir.join("postgresql.auto.conf");
        std::fs::write(&foreign, "").unwrap();
        // Neither root, nor us, nor the postgres user.
        std::os::unix::fs::chown(&foreign, Some(54321), None).unwrap();
        let err = PrivateCluster::start(&ClusterOptions::new(&dir))
            .await
            .err()
            .expect("refused");
        let message = err.to_string();
        assert!(
            message.starts_with(&foreign.display().to_string()),
            "{message}"
        );
        assert!(message.contains("owned by uid 54321"), "{message}");
    }

    #[test]
    fn overlong_socket_paths_are_refused_before_starting() {
        let dir = PathBuf::from("/tmp").join("d".repeat(120));
        assert!(matches!(
            check_socket_path(&dir),
            Err(ClusterError::SocketPathTooLong { .. })
        ));
        assert!(check_socket_path(Path::new("/tmp/short")).is_ok());
    }
}
