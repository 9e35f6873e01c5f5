//! Embedded mode of the data path: the broker's in-process ingest subscription feeds ingest,
//! and ingest's ack watermarks go back to the devices through the broker.

use std::sync::Arc;

use broker::{LocalSubscription, RunningBroker};
use ingest::{AckError, AckSink, BoxFuture, InboundMessage, IngestSender};
use store::DeviceId;

/// Publishes ack watermarks to `fleet/v1/{device}/down/ack` through the embedded broker.
pub struct BrokerAcks(pub Arc<RunningBroker>);

impl AckSink for BrokerAcks {
    fn publish_ack(
        &self,
        device: DeviceId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), AckError>> {
        Box::pin(async move {
            self.0
                .publish_local(&wire::topic::ack(device), payload)
                .await
                .map_err(|e| AckError(e.to_string()))
        })
    }
}

/// Moves every device message from the broker into ingest. `send` waits while ingest's memory
/// budget is full, which slows this loop; the broker's ingest log absorbs the difference.
pub async fn feed_ingest(mut subscription: LocalSubscription, ingest: IngestSender) {
    while let Some(message) = subscription.recv().await {
        if ingest
            .send(InboundMessage::new(message.topic, message.payload))
            .await
            .is_err()
        {
            tracing::warn!("ingest stopped; device messages are no longer consumed");
            return;
        }
    }
}
