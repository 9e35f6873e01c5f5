//! Device and server certificates: what the issuing CA puts into them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::common::{
    assert_signed_by, fresh_pki, key_for, p256_csr, parse, random_identity, run, sans,
    sign_for_random_device,
};
use certs::{
    DeviceCertificate, DeviceCsr, DeviceIdentity, IssueError, ServerCertParams, Validity,
    ValidityError, CLOCK_SKEW_ALLOWANCE, DEFAULT_DEVICE_CERT_LIFETIME,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

#[test]
fn signs_a_device_csr_and_reads_the_identity_back() {
    let (_dir, pki) = fresh_pki();
    let ca = pki.issuing_ca();
    let identity = random_identity();
    let validity = Validity::from_now(DEFAULT_DEVICE_CERT_LIFETIME).unwrap();

    let cert = ca.sign_device_csr(&p256_csr(), identity, validity).unwrap();

    assert_eq!(cert.identity(), identity);
    let reparsed = DeviceIdentity::from_certificate_der(cert.der()).unwrap();
    assert_eq!(reparsed, identity);
    assert_signed_by(cert.der(), ca.der());
    assert_signed_by(ca.der(), ca.root_der());
    assert_signed_by(ca.root_der(), ca.root_der());
}

#[test]
fn device_certificate_is_a_client_auth_leaf_named_by_the_server() {
    let (_dir, pki) = fresh_pki();
    let identity = random_identity();
    let cert = pki
        .issuing_ca()
        .sign_device_csr(&p256_csr(), identity, Validity::from_now(DAY).unwrap())
        .unwrap();
    let x509 = parse(cert.der());

    let subject = x509.subject().to_string();
    assert_eq!(
        subject,
        format!("O={}, CN={}", identity.tenant_id, identity.device_id)
    );
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any);
    assert!(!x509.is_ca());
    assert!(x509.basic_constraints().unwrap().unwrap().critical);
    let ku = x509.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    assert_eq!(sans(&x509), &[GeneralName::URI(&identity.uri())]);
    assert_eq!(
        identity.uri(),
        format!(
            "urn:fleetplane:device:{}:{}",
            identity.tenant_id, identity.device_id
        )
    );
}

#[test]
fn the_csr_subject_and_extensions_are_ignored() {
    let (_dir, pki) = fresh_pki();
    let key = key_for(&PKCS_ECDSA_P256_SHA256);
    let other_tenant = random_identity().tenant_id;
    let mut wish = CertificateParams::default();
    wish.distinguished_name = DistinguishedName::new();
    wish.distinguished_name.push(DnType::CommonName, "evil");
    wish.distinguished_name
        .push(DnType::OrganizationName, other_tenant.to_string());
    wish.subject_alt_names = vec![
        SanType::DnsName("fleet.example.com".try_into().unwrap()),
        SanType::URI(
            format!("urn:fleetplane:device:{other_tenant}:{other_tenant}")
                .try_into()
                .unwrap(),
        ),
    ];
    wish.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    wish.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    wish.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let csr_pem = wish.serialize_request(&key).unwrap().pem().unwrap();
    let identity = random_identity();

    let csr = DeviceCsr::from_pem(csr_pem.as_bytes()).unwrap();
    let cert = pki
        .issuing_ca()
        .sign_device_csr(&csr, identity, Validity::from_now(DAY).unwrap())
        .unwrap();

    assert_eq!(cert.identity(), identity);
    let x509 = parse(cert.der());
    assert!(!x509.subject().to_string().contains("evil"));
    assert!(!x509.is_ca());
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(!eku.server_auth);
    assert!(!x509.key_usage().unwrap().unwrap().value.key_cert_sign());
    assert_eq!(sans(&x509), &[GeneralName::URI(&identity.uri())]);
    // The requester's key is the one certified.
    assert_eq!(
        x509.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key)
    );
}

#[test]
fn openssl_verifies_the_device_chain_for_client_use() {
    let Some(mut cmd) = fleet_tests::openssl::openssl() else {
        return;
    };
    let (dir, pki) = fresh_pki();
    let ca = pki.issuing_ca();
    let cert = sign_for_random_device(ca, Validity::from_now(DAY).unwrap());
    let root = dir.path().join("root.pem");
    let chain = dir.path().join("chain.pem");
    crate::common::write(&root, &ca.root_pem());
    crate::common::write(&chain, &ca.chain_pem(cert.der()));
    // The chain file holds leaf then issuing CA; openssl takes the leaf from it and the
    // intermediate as untrusted.
    let leaf = dir.path().join("leaf.pem");
    crate::common::write(&leaf, &cert.pem());
    cmd.args(["verify", "-purpose", "sslclient", "-x509_strict", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&chain)
        .arg(&leaf);
    assert!(run(cmd).contains("OK"));
}

#[test]
fn default_device_lifetime_is_thirty_days() {
    assert_eq!(DEFAULT_DEVICE_CERT_LIFETIME, 30 * DAY);
}

#[test]
fn device_validity_is_as_configured() {
    let (_dir, pki) = fresh_pki();
    let start = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    for lifetime in [DAY, 30 * DAY, Duration::from_secs(90)] {
        let validity = Validity::starting_at(start, lifetime).unwrap();
        let cert = sign_for_random_device(pki.issuing_ca(), validity);
        assert_eq!(cert.not_after(), start + lifetime);
        assert_eq!(cert.not_before(), start - CLOCK_SKEW_ALLOWANCE);
    }
}

#[test]
fn device_validity_ends_no_later_than_the_issuing_ca() {
    let (_dir, pki) = fresh_pki();
    let ca = pki.issuing_ca();
    let validity = Validity::from_now(5 * 365 * DAY).unwrap();
    let cert = sign_for_random_device(ca, validity);
    assert_eq!(cert.not_after(), ca.not_after());
}

#[test]
fn refuses_an_empty_or_absurd_validity() {
    let now = OffsetDateTime::now_utc();
    assert_eq!(
        Validity::from_now(Duration::ZERO).unwrap_err(),
        IssueError::InvalidLifetime
    );
    assert_eq!(
        Validity::from_now(Duration::from_secs(u64::MAX)).unwrap_err(),
        IssueError::InvalidLifetime
    );
    assert_eq!(
        Validity::between(now, now).unwrap_err(),
        IssueError::EmptyValidity
    );
}

#[test]
fn refuses_to_sign_after_the_issuing_ca_expired() {
    let (_dir, pki) = fresh_pki();
    let ca = pki.issuing_ca();
    let later = ca.not_after() + DAY;
    let validity = Validity::between(later, later + DAY).unwrap();
    let err = ca
        .sign_device_csr(&p256_csr(), random_identity(), validity)
        .unwrap_err();
    assert_eq!(err, IssueError::IssuerExpired);
}

#[test]
fn check_validity_names_expired_and_not_yet_valid() {
    let (_dir, pki) = fresh_pki();
    let now = OffsetDateTime::now_utc();
    let cert = sign_for_random_device(pki.issuing_ca(), Validity::from_now(DAY).unwrap());

    assert_eq!(cert.check_validity(now), Ok(()));
    assert_eq!(cert.check_validity(cert.not_before()), Ok(()));
    assert_eq!(cert.check_validity(cert.not_after()), Ok(()));
    assert_eq!(
        cert.check_validity(now + 2 * DAY),
        Err(ValidityError::Expired {
            not_after: cert.not_after()
        })
    );
    assert_eq!(
        cert.check_validity(now - DAY),
        Err(ValidityError::NotYetValid {
            not_before: cert.not_before()
        })
    );
}

#[test]
fn can_issue_an_already_expired_certificate_for_tests() {
    let (_dir, pki) = fresh_pki();
    let now = OffsetDateTime::now_utc();
    let validity = Validity::between(now - 2 * DAY, now - DAY).unwrap();
    let cert = sign_for_random_device(pki.issuing_ca(), validity);
    assert!(matches!(
        cert.check_validity(now),
        Err(ValidityError::Expired { .. })
    ));
}

#[test]
fn renewing_with_the_same_key_gives_a_new_random_serial() {
    let (_dir, pki) = fresh_pki();
    let csr = p256_csr();
    let identity = random_identity();
    let sign = || {
        pki.issuing_ca()
            .sign_device_csr(&csr, identity, Validity::from_now(DAY).unwrap())
            .unwrap()
    };
    let (first, second) = (sign(), sign());
    assert_ne!(first.serial(), second.serial());
    assert_eq!(first.serial().as_bytes().len(), 16);
    assert_eq!(first.serial().to_string().len(), 32);
    assert_eq!(
        first.serial().to_string(),
        parse(first.der()).raw_serial_as_string().replace(':', "")
    );
}

#[test]
fn device_chain_is_leaf_then_issuing_ca() {
    let (_dir, pki) = fresh_pki();
    let ca = pki.issuing_ca();
    let cert = sign_for_random_device(ca, Validity::from_now(DAY).unwrap());
    let chain = ca.chain_der(cert.der());
    assert_eq!(chain, vec![cert.der().clone(), ca.der().clone()]);
    let pem_blocks = pem::parse_many(ca.chain_pem(cert.der())).unwrap();
    assert_eq!(pem_blocks.len(), 2);
    assert_eq!(pem_blocks[0].contents(), cert.der().as_ref());
    assert_eq!(pem_blocks[1].contents(), ca.der().as_ref());
    let root = pem::parse(ca.root_pem()).unwrap();
    assert_eq!(root.contents(), ca.root_der().as_ref());
}

#[test]
fn issues_a_server_certificate_with_dns_and_ip_names() {
    let (_dir, pki) = fresh_pki();
    let ca = pki.issuing_ca();
    let params = ServerCertParams::new(
        vec!["fleet.example.com".into(), "localhost".into()],
        vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
    );
    let server = ca.issue_server_cert(&params).unwrap();
    let x509 = parse(server.der());

    assert_eq!(
        sans(&x509),
        &[
            GeneralName::DNSName("fleet.example.com"),
            GeneralName::DNSName("localhost"),
            GeneralName::IPAddress(&[127, 0, 0, 1]),
            GeneralName::IPAddress(&Ipv6Addr::LOCALHOST.octets()),
        ]
    );
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!(!x509.is_ca());
    assert_signed_by(server.der(), ca.der());
    assert_eq!(
        server.chain_der(),
        vec![server.der().clone(), ca.der().clone()]
    );
    // The key is the certificate's.
    assert_eq!(x509.public_key().raw, server.key().public_key_spki_der());
    // A server certificate carries no device identity.
    assert!(DeviceCertificate::from_der(server.der()).is_err());
}

#[test]
fn openssl_verifies_the_server_chain_for_server_use() {
    let Some(mut cmd) = fleet_tests::openssl::openssl() else {
        return;
    };
    let (dir, pki) = fresh_pki();
    let ca = pki.issuing_ca();
    let server = ca
        .issue_server_cert(&ServerCertParams::new(vec!["localhost".into()], vec![]))
        .unwrap();
    let root = dir.path().join("root.pem");
    let chain = dir.path().join("chain.pem");
    crate::common::write(&root, &ca.root_pem());
    crate::common::write(&chain, &server.chain_pem());
    cmd.args([
        "verify",
        "-purpose",
        "sslserver",
        "-x509_strict",
        "-verify_hostname",
        "localhost",
    ])
    .arg("-CAfile")
    .arg(&root)
    .arg("-untrusted")
    .arg(&chain)
    .arg(&chain);
    assert!(run(cmd).contains("OK"));
}

#[test]
fn server_certificate_needs_a_name() {
    let (_dir, pki) = fresh_pki();
    let err = pki
        .issuing_ca()
        .issue_server_cert(&ServerCertParams::new(vec![], vec![]))
        .unwrap_err();
    assert_eq!(err, IssueError::NoServerNames);
}

#[test]
fn server_certificate_refuses_a_name_that_is_not_a_host_name() {
    let (_dir, pki) = fresh_pki();
    for bad in ["", "has space", "ünïcode.example", "a/b"] {
        let err = pki
            .issuing_ca()
            .issue_server_cert(&ServerCertParams::new(vec![bad.into()], vec![]))
            .unwrap_err();
        assert_eq!(err, IssueError::InvalidDnsName { name: bad.into() });
    }
}

#[test]
fn ca_certificates_have_the_configured_shape() {
    let (_dir, pki) = fresh_pki();
    let root = parse(pki.root().der());
    let issuing = parse(pki.issuing_ca().der());

    let root_bc = root.basic_constraints().unwrap().unwrap().value;
    assert!(root_bc.ca);
    assert_eq!(root_bc.path_len_constraint, Some(1));
    let issuing_bc = issuing.basic_constraints().unwrap().unwrap().value;
    assert!(issuing_bc.ca);
    assert_eq!(issuing_bc.path_len_constraint, Some(0));
    for ca in [&root, &issuing] {
        let ku = ca.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
    }

    let lifetime = |c: &x509_parser::certificate::X509Certificate<'_>| {
        let v = c.validity();
        v.not_after.to_datetime() - v.not_before.to_datetime() - CLOCK_SKEW_ALLOWANCE
    };
    assert_eq!(lifetime(&root), time::Duration::days(3652));
    assert_eq!(lifetime(&issuing), time::Duration::days(730));
}
