//! Helpers shared by the certs tests. Every certificate and key is generated here, at
//! test time; no PEM is pasted into a test.

use std::path::Path;
use std::process::Command;

use certs::{DeviceCertificate, DeviceCsr, DeviceIdentity, IssuingCa, Pki, PkiParams, Validity};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, SignatureAlgorithm,
    PKCS_ECDSA_P256_SHA256,
};
use tempfile::TempDir;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// A fresh PKI in a temporary directory (kept alive by the returned guard).
pub fn fresh_pki() -> (TempDir, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&pki_dir(&dir), &PkiParams::default()).unwrap();
    (dir, pki)
}

/// Where tests put the PKI: a subdirectory, so `generate` creates it.
pub fn pki_dir(tmp: &TempDir) -> std::path::PathBuf {
    tmp.path().join("pki")
}

pub fn random_identity() -> DeviceIdentity {
    DeviceIdentity {
        tenant_id: wire::TenantId::new_random(),
        device_id: wire::DeviceId::new_random(),
    }
}

/// A CSR as a device would make it: its own key, a subject of its choosing.
pub fn device_csr_pem(key: &KeyPair, common_name: &str) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// A CSR as a device makes it by default: a fresh P-256 key, common name `device`.
pub fn p256_csr() -> DeviceCsr {
    let key = key_for(&PKCS_ECDSA_P256_SHA256);
    DeviceCsr::from_pem(device_csr_pem(&key, "device").as_bytes()).unwrap()
}

/// A device certificate `ca` signs for a random identity over `validity`, from [`p256_csr`].
pub fn sign_for_random_device(ca: &IssuingCa, validity: Validity) -> DeviceCertificate {
    ca.sign_device_csr(&p256_csr(), random_identity(), validity)
        .unwrap()
}

pub fn key_for(alg: &'static SignatureAlgorithm) -> KeyPair {
    KeyPair::generate_for(alg).unwrap()
}

pub fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

/// The subject alternative names of `x509`, which must have them.
pub fn sans<'a>(x509: &'a X509Certificate<'a>) -> &'a [GeneralName<'a>] {
    &x509
        .subject_alternative_name()
        .unwrap()
        .expect("a subject alternative name extension")
        .value
        .general_names
}

/// Checks `child` is signed by `issuer` with x509-parser (ring underneath).
pub fn assert_signed_by(child: &[u8], issuer: &[u8]) {
    let child = parse(child);
    let issuer = parse(issuer);
    child
        .verify_signature(Some(issuer.public_key()))
        .expect("signature verifies with the issuer's key");
    assert_eq!(child.issuer().as_raw(), issuer.subject().as_raw());
}

pub fn run(mut command: Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
}
