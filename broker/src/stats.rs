//! Counters: plain atomics, read as a [`BrokerStats`] snapshot.
//!
//! Labels are reasons, never device ids: the composition root turns these into
//! Prometheus counters (`fleet_broker_refusals_total{reason="publish_topic"}`).

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::warn;

/// At most one log line per refusal reason in this many seconds, for the refusals an attacker
/// can cause by the thousand (connection and handshake caps).
const REFUSAL_LOG_INTERVAL_SECS: u64 = 10;

/// Why the gateway refused a connection, a packet or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Refusal {
    /// A TCP connection arrived with `max_connections` in use; it was closed at once.
    ConnectionLimit,
    /// A TCP connection arrived with `max_handshakes_in_flight` in use; it was closed at
    /// once.
    HandshakeCapacity,
    /// A TCP connection arrived while its source address had `max_handshakes_per_address`
    /// handshakes in progress; it was closed at once.
    AddressHandshakeLimit,
    /// A connection finished its handshake while its device identity had
    /// `max_pending_connects_per_device` others waiting for CONNACK; it was closed at once.
    PendingConnectLimit,
    /// CONNECT above `max_connect_size`, refused from its fixed header. Closed.
    ConnectTooLarge,
    /// The TLS handshake failed: no client certificate, one from another CA, an expired
    /// one, or a protocol version below TLS 1.2, among others.
    TlsHandshake,
    /// The TLS handshake did not finish within `handshake_timeout`.
    TlsHandshakeTimeout,
    /// The verified client certificate carries no readable device identity.
    Identity,
    /// No CONNECT within `connect_timeout` after the handshake.
    ConnectTimeout,
    /// The first packet was not a CONNECT, a second CONNECT arrived, a packet was
    /// malformed, or the device sent a packet only a server sends. Disconnected.
    ProtocolError,
    /// CONNECT asked for a protocol other than MQTT 3.1.1. CONNACK 0x01.
    ProtocolVersion,
    /// CONNECT's client id is not the certificate's device id. CONNACK 0x02.
    ClientId,
    /// CONNECT's keep-alive is zero or above `max_keep_alive`. CONNACK 0x02.
    KeepAlive,
    /// CONNECT's will is not one of the device's own `up` topics, or asks for QoS 2.
    /// CONNACK 0x05.
    WillTopic,
    /// The admission hook said the device is not allowed (revoked). CONNACK 0x05.
    Revoked,
    /// The admission hook failed or timed out: refused, fail closed. CONNACK 0x03.
    AdmissionError,
    /// The device's tenant already holds its quota of live sessions on this broker (the
    /// admission hook's `tenant_session_quota`). CONNACK 0x03.
    TenantSessionLimit,
    /// PUBLISH to a topic that is not one of the device's own `up` topics. Disconnected.
    PublishTopic,
    /// PUBLISH at QoS 2 (not supported). Disconnected.
    PublishQos,
    /// PUBLISH above the device's rate (token bucket empty). Disconnected.
    PublishRate,
    /// A packet above `max_packet_size`. Disconnected.
    PacketTooLarge,
    /// SUBSCRIBE with a filter outside the device's own `down` topics. SUBACK 0x80.
    SubscribeTopic,
    /// SUBSCRIBE that would exceed `max_subscriptions`. SUBACK 0x80.
    SubscriptionLimit,
    /// A live-stream connection (no client certificate) without a username and password, or
    /// with a key that is unknown, wrong, malformed, revoked, expired or not allowed from its
    /// address. CONNACK 0x04.
    StreamCredentials,
    /// A live-stream key whose role may not read the stream. CONNACK 0x05.
    StreamNotAuthorized,
    /// The stream key check failed or timed out: refused, fail closed. CONNACK 0x03.
    StreamCheckError,
    /// A connection without a certificate finished its handshake while its source address had
    /// `max_pending_connects_per_address` others waiting for CONNACK; closed at once.
    StreamPendingLimit,
    /// A live-stream subscriber sent PUBLISH (streams are read only). Disconnected.
    StreamPublish,
    /// A live-stream SUBSCRIBE with a filter outside the key's tenant stream. SUBACK 0x80.
    StreamSubscribeTopic,
    /// A live subscriber's key was found revoked or expired (or its check failed) at a
    /// recheck. Disconnected.
    StreamKeyEnded,
}

impl Refusal {
    /// Every reason, in declaration order.
    pub const ALL: [Self; 30] = [
        Self::ConnectionLimit,
        Self::HandshakeCapacity,
        Self::AddressHandshakeLimit,
        Self::PendingConnectLimit,
        Self::ConnectTooLarge,
        Self::TlsHandshake,
        Self::TlsHandshakeTimeout,
        Self::Identity,
        Self::ConnectTimeout,
        Self::ProtocolError,
        Self::ProtocolVersion,
        Self::ClientId,
        Self::KeepAlive,
        Self::WillTopic,
        Self::Revoked,
        Self::AdmissionError,
        Self::TenantSessionLimit,
        Self::PublishTopic,
        Self::PublishQos,
        Self::PublishRate,
        Self::PacketTooLarge,
        Self::SubscribeTopic,
        Self::SubscriptionLimit,
        Self::StreamCredentials,
        Self::StreamNotAuthorized,
        Self::StreamCheckError,
        Self::StreamPendingLimit,
        Self::StreamPublish,
        Self::StreamSubscribeTopic,
        Self::StreamKeyEnded,
    ];

    /// A stable, low-cardinality metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionLimit => "connection_limit",
            Self::HandshakeCapacity => "handshake_capacity",
            Self::AddressHandshakeLimit => "address_handshake_limit",
            Self::PendingConnectLimit => "pending_connect_limit",
            Self::ConnectTooLarge => "connect_too_large",
            Self::TlsHandshake => "tls_handshake",
            Self::TlsHandshakeTimeout => "tls_handshake_timeout",
            Self::Identity => "identity",
            Self::ConnectTimeout => "connect_timeout",
            Self::ProtocolError => "protocol_error",
            Self::ProtocolVersion => "protocol_version",
            Self::ClientId => "client_id",
            Self::KeepAlive => "keep_alive",
            Self::WillTopic => "will_topic",
            Self::Revoked => "revoked",
            Self::AdmissionError => "admission_error",
            Self::TenantSessionLimit => "tenant_session_limit",
            Self::PublishTopic => "publish_topic",
            Self::PublishQos => "publish_qos",
            Self::PublishRate => "publish_rate",
            Self::PacketTooLarge => "packet_too_large",
            Self::SubscribeTopic => "subscribe_topic",
            Self::SubscriptionLimit => "subscription_limit",
            Self::StreamCredentials => "stream_credentials",
            Self::StreamNotAuthorized => "stream_not_authorized",
            Self::StreamCheckError => "stream_check_error",
            Self::StreamPendingLimit => "stream_pending_limit",
            Self::StreamPublish => "stream_publish",
            Self::StreamSubscribeTopic => "stream_subscribe_topic",
            Self::StreamKeyEnded => "stream_key_ended",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The live counters, shared by every connection task.
/// Why a server message for one device ([`RunningBroker::deliver`](crate::RunningBroker::deliver))
/// was not written to it. Not a loss: acks are superseded by the next one and the agent resends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Undelivered {
    /// The device has no live session on this broker (or its session ended before writing
    /// the message).
    Offline,
    /// The session already had its queue of server messages full (a device that does not
    /// read, or a burst).
    QueueFull,
    /// The session has no subscription covering the topic.
    NotSubscribed,
}

impl Undelivered {
    /// Every reason.
    pub const ALL: [Self; 3] = [Self::Offline, Self::QueueFull, Self::NotSubscribed];

    /// A stable, low-cardinality metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::QueueFull => "queue_full",
            Self::NotSubscribed => "not_subscribed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Undelivered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    tcp_accepted: AtomicU64,
    handshakes_completed: AtomicU64,
    sessions_started: AtomicU64,
    sessions_active: AtomicU64,
    publishes_received: AtomicU64,
    publishes_discarded: AtomicU64,
    undelivered: [AtomicU64; Undelivered::ALL.len()],
    packets_sent: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    handshakes_in_progress: AtomicU64,
    refusals: [AtomicU64; Refusal::ALL.len()],
    /// Per reason, the Unix second of its last log line.
    refusals_logged_at: [AtomicU64; Refusal::ALL.len()],
}

impl Counters {
    pub(crate) fn refused(&self, reason: Refusal) {
        self.refusals[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the refusal and logs it, at most once per reason every
    /// [`REFUSAL_LOG_INTERVAL_SECS`] whatever the rate (the count says how many so far).
    pub(crate) fn refused_and_logged(&self, reason: Refusal, remote: IpAddr) {
        let total = self.refusals[reason.index()].fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let logged_at = &self.refusals_logged_at[reason.index()];
        let last = logged_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < REFUSAL_LOG_INTERVAL_SECS && last != 0 {
            return;
        }
        if logged_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            warn!(%reason, %remote, refused_so_far = total, "device connection refused (logged at most every {REFUSAL_LOG_INTERVAL_SECS} s per reason)");
        }
    }

    pub(crate) fn tcp_accepted(&self) {
        self.tcp_accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake_completed(&self) {
        self.handshakes_completed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_started(&self) {
        self.sessions_started.fetch_add(1, Ordering::Relaxed);
        self.sessions_active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_ended(&self) {
        self.sessions_active.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn publishes_received(&self, count: u64) {
        self.publishes_received.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn publishes_discarded(&self, count: u64) {
        self.publishes_discarded.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn undelivered(&self, reason: Undelivered) {
        self.undelivered[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn packets_sent(&self, count: u64) {
        self.packets_sent.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn bytes_received(&self, count: u64) {
        self.bytes_received.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn bytes_sent(&self, count: u64) {
        self.bytes_sent.fetch_add(count, Ordering::Relaxed);
    }

    /// Counts a TLS handshake in progress until the guard drops.
    pub(crate) fn handshake_started(self: &Arc<Self>) -> HandshakeInProgress {
        self.handshakes_in_progress.fetch_add(1, Ordering::Relaxed);
        HandshakeInProgress(Arc::clone(self))
    }

    pub(crate) fn snapshot(&self) -> BrokerStats {
        let mut refusals = [0; Refusal::ALL.len()];
        for (slot, counter) in refusals.iter_mut().zip(&self.refusals) {
            *slot = counter.load(Ordering::Relaxed);
        }
        let mut undelivered = [0; Undelivered::ALL.len()];
        for (slot, counter) in undelivered.iter_mut().zip(&self.undelivered) {
            *slot = counter.load(Ordering::Relaxed);
        }
        BrokerStats {
            tcp_accepted: self.tcp_accepted.load(Ordering::Relaxed),
            handshakes_completed: self.handshakes_completed.load(Ordering::Relaxed),
            sessions_started: self.sessions_started.load(Ordering::Relaxed),
            sessions_active: self.sessions_active.load(Ordering::Relaxed),
            publishes_received: self.publishes_received.load(Ordering::Relaxed),
            publishes_discarded: self.publishes_discarded.load(Ordering::Relaxed),
            packets_sent: self.packets_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            handshakes_in_progress: self.handshakes_in_progress.load(Ordering::Relaxed),
            connections_open: 0,
            refusals,
            undelivered,
        }
    }
}

/// A TLS handshake in progress, counted in [`BrokerStats::handshakes_in_progress`] until dropped.
pub(crate) struct HandshakeInProgress(Arc<Counters>);

impl Drop for HandshakeInProgress {
    fn drop(&mut self) {
        self.0
            .handshakes_in_progress
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A snapshot of the broker's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStats {
    /// TCP connections accepted by the listener (before any limit).
    pub tcp_accepted: u64,
    /// TLS handshakes that completed with a verified client certificate, or without one from a
    /// live-stream subscriber (live streams on).
    pub handshakes_completed: u64,
    /// Device MQTT sessions accepted (CONNACK 0x00 sent); live-stream subscribers are not
    /// counted here (`StatsReader::stream_subscribers`).
    pub sessions_started: u64,
    /// MQTT sessions open now.
    pub sessions_active: u64,
    /// PUBLISH packets accepted from devices (past the topic rules and limits), on their way
    /// to the device-publish sink.
    pub publishes_received: u64,
    /// Accepted PUBLISH packets that went nowhere because the broker runs without a
    /// device-publish sink (tests and benchmarks only; fleetd always has one).
    pub publishes_discarded: u64,
    /// Packets written to devices (CONNACK excluded).
    pub packets_sent: u64,
    /// MQTT bytes read from devices (after TLS decryption; TLS records and handshakes not
    /// counted).
    pub bytes_received: u64,
    /// MQTT bytes written to devices (before TLS encryption).
    pub bytes_sent: u64,
    /// TLS handshakes in progress now.
    pub handshakes_in_progress: u64,
    /// TCP connections open now, in any state (handshaking, waiting for CONNECT or admission,
    /// in a session, closing); 0 in a snapshot that does not come from a running broker.
    pub connections_open: u64,
    refusals: [u64; Refusal::ALL.len()],
    undelivered: [u64; Undelivered::ALL.len()],
}

impl BrokerStats {
    /// How many times the gateway refused for `reason`.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refusals[reason.index()]
    }

    /// Failed TLS handshakes: [`Refusal::TlsHandshake`] plus [`Refusal::TlsHandshakeTimeout`].
    pub fn handshakes_failed(&self) -> u64 {
        self.refused(Refusal::TlsHandshake) + self.refused(Refusal::TlsHandshakeTimeout)
    }

    /// Every reason with its count, for exporting.
    pub fn refusals(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL.into_iter().zip(self.refusals.iter().copied())
    }

    /// How many server messages for one device were not written to it for `reason`.
    pub fn undelivered(&self, reason: Undelivered) -> u64 {
        self.undelivered[reason.index()]
    }

    /// Every reason a server message went undelivered, with its count, for exporting.
    pub fn undelivered_by_reason(&self) -> impl Iterator<Item = (Undelivered, u64)> + '_ {
        Undelivered::ALL
            .into_iter()
            .zip(self.undelivered.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_label() {
        for (position, reason) in Refusal::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), position);
        }
        let mut labels: Vec<_> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Refusal::ALL.len());
    }

    #[test]
    fn refusals_are_counted_per_reason() {
        let counters = Counters::default();
        counters.refused(Refusal::PublishTopic);
        counters.refused(Refusal::PublishTopic);
        counters.refused(Refusal::Revoked);
        let stats = counters.snapshot();
        assert_eq!(stats.refused(Refusal::PublishTopic), 2);
        assert_eq!(stats.refused(Refusal::Revoked), 1);
        assert_eq!(stats.refused(Refusal::ClientId), 0);
        assert_eq!(stats.refusals().map(|(_, n)| n).sum::<u64>(), 3);
    }
}
