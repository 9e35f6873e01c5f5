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
//! appended. The old certificate is not revoked: it stays valid until its own expiry.
//!
//! Refusals, in order: no client certificate, or not a device certificate of this fleet, or
//! outside its validity → 401 (a certificate that does not chain to the fleet root, or has
//! expired, already fails the TLS handshake: the client sees a handshake alert, no 401);
//! unknown or revoked device, or a certificate not issued to it → 403; bad body or CSR → 400
//! (413 over 64 KiB, 415 not JSON), as for enrollment.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use certs::{DeviceCertificate, DeviceCsr, DeviceIdentity};
use store::device_certificates;
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
    if !issued.iter().any(|c| c.serial == old_serial) {
        return Err(ApiError::DeviceNotAllowed);
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
