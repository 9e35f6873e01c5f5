//! A device touches only its own topics: publish (disconnect), subscribe (SUBACK 0x80)
//! and will (CONNACK 0x05), each counted; nothing refused reaches an in-process
//! subscriber. (rumqttc will not publish to a wildcard topic at all; the gateway's
//! refusal of those is covered by `wire::topic`'s and `policy`'s unit tests.)

use std::time::Duration;

use crate::common::*;
use broker::{BrokerError, BrokerHooks, DisconnectReason, Refusal, Undelivered};
use rumqttc::{ConnectReturnCode, LastWill, QoS, SubscribeReasonCode};
use tokio::time::timeout;
use wire::topic::TopicKind;

#[tokio::test]
async fn device_a_cannot_publish_to_device_bs_topics() {
    let pki = TestPki::new();
    let (mut hooks, mut presence) = hooks_with_presence();
    let mut everything = tap_ingest(&mut hooks);
    let broker = start_broker(&pki, hooks, |_| {}).await;
    let a = pki.device();
    let b = pki.device();

    for topic in [
        wire::topic::telemetry(b.id()),
        wire::topic::ack(a.id()),
        a.topic("up/inventory"),
        wire::topic::telemetry(a.id()).to_uppercase(),
        "elsewhere".to_owned(),
    ] {
        let (client, mut eventloop) = connect(device_options(&pki, &broker, &a)).await;
        client
            .publish(&topic, QoS::AtLeastOnce, false, b"intrusion".to_vec())
            .await
            .unwrap();
        wait_disconnected(&mut eventloop, TIMEOUT).await;
    }
    eventually(&broker, |stats| stats.refused(Refusal::PublishTopic) == 5).await;
    assert!(
        timeout(Duration::from_millis(300), everything.recv())
            .await
            .is_err(),
        "nothing refused reached a subscriber"
    );
    for _ in 0..5 {
        assert!(presence.recv().await.unwrap().online);
        assert_eq!(
            presence.recv().await.unwrap().reason,
            Some(DisconnectReason::Refused(Refusal::PublishTopic))
        );
    }
    assert_eq!(broker.stats().publishes_received, 0);
    broker.shutdown().await;
}

async fn suback_codes(
    client: &rumqttc::AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    filters: &[String],
) -> Vec<SubscribeReasonCode> {
    client
        .subscribe_many(
            filters
                .iter()
                .map(|path| rumqttc::SubscribeFilter::new(path.clone(), QoS::AtLeastOnce)),
        )
        .await
        .unwrap();
    next_suback_codes(eventloop).await
}

#[tokio::test]
async fn device_a_cannot_subscribe_to_device_bs_topics_or_wildcards_above_its_own() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |_| {}).await;
    let a = pki.device();
    let b = pki.device();
    let (client, mut eventloop) = connect(device_options(&pki, &broker, &a)).await;

    let refused = [
        wire::topic::device_subscription(b.id()),
        wire::topic::ack(b.id()),
        "#".to_owned(),
        "fleet/#".to_owned(),
        "fleet/v1/+/down/#".to_owned(),
        "fleet/v1/+/up/#".to_owned(),
        a.topic("up/telemetry"),
        a.topic("#"),
        format!("$share/g/{}", wire::topic::device_subscription(a.id())),
    ];
    for filter in &refused {
        assert_eq!(
            suback_codes(&client, &mut eventloop, std::slice::from_ref(filter)).await,
            vec![SubscribeReasonCode::Failure],
            "{filter}"
        );
    }
    // One refused filter refuses the whole packet.
    let mixed = [wire::topic::device_subscription(a.id()), "#".to_owned()];
    assert_eq!(
        suback_codes(&client, &mut eventloop, &mixed).await,
        vec![SubscribeReasonCode::Failure; 2]
    );
    // The session survives refused subscriptions, and its own filter works.
    assert_eq!(
        suback_codes(
            &client,
            &mut eventloop,
            &[wire::topic::device_subscription(a.id())]
        )
        .await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let stats = broker.stats();
    assert_eq!(
        stats.refused(Refusal::SubscribeTopic),
        refused.len() as u64 + 1
    );
    assert_eq!(stats.sessions_active, 1);

    // B's server messages do not reach A (B has no session); A's do.
    assert!(matches!(
        broker.deliver(b.id(), TopicKind::Ack, &b"for b"[..]),
        Err(BrokerError::Undelivered(Undelivered::Offline))
    ));
    broker
        .deliver(a.id(), TopicKind::Ack, &b"for a"[..])
        .unwrap();
    let publish = next_publish(&mut eventloop).await;
    assert_eq!(&publish.payload[..], b"for a");
    assert_eq!(broker.stats().undelivered(Undelivered::Offline), 1);
    // Only `down` topics are sent to a device.
    assert!(matches!(
        broker.deliver(a.id(), TopicKind::Telemetry, &b"up"[..]),
        Err(BrokerError::InvalidTopic(_))
    ));
    broker.shutdown().await;
}

#[tokio::test]
async fn subscriptions_beyond_the_limit_are_refused() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |config| {
        config.max_subscriptions = 1;
    })
    .await;
    let a = pki.device();
    let (client, mut eventloop) = connect(device_options(&pki, &broker, &a)).await;
    assert_eq!(
        suback_codes(&client, &mut eventloop, &[wire::topic::ack(a.id())]).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(
        suback_codes(&client, &mut eventloop, &[wire::topic::command(a.id())]).await,
        vec![SubscribeReasonCode::Failure]
    );
    assert_eq!(broker.stats().refused(Refusal::SubscriptionLimit), 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn device_a_cannot_set_a_will_outside_its_own_up_topics() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |_| {}).await;
    let a = pki.device();
    let b = pki.device();
    for (topic, qos) in [
        (wire::topic::presence(b.id()), QoS::AtLeastOnce),
        (wire::topic::ack(a.id()), QoS::AtLeastOnce),
        ("fleet/v1/+/up/presence".to_owned(), QoS::AtMostOnce),
        (wire::topic::presence(a.id()), QoS::ExactlyOnce),
    ] {
        let mut options = device_options(&pki, &broker, &a);
        options.set_last_will(LastWill::new(&topic, "x", qos, false));
        assert_eq!(
            connect_code(options).await,
            Some(ConnectReturnCode::NotAuthorized),
            "{topic}"
        );
    }
    assert_eq!(broker.stats().refused(Refusal::WillTopic), 4);
    let mut options = device_options(&pki, &broker, &a);
    options.set_last_will(LastWill::new(
        wire::topic::presence(a.id()),
        "x",
        QoS::AtLeastOnce,
        true,
    ));
    assert_eq!(
        connect_code(options).await,
        Some(ConnectReturnCode::Success)
    );
    broker.shutdown().await;
}
