//! rustls client configurations, ring provider only, trusting only the pinned fleet root.
//!
//! No system root store is ever consulted, and no process-wide default provider is
//! installed: every configuration names ring explicitly, so aws-lc never enters the build.

use std::sync::Arc;

use rustls::client::ClientConfig;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use crate::identity::Identity;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS setup: {0}")]
pub struct TlsSetupError(String);

fn roots(anchor: &CertificateDer<'static>) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(anchor.clone())
        .map_err(|err| TlsSetupError(format!("the root CA certificate is unusable: {err}")))?;
    Ok(roots)
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsSetupError> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| TlsSetupError(err.to_string()))
}

/// Server authentication only, for enrollment (the device has no certificate yet).
pub fn anonymous_client(anchor: &CertificateDer<'static>) -> Result<ClientConfig, TlsSetupError> {
    Ok(builder()?
        .with_root_certificates(roots(anchor)?)
        .with_no_client_auth())
}

/// Mutual TLS with the device key and chain: MQTT and renewal.
///
/// The key is parsed here into the signing key rustls keeps, and its DER copy is wiped at once
/// (`with_client_auth_cert` would take the DER and drop it unwiped).
pub fn device_client(identity: &Identity) -> Result<ClientConfig, TlsSetupError> {
    let der = Zeroizing::new(
        identity
            .key
            .to_der()
            .map_err(|err| TlsSetupError(err.to_string()))?,
    );
    let unfit = |err: rustls::Error| {
        TlsSetupError(format!("the device key and certificate do not fit: {err}"))
    };
    let signing_key = rustls::crypto::ring::sign::any_ecdsa_type(&der).map_err(unfit)?;
    drop(der);
    let certified = CertifiedKey::new(identity.chain.clone(), signing_key);
    certified.keys_match().map_err(unfit)?;
    Ok(builder()?
        .with_root_certificates(roots(&identity.root)?)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{self, tests::install_fake, StateDir};

    #[test]
    fn builds_both_configs_from_a_stored_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        install_fake(&dir);
        let identity = identity::load(&dir).unwrap();
        anonymous_client(&identity.root).unwrap();
        let config = device_client(&identity).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn mismatched_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        install_fake(&dir);
        let mut identity = identity::load(&dir).unwrap();
        let (_, _, other_key) = identity::tests::fake_credentials();
        identity.key = other_key;
        let err = device_client(&identity).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
    }
}
