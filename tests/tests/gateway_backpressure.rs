//! A device publishing while ingest cannot commit (its `device_ingest_state` row is locked from
//! another connection, and ingest's byte budget is small, so ingest stops taking messages) stays
//! connected: the gateway PUBACKs late, keeps answering PINGREQ, and once the lock is released
//! every record commits exactly once, on the same session, with nothing dropped.

use std::time::Duration;

use fleet_tests::mqtt::{connect_subscribed, wait_for_ack, DeviceCredentials};
use fleet_tests::records::{committed, telemetry_batch};
use fleet_tests::tenancy::tenant;
use fleet_tests::TestDb;
use rumqttc::{Event, EventLoop, Packet, QoS};
use sqlx::Connection;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The device's keep-alive: the lock is held for several of them.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// How long ingest stays blocked.
const HELD: Duration = Duration::from_secs(8);

/// Record messages sent while ingest is blocked, one record each (about 60 bytes): many times
/// ingest's budget, fewer than rumqttc's in-flight window (100) and the gateway's pending cap.
const BLOCKED_MESSAGES: u64 = 60;

/// The sum of every sample of the counter family `name` (all its labels).
fn sum_of(body: &str, name: &str) -> u64 {
    body.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .map(|line| {
            let value = line.rsplit(' ').next().unwrap();
            value
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{line}: not a counter"))
        })
        .sum()
}

/// Polls the device's connection for `period`: every event must be fine (a PINGREQ left
/// unanswered fails rumqttc's next poll). Returns the PINGRESPs and PUBACKs seen.
async fn poll_for(events: &mut EventLoop, period: Duration) -> (usize, usize) {
    let (mut pings, mut pubacks) = (0, 0);
    let end = tokio::time::Instant::now() + period;
    while let Ok(event) = tokio::time::timeout_at(end, events.poll()).await {
        match event.expect("the connection stays up") {
            Event::Incoming(Packet::PingResp) => pings += 1,
            Event::Incoming(Packet::PubAck(_)) => pubacks += 1,
            Event::Incoming(Packet::ConnAck(_)) => panic!("the device reconnected"),
            _ => {}
        }
    }
    (pings, pubacks)
}

#[tokio::test]
async fn a_device_sending_while_ingest_is_blocked_stays_connected_and_loses_nothing() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let mut config =
        fleetd::Config::on_ephemeral_loopback_ports(data_dir.path(), db.url().parse().unwrap());
    config.ingest.max_message_bytes = 1024;
    config.ingest.max_buffered_bytes = 1024;
    let running = fleetd::start(config).await.expect("fleetd starts");
    let tenant = tenant(&running.database().app, "backpressure").await;
    let ids = fleet_tests::tenancy::add_devices(&running.database().app, tenant, "bp-", 1).await;
    let device = DeviceCredentials::issued(&running.pki().issuing_ca, tenant, ids[0]);
    let addr = running.broker_addr().expect("the embedded broker");
    let mut options = device.options(
        running.pki().issuing_ca.root_der(),
        addr.ip().to_string(),
        addr.port(),
    );
    options.set_keep_alive(KEEP_ALIVE);
    let (client, mut events) =
        connect_subscribed(options, wire::topic::ack(device.device_id), TIMEOUT).await;
    let topic = wire::topic::telemetry(device.device_id);
    let publish = |seq: u64| {
        let client = client.clone();
        let topic = topic.clone();
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, telemetry_batch([seq]))
                .await
                .unwrap();
        }
    };

    // The first record makes the device's ingest state row; then another connection locks it.
    publish(1).await;
    assert_eq!(wait_for_ack(&mut events, 1, TIMEOUT).await, 1);
    let mut locker = db.connect_as_owner().await;
    let mut lock = locker.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM device_ingest_state WHERE device_id = $1 FOR UPDATE")
        .bind(device.device_id)
        .execute(&mut *lock)
        .await
        .unwrap();

    let last = 1 + BLOCKED_MESSAGES;
    for seq in 2..=last {
        publish(seq).await;
    }
    let (pings, pubacks) = poll_for(&mut events, HELD).await;
    assert!(
        pings >= 2,
        "PINGREQs answered while ingest is blocked: {pings}"
    );
    assert!(
        pubacks < BLOCKED_MESSAGES as usize,
        "ingest stopped taking messages, so some PUBACKs wait: {pubacks} of {BLOCKED_MESSAGES}"
    );
    assert_eq!(
        committed(&db, tenant).await,
        (1, 1),
        "nothing commits while locked"
    );

    lock.commit().await.unwrap();
    assert_eq!(wait_for_ack(&mut events, last, TIMEOUT).await, last);
    let expected = i64::try_from(last).unwrap();
    assert_eq!(
        committed(&db, tenant).await,
        (expected, expected),
        "each record once"
    );

    let stats = running.broker_stats().unwrap();
    assert_eq!(stats.sessions_started, 1, "no reconnect");
    assert_eq!(stats.sessions_active, 1);
    let metrics = fleet_tests::metrics::scrape_body(running.metrics_addr()).await;
    assert_eq!(
        sum_of(&metrics, "fleet_broker_refusals_total"),
        0,
        "{metrics}"
    );
    assert_eq!(
        sum_of(&metrics, "fleet_broker_server_messages_undelivered_total"),
        0,
        "{metrics}"
    );
    assert!(
        metrics.contains("fleet_broker_server_messages_undelivered_total{reason=\"queue_full\"} 0"),
        "the series exists: {metrics}"
    );
    client.disconnect().await.unwrap();
    running.shutdown().await.unwrap();
}
