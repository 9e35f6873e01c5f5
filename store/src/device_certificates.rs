//! The record of every device certificate issued: serial, validity, device, and the enrollment
//! token it was issued through. For operators ("what is out there, until when") and as the key
//! of a future revocation list.

use sqlx::Row;
use time::OffsetDateTime;

use crate::{DeviceId, EnrollmentTokenId, StoreError, TenantId, TenantTx};

/// A certificate to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeviceCertificate {
    /// Serial number, lowercase hex as `certs::SerialNumber` prints it.
    pub serial: String,
    /// The device it identifies.
    pub device_id: DeviceId,
    /// Start of its validity.
    pub not_before: OffsetDateTime,
    /// End of its validity.
    pub not_after: OffsetDateTime,
    /// The enrollment token it was issued through, if any (renewals have none).
    pub enrollment_token_id: Option<EnrollmentTokenId>,
}

/// A recorded certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCertificateRecord {
    /// Its tenant.
    pub tenant_id: TenantId,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// The device it identifies.
    pub device_id: DeviceId,
    /// Start of its validity.
    pub not_before: OffsetDateTime,
    /// End of its validity.
    pub not_after: OffsetDateTime,
    /// When it was recorded.
    pub issued_at: OffsetDateTime,
    /// The enrollment token it was issued through, if any.
    pub enrollment_token_id: Option<EnrollmentTokenId>,
}

const COLUMNS: &str =
    "tenant_id, serial, device_id, not_before, not_after, issued_at, enrollment_token_id";

/// Records an issued certificate in the transaction's tenant.
pub async fn record(
    tx: &mut TenantTx,
    cert: &NewDeviceCertificate,
) -> Result<DeviceCertificateRecord, StoreError> {
    let tenant = tx.tenant();
    let row = sqlx::query(&format!(
        "INSERT INTO device_certificates
             (tenant_id, serial, device_id, not_before, not_after, enrollment_token_id)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    ))
    .bind(tenant)
    .bind(&cert.serial)
    .bind(cert.device_id)
    .bind(cert.not_before)
    .bind(cert.not_after)
    .bind(cert.enrollment_token_id)
    .fetch_one(tx.conn())
    .await?;
    record_from_row(&row)
}

/// Certificates of one device, newest expiry first.
pub async fn list_for_device(
    tx: &mut TenantTx,
    device: DeviceId,
) -> Result<Vec<DeviceCertificateRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM device_certificates WHERE device_id = $1 ORDER BY not_after DESC"
    ))
    .bind(device)
    .fetch_all(tx.conn())
    .await?;
    rows.iter().map(record_from_row).collect()
}

fn record_from_row(row: &sqlx::postgres::PgRow) -> Result<DeviceCertificateRecord, StoreError> {
    Ok(DeviceCertificateRecord {
        tenant_id: row.try_get("tenant_id")?,
        serial: row.try_get("serial")?,
        device_id: row.try_get("device_id")?,
        not_before: row.try_get("not_before")?,
        not_after: row.try_get("not_after")?,
        issued_at: row.try_get("issued_at")?,
        enrollment_token_id: row.try_get("enrollment_token_id")?,
    })
}
