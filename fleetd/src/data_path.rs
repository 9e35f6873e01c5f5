//! Embedded mode of the data path: the broker's sessions hand device publishes straight to
//! ingest, and ingest's ack watermarks go back to each device's own session.

use std::sync::{Arc, OnceLock};

use broker::{
    BrokerError, DevicePublish, DevicePublishFuture, DevicePublishSink, RunningBroker, SinkClosed,
};
use ingest::{AckError, AckSink, BoxFuture, InboundMessage, IngestSender};
use store::DeviceId;
use wire::topic::TopicKind;

/// Device publishes into ingest. A session PUBACKs once `send` returned, that is once the
/// message is within ingest's memory budget; `send` waits while the budget is full, which is
/// the device's backpressure.
pub struct IngestSink(pub IngestSender);

impl DevicePublishSink for IngestSink {
    fn publish(&self, message: DevicePublish) -> DevicePublishFuture {
        let sender = self.0.clone();
        Box::pin(async move {
            sender
                .send(InboundMessage::new(message.topic, message.payload))
                .await
                .map_err(|_| SinkClosed)
        })
    }
}

/// Sends ack watermarks to `fleet/v1/{device}/down/ack` on the device's own session. Ingest
/// starts before the broker (the broker's sink needs ingest's sender), so the broker is set
/// once it runs; no device can have records to acknowledge before that.
pub struct BrokerAcks(pub BrokerSlot);

/// The embedded broker, set once it runs. Ingest starts first (the broker's device-publish sink
/// needs ingest's sender), so ingest's sinks (acks, live streams) reach the broker through this;
/// before it is set no device can have records to acknowledge and no one can have subscribed.
pub type BrokerSlot = Arc<OnceLock<Arc<RunningBroker>>>;

impl AckSink for BrokerAcks {
    fn publish_ack(
        &self,
        device: DeviceId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), AckError>> {
        // An undelivered ack (device offline, its queue full, not subscribed) is counted by
        // the broker by reason; the next ack supersedes it.
        let sent = match self.0.get() {
            Some(broker) => broker
                .deliver(device, TopicKind::Ack, payload)
                .map_err(|error: BrokerError| AckError(error.to_string())),
            None => Err(AckError("the broker is not running yet".to_owned())),
        };
        Box::pin(async move { sent })
    }
}
