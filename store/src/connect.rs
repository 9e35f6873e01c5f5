//! Opening the database: the private cluster or a configured server, migrations, start-up
//! checks, and the two handles ([`AdminDb`] as the owner role, [`AppDb`] as the database's
//! application role, [`app_role`]).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgConnection, PgPool};

use crate::audit::{self, ChainVerdict};
use crate::cluster::{self, ClusterOptions, PrivateCluster};
use crate::metrics::{PoolCollector, StoreMetrics, APP_POOL};
use crate::tenants::Tenant;
use crate::DatabaseUrl;
use crate::{StoreError, TenantId, TenantTx};

/// The oldest PostgreSQL major version supported: 15 closed `public` to `CREATE` by default, and
/// the migrations' privilege model assumes it.
pub const MIN_SERVER_MAJOR: u32 = 15;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Where the database is and how to reach it. `Debug` shows no password.
#[derive(Clone)]
pub struct DatabaseSettings {
    /// The owner role's URL. `None`: a private cluster in `data_dir/postgres`.
    pub url: Option<DatabaseUrl>,
    /// fleetd's data directory (home of the private cluster).
    pub data_dir: PathBuf,
    /// Password of the application role, when the server asks for one.
    pub app_password: Option<String>,
    /// Where the PostgreSQL server binaries are, for the private cluster; found when `None`.
    pub postgres_bindir: Option<PathBuf>,
    /// Connections in the application pool.
    pub max_connections: u32,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &self.url)
            .field("data_dir", &self.data_dir)
            .field(
                "app_password",
                &self.app_password.as_ref().map(|_| "<redacted>"),
            )
            .field("postgres_bindir", &self.postgres_bindir)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl DatabaseSettings {
    /// The private cluster's directory.
    pub fn cluster_dir(&self) -> PathBuf {
        self.data_dir.join("postgres")
    }
}

/// Who opens the database, which decides the start-up checks and who runs the private cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// fleetd: starts the private cluster itself and refuses a tenant without a chain head.
    Server,
    /// fleetctl: uses the private cluster of a running fleetd if there is one, skips the
    /// chain-head check so that `audit verify` can report the damage, and never migrates:
    /// [`StoreError::SchemaMismatch`] unless the schema is exactly this build's.
    Tool,
    /// `fleetctl db migrate`: as [`Purpose::Tool`], but applies the migrations the database
    /// lacks (refusing a database whose schema is newer than this build's).
    Migrate,
}

/// An open database: the application role's handle, the owner's for tools, and the private
/// cluster when fleetplane runs one.
pub struct Database {
    /// The owner role's handle; `None` for [`Purpose::Server`], which closes it once start-up is
    /// done so that nothing in a running fleetd holds superuser connections.
    admin: Option<AdminDb>,
    /// The application role's handle.
    pub app: AppDb,
    cluster: Option<PrivateCluster>,
    /// Every tenant when the database was opened, for [`Database::verify_chain_tails`].
    tenants_at_open: Vec<Tenant>,
    /// How pg_dump reaches the database as the owner (backups).
    owner_access: crate::backup::PgAccess,
}

impl Database {
    /// Starts or reaches the database, applies migrations, runs the start-up checks of `purpose`
    /// and opens the application pool, whose series are registered nowhere.
    pub async fn open(settings: &DatabaseSettings, purpose: Purpose) -> Result<Self, StoreError> {
        Self::open_observed(settings, purpose, StoreMetrics::default()).await
    }

    /// [`Self::open`], counting the application pool's transactions in `metrics`.
    pub async fn open_observed(
        settings: &DatabaseSettings,
        purpose: Purpose,
        metrics: StoreMetrics,
    ) -> Result<Self, StoreError> {
        let attach = purpose != Purpose::Server;
        let (owner_options, cluster) = match &settings.url {
            Some(url) => (parse_url(url.expose())?, None),
            None => {
                let options = ClusterOptions {
                    dir: settings.cluster_dir(),
                    bindir: settings.postgres_bindir.clone(),
                    durable: true,
                    remove_when_stopped: false,
                };
                let cluster = if attach {
                    PrivateCluster::attach_or_start(&options).await?
                } else {
                    PrivateCluster::start(&options).await?
                };
                (cluster.connect_options(cluster::DATABASE), Some(cluster))
            }
        };
        let owner_access = crate::backup::PgAccess::new(
            owner_options.clone(),
            settings.url.as_ref().and_then(DatabaseUrl::password),
            settings.postgres_bindir.clone(),
        );
        let admin = AdminDb::connect(&owner_options, settings.connect_timeout).await?;
        admin.check_server_version().await?;
        match purpose {
            Purpose::Server => admin.migrate().await?,
            Purpose::Tool => admin.schema_version().await?.check()?,
            Purpose::Migrate => {
                let version = admin.schema_version().await?;
                if version.found > version.expected {
                    version.check()?;
                }
                admin.migrate().await?;
            }
        }
        admin.check_can_see_all_tenants().await?;
        if purpose == Purpose::Server {
            admin.check_chain_heads().await?;
        }
        let app_role = admin.check_app_role().await?;
        let app_options =
            app_role_options(&owner_options, &app_role, settings.app_password.as_deref());
        let app = AppDb::connect(
            &app_options,
            settings.max_connections,
            settings.connect_timeout,
            metrics,
        )
        .await?;
        // The application role cannot list tenants (row-level security): the start-up chain
        // check works from the owner's list, taken before the owner's pool closes.
        let tenants_at_open = if purpose == Purpose::Server {
            admin.list_tenants().await?
        } else {
            Vec::new()
        };
        let admin = if purpose == Purpose::Server {
            admin.pool.close().await;
            None
        } else {
            Some(admin)
        };
        Ok(Self {
            admin,
            app,
            cluster,
            tenants_at_open,
            owner_access,
        })
    }

    /// How the owner role reaches this database, for backups.
    pub fn owner_access(&self) -> &crate::backup::PgAccess {
        &self.owner_access
    }

    /// Verifies the last `rows` events of every tenant's audit chain ([`audit::verify_tail`]),
    /// for every tenant that existed when the database was opened for [`Purpose::Server`] (none
    /// for the tools, which have `fleetctl audit verify`), each in its own tenant
    /// transaction. Counted in `fleet_audit_chain_verifications_total{scope="tail"}`; sets
    /// `fleet_audit_chains_broken` to the number of broken chains found. An error (the database
    /// went away) ends the check.
    pub async fn verify_chain_tails(
        &self,
        rows: u32,
    ) -> Result<Vec<(Tenant, ChainVerdict)>, StoreError> {
        let mut verdicts = Vec::with_capacity(self.tenants_at_open.len());
        for tenant in &self.tenants_at_open {
            let mut tx = self.app.begin(tenant.id).await?;
            let verdict = audit::verify_tail(&mut tx, rows).await?;
            tx.rollback().await?;
            verdicts.push((tenant.clone(), verdict));
        }
        let broken = verdicts
            .iter()
            .filter(|(_, verdict)| matches!(verdict, ChainVerdict::Broken { .. }))
            .count();
        self.app.metrics().set_chains_broken(broken);
        Ok(verdicts)
    }

    /// The owner role's handle; [`StoreError::OwnerPoolClosed`] when opened for
    /// [`Purpose::Server`].
    pub fn admin(&self) -> Result<&AdminDb, StoreError> {
        self.admin.as_ref().ok_or(StoreError::OwnerPoolClosed)
    }

    /// The private cluster, when fleetplane runs one.
    pub fn cluster(&self) -> Option<&PrivateCluster> {
        self.cluster.as_ref()
    }

    /// Closes the pools, then stops the private cluster if this process started it.
    pub async fn close(self) -> Result<(), StoreError> {
        self.app.pool.close().await;
        if let Some(admin) = self.admin {
            admin.pool.close().await;
        }
        if let Some(cluster) = self.cluster {
            cluster.stop().await?;
        }
        Ok(())
    }
}

fn parse_url(url: &str) -> Result<PgConnectOptions, StoreError> {
    PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl(e.to_string()))
}

/// The owner's server and database, as the application role. Built afresh rather than edited so
/// that nothing of the owner's credentials carries over.
fn app_role_options(
    owner: &PgConnectOptions,
    role: &str,
    password: Option<&str>,
) -> PgConnectOptions {
    let mut options = PgConnectOptions::new_without_pgpass()
        .host(owner.get_host())
        .port(owner.get_port())
        .username(role)
        .ssl_mode(owner.get_ssl_mode())
        .application_name("fleetd");
    if let Some(socket) = owner.get_socket() {
        options = options.socket(socket);
    }
    if let Some(database) = owner.get_database() {
        options = options.database(database);
    }
    if let Some(password) = password {
        options = options.password(password);
    }
    options.log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1))
}

/// Where the database's schema stands against this build's migrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemaVersion {
    /// The newest migration applied to the database (0: none, or not a fleetplane database).
    pub found: i64,
    /// The newest migration embedded in this build.
    pub expected: i64,
}

impl SchemaVersion {
    /// [`StoreError::SchemaMismatch`] unless the two are the same.
    pub fn check(self) -> Result<(), StoreError> {
        if self.found == self.expected {
            Ok(())
        } else {
            Err(StoreError::SchemaMismatch {
                found: self.found,
                expected: self.expected,
            })
        }
    }
}

/// The application role of the database `conn` is connected to (`fleet_app_<database>`, defined
/// once, by `fleet_app_role()` in the migrations). The database must be migrated.
pub async fn app_role(conn: &mut PgConnection) -> Result<String, StoreError> {
    Ok(
        sqlx::query_scalar!(r#"SELECT public.fleet_app_role()::text AS "role!""#)
            .fetch_one(conn)
            .await?,
    )
}

/// Refuses a server older than [`MIN_SERVER_MAJOR`]; `version_num` is `server_version_num`
/// (150004 for 15.4), `version` the text shown in the error.
pub fn check_server_version(version_num: i32, version: &str) -> Result<(), StoreError> {
    if version_num / 10_000 >= MIN_SERVER_MAJOR as i32 {
        Ok(())
    } else {
        Err(StoreError::UnsupportedServerVersion {
            found: version.to_owned(),
            required: MIN_SERVER_MAJOR,
        })
    }
}

/// The newest migration embedded in this build: the schema version it expects.
pub fn expected_schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// The owner role: migrations, start-up checks, and the cross-tenant listings that bootstrap
/// needs. Not for request work.
#[derive(Clone)]
pub struct AdminDb {
    pool: PgPool,
}

impl AdminDb {
    async fn connect(options: &PgConnectOptions, timeout: Duration) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(timeout)
            .connect_with(options.clone().application_name("fleetd-admin"))
            .await?;
        Ok(Self { pool })
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded migrations that have not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The newest successfully applied migration against this build's newest.
    pub async fn schema_version(&self) -> Result<SchemaVersion, StoreError> {
        // Dynamic: `_sqlx_migrations` is sqlx's bookkeeping, absent from a database that was
        // never migrated (and from the one .ci/sqlx-offline describes queries against).
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        let found: i64 = if exists {
            sqlx::query_scalar(
                "SELECT coalesce(max(version), 0) FROM public._sqlx_migrations WHERE success",
            )
            .fetch_one(&self.pool)
            .await?
        } else {
            0
        };
        Ok(SchemaVersion {
            found,
            expected: expected_schema_version(),
        })
    }

    async fn check_server_version(&self) -> Result<(), StoreError> {
        let row = sqlx::query!(
            r#"SELECT current_setting('server_version_num')::int AS "num!",
                      current_setting('server_version') AS "version!""#
        )
        .fetch_one(&self.pool)
        .await?;
        check_server_version(row.num, &row.version)
    }

    /// Refuses an application role with power beyond its grants: superuser, BYPASSRLS,
    /// CREATEROLE or CREATEDB, membership in any role (which would lend it that role's
    /// privileges: `fleet_app`'s in other databases, `pg_read_all_data`), or ownership of
    /// anything in this database. Returns the role's name.
    async fn check_app_role(&self) -> Result<String, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let role = app_role(&mut conn).await?;
        let row = sqlx::query!(
            r#"SELECT r.rolsuper AS "superuser!", r.rolbypassrls AS "bypassrls!",
                      r.rolcreaterole OR r.rolcreatedb AS "creates!",
                      (SELECT string_agg(g.rolname, ', ' ORDER BY g.rolname)
                         FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                        WHERE m.member = r.oid) AS member_of,
                      EXISTS (SELECT 1 FROM pg_class c WHERE c.relowner = r.oid)
                          OR EXISTS (SELECT 1 FROM pg_proc p WHERE p.proowner = r.oid)
                          OR EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspowner = r.oid)
                          AS "owns!"
                 FROM pg_roles r WHERE r.rolname = $1"#,
            role
        )
        .fetch_one(&mut *conn)
        .await?;
        let reason = if row.superuser {
            Some("is superuser".to_owned())
        } else if row.bypassrls {
            Some("has BYPASSRLS".to_owned())
        } else if row.creates {
            Some("has CREATEROLE or CREATEDB".to_owned())
        } else if let Some(roles) = row.member_of {
            Some(format!("is a member of {roles}"))
        } else if row.owns {
            Some("owns objects in this database".to_owned())
        } else {
            None
        };
        match reason {
            None => Ok(role),
            Some(reason) => Err(StoreError::AppRoleTooPowerful { role, reason }),
        }
    }

    async fn check_can_see_all_tenants(&self) -> Result<(), StoreError> {
        let row = sqlx::query!(
            r#"SELECT current_user AS "role!", rolsuper OR rolbypassrls AS "sees_all!"
                 FROM pg_roles WHERE rolname = current_user"#
        )
        .fetch_one(&self.pool)
        .await?;
        if row.sees_all {
            Ok(())
        } else {
            Err(StoreError::OwnerCannotSeeAllTenants { role: row.role })
        }
    }

    /// Refuses when any tenant lacks the head row of its audit chain.
    pub async fn check_chain_heads(&self) -> Result<(), StoreError> {
        let missing = sqlx::query!(
            r#"SELECT t.tenant_id AS "tenant_id: TenantId", t.name FROM tenants t
                 LEFT JOIN audit_chain_heads h USING (tenant_id)
                WHERE h.tenant_id IS NULL ORDER BY t.created_at LIMIT 1"#
        )
        .fetch_optional(&self.pool)
        .await?;
        match missing {
            None => Ok(()),
            Some(row) => Err(StoreError::MissingChainHead {
                tenant_id: row.tenant_id,
                name: row.name,
            }),
        }
    }

    /// Every tenant, oldest first.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        Ok(sqlx::query_as!(
            Tenant,
            r#"SELECT tenant_id AS "id: TenantId", name, created_at
                 FROM tenants ORDER BY created_at, tenant_id"#
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// The application role's pool. Tenant rows are reachable only through [`AppDb::begin`].
#[derive(Clone)]
pub struct AppDb {
    pool: PgPool,
    metrics: StoreMetrics,
}

impl AppDb {
    async fn connect(
        options: &PgConnectOptions,
        max_connections: u32,
        timeout: Duration,
        metrics: StoreMetrics,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .connect_with(options.clone())
            .await?;
        Ok(Self { pool, metrics })
    }

    /// Opens a transaction scoped to `tenant`.
    pub async fn begin(&self, tenant: TenantId) -> Result<TenantTx, StoreError> {
        let waiting = self.metrics.waiting(APP_POOL);
        let connection = self.pool.acquire().await?;
        self.metrics.acquired(APP_POOL, waiting);
        let begin = TenantTx::begin_statement(tenant);
        let tx = sqlx::Transaction::begin(connection, Some(begin.into())).await?;
        Ok(TenantTx::opened(tx, tenant, self.metrics.clone()))
    }

    /// The collector of this pool's sizes (`fleet_store_pool_connections`,
    /// `fleet_store_pool_max_connections`), for a Prometheus registry.
    pub fn pool_collector(&self) -> PoolCollector {
        PoolCollector::new(vec![(APP_POOL, self.pool.clone())])
    }

    /// The series this pool's transactions are counted in.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// The pool itself, for the modules of this crate that need a connection outside a tenant
    /// transaction (the revocation listener's LISTEN connection).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query!("SELECT 1 AS one")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_before_15_are_refused_naming_the_version_found() {
        for (num, text) in [(140011, "14.11"), (130000, "13.0"), (90624, "9.6.24")] {
            let err = check_server_version(num, text).unwrap_err();
            assert!(
                matches!(&err, StoreError::UnsupportedServerVersion { found, required: 15 } if found == text),
                "{err:?}"
            );
            assert!(err.to_string().contains(text), "{err}");
        }
        for (num, text) in [(150000, "15.0"), (150020, "15.20"), (170002, "17.2")] {
            check_server_version(num, text).unwrap();
        }
    }
}
