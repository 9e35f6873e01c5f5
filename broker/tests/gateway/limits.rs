//! Per-device limits: packet size and publish rate, refused (disconnected) and counted.

use std::time::Duration;

use crate::common::*;
use broker::{BrokerHooks, DisconnectReason, Refusal};
use rumqttc::QoS;
use tokio::time::timeout;

#[tokio::test]
async fn an_oversize_packet_is_refused_and_counted() {
    let pki = TestPki::new();
    let (mut hooks, mut presence) = hooks_with_presence();
    let mut ingest = tap_ingest(&mut hooks);
    let broker = start_broker(&pki, hooks, |config| {
        config.max_packet_size = 4096;
    })
    .await;
    let device = pki.device();
    let mut options = device_options(&pki, &broker, &device);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = connect(options).await;
    let topic = wire::topic::telemetry(device.id());
    client
        .publish(&topic, QoS::AtLeastOnce, false, vec![0u8; 4000])
        .await
        .unwrap();
    client
        .publish(&topic, QoS::AtLeastOnce, false, vec![0u8; 8000])
        .await
        .unwrap();
    wait_disconnected(&mut eventloop, TIMEOUT).await;
    assert_eq!(broker.stats().refused(Refusal::PacketTooLarge), 1);
    let within = timeout(TIMEOUT, ingest.recv()).await.unwrap().unwrap();
    assert_eq!(within.payload.len(), 4000);
    assert!(timeout(Duration::from_millis(200), ingest.recv())
        .await
        .is_err());
    assert!(presence.recv().await.unwrap().online);
    assert_eq!(
        presence.recv().await.unwrap().reason,
        Some(DisconnectReason::Refused(Refusal::PacketTooLarge))
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_publish_flood_is_refused_and_counted() {
    let pki = TestPki::new();
    let mut hooks = BrokerHooks::admit_all();
    let mut ingest = tap_ingest(&mut hooks);
    let broker = start_broker(&pki, hooks, |config| {
        config.publish_rate = 5.0;
        config.publish_burst = 10;
    })
    .await;
    let device = pki.device();
    let (client, mut eventloop) = connect(device_options(&pki, &broker, &device)).await;
    let topic = wire::topic::telemetry(device.id());
    let flood = tokio::spawn(async move {
        for n in 0..200u32 {
            if client
                .publish(&topic, QoS::AtMostOnce, false, n.to_be_bytes().to_vec())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    wait_disconnected(&mut eventloop, TIMEOUT).await;
    flood.abort();
    assert_eq!(broker.stats().refused(Refusal::PublishRate), 1);
    let mut delivered = 0;
    while timeout(Duration::from_millis(200), ingest.recv())
        .await
        .is_ok()
    {
        delivered += 1;
    }
    // The burst (plus what the rate refilled meanwhile) got in; the rest did not.
    assert!((10..=12).contains(&delivered), "delivered {delivered}");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_silent_device_is_dropped_after_one_and_a_half_keep_alives() {
    let pki = TestPki::new();
    let (hooks, mut presence) = hooks_with_presence();
    let broker = start_broker(&pki, hooks, |_| {}).await;
    let device = pki.device();
    let mut options = device_options(&pki, &broker, &device);
    options.set_keep_alive(Duration::from_secs(1));
    let (_client, eventloop) = connect(options).await;
    // Hold the connection without polling: no PINGREQ is sent.
    assert!(presence.recv().await.unwrap().online);
    let offline = timeout(Duration::from_secs(4), presence.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(offline.reason, Some(DisconnectReason::KeepAliveTimeout));
    drop(eventloop);
    broker.shutdown().await;
}
