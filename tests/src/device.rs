//! A device's key, CSR and certificate chain, made as the agent makes them: a fresh P-256 key
//! (ring), a CSR for it, signed by the fleet's issuing CA. Nothing is pasted.

use certs::{DeviceCsr, DeviceIdentity, IssuingCa, Validity};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A P-256 key made as a device makes it, and a CSR for it (PEM) with no subject of note.
pub fn key_and_csr() -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (key, csr)
}

/// A device key and the certificate chain `ca` issued for it (leaf first, then the issuing CA).
pub struct IssuedDevice {
    pub key: rcgen::KeyPair,
    pub chain: Vec<CertificateDer<'static>>,
    pub chain_pem: String,
}

impl IssuedDevice {
    /// The key as rustls takes it.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// Makes a key and a CSR as a device would ([`key_and_csr`]) and has `ca` sign it for
/// `identity` over `validity`.
pub fn issue(ca: &IssuingCa, identity: DeviceIdentity, validity: Validity) -> IssuedDevice {
    let (key, csr) = key_and_csr();
    let csr = DeviceCsr::from_pem(csr.as_bytes()).unwrap();
    let cert = ca.sign_device_csr(&csr, identity, validity).unwrap();
    IssuedDevice {
        chain: ca.chain_der(cert.der()),
        chain_pem: ca.chain_pem(cert.der()),
        key,
    }
}

/// A TLS client trusting only `root` and presenting `chain` with `key`, ring only.
pub fn device_tls(
    root: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: &rcgen::KeyPair,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    certs::tls::client_builder(roots)
        .unwrap()
        .with_client_auth_cert(chain, key)
        .unwrap()
}
