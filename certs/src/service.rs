//! Service client certificates: how a fleetplane service (ingest in external mode) proves who it
//! is to an external broker.
//!
//! CN is the service name (`fleetd-ingest`), which Mosquitto's `use_identity_as_username` turns
//! into the user its ACL names. There is no organisation (tenant) and no identity URI, so
//! [`DeviceIdentity::from_certificate_der`](crate::DeviceIdentity::from_certificate_der) refuses
//! it: a service certificate can never pass for a device at fleetplane's own gateway.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose, PublicKeyData, SerialNumber, SigningKey,
};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::IssueError;
use crate::{IssuingCa, PrivateKey, Validity, DEFAULT_SERVER_CERT_LIFETIME};

/// A client certificate for one of fleetplane's services (clientAuth, no device identity).
pub type ServiceClientCertificate = crate::IssuedCertificate;

/// The issuing CA's key, borrowed for one signature.
struct BorrowedKey<'a>(&'a PrivateKey);

impl PublicKeyData for BorrowedKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.key_pair().der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        PublicKeyData::algorithm(self.0.key_pair())
    }
}

impl SigningKey for BorrowedKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.key_pair().sign(msg)
    }
}

impl IssuingCa {
    /// Issues a client certificate, with a fresh key, for the service `name` (such as
    /// `fleetd-ingest`): CN = `name`, clientAuth only, no tenant, no device URI. Valid for
    /// [`DEFAULT_SERVER_CERT_LIFETIME`] (fleetd can issue a fresh one at start-up).
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
        let validity = Validity::from_now(DEFAULT_SERVER_CERT_LIFETIME)?;
        let not_after = validity.not_after().min(self.not_after());
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = validity.not_before();
        params.not_after = not_after;
        let key = PrivateKey::generate().map_err(|_| IssueError::Crypto {
            reason: "key generation failed".to_owned(),
        })?;
        let issuer = Issuer::from_ca_cert_der(self.der(), BorrowedKey(self.key()))?;
        let cert = params.signed_by(key.key_pair(), &issuer)?;
        Ok(ServiceClientCertificate {
            der: cert.der().clone(),
            key,
            issuing_ca: self.der().clone(),
            not_after,
        })
    }
}

fn random_serial() -> Result<SerialNumber, IssueError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IssueError::Crypto {
            reason: "system random source failed".to_owned(),
        })?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}
