//! The session: the loop that reads the device and forwards the engine, the rules
//! and limits each device packet passes, and the teardown.

use std::io;

use certs::DeviceIdentity;
use rumqttd::local::LinkRx;
use rumqttd::protocol::{LastWill, Packet, PingResp, SubAck, SubscribeReasonCode};
use rumqttd::Notification;
use tokio::time::{sleep_until, Instant};
use tracing::debug;
use wire::DeviceId;

use super::admission::Admitted;
use super::codec::{DeviceIo, ReadError};
use super::Shared;
use crate::engine::{disconnect_packet, publish_packet, SharedLinkTx};
use crate::hooks::DisconnectReason;
use crate::policy::{self, Subscriptions, TokenBucket};
use crate::stats::Refusal;

/// Packets read from the device in one go before they are handed to the engine.
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
        link_tx,
        mut link_rx,
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
    };
    let idle_limit = keep_alive.mul_f32(1.5);
    let mut deadline = Instant::now() + idle_limit;
    let mut shutdown = shared.shutdown.clone();

    let reason = loop {
        if *shutdown.borrow() {
            break DisconnectReason::Shutdown;
        }
        tokio::select! {
            biased;
            () = control.closed() => {
                break control.reason().unwrap_or(DisconnectReason::Revoked);
            }
            _ = shutdown.changed() => break DisconnectReason::Shutdown,
            () = sleep_until(deadline) => break DisconnectReason::KeepAliveTimeout,
            read = device.read_packet() => {
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
                match handle_batch(shared, &mut state, &mut device, &link_tx, first).await {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Stop(reason)) => break reason,
                    Err(_io) => break DisconnectReason::ConnectionLost,
                }
            }
            notification = link_rx.next() => {
                match forward_to_device(shared, &mut device, &link_rx, notification).await {
                    Ok(Flow::Continue) => {}
                    // The router dropped the link: a newer session took the client id
                    // (then the registry already said so), or the engine stopped.
                    Ok(Flow::Stop(reason)) => {
                        break control.reason().unwrap_or(reason);
                    }
                    Err(_io) => break DisconnectReason::ConnectionLost,
                }
            }
        }
    };

    registration.ended(reason);
    end_session(shared, &link_tx, will, reason).await;
    device.close().await;
    // `registration` drops here: unregistered, reported offline, no longer counted.
}

/// Tells the engine the session is over, publishing the will first when MQTT asks for
/// it. Nothing is sent when the engine already dropped the link: its connection id
/// may belong to another session by now.
async fn end_session(
    shared: &Shared,
    link_tx: &SharedLinkTx,
    will: Option<LastWill>,
    reason: DisconnectReason,
) {
    if matches!(
        reason,
        DisconnectReason::EngineClosed | DisconnectReason::Replaced
    ) {
        return;
    }
    let mut packets = Vec::with_capacity(2);
    if let Some(will) = will.filter(|_| reason.publishes_will()) {
        let pkid = 1;
        let publish = publish_packet(&will.topic, &will.message, will.qos, pkid, will.retain);
        packets.push(Packet::Publish(publish, None));
    }
    packets.push(disconnect_packet());
    let _ = shared.engine.send(link_tx, packets).await;
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
}

/// Checks the packet just read and any others already buffered, hands the allowed
/// ones to the engine as one batch, and answers PINGREQ and refused SUBSCRIBEs itself.
async fn handle_batch(
    shared: &Shared,
    state: &mut SessionState,
    device: &mut DeviceIo,
    link_tx: &SharedLinkTx,
    first: (Packet, u8),
) -> io::Result<Flow> {
    let mut upstream = Vec::new();
    let mut replies = Vec::new();
    let mut publishes = 0;
    let mut next = Some(first);
    let mut flow = Flow::Continue;
    while let Some((packet, header)) = next.take() {
        match check_packet(state, packet, header) {
            Checked::Forward(packet) => {
                publishes += u64::from(matches!(packet, Packet::Publish(..)));
                upstream.push(packet);
            }
            Checked::Reply(packet, refusal) => {
                if let Some(refusal) = refusal {
                    shared.counters.refused(refusal);
                }
                replies.push(packet);
            }
            Checked::Stop(reason) => {
                if let DisconnectReason::Refused(refusal) = reason {
                    shared.counters.refused(refusal);
                }
                flow = Flow::Stop(reason);
                break;
            }
        }
        if upstream.len() + replies.len() >= MAX_BATCH {
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
    // Packets accepted before a violation still go in: they were within the rules.
    shared.counters.publishes_received(publishes);
    if shared.engine.send(link_tx, upstream).await.is_err() {
        return Ok(Flow::Stop(DisconnectReason::EngineClosed));
    }
    if !replies.is_empty() {
        shared.counters.packets_sent(replies.len() as u64);
        device.write_packets(replies).await?;
    }
    Ok(flow)
}

/// The verdict on one device packet.
enum Checked {
    /// Hand it to the engine.
    Forward(Packet),
    /// Answer it here (PINGRESP, or a refusing SUBACK and its reason).
    Reply(Packet, Option<Refusal>),
    /// End the session.
    Stop(DisconnectReason),
}

/// Applies the rules to one packet from the device. `header` is the packet's first
/// byte, which carries a PUBLISH's QoS (rumqttd keeps that field crate-private).
fn check_packet(state: &mut SessionState, packet: Packet, header: u8) -> Checked {
    match packet {
        Packet::Publish(publish, _) => {
            if (header >> 1) & 0b11 == 2 {
                return Checked::Stop(DisconnectReason::Refused(Refusal::PublishQos));
            }
            if let Err(refusal) = policy::check_publish_topic(state.device_id, &publish.topic) {
                return Checked::Stop(DisconnectReason::Refused(refusal));
            }
            if !state.bucket.take(Instant::now()) {
                return Checked::Stop(DisconnectReason::Refused(Refusal::PublishRate));
            }
            Checked::Forward(Packet::Publish(publish, None))
        }
        Packet::PubAck(puback, _) => Checked::Forward(Packet::PubAck(puback, None)),
        Packet::Subscribe(mut subscribe, _) => {
            match state
                .subscriptions
                .admit(state.device_id, &mut subscribe.filters)
            {
                Ok(()) => Checked::Forward(Packet::Subscribe(subscribe, None)),
                Err(refusal) => {
                    let suback = SubAck {
                        pkid: subscribe.pkid,
                        return_codes: vec![SubscribeReasonCode::Failure; subscribe.filters.len()],
                    };
                    Checked::Reply(Packet::SubAck(suback, None), Some(refusal))
                }
            }
        }
        Packet::Unsubscribe(unsubscribe, _) => {
            state.subscriptions.remove(&unsubscribe.filters);
            Checked::Forward(Packet::Unsubscribe(unsubscribe, None))
        }
        Packet::PingReq(_) => Checked::Reply(Packet::PingResp(PingResp), None),
        Packet::Disconnect(..) => Checked::Stop(DisconnectReason::ClientDisconnect),
        // A second CONNECT, QoS 2 flow packets (QoS 2 is not offered), or packets only a
        // server sends.
        _ => Checked::Stop(DisconnectReason::Refused(Refusal::ProtocolError)),
    }
}

/// Writes what the engine sends to the device, answering its flow control.
async fn forward_to_device(
    shared: &Shared,
    device: &mut DeviceIo,
    link_rx: &LinkRx,
    notification: Result<Option<Notification>, rumqttd::local::LinkError>,
) -> io::Result<Flow> {
    let notification = match notification {
        Ok(Some(notification)) => notification,
        Ok(None) => return Ok(Flow::Continue),
        Err(_) => return Ok(Flow::Stop(DisconnectReason::EngineClosed)),
    };
    match notification {
        Notification::Unschedule => {
            if link_rx.wake().await.is_err() {
                return Ok(Flow::Stop(DisconnectReason::EngineClosed));
            }
            Ok(Flow::Continue)
        }
        // The router closed this link (for a publish it refused, or a newer session
        // with the same client id).
        Notification::Disconnect(..) => Ok(Flow::Stop(DisconnectReason::EngineClosed)),
        other => {
            let Some(packet) = Option::<Packet>::from(other) else {
                return Ok(Flow::Continue);
            };
            shared.counters.packets_sent(1);
            device.write_packets([packet]).await?;
            Ok(Flow::Continue)
        }
    }
}
