//! Service client certificates: how a fleetplane service (ingest in external mode) proves who it
//! is to an external broker.
//!
//! CN is the service name (`fleetd-ingest`), which Mosquitto's `use_identity_as_username` turns
//! into the user its ACL names. There is no organisation (tenant) and no identity URI, so
//! [`DeviceIdentity::from_certificate_der`](crate::DeviceIdentity::from_certificate_der) refuses
//! it: a service certificate can never pass for a device at fleetplane's own gateway.

use rcgen::{DnType, ExtendedKeyUsagePurpose};

use crate::ca::leaf_params;
use crate::error::IssueError;
use crate::{IssuingCa, Validity, DEFAULT_SERVER_CERT_LIFETIME};

/// A client certificate for one of fleetplane's services (clientAuth, no device identity).
pub type ServiceClientCertificate = crate::IssuedCertificate;

impl IssuingCa {
    /// Issues a client certificate, with a fresh key, for the service `name` (such as
    /// `fleetd-ingest`): CN = `name`, clientAuth only, no tenant, no device URI. Valid for
    /// [`DEFAULT_SERVER_CERT_LIFETIME`] (fleetd can issue a fresh one at start-up), never past
    /// the issuing CA.
    pub fn issue_service_client_cert(
        &self,
        name: &str,
    ) -> Result<ServiceClientCertificate, IssueError> {
        let plausible = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !plausible {
            return Err(IssueError::InvalidDnsName {
                name: name.to_owned(),
            });
        }
        let validity =
            Validity::from_now(DEFAULT_SERVER_CERT_LIFETIME)?.within(self.not_after())?;
        let mut params = leaf_params(validity)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue_with_fresh_key(params, validity)
    }
}
