//! The embedded rumqttd, fed in-process.
//!
//! rumqttd's router runs on its own thread ([`Router::spawn`]); nothing listens on a
//! socket for it. It only fans out server messages: device publishes never enter it (the
//! sessions hand them to the device-publish sink), and device sessions have no link of
//! their own. Every in-process subscriber and the server's publisher is a rumqttd *local
//! link* ([`LinkBuilder`]); one of them, subscribed to `fleet/v1/+/down/cmd`, routes
//! commands to the device's session through the registry.
//!
//! Two rumqttd calls block the calling thread: building a link (it waits for the
//! router's CONNACK) and pushing packets (a blocking send into the router's bounded
//! queue of 1,000 events). Links are built on tokio's blocking pool; packets go through
//! one dedicated *uplink* thread, so a busy router slows the uplink queue (and through
//! its bound, the devices that publish) but never stalls a tokio worker, a TLS
//! handshake or a device that only reads.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, Publish, QoS};
use rumqttd::{Notification, Router, RouterConfig};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use crate::error::BrokerError;

/// Packets queued for the uplink thread before senders wait.
const UPLINK_QUEUE: usize = 4096;

/// Messages buffered between a local link and its [`LocalSubscription`] receiver.
const LOCAL_SUBSCRIPTION_QUEUE: usize = 1024;

/// Links the engine holds (local subscribers, the publisher, the command route): device
/// sessions have none.
const LOCAL_LINK_ALLOWANCE: usize = 64;

/// Client ids of local links start with this; a device's client id is a UUID, so the two
/// can never collide.
const LOCAL_CLIENT_PREFIX: &str = "fleetd-local-";

/// Builds a link; rumqttd's error (800 bytes) is reduced to its message.
type MakeLink = dyn Fn(&str) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync;

/// The sending half of a link, shared between its owner and the uplink thread.
pub(crate) type SharedLinkTx = Arc<Mutex<LinkTx>>;

/// One batch of packets for one link, in order.
struct UplinkJob {
    link: SharedLinkTx,
    packets: Vec<Packet>,
}

/// Sizing of the router.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineLimits {
    pub(crate) segment_size: usize,
    pub(crate) segment_count: usize,
}

/// A handle on the running router.
pub(crate) struct Engine {
    /// Builds a link. The closure owns the router's sender, whose element type rumqttd
    /// keeps private: it can be captured, not named.
    make_link: Box<MakeLink>,
    uplink: mpsc::Sender<UplinkJob>,
    next_local_id: AtomicU64,
    publisher: SharedLinkTx,
    next_pkid: AtomicU16,
}

impl Engine {
    /// Whether the uplink thread still takes packets (it ends when the router is gone).
    pub(crate) fn is_running(&self) -> bool {
        !self.uplink.is_closed()
    }

    /// Spawns the router and the uplink thread, and opens the local publisher link.
    pub(crate) async fn start(limits: EngineLimits) -> Result<Arc<Self>, BrokerError> {
        let router_config = RouterConfig {
            max_connections: LOCAL_LINK_ALLOWANCE,
            max_outgoing_packet_count: 200,
            max_segment_size: limits.segment_size,
            max_segment_count: limits.segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router_tx = Router::new(0, router_config).spawn();
        let make_link: Box<MakeLink> = Box::new(move |client_id: &str| {
            // A clean session always: sessions are not kept across connections (the
            // agent's outbox is the durable copy). Dynamic filters: publishing to a topic
            // nobody subscribes to must not disconnect the publisher.
            LinkBuilder::new(client_id, router_tx.clone())
                .clean_session(true)
                .dynamic_filters(true)
                .build()
                .map_err(|error: LinkError| error.to_string())
        });
        let (uplink, jobs) = mpsc::channel(UPLINK_QUEUE);
        std::thread::Builder::new()
            .name("broker-uplink".into())
            .spawn(move || run_uplink(jobs))
            .map_err(|error| {
                BrokerError::Link(format!("cannot spawn the uplink thread: {error}"))
            })?;

        let (make_link, publisher) = tokio::task::spawn_blocking(move || {
            let (tx, rx, _connack) = make_link(&format!("{LOCAL_CLIENT_PREFIX}publisher"))?;
            Ok::<_, String>((make_link, (tx, rx)))
        })
        .await
        .map_err(|_| BrokerError::Closed)?
        .map_err(BrokerError::Link)?;
        let (publisher_tx, publisher_rx) = publisher;
        tokio::spawn(drain_acks(publisher_rx));

        Ok(Arc::new(Self {
            make_link,
            uplink,
            next_local_id: AtomicU64::new(0),
            publisher: Arc::new(Mutex::new(publisher_tx)),
            next_pkid: AtomicU16::new(0),
        }))
    }

    /// Opens a link (on the blocking pool: rumqttd waits for its router's answer). The router's CONNACK comes back with it.
    async fn open_link(
        self: &Arc<Self>,
        client_id: String,
    ) -> Result<(SharedLinkTx, LinkRx, Notification), BrokerError> {
        let engine = Arc::clone(self);
        let (tx, rx, connack) = tokio::task::spawn_blocking(move || (engine.make_link)(&client_id))
            .await
            .map_err(|_| BrokerError::Closed)?
            .map_err(BrokerError::Link)?;
        Ok((Arc::new(Mutex::new(tx)), rx, connack))
    }

    /// Queues packets for a link, in order. Waits only while the uplink queue is full.
    pub(crate) async fn send(
        &self,
        link: &SharedLinkTx,
        packets: Vec<Packet>,
    ) -> Result<(), BrokerError> {
        if packets.is_empty() {
            return Ok(());
        }
        let job = UplinkJob {
            link: Arc::clone(link),
            packets,
        };
        self.uplink.send(job).await.map_err(|_| BrokerError::Closed)
    }

    /// Ends a link's session in the router with a DISCONNECT. Nothing to do if that
    /// fails: the engine has stopped, and the link with it.
    pub(crate) async fn end_link(&self, link: &SharedLinkTx) {
        let _ = self.send(link, vec![disconnect_packet()]).await;
    }

    /// Subscribes an in-process receiver to `filter` (at QoS 0: local links receive
    /// what the router forwards, without acknowledgements).
    pub(crate) async fn subscribe_local(
        self: &Arc<Self>,
        filter: &str,
    ) -> Result<LocalSubscription, BrokerError> {
        if !wire::topic::is_well_formed_filter(filter) {
            return Err(BrokerError::InvalidFilter(filter.to_owned()));
        }
        let id = self.next_local_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx, _connack) = self.open_link(format!("{LOCAL_CLIENT_PREFIX}{id}")).await?;
        let subscribe = {
            let filters = vec![rumqttd::protocol::Filter {
                path: filter.to_owned(),
                qos: QoS::AtMostOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: rumqttd::protocol::RetainForwardRule::Never,
            }];
            Packet::Subscribe(rumqttd::protocol::Subscribe { pkid: 1, filters }, None)
        };
        self.send(&tx, vec![subscribe]).await?;
        let (messages_tx, messages) = mpsc::channel(LOCAL_SUBSCRIPTION_QUEUE);
        tokio::spawn(forward_local(Arc::clone(self), tx, rx, messages_tx));
        Ok(LocalSubscription { messages })
    }

    /// Publishes from the server (acks, commands) at QoS 1, so a device subscribed at
    /// QoS 1 receives it at QoS 1.
    pub(crate) async fn publish_local(
        &self,
        topic: &str,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return Err(BrokerError::InvalidTopic(topic.to_owned()));
        }
        let pkid = self.next_packet_id();
        let publish = publish_packet(topic.as_bytes(), &payload, QoS::AtLeastOnce, pkid, false);
        self.send(&self.publisher, vec![Packet::Publish(publish, None)])
            .await
    }

    /// Packet ids 1..=65535, cycling. Local acks are drained and ignored, so reuse after
    /// a wrap is harmless.
    fn next_packet_id(&self) -> u16 {
        loop {
            let pkid = self
                .next_pkid
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if pkid != 0 {
                return pkid;
            }
        }
    }
}

/// A stream of messages matching an in-process subscription.
///
/// Delivery is at most once: the engine keeps no durable copy, and a receiver that
/// falls far behind loses the oldest messages when rumqttd's per-filter log rolls over
/// (`engine_segment_size × engine_segment_count`). Durability comes from the device
/// outbox and the ack watermark sent after the database commit.
#[derive(Debug)]
pub struct LocalSubscription {
    messages: mpsc::Receiver<LocalMessage>,
}

impl LocalSubscription {
    /// The next message; `None` once the broker has shut down.
    pub async fn recv(&mut self) -> Option<LocalMessage> {
        self.messages.recv().await
    }
}

/// A message delivered to an in-process subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMessage {
    /// The topic it was published to. The topic rules guarantee that a device topic
    /// names the device that published it.
    pub topic: String,
    /// The payload, as published.
    pub payload: Bytes,
}

/// Builds a PUBLISH with a given QoS and packet id.
///
/// rumqttd keeps a `Publish`'s QoS and packet id crate-private; its documented
/// serialisation (`Publish::serialize`/`deserialize`) is the public way to set them.
pub(crate) fn publish_packet(
    topic: &[u8],
    payload: &[u8],
    qos: QoS,
    pkid: u16,
    retain: bool,
) -> Publish {
    let mut raw = BytesMut::with_capacity(5 + topic.len() + payload.len());
    raw.put_u8(0b0011_0000 | u8::from(retain) | ((qos as u8) << 1));
    raw.put_u16(pkid);
    raw.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
    raw.extend_from_slice(topic);
    raw.extend_from_slice(payload);
    Publish::deserialize(raw.freeze())
}

/// The DISCONNECT that ends a link's session in the router.
pub(crate) fn disconnect_packet() -> Packet {
    Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    )
}

/// The uplink thread: pushes each job's packets into its link, in arrival order.
fn run_uplink(mut jobs: mpsc::Receiver<UplinkJob>) {
    while let Some(UplinkJob { link, mut packets }) = jobs.blocking_recv() {
        let Some(last) = packets.pop() else {
            continue;
        };
        let mut tx = match link.lock() {
            Ok(tx) => tx,
            Err(poisoned) => poisoned.into_inner(),
        };
        {
            let mut buffer = tx.buffer();
            // The router takes a link's whole buffer on each notification, so a notification
            // is sent only when the buffer goes from empty to not: a non-empty buffer has one
            // on its way that will take these packets too. A notification per job instead
            // leaves notifications behind for packets already taken, and the one after a
            // DISCONNECT (the link is gone by then) made the router log "no-connection id
            // ... is already gone" as an ERROR on every clean disconnect.
            if !buffer.is_empty() {
                buffer.extend(packets);
                buffer.push_back(last);
                continue;
            }
            buffer.extend(packets);
        }
        // `LinkTx::send` is an `async fn` without an await point: it pushes, then makes a
        // blocking send into the router's queue. One poll runs it to completion, here,
        // on this thread.
        match poll_once(tx.send(last)) {
            Some(Ok(_)) => {}
            Some(Err(error)) => debug!(%error, "router refused packets; the link is gone"),
            None => error!("rumqttd LinkTx::send did not complete in one poll"),
        }
    }
}

/// Polls a future once with a no-op waker.
fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// Drains a local link's acknowledgements, answering the router's flow control.
async fn drain_acks(mut rx: LinkRx) {
    loop {
        match rx.next().await {
            Ok(Some(Notification::Unschedule)) => {
                if rx.wake().await.is_err() {
                    return;
                }
            }
            Ok(Some(Notification::Disconnect(..))) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Moves a local link's messages into its subscription channel, answering the router's
/// flow control, until either side goes away.
async fn forward_local(
    engine: Arc<Engine>,
    tx: SharedLinkTx,
    mut rx: LinkRx,
    messages: mpsc::Sender<LocalMessage>,
) {
    loop {
        let notification = tokio::select! {
            notification = rx.next() => notification,
            () = messages.closed() => break,
        };
        match notification {
            Ok(Some(Notification::Forward(forward))) => {
                let publish = forward.publish;
                let Ok(topic) = String::from_utf8(publish.topic.to_vec()) else {
                    warn!("dropping a message with a non-UTF-8 topic");
                    continue;
                };
                let message = LocalMessage {
                    topic,
                    payload: publish.payload,
                };
                if messages.send(message).await.is_err() {
                    break;
                }
            }
            // The router paused this link after filling its outgoing buffer: everything
            // before this notification has been taken, so ask for more.
            Ok(Some(Notification::Unschedule)) => {
                if rx.wake().await.is_err() {
                    return;
                }
            }
            Ok(Some(Notification::Disconnect(..))) | Err(_) => return,
            Ok(_) => {}
        }
    }
    // The receiver was dropped: end the session in the router.
    engine.end_link(&tx).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_publishes_carry_qos_pkid_and_retain() {
        let publish = publish_packet(b"a/b", b"payload", QoS::AtLeastOnce, 7, true);
        let raw = publish.serialize();
        assert_eq!(raw[0], 0b0011_0011);
        assert_eq!(u16::from_be_bytes([raw[1], raw[2]]), 7);
        assert_eq!(&publish.topic[..], b"a/b");
        assert_eq!(&publish.payload[..], b"payload");
        assert!(publish.retain);
    }
}
