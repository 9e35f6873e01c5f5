//! What the composition root plugs into the broker: the admission check, the presence
//! channel and the sink of device publishes.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use certs::{DeviceIdentity, SerialNumber};
use time::OffsetDateTime;
use tokio::sync::mpsc;

/// The error an admission check may return. The broker only logs it and refuses the
/// device (fail closed).
pub type AdmissionError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The future an [`AdmissionCheck`] returns.
pub type AdmissionFuture = Pin<Box<dyn Future<Output = Result<Admission, AdmissionError>> + Send>>;

/// What an [`AdmissionCheck`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The device may connect while its tenant holds fewer than `tenant_session_quota` live
    /// sessions on this broker (else CONNACK 0x03). A device replacing its own live session
    /// keeps that session's place and is never refused by the quota.
    Admit {
        /// The tenant's most live sessions on this broker.
        tenant_session_quota: u32,
    },
    /// The device is not allowed (revoked): CONNACK 0x05.
    Refuse,
}

impl Admission {
    /// Admitted with no tenant quota to speak of.
    pub const ADMIT_UNLIMITED: Self = Self::Admit {
        tenant_session_quota: u32::MAX,
    };
}

/// "Is this device, with the certificate of this serial, allowed to connect, and how many
/// sessions may its tenant hold?", asked after the TLS handshake for every session (fleetd
/// refuses revoked devices and superseded certificates and reads the tenant's quota). An error
/// or a timeout refuses as unavailable (CONNACK 0x03): the check fails closed.
pub type AdmissionCheck =
    Arc<dyn Fn(DeviceIdentity, SerialNumber) -> AdmissionFuture + Send + Sync>;

/// The composition root's side of the broker.
pub struct BrokerHooks {
    /// The revocation check at connect.
    pub admission: AdmissionCheck,
    /// Where presence events go; `None` drops them. Unbounded so that a connection
    /// never waits on the store: the receiver must keep up (one event per connect and
    /// per disconnect).
    pub presence: Option<mpsc::UnboundedSender<PresenceEvent>>,
    /// Who may read live streams; required when
    /// [`BrokerConfig::live_streams`](crate::BrokerConfig::live_streams) is on.
    pub streams: Option<Arc<dyn crate::StreamAuthority>>,
    /// Where checked device PUBLISHes go (fleetd: ingest). `None`: nowhere; each is PUBACKed
    /// and counted as discarded ([`BrokerStats::publishes_discarded`](crate::BrokerStats)).
    pub device_publishes: Option<Arc<dyn DevicePublishSink>>,
}

impl BrokerHooks {
    /// Hooks that admit every device with a valid certificate and drop presence
    /// events: for tests and benchmarks, never for fleetd.
    pub fn admit_all() -> Self {
        Self {
            admission: Arc::new(|_, _| Box::pin(async { Ok(Admission::ADMIT_UNLIMITED) })),
            presence: None,
            streams: None,
            device_publishes: None,
        }
    }
}

impl fmt::Debug for BrokerHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerHooks")
            .field("presence", &self.presence.is_some())
            .field("streams", &self.streams.is_some())
            .field("device_publishes", &self.device_publishes.is_some())
            .finish_non_exhaustive()
    }
}

/// A device came online or went offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    /// Who.
    pub identity: DeviceIdentity,
    /// A number unique to this connection within the running broker. A device that
    /// reconnects quickly may have its new session's `online` delivered before its old
    /// session's `offline`: the store should ignore an `offline` whose session is not
    /// the one it last saw online.
    pub session: u64,
    /// `true` once CONNACK was sent, `false` when that session ended.
    pub online: bool,
    /// When.
    pub at: OffsetDateTime,
    /// The device's address as seen by the listener.
    pub remote_addr: SocketAddr,
    /// Why the session ended; `None` for `online` events.
    pub reason: Option<DisconnectReason>,
}

/// Why a device session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The device sent DISCONNECT. Its will is discarded.
    ClientDisconnect,
    /// The connection closed or failed without DISCONNECT. The will is published.
    ConnectionLost,
    /// Nothing arrived for 1.5 × the keep-alive. The will is published.
    KeepAliveTimeout,
    /// [`RunningBroker::disconnect`](crate::RunningBroker::disconnect) was called. The
    /// will is not published: a revoked device gets no data in.
    Revoked,
    /// A newer connection with the same device id took over. The will is not
    /// published.
    Replaced,
    /// The device broke a rule (topic, rate, size, protocol); see the refusal
    /// counters. The will is published, as MQTT asks after a protocol violation.
    Refused(crate::Refusal),
    /// The broker is shutting down. The will is not published.
    Shutdown,
    /// The device-publish sink stopped taking messages (ingest stopped). The will is not
    /// published; the device reconnects and replays what was not PUBACKed.
    IngestClosed,
}

impl DisconnectReason {
    /// A stable, low-cardinality label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientDisconnect => "client_disconnect",
            Self::ConnectionLost => "connection_lost",
            Self::KeepAliveTimeout => "keep_alive_timeout",
            Self::Revoked => "revoked",
            Self::Replaced => "replaced",
            Self::Refused(_) => "refused",
            Self::Shutdown => "shutdown",
            Self::IngestClosed => "ingest_closed",
        }
    }

    /// Whether the device's will is published when its session ends for this reason.
    pub(crate) fn publishes_will(self) -> bool {
        matches!(
            self,
            Self::ConnectionLost | Self::KeepAliveTimeout | Self::Refused(_)
        )
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(refusal) => write!(f, "refused: {refusal}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// A device PUBLISH that passed the topic rules and the limits: on one of the publisher's
/// own `up` topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePublish {
    /// The topic, such as `fleet/v1/{device}/up/telemetry`.
    pub topic: String,
    /// The payload, as published.
    pub payload: Bytes,
}

/// The sink no longer takes messages (ingest stopped): the device's session ends unacked, and
/// the device replays from its outbox when it reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkClosed;

/// The future a [`DevicePublishSink`] returns: `Ok` once the sink has taken the message.
pub type DevicePublishFuture = Pin<Box<dyn Future<Output = Result<(), SinkClosed>> + Send>>;

/// Takes device PUBLISHes, one at a time per session and in the order the device sent them.
/// The session PUBACKs a QoS 1 PUBLISH only once its future resolves `Ok`, and starts the
/// next hand-off only then: a sink that waits (ingest at its memory bound) is the device's
/// backpressure.
pub trait DevicePublishSink: Send + Sync {
    /// Hands one message over.
    fn publish(&self, message: DevicePublish) -> DevicePublishFuture;
}
