//! The CSR policy: what a device may send to be signed, and everything it may not.

use crate::common::{device_csr_pem, fresh_pki, key_for, run};
use certs::{CsrError, DeviceCsr, KeyAlgorithm, MAX_CSR_LEN};
use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};

fn csr_der(pem: &str) -> Vec<u8> {
    pem::parse(pem).unwrap().into_contents()
}

#[test]
fn accepts_a_p256_csr_and_keeps_only_its_public_key() {
    let key = key_for(&PKCS_ECDSA_P256_SHA256);
    let csr = DeviceCsr::from_pem(device_csr_pem(&key, "device").as_bytes()).unwrap();
    assert_eq!(
        csr.public_key_spki_der(),
        rcgen::PublicKeyData::subject_public_key_info(&key)
    );
}

#[test]
fn accepts_the_same_csr_in_der() {
    let key = key_for(&PKCS_ECDSA_P256_SHA256);
    let der = csr_der(&device_csr_pem(&key, "device"));
    assert!(DeviceCsr::from_der(&der).is_ok());
}

#[test]
fn accepts_a_p256_csr_made_by_openssl() {
    let Some(mut cmd) = fleet_tests::openssl::openssl() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("device.key");
    cmd.args([
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ])
    .args(["-nodes", "-subj", "/CN=device", "-keyout"])
    .arg(&key);
    let pem = run(cmd);
    assert!(DeviceCsr::from_pem(pem.as_bytes()).is_ok());
}

#[test]
fn refuses_a_p384_key_and_says_so() {
    let key = key_for(&PKCS_ECDSA_P384_SHA384);
    let err = DeviceCsr::from_pem(device_csr_pem(&key, "device").as_bytes()).unwrap_err();
    assert_eq!(
        err,
        CsrError::UnsupportedKey {
            found: KeyAlgorithm::EcdsaP384
        }
    );
    assert_eq!(
        err.to_string(),
        "CSR key is ECDSA P-384; only ECDSA P-256 is accepted"
    );
}

#[test]
fn refuses_an_ed25519_key() {
    let key = key_for(&PKCS_ED25519);
    let err = DeviceCsr::from_pem(device_csr_pem(&key, "device").as_bytes()).unwrap_err();
    assert_eq!(
        err,
        CsrError::UnsupportedKey {
            found: KeyAlgorithm::Ed25519
        }
    );
}

#[test]
fn refuses_an_rsa_key() {
    // ring cannot generate RSA keys, so openssl makes this request.
    let Some(mut cmd) = fleet_tests::openssl::openssl() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    cmd.args([
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=device",
    ])
    .arg("-keyout")
    .arg(dir.path().join("rsa.key"));
    let pem = run(cmd);
    assert_eq!(
        DeviceCsr::from_pem(pem.as_bytes()).unwrap_err(),
        CsrError::UnsupportedKey {
            found: KeyAlgorithm::Rsa
        }
    );
}

#[test]
fn refuses_a_tampered_signature() {
    let key = key_for(&PKCS_ECDSA_P256_SHA256);
    let mut der = csr_der(&device_csr_pem(&key, "device"));
    // The signature is the last element: its final byte is part of an ECDSA integer.
    *der.last_mut().unwrap() ^= 0x01;
    assert_eq!(
        DeviceCsr::from_der(&der).unwrap_err(),
        CsrError::BadSignature
    );
}

#[test]
fn refuses_a_subject_changed_after_signing() {
    let key = key_for(&PKCS_ECDSA_P256_SHA256);
    let mut der = csr_der(&device_csr_pem(&key, "device-aaaa"));
    let at = find(&der, b"device-aaaa");
    der[at + 7] = b'b';
    assert_eq!(
        DeviceCsr::from_der(&der).unwrap_err(),
        CsrError::BadSignature
    );
}

#[test]
fn refuses_text_that_is_not_pem() {
    let err = DeviceCsr::from_pem(b"this is not a certificate request").unwrap_err();
    assert_eq!(err, CsrError::NotPem);
}

#[test]
fn refuses_a_pem_certificate_instead_of_a_request() {
    let (_dir, pki) = fresh_pki();
    let err = DeviceCsr::from_pem(pki.root().pem().as_bytes()).unwrap_err();
    assert_eq!(err, CsrError::WrongPemLabel);
}

#[test]
fn refuses_pem_wrapping_garbage() {
    let garbage = pem::encode(&pem::Pem::new(
        "CERTIFICATE REQUEST",
        vec![0x30, 0x03, 1, 2],
    ));
    let err = DeviceCsr::from_pem(garbage.as_bytes()).unwrap_err();
    assert_eq!(err, CsrError::Malformed);
}

#[test]
fn refuses_garbage_der() {
    assert_eq!(DeviceCsr::from_der(&[]).unwrap_err(), CsrError::Malformed);
    assert_eq!(
        DeviceCsr::from_der(&[0xff; 64]).unwrap_err(),
        CsrError::Malformed
    );
}

#[test]
fn refuses_trailing_data_after_the_request() {
    let key = key_for(&PKCS_ECDSA_P256_SHA256);
    let mut der = csr_der(&device_csr_pem(&key, "device"));
    der.push(0);
    assert_eq!(
        DeviceCsr::from_der(&der).unwrap_err(),
        CsrError::TrailingData
    );
}

#[test]
fn refuses_oversized_input_before_parsing() {
    let big = vec![b'A'; MAX_CSR_LEN + 1];
    let expected = CsrError::TooLarge {
        len: MAX_CSR_LEN + 1,
        max: MAX_CSR_LEN,
    };
    assert_eq!(DeviceCsr::from_pem(&big).unwrap_err(), expected);
    assert_eq!(DeviceCsr::from_der(&big).unwrap_err(), expected);
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}
