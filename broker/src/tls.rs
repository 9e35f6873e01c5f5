//! The device-facing TLS policy.
//!
//! - The server side's one policy (`certs::tls`): rustls on ring, TLS 1.3 and 1.2, AEAD
//!   suites only.
//! - A client certificate is required and verified at the handshake against the fleet
//!   root, with the chain the device sends (its leaf, then the issuing CA). Expired,
//!   not-yet-valid and foreign certificates fail the handshake itself: no connection
//!   with an unverified certificate ever reaches MQTT.

use std::sync::Arc;

use certs::tls::ClientCertificates;
use certs::{DeviceCertificate, DeviceIdentity, IdentityError, SerialNumber};
use rustls::pki_types::CertificateDer;
use rustls::{ServerConfig, ServerConnection};

use crate::config::BrokerConfig;
use crate::error::BrokerError;

/// The gateway's server configuration: the server side's TLS policy (`certs::tls`), a client
/// certificate verified against the fleet root, and required unless live streams are on (a
/// connection without one is then a stream subscriber and must log in with an API key).
pub(crate) fn server_config(config: &BrokerConfig) -> Result<Arc<ServerConfig>, BrokerError> {
    let certificates = match config.live_streams {
        Some(_) => ClientCertificates::Optional,
        None => ClientCertificates::Required,
    };
    let verifier = certs::tls::client_cert_verifier(config.client_ca_root.clone(), certificates)
        .map_err(BrokerError::ClientCa)?;
    let server = certs::tls::server_builder()
        .map_err(BrokerError::ServerCertificate)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            config.server_cert_chain.clone(),
            config.server_key.clone_key(),
        )
        .map_err(BrokerError::ServerCertificate)?;
    Ok(Arc::new(server))
}

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

/// The device identity of a verified connection and its certificate's serial, from its leaf
/// certificate only.
pub(crate) fn peer_identity(
    connection: &ServerConnection,
) -> Result<(DeviceIdentity, SerialNumber), PeerIdentityError> {
    let leaf: &CertificateDer<'_> = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(PeerIdentityError::NoCertificate)?;
    let certificate = DeviceCertificate::from_der(leaf)?;
    Ok((certificate.identity(), certificate.serial().clone()))
}
