//! Two ingest instances in external mode share one Mosquitto, configured as documented for
//! production (docs in ingest/README.md): TLS with client certificates from the fleet PKI,
//! `use_identity_as_username`, a pattern ACL per device, and the `fleetd-ingest` identity allowed
//! to `$share`. Simulated devices publish records, some twice: each record is written once,
//! both instances did work, every device gets its final ack watermark.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use certs::{DeviceIdentity, IssuingCa, Pki, PkiParams, Validity};
use ingest::{start, ExternalBrokerConfig, ExternalSource, Metrics};
use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use store::{DeviceId, TenantId};
use wire::Batch;

use fleet_tests::mosquitto::start_mosquitto;

fn client_tls(root_pem: &str, chain_pem: &str, key_pem: &str) -> Transport {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap())
        .unwrap();
    let chain: Vec<_> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = certs::tls::client_builder(roots)
        .unwrap()
        .with_client_auth_cert(chain, key)
        .unwrap();
    Transport::Tls(TlsConfiguration::Rustls(Arc::new(config)))
}

/// A device certificate chain and key, from a CSR made with the device's own key.
fn device_credentials(ca: &IssuingCa, tenant: TenantId, device: DeviceId) -> (String, String) {
    let identity = DeviceIdentity {
        tenant_id: tenant,
        device_id: device,
    };
    let validity = Validity::from_now(Duration::from_secs(86_400)).unwrap();
    let device = fleet_tests::device::issue(ca, identity, validity);
    (device.chain_pem, device.key.serialize_pem())
}

/// A device's MQTT client: TLS with its own certificate, not yet connected.
fn device_client(
    port: u16,
    ca: &IssuingCa,
    tenant: TenantId,
    device: DeviceId,
) -> (AsyncClient, EventLoop) {
    let (chain, key) = device_credentials(ca, tenant, device);
    let mut options = MqttOptions::new(device.to_string(), "localhost", port);
    options
        .set_transport(client_tls(&ca.root_pem(), &chain, &key))
        .set_keep_alive(Duration::from_secs(10));
    AsyncClient::new(options, 256)
}

/// Polls `eventloop` (connecting it) until the broker grants the one subscription just asked
/// for, at QoS 1; panics on a refusal, a connection error or after 10 s.
async fn wait_for_suback(eventloop: &mut EventLoop) {
    let suback = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(suback))) => return suback,
                Ok(_) => {}
                Err(e) => panic!("connection failed before SUBACK: {e}"),
            }
        }
    })
    .await
    .expect("SUBACK within 10 s");
    assert_eq!(
        suback.return_codes,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        "subscription granted"
    );
}

/// Waits until every ingest instance's `$share` subscription is in place. Their SUBACKs reach
/// only ingest's own event loop, so the test watches the consequence instead: a device the
/// database does not know publishes until every instance has received (and refused as
/// `unknown_device`) one of its messages; the broker delivers to a shared subscriber only once
/// it has granted the subscription, and spreads a group's messages over its members. The probes
/// write nothing and count as neither committed nor duplicate.
async fn wait_until_every_instance_is_subscribed(
    port: u16,
    ca: &IssuingCa,
    tenant: TenantId,
    instances: &[Metrics],
) {
    let probe = DeviceId::new_random();
    let (client, mut eventloop) = device_client(port, ca, tenant, probe);
    let driver = tokio::spawn(async move {
        loop {
            // Ends (and the wait below fails) if the probe loses its connection.
            if let Err(e) = eventloop.poll().await {
                return e;
            }
        }
    });
    let payload = wire::encode_batch(&Batch::new(vec![telemetry(1)]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while instances
        .iter()
        .any(|m| m.rejects_total("unknown_device") == 0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every instance received a probe: {:?}",
            instances
                .iter()
                .map(|m| m.rejects_total("unknown_device"))
                .collect::<Vec<_>>()
        );
        assert!(!driver.is_finished(), "the probe's connection is up");
        client
            .publish(
                wire::topic::telemetry(probe),
                QoS::AtLeastOnce,
                false,
                payload.clone(),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver.abort();
}

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
    let (client, mut eventloop) = device_client(port, &ca, tenant, device);
    client
        .subscribe(wire::topic::device_subscription(device), QoS::AtLeastOnce)
        .await
        .unwrap();
    wait_for_suback(&mut eventloop).await;
    let publisher = client.clone();
    tokio::spawn(async move {
        for chunk in 0..per_device / 10 {
            let records: Vec<_> = (1..=10).map(|i| telemetry(chunk * 10 + i)).collect();
            let payload = wire::encode_batch(&Batch::new(records));
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
    wait_until_every_instance_is_subscribed(broker.port, &ca, tenant, &metrics).await;

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
