//! The record of every device certificate issued: serial, validity, device, and the enrollment
//! token it was issued through. For operators ("what is out there, until when") and as the key
//! of a future revocation list.

use std::net::IpAddr;

use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{self, Action, Actor, Target};
use crate::devices::SignedCertificate;
use crate::{DeviceId, EnrollmentTokenId, StoreError, TenantId, TenantTx};

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

/// Records a certificate issued to `device` (enrollment calls it from
/// [`crate::devices::enroll`], which writes the audit event).
pub(crate) async fn record(
    tx: &mut TenantTx,
    device: DeviceId,
    cert: &SignedCertificate,
    enrollment_token: Option<EnrollmentTokenId>,
) -> Result<DeviceCertificateRecord, StoreError> {
    let tenant = tx.tenant();
    Ok(sqlx::query_as!(
        DeviceCertificateRecord,
        r#"INSERT INTO device_certificates
               (tenant_id, serial, device_id, not_before, not_after, enrollment_token_id)
           VALUES ($1, $2, $3, $4, $5, $6)
           RETURNING tenant_id AS "tenant_id: TenantId", serial, device_id AS "device_id: DeviceId",
                     not_before, not_after, issued_at,
                     enrollment_token_id AS "enrollment_token_id: EnrollmentTokenId""#,
        tenant as TenantId,
        cert.serial,
        device as DeviceId,
        cert.not_before,
        cert.not_after,
        enrollment_token as Option<EnrollmentTokenId>,
    )
    .fetch_one(tx.conn())
    .await?)
}

/// Records the certificate a device obtained by renewal and appends the
/// `device.certificate_renewed` event with the device as actor.
pub async fn record_renewal(
    tx: &mut TenantTx,
    device: DeviceId,
    cert: &SignedCertificate,
    old_serial: &str,
    source: IpAddr,
) -> Result<DeviceCertificateRecord, StoreError> {
    let recorded = record(tx, device, cert, None).await?;
    audit::append(
        tx,
        &Actor::Device(device),
        Action::DeviceCertificateRenewed,
        &Target::Device(device),
        &json!({
            "source_ip": source.to_string(),
            "old_certificate_serial": old_serial,
            "certificate_serial": cert.serial,
            "not_after": cert.not_after.unix_timestamp(),
        }),
    )
    .await?;
    Ok(recorded)
}

/// Certificates of one device, newest expiry first.
pub async fn list_for_device(
    tx: &mut TenantTx,
    device: DeviceId,
) -> Result<Vec<DeviceCertificateRecord>, StoreError> {
    Ok(sqlx::query_as!(
        DeviceCertificateRecord,
        r#"SELECT tenant_id AS "tenant_id: TenantId", serial, device_id AS "device_id: DeviceId",
                  not_before, not_after, issued_at,
                  enrollment_token_id AS "enrollment_token_id: EnrollmentTokenId"
             FROM device_certificates WHERE device_id = $1 ORDER BY not_after DESC"#,
        device as DeviceId,
    )
    .fetch_all(tx.conn())
    .await?)
}
