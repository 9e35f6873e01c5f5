//! Scale-out: two fleetd instances in ingest-only mode share one external Mosquitto (configured
//! as ingest/README.md documents for production) through an MQTT v5 shared subscription. Every
//! record is written exactly once, both instances do work, every device gets its final ack.

use std::sync::Arc;
use std::time::Duration;

use certs::{DeviceIdentity, IssuingCa, Pki, PkiParams, Validity};
use fleet_tests::mosquitto::start_mosquitto;
use fleet_tests::TestDb;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode, TlsConfiguration,
    Transport,
};
use store::TenantId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::DeviceId;
use wire::{Batch, Body, Record, Telemetry, UnixMillis};

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

/// A device's MQTT client: TLS with its own certificate, not yet connected.
fn device_client(
    ca: &IssuingCa,
    tenant: TenantId,
    device: DeviceId,
    port: u16,
) -> (AsyncClient, EventLoop) {
    let identity = DeviceIdentity {
        tenant_id: tenant,
        device_id: device,
    };
    let validity = Validity::from_now(Duration::from_secs(3600)).unwrap();
    let issued = fleet_tests::device::issue(ca, identity, validity);
    let tls = fleet_tests::device::device_tls(ca.root_der(), issued.chain, &issued.key);
    let mut options = MqttOptions::new(device.to_string(), "localhost", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
    AsyncClient::new(options, 64)
}

/// Polls `events` (connecting it) until the broker grants the one subscription just asked for,
/// at QoS 1; panics on a refusal, a connection error or after 10 s.
async fn wait_for_suback(events: &mut EventLoop) {
    let suback = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
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

/// Waits until both instances' `$share` subscriptions are in place. Their SUBACKs reach only
/// fleetd's own event loops, so the test watches the consequence instead: a device the database
/// does not know publishes until every instance has received (and refused as `unknown_device`)
/// one of its messages; the broker delivers to a shared subscriber only once it has granted the
/// subscription, and spreads a group's messages over its members. The probes write nothing and
/// are not counted as committed.
async fn wait_until_every_instance_is_subscribed(
    ca: &IssuingCa,
    tenant: TenantId,
    port: u16,
    metrics: &[std::net::SocketAddr],
) {
    let probe = DeviceId::new_random();
    let (client, mut events) = device_client(ca, tenant, probe, port);
    let driver = tokio::spawn(async move {
        loop {
            // Ends (and the wait below fails) if the probe loses its connection.
            if let Err(e) = events.poll().await {
                return e;
            }
        }
    });
    let payload = wire::encode_batch(&Batch::new(vec![Record {
        seq: 1,
        recorded_at: UnixMillis::now(),
        body: Body::Telemetry(Telemetry::default()),
    }]));
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let mut refused = Vec::new();
        for addr in metrics {
            refused.push(
                metric(
                    *addr,
                    "fleet_ingest_rejects_total{reason=\"unknown_device\"}",
                )
                .await,
            );
        }
        if refused.iter().all(|n| n.is_some_and(|n| n > 0)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every instance received a probe: {refused:?}"
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

/// Runs one device against Mosquitto: subscribes to its acks, publishes its records (every third
/// message twice) once the subscription is granted, and returns the final ack watermark.
async fn run_device(ca: Arc<IssuingCa>, tenant: TenantId, device: DeviceId, port: u16) -> u64 {
    let (client, mut events) = device_client(&ca, tenant, device, port);
    client
        .subscribe(wire::topic::ack(device), QoS::AtLeastOnce)
        .await
        .unwrap();
    wait_for_suback(&mut events).await;
    let topic = wire::topic::telemetry(device);
    for message in 0..MESSAGES {
        let first = message * PER_MESSAGE + 1;
        let records = (first..first + PER_MESSAGE)
            .map(|seq| Record {
                seq,
                recorded_at: UnixMillis::now(),
                body: Body::Telemetry(Telemetry::default()),
            })
            .collect();
        let payload = wire::encode_batch(&Batch::new(records));
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
    metric(addr, "fleet_ingest_records_committed_total")
        .await
        .expect("a committed counter")
}

/// The value of the sample `name` (with its labels, as rendered) on an instance's metrics
/// listener, or `None` while it has not been created.
async fn metric(addr: std::net::SocketAddr, name: &str) -> Option<u64> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let value = response
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: not a counter: {value}")),
    )
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
    wait_until_every_instance_is_subscribed(
        &ca,
        tenant,
        mosquitto.port,
        &[a.metrics_addr(), b.metrics_addr()],
    )
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
