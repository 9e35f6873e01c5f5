//! The server side's one TLS policy: the crypto provider, the protocol versions and the cipher
//! suites every fleetplane service uses, as a server (the API, the device gateway) or as a
//! client (ingest to an external broker, fleetctl to the API, the tests). Each listener or
//! client starts from these builders and adds only its certificates and verifier.
//!
//! - Provider: rustls's `ring` provider, the project's one crypto stack (no aws-lc-rs).
//! - Versions: TLS 1.3 and TLS 1.2; nothing older exists in rustls.
//! - Suites: the provider's defaults (TLS 1.3: AES-GCM and ChaCha20-Poly1305; TLS 1.2: ECDHE
//!   with AES-GCM or ChaCha20-Poly1305 only, forward-secret, no CBC, no RSA key exchange).
//!
//! The device agent states the same policy in `edge-agent/src/tls.rs`: it must not depend on a
//! server crate. `api/tests/tls_policy.rs` checks the listener side with openssl's client
//! (TLS 1.1 refused, 1.2 and 1.3 accepted).

mod per_key;

pub use per_key::{PerKeyLimit, PerKeyPermit};

use std::sync::Arc;

use rustls::client::WantsClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ConfigBuilder, RootCertStore, ServerConfig, SupportedProtocolVersion,
    WantsVerifier,
};
use rustls_pki_types::CertificateDer;

/// The protocol versions every fleetplane service speaks, newest first.
pub const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The crypto provider: ring, with its default cipher suites and key exchange groups.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration builder with the policy applied; add the client verifier and the
/// certificate.
pub fn server_builder() -> Result<ConfigBuilder<ServerConfig, WantsVerifier>, rustls::Error> {
    ServerConfig::builder_with_provider(provider()).with_protocol_versions(PROTOCOL_VERSIONS)
}

/// A client configuration builder with the policy applied, trusting exactly `roots`.
pub fn client_builder(
    roots: RootCertStore,
) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>, rustls::Error> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(roots))
}

/// Whether a listener requires a client certificate or only verifies one when offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificates {
    /// Every client must present a certificate chaining to the root (the device gateway).
    Required,
    /// A certificate, when offered, must chain to the root; clients without one get through
    /// the handshake (the API: only `/v1/renew` needs one, and says so with a 401).
    Optional,
}

/// A verifier of client certificates chaining to `root`.
pub fn client_cert_verifier(
    root: CertificateDer<'static>,
    mode: ClientCertificates,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(root)?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = match mode {
        ClientCertificates::Required => builder,
        ClientCertificates::Optional => builder.allow_unauthenticated(),
    };
    builder
        .build()
        .map_err(|e| rustls::Error::General(format!("client certificate verifier: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_is_tls12_and_13_on_ring() {
        let provider = provider();
        assert!(!provider.cipher_suites.is_empty());
        for suite in &provider.cipher_suites {
            let name = format!("{:?}", suite.suite());
            let forward_secret = name.starts_with("TLS13_") || name.contains("_ECDHE_");
            assert!(
                forward_secret && !name.contains("CBC"),
                "only AEAD, forward-secret suites: {name}"
            );
        }
        let versions: Vec<_> = PROTOCOL_VERSIONS.iter().map(|v| v.version).collect();
        assert_eq!(
            versions,
            [
                rustls::ProtocolVersion::TLSv1_3,
                rustls::ProtocolVersion::TLSv1_2
            ]
        );
        assert!(server_builder().is_ok());
        assert!(client_builder(RootCertStore::empty()).is_ok());
    }

    #[test]
    fn a_verifier_needs_a_usable_root() {
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(client_cert_verifier(garbage, ClientCertificates::Required).is_err());
    }
}
