//! Errors of the broker's public API.
//!
//! A device's misbehaviour is never an error of the API: it is a refusal, answered on
//! the wire, counted in [`BrokerStats`](crate::BrokerStats) by
//! [`Refusal`](crate::Refusal), and reported as a
//! [`DisconnectReason`](crate::DisconnectReason) in presence events.

use std::io;
use std::net::SocketAddr;

/// Why the broker could not start, or a call on a running broker failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A configuration value is out of range; the message names the field.
    #[error("invalid broker configuration: {field} {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What it must be.
        reason: &'static str,
    },

    /// The server certificate chain or key was refused by rustls (a key that does not
    /// match the certificate, an unsupported key type, an empty chain).
    #[error("server certificate or key refused: {0}")]
    ServerCertificate(#[source] rustls::Error),

    /// The client CA (the fleet root) is not a usable trust anchor.
    #[error("client CA certificate refused: {0}")]
    ClientCa(#[source] rustls::Error),

    /// Binding the device listener failed (address in use, permission denied).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from the configuration.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// The embedded rumqttd router refused a local link (it is at its connection limit
    /// or has stopped).
    #[error("embedded MQTT router refused a local link: {0}")]
    Link(String),

    /// A local subscription filter is not well formed (see
    /// [`wire::topic::is_well_formed_filter`]: wildcards only as whole levels, `#` only
    /// last, no empty level).
    #[error("invalid local subscription filter {0:?}")]
    InvalidFilter(String),

    /// A local publish used a topic name with wildcards or an empty topic.
    #[error("invalid local publish topic {0:?}")]
    InvalidTopic(String),

    /// The broker has been shut down (or its router thread has stopped), so the call
    /// cannot be served.
    #[error("the broker has shut down")]
    Closed,

    /// A message for one device's session was not queued on it (counted in
    /// [`BrokerStats::undelivered`](crate::BrokerStats::undelivered)).
    #[error("server message not delivered: {0}")]
    Undelivered(crate::Undelivered),
}
