//! The test harness: every test gets a fresh database on a real PostgreSQL server.
//!
//! The server is `TEST_DATABASE_URL` when set (a superuser URL; CI points it at the machine's
//! PostgreSQL), otherwise a private cluster started once per test binary exactly as fleetd starts
//! its own (fsync off, in a temporary directory, gone when the test binary exits). Each
//! [`TestDb`] creates its own database and drops it when dropped.

pub mod audit_export;
pub mod ceilings;
pub mod device;
pub mod enroll;
// fleetd with a tenant, its owner key and signed-in people.
pub mod fleet;
pub mod https;
pub mod logs;
pub mod metrics;
pub mod mosquitto;
pub mod mqtt;
// Test-only Node packages from committed lock files.
pub mod npm;
// A real OpenID provider (Node, oidc-provider) and a browser for it.
pub mod oidc;
pub mod openssl;
pub mod records;
// rsyslog as a TLS syslog collector for the SIEM forwarding tests.
pub mod rsyslog;
pub mod tenancy;
pub mod wrk;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use store::cluster::{ClusterOptions, PrivateCluster, RunAs};
use store::{Database, DatabaseSettings};
use tokio::sync::OnceCell;

/// Where test databases are created.
enum Server {
    /// A server from `TEST_DATABASE_URL`.
    External(url::Url),
    /// A private cluster owned by this test binary.
    Private(PrivateCluster),
}

static SERVER: OnceCell<Server> = OnceCell::const_new();

async fn server() -> &'static Server {
    SERVER
        .get_or_init(|| async {
            match std::env::var("TEST_DATABASE_URL") {
                Ok(url) if !url.is_empty() => {
                    Server::External(url::Url::parse(&url).expect("TEST_DATABASE_URL is a URL"))
                }
                _ => start_private_cluster().await,
            }
        })
        .await
}

async fn start_private_cluster() -> Server {
    // The cluster directory is the temporary directory itself: postgres removes it when it stops
    // (at the latest when this test binary exits), so nothing is left in /tmp.
    let dir = tempfile::Builder::new()
        .prefix("fleet-test-")
        .tempdir()
        .expect("temporary directory")
        .keep();
    // As root the cluster runs as `postgres`, which must own the directory to initialise it.
    if let Some(user) = RunAs::detect().expect("cluster user") {
        user.chown(&dir).expect("chown test cluster directory");
    }
    let options = ClusterOptions {
        dir,
        bindir: None,
        durable: false,
        remove_when_stopped: true,
    };
    let cluster = PrivateCluster::start(&options)
        .await
        .expect("private PostgreSQL cluster for tests (or set TEST_DATABASE_URL)");
    Server::Private(cluster)
}

impl Server {
    fn url_for(&self, database: &str) -> String {
        match self {
            Server::External(base) => {
                let mut url = base.clone();
                url.set_path(database);
                url.to_string()
            }
            Server::Private(cluster) => cluster.url(database),
        }
    }

    fn admin_url(&self) -> String {
        match self {
            Server::External(base) => base.to_string(),
            Server::Private(cluster) => cluster.url("postgres"),
        }
    }
}

/// A fresh, empty database; dropped with the value.
pub struct TestDb {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDb {
    /// Creates a database with a unique name. Migrations run when it is opened.
    pub async fn new() -> Self {
        let server = server().await;
        let name = format!("fleet_test_{}", uuid::Uuid::new_v4().simple());
        let admin_url = server.admin_url();
        let mut admin = connect(&admin_url).await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        Self {
            url: server.url_for(&name),
            name,
            admin_url,
        }
    }

    /// The owner (superuser) URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Settings that make fleetd or fleetctl use this database.
    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: Some(self.url.parse().expect("a postgres:// URL")),
            data_dir: PathBuf::from("/nonexistent-test-data-dir"),
            app_password: None,
            postgres_bindir: None,
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Opens it through the store: migrations, start-up checks, both pools.
    pub async fn open(&self) -> Database {
        Database::open(&self.settings(), store::Purpose::Server)
            .await
            .expect("open test database")
    }

    /// A raw connection as the owner (superuser): for tests that act behind the application's back.
    pub async fn connect_as_owner(&self) -> PgConnection {
        connect(&self.url).await
    }

    /// Every row of every table of the schema, as the owner sees it, each as its text form
    /// (`t::text`: bytea as hex), by table name; tables without rows are there, empty. For
    /// "this secret is nowhere in the database" checks.
    pub async fn every_row_as_text(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut owner = self.connect_as_owner().await;
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')",
        )
        .fetch_all(&mut owner)
        .await
        .expect("the schema's tables");
        let mut rows = std::collections::BTreeMap::new();
        for table in tables {
            let text: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
                .fetch_all(&mut owner)
                .await
                .expect("a table's rows");
            rows.insert(table, text);
        }
        owner.close().await.ok();
        rows
    }

    /// The name of this database's application role (the database must be migrated).
    pub async fn app_role(&self) -> String {
        let mut owner = self.connect_as_owner().await;
        let role = store::app_role(&mut owner)
            .await
            .expect("the application role's name");
        owner.close().await.ok();
        role
    }

    /// A raw connection as the application role, bypassing the store's API but not the
    /// database's rules: for tests that prove what the role itself can and cannot do.
    pub async fn connect_as_app(&self) -> PgConnection {
        let options = PgConnectOptions::from_str(&self.url)
            .expect("test URL")
            .username(&self.app_role().await)
            .disable_statement_logging();
        PgConnection::connect_with(&options)
            .await
            .expect("connect as the application role")
    }
}

impl Drop for TestDb {
    /// Drops the database, then its application role (roles are server-wide: without this every
    /// test would leave one behind).
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let url = self.url.clone();
        let admin_url = self.admin_url.clone();
        // Drop runs inside a test's runtime, which cannot be blocked on: use a thread of our own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let role = app_role_if_migrated(&url).await;
                let mut admin = connect(&admin_url).await;
                sqlx::query(&statement).execute(&mut admin).await?;
                if let Some(role) = role {
                    sqlx::query(&format!("DROP ROLE IF EXISTS \"{role}\""))
                        .execute(&mut admin)
                        .await?;
                }
                Ok::<(), sqlx::Error>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// The application role of the database at `url`, when its migrations created one.
async fn app_role_if_migrated(url: &str) -> Option<String> {
    let mut conn = connect(url).await;
    let migrated: bool =
        sqlx::query_scalar("SELECT to_regprocedure('public.fleet_app_role()') IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .ok()?;
    let role = if migrated {
        store::app_role(&mut conn).await.ok()
    } else {
        None
    };
    conn.close().await.ok();
    role
}

async fn connect(url: &str) -> PgConnection {
    let options = PgConnectOptions::from_str(url)
        .expect("database URL")
        .disable_statement_logging();
    PgConnection::connect_with(&options)
        .await
        .expect("connect to the test PostgreSQL server")
}

/// The binary `bin` of workspace package `package`, in this test's target directory, built
/// first every time: a binary left from an older build would test older code.
pub fn workspace_binary(package: &str, bin: &str) -> std::path::PathBuf {
    let deps = std::env::current_exe().expect("test executable");
    let target = deps.parent().and_then(|d| d.parent()).expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "-p", package, "--bin", bin])
        .status()
        .expect("running cargo build");
    assert!(status.success(), "building {bin}");
    target.join(bin)
}

/// A data directory the private cluster's system user can reach even when tests run as root
/// (tempfile makes 0700 directories).
pub fn data_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("fleetd-data-")
        .tempdir()
        .expect("temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Creates the device group `name` in the transaction's tenant unless it exists (tests make
/// tokens and devices in groups of their own; the store requires the group to exist).
pub async fn ensure_group(tx: &mut store::TenantTx, name: &str) {
    if store::device_groups::find_by_name(tx, name)
        .await
        .unwrap()
        .is_none()
    {
        store::device_groups::create(tx, name, &store::audit::Actor::System)
            .await
            .unwrap();
    }
}
// A headless Chromium through chromedriver, for the console.
pub mod browser;
