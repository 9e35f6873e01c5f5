//! `POST /v1/renew`: a device presents its current certificate as the TLS client certificate
//! and a CSR for a new key, and gets a new certificate for the same identity.
//!
//! Answer `201 Created`, exactly the shape of an enrollment answer: the enrollment contract's
//! `RenewRequest` in, `CertificateResponse` out (`wire::enrollment`).
//!
//! The identity (tenant and device) comes from the verified client certificate only, never
//! from the body; the CSR's subject is ignored (only its P-256 public key is used). In one
//! transaction of the certificate's tenant: the device must exist and be active, and the
//! presented certificate must be one recorded for it; then the new certificate is signed,
//! recorded (with no enrollment token) and the `device.certificate_renewed` audit event
//! appended. Every older certificate of the device is marked superseded in the same
//! transaction: after [`RenewalPolicy::superseded_grace`] the broker refuses it, renewal refuses
//! it and the CRL lists it, so a copied key that renews once does not keep a credential.
//!
//! Refusals, in order: no client certificate, or not a device certificate of this fleet, or
//! outside its validity → 401 (a certificate that does not chain to the fleet root, or has
//! expired, already fails the TLS handshake: the client sees a handshake alert, no 401);
//! unknown or revoked device, a certificate not issued to it, or one superseded longer than the
//! grace period ago → 403; a renewal less than [`RenewalPolicy::min_interval`] after the
//! device's previous renewal, while its newest certificate is not yet within its renewal window
//! (its last third) → 429 with `Retry-After`; bad body or CSR → 400 (413 over 64 KiB, 415
//! not JSON), as for enrollment.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use std::time::Duration;

use axum::Json;
use certs::{DeviceCertificate, DeviceCsr, DeviceIdentity};
use store::device_certificates::{self, DeviceCertificateRecord};
use store::devices;
use time::OffsetDateTime;
use wire::enrollment::{CertificateResponse, RenewRequest};

use crate::client_addr::{client_ip, Peer};
use crate::device_certificate;
use crate::error::ApiError;
use crate::Ctx;

pub(crate) async fn renew(
    State(ctx): State<Ctx>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Json<RenewRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<CertificateResponse>), ApiError> {
    // 401: who is asking, from the certificate rustls verified, and nothing else.
    let leaf = peer
        .client_chain
        .as_ref()
        .and_then(|chain| chain.first())
        .ok_or(ApiError::DeviceCertificateRequired)?;
    let current =
        DeviceCertificate::from_der(leaf).map_err(|_| ApiError::DeviceCertificateRequired)?;
    let identity = DeviceIdentity::from_certificate_der(leaf)
        .map_err(|_| ApiError::DeviceCertificateRequired)?;
    current
        .check_validity(OffsetDateTime::now_utc())
        .map_err(|_| ApiError::DeviceCertificateRequired)?;
    let source = client_ip(peer.addr.ip(), &headers, &ctx.state.trusted_proxies)?;
    let tenant_id = identity.tenant_id;
    let device_id = identity.device_id;
    let old_serial = current.serial().to_string();

    let mut tx = ctx.state.app.begin(tenant_id).await?;
    // 403: the device must be active and the certificate one we issued to it.
    if !devices::is_active(&mut tx, device_id).await? {
        return Err(ApiError::DeviceNotAllowed);
    }
    let issued = device_certificates::list_for_device(&mut tx, device_id).await?;
    let now = OffsetDateTime::now_utc();
    let policy = ctx.state.renewal;
    match issued.iter().find(|c| c.serial == old_serial) {
        Some(presented) if !presented.superseded_beyond(policy.superseded_grace, now) => {}
        _ => return Err(ApiError::DeviceNotAllowed),
    }
    // 429: one renewal per interval, unless the device's newest certificate needs renewing.
    if let Some(wait) = policy.wait_before_renewal(&issued, now) {
        return Err(ApiError::RenewalTooSoon {
            retry_after_secs: wait.as_secs().max(1),
        });
    }

    // 400: the request itself.
    let Json(RenewRequest { csr }) = body?;
    let csr = DeviceCsr::from_pem(csr.as_bytes())?;

    let issued = device_certificate::issue(&ctx, &csr, identity)?;
    let serial = &issued.record.serial;
    device_certificates::record_renewal(&mut tx, device_id, &issued.record, &old_serial, source)
        .await?;
    tx.commit().await?;

    tracing::info!(tenant = %tenant_id, device = %device_id, %source, old_serial = %old_serial, serial = %serial, "device certificate renewed");
    issued.created(&ctx)
}

/// Default [`RenewalPolicy::min_interval`].
pub const DEFAULT_RENEWAL_MIN_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Default [`RenewalPolicy::superseded_grace`]. The agent switches to its new certificate
/// within seconds of the answer (it reconnects at once). The margin is for an agent that
/// crashed after the server's commit but before it stored the answer: it renews again with the
/// old certificate, gets 429 until [`DEFAULT_RENEWAL_MIN_INTERVAL`] has passed, and retries at
/// its next check (`renewal.check`, 1 h ± 25 %): two hours cover that.
pub const DEFAULT_SUPERSEDED_GRACE: Duration = Duration::from_secs(2 * 60 * 60);

/// How often a device may renew and how long its superseded certificates still count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewalPolicy {
    /// Least time between two renewals of one device, unless its newest certificate is within
    /// its renewal window (the last third of its lifetime, when the agent renews).
    pub min_interval: Duration,
    /// How long a certificate superseded by a renewal is still admitted (and may still renew),
    /// so the agent can switch over.
    pub superseded_grace: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            min_interval: DEFAULT_RENEWAL_MIN_INTERVAL,
            superseded_grace: DEFAULT_SUPERSEDED_GRACE,
        }
    }
}

impl RenewalPolicy {
    /// How long the device must wait before it may renew, given the certificates `issued` to
    /// it; `None` when it may renew now. The interval runs from the previous renewal (the
    /// enrollment certificate does not count: the first renewal may follow it at once).
    pub(crate) fn wait_before_renewal(
        &self,
        issued: &[DeviceCertificateRecord],
        now: OffsetDateTime,
    ) -> Option<Duration> {
        let newest = issued.iter().max_by_key(|c| c.issued_at)?;
        if within_renewal_window(newest, now) {
            return None;
        }
        let last_renewal = issued
            .iter()
            .filter(|c| c.enrollment_token_id.is_none())
            .map(|c| c.issued_at)
            .max()?;
        let allowed_at = last_renewal + self.min_interval;
        Duration::try_from(allowed_at - now)
            .ok()
            .filter(|wait| !wait.is_zero())
    }
}

/// Whether less than a third of the certificate's lifetime remains: when the agent renews
/// (`edge-agent/src/certinfo.rs`).
fn within_renewal_window(cert: &DeviceCertificateRecord, now: OffsetDateTime) -> bool {
    let lifetime = cert.not_after - cert.not_before;
    cert.not_after - now <= lifetime / 3
}

#[cfg(test)]
mod tests {
    use store::{DeviceId, TenantId};

    use super::*;

    fn record(issued_at: OffsetDateTime, lifetime: time::Duration) -> DeviceCertificateRecord {
        DeviceCertificateRecord {
            tenant_id: TenantId::new_random(),
            serial: "40".into(),
            device_id: DeviceId::new_random(),
            not_before: issued_at,
            not_after: issued_at + lifetime,
            issued_at,
            enrollment_token_id: None,
            superseded_at: None,
        }
    }

    #[test]
    fn a_renewal_within_the_interval_waits_for_its_rest_unless_the_newest_needs_renewing() {
        let policy = RenewalPolicy::default();
        let now = OffsetDateTime::now_utc();
        let fresh = record(now - time::Duration::minutes(10), time::Duration::days(30));
        assert_eq!(
            policy.wait_before_renewal(std::slice::from_ref(&fresh), now),
            Some(Duration::from_secs(50 * 60))
        );
        let old = record(now - time::Duration::hours(2), time::Duration::days(30));
        assert_eq!(policy.wait_before_renewal(&[old], now), None);
        // A short-lived certificate already in its last third renews at once.
        let short = record(
            now - time::Duration::minutes(10),
            time::Duration::minutes(12),
        );
        assert_eq!(policy.wait_before_renewal(&[short], now), None);
        assert_eq!(policy.wait_before_renewal(&[], now), None);
        // An enrollment certificate does not start the interval.
        let enrolled = DeviceCertificateRecord {
            enrollment_token_id: Some(store::EnrollmentTokenId::new_random()),
            ..fresh
        };
        assert_eq!(policy.wait_before_renewal(&[enrolled], now), None);
    }
}
