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
