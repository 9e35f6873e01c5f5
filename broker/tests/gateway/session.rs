//! A device's happy path through the gateway: connect, publish, be seen in-process,
//! receive server messages, presence, will.

use std::time::Duration;

use crate::common::*;
use broker::{BrokerError, BrokerHooks, DisconnectReason, PresenceEvent, Refusal};
use rumqttc::{Event, LastWill, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;

async fn next_presence(rx: &mut mpsc::UnboundedReceiver<PresenceEvent>) -> PresenceEvent {
    timeout(TIMEOUT, rx.recv())
        .await
        .expect("presence event in time")
        .expect("presence channel open")
}

#[tokio::test]
async fn a_device_publishes_under_its_prefix_and_an_in_process_subscriber_sees_it() {
    let pki = TestPki::new();
    let (hooks, mut presence) = hooks_with_presence();
    let broker = start_broker(&pki, hooks, |_| {}).await;
    let mut ingest = subscribe_ingest(&broker).await;
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
        .publish_local(&ack_topic, &b"watermark"[..])
        .await
        .unwrap();
    let publish = next_publish(&mut eventloop).await;
    assert_eq!(publish.topic, ack_topic);
    assert_eq!(&publish.payload[..], b"watermark");
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    broker.shutdown().await;
}

#[tokio::test]
async fn the_will_is_published_when_the_connection_is_lost_and_not_after_disconnect() {
    let pki = TestPki::new();
    let (hooks, mut presence) = hooks_with_presence();
    let broker = start_broker(&pki, hooks, |_| {}).await;
    let mut ingest = subscribe_ingest(&broker).await;
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
