//! Device identity: how (tenant, device) is written into a certificate and read back.
//!
//! A device certificate carries its identity three times, and all three must agree:
//!
//! | field                       | value                                      | who reads it |
//! |-----------------------------|--------------------------------------------|--------------|
//! | subject `CN`                | device id                                  | Mosquitto `use_identity_as_username`, humans |
//! | subject `O`                 | tenant id                                  | brokers that scope by organisation (rumqttd, EMQX) |
//! | SAN `uniformResourceIdentifier` | `urn:fleetplane:device:<tenant>:<device>` | fleetplane itself: one field, both ids, no DN parsing quirks |
//!
//! Ids are UUIDs in canonical form: lowercase, hyphenated. Parsing accepts only that
//! form, so one device has exactly one spelling and string comparisons elsewhere (topic
//! prefixes, broker usernames) cannot be fooled by `{...}` or upper case.

use std::fmt;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use wire::{DeviceId, TenantId};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use crate::error::{IdentityError, ValidityError};

/// Prefix of the identity URI in a device certificate's subject alternative name.
pub const IDENTITY_URI_PREFIX: &str = "urn:fleetplane:device:";

/// Who a device is: the tenant it belongs to and its own id.
///
/// Built by the server at enrollment and read back from the client certificate at every
/// TLS handshake; never taken from a topic, a client id or a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceIdentity {
    /// The tenant that owns the device.
    pub tenant_id: TenantId,
    /// The device itself, unique across tenants.
    pub device_id: DeviceId,
}

impl DeviceIdentity {
    /// Reads the identity from a DER certificate, requiring CN, O and the identity URI
    /// to be present once each, canonical, and in agreement.
    ///
    /// This does not check the signature or the validity period: call it on a
    /// certificate that the TLS layer has already verified.
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, IdentityError> {
        let cert = parse_certificate(der)?;
        identity_of(&cert)
    }

    /// The identity URI: `urn:fleetplane:device:<tenant>:<device>`.
    pub fn uri(&self) -> String {
        format!("{IDENTITY_URI_PREFIX}{}:{}", self.tenant_id, self.device_id)
    }

    fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        let ids = uri
            .strip_prefix(IDENTITY_URI_PREFIX)
            .ok_or(IdentityError::MalformedIdentityUri)?;
        let (tenant, device) = ids
            .split_once(':')
            .ok_or(IdentityError::MalformedIdentityUri)?;
        match (
            TenantId::parse_canonical(tenant),
            DeviceId::parse_canonical(device),
        ) {
            (Some(tenant_id), Some(device_id)) => Ok(Self {
                tenant_id,
                device_id,
            }),
            _ => Err(IdentityError::MalformedIdentityUri),
        }
    }
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {} of tenant {}", self.device_id, self.tenant_id)
    }
}

/// A certificate serial number: big-endian bytes as encoded, shown as lowercase hex.
///
/// Serials are random (127 bits), so they can key a revocation list without
/// coordination between fleetd instances.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SerialNumber(Vec<u8>);

impl SerialNumber {
    /// The serial's bytes, big-endian, without DER's leading zero padding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for SerialNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

/// A device certificate, parsed: its identity, validity period and serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    der: CertificateDer<'static>,
    identity: DeviceIdentity,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    serial: SerialNumber,
}

impl DeviceCertificate {
    /// Parses a DER device certificate; see [`DeviceIdentity::from_certificate_der`] for
    /// what is required of it.
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let cert = parse_certificate(der)?;
        let validity = cert.validity();
        Ok(Self {
            identity: identity_of(&cert)?,
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            serial: SerialNumber(strip_leading_zeros(cert.raw_serial()).to_vec()),
            der: CertificateDer::from(der.to_vec()),
        })
    }

    /// Whose certificate this is.
    pub fn identity(&self) -> DeviceIdentity {
        self.identity
    }

    /// Start of the validity period.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// End of the validity period; the agent renews before it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The certificate's serial number.
    pub fn serial(&self) -> &SerialNumber {
        &self.serial
    }

    /// The certificate in DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The certificate in PEM.
    pub fn pem(&self) -> String {
        crate::pem::certificate_pem(&self.der)
    }

    /// Checks that `now` lies within `[not_before, not_after]` (both inclusive, as in
    /// RFC 5280).
    pub fn check_validity(&self, now: OffsetDateTime) -> Result<(), ValidityError> {
        if now < self.not_before {
            Err(ValidityError::NotYetValid {
                not_before: self.not_before,
            })
        } else if now > self.not_after {
            Err(ValidityError::Expired {
                not_after: self.not_after,
            })
        } else {
            Ok(())
        }
    }
}

fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, IdentityError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|_| IdentityError::MalformedCertificate)?;
    match rest.is_empty() {
        true => Ok(cert),
        false => Err(IdentityError::TrailingData),
    }
}

fn identity_of(cert: &X509Certificate<'_>) -> Result<DeviceIdentity, IdentityError> {
    let from_subject = identity_from_subject(cert.subject())?;
    let from_uri = identity_from_subject_alt_name(cert)?;
    match from_subject == from_uri {
        true => Ok(from_subject),
        false => Err(IdentityError::InconsistentIdentity),
    }
}

fn identity_from_subject(subject: &X509Name<'_>) -> Result<DeviceIdentity, IdentityError> {
    let device = single(subject.iter_common_name().map(|a| a.as_str())).map_err(|e| {
        e.into_error(
            IdentityError::MissingCommonName,
            IdentityError::DuplicateCommonName,
        )
    })?;
    let tenant = single(subject.iter_organization().map(|a| a.as_str())).map_err(|e| {
        e.into_error(
            IdentityError::MissingOrganization,
            IdentityError::DuplicateOrganization,
        )
    })?;

    let device_id = device
        .ok()
        .and_then(DeviceId::parse_canonical)
        .ok_or(IdentityError::MalformedDeviceId)?;
    let tenant_id = tenant
        .ok()
        .and_then(TenantId::parse_canonical)
        .ok_or(IdentityError::MalformedTenantId)?;
    Ok(DeviceIdentity {
        tenant_id,
        device_id,
    })
}

/// Requires the subject alternative names to be exactly one URI, the identity URI.
///
/// Stricter than it needs to be on purpose: we issue nothing else into device
/// certificates, so anything else means the certificate was not made by us as intended.
fn identity_from_subject_alt_name(
    cert: &X509Certificate<'_>,
) -> Result<DeviceIdentity, IdentityError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::MalformedSubjectAltName)?
        .ok_or(IdentityError::MissingSubjectAltName)?;
    let uri = match san.value.general_names.as_slice() {
        [] => return Err(IdentityError::MissingIdentityUri),
        [GeneralName::URI(uri)] => *uri,
        [_] => return Err(IdentityError::MissingIdentityUri),
        _ => return Err(IdentityError::UnexpectedSubjectAltName),
    };
    DeviceIdentity::from_uri(uri)
}

/// The outcome of looking for exactly one value.
enum NotSingle {
    Missing,
    Duplicate,
}

impl NotSingle {
    fn into_error(self, missing: IdentityError, duplicate: IdentityError) -> IdentityError {
        match self {
            Self::Missing => missing,
            Self::Duplicate => duplicate,
        }
    }
}

fn single<T>(mut values: impl Iterator<Item = T>) -> Result<T, NotSingle> {
    match (values.next(), values.next()) {
        (Some(value), None) => Ok(value),
        (None, _) => Err(NotSingle::Missing),
        (Some(_), Some(_)) => Err(NotSingle::Duplicate),
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    &bytes[first..]
}
