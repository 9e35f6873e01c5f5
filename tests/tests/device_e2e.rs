//! Devices against a real fleetd: enrollment over HTTPS, MQTT over mutual TLS through the
//! gateway, records committed in Postgres exactly once and acknowledged, revocation from
//! another database connection closing the live session.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_tests::https::https_request;
use fleet_tests::mqtt::{connect_subscribed, DeviceCredentials};
use fleet_tests::records::{committed, telemetry_batch};
use fleet_tests::tenancy::tenant;
use fleet_tests::TestDb;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, EventLoop, MqttOptions, QoS};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use store::devices;
use store::enrollment_tokens::{self, NewEnrollmentToken};
use store::{Purpose, TenantId};
use wire::topic::TopicKind;

const TIMEOUT: Duration = Duration::from_secs(30);

async fn start_fleetd(db: &TestDb, data_dir: &tempfile::TempDir) -> fleetd::Running {
    let config =
        fleetd::Config::on_ephemeral_loopback_ports(data_dir.path(), db.url().parse().unwrap());
    fleetd::start(config).await.expect("fleetd starts")
}

/// A device of `tenant` created in the store, with a certificate from fleetd's issuing CA.
async fn provisioned_device(running: &fleetd::Running, tenant: TenantId) -> DeviceCredentials {
    let ids = fleet_tests::tenancy::add_devices(&running.database().app, tenant, "sim-", 1).await;
    DeviceCredentials::issued(&running.pki().issuing_ca, tenant, ids[0])
}

/// The options of `device` for fleetd's embedded broker.
fn mqtt_options(running: &fleetd::Running, device: &DeviceCredentials) -> MqttOptions {
    let addr = running.broker_addr().expect("the embedded broker");
    device.options(
        running.pki().issuing_ca.root_der(),
        addr.ip().to_string(),
        addr.port(),
    )
}

/// Connects, subscribes to the device's ack topic and waits until it is granted.
async fn connect(
    running: &fleetd::Running,
    device: &DeviceCredentials,
) -> (AsyncClient, EventLoop) {
    let topic = wire::topic::ack(device.device_id);
    connect_subscribed(mqtt_options(running, device), topic, TIMEOUT).await
}

/// Polls until an ack with at least `watermark` arrives; returns it.
async fn wait_for_ack(events: &mut EventLoop, watermark: u64) -> u64 {
    fleet_tests::mqtt::wait_for_ack(events, watermark, TIMEOUT).await
}

/// Waits until the store says the device's online flag is `online`, with a last-seen time.
async fn wait_for_presence(db: &TestDb, device: wire::DeviceId, online: bool) {
    let mut owner = db.connect_as_owner().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (now_online, seen): (bool, bool) = sqlx::query_as(
            "SELECT online, last_seen_at IS NOT NULL FROM devices WHERE device_id = $1",
        )
        .bind(device)
        .fetch_one(&mut owner)
        .await
        .unwrap();
        if now_online == online && seen {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "presence never became online={online}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_device_enrolls_reports_is_acknowledged_and_is_cut_off_when_revoked_elsewhere() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = start_fleetd(&db, &data_dir).await;
    let tenant = tenant(&running.database().app, "e2e").await;
    let mut tx = running.database().app.begin(tenant).await.unwrap();
    fleet_tests::ensure_group(&mut tx, "lab").await;
    let token = enrollment_tokens::create(
        &mut tx,
        &NewEnrollmentToken {
            name: "lab".into(),
            allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
            daily_limit: 10,
            max_uses: None,
            expires_at: time::OffsetDateTime::now_utc() + time::Duration::days(1),
            device_group: "lab".into(),
            device_labels: BTreeMap::new(),
        },
        &store::audit::Actor::System,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // Enrollment over HTTPS, pinning the fleet root.
    let (key, csr) = fleet_tests::device::key_and_csr();
    let body = serde_json::json!({ "token": token.secret.expose(), "csr": csr }).to_string();
    let response = https_request(
        running.api_addr(),
        &running.pki().issuing_ca,
        "POST",
        "/v1/enroll",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await;
    response.assert_status(201);
    let enrolled = response.json();
    let broker_url = format!(
        "mqtts://localhost:{}",
        running.broker_addr().unwrap().port()
    );
    assert_eq!(
        enrolled["broker_url"],
        broker_url.as_str(),
        "server name and the bound broker port"
    );
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(enrolled["certificate_chain"].as_str().unwrap().as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let device = DeviceCredentials {
        device_id: enrolled["device_id"].as_str().unwrap().parse().unwrap(),
        key,
        chain,
    };

    // Records in, ack after commit.
    let (client, mut events) = connect(&running, &device).await;
    client
        .publish(
            wire::topic::telemetry(device.device_id),
            QoS::AtLeastOnce,
            false,
            telemetry_batch(1..=3),
        )
        .await
        .unwrap();
    assert_eq!(wait_for_ack(&mut events, 3).await, 3);
    assert_eq!(committed(&db, tenant).await, (3, 3));
    wait_for_presence(&db, device.device_id, true).await;

    // Revoked through another connection to the database, as `fleetctl device revoke` does.
    let elsewhere = store::Database::open(&db.settings(), Purpose::Tool)
        .await
        .unwrap();
    let mut tx = elsewhere.app.begin(tenant).await.unwrap();
    devices::revoke(
        &mut tx,
        device.device_id,
        &store::device_groups::GroupScope::All,
        &store::audit::Actor::System,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let revoked_at = Instant::now();
    let dropped = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if events.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        dropped.is_ok(),
        "the live session outlived its revocation by 2 s"
    );
    eprintln!(
        "session closed {:?} after the revocation committed",
        revoked_at.elapsed()
    );

    wait_for_presence(&db, device.device_id, false).await;

    // And it cannot come back.
    let (_client, mut events) = AsyncClient::new(mqtt_options(&running, &device), 8);
    let refused = tokio::time::timeout(TIMEOUT, events.poll())
        .await
        .expect("an answer");
    assert!(
        matches!(
            refused,
            Err(ConnectionError::ConnectionRefused(
                ConnectReturnCode::NotAuthorized
            ))
        ),
        "{refused:?}"
    );
    elsewhere.close().await.unwrap();
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_hundred_devices_through_the_gateway_commit_every_record_exactly_once() {
    const DEVICES: usize = 100;
    const RECORDS: u64 = 500;
    const PER_MESSAGE: u64 = 50;
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = Arc::new(start_fleetd(&db, &data_dir).await);
    let tenant = tenant(&running.database().app, "load").await;
    let mut devices = Vec::new();
    for _ in 0..DEVICES {
        devices.push(provisioned_device(&running, tenant).await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|device| {
            let running = running.clone();
            tokio::spawn(async move {
                let (client, mut events) = connect(&running, &device).await;
                let topic = wire::topic::telemetry(device.device_id);
                for first in (1..=RECORDS).step_by(PER_MESSAGE as usize) {
                    let batch = telemetry_batch(first..=first + PER_MESSAGE - 1);
                    client
                        .publish(&topic, QoS::AtLeastOnce, false, batch.clone())
                        .await
                        .unwrap();
                    // Every third message is sent twice, as a device replaying its outbox would.
                    if (first / PER_MESSAGE).is_multiple_of(3) {
                        client
                            .publish(&topic, QoS::AtLeastOnce, false, batch)
                            .await
                            .unwrap();
                    }
                }
                wait_for_ack(&mut events, RECORDS).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.unwrap(),
            RECORDS,
            "every device gets its final watermark"
        );
    }
    let total = DEVICES as i64 * RECORDS as i64;
    assert_eq!(committed(&db, tenant).await, (total, total));
    eprintln!(
        "{total} records from {DEVICES} devices committed and acknowledged in {:?}",
        started.elapsed()
    );
    Arc::try_unwrap(running)
        .ok()
        .expect("no other owner")
        .shutdown()
        .await
        .unwrap();
}

/// Through the gateway, in one tenant: a device whose patch report names a package with NUL in
/// it and one whose messages do not decode, next to 20 good devices sending at the same time.
/// Every good record is committed and acked; the bad messages are refused and counted on their
/// devices; since the messages carry the wire's sequence header, both bad devices' watermarks
/// move past the bad seqs and their later records are acked.
#[tokio::test]
async fn a_nul_bearing_device_and_an_undecodable_one_cost_twenty_good_devices_nothing() {
    const GOOD: usize = 20;
    const RECORDS: u64 = 50;
    const PER_MESSAGE: u64 = 10;
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = Arc::new(start_fleetd(&db, &data_dir).await);
    let tenant = tenant(&running.database().app, "mixed").await;
    let mut good = Vec::new();
    for _ in 0..GOOD {
        good.push(provisioned_device(&running, tenant).await);
    }
    let nul = provisioned_device(&running, tenant).await;
    let garbled = provisioned_device(&running, tenant).await;
    let (nul_id, garbled_id) = (nul.device_id.0, garbled.device_id.0);
    let headed = |records: Vec<wire::Record>| wire::encode_message(&wire::Batch::new(records));
    let telemetry = fleet_tests::records::telemetry;

    let nul_patch = wire::Record {
        seq: 4,
        recorded_at: wire::UnixMillis::now(),
        body: wire::Body::PatchStatus(wire::PatchStatus {
            os_id: "debian".into(),
            os_version: "12".into(),
            package_manager: wire::PackageManager::Apt,
            packages: vec![wire::Package {
                name: "lib\0c6".into(),
                installed: "2.36".into(),
                candidate: None,
                security: false,
            }],
            reboot_required: false,
            lists_refreshed_at: None,
        }),
    };
    let mut cut = headed((1..=3).map(telemetry).collect());
    cut.truncate(wire::header::HEADER_LEN + 5);
    // (device, [(topic kind, payload)], final watermark)
    let mut plans = vec![
        (
            nul,
            vec![
                (
                    TopicKind::Telemetry,
                    headed((1..=3).map(telemetry).collect()),
                ),
                (TopicKind::PatchStatus, headed(vec![nul_patch])),
                (TopicKind::Telemetry, headed(vec![telemetry(5)])),
            ],
            5,
        ),
        (
            garbled,
            vec![
                (TopicKind::Telemetry, cut),
                // Not CBOR and no header: refused, nothing to attribute.
                (TopicKind::Telemetry, vec![0xff, 0x00]),
                (
                    TopicKind::Telemetry,
                    headed((4..=5).map(telemetry).collect()),
                ),
            ],
            5,
        ),
    ];
    let good_ids: Vec<wire::DeviceId> = good.iter().map(|d| d.device_id).collect();
    for device in good {
        let messages = (1..=RECORDS)
            .step_by(PER_MESSAGE as usize)
            .map(|first| {
                let records = (first..first + PER_MESSAGE).map(telemetry).collect();
                (TopicKind::Telemetry, headed(records))
            })
            .collect();
        plans.push((device, messages, RECORDS));
    }
    let tasks: Vec<_> = plans
        .into_iter()
        .map(|(device, messages, watermark)| {
            let running = running.clone();
            tokio::spawn(async move {
                let (client, mut events) = connect(&running, &device).await;
                for (kind, payload) in messages {
                    client
                        .publish(
                            kind.topic(device.device_id),
                            QoS::AtLeastOnce,
                            false,
                            payload,
                        )
                        .await
                        .unwrap();
                }
                (
                    device.device_id,
                    wait_for_ack(&mut events, watermark).await == watermark,
                )
            })
        })
        .collect();
    for task in tasks {
        let (device, acked) = task.await.unwrap();
        assert!(acked, "{device} gets its final watermark");
    }

    let total = GOOD as i64 * RECORDS as i64;
    let mut owner = db.connect_as_owner().await;
    let per_device: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT device_id, count(*) FROM device_records WHERE tenant_id = $1 GROUP BY device_id",
    )
    .bind(tenant)
    .fetch_all(&mut owner)
    .await
    .unwrap();
    let per_device: BTreeMap<uuid::Uuid, i64> = per_device.into_iter().collect();
    for device in &good_ids {
        assert_eq!(per_device.get(&device.0), Some(&(RECORDS as i64)));
    }
    assert_eq!(per_device.get(&nul_id), Some(&4), "seqs 1, 2, 3 and 5");
    assert_eq!(per_device.get(&garbled_id), Some(&2), "seqs 4 and 5");
    assert_eq!(committed(&db, tenant).await, (total + 6, total + 6));

    let states: Vec<(uuid::Uuid, i64, String, Option<String>)> = sqlx::query_as(
        "SELECT device_id, watermark, rejects::text, last_error FROM device_ingest_state WHERE device_id = ANY($1)",
    )
    .bind(vec![nul_id, garbled_id])
    .fetch_all(&mut owner)
    .await
    .unwrap();
    let states: BTreeMap<uuid::Uuid, _> = states
        .into_iter()
        .map(|(device, watermark, rejects, error)| {
            let rejects: serde_json::Value = serde_json::from_str(&rejects).unwrap();
            (device, (watermark, rejects, error))
        })
        .collect();
    let (watermark, rejects, error) = &states[&nul_id];
    assert_eq!(*watermark, 5);
    assert_eq!(rejects["forbidden_character"], 1);
    assert_eq!(
        error.as_deref(),
        Some("seqs 4..=4 refused: package.name contains the control character U+0000 at byte 3")
    );
    let (watermark, rejects, _) = &states[&garbled_id];
    assert_eq!(*watermark, 5);
    assert_eq!(rejects["malformed"], 2);
    eprintln!("NUL device: {:?}", states[&nul_id]);
    eprintln!("garbled device: {:?}", states[&garbled_id]);
    Arc::try_unwrap(running)
        .ok()
        .expect("no other owner")
        .shutdown()
        .await
        .unwrap();
}

/// Waits until the broker has closed the session behind `events`.
async fn wait_for_disconnect(events: &mut EventLoop, within: Duration) {
    tokio::time::timeout(within, async { while events.poll().await.is_ok() {} })
        .await
        .unwrap_or_else(|_| panic!("the session was still open after {within:?}"));
}

/// Publishes record `seq` and waits for its ack: the session is up and serving.
async fn still_served(
    client: &AsyncClient,
    events: &mut EventLoop,
    device: wire::DeviceId,
    seq: u64,
) {
    client
        .publish(
            wire::topic::telemetry(device),
            QoS::AtLeastOnce,
            false,
            telemetry_batch(seq..=seq),
        )
        .await
        .unwrap();
    assert_eq!(wait_for_ack(events, seq).await, seq);
}

async fn revoke(running: &fleetd::Running, tenant: TenantId, device: wire::DeviceId) {
    let mut tx = running.database().app.begin(tenant).await.unwrap();
    devices::revoke(
        &mut tx,
        device,
        &store::device_groups::GroupScope::All,
        &store::audit::Actor::System,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_forged_revocation_notification_does_not_disconnect_an_active_device() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = start_fleetd(&db, &data_dir).await;
    let tenant = tenant(&running.database().app, "forged").await;
    let active = provisioned_device(&running, tenant).await;
    let revoked = provisioned_device(&running, tenant).await;
    let (active_client, mut active_events) = connect(&running, &active).await;
    let (_revoked_client, mut revoked_events) = connect(&running, &revoked).await;
    still_served(&active_client, &mut active_events, active.device_id, 1).await;

    // Any role that can connect may NOTIFY on any channel: here the application role itself.
    let mut app = db.connect_as_app().await;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(store::revocations::CHANNEL)
        .bind(format!("{tenant}:{}", active.device_id))
        .execute(&mut app)
        .await
        .unwrap();
    // A real revocation after it: once its session is closed, the listener has handled the
    // forged notification too (one connection delivers notifications in commit order).
    revoke(&running, tenant, revoked.device_id).await;
    wait_for_disconnect(&mut revoked_events, Duration::from_secs(5)).await;

    still_served(&active_client, &mut active_events, active.device_id, 2).await;
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_revocation_committed_while_the_listener_was_disconnected_still_closes_the_session() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let running = start_fleetd(&db, &data_dir).await;
    let tenant = tenant(&running.database().app, "missed").await;
    let device = provisioned_device(&running, tenant).await;
    let (client, mut events) = connect(&running, &device).await;
    still_served(&client, &mut events, device.device_id, 1).await;
    wait_for_presence(&db, device.device_id, true).await;

    // Cut the listener off and keep it off: its role may not log in until the revocation is
    // committed, so the notification has nobody to reach and is lost.
    let app_role = db.app_role().await;
    let mut owner = db.connect_as_owner().await;
    sqlx::query(&format!("ALTER ROLE \"{app_role}\" NOLOGIN"))
        .execute(&mut owner)
        .await
        .unwrap();
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'fleetd-revocations'",
    )
    .fetch_all(&mut owner)
    .await
    .unwrap();
    assert_eq!(terminated, vec![true], "one revocation listener");
    sqlx::query("UPDATE devices SET status = 'revoked' WHERE device_id = $1")
        .bind(device.device_id)
        .execute(&mut owner)
        .await
        .unwrap();
    sqlx::query(&format!("ALTER ROLE \"{app_role}\" LOGIN"))
        .execute(&mut owner)
        .await
        .unwrap();

    // The listener's reconnect (backoff up to 5 s) re-scans the live sessions.
    wait_for_disconnect(&mut events, Duration::from_secs(15)).await;
    running.shutdown().await.unwrap();
}

/// Whether the broker admits `device` now: CONNACK accepted, or refused as not authorized.
async fn admitted(running: &fleetd::Running, device: &DeviceCredentials) -> bool {
    let (_client, mut events) = AsyncClient::new(mqtt_options(running, device), 8);
    let answer = tokio::time::timeout(TIMEOUT, events.poll())
        .await
        .expect("an answer");
    match answer {
        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => true,
        Err(ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)) => false,
        other => panic!("neither admitted nor refused: {other:?}"),
    }
}

#[tokio::test]
async fn a_renewed_devices_old_certificate_is_refused_after_the_grace_period() {
    const GRACE: Duration = Duration::from_secs(2);
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let mut config =
        fleetd::Config::on_ephemeral_loopback_ports(data_dir.path(), db.url().parse().unwrap());
    config.pki.superseded_grace = GRACE;
    let running = fleetd::start(config).await.expect("fleetd starts");
    let tenant = tenant(&running.database().app, "renewal").await;
    let (api, ca) = (running.api_addr(), &running.pki().issuing_ca);
    let old = fleet_tests::enroll::enroll(api, ca, &running.database().app, tenant).await;
    assert!(admitted(&running, &old).await, "the enrolled certificate");

    let (response, renewed) = fleet_tests::enroll::renew(api, ca, &old).await;
    response.assert_status(201);
    let new = renewed.unwrap();
    let renewed_at = Instant::now();
    // The agent's switch-over: both certificates are admitted during the grace period.
    assert!(
        admitted(&running, &old).await,
        "the old one, within the grace period"
    );
    assert!(admitted(&running, &new).await, "the new one");
    assert!(
        renewed_at.elapsed() < GRACE,
        "the checks above ran within the grace period"
    );

    // This test is about time: wait out the grace period, with margin.
    tokio::time::sleep(GRACE + Duration::from_secs(1)).await;
    assert!(
        !admitted(&running, &old).await,
        "the old certificate after the grace period"
    );
    assert!(
        admitted(&running, &new).await,
        "the new certificate stays admitted"
    );
    // Nor may the copied key renew again.
    let (response, _) = fleet_tests::enroll::renew(api, ca, &old).await;
    response.assert_problem(403, "device-not-allowed");
    running.shutdown().await.unwrap();
}
