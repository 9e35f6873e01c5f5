//! `POST /v1/enroll`: an enrollment token and a CSR in, a device certificate out.
//!
//! Request (`Content-Type: application/json`, at most 64 KiB):
//!
//! ```json
//! {"token": "fpe_…", "csr": "-----BEGIN CERTIFICATE REQUEST-----\n…"}
//! ```
//!
//! Answer `201 Created`:
//!
//! ```json
//! {"device_id": "…", "tenant_id": "…",
//!  "certificate_chain": "PEM: device certificate, then the issuing CA",
//!  "ca_certificate": "PEM: the root CA to pin",
//!  "broker_url": "mqtts://…", "expires_at": "RFC 3339 notAfter of the certificate"}
//! ```
//!
//! Everything happens in one transaction of the tenant named in the token: find the token (row-
//! level security: only that tenant's), verify its secret, check revocation, expiry, source
//! address, and take one use within the daily and total limits, create the device in the
//! token's group with its labels, sign the certificate (subject decided by the server), record
//! the certificate, append the audit event, commit. Any refusal rolls everything back.
//! Refusals are listed on [`ApiError`].

use std::fmt;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use certs::{DeviceCsr, DeviceIdentity, Validity};
use serde::{Deserialize, Serialize};
use store::devices::{self, SignedCertificate};
use store::enrollment_tokens::{self, secret, EnrollmentToken, PresentedToken, Refusal};
use store::{DeviceId, TenantId, TenantTx};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::client_addr::{client_ip, Peer};
use crate::error::ApiError;
use crate::Ctx;

/// The body of `POST /v1/enroll`. Unknown fields are ignored, so agents may send more later.
#[derive(Deserialize)]
pub struct EnrollRequest {
    /// The enrollment token string (`fpe_…`); wiped from memory when the request is dropped.
    pub token: Zeroizing<String>,
    /// The device's PKCS#10 request, PEM. Only its (P-256) public key is used.
    pub csr: String,
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"<redacted>")
            .field("csr_len", &self.csr.len())
            .finish()
    }
}

/// The answer to a successful enrollment. A stable contract: agents and scripts parse it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnrollResponse {
    /// The new device's id (also in its certificate).
    pub device_id: DeviceId,
    /// The tenant it belongs to.
    pub tenant_id: TenantId,
    /// PEM: the device certificate, then the issuing CA certificate.
    pub certificate_chain: String,
    /// PEM: the fleet root CA certificate, the one anchor the agent trusts.
    pub ca_certificate: String,
    /// Where the device connects.
    pub broker_url: String,
    /// When the certificate expires (RFC 3339); the agent renews before.
    pub expires_at: String,
}

pub(crate) async fn enroll(
    State(ctx): State<Ctx>,
    Peer { addr: peer, .. }: Peer,
    headers: HeaderMap,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<EnrollResponse>), ApiError> {
    let Json(request) = body?;
    let source = client_ip(peer.ip(), &headers, &ctx.state.trusted_proxies)?;
    // Cheap checks first: a malformed CSR or token costs no argon2 run.
    let csr = DeviceCsr::from_pem(request.csr.as_bytes())?;
    let presented = PresentedToken::parse(&request.token).map_err(|_| ApiError::InvalidToken)?;
    drop(request);

    let tenant_id = presented.tenant_id();
    let (mut tx, token) = verified_token(&ctx, presented).await?;
    let admission = enrollment_tokens::admit(&mut tx, &token, source)
        .await?
        .map_err(refusal)?;

    let device_id = DeviceId::new_random();
    let identity = DeviceIdentity {
        tenant_id,
        device_id,
    };
    let validity = Validity::from_now(ctx.state.device_cert_lifetime)?;
    let cert = ctx
        .state
        .issuing_ca
        .sign_device_csr(&csr, identity, validity)?;
    let signed = signed_certificate(&cert);
    devices::enroll(&mut tx, device_id, &token, &admission, &signed, source).await?;
    tx.commit().await?;

    tracing::info!(tenant = %tenant_id, device = %device_id, token = %token.id, %source, "device enrolled");
    let response = EnrollResponse {
        device_id,
        tenant_id,
        certificate_chain: ctx.state.issuing_ca.chain_pem(cert.der()),
        ca_certificate: ctx.state.issuing_ca.root_pem(),
        broker_url: ctx.state.broker_url.clone(),
        expires_at: rfc3339(cert.not_after())?,
    };
    Ok((StatusCode::CREATED, Json(response)))
}

/// Opens the transaction of the token's tenant, finds the token there and verifies the secret:
/// argon2id off the executor, against a dummy hash when there is no such token. Unknown tenant,
/// unknown token and wrong secret are one answer.
///
/// At most `max_concurrent_verifications` requests are in here at once, and the permit is taken
/// before the transaction: requests waiting their turn hold no database connection.
async fn verified_token(
    ctx: &Ctx,
    presented: PresentedToken,
) -> Result<(TenantTx, EnrollmentToken), ApiError> {
    let permit = tokio::time::timeout(
        ctx.state.enroll_limits.max_wait,
        ctx.verify_permits.acquire(),
    )
    .await
    .map_err(|_| ApiError::Busy)?
    .map_err(|_| ApiError::Internal("verification permits closed".into()))?;
    let mut tx = ctx.state.app.begin(presented.tenant_id()).await?;
    let candidate = enrollment_tokens::load_for_enrollment(&mut tx, presented.token_id()).await?;
    let (token, hash) = match candidate {
        Some(c) => (Some(c.token), Some(c.hash)),
        None => (None, None),
    };
    let matches =
        tokio::task::spawn_blocking(move || secret::verify(hash.as_ref(), presented.secret()))
            .await?;
    drop(permit);
    match token {
        Some(token) if matches => Ok((tx, token)),
        _ => Err(ApiError::InvalidToken),
    }
}

fn refusal(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Revoked => ApiError::TokenRevoked,
        Refusal::Expired => ApiError::TokenExpired,
        Refusal::SourceNotAllowed => ApiError::SourceNotAllowed,
        Refusal::UseLimitReached => ApiError::TokenUsedUp,
        Refusal::DailyLimitReached { resets_at } => ApiError::DailyLimitReached {
            retry_after_secs: seconds_until(resets_at),
        },
    }
}

/// Whole seconds from now until `at`, rounded up, at least 1.
fn seconds_until(at: OffsetDateTime) -> u64 {
    let remaining = at - OffsetDateTime::now_utc();
    let secs = remaining.whole_seconds() + i64::from(remaining.subsec_nanoseconds() > 0);
    u64::try_from(secs).unwrap_or(0).max(1)
}

/// What the store records of a certificate just signed.
pub(crate) fn signed_certificate(cert: &certs::DeviceCertificate) -> SignedCertificate {
    SignedCertificate {
        serial: cert.serial().to_string(),
        not_before: cert.not_before(),
        not_after: cert.not_after(),
    }
}

pub(crate) fn rfc3339(at: OffsetDateTime) -> Result<String, ApiError> {
    at.format(&Rfc3339)
        .map_err(|e| ApiError::Internal(format!("formatting a date: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(seconds_until(now - time::Duration::seconds(5)), 1);
        let soon = seconds_until(now + time::Duration::milliseconds(90_500));
        assert!((90..=91).contains(&soon), "{soon}");
    }

    #[test]
    fn requests_do_not_print_their_token() {
        let request: EnrollRequest =
            serde_json::from_str(r#"{"token":"fpe_secret","csr":"x","extra":1}"#).unwrap();
        assert!(!format!("{request:?}").contains("fpe_secret"));
    }
}
