//! What the fleetd-level tests share: a fleetd configuration on ephemeral ports, and a device's
//! key, CSR and TLS client configuration.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use fleet_tests::TestDb;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// fleetd on `db` with its own data directory (private PKI) and every listener on an
/// ephemeral port of 127.0.0.1.
pub fn fleetd_config(db: &TestDb, data_dir: &tempfile::TempDir) -> fleetd::Config {
    fleetd::Config {
        data_dir: data_dir.path().to_path_buf(),
        database_url: Some(db.url().parse().expect("a postgres:// URL")),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        broker_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        ..fleetd::Config::default()
    }
}

/// A P-256 key made as a device makes it, and a CSR for it (PEM).
pub fn device_key_and_csr() -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (key, csr)
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
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap()
}
