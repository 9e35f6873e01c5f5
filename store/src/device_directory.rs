//! The device directory: which tenant a device belongs to, for ingest, which learns only the
//! device id (from the MQTT topic) and needs the tenant to open a [`TenantTx`].
//!
//! The application role cannot read devices across tenants: row-level security hides them. The lookup goes
//! through `fleet_device_directory(uuid[])`, a `SECURITY DEFINER` function owned by the migration
//! role (superuser or BYPASSRLS, checked at start), which answers only for the ids it is given and
//! returns only tenant and status: it cannot list devices. Maintenance functions of the same kind
//! ([`crate::records::ensure_partitions`]) are called the same way.

use uuid::Uuid;

use crate::{AppDb, DeviceId, StoreError, TenantId, TenantTx};

/// Most ids one lookup may carry (the SQL function refuses more).
pub const MAX_LOOKUP: usize = 1000;

/// Where a device belongs and whether it may send data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// The device.
    pub device_id: DeviceId,
    /// Its tenant.
    pub tenant_id: TenantId,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// The directory entries of those `devices` that exist; unknown ids are simply absent.
pub async fn lookup(app: &AppDb, devices: &[DeviceId]) -> Result<Vec<DirectoryEntry>, StoreError> {
    let mut entries = Vec::with_capacity(devices.len());
    for chunk in devices.chunks(MAX_LOOKUP) {
        let ids: Vec<Uuid> = chunk.iter().map(|d| d.0).collect();
        let mut tx = begin_without_tenant(app).await?;
        let rows = sqlx::query_as!(
            DirectoryEntry,
            r#"SELECT device_id AS "device_id!: DeviceId", tenant_id AS "tenant_id!: TenantId",
                      status = 'revoked' AS "revoked!"
                 FROM fleet_device_directory($1::uuid[])"#,
            &ids,
        )
        .fetch_all(tx.conn())
        .await?;
        tx.commit().await?;
        entries.extend(rows);
    }
    Ok(entries)
}

/// A transaction as the application role scoped to no tenant: `app.tenant_id` is the nil UUID, which no
/// tenant has (ids are random v4), so every tenant table reads empty. Only for calling the
/// narrow `SECURITY DEFINER` functions of this schema.
pub(crate) async fn begin_without_tenant(app: &AppDb) -> Result<TenantTx, StoreError> {
    app.begin(TenantId(Uuid::nil())).await
}

/// The tenant ids a narrow definer function lists (`SELECT fn($1)` with `max` bound), outside
/// any tenant (see [`begin_without_tenant`]): how fleetd's tasks find the tenants to visit.
pub(crate) async fn definer_tenant_ids(
    app: &AppDb,
    query: &'static str,
    max: i32,
) -> Result<Vec<TenantId>, StoreError> {
    let mut tx = begin_without_tenant(app).await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(query)
        .bind(max)
        .fetch_all(tx.conn())
        .await?;
    tx.commit().await?;
    Ok(ids.into_iter().map(TenantId).collect())
}
