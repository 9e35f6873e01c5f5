//! The device-facing TLS policy.
//!
//! - rustls with the ring provider only.
//! - TLS 1.3 preferred, TLS 1.2 accepted, nothing older (rustls has no code for it).
//! - A client certificate is required and verified at the handshake against the fleet
//!   root, with the chain the device sends (its leaf, then the issuing CA). Expired,
//!   not-yet-valid and foreign certificates fail the handshake itself: no connection
//!   with an unverified certificate ever reaches MQTT.

use std::sync::Arc;

use certs::{DeviceIdentity, IdentityError};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use crate::config::BrokerConfig;
use crate::error::BrokerError;

/// The one crypto provider of the build.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the listener's rustls configuration, once, at start.
pub(crate) fn server_config(config: &BrokerConfig) -> Result<Arc<ServerConfig>, BrokerError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots
        .add(config.client_ca_root.clone())
        .map_err(BrokerError::ClientCa)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(BrokerError::ClientVerifier)?;
    let server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(BrokerError::ServerCertificate)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            config.server_cert_chain.clone(),
            config.server_key.clone_key(),
        )
        .map_err(BrokerError::ServerCertificate)?;
    Ok(Arc::new(server))
}

/// Why a completed handshake yields no device identity.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerIdentityError {
    /// rustls reported no client certificate. The verifier requires one, so this
    /// would be a configuration bug; it is refused all the same.
    #[error("no client certificate after the handshake")]
    NoCertificate,
    /// The verified certificate is not a device certificate of ours.
    #[error("client certificate carries no device identity: {0}")]
    Unreadable(#[from] IdentityError),
}

/// The device identity of a verified connection, from its leaf certificate only.
pub(crate) fn peer_identity(
    connection: &ServerConnection,
) -> Result<DeviceIdentity, PeerIdentityError> {
    let leaf: &CertificateDer<'_> = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(PeerIdentityError::NoCertificate)?;
    Ok(DeviceIdentity::from_certificate_der(leaf)?)
}
