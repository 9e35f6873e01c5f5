//! The enrollment contract over HTTPS, as the MQTT contract is in [`topic`](crate::topic):
//! the paths, the size limit and the JSON bodies of `POST /v1/enroll` and `POST /v1/renew`.
//! The agent sends these types and the API parses them, so the two cannot drift apart.
//!
//! | Call | Path | Authenticates with | Body | Answer `201 Created` |
//! |---|---|---|---|---|
//! | enroll | [`ENROLL_PATH`] | the token in the body | [`EnrollRequest`] | [`CertificateResponse`] |
//! | renew | [`RENEW_PATH`] | the current device certificate (mutual TLS) | [`RenewRequest`] | [`CertificateResponse`] |
//!
//! Bodies are JSON (`Content-Type: application/json`) of at most [`MAX_REQUEST_BYTES`].
//! Unknown fields are ignored both ways, so either side may add optional fields later.
//! Refusals are RFC 9457 problem documents; the API's `CONTRACT.md` lists them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, TenantId};

/// `POST` path of enrollment.
pub const ENROLL_PATH: &str = "/v1/enroll";
/// `POST` path of certificate renewal.
pub const RENEW_PATH: &str = "/v1/renew";
/// The largest request body either call accepts (a P-256 CSR in PEM is about 500 bytes).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The body of [`ENROLL_PATH`]. Its `Debug` never prints the token.
#[derive(Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The enrollment token string (`fpe_…`).
    pub token: String,
    /// The device's PKCS#10 request, PEM. Only its (P-256) public key is used: the server
    /// decides the certificate's subject.
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

/// The body of [`RENEW_PATH`]: a CSR for the device's new key. The identity comes from the
/// client certificate alone, never from the body.
#[derive(Serialize, Deserialize)]
pub struct RenewRequest {
    /// The device's PKCS#10 request for its new key, PEM.
    pub csr: String,
}

impl fmt::Debug for RenewRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenewRequest")
            .field("csr_len", &self.csr.len())
            .finish()
    }
}

/// The answer of both calls: the device's (new) certificate and where to connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// The device's id (also its certificate's common name).
    pub device_id: DeviceId,
    /// The tenant it belongs to (also its certificate's organization).
    pub tenant_id: TenantId,
    /// PEM: the device certificate, then the issuing CA certificate.
    pub certificate_chain: String,
    /// PEM: the fleet root CA certificate, the one anchor the agent trusts.
    pub ca_certificate: String,
    /// Where the device connects: `mqtts://host:port`.
    pub broker_url: String,
    /// When the certificate expires (RFC 3339). Informational: the agent reads the
    /// certificate itself.
    pub expires_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_token() {
        let request = EnrollRequest {
            token: "fpe_secret-token-text".into(),
            csr: "-----BEGIN CERTIFICATE REQUEST-----".into(),
        };
        let printed = format!("{request:?}");
        assert!(!printed.contains("secret-token-text"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}
