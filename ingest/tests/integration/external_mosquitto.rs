//! Two ingest instances in external mode share one Mosquitto, configured as documented for
//! production (docs in ingest/README.md): TLS with client certificates from the fleet PKI,
//! `use_identity_as_username`, a pattern ACL per device, and the `fleetd-ingest` identity allowed
//! to `$share`. Simulated devices publish records, some twice: each record is written once,
//! both instances did work, every device gets its final ack watermark.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use certs::{IssuingCa, Pki, PkiParams};
use fleet_tests::mosquitto::start_mosquitto;
use fleet_tests::mqtt::{device_client, wait_for_suback, wait_until_every_instance_is_subscribed};
use fleet_tests::records::telemetry_batch;
use ingest::{start, ExternalBrokerConfig, ExternalSource, Metrics};
use rumqttc::{Event, Packet, QoS};
use store::{DeviceId, TenantId};

/// A simulated device: subscribes to its acks, publishes its batches QoS 1 once the
/// subscription is granted, and records the highest ack watermark.
async fn run_device(
    port: u16,
    ca: Arc<IssuingCa>,
    tenant: TenantId,
    device: DeviceId,
    per_device: u64,
    acks: Arc<Mutex<HashMap<DeviceId, u64>>>,
) {
    let (client, mut eventloop) = device_client(&ca, tenant, device, port);
    client
        .subscribe(wire::topic::device_subscription(device), QoS::AtLeastOnce)
        .await
        .unwrap();
    wait_for_suback(&mut eventloop, Duration::from_secs(10)).await;
    let publisher = client.clone();
    tokio::spawn(async move {
        for chunk in 0..per_device / 10 {
            let payload = telemetry_batch(chunk * 10 + 1..=chunk * 10 + 10);
            let times = if chunk % 3 == 0 { 2 } else { 1 };
            for _ in 0..times {
                publisher
                    .publish(
                        wire::topic::telemetry(device),
                        QoS::AtLeastOnce,
                        false,
                        payload.clone(),
                    )
                    .await
                    .unwrap();
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while tokio::time::Instant::now() < deadline {
        let event = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
        match event {
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                let ack = wire::decode_ack(&publish.payload).unwrap();
                let mut acks = acks.lock().unwrap();
                let best = acks.entry(device).or_default();
                *best = (*best).max(ack.watermark);
                if *best == per_device {
                    return;
                }
            }
            Ok(Err(e)) => {
                eprintln!("device {device}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingest_instances_share_one_mosquitto_and_write_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &PkiParams::default()).unwrap();
    let ca = Arc::new(pki.into_issuing_ca());
    let broker = start_mosquitto(dir.path(), &ca).await;

    let (_test_db, db) = open().await;
    let (tenant, devices) = fleet_tests::tenancy::tenant_with_devices(&db.app, "acme", 10).await;
    let service = ca.issue_service_client_cert("fleetd-ingest").unwrap();
    let mut instances = Vec::new();
    for n in 0..2 {
        let config = ExternalBrokerConfig::new(
            "localhost",
            broker.port,
            format!("fleetd-ingest-{n}"),
            ca.root_pem(),
            service.chain_pem(),
            service.key().to_pkcs8_pem().to_string(),
        );
        let source = ExternalSource::new(&config).unwrap();
        let metrics = Metrics::default();
        let (sender, handle) = start(
            test_config(),
            db.app.clone(),
            source.ack_sink(),
            metrics.clone(),
        )
        .unwrap();
        let external = source.run(sender);
        instances.push((metrics, handle, external));
    }
    // Both instances subscribed before devices publish, or "each did work" is luck.
    let metrics: Vec<Metrics> = instances.iter().map(|(m, _, _)| m.clone()).collect();
    wait_until_every_instance_is_subscribed(
        &ca,
        tenant,
        broker.port,
        Duration::from_secs(20),
        || {
            std::future::ready(
                metrics
                    .iter()
                    .map(|m| m.rejects_total("unknown_device"))
                    .collect(),
            )
        },
    )
    .await;

    const PER_DEVICE: u64 = 200;
    let acks = Arc::new(Mutex::new(HashMap::new()));
    let runs: Vec<_> = devices
        .iter()
        .map(|device| {
            tokio::spawn(run_device(
                broker.port,
                Arc::clone(&ca),
                tenant,
                *device,
                PER_DEVICE,
                Arc::clone(&acks),
            ))
        })
        .collect();
    for run in runs {
        run.await.unwrap();
    }

    let acks = acks.lock().unwrap().clone();
    for device in &devices {
        assert_eq!(
            acks.get(device),
            Some(&PER_DEVICE),
            "device {device} final ack"
        );
        assert_eq!(
            stored_seqs(&db, tenant, *device).await,
            (1..=PER_DEVICE as i64).collect::<Vec<_>>()
        );
    }
    let total: u64 = instances
        .iter()
        .map(|(m, _, _)| m.records_committed_total())
        .sum();
    assert_eq!(total, devices.len() as u64 * PER_DEVICE);
    for (n, (metrics, _, _)) in instances.iter().enumerate() {
        assert!(
            metrics.records_committed_total() + metrics.records_duplicate_total() > 0,
            "instance {n} did no work"
        );
    }
    for (_, handle, external) in instances {
        external.shutdown().await;
        handle.shutdown().await;
    }
}
