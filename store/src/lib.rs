//! fleetplane's storage layer: the Postgres schema, its migrations, the tenant-scoped
//! transaction through which all tenant data is reached, and the per-tenant audit chain.
//!
//! Nothing else in fleetplane talks SQL. Two kinds of handle exist:
//!
//! - [`AppDb`] works as the database's application role, `fleet_app_<database>` ([`app_role`]; no
//!   superuser, no BYPASSRLS, no memberships, owns nothing). Its only
//!   way to tenant rows is [`AppDb::begin`], which opens a [`TenantTx`] for exactly one tenant;
//!   the repository functions ([`tenants`], [`devices`], [`audit`]) take that transaction.
//! - [`AdminDb`] works as the owner role: migrations, start-up checks and cross-tenant listings
//!   that bootstrap needs. It never reads or writes tenant data on behalf of a request, and fleetd
//!   closes it once started ([`Database::admin`]).
//!
//! [`Database::open`] gives both, starting a private cluster ([`cluster`]) when no URL is set.

pub mod api_keys;
pub mod audit;
pub mod audit_checkpoints;
mod audit_names;
pub mod backup;
pub mod cluster;
mod connect;
pub mod credentials;
mod database_url;
pub mod device_certificates;
pub mod device_directory;
pub mod device_groups;
pub mod devices;
pub mod enrollment_tokens;
mod error;
pub mod evidence;
mod ids;
pub mod ingest_state;
pub mod metrics;
pub mod patch_inventory;
pub mod records;
pub mod revocations;
pub mod tenants;
pub mod text;
mod tx;
// OIDC single sign-on: providers and sign-in attempts (issue 13).
pub mod sso;

pub use connect::{
    app_role, check_server_version, expected_schema_version, AdminDb, AppDb, Database,
    DatabaseSettings, Purpose, SchemaVersion, MIN_SERVER_MAJOR,
};
pub use database_url::{DatabaseUrl, NotADatabaseUrl};
pub use error::StoreError;
pub use ids::{
    ApiKeyId, DeviceGroupId, DeviceId, EnrollmentTokenId, InvalidApiKeyId, TenantId, API_KEY_ID_LEN,
};
pub use ids::{InvitationId, UserId};
pub mod people_tokens;
pub mod sessions;
// SIEM forwarding: the per-tenant opt-in and the forwarder's cursor (issue 15).
pub mod siem;
pub mod users;
pub use metrics::{PoolCollector, StoreMetrics};
pub use tx::TenantTx;
