//! The storage layer's errors.

use crate::TenantId;

/// Everything that can go wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed a statement, or could not be reached. (Not marked as a
    /// source: its text is already in the message, and error chains would print it twice.)
    #[error("database: {0}")]
    Database(sqlx::Error),

    /// Applying the embedded migrations failed.
    #[error("migrations: {0}")]
    Migrate(sqlx::migrate::MigrateError),

    /// The private cluster could not be prepared, started or reached.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),

    /// The configured database URL does not parse.
    #[error("database URL: {0}")]
    InvalidUrl(String),

    /// The owner role is subject to row-level security, so start-up checks that must see every
    /// tenant (the audit chain heads) would see none and pass vacuously.
    #[error(
        "database role `{role}` (from the database URL) is neither superuser nor BYPASSRLS; \
         fleetd runs migrations and start-up checks as this owner role and they must see every tenant"
    )]
    OwnerCannotSeeAllTenants {
        /// The role of the database URL.
        role: String,
    },

    /// The server is older than the oldest PostgreSQL fleetplane supports (15: `public` closed to
    /// `CREATE` by default, the privilege model the migrations rely on).
    #[error(
        "PostgreSQL {found} is not supported; fleetplane requires PostgreSQL {required} or newer"
    )]
    UnsupportedServerVersion {
        /// The server's `server_version`.
        found: String,
        /// The oldest major version supported.
        required: u32,
    },

    /// The application role has more power than its grants: any of these would void row-level
    /// security or the per-database separation, so fleetd refuses to start.
    #[error("database role `{role}` (the application role) {reason}; fleetplane requires it to have only the privileges its migrations grant")]
    AppRoleTooPowerful {
        /// The application role.
        role: String,
        /// What it has that it must not.
        reason: String,
    },

    /// The owner role's pool was asked for after fleetd closed it at the end of start-up.
    #[error("the owner role's pool is closed once the server has started")]
    OwnerPoolClosed,

    /// A tenant exists without the head row of its audit chain: its history cannot be extended
    /// without breaking verification, so fleetd refuses to start.
    #[error("tenant {tenant_id} ({name}) has no audit chain head; restore it from a backup before starting fleetd")]
    MissingChainHead {
        /// The tenant without a head.
        tenant_id: TenantId,
        /// Its display name.
        name: String,
    },

    /// The database's schema is not the one this program was built for: older (migrations to
    /// apply) or newer (migrated by a later release). Only a tool refuses so; fleetd migrates.
    #[error("database schema is at version {found}, this program expects {expected}")]
    SchemaMismatch {
        /// The newest migration applied to the database (0: none).
        found: i64,
        /// The newest migration embedded in this program.
        expected: i64,
    },

    /// A row that must exist for the current tenant does not.
    #[error("{0} not found")]
    NotFound(&'static str),

    /// The change conflicts with the current state (a name is taken, a group is not empty).
    #[error("conflict: {0}")]
    Conflict(&'static str),

    /// A value was refused before reaching the database.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field that was refused.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl StoreError {
    /// Whether retrying the same work later may succeed: the connection, the server going away
    /// or restarting, serialization failures and deadlocks, resource exhaustion. Refusals and
    /// bugs are not transient.
    pub fn is_transient(&self) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                ["08", "40", "53", "57", "58"]
                    .iter()
                    .any(|class| code.starts_with(class))
            }),
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            _ => false,
        }
    }

    /// Whether a row collided with one already stored (SQLSTATE 23505, unique violation).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => {
                db.code().as_deref() == Some("23505")
            }
            _ => false,
        }
    }

    /// Whether the database refused the data itself (SQLSTATE class 22, data exception, or
    /// 23, integrity constraint violation): the same rows will be refused again, while other
    /// rows in the same transaction may well be accepted on their own.
    pub fn is_data_refusal(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}
