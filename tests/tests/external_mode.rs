//! Scale-out: two fleetd instances in ingest-only mode share one external Mosquitto (configured
//! as ingest/README.md documents for production) through an MQTT v5 shared subscription. Every
//! record is written exactly once, both instances do work, every device gets its final ack.

use std::sync::Arc;
use std::time::Duration;

use certs::{IssuingCa, Pki, PkiParams};
use fleet_tests::mosquitto::start_mosquitto;
use fleet_tests::mqtt::DeviceCredentials;
use fleet_tests::mqtt::{connect_subscribed, wait_until_every_instance_is_subscribed};
use fleet_tests::records::telemetry_batch;
use fleet_tests::TestDb;
use rumqttc::{Event, Packet, QoS};
use rustls::pki_types::pem::PemObject;
use store::TenantId;
use wire::DeviceId;

const DEVICES: usize = 20;
const MESSAGES: u64 = 10;
const PER_MESSAGE: u64 = 20;
const TIMEOUT: Duration = Duration::from_secs(60);

fn ingest_only(
    db: &TestDb,
    pki_dir: &std::path::Path,
    data_dir: &tempfile::TempDir,
    mqtt_port: u16,
    name: &str,
) -> fleetd::Config {
    let mut config =
        fleetd::Config::on_ephemeral_loopback_ports(data_dir.path(), db.url().parse().unwrap());
    config.pki.dir = Some(pki_dir.to_path_buf());
    config.external_broker.url = Some(format!("mqtts://localhost:{mqtt_port}").parse().unwrap());
    config.external_broker.client_id = Some(name.to_owned());
    config
}

/// Runs one device against Mosquitto: subscribes to its acks, publishes its records (every third
/// message twice) once the subscription is granted, and returns the final ack watermark.
async fn run_device(ca: Arc<IssuingCa>, tenant: TenantId, device: DeviceId, port: u16) -> u64 {
    let options =
        DeviceCredentials::issued(&ca, tenant, device).options(ca.root_der(), "localhost", port);
    let (client, mut events) =
        connect_subscribed(options, wire::topic::ack(device), Duration::from_secs(10)).await;
    let topic = wire::topic::telemetry(device);
    for message in 0..MESSAGES {
        let first = message * PER_MESSAGE + 1;
        let payload = telemetry_batch(first..first + PER_MESSAGE);
        client
            .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
        if message % 3 == 0 {
            client
                .publish(&topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    }
    let last = MESSAGES * PER_MESSAGE;
    tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Event::Incoming(Packet::Publish(publish)) =
                events.poll().await.expect("device stays connected")
            {
                let watermark = wire::decode_ack(&publish.payload).unwrap().watermark;
                if watermark >= last {
                    return watermark;
                }
            }
        }
    })
    .await
    .expect("final ack in time")
}

/// `fleet_ingest_records_committed_total` from an instance's metrics listener.
async fn records_committed(addr: std::net::SocketAddr) -> u64 {
    fleet_tests::metrics::counter(addr, "fleet_ingest_records_committed_total")
        .await
        .expect("a committed counter")
}

#[tokio::test]
async fn two_ingest_only_fleetd_instances_share_one_mosquitto_and_write_each_record_once() {
    let db = TestDb::new().await;
    let pki_dir = tempfile::tempdir().unwrap();
    Pki::generate(&pki_dir.path().join("pki"), &PkiParams::default()).unwrap();
    let pki_path = pki_dir.path().join("pki");
    let ca = Arc::new(IssuingCa::load(&pki_path).unwrap());
    let mosquitto_dir = tempfile::tempdir().unwrap();
    let mosquitto = start_mosquitto(mosquitto_dir.path(), &ca).await;

    let (dir_a, dir_b) = (fleet_tests::data_dir(), fleet_tests::data_dir());
    let a = fleetd::start(ingest_only(
        &db,
        &pki_path,
        &dir_a,
        mosquitto.port,
        "fleetd-a",
    ))
    .await
    .unwrap();
    let b = fleetd::start(ingest_only(
        &db,
        &pki_path,
        &dir_b,
        mosquitto.port,
        "fleetd-b",
    ))
    .await
    .unwrap();
    assert!(
        a.broker_addr().is_none() && b.broker_addr().is_none(),
        "ingest-only: no embedded broker"
    );

    let (tenant, ids) =
        fleet_tests::tenancy::tenant_with_devices(&a.database().app, "scale-out", DEVICES).await;
    // Both instances subscribed before devices publish, or "both did work" is luck.
    let instances = [a.metrics_addr(), b.metrics_addr()];
    wait_until_every_instance_is_subscribed(&ca, tenant, mosquitto.port, TIMEOUT, || async {
        let mut refused = Vec::new();
        for addr in instances {
            let name = "fleet_ingest_rejects_total{reason=\"unknown_device\"}";
            refused.push(fleet_tests::metrics::counter(addr, name).await.unwrap_or(0));
        }
        refused
    })
    .await;

    let tasks: Vec<_> = ids
        .iter()
        .map(|device| tokio::spawn(run_device(ca.clone(), tenant, *device, mosquitto.port)))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), MESSAGES * PER_MESSAGE);
    }
    let total = (DEVICES as u64 * MESSAGES * PER_MESSAGE) as i64;
    let mut owner = db.connect_as_owner().await;
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT (device_id, seq)) FROM device_records WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&mut owner)
            .await
            .unwrap();
    assert_eq!(
        (rows, distinct),
        (total, total),
        "every record exactly once"
    );
    let (by_a, by_b) = (
        records_committed(a.metrics_addr()).await,
        records_committed(b.metrics_addr()).await,
    );
    assert!(
        by_a > 0 && by_b > 0,
        "both instances did work: {by_a} and {by_b}"
    );
    assert_eq!(by_a + by_b, total as u64, "no record committed twice");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Whether Mosquitto on `port` lets `device` in: CONNACK accepted, or refused with the TLS alert
/// `certificate_revoked` (Mosquitto's CRL check; with TLS 1.3 the client reads the alert after
/// its side of the handshake, on the first read).
async fn mosquitto_admits(ca: &IssuingCa, device: &DeviceCredentials, port: u16) -> bool {
    let options = device.options(ca.root_der(), "localhost", port);
    let (_client, mut events) = rumqttc::AsyncClient::new(options, 8);
    let answer = tokio::time::timeout(TIMEOUT, events.poll())
        .await
        .expect("an answer");
    match answer {
        Ok(Event::Incoming(Packet::ConnAck(_))) => true,
        Err(e) if format!("{e:?}").contains("AlertReceived(CertificateRevoked)") => false,
        other => panic!("neither admitted nor refused at the handshake: {other:?}"),
    }
}

#[tokio::test]
async fn a_revoked_device_is_refused_by_mosquitto_through_the_crl_fleetd_writes() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let mosquitto_dir = tempfile::tempdir().unwrap();
    let crl_path = mosquitto_dir.path().join("fleet-crl.pem");
    let mut config =
        fleetd::Config::on_ephemeral_loopback_ports(data_dir.path(), db.url().parse().unwrap());
    config.pki.crl_file = Some(crl_path.clone());
    // fleetd first: Mosquitto refuses to start without its crlfile.
    let running = fleetd::start(config).await.unwrap();
    let ca = &running.pki().issuing_ca;
    let mosquitto =
        fleet_tests::mosquitto::start_mosquitto_with_crl(mosquitto_dir.path(), ca, &crl_path).await;
    let app = &running.database().app;
    let tenant = fleet_tests::tenancy::tenant(app, "crl").await;
    let device = fleet_tests::enroll::enroll(running.api_addr(), ca, app, tenant).await;
    let bystander = fleet_tests::enroll::enroll(running.api_addr(), ca, app, tenant).await;
    assert!(
        mosquitto_admits(ca, &device, mosquitto.port).await,
        "before revocation"
    );

    let empty_crl = std::fs::read(&crl_path).unwrap();
    let mut tx = app.begin(tenant).await.unwrap();
    store::devices::revoke(
        &mut tx,
        device.device_id,
        &store::device_groups::GroupScope::All,
        &store::audit::Actor::System,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // The signal: fleetd rewrote the file (on the revocation's notification).
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::fs::read(&crl_path).unwrap() == empty_crl {
        assert!(
            std::time::Instant::now() < deadline,
            "the CRL file was never rewritten"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mosquitto.reload();

    // Mosquitto's reload is asynchronous to the signal: the first refusal is the signal that it
    // happened, bounded by TIMEOUT.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while mosquitto_admits(ca, &device, mosquitto.port).await {
        assert!(
            std::time::Instant::now() < deadline,
            "Mosquitto still admits the revoked device"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        mosquitto_admits(ca, &bystander, mosquitto.port).await,
        "another device still gets in"
    );

    // The API serves the same list, DER, without authentication.
    let served =
        fleet_tests::https::https_request(running.api_addr(), ca, "GET", "/v1/pki/crl", &[], b"")
            .await;
    served.assert_status(200);
    assert_eq!(served.header("content-type"), Some("application/pkix-crl"));
    let pem = std::fs::read_to_string(&crl_path).unwrap();
    let file_der =
        rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
    let lists = |der: &[u8], who: &DeviceCredentials| {
        let serial = certs::DeviceCertificate::from_der(&who.chain[0]).unwrap();
        let serial = serial.serial().as_bytes().to_vec();
        der.windows(serial.len()).any(|w| w == serial.as_slice())
    };
    for der in [&served.body[..], &file_der[..]] {
        assert!(
            lists(der, &device),
            "the revoked device's certificate is listed"
        );
        assert!(!lists(der, &bystander), "the active device's is not");
    }
    running.shutdown().await.unwrap();
}
