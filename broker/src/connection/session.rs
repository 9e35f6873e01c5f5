//! The session: the loop that reads the device, hands its publishes to the sink and writes
//! server messages to it, the rules and limits each device packet passes, and the teardown.
//!
//! Device publishes go to the [`DevicePublishSink`] one at a time, in order; a QoS 1 PUBLISH
//! is PUBACKed only once the sink took it. While a hand-off waits the loop keeps reading (and
//! answering PINGREQ): the device's own in-flight window bounds what it sends. A device with
//! more than `max_pending_publishes` waiting is no longer read (TCP backpressure) until the
//! sink catches up; its keep-alive does not run out meanwhile, since the wait is ours. When
//! the session ends, what it accepted but the sink has not taken yet still goes in, then the
//! will.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use certs::DeviceIdentity;
use rumqttd::protocol::{
    LastWill, Packet, PingResp, PubAck, QoS, SubAck, SubscribeReasonCode, UnsubAck,
};
use tokio::time::{sleep_until, Instant};
use tracing::debug;
use wire::DeviceId;

use super::admission::Admitted;
use super::codec::{DeviceIo, RawHeader, ReadError};
use super::Shared;
use crate::engine::publish_packet;
use crate::hooks::{DevicePublish, DevicePublishFuture, DevicePublishSink, DisconnectReason};
use crate::policy::{self, Subscriptions, TokenBucket};
use crate::registry::Downlink;
use crate::stats::{Refusal, Undelivered};

/// Packets read from the device in one go before they are handled.
const MAX_BATCH: usize = 64;

/// The session loop and its teardown.
pub(super) async fn run(
    shared: &Shared,
    mut device: DeviceIo,
    admitted: Admitted,
    identity: DeviceIdentity,
) {
    let Admitted {
        mut registration,
        will,
        keep_alive,
    } = admitted;
    registration.online();
    let control = registration.control();

    let mut state = SessionState {
        device_id: identity.device_id,
        subscriptions: Subscriptions::new(shared.limits.max_subscriptions),
        bucket: TokenBucket::new(
            shared.limits.publish_rate,
            shared.limits.publish_burst,
            Instant::now(),
        ),
        uplink: Uplink::new(shared),
        next_pkid: 0,
    };
    let idle_limit = keep_alive.mul_f32(1.5);
    let mut deadline = Instant::now() + idle_limit;
    let mut shutdown = shared.shutdown.clone();

    let reason = loop {
        if *shutdown.borrow() {
            break DisconnectReason::Shutdown;
        }
        let reading = !state.uplink.is_full(shared.limits.max_pending_publishes);
        tokio::select! {
            biased;
            () = control.closed() => {
                break control.reason().unwrap_or(DisconnectReason::Revoked);
            }
            _ = shutdown.changed() => break DisconnectReason::Shutdown,
            taken = state.uplink.in_flight() => {
                if taken.is_err() {
                    break DisconnectReason::IngestClosed;
                }
                // The device waited on us, not we on it: its idle time starts again.
                deadline = Instant::now() + idle_limit;
                if let Err(_io) = Box::pin(handed_off(shared, &mut state, &mut device)).await {
                    break DisconnectReason::ConnectionLost;
                }
            }
            () = sleep_until(deadline), if reading => break DisconnectReason::KeepAliveTimeout,
            read = device.read_packet(), if reading => {
                deadline = Instant::now() + idle_limit;
                let first = match read {
                    Ok(packet) => packet,
                    Err(ReadError::Closed) => break DisconnectReason::ConnectionLost,
                    Err(ReadError::Io(error)) => {
                        debug!(%identity, %error, "device connection failed");
                        break DisconnectReason::ConnectionLost;
                    }
                    Err(error) => {
                        let refusal = error.refusal();
                        shared.counters.refused(refusal);
                        break DisconnectReason::Refused(refusal);
                    }
                };
                match Box::pin(handle_batch(shared, &mut state, &mut device, first)).await {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Stop(reason)) => break reason,
                    Err(_io) => break DisconnectReason::ConnectionLost,
                }
            }
            messages = control.downlink() => {
                let written = Box::pin(write_downlink(shared, &mut state, &mut device, messages));
                if let Err(_io) = written.await {
                    break DisconnectReason::ConnectionLost;
                }
            }
        }
    };

    for _ in 0..control.take_downlink() {
        shared.counters.undelivered(Undelivered::Offline);
    }
    registration.ended(reason);
    // Unregistered, reported offline, no longer counted; a new session may start now.
    drop(registration);
    Box::pin(device.close()).await;
    if reason != DisconnectReason::IngestClosed {
        Box::pin(state.uplink.finish(will_message(will, reason))).await;
    }
}

/// The device's will as a publish, when MQTT asks for it to be published.
fn will_message(will: Option<LastWill>, reason: DisconnectReason) -> Option<DevicePublish> {
    let will = will.filter(|_| reason.publishes_will())?;
    // Admission checked it against the topic rules, which admit UTF-8 only.
    let topic = String::from_utf8(will.topic.to_vec()).ok()?;
    Some(DevicePublish {
        topic,
        payload: will.message,
    })
}

/// What the session loop does next.
enum Flow {
    Continue,
    Stop(DisconnectReason),
}

/// Per-session rule state.
struct SessionState {
    device_id: DeviceId,
    subscriptions: Subscriptions,
    bucket: TokenBucket,
    uplink: Uplink,
    /// The last packet id of a QoS 1 server message.
    next_pkid: u16,
}

impl SessionState {
    /// Packet ids 1..=65535, cycling. The device's PUBACKs are not tracked (nothing is
    /// resent: sessions are clean), so reuse after a wrap is harmless.
    fn next_pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }
}

/// The device's publishes between the socket and the sink: one handed over, the others
/// waiting their turn.
struct Uplink {
    sink: Option<Arc<dyn DevicePublishSink>>,
    counters: Arc<crate::stats::Counters>,
    /// The hand-off in progress and the packet id to PUBACK when it completes.
    in_flight: Option<(DevicePublishFuture, Option<u16>)>,
    waiting: VecDeque<(DevicePublish, Option<u16>)>,
}

impl Uplink {
    fn new(shared: &Shared) -> Self {
        Self {
            sink: shared.device_publishes.clone(),
            counters: Arc::clone(&shared.counters),
            in_flight: None,
            waiting: VecDeque::new(),
        }
    }

    /// Whether the device has `max` publishes or more not yet taken by the sink.
    fn is_full(&self, max: usize) -> bool {
        self.waiting.len() + usize::from(self.in_flight.is_some()) >= max
    }

    /// Queues a checked publish. Without a sink it is discarded (and counted) at once: its
    /// PUBACK, if any, is returned to send now.
    fn push(&mut self, message: DevicePublish, pkid: Option<u16>) -> Option<Option<u16>> {
        if self.sink.is_none() {
            self.counters.publishes_discarded(1);
            return Some(pkid);
        }
        self.waiting.push_back((message, pkid));
        self.start_next();
        None
    }

    /// Starts the next hand-off if none is in progress.
    fn start_next(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(sink) = &self.sink else { return };
        match self.waiting.pop_front() {
            Some((message, pkid)) => self.in_flight = Some((sink.publish(message), pkid)),
            // An idle device keeps no queue allocated.
            None => self.waiting = VecDeque::new(),
        }
    }

    /// Completes when the hand-off in progress does (never while there is none), with its
    /// result; the caller then calls [`Self::take_completed`]. Cancel safe.
    async fn in_flight(&mut self) -> Result<(), crate::hooks::SinkClosed> {
        match &mut self.in_flight {
            Some((taken, _)) => taken.as_mut().await,
            None => std::future::pending().await,
        }
    }

    /// After the session: hands what it accepted but the sink has not taken yet, then the
    /// will, to the sink (they were within the rules; an unacknowledged QoS 1 publish the
    /// device replays later is a duplicate ingest recognises). Stops if the sink closes.
    async fn finish(mut self, will: Option<DevicePublish>) {
        if let Some(will) = will {
            self.waiting.push_back((will, None));
        }
        if self.sink.is_none() {
            self.counters.publishes_discarded(self.waiting.len() as u64);
            return;
        }
        self.start_next();
        while self.in_flight.is_some() {
            if self.in_flight().await.is_err() {
                return;
            }
            self.take_completed();
        }
    }

    /// Ends the completed hand-off, starts the next, and returns the PUBACK's packet id.
    fn take_completed(&mut self) -> Option<u16> {
        let pkid = self.in_flight.take().and_then(|(_, pkid)| pkid);
        self.start_next();
        pkid
    }
}

/// The sink took the publish in flight: PUBACK it (QoS 1) and start the next.
async fn handed_off(
    shared: &Shared,
    state: &mut SessionState,
    device: &mut DeviceIo,
) -> io::Result<()> {
    let Some(pkid) = state.uplink.take_completed() else {
        return Ok(());
    };
    shared.counters.packets_sent(1);
    device.write_packets([puback(pkid)]).await
}

fn puback(pkid: u16) -> Packet {
    Packet::PubAck(
        PubAck {
            pkid,
            reason: rumqttd::protocol::PubAckReason::Success,
        },
        None,
    )
}

/// Writes queued server messages to the device at the QoS it subscribed with; those no
/// subscription covers are counted and dropped.
async fn write_downlink(
    shared: &Shared,
    state: &mut SessionState,
    device: &mut DeviceIo,
    messages: VecDeque<Downlink>,
) -> io::Result<()> {
    let mut packets = Vec::with_capacity(messages.len());
    for Downlink { topic, payload } in messages {
        let Some(qos) = state.subscriptions.qos_for(&topic) else {
            shared.counters.undelivered(Undelivered::NotSubscribed);
            continue;
        };
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            state.next_pkid()
        };
        let publish = publish_packet(topic.as_bytes(), &payload, qos, pkid, false);
        packets.push(Packet::Publish(publish, None));
    }
    if packets.is_empty() {
        return Ok(());
    }
    shared.counters.packets_sent(packets.len() as u64);
    device.write_packets(packets).await
}

/// Checks the packet just read and any others already buffered (while the uplink has room),
/// queues the publishes for the sink, and answers the rest itself.
async fn handle_batch(
    shared: &Shared,
    state: &mut SessionState,
    device: &mut DeviceIo,
    first: (Packet, RawHeader),
) -> io::Result<Flow> {
    let mut replies = Vec::new();
    let mut publishes = 0;
    let mut next = Some(first);
    let mut flow = Flow::Continue;
    let mut handled = 0;
    while let Some((packet, header)) = next.take() {
        handled += 1;
        match check_packet(state, packet, header) {
            Checked::Publish(message, pkid) => {
                publishes += 1;
                if let Some(Some(pkid)) = state.uplink.push(message, pkid) {
                    replies.push(puback(pkid));
                }
            }
            Checked::Reply(packet, refusal) => {
                if let Some(refusal) = refusal {
                    shared.counters.refused(refusal);
                }
                replies.extend(packet);
            }
            Checked::Stop(reason) => {
                if let DisconnectReason::Refused(refusal) = reason {
                    shared.counters.refused(refusal);
                }
                flow = Flow::Stop(reason);
                break;
            }
        }
        // What stays buffered is read when the uplink has room again.
        if handled >= MAX_BATCH || state.uplink.is_full(shared.limits.max_pending_publishes) {
            break;
        }
        match device.buffered_packet() {
            Ok(packet) => next = packet,
            Err(error) => {
                let refusal = error.refusal();
                shared.counters.refused(refusal);
                flow = Flow::Stop(DisconnectReason::Refused(refusal));
            }
        }
    }
    // Publishes accepted before a violation still go in: they were within the rules.
    shared.counters.publishes_received(publishes);
    if !replies.is_empty() {
        shared.counters.packets_sent(replies.len() as u64);
        device.write_packets(replies).await?;
    }
    Ok(flow)
}

/// The verdict on one device packet.
#[expect(
    clippy::large_enum_variant,
    reason = "a verdict lives on the stack for one packet; boxing would allocate for every PINGRESP"
)]
enum Checked {
    /// Hand it to the sink; PUBACK the packet id (QoS 1) once it is taken.
    Publish(DevicePublish, Option<u16>),
    /// Answer it here (PINGRESP, SUBACK, UNSUBACK; nothing for the device's PUBACK of a
    /// server message), and the refusal, if it was one.
    Reply(Option<Packet>, Option<Refusal>),
    /// End the session.
    Stop(DisconnectReason),
}

/// Applies the rules to one packet from the device. `header` carries a PUBLISH's QoS and
/// packet id (rumqttd keeps those fields crate-private).
fn check_packet(state: &mut SessionState, packet: Packet, header: RawHeader) -> Checked {
    match packet {
        Packet::Publish(publish, _) => {
            let qos = (header.first_byte >> 1) & 0b11;
            if qos == 2 {
                return Checked::Stop(DisconnectReason::Refused(Refusal::PublishQos));
            }
            if let Err(refusal) = policy::check_publish_topic(state.device_id, &publish.topic) {
                return Checked::Stop(DisconnectReason::Refused(refusal));
            }
            if !state.bucket.take(Instant::now()) {
                return Checked::Stop(DisconnectReason::Refused(Refusal::PublishRate));
            }
            let Ok(topic) = String::from_utf8(publish.topic.to_vec()) else {
                // The topic rule above accepts UTF-8 only.
                return Checked::Stop(DisconnectReason::Refused(Refusal::PublishTopic));
            };
            let message = DevicePublish {
                topic,
                payload: publish.payload,
            };
            Checked::Publish(message, (qos == 1).then_some(header.publish_pkid))
        }
        // Server messages are not resent (clean sessions): nothing to track.
        Packet::PubAck(..) => Checked::Reply(None, None),
        Packet::Subscribe(mut subscribe, _) => {
            let admitted = state
                .subscriptions
                .admit(state.device_id, &mut subscribe.filters);
            let (return_codes, refusal) = match admitted {
                Ok(()) => {
                    let granted = subscribe
                        .filters
                        .iter()
                        .map(|filter| SubscribeReasonCode::Success(filter.qos))
                        .collect();
                    (granted, None)
                }
                Err(refusal) => (
                    vec![SubscribeReasonCode::Failure; subscribe.filters.len()],
                    Some(refusal),
                ),
            };
            let suback = SubAck {
                pkid: subscribe.pkid,
                return_codes,
            };
            Checked::Reply(Some(Packet::SubAck(suback, None)), refusal)
        }
        Packet::Unsubscribe(unsubscribe, _) => {
            state.subscriptions.remove(&unsubscribe.filters);
            let unsuback = UnsubAck {
                pkid: unsubscribe.pkid,
                reasons: Vec::new(),
            };
            Checked::Reply(Some(Packet::UnsubAck(unsuback, None)), None)
        }
        Packet::PingReq(_) => Checked::Reply(Some(Packet::PingResp(PingResp)), None),
        Packet::Disconnect(..) => Checked::Stop(DisconnectReason::ClientDisconnect),
        // A second CONNECT, QoS 2 flow packets (QoS 2 is not offered), or packets only a
        // server sends.
        _ => Checked::Stop(DisconnectReason::Refused(Refusal::ProtocolError)),
    }
}
