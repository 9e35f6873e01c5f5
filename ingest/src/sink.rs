//! The output seam: where ack watermarks go after a commit.

use std::future::Future;
use std::pin::Pin;

use store::DeviceId;

/// A boxed future, so that [`AckSink`] can be used as `Arc<dyn AckSink>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an ack could not be handed to the broker. Acks are best effort: a lost one is superseded
/// by the next, and a device that resends gets the current watermark again.
#[derive(Debug, thiserror::Error)]
#[error("ack not published: {0}")]
pub struct AckError(pub String);

/// Publishes an encoded [`wire::Ack`] to `fleet/v1/{device}/down/ack`.
///
/// Called only after the transaction that made the watermark durable has committed. It must not
/// wait for long (use a bounded queue and drop when full): ingest calls it from its writers.
pub trait AckSink: Send + Sync + 'static {
    /// Publishes `payload` (an encoded ack) to the device's ack topic.
    fn publish_ack(
        &self,
        device: DeviceId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), AckError>>;
}

/// A record just committed, as live streams carry it: decoded, with its place in the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedRecord {
    /// Its tenant.
    pub tenant: store::TenantId,
    /// Its device.
    pub device: DeviceId,
    /// The topic it came on (telemetry, patch or events).
    pub kind: wire::topic::TopicKind,
    /// The epoch its sequence number counts in (a `wire::Epoch` id).
    pub epoch: u64,
    /// Its sequence number.
    pub seq: u64,
    /// When the device recorded it, by its own clock.
    pub recorded_at: wire::UnixMillis,
    /// What it says.
    pub body: wire::Body,
}

/// Where committed records go for live streams (best effort).
///
/// Called by ingest's writers right after a commit, with the records that commit inserted
/// (never a duplicate of an already committed seq). It must never wait: use a bounded queue,
/// `try_send`, and count what is dropped.
pub trait StreamSink: Send + Sync + 'static {
    /// Whether anyone may want `tenant`'s records now; when not, ingest builds nothing. Must be
    /// cheap (an atomic load, a map lookup).
    fn wants(&self, tenant: store::TenantId) -> bool;
    /// Takes the records of one commit, in batch order.
    fn offer(&self, records: Vec<CommittedRecord>);
}

/// A [`StreamSink`] that wants nothing (no live streams).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStreams;

impl StreamSink for NoStreams {
    fn wants(&self, _tenant: store::TenantId) -> bool {
        false
    }

    fn offer(&self, _records: Vec<CommittedRecord>) {}
}
