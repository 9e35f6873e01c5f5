//! The two certificate authorities and what they issue.
//!
//! ```text
//! root CA (10 years, offline-capable)
//!   └── issuing CA (2 years, pathlen 0, held by fleetd)
//!         ├── server certificates (broker and API listeners, serverAuth)
//!         └── device certificates (from device CSRs, clientAuth, 30 days)
//! ```
//!
//! The root key is needed only to create (or rotate) the issuing CA. Everything fleetd
//! does at run time, signing device and server certificates, needs the issuing key
//! alone, so the root key can be moved off the server after `fleetctl pki init`.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use time::{OffsetDateTime, UtcOffset};

use crate::csr::DeviceCsr;
use crate::error::IssueError;
use crate::identity::{DeviceCertificate, DeviceIdentity};
use crate::key::{CaKey, PrivateKey};

const DAY: u64 = 24 * 60 * 60;

/// Default lifetime of a device certificate. Short, because the agent renews it and a
/// leaked device key is worth little for long.
pub const DEFAULT_DEVICE_CERT_LIFETIME: Duration = Duration::from_secs(30 * DAY);

/// Default lifetime of a broker or API server certificate. fleetd holds the issuing key,
/// so it can issue a fresh one at start-up.
pub const DEFAULT_SERVER_CERT_LIFETIME: Duration = Duration::from_secs(90 * DAY);

/// Default lifetime of the root CA.
pub const DEFAULT_ROOT_CA_LIFETIME: Duration = Duration::from_secs(3652 * DAY);

/// Default lifetime of the issuing CA.
pub const DEFAULT_ISSUING_CA_LIFETIME: Duration = Duration::from_secs(730 * DAY);

/// How far before "now" a new certificate starts, so that a device whose clock is a few
/// minutes behind does not see a fresh certificate as not yet valid.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);

/// Length of random serial numbers. Two bits are fixed (see [`random_serial`]), leaving
/// 126 random bits; the CA/Browser Forum asks for at least 64.
const SERIAL_LEN: usize = 16;

/// The period a certificate is valid for, whole seconds, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl Validity {
    /// Valid for `lifetime` from now, starting [`CLOCK_SKEW_ALLOWANCE`] earlier.
    pub fn from_now(lifetime: Duration) -> Result<Self, IssueError> {
        Self::starting_at(OffsetDateTime::now_utc(), lifetime)
    }

    /// Valid for `lifetime` from `start`, starting [`CLOCK_SKEW_ALLOWANCE`] earlier.
    pub fn starting_at(start: OffsetDateTime, lifetime: Duration) -> Result<Self, IssueError> {
        if lifetime.is_zero() {
            return Err(IssueError::InvalidLifetime);
        }
        let not_after = checked_add(start, lifetime).ok_or(IssueError::InvalidLifetime)?;
        let not_before = start
            .checked_sub(time::Duration::try_from(CLOCK_SKEW_ALLOWANCE).expect("five minutes"))
            .ok_or(IssueError::InvalidLifetime)?;
        Self::between(not_before, not_after)
    }

    /// Exactly `[not_before, not_after]`, truncated to whole seconds. Tests use this to
    /// make certificates that are expired or not yet valid.
    pub fn between(
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Self, IssueError> {
        let not_before = whole_seconds_utc(not_before);
        let not_after = whole_seconds_utc(not_after);
        if not_after <= not_before {
            return Err(IssueError::EmptyValidity);
        }
        Ok(Self {
            not_before,
            not_after,
        })
    }

    /// Start of the period.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// End of the period.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Ends the period no later than the issuer does.
    ///
    /// A certificate cannot be used past its issuer's end anyway; clamping makes its
    /// `notAfter` say so, which is the date the agent schedules its renewal by.
    pub(crate) fn within(self, issuer_not_after: OffsetDateTime) -> Result<Self, IssueError> {
        if issuer_not_after <= self.not_before {
            return Err(IssueError::IssuerExpired);
        }
        Ok(Self {
            not_before: self.not_before,
            not_after: self.not_after.min(issuer_not_after),
        })
    }

    fn apply_to(self, params: &mut CertificateParams) {
        params.not_before = self.not_before;
        params.not_after = self.not_after;
    }
}

/// Names and lifetimes for a new PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiParams {
    /// Organization (O) of both CA certificates, and the start of their common names.
    pub organization: String,
    /// Lifetime of the root CA.
    pub root_lifetime: Duration,
    /// Lifetime of the issuing CA (clamped to the root's).
    pub issuing_lifetime: Duration,
}

impl Default for PkiParams {
    fn default() -> Self {
        Self {
            organization: "fleetplane".to_owned(),
            root_lifetime: DEFAULT_ROOT_CA_LIFETIME,
            issuing_lifetime: DEFAULT_ISSUING_CA_LIFETIME,
        }
    }
}

/// The root CA: trusted by every agent (pinned), used only to sign issuing CAs.
pub struct RootCa {
    issuer: Issuer<'static, CaKey>,
    der: CertificateDer<'static>,
    not_after: OffsetDateTime,
}

impl RootCa {
    /// Creates a new self-signed root CA with a fresh key.
    pub fn generate(params: &PkiParams) -> Result<Self, IssueError> {
        let key = fresh_key()?;
        let validity = Validity::from_now(params.root_lifetime)?;
        let mut cert = ca_params(
            &format!("{} root CA", params.organization),
            params,
            validity,
        )?;
        // One level below the root: the issuing CA, which itself may not delegate.
        cert.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        let der = cert.self_signed(key.key_pair())?.der().clone();
        Ok(Self {
            issuer: Issuer::new(cert, CaKey(key)),
            der,
            not_after: validity.not_after,
        })
    }

    /// Creates a new issuing CA signed by this root (initial set-up or rotation).
    pub fn issue_issuing_ca(&self, params: &PkiParams) -> Result<IssuingCa, IssueError> {
        let key = fresh_key()?;
        let validity = Validity::from_now(params.issuing_lifetime)?.within(self.not_after)?;
        let mut cert = ca_params(
            &format!("{} issuing CA", params.organization),
            params,
            validity,
        )?;
        // pathlen 0: the online key can sign leaves only, never another CA.
        cert.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        cert.use_authority_key_identifier_extension = true;
        let der = cert.signed_by(key.key_pair(), &self.issuer)?.der().clone();
        Ok(IssuingCa {
            issuer: Issuer::new(cert, CaKey(key)),
            der,
            not_after: validity.not_after,
            root_der: self.der.clone(),
        })
    }

    /// The root certificate in DER: the trust anchor agents pin.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The root certificate in PEM.
    pub fn pem(&self) -> String {
        crate::pem::certificate_pem(&self.der)
    }

    pub(crate) fn key(&self) -> &PrivateKey {
        &self.issuer.key().0
    }

    /// Rebuilds a root CA from its certificate and key, as stored on disk.
    pub(crate) fn from_parts(
        der: CertificateDer<'static>,
        key: PrivateKey,
        not_after: OffsetDateTime,
    ) -> Result<Self, rcgen::Error> {
        Ok(Self {
            issuer: Issuer::from_ca_cert_der(&der, CaKey(key))?,
            der,
            not_after,
        })
    }
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The online issuing CA: signs device and server certificates.
///
/// Holds the issuing key and certificate, plus the root certificate (public) so it can
/// hand out the full chain and the anchor to pin. It never holds the root key.
pub struct IssuingCa {
    issuer: Issuer<'static, CaKey>,
    der: CertificateDer<'static>,
    not_after: OffsetDateTime,
    root_der: CertificateDer<'static>,
}

impl IssuingCa {
    /// Signs a device certificate for `identity` with the key from `csr`.
    ///
    /// The certificate's subject and names come from `identity` only: the CSR has
    /// already been reduced to its public key by [`DeviceCsr`], so nothing a device
    /// writes into its request can reach the certificate. The validity is clamped to
    /// the issuing CA's own.
    pub fn sign_device_csr(
        &self,
        csr: &DeviceCsr,
        identity: DeviceIdentity,
        validity: Validity,
    ) -> Result<DeviceCertificate, IssueError> {
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(csr.public_key_spki_der())?;
        let params = device_params(identity, validity.within(self.not_after)?)?;
        let cert = params.signed_by(&public_key, &self.issuer)?;
        // Parse what we just signed: proves the encoding round-trips before any device
        // sees it, and gives the caller not_after and serial for the database.
        DeviceCertificate::from_der(cert.der()).map_err(|e| IssueError::Crypto {
            reason: format!("issued certificate does not parse back: {e}"),
        })
    }

    /// Issues a server certificate, with a fresh key, for a broker or API listener.
    pub fn issue_server_cert(
        &self,
        params: &ServerCertParams,
    ) -> Result<ServerCertificate, IssueError> {
        let validity = Validity::from_now(params.lifetime)?.within(self.not_after)?;
        self.issue_with_fresh_key(server_params(params, validity)?, validity)
    }

    /// Signs `params` (a leaf's, from [`leaf_params`] with `validity` already clamped to this
    /// CA) for a fresh key: the one issuance path of fleetplane's own service certificates.
    pub(crate) fn issue_with_fresh_key(
        &self,
        params: CertificateParams,
        validity: Validity,
    ) -> Result<IssuedCertificate, IssueError> {
        let key = fresh_key()?;
        let cert = params.signed_by(key.key_pair(), &self.issuer)?;
        Ok(IssuedCertificate {
            der: cert.der().clone(),
            key,
            issuing_ca: self.der.clone(),
            not_after: validity.not_after,
        })
    }

    /// The chain a client or server presents: `leaf`, then this issuing CA.
    pub fn chain_der(&self, leaf: &CertificateDer<'_>) -> Vec<CertificateDer<'static>> {
        vec![leaf.clone().into_owned(), self.der.clone()]
    }

    /// [`Self::chain_der`] in PEM, leaf first: the `certificate_chain` of an enrollment
    /// answer.
    pub fn chain_pem(&self, leaf: &CertificateDer<'_>) -> String {
        crate::pem::certificates_pem(&self.chain_der(leaf))
    }

    /// The issuing CA certificate in DER: what the broker verifies client certificates
    /// against.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The issuing CA certificate in PEM.
    pub fn pem(&self) -> String {
        crate::pem::certificate_pem(&self.der)
    }

    /// The root CA certificate in DER: the anchor agents pin.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// The root CA certificate in PEM: the `ca_certificate` of an enrollment answer.
    pub fn root_pem(&self) -> String {
        crate::pem::certificate_pem(&self.root_der)
    }

    /// When the issuing CA expires; nothing it signs outlives it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// When the root CA expires, read from its certificate (`None` if it does not parse, which
    /// loading the PKI already refuses).
    pub fn root_not_after(&self) -> Option<OffsetDateTime> {
        use x509_parser::prelude::FromDer;
        let (_, root) = x509_parser::certificate::X509Certificate::from_der(&self.root_der).ok()?;
        Some(root.validity().not_after.to_datetime())
    }

    pub(crate) fn key(&self) -> &PrivateKey {
        &self.issuer.key().0
    }

    /// The signer of device certificates and of the CRL.
    pub(crate) fn issuer(&self) -> &Issuer<'static, CaKey> {
        &self.issuer
    }

    /// Rebuilds an issuing CA from its certificate, its key and the root certificate.
    pub(crate) fn from_parts(
        der: CertificateDer<'static>,
        key: PrivateKey,
        not_after: OffsetDateTime,
        root_der: CertificateDer<'static>,
    ) -> Result<Self, rcgen::Error> {
        Ok(Self {
            issuer: Issuer::from_ca_cert_der(&der, CaKey(key))?,
            der,
            not_after,
            root_der,
        })
    }
}

impl std::fmt::Debug for IssuingCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuingCa")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What a broker or API server certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCertParams {
    /// DNS names clients connect to (`fleet.example.com`, `localhost`).
    pub dns_names: Vec<String>,
    /// IP addresses clients connect to.
    pub ip_addresses: Vec<IpAddr>,
    /// How long the certificate is valid.
    pub lifetime: Duration,
}

impl ServerCertParams {
    /// Names for a server, with [`DEFAULT_SERVER_CERT_LIFETIME`].
    pub fn new(dns_names: Vec<String>, ip_addresses: Vec<IpAddr>) -> Self {
        Self {
            dns_names,
            ip_addresses,
            lifetime: DEFAULT_SERVER_CERT_LIFETIME,
        }
    }
}

/// A certificate the issuing CA made for one of fleetplane's own services, with its key and
/// chain: a listener's server certificate or ingest's client certificate.
#[derive(Debug)]
pub struct IssuedCertificate {
    pub(crate) der: CertificateDer<'static>,
    pub(crate) key: PrivateKey,
    pub(crate) issuing_ca: CertificateDer<'static>,
    pub(crate) not_after: OffsetDateTime,
}

/// A server certificate for the broker and API listeners (serverAuth).
pub type ServerCertificate = IssuedCertificate;

impl IssuedCertificate {
    /// The chain to present: this certificate, then the issuing CA.
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        vec![self.der.clone(), self.issuing_ca.clone()]
    }

    /// [`Self::chain_der`] in PEM, leaf first (for an external broker such as Mosquitto).
    pub fn chain_pem(&self) -> String {
        crate::pem::certificates_pem(&self.chain_der())
    }

    /// The certificate alone, in DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The certificate's private key.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// When the certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

fn ca_params(
    common_name: &str,
    pki: &PkiParams,
    validity: Validity,
) -> Result<CertificateParams, IssueError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, pki.organization.as_str());
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    validity.apply_to(&mut params);
    Ok(params)
}

/// Everything in a device certificate, decided by the server.
fn device_params(
    identity: DeviceIdentity,
    validity: Validity,
) -> Result<CertificateParams, IssueError> {
    let mut params = leaf_params(validity)?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, identity.tenant_id.to_string());
    params
        .distinguished_name
        .push(DnType::CommonName, identity.device_id.to_string());
    let uri = Ia5String::try_from(identity.uri())?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

fn server_params(
    server: &ServerCertParams,
    validity: Validity,
) -> Result<CertificateParams, IssueError> {
    let mut params = leaf_params(validity)?;
    if server.dns_names.is_empty() && server.ip_addresses.is_empty() {
        return Err(IssueError::NoServerNames);
    }
    for name in &server.dns_names {
        params
            .subject_alt_names
            .push(SanType::DnsName(dns_name(name)?));
    }
    for ip in &server.ip_addresses {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    // Clients match names against the SANs only; the CN is for humans reading the cert.
    let common_name = match server.dns_names.first() {
        Some(name) => name.clone(),
        None => "fleetplane server".to_owned(),
    };
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

/// What every leaf (device, server, service client) certificate shares: an end entity (`cA: false`), with key
/// identifiers for chain building, a digital-signature key and a random serial.
pub(crate) fn leaf_params(validity: Validity) -> Result<CertificateParams, IssueError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    // ExplicitNoCa writes basicConstraints cA=false and a subject key identifier.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    validity.apply_to(&mut params);
    Ok(params)
}

fn dns_name(name: &str) -> Result<Ia5String, IssueError> {
    let plausible = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'*');
    let invalid = || IssueError::InvalidDnsName {
        name: name.to_owned(),
    };
    match plausible {
        true => Ia5String::try_from(name).map_err(|_| invalid()),
        false => Err(invalid()),
    }
}

fn random_serial() -> Result<SerialNumber, IssueError> {
    let mut bytes = [0u8; SERIAL_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IssueError::Crypto {
            reason: "system random source failed".to_owned(),
        })?;
    // Top bit clear: a DER INTEGER with it set would be negative. Next bit set: a leading
    // zero byte would be dropped by DER, and a fixed length is easier on everyone.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn fresh_key() -> Result<PrivateKey, IssueError> {
    PrivateKey::generate().map_err(|_| IssueError::Crypto {
        reason: "key generation failed".to_owned(),
    })
}

fn checked_add(start: OffsetDateTime, lifetime: Duration) -> Option<OffsetDateTime> {
    start.checked_add(time::Duration::try_from(lifetime).ok()?)
}

fn whole_seconds_utc(at: OffsetDateTime) -> OffsetDateTime {
    at.to_offset(UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("zero nanoseconds is always valid")
}
