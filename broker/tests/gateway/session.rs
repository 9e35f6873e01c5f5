//! A device's happy path through the gateway: connect, publish, be seen in-process,
//! receive server messages, presence, will.

use std::time::Duration;

use crate::common::*;
use broker::{
    BrokerError, BrokerHooks, DevicePublish, DevicePublishFuture, DevicePublishSink,
    DisconnectReason, PresenceEvent, Refusal, SinkClosed, Undelivered,
};
use rumqttc::{Event, LastWill, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;
use wire::topic::TopicKind;

async fn next_presence(rx: &mut mpsc::UnboundedReceiver<PresenceEvent>) -> PresenceEvent {
    timeout(TIMEOUT, rx.recv())
        .await
        .expect("presence event in time")
        .expect("presence channel open")
}

#[tokio::test]
async fn a_device_publishes_under_its_prefix_and_an_in_process_subscriber_sees_it() {
    let pki = TestPki::new();
    let (mut hooks, mut presence) = hooks_with_presence();
    let mut ingest = tap_ingest(&mut hooks);
    let broker = start_broker(&pki, hooks, |_| {}).await;
    let device = pki.device();

    let (client, eventloop) = connect(device_options(&pki, &broker, &device)).await;
    let online = next_presence(&mut presence).await;
    assert_eq!(online.identity, device.identity);
    assert!(online.online);
    assert_eq!(online.reason, None);
    assert!(online.remote_addr.ip().is_loopback());

    let driver = drive(eventloop);
    let topic = wire::topic::telemetry(device.id());
    client
        .publish(&topic, QoS::AtLeastOnce, false, b"batch-1".to_vec())
        .await
        .unwrap();
    let message = timeout(TIMEOUT, ingest.recv()).await.unwrap().unwrap();
    assert_eq!(message.topic, topic);
    assert_eq!(&message.payload[..], b"batch-1");

    client.disconnect().await.unwrap();
    let events = timeout(TIMEOUT, driver).await.unwrap().unwrap();
    assert!(
        events
            .iter()
            .any(|event| matches!(event, Event::Incoming(Packet::PubAck(_)))),
        "the QoS 1 publish was acknowledged: {events:?}"
    );
    let offline = next_presence(&mut presence).await;
    assert_eq!(offline.identity, device.identity);
    assert!(!offline.online);
    assert_eq!(offline.session, online.session);
    assert_eq!(offline.reason, Some(DisconnectReason::ClientDisconnect));

    let stats = broker.stats();
    assert_eq!(stats.sessions_started, 1);
    assert_eq!(stats.publishes_received, 1);
    assert_eq!(stats.refusals().map(|(_, n)| n).sum::<u64>(), 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn an_in_process_subscription_needs_a_well_formed_filter() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |_| {}).await;
    for good in ["#", "fleet/v1/+/up/#", "a", "a/+/b"] {
        assert!(broker.subscribe_local(good).await.is_ok(), "{good}");
    }
    for bad in ["", "a/#/b", "a+", "a/b#", "a\0", "a//b"] {
        assert!(
            matches!(
                broker.subscribe_local(bad).await,
                Err(BrokerError::InvalidFilter(filter)) if filter == bad
            ),
            "{bad:?}"
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_server_message_reaches_the_subscribed_device_at_qos_1() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |_| {}).await;
    let device = pki.device();
    let (client, mut eventloop) = connect(device_options(&pki, &broker, &device)).await;
    client
        .subscribe(
            wire::topic::device_subscription(device.id()),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    assert_eq!(
        next_suback_codes(&mut eventloop).await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    let ack_topic = wire::topic::ack(device.id());
    broker
        .deliver(device.id(), TopicKind::Ack, &b"watermark"[..])
        .unwrap();
    let publish = next_publish(&mut eventloop).await;
    assert_eq!(publish.topic, ack_topic);
    assert_eq!(&publish.payload[..], b"watermark");
    assert_eq!(publish.qos, QoS::AtLeastOnce);

    // A command published into the engine is routed to the session too.
    let command_topic = wire::topic::command(device.id());
    broker
        .publish_local(&command_topic, &b"reboot"[..])
        .await
        .unwrap();
    let publish = next_publish(&mut eventloop).await;
    assert_eq!(publish.topic, command_topic);
    assert_eq!(&publish.payload[..], b"reboot");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_server_message_without_a_covering_subscription_is_counted_not_sent() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |_| {}).await;
    let device = pki.device();
    let (client, mut eventloop) = connect(device_options(&pki, &broker, &device)).await;
    client
        .subscribe(wire::topic::command(device.id()), QoS::AtMostOnce)
        .await
        .unwrap();
    assert_eq!(
        next_suback_codes(&mut eventloop).await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    broker
        .deliver(device.id(), TopicKind::Ack, &b"unwanted"[..])
        .unwrap();
    broker
        .deliver(device.id(), TopicKind::Command, &b"wanted"[..])
        .unwrap();
    let publish = next_publish(&mut eventloop).await;
    assert_eq!(&publish.payload[..], b"wanted");
    assert_eq!(publish.qos, QoS::AtMostOnce, "the QoS granted");
    eventually(&broker, |stats| {
        stats.undelivered(Undelivered::NotSubscribed) == 1
    })
    .await;
    broker.shutdown().await;
}

/// A sink that takes nothing until the test opens it, then passes messages on.
struct GatedSink {
    open: tokio::sync::watch::Receiver<bool>,
    taken: mpsc::UnboundedSender<DevicePublish>,
}

impl DevicePublishSink for GatedSink {
    fn publish(&self, message: DevicePublish) -> DevicePublishFuture {
        let mut open = self.open.clone();
        let taken = self.taken.clone();
        Box::pin(async move {
            open.wait_for(|open| *open).await.map_err(|_| SinkClosed)?;
            taken.send(message).map_err(|_| SinkClosed)
        })
    }
}

/// Installs a [`GatedSink`] in `hooks`: the sender opens it, the receiver gets what it took.
fn gate_publishes(
    hooks: &mut BrokerHooks,
) -> (
    tokio::sync::watch::Sender<bool>,
    mpsc::UnboundedReceiver<DevicePublish>,
) {
    let (gate, open) = tokio::sync::watch::channel(false);
    let (taken_tx, taken) = mpsc::unbounded_channel();
    hooks.device_publishes = Some(std::sync::Arc::new(GatedSink {
        open,
        taken: taken_tx,
    }));
    (gate, taken)
}

/// Publishes payloads 0..10 at QoS 1 on the device's telemetry topic.
async fn publish_ten(client: &rumqttc::AsyncClient, device: wire::DeviceId) {
    let topic = wire::topic::telemetry(device);
    for n in 0..10u8 {
        client
            .publish(&topic, QoS::AtLeastOnce, false, vec![n])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_blocked_sink_delays_pubacks_not_pings_and_then_takes_all_in_order() {
    let pki = TestPki::new();
    let mut hooks = BrokerHooks::admit_all();
    let (gate, mut taken) = gate_publishes(&mut hooks);
    let broker = start_broker(&pki, hooks, |config| {
        config.max_pending_publishes = 16;
    })
    .await;
    let device = pki.device();
    let mut options = device_options(&pki, &broker, &device);
    options.set_keep_alive(Duration::from_secs(1));
    options.set_inflight(20);
    let (client, mut eventloop) = connect(options).await;
    publish_ten(&client, device.id()).await;
    // Past three keep-alives with the sink shut: pings answered, nothing acknowledged.
    let mut pings = 0;
    let held = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < held {
        match timeout(Duration::from_millis(200), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PingResp))) => pings += 1,
            Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => panic!("early PUBACK {ack:?}"),
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(error)) => panic!("the session ended: {error}"),
        }
    }
    assert!(pings >= 2, "{pings} PINGRESPs");
    assert!(taken.try_recv().is_err());

    gate.send(true).unwrap();
    let mut pubacks = 0;
    while pubacks < 10 {
        let event = timeout(TIMEOUT, eventloop.poll()).await.unwrap().unwrap();
        if let Event::Incoming(Packet::PubAck(_)) = event {
            pubacks += 1;
        }
    }
    let payloads: Vec<u8> = (0..10)
        .map(|_| taken.try_recv().unwrap().payload[0])
        .collect();
    assert_eq!(
        payloads,
        (0..10).collect::<Vec<u8>>(),
        "in order, each once"
    );
    let stats = broker.stats();
    assert_eq!(stats.sessions_started, 1, "no reconnect");
    assert_eq!(stats.refusals().map(|(_, n)| n).sum::<u64>(), 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn past_the_pending_limit_the_socket_is_not_read_and_nothing_is_lost() {
    let pki = TestPki::new();
    let mut hooks = BrokerHooks::admit_all();
    let (gate, mut taken) = gate_publishes(&mut hooks);
    let broker = start_broker(&pki, hooks, |config| {
        config.max_pending_publishes = 2;
    })
    .await;
    let device = pki.device();
    let mut options = device_options(&pki, &broker, &device);
    options.set_inflight(20);
    let (client, eventloop) = connect(options).await;
    let driver = drive(eventloop);
    publish_ten(&client, device.id()).await;
    eventually(&broker, |stats| stats.publishes_received == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(broker.stats().publishes_received, 2, "reading stopped");

    gate.send(true).unwrap();
    let mut payloads = Vec::new();
    while payloads.len() < 10 {
        let message = timeout(TIMEOUT, taken.recv()).await.unwrap().unwrap();
        payloads.push(message.payload[0]);
    }
    assert_eq!(payloads, (0..10).collect::<Vec<u8>>());
    client.disconnect().await.unwrap();
    let events = timeout(TIMEOUT, driver).await.unwrap().unwrap();
    let pubacks = events
        .iter()
        .filter(|event| matches!(event, Event::Incoming(Packet::PubAck(_))))
        .count();
    assert_eq!(pubacks, 10);
    assert_eq!(broker.stats().sessions_started, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_closed_sink_ends_the_session_without_pubacks() {
    let pki = TestPki::new();
    let (mut hooks, mut presence) = hooks_with_presence();
    let (gate, _taken) = gate_publishes(&mut hooks);
    let broker = start_broker(&pki, hooks, |_| {}).await;
    let device = pki.device();
    let (client, eventloop) = connect(device_options(&pki, &broker, &device)).await;
    let driver = drive(eventloop);
    client
        .publish(
            wire::topic::telemetry(device.id()),
            QoS::AtLeastOnce,
            false,
            b"x".to_vec(),
        )
        .await
        .unwrap();
    assert!(next_presence(&mut presence).await.online);
    drop(gate);
    assert_eq!(
        next_presence(&mut presence).await.reason,
        Some(DisconnectReason::IngestClosed)
    );
    let events = timeout(TIMEOUT, driver).await.unwrap().unwrap();
    assert!(
        !events
            .iter()
            .any(|event| matches!(event, Event::Incoming(Packet::PubAck(_)))),
        "{events:?}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn the_will_is_published_when_the_connection_is_lost_and_not_after_disconnect() {
    let pki = TestPki::new();
    let (mut hooks, mut presence) = hooks_with_presence();
    let mut ingest = tap_ingest(&mut hooks);
    let broker = start_broker(&pki, hooks, |_| {}).await;
    let device = pki.device();
    let presence_topic = wire::topic::presence(device.id());

    // A clean DISCONNECT: no will.
    let mut options = device_options(&pki, &broker, &device);
    options.set_last_will(LastWill::new(
        &presence_topic,
        "gone",
        QoS::AtLeastOnce,
        true,
    ));
    let (client, eventloop) = connect(options.clone()).await;
    let driver = drive(eventloop);
    client.disconnect().await.unwrap();
    timeout(TIMEOUT, driver).await.unwrap().unwrap();
    assert!(next_presence(&mut presence).await.online);
    assert_eq!(
        next_presence(&mut presence).await.reason,
        Some(DisconnectReason::ClientDisconnect)
    );

    // The connection drops: the will goes in.
    let (_client, eventloop) = connect(options).await;
    drop(eventloop);
    assert!(next_presence(&mut presence).await.online);
    assert_eq!(
        next_presence(&mut presence).await.reason,
        Some(DisconnectReason::ConnectionLost)
    );
    let will = timeout(TIMEOUT, ingest.recv()).await.unwrap().unwrap();
    assert_eq!(will.topic, presence_topic);
    assert_eq!(&will.payload[..], b"gone");
    assert!(
        timeout(Duration::from_millis(200), ingest.recv())
            .await
            .is_err(),
        "only one will"
    );
    broker.shutdown().await;
}

/// The bytes of `packet`, as MQTT 3.1.1.
fn encode(packet: rumqttd::protocol::Packet) -> Vec<u8> {
    use rumqttd::protocol::Protocol;
    let mut buffer = bytes::BytesMut::new();
    rumqttd::protocol::v4::V4
        .write(packet, &mut buffer)
        .unwrap();
    buffer.to_vec()
}

#[tokio::test]
async fn a_protocol_error_ends_the_session_unregistered_with_one_offline_event() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = TestPki::new();
    let (hooks, mut presence) = hooks_with_presence();
    let broker = start_broker(&pki, hooks, |_| {}).await;
    let device = pki.device();
    let connect = encode(rumqttd::protocol::Packet::Connect(
        rumqttd::protocol::Connect {
            keep_alive: 30,
            client_id: device.client_id(),
            clean_session: true,
        },
        None,
        None,
        None,
        None,
    ));
    let mut stream = raw_tls(&pki, &broker, &device).await;
    stream.write_all(&connect).await.unwrap();
    let mut connack = [0u8; 4];
    timeout(TIMEOUT, stream.read_exact(&mut connack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK 0x00");
    // A second CONNECT is a protocol violation: the gateway closes the connection.
    stream.write_all(&connect).await.unwrap();
    let mut rest = Vec::new();
    let _ = timeout(TIMEOUT, stream.read_to_end(&mut rest))
        .await
        .unwrap();

    eventually(&broker, |stats| {
        stats.refused(Refusal::ProtocolError) == 1 && stats.sessions_active == 0
    })
    .await;
    let events = presence_so_far(&mut presence);
    assert_eq!(events.len(), 2, "one online, one offline: {events:?}");
    assert!(events[0].online);
    assert!(!events[1].online);
    assert_eq!(events[1].session, events[0].session);
    assert_eq!(
        events[1].reason,
        Some(DisconnectReason::Refused(Refusal::ProtocolError))
    );
    assert!(!broker.disconnect(device.id()), "no registry entry left");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_second_connection_of_the_same_device_replaces_the_first() {
    let pki = TestPki::new();
    let (hooks, mut presence) = hooks_with_presence();
    let broker = start_broker(&pki, hooks, |_| {}).await;
    let device = pki.device();
    let (_first, mut first_loop) = connect(device_options(&pki, &broker, &device)).await;
    let first_online = next_presence(&mut presence).await;
    let (_second, second_loop) = connect(device_options(&pki, &broker, &device)).await;
    wait_disconnected(&mut first_loop, TIMEOUT).await;

    let mut events = [
        next_presence(&mut presence).await,
        next_presence(&mut presence).await,
    ];
    events.sort_by_key(|event| event.online);
    assert_eq!(events[0].session, first_online.session);
    assert_eq!(events[0].reason, Some(DisconnectReason::Replaced));
    assert!(events[1].online);
    assert_ne!(events[1].session, first_online.session);

    // The second session still works.
    let driver = drive(second_loop);
    assert_eq!(broker.stats().sessions_active, 1);
    driver.abort();
    broker.shutdown().await;
}
