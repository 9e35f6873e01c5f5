//! X.509 for fleetplane: the fleet PKI, device certificates signed from CSRs, and the
//! device identity read back from them.
//!
//! # The PKI
//!
//! A root CA (10 years) signs one online issuing CA (2 years, pathlen 0). The issuing CA
//! signs server certificates for the broker and API listeners and device certificates
//! (30 days by default). Every key is ECDSA P-256; ring is the only crypto provider.
//!
//! The root key is needed only to create or rotate the issuing CA: fleetd runs with
//! [`IssuingCa::load`], which reads the issuing key and the two certificates and never
//! the root key, so an operator may keep `root-ca.key` offline.
//!
//! # Enrollment
//!
//! ```text
//! CSR bytes ──DeviceCsr::from_pem──▶ DeviceCsr (P-256 key, self-signature verified)
//!            ──IssuingCa::sign_device_csr(csr, identity, validity)──▶ DeviceCertificate
//! ```
//!
//! The server, not the CSR, decides what the certificate says: [`DeviceCsr`] keeps only
//! the public key, and the subject and names come from the [`DeviceIdentity`] the server
//! passes in. How the identity is encoded is described in the [`identity`] module docs.
//!
//! # At the TLS handshake
//!
//! After rustls has verified a client certificate against the issuing CA,
//! [`DeviceIdentity::from_certificate_der`] reads who it belongs to. The crate speaks
//! `rustls-pki-types`, so its DER is handed over as is, and [`tls`] holds the server side's
//! one TLS policy (provider, versions, suites) that every listener and client builds from.

#![warn(missing_docs)]

mod ca;
mod crl;
mod csr;
mod error;
pub mod identity;
mod key;
mod pem;
mod pki;
mod service;
pub mod tls;

pub use ca::{
    IssuedCertificate, IssuingCa, PkiParams, RootCa, ServerCertParams, ServerCertificate, Validity,
    CLOCK_SKEW_ALLOWANCE, DEFAULT_DEVICE_CERT_LIFETIME, DEFAULT_ISSUING_CA_LIFETIME,
    DEFAULT_ROOT_CA_LIFETIME, DEFAULT_SERVER_CERT_LIFETIME,
};
pub use crl::{Crl, CrlEntry, CrlReason, CRL_VALIDITY};
pub use csr::{DeviceCsr, MAX_CSR_LEN};
pub use error::{
    CsrError, IdentityError, IssueError, KeyAlgorithm, KeyError, PkiError, ValidityError,
};
pub use identity::{DeviceCertificate, DeviceIdentity, SerialNumber, IDENTITY_URI_PREFIX};
pub use key::{check_trusted_path, PrivateKey, KEY_FILE_MODE};
pub use pki::{Pki, PkiLayout, PkiOrigin};
/// DER types shared with rustls, re-exported so callers need not name the crate.
pub use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
pub use service::ServiceClientCertificate;

#[cfg(test)]
mod tests {
    /// fleetd shares one issuing CA across tasks behind an `Arc`.
    #[test]
    fn handles_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::IssuingCa>();
        assert_send_sync::<super::RootCa>();
        assert_send_sync::<super::Pki>();
        assert_send_sync::<super::PrivateKey>();
        assert_send_sync::<super::ServerCertificate>();
        assert_send_sync::<super::DeviceCertificate>();
    }
}
