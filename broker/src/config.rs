//! Broker configuration, with defaults that work on a laptop.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::BrokerError;

/// Default device listener: every interface, the IANA port for MQTT over TLS.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8883);

/// Default time a TCP connection has to finish its TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time an authenticated TLS connection has to send its MQTT CONNECT.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time the admission hook (revocation check) has to answer.
pub const DEFAULT_ADMISSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Default cap on TLS handshakes in progress at once.
pub const DEFAULT_MAX_HANDSHAKES_IN_FLIGHT: usize = 1024;

/// Default cap on TLS handshakes in progress at once from one source address: a device
/// handshakes in milliseconds, so a NAT in front of a hundred devices reconnecting at once
/// (device_e2e does that from 127.0.0.1) fits, and one address cannot take the global cap
/// (1,024) from everyone else.
pub const DEFAULT_MAX_HANDSHAKES_PER_ADDRESS: usize = 128;

/// Default cap on one device identity's connections between the handshake and CONNACK. A
/// device that reconnects has one pending beside its live session; one certificate cannot
/// hold thousands of connections that never send CONNECT.
pub const DEFAULT_MAX_PENDING_CONNECTS_PER_DEVICE: usize = 2;

/// Default largest CONNECT (remaining length). An agent's CONNECT (client id, keep-alive, a
/// presence will) is well under 1 KiB; no one gets to buffer `max_packet_size` before CONNECT.
pub const DEFAULT_MAX_CONNECT_SIZE: usize = 4 * 1024;

/// Default cap on device connections (handshaking or connected).
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;

/// Default maximum MQTT packet size (remaining length): a full-size wire message plus
/// room for the topic and header.
pub const DEFAULT_MAX_PACKET_SIZE: usize = wire::limits::DEFAULT_MAX_MESSAGE_BYTES + 1024;

/// Default sustained PUBLISH rate per device, in packets per second.
pub const DEFAULT_PUBLISH_RATE: f64 = 20.0;

/// Default PUBLISH burst per device (token bucket depth): an agent replaying its
/// outbox after a reconnect sends batches back to back.
pub const DEFAULT_PUBLISH_BURST: u32 = 200;

/// Default cap on subscriptions per device connection. An agent needs one.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 8;

/// Default longest keep-alive a device may ask for, in seconds.
pub const DEFAULT_MAX_KEEP_ALIVE: u16 = 900;

/// Default size of one segment of rumqttd's in-memory log, per filter. Small: rumqttd only
/// fans out server messages (device publishes never enter it), and a filter's log is kept
/// (up to `size × (count + 1)`) for as long as the broker runs.
pub const DEFAULT_ENGINE_SEGMENT_SIZE: usize = 16 * 1024;

/// Default cap on one device's publishes read but not yet taken by the device-publish sink.
/// A well-behaved agent keeps fewer in flight (its QoS 1 window); past the cap the device's
/// socket is no longer read until the sink catches up.
pub const DEFAULT_MAX_PENDING_PUBLISHES: usize = 128;

/// Default number of full segments rumqttd keeps per filter (beside the active one).
pub const DEFAULT_ENGINE_SEGMENT_COUNT: usize = 2;

/// Everything the broker needs to run.
///
/// Build it with [`BrokerConfig::new`] and adjust the public fields; [`Broker::start`]
/// validates it.
///
/// [`Broker::start`]: crate::Broker::start
#[derive(Debug)]
pub struct BrokerConfig {
    /// Where the device listener binds. Port 0 picks an ephemeral port (tests).
    pub listen: SocketAddr,
    /// The chain the server presents: its certificate, then the issuing CA.
    pub server_cert_chain: Vec<CertificateDer<'static>>,
    /// The server's private key.
    pub server_key: PrivateKeyDer<'static>,
    /// The trust anchor for device certificates: the fleet root CA. Devices present
    /// their leaf and the issuing CA.
    pub client_ca_root: CertificateDer<'static>,
    /// Time a TCP connection has to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time an authenticated connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Time the admission hook has to answer; past it the device is refused as if
    /// the hook had failed (fail closed).
    pub admission_timeout: Duration,
    /// TLS handshakes in progress at once. A connection arriving when all are taken is
    /// closed at once (and counted), so a flood of silent sockets cannot queue up in
    /// front of real devices.
    pub max_handshakes_in_flight: usize,
    /// TLS handshakes in progress at once from one source IP address; above it a new
    /// connection from that address is closed at once (and counted).
    pub max_handshakes_per_address: usize,
    /// Connections of one device identity between its TLS handshake and its CONNACK; above
    /// it a new one is closed at once (and counted). A live session does not count: a new
    /// CONNECT still replaces it.
    pub max_pending_connects_per_device: usize,
    /// Largest CONNECT (remaining length) a device may send; larger is refused from its
    /// fixed header.
    pub max_connect_size: usize,
    /// Device connections at once, handshaking or connected; above it new TCP
    /// connections are closed at once (and counted).
    pub max_connections: usize,
    /// Largest MQTT packet (remaining length) a device may send.
    pub max_packet_size: usize,
    /// Sustained PUBLISH packets per second per device.
    pub publish_rate: f64,
    /// PUBLISH burst per device.
    pub publish_burst: u32,
    /// Subscriptions per device connection.
    pub max_subscriptions: usize,
    /// Longest keep-alive a device may ask for, in seconds. Zero (no keep-alive) and
    /// longer values are refused at CONNECT.
    pub max_keep_alive: u16,
    /// rumqttd's in-memory log: bytes per segment, per filter.
    pub engine_segment_size: usize,
    /// rumqttd's in-memory log: segments kept per filter.
    pub engine_segment_count: usize,
    /// Live streams for API-key subscribers (`crate::LiveStreams`); `None` (the default): off,
    /// and the handshake requires a client certificate.
    pub live_streams: Option<crate::LiveStreams>,
    /// A device's publishes read but not yet taken by the device-publish sink (PUBACK
    /// pending); above it the device's socket is not read until the sink catches up.
    pub max_pending_publishes: usize,
}

impl BrokerConfig {
    /// A configuration with the given certificates and every other field at its
    /// default.
    pub fn new(
        server_cert_chain: Vec<CertificateDer<'static>>,
        server_key: PrivateKeyDer<'static>,
        client_ca_root: CertificateDer<'static>,
    ) -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            server_cert_chain,
            server_key,
            client_ca_root,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            admission_timeout: DEFAULT_ADMISSION_TIMEOUT,
            max_handshakes_in_flight: DEFAULT_MAX_HANDSHAKES_IN_FLIGHT,
            max_handshakes_per_address: DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
            max_pending_connects_per_device: DEFAULT_MAX_PENDING_CONNECTS_PER_DEVICE,
            max_connect_size: DEFAULT_MAX_CONNECT_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            publish_rate: DEFAULT_PUBLISH_RATE,
            publish_burst: DEFAULT_PUBLISH_BURST,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_keep_alive: DEFAULT_MAX_KEEP_ALIVE,
            engine_segment_size: DEFAULT_ENGINE_SEGMENT_SIZE,
            engine_segment_count: DEFAULT_ENGINE_SEGMENT_COUNT,
            live_streams: None,
            max_pending_publishes: DEFAULT_MAX_PENDING_PUBLISHES,
        }
    }

    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<(), BrokerError> {
        if self.server_cert_chain.is_empty() {
            return Err(BrokerError::InvalidConfig {
                field: "server_cert_chain",
                reason: "is empty",
            });
        }
        match self.invalid_limit() {
            Some((field, reason)) => Err(BrokerError::InvalidConfig { field, reason }),
            None => Ok(()),
        }
    }

    /// The first limit (every field but the listener and the certificates) out of range: its
    /// name and what it must be. fleetd checks its `[broker]` section with it.
    pub fn invalid_limit(&self) -> Option<(&'static str, &'static str)> {
        let checks: [(bool, &'static str, &'static str); 15] = [
            (
                self.handshake_timeout.is_zero(),
                "handshake_timeout",
                "must be positive",
            ),
            (
                self.connect_timeout.is_zero(),
                "connect_timeout",
                "must be positive",
            ),
            (
                self.admission_timeout.is_zero(),
                "admission_timeout",
                "must be positive",
            ),
            (
                self.max_handshakes_in_flight == 0,
                "max_handshakes_in_flight",
                "must be at least 1",
            ),
            (
                self.max_handshakes_per_address == 0,
                "max_handshakes_per_address",
                "must be at least 1",
            ),
            (
                self.max_pending_connects_per_device == 0,
                "max_pending_connects_per_device",
                "must be at least 1",
            ),
            (
                self.max_packet_size < 64,
                "max_packet_size",
                "must be at least 64 bytes",
            ),
            (
                self.max_connect_size < 64 || self.max_connect_size > self.max_packet_size,
                "max_connect_size",
                "must be at least 64 bytes and at most max_packet_size",
            ),
            (
                self.max_connections == 0,
                "max_connections",
                "must be at least 1",
            ),
            (
                !(self.publish_rate.is_finite() && self.publish_rate > 0.0),
                "publish_rate",
                "must be a positive number of packets per second",
            ),
            (
                self.publish_burst == 0,
                "publish_burst",
                "must be at least 1",
            ),
            (
                self.max_keep_alive == 0,
                "max_keep_alive",
                "must be at least 1 second",
            ),
            (
                self.engine_segment_size < 1024,
                "engine_segment_size",
                "must be at least 1024 bytes (rumqttd panics below)",
            ),
            (
                self.engine_segment_count == 0,
                "engine_segment_count",
                "must be at least 1",
            ),
            (
                self.max_pending_publishes == 0,
                "max_pending_publishes",
                "must be at least 1",
            ),
        ];
        checks
            .into_iter()
            .find(|(failed, _, _)| *failed)
            .map(|(_, field, reason)| (field, reason))
            .or_else(|| self.live_streams.and_then(|streams| streams.invalid()))
    }
}
