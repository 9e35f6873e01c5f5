//! What enrollment and renewal share once the caller is known: sign the CSR for the device's
//! identity, describe the certificate for the store, and answer `201 Created` with the
//! [`CertificateResponse`] of the enrollment contract (`wire::enrollment`).

use axum::http::StatusCode;
use axum::Json;
use certs::{DeviceCertificate, DeviceCsr, DeviceIdentity, Validity};
use store::devices::SignedCertificate;
use time::format_description::well_known::Rfc3339;
use wire::enrollment::CertificateResponse;

use crate::error::ApiError;
use crate::Ctx;

/// A device certificate just signed, not yet recorded.
pub(crate) struct Issued {
    cert: DeviceCertificate,
    /// What the store records of it.
    pub(crate) record: SignedCertificate,
}

/// Signs `csr`'s key for `identity`, valid from now for the configured device lifetime
/// (clamped by the issuing CA to its own validity).
pub(crate) fn issue(
    ctx: &Ctx,
    csr: &DeviceCsr,
    identity: DeviceIdentity,
) -> Result<Issued, ApiError> {
    let validity = Validity::from_now(ctx.state.device_cert_lifetime)?;
    let cert = ctx
        .state
        .issuing_ca
        .sign_device_csr(csr, identity, validity)?;
    let record = SignedCertificate {
        serial: cert.serial().to_string(),
        not_before: cert.not_before(),
        not_after: cert.not_after(),
    };
    Ok(Issued { cert, record })
}

impl Issued {
    /// The answer, once the certificate is recorded and committed.
    pub(crate) fn created(
        &self,
        ctx: &Ctx,
    ) -> Result<(StatusCode, Json<CertificateResponse>), ApiError> {
        let identity = self.cert.identity();
        let expires_at = self
            .cert
            .not_after()
            .format(&Rfc3339)
            .map_err(|e| ApiError::Internal(format!("formatting a date: {e}")))?;
        let response = CertificateResponse {
            device_id: identity.device_id,
            tenant_id: identity.tenant_id,
            certificate_chain: ctx.state.issuing_ca.chain_pem(self.cert.der()),
            ca_certificate: ctx.state.issuing_ca.root_pem(),
            broker_url: ctx.state.broker_url.clone(),
            expires_at,
        };
        Ok((StatusCode::CREATED, Json(response)))
    }
}
