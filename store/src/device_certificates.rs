//! The record of every device certificate issued: serial, validity, device, the enrollment
//! token it was issued through, and when a renewal superseded it. For operators ("what is out
//! there, until when"), for admission (a superseded certificate is refused after a grace period)
//! and as the key of the revocation list ([`revocation_list`]).

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{self, Action, Actor, Target};
use crate::devices::SignedCertificate;
use crate::{AppDb, DeviceId, EnrollmentTokenId, StoreError, TenantId, TenantTx};

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
    /// When a renewal of the same device superseded it.
    pub superseded_at: Option<OffsetDateTime>,
}

impl DeviceCertificateRecord {
    /// Whether it was superseded longer ago than `grace` at `now`: from then on admission
    /// refuses it, renewal refuses it and the CRL lists it.
    pub fn superseded_beyond(&self, grace: Duration, now: OffsetDateTime) -> bool {
        self.superseded_at.is_some_and(|at| at + grace <= now)
    }
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
                     enrollment_token_id AS "enrollment_token_id: EnrollmentTokenId",
                     superseded_at"#,
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

/// Records the certificate a device obtained by renewal, marks every older certificate of the
/// device superseded (now) and appends the `device.certificate_renewed` event, naming them, with
/// the device as actor.
pub async fn record_renewal(
    tx: &mut TenantTx,
    device: DeviceId,
    cert: &SignedCertificate,
    old_serial: &str,
    source: IpAddr,
) -> Result<DeviceCertificateRecord, StoreError> {
    let recorded = record(tx, device, cert, None).await?;
    let superseded = supersede_all_but(tx, device, &cert.serial).await?;
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
            "superseded_serials": superseded,
        }),
    )
    .await?;
    Ok(recorded)
}

/// Marks every certificate of `device` but `current` superseded, if not already; returns the
/// serials it marked.
async fn supersede_all_but(
    tx: &mut TenantTx,
    device: DeviceId,
    current: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"UPDATE device_certificates SET superseded_at = now()
            WHERE device_id = $1 AND serial <> $2 AND superseded_at IS NULL
        RETURNING serial"#,
        device as DeviceId,
        current,
    )
    .fetch_all(tx.conn())
    .await?)
}

/// Whether a device presenting the certificate `serial` may connect: the device exists in the
/// transaction's tenant and is active, and the certificate was not superseded longer ago than
/// `grace`. A serial never recorded (certificates made outside enrollment and renewal) is judged
/// by the device's status alone. The broker asks this at every handshake.
pub async fn admits(
    tx: &mut TenantTx,
    device: DeviceId,
    serial: &str,
    grace: Duration,
) -> Result<bool, StoreError> {
    let admitted = sqlx::query_scalar!(
        r#"SELECT d.status = 'active' AND NOT EXISTS (
                   SELECT 1 FROM device_certificates c
                    WHERE c.device_id = d.device_id AND c.serial = $2
                      AND c.superseded_at <= now() - make_interval(secs => $3))
                  AS "admitted!"
             FROM devices d WHERE d.device_id = $1"#,
        device as DeviceId,
        serial,
        grace.as_secs_f64(),
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(admitted.unwrap_or(false))
}

/// Why a certificate is on the revocation list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationCause {
    /// Its device was revoked.
    DeviceRevoked,
    /// A renewal superseded it and the grace period has passed.
    Superseded,
}

/// One entry of the fleet's revocation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// When it stopped being valid: the device's revocation, or the renewal that superseded it.
    pub revoked_at: OffsetDateTime,
    /// Why.
    pub cause: RevocationCause,
}

/// Every unexpired certificate of the whole fleet, all tenants, that must no longer be
/// accepted: those of revoked devices, and those superseded longer ago than `grace`. Read
/// through `fleet_certificate_revocations`, a narrow definer function that returns serials and
/// dates only: what a CRL publishes anyway.
pub async fn revocation_list(
    app: &AppDb,
    grace: Duration,
) -> Result<Vec<RevokedCertificate>, StoreError> {
    let mut tx = crate::device_directory::begin_without_tenant(app).await?;
    let rows = sqlx::query!(
        r#"SELECT serial AS "serial!", revoked_at AS "revoked_at!", superseded AS "superseded!"
             FROM fleet_certificate_revocations(make_interval(secs => $1))"#,
        grace.as_secs_f64(),
    )
    .fetch_all(tx.conn())
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| RevokedCertificate {
            serial: row.serial,
            revoked_at: row.revoked_at,
            cause: match row.superseded {
                true => RevocationCause::Superseded,
                false => RevocationCause::DeviceRevoked,
            },
        })
        .collect())
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
                  enrollment_token_id AS "enrollment_token_id: EnrollmentTokenId", superseded_at
             FROM device_certificates WHERE device_id = $1 ORDER BY not_after DESC"#,
        device as DeviceId,
    )
    .fetch_all(tx.conn())
    .await?)
}
