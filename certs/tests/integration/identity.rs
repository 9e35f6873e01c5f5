//! Reading a device identity back from a certificate: every way it can be wrong.
//!
//! These certificates are made directly with rcgen by a throwaway CA, shaped the way
//! our issuing CA would never shape them. Identity parsing does not check signatures
//! (the TLS layer has done that), so some are also patched after signing.

use crate::common::{key_for, random_identity};
use certs::{DeviceCertificate, DeviceIdentity, IdentityError};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, SanType,
    PKCS_ECDSA_P256_SHA256,
};

/// A test CA whose own name has no OU, so the only OU bytes in a leaf are the subject's.
fn test_issuer() -> Issuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "throwaway test CA");
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    Issuer::new(params, key_for(&PKCS_ECDSA_P256_SHA256))
}

/// Subject attributes and SANs, in order; everything else like a real device cert.
fn cert_with(subject: &[(DnType, String)], sans: Vec<SanType>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for (ty, value) in subject {
        params.distinguished_name.push(ty.clone(), value.as_str());
    }
    params.subject_alt_names = sans;
    let key = key_for(&PKCS_ECDSA_P256_SHA256);
    params
        .signed_by(&key, &test_issuer())
        .unwrap()
        .der()
        .to_vec()
}

fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().unwrap())
}

fn well_formed(identity: DeviceIdentity) -> (Vec<(DnType, String)>, Vec<SanType>) {
    (
        vec![
            (DnType::OrganizationName, identity.tenant_id.to_string()),
            (DnType::CommonName, identity.device_id.to_string()),
        ],
        vec![uri(&identity.uri())],
    )
}

fn parse_err(der: &[u8]) -> IdentityError {
    let err = DeviceIdentity::from_certificate_der(der).unwrap_err();
    assert_eq!(DeviceCertificate::from_der(der).unwrap_err(), err);
    err
}

/// Replaces the one occurrence of `from` with `to` (same length), breaking the signature.
fn patch(mut der: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    let hits: Vec<_> = der
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "pattern must occur exactly once");
    der[hits[0]..hits[0] + to.len()].copy_from_slice(to);
    der
}

/// DER of the OID of an X.520 attribute type `2.5.4.<n>`.
fn attribute_oid(n: u8) -> [u8; 5] {
    [0x06, 0x03, 0x55, 0x04, n]
}
const OU: u8 = 11;
const CN: u8 = 3;
const O: u8 = 10;

#[test]
fn reads_a_well_formed_identity() {
    let identity = random_identity();
    let (subject, sans) = well_formed(identity);
    let der = cert_with(&subject, sans);
    assert_eq!(DeviceIdentity::from_certificate_der(&der), Ok(identity));
}

#[test]
fn refuses_a_certificate_without_organization() {
    let identity = random_identity();
    let (subject, sans) = well_formed(identity);
    let der = cert_with(&subject[1..], sans);
    assert_eq!(parse_err(&der), IdentityError::MissingOrganization);
}

#[test]
fn refuses_a_certificate_without_common_name() {
    let identity = random_identity();
    let (subject, sans) = well_formed(identity);
    let der = cert_with(&subject[..1], sans);
    assert_eq!(parse_err(&der), IdentityError::MissingCommonName);
}

#[test]
fn refuses_two_common_names() {
    let identity = random_identity();
    let (mut subject, sans) = well_formed(identity);
    subject.push((
        DnType::OrganizationalUnitName,
        identity.device_id.to_string(),
    ));
    let der = patch(
        cert_with(&subject, sans),
        &attribute_oid(OU),
        &attribute_oid(CN),
    );
    assert_eq!(parse_err(&der), IdentityError::DuplicateCommonName);
}

#[test]
fn refuses_two_organizations() {
    let identity = random_identity();
    let (mut subject, sans) = well_formed(identity);
    subject.push((
        DnType::OrganizationalUnitName,
        identity.tenant_id.to_string(),
    ));
    let der = patch(
        cert_with(&subject, sans),
        &attribute_oid(OU),
        &attribute_oid(O),
    );
    assert_eq!(parse_err(&der), IdentityError::DuplicateOrganization);
}

#[test]
fn refuses_a_device_id_that_is_not_a_uuid() {
    let identity = random_identity();
    let (mut subject, sans) = well_formed(identity);
    subject[1].1 = "not-a-uuid".to_owned();
    assert_eq!(
        parse_err(&cert_with(&subject, sans)),
        IdentityError::MalformedDeviceId
    );
}

#[test]
fn refuses_a_device_id_in_non_canonical_form() {
    let identity = random_identity();
    for spelling in [
        identity.device_id.to_string().to_uppercase(),
        identity.device_id.0.simple().to_string(),
        identity.device_id.0.braced().to_string(),
        identity.device_id.0.urn().to_string(),
    ] {
        let (mut subject, sans) = well_formed(identity);
        subject[1].1 = spelling;
        assert_eq!(
            parse_err(&cert_with(&subject, sans)),
            IdentityError::MalformedDeviceId
        );
    }
}

#[test]
fn refuses_a_tenant_id_that_is_not_a_uuid() {
    let identity = random_identity();
    let (mut subject, sans) = well_formed(identity);
    subject[0].1 = "Example Corp".to_owned();
    assert_eq!(
        parse_err(&cert_with(&subject, sans)),
        IdentityError::MalformedTenantId
    );
}

#[test]
fn refuses_a_certificate_without_subject_alt_name() {
    let (subject, _) = well_formed(random_identity());
    assert_eq!(
        parse_err(&cert_with(&subject, vec![])),
        IdentityError::MissingSubjectAltName
    );
}

#[test]
fn refuses_a_dns_name_in_place_of_the_identity_uri() {
    let (subject, _) = well_formed(random_identity());
    let sans = vec![SanType::DnsName("device.example.com".try_into().unwrap())];
    assert_eq!(
        parse_err(&cert_with(&subject, sans)),
        IdentityError::MissingIdentityUri
    );
}

#[test]
fn refuses_extra_names_beside_the_identity_uri() {
    let identity = random_identity();
    let (subject, mut sans) = well_formed(identity);
    sans.push(SanType::DnsName("device.example.com".try_into().unwrap()));
    assert_eq!(
        parse_err(&cert_with(&subject, sans)),
        IdentityError::UnexpectedSubjectAltName
    );
}

#[test]
fn refuses_two_identity_uris() {
    let identity = random_identity();
    let (subject, mut sans) = well_formed(identity);
    sans.push(uri(&identity.uri()));
    assert_eq!(
        parse_err(&cert_with(&subject, sans)),
        IdentityError::UnexpectedSubjectAltName
    );
}

#[test]
fn refuses_malformed_identity_uris() {
    let DeviceIdentity {
        tenant_id: t,
        device_id: d,
    } = random_identity();
    for bad in [
        format!("urn:example:device:{t}:{d}"),
        format!("urn:fleetplane:device:{t}"),
        format!("urn:fleetplane:device:{t}:{d}:extra"),
        format!("urn:fleetplane:device:{t}:{}", d.to_string().to_uppercase()),
        format!("urn:fleetplane:device:{t}:{d}x"),
    ] {
        let (subject, _) = well_formed(DeviceIdentity {
            tenant_id: t,
            device_id: d,
        });
        assert_eq!(
            parse_err(&cert_with(&subject, vec![uri(&bad)])),
            IdentityError::MalformedIdentityUri,
            "{bad}"
        );
    }
}

#[test]
fn refuses_a_uri_naming_another_device_or_tenant() {
    let identity = random_identity();
    let other = random_identity();
    let (subject, _) = well_formed(identity);
    for mismatch in [
        DeviceIdentity {
            device_id: other.device_id,
            ..identity
        },
        DeviceIdentity {
            tenant_id: other.tenant_id,
            ..identity
        },
    ] {
        assert_eq!(
            parse_err(&cert_with(&subject, vec![uri(&mismatch.uri())])),
            IdentityError::InconsistentIdentity
        );
    }
}

#[test]
fn refuses_bytes_that_are_not_a_certificate() {
    assert_eq!(parse_err(&[]), IdentityError::MalformedCertificate);
    assert_eq!(parse_err(b"garbage"), IdentityError::MalformedCertificate);
}

#[test]
fn refuses_trailing_bytes_after_the_certificate() {
    let (subject, sans) = well_formed(random_identity());
    let mut der = cert_with(&subject, sans);
    der.extend_from_slice(&[0, 0]);
    assert_eq!(parse_err(&der), IdentityError::TrailingData);
}

#[test]
fn identity_displays_both_ids() {
    let identity = random_identity();
    assert_eq!(
        identity.to_string(),
        format!(
            "device {} of tenant {}",
            identity.device_id, identity.tenant_id
        )
    );
}
