//! Devices of a tenant: create, read, list, status, revocation, presence, delete.

use std::collections::BTreeMap;

use serde_json::json;
use sqlx::types::Json;
use sqlx::Row;
use time::OffsetDateTime;

use crate::{audit, revocations, DeviceId, StoreError, TenantId, TenantTx};

/// Whether a device may connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceStatus {
    /// May connect and send data.
    Active,
    /// Refused at the handshake and by ingest, for good.
    Revoked,
}

impl DeviceStatus {
    fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Active => "active",
            DeviceStatus::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(DeviceStatus::Active),
            "revoked" => Ok(DeviceStatus::Revoked),
            other => Err(StoreError::Invalid {
                field: "device status",
                reason: format!("unknown value {other:?}"),
            }),
        }
    }
}

/// What is needed to create a device.
#[derive(Clone, Debug)]
pub struct NewDevice {
    /// Display name.
    pub name: String,
    /// The group it belongs to.
    pub group: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
}

/// A device as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Its tenant.
    pub tenant_id: TenantId,
    /// Its identifier.
    pub id: DeviceId,
    /// Display name.
    pub name: String,
    /// Group.
    pub group: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Whether it may connect.
    pub status: DeviceStatus,
    /// Whether it is connected now.
    pub online: bool,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it was last connected or heard from.
    pub last_seen_at: Option<OffsetDateTime>,
}

const COLUMNS: &str =
    "tenant_id, device_id, name, device_group, labels, status, online, created_at, last_seen_at";

/// Creates a device in the transaction's tenant with a fresh id.
pub async fn create(tx: &mut TenantTx, new: &NewDevice) -> Result<Device, StoreError> {
    create_with_id(tx, DeviceId::new_random(), new).await
}

/// Creates a device in the transaction's tenant with an id the caller chose (enrollment picks
/// it first, to name the device after it).
pub async fn create_with_id(
    tx: &mut TenantTx,
    id: DeviceId,
    new: &NewDevice,
) -> Result<Device, StoreError> {
    let tenant = tx.tenant();
    let row = sqlx::query(&format!(
        "INSERT INTO devices (tenant_id, device_id, name, device_group, labels)
         VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(&new.name)
    .bind(&new.group)
    .bind(Json(&new.labels))
    .fetch_one(tx.conn())
    .await?;
    device_from_row(&row)
}

/// One device of the transaction's tenant, if it exists there.
pub async fn get(tx: &mut TenantTx, id: DeviceId) -> Result<Option<Device>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM devices WHERE device_id = $1"
    ))
    .bind(id)
    .fetch_optional(tx.conn())
    .await?;
    row.as_ref().map(device_from_row).transpose()
}

/// Devices of the transaction's tenant ordered by id, after `after`, at most `limit`.
pub async fn list(
    tx: &mut TenantTx,
    after: Option<DeviceId>,
    limit: i64,
) -> Result<Vec<Device>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM devices WHERE ($1::uuid IS NULL OR device_id > $1)
         ORDER BY device_id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(tx.conn())
    .await?;
    rows.iter().map(device_from_row).collect()
}

/// Sets a device's status; false when the tenant has no such device.
pub async fn set_status(
    tx: &mut TenantTx,
    id: DeviceId,
    status: DeviceStatus,
) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE devices SET status = $2 WHERE device_id = $1")
        .bind(id)
        .bind(status.as_str())
        .execute(tx.conn())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// What [`revoke`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRevocation {
    /// The device was active and is now revoked.
    Revoked,
    /// The device had been revoked before; nothing changed but the notification was sent again.
    AlreadyRevoked,
}

/// Revokes a device of the transaction's tenant: sets its status, appends the audit event and
/// queues a notification on [`revocations::CHANNEL`] with `pg_notify`, all in the caller's
/// transaction. Postgres delivers the notification at commit, to every listening fleetd
/// ([`revocations::RevocationListener`]), and not at all on rollback.
/// [`StoreError::NotFound`] when the tenant has no such device.
pub async fn revoke(
    tx: &mut TenantTx,
    id: DeviceId,
    actor: &str,
) -> Result<DeviceRevocation, StoreError> {
    let changed = sqlx::query(
        "UPDATE devices SET status = 'revoked' WHERE device_id = $1 AND status <> 'revoked'",
    )
    .bind(id)
    .execute(tx.conn())
    .await?;
    let outcome = if changed.rows_affected() == 1 {
        DeviceRevocation::Revoked
    } else if get(tx, id).await?.is_some() {
        DeviceRevocation::AlreadyRevoked
    } else {
        return Err(StoreError::NotFound("device"));
    };
    if outcome == DeviceRevocation::Revoked {
        audit::append(
            tx,
            actor,
            "device.revoke",
            &format!("device:{id}"),
            &json!({}),
        )
        .await?;
    }
    // Sent again for an already revoked device: harmless, and it repairs a missed delivery.
    revocations::notify(tx, id).await?;
    Ok(outcome)
}

/// Whether the device exists in the transaction's tenant and may connect. The broker asks this
/// at every handshake.
pub async fn is_active(tx: &mut TenantTx, id: DeviceId) -> Result<bool, StoreError> {
    let active: Option<bool> =
        sqlx::query_scalar("SELECT status = 'active' FROM devices WHERE device_id = $1")
            .bind(id)
            .fetch_optional(tx.conn())
            .await?;
    Ok(active.unwrap_or(false))
}

/// Records a connect or disconnect; false when the tenant has no such device.
pub async fn record_presence(
    tx: &mut TenantTx,
    id: DeviceId,
    online: bool,
    at: OffsetDateTime,
) -> Result<bool, StoreError> {
    let done =
        sqlx::query("UPDATE devices SET online = $2, last_seen_at = $3 WHERE device_id = $1")
            .bind(id)
            .bind(online)
            .bind(at)
            .execute(tx.conn())
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes a device; false when the tenant has no such device.
pub async fn delete(tx: &mut TenantTx, id: DeviceId) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM devices WHERE device_id = $1")
        .bind(id)
        .execute(tx.conn())
        .await?;
    Ok(done.rows_affected() == 1)
}

fn device_from_row(row: &sqlx::postgres::PgRow) -> Result<Device, StoreError> {
    let Json(labels): Json<BTreeMap<String, String>> = row.try_get("labels")?;
    Ok(Device {
        tenant_id: row.try_get("tenant_id")?,
        id: row.try_get("device_id")?,
        name: row.try_get("name")?,
        group: row.try_get("device_group")?,
        labels,
        status: DeviceStatus::parse(row.try_get("status")?)?,
        online: row.try_get("online")?,
        created_at: row.try_get("created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
    })
}
