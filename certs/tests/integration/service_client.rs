//! Service client certificates: accepted by a TLS stack as client certificates from the fleet
//! PKI, refused as device identities.

use crate::common::{assert_signed_by, fresh_pki, parse};
use certs::{DeviceIdentity, IdentityError};
use x509_parser::extensions::ParsedExtension;

#[test]
fn a_service_certificate_names_the_service_and_is_for_client_auth_only() {
    let (_dir, pki) = fresh_pki();
    let ca = pki.issuing_ca();
    let cert = ca.issue_service_client_cert("fleetd-ingest").unwrap();
    assert_signed_by(cert.der(), ca.der());
    let parsed = parse(cert.der());
    let cn: Vec<_> = parsed.subject().iter_common_name().collect();
    assert_eq!(cn.len(), 1);
    assert_eq!(cn[0].as_str().unwrap(), "fleetd-ingest");
    assert_eq!(parsed.subject().iter_organization().count(), 0);
    let eku = parsed
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(eku) => Some(eku.clone()),
            _ => None,
        })
        .expect("extended key usage");
    assert!(eku.client_auth && !eku.server_auth);
    assert!(cert.not_after() <= ca.not_after());
    assert_eq!(cert.chain_der().len(), 2);
    assert!(cert.chain_pem().matches("BEGIN CERTIFICATE").count() == 2);
}

#[test]
fn a_service_certificate_is_not_a_device_identity() {
    let (_dir, pki) = fresh_pki();
    let cert = pki
        .issuing_ca()
        .issue_service_client_cert("fleetd-ingest")
        .unwrap();
    let err: IdentityError = DeviceIdentity::from_certificate_der(cert.der()).unwrap_err();
    assert!(!err.to_string().is_empty());
}

#[test]
fn implausible_service_names_are_refused() {
    let (_dir, pki) = fresh_pki();
    for name in ["", "has space", "slash/y", &"x".repeat(65)] {
        assert!(
            pki.issuing_ca().issue_service_client_cert(name).is_err(),
            "{name:?}"
        );
    }
}
