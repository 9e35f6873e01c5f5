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

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::watch;

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

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

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

/// The system user the cluster runs as when this process is root.
#[derive(Clone, Debug)]
pub struct RunAs {
    /// User name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl RunAs {
    /// `None` when this process is not root (the cluster runs as us); the `postgres` user when
    /// it is.
    pub fn detect() -> Result<Option<RunAs>, ClusterError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let user = nix::unistd::User::from_name("postgres")
            .map_err(|e| io_error("looking up the postgres system user")(e.into()))?
            .ok_or(ClusterError::RootWithoutPostgresUser)?;
        Ok(Some(RunAs {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }))
    }

    /// Hands `path` to this user.
    pub fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).map_err(io_error(format!(
            "handing {} to user {}",
            path.display(),
            self.name
        )))
    }

    fn apply(&self, command: &mut Command) {
        command.uid(self.uid).gid(self.gid);
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
        let bindir = find_bindir(options.bindir.as_deref())?;
        let run_as = RunAs::detect()?;
        if let Some(user) = &run_as {
            tracing::info!(user = %user.name, "running as root: the private PostgreSQL cluster runs as system user `{}`", user.name);
        }
        prepare_dir(&options.dir, run_as.as_ref())?;
        check_socket_path(&options.dir)?;
        if !options.dir.join("PG_VERSION").exists() {
            tracing::info!(dir = %options.dir.display(), "creating the private PostgreSQL cluster");
            run_initdb(&bindir, options, run_as.as_ref())?;
        }
        let log = log_path(&options.dir);
        let (stop_pipe, exited) = spawn_postgres(&bindir, options, run_as.as_ref(), &log)?;
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

/// The directory with `initdb` and `postgres`: the configured one, else `pg_config --bindir`,
/// else the newest `/usr/lib/postgresql/<major>/bin` (Debian's layout).
pub fn find_bindir(configured: Option<&Path>) -> Result<PathBuf, ClusterError> {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    if let Some(dir) = configured {
        return if has_server(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(ClusterError::BinariesNotFound {
                searched: dir.display().to_string(),
            })
        };
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|dir| has_server(dir)) {
        return Ok(dir);
    }
    newest_debian_bindir()
        .filter(|dir| has_server(dir))
        .ok_or_else(|| ClusterError::BinariesNotFound {
            searched: "`pg_config --bindir` and /usr/lib/postgresql/*/bin".into(),
        })
}

fn newest_debian_bindir() -> Option<PathBuf> {
    let entries = fs::read_dir("/usr/lib/postgresql").ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

fn prepare_dir(dir: &Path, run_as: Option<&RunAs>) -> Result<(), ClusterError> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(io_error(format!("creating {}", parent.display())))?;
    }
    if !dir.exists() {
        fs::create_dir(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_error(format!("restricting {}", dir.display())))?;
    }
    if let Some(user) = run_as {
        user.chown(dir)?;
        check_traversable(dir, user)?;
    }
    Ok(())
}

/// Every directory above the cluster must let its user pass, or postgres fails obscurely.
fn check_traversable(dir: &Path, user: &RunAs) -> Result<(), ClusterError> {
    let absolute =
        fs::canonicalize(dir).map_err(io_error(format!("resolving {}", dir.display())))?;
    for ancestor in absolute.ancestors().skip(1) {
        let meta =
            fs::metadata(ancestor).map_err(io_error(format!("reading {}", ancestor.display())))?;
        let mode = meta.mode();
        let passable = mode & 0o001 != 0
            || (meta.uid() == user.uid && mode & 0o100 != 0)
            || (meta.gid() == user.gid && mode & 0o010 != 0);
        if !passable {
            return Err(ClusterError::DirectoryNotReachable {
                user: user.name.clone(),
                blocked: ancestor.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// `dir` made absolute against the current directory (without resolving symbolic links).
fn absolute(dir: &Path) -> Result<PathBuf, ClusterError> {
    std::path::absolute(dir).map_err(io_error(format!("resolving {}", dir.display())))
}

fn socket_path(dir: &Path) -> PathBuf {
    dir.join(format!(".s.PGSQL.{SOCKET_PORT}"))
}

fn check_socket_path(dir: &Path) -> Result<(), ClusterError> {
    let path = std::path::absolute(socket_path(dir)).unwrap_or_else(|_| socket_path(dir));
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(ClusterError::SocketPathTooLong { path, len });
    }
    Ok(())
}

/// Inside the cluster directory, so a throw-away cluster leaves nothing behind.
fn log_path(dir: &Path) -> PathBuf {
    dir.join("fleetd-postgres.log")
}

fn run_initdb(
    bindir: &Path,
    options: &ClusterOptions,
    run_as: Option<&RunAs>,
) -> Result<(), ClusterError> {
    let mut command = Command::new(bindir.join("initdb"));
    command
        .arg("--pgdata")
        .arg(&options.dir)
        .args([
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
        ])
        .stdin(Stdio::null());
    if !options.durable {
        command.arg("--no-sync");
    }
    if let Some(user) = run_as {
        user.apply(&mut command);
    }
    let output = command.output().map_err(io_error("running initdb"))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(ClusterError::InitdbFailed {
            status: output.status,
            output: text,
        });
    }
    Ok(())
}

/// Runs `postgres` under the stop-on-EOF wrapper (see the module docs). Stdin of a background
/// job is /dev/null in a non-interactive shell, so the pipe is kept on descriptor 3 for the reader.
const WRAPPER: &str = r#"exec 3<&0
"$@" 3<&- &
pg=$!
(read -r _ <&3; kill -INT "$pg" 2>/dev/null) &
wait "$pg"
status=$?
[ -z "$FLEET_REMOVE_WHEN_STOPPED" ] || rm -rf -- "$FLEET_REMOVE_WHEN_STOPPED"
exit "$status"
"#;

fn spawn_postgres(
    bindir: &Path,
    options: &ClusterOptions,
    run_as: Option<&RunAs>,
    log: &Path,
) -> Result<(ChildStdin, watch::Receiver<Option<String>>), ClusterError> {
    let log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_error(format!("opening {}", log.display())))?;
    let log_file_err = log_file
        .try_clone()
        .map_err(io_error("duplicating the log handle"))?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(WRAPPER)
        .arg("fleet-postgres")
        .arg(bindir.join("postgres"))
        .arg("-D")
        .arg(&options.dir)
        .arg("-k")
        .arg(&options.dir)
        .args(["-p", &SOCKET_PORT.to_string()])
        .args([
            "-c",
            "listen_addresses=",
            "-c",
            "unix_socket_permissions=0700",
        ]);
    if options.remove_when_stopped {
        command.env("FLEET_REMOVE_WHEN_STOPPED", &options.dir);
    }
    if !options.durable {
        command.args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]);
    }
    // A process group of its own: a terminal's Ctrl-C reaches fleetd, which then stops the cluster
    // in order, instead of reaching postgres first.
    command
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(log_file_err));
    if let Some(user) = run_as {
        user.apply(&mut command);
    }
    let mut child = command.spawn().map_err(io_error("starting postgres"))?;
    let stop_pipe = child.stdin.take().expect("stdin was piped");
    let (tx, rx) = watch::channel(None);
    std::thread::Builder::new()
        .name("postgres-supervisor".into())
        .spawn(move || watch_exit(child, tx))
        .map_err(io_error("starting the supervisor thread"))?;
    Ok((stop_pipe, rx))
}

fn watch_exit(mut child: Child, exited: watch::Sender<Option<String>>) {
    let description = match child.wait() {
        Ok(status) => status.to_string(),
        Err(e) => format!("unknown: {e}"),
    };
    exited.send_replace(Some(description));
}

fn start_failed(reason: String, log: &Path) -> ClusterError {
    ClusterError::StartFailed {
        reason,
        log: log.to_path_buf(),
        log_tail: tail(log, 4096),
    }
}

fn tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_configured_bindir_names_the_package() {
        let err = find_bindir(Some(Path::new("/nonexistent"))).unwrap_err();
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
