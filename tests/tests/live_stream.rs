//! Live streams for integrations against a real fleetd (real TLS, real Postgres): Debian's
//! `mosquitto_sub` logs in with API keys of different group scopes and sees exactly its allowed
//! devices' committed records; a device certificate gets a device session, not a stream; no key,
//! a wrong key and a revoked key are refused; a revoked key's live session is closed; a
//! subscriber that never reads loses (counted) messages and never slows ingest.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fleet_tests::mqtt::{wait_for_ack, DeviceCredentials};
use fleet_tests::records::telemetry_batch;
use fleet_tests::TestDb;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use serde_json::Value;
use store::api_keys::{self, Role};
use store::audit::Actor;
use store::devices;
use store::{ApiKeyId, DeviceId, TenantId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const TIMEOUT: Duration = Duration::from_secs(30);

struct Fleet {
    _db: TestDb,
    _dir: tempfile::TempDir,
    running: fleetd::Running,
    tenant: TenantId,
    root_pem: tempfile::NamedTempFile,
}

impl Fleet {
    /// fleetd with a recheck interval of 1 s, so that a revoked key's session ends quickly.
    async fn start() -> Self {
        Self::with_recheck_interval(Duration::from_secs(1)).await
    }

    async fn with_recheck_interval(recheck: Duration) -> Self {
        let db = TestDb::new().await;
        let dir = fleet_tests::data_dir();
        let mut config =
            fleetd::Config::on_ephemeral_loopback_ports(dir.path(), db.url().parse().unwrap());
        config.broker.stream_recheck_interval = recheck;
        let running = fleetd::start(config).await.expect("fleetd starts");
        let tenant = fleet_tests::tenancy::tenant(&running.database().app, "streams").await;
        let root_pem = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(root_pem.path(), running.pki().issuing_ca.root_pem()).unwrap();
        Fleet {
            _db: db,
            _dir: dir,
            running,
            tenant,
            root_pem,
        }
    }

    /// A device of the tenant in group `group` (created if needed), with its certificate.
    async fn device(&self, group: &str) -> DeviceCredentials {
        let app = &self.running.database().app;
        let device = fleet_tests::tenancy::add_device_in_group(app, self.tenant, group).await;
        DeviceCredentials::issued(&self.running.pki().issuing_ca, self.tenant, device)
    }

    /// `device` connected, subscribed to its acks.
    async fn connect_device(
        &self,
        device: &DeviceCredentials,
    ) -> (AsyncClient, rumqttc::EventLoop) {
        let addr = self.running.broker_addr().unwrap();
        let options = device.options(
            self.running.pki().issuing_ca.root_der(),
            addr.ip().to_string(),
            addr.port(),
        );
        let ack = wire::topic::ack(device.device_id);
        fleet_tests::mqtt::connect_subscribed(options, ack, TIMEOUT).await
    }

    /// An auditor key limited to `groups` (`None`: every group); its id and text.
    async fn key(&self, groups: Option<&[&str]>) -> (ApiKeyId, String) {
        let app = &self.running.database().app;
        let issued = fleet_tests::tenancy::api_key(app, self.tenant, Role::Auditor, groups).await;
        (issued.key.id, issued.secret.expose().to_owned())
    }

    async fn revoke(&self, key: &ApiKeyId) {
        let app = &self.running.database().app;
        let mut tx = app.begin(self.tenant).await.unwrap();
        api_keys::revoke(&mut tx, key, &Actor::System)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    fn port(&self) -> u16 {
        self.running.broker_addr().expect("embedded broker").port()
    }

    fn all_filter(&self) -> String {
        format!("fleet/v1/stream/{}/#", self.tenant)
    }

    /// `mosquitto_sub` against the broker with `login` (id, key) or none, on `filter`, printing
    /// each message as `topic payload` and its protocol steps (`-d`).
    fn mosquitto_sub(&self, login: Option<(&ApiKeyId, &str)>, filter: &str) -> Child {
        // Line-buffered: its debug lines (SUBACK) would otherwise wait in a pipe buffer.
        let mut command = Command::new("stdbuf");
        command
            .args(["-oL", "mosquitto_sub"])
            .args(["-h", "127.0.0.1", "-p", &self.port().to_string()])
            .arg("--cafile")
            .arg(self.root_pem.path())
            .args(["-V", "mqttv311", "-d", "-F", "%t %p", "-t", filter]);
        if let Some((id, key)) = login {
            command.args(["-u", id.as_str(), "-P", key]);
        }
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub (Debian's mosquitto-clients) runs")
    }

    fn rumqttc_options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
            self.tls_without_certificate(),
        ))));
        options
    }

    fn tls_without_certificate(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.running.pki().issuing_ca.root_der().clone())
            .unwrap();
        certs::tls::client_builder(roots)
            .unwrap()
            .with_no_client_auth()
    }
}

/// A subscriber's output, read as it comes.
struct Output {
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Output {
    fn of(child: &mut Child) -> Self {
        Output {
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
        }
    }

    /// Reads until mosquitto_sub reports its subscription granted.
    async fn until_subscribed(&mut self) {
        tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                if line.contains("received SUBACK") {
                    return;
                }
            }
            panic!("mosquitto_sub ended before SUBACK");
        })
        .await
        .expect("SUBACK in time");
    }

    /// Reads stream messages until one of `device` with `seq` arrives; returns all of them.
    async fn until(&mut self, device: DeviceId, seq: u64) -> Vec<(String, Value)> {
        let mut messages = Vec::new();
        tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                let Some((topic, payload)) = line
                    .strip_prefix("fleet/v1/stream/")
                    .and_then(|_| line.split_once(' '))
                else {
                    continue;
                };
                let payload: Value = serde_json::from_str(payload).expect("JSON payload");
                let last = payload["device_id"] == device.to_string() && payload["seq"] == seq;
                messages.push((topic.to_owned(), payload));
                if last {
                    return;
                }
            }
            panic!("mosquitto_sub ended early");
        })
        .await
        .expect("the sentinel record in time");
        messages
    }
}

/// Connects `device`, publishes telemetry `seqs` and waits for their ack.
async fn report(fleet: &Fleet, device: &DeviceCredentials, seqs: std::ops::RangeInclusive<u64>) {
    let (client, mut events) = fleet.connect_device(device).await;
    let last = *seqs.end();
    client
        .publish(
            wire::topic::telemetry(device.device_id),
            QoS::AtLeastOnce,
            false,
            telemetry_batch(seqs),
        )
        .await
        .unwrap();
    wait_for_ack(&mut events, last, TIMEOUT).await;
    client.disconnect().await.ok();
}

/// Polls until the server closes the connection; its error.
async fn until_closed(events: &mut rumqttc::EventLoop) -> ConnectionError {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Err(e) = events.poll().await {
                return e;
            }
        }
    })
    .await
    .expect("the server closes the connection")
}

/// (device, seq) of each message, after checking every message's shape against its topic.
fn records_seen(tenant: TenantId, messages: &[(String, Value)]) -> BTreeSet<(String, u64)> {
    messages
        .iter()
        .map(|(topic, payload)| {
            let device = payload["device_id"].as_str().unwrap().to_owned();
            let seq = payload["seq"].as_u64().unwrap();
            assert_eq!(
                topic,
                &format!("fleet/v1/stream/{tenant}/{device}/telemetry")
            );
            assert_eq!(payload["tenant_id"], tenant.to_string());
            assert_eq!(payload["kind"], "telemetry");
            assert_eq!(payload["epoch"], 0);
            assert!(payload["recorded_at"].as_str().unwrap().ends_with('Z'));
            // fleet_tests::records::telemetry: CPU 12.5 %, up for `seq` seconds.
            assert_eq!(payload["body"]["cpu_usage_percent"], 12.5);
            assert_eq!(payload["body"]["uptime_secs"], seq);
            (device, seq)
        })
        .collect()
}

#[tokio::test]
async fn subscribers_of_different_scopes_see_exactly_their_devices_committed_records() {
    let fleet = Fleet::start().await;
    let east = fleet.device("east").await;
    let west = fleet.device("west").await;
    let (east_key, east_text) = fleet.key(Some(&["east"])).await;
    let (all_key, all_text) = fleet.key(None).await;

    let filter = fleet.all_filter();
    let mut east_sub = fleet.mosquitto_sub(Some((&east_key, &east_text)), &filter);
    let mut all_sub = fleet.mosquitto_sub(Some((&all_key, &all_text)), &filter);
    let mut east_out = Output::of(&mut east_sub);
    let mut all_out = Output::of(&mut all_sub);
    east_out.until_subscribed().await;
    all_out.until_subscribed().await;

    report(&fleet, &west, 1..=3).await;
    report(&fleet, &east, 1..=2).await;
    // Acknowledged means offered to the stream: a record sent after these acks reaches each
    // subscriber after them, so the sentinel (east, 3) closes what each one may have seen.
    report(&fleet, &east, 3..=3).await;

    let east_seen = records_seen(fleet.tenant, &east_out.until(east.device_id, 3).await);
    let all_seen = records_seen(fleet.tenant, &all_out.until(east.device_id, 3).await);
    let of = |device: &DeviceCredentials, seqs: &[u64]| {
        seqs.iter()
            .map(|seq| (device.device_id.to_string(), *seq))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        east_seen,
        of(&east, &[1, 2, 3]),
        "the east key sees east only"
    );
    let mut everything = of(&east, &[1, 2, 3]);
    everything.extend(of(&west, &[1, 2, 3]));
    assert_eq!(all_seen, everything, "the tenant-wide key sees both groups");

    // A replay of committed records is not streamed again: the next record is the first new one.
    report(&fleet, &east, 1..=4).await;
    let after = east_out.until(east.device_id, 4).await;
    assert_eq!(
        records_seen(fleet.tenant, &after),
        of(&east, &[4]),
        "duplicates are not re-streamed"
    );

    // West joins group east: the east key gets its records from its next recheck on (1 s here).
    let app = &fleet.running.database().app;
    let mut tx = app.begin(fleet.tenant).await.unwrap();
    let all = store::device_groups::GroupScope::All;
    devices::move_to_group(&mut tx, west.device_id, "east", &all, &Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut seq = 3;
    let seen = tokio::time::timeout(TIMEOUT, async {
        loop {
            seq += 1;
            report(&fleet, &west, seq..=seq).await;
            let reached = tokio::time::timeout(
                Duration::from_millis(500),
                east_out.until(west.device_id, seq),
            );
            if let Ok(messages) = reached.await {
                return messages;
            }
        }
    })
    .await
    .expect("the moved device's records reach the east key");
    assert!(seen
        .iter()
        .all(|(_, payload)| payload["device_id"] == west.device_id.to_string()));
}

#[tokio::test]
async fn no_key_a_wrong_key_and_a_revoked_key_are_refused() {
    let fleet = Fleet::start().await;
    let (key, text) = fleet.key(None).await;
    let filter = fleet.all_filter();

    let refused = |child: Child| async move {
        let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
            .await
            .expect("mosquitto_sub gives up")
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stdout).into_owned()
            + String::from_utf8_lossy(&output.stderr).as_ref()
    };
    let no_key = refused(fleet.mosquitto_sub(None, &filter)).await;
    assert!(no_key.contains("CONNACK (4)"), "{no_key}");

    let mut wrong = text.clone();
    wrong.replace_range(wrong.len() - 6.., "aaaaaa");
    let wrong_key = refused(fleet.mosquitto_sub(Some((&key, &wrong)), &filter)).await;
    assert!(wrong_key.contains("CONNACK (4)"), "{wrong_key}");

    let (other, _) = fleet.key(None).await;
    let not_its_id = refused(fleet.mosquitto_sub(Some((&other, &text)), &filter)).await;
    assert!(not_its_id.contains("CONNACK (4)"), "{not_its_id}");

    fleet.revoke(&key).await;
    let revoked = refused(fleet.mosquitto_sub(Some((&key, &text)), &filter)).await;
    assert!(revoked.contains("CONNACK (4)"), "{revoked}");

    let stats = fleet.running.broker_stats().unwrap();
    assert_eq!(stats.refused(broker::Refusal::StreamCredentials), 4);
}

#[tokio::test]
async fn a_stream_is_read_only_tenant_bound_and_ends_when_its_key_is_revoked() {
    let fleet = Fleet::start().await;
    let (key, text) = fleet.key(None).await;

    // Another tenant's stream: SUBACK 0x80, the session stays.
    let mut options = fleet.rumqttc_options("integration");
    options.set_credentials(key.as_str(), text.as_str());
    let (client, mut events) = AsyncClient::new(options, 16);
    let other_tenant = TenantId::new_random();
    client
        .subscribe(format!("fleet/v1/stream/{other_tenant}/#"), QoS::AtMostOnce)
        .await
        .unwrap();
    client
        .subscribe(fleet.all_filter(), QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut codes = Vec::new();
    while codes.len() < 2 {
        match tokio::time::timeout(TIMEOUT, events.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::SubAck(suback))) => codes.extend(suback.return_codes),
            Ok(_) => {}
            Err(e) => panic!("the session stays up: {e}"),
        }
    }
    // Granted at QoS 0 whatever was asked: best effort.
    assert_eq!(
        codes,
        [
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtMostOnce)
        ]
    );

    // Revoked while connected: closed within the recheck interval (1 s here).
    fleet.revoke(&key).await;
    let ended = until_closed(&mut events).await;
    assert!(
        !matches!(ended, ConnectionError::ConnectionRefused(_)),
        "{ended}"
    );

    // PUBLISH from a subscriber: disconnected.
    let (key, text) = fleet.key(None).await;
    let mut options = fleet.rumqttc_options("publisher");
    options.set_credentials(key.as_str(), text.as_str());
    let (client, mut events) = AsyncClient::new(options, 16);
    client
        .publish(
            format!("fleet/v1/stream/{}/x/telemetry", fleet.tenant),
            QoS::AtMostOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
    until_closed(&mut events).await;
    let stats = fleet.running.broker_stats().unwrap();
    assert_eq!(stats.refused(broker::Refusal::StreamSubscribeTopic), 1);
    assert_eq!(stats.refused(broker::Refusal::StreamKeyEnded), 1);
    assert_eq!(stats.refused(broker::Refusal::StreamPublish), 1);
}

#[tokio::test]
async fn a_device_certificate_gets_a_device_session_not_a_stream() {
    let fleet = Fleet::start().await;
    let device = fleet.device("east").await;
    let (key, text) = fleet.key(None).await;
    let addr = fleet.running.broker_addr().unwrap();
    let mut options = device.options(
        fleet.running.pki().issuing_ca.root_der(),
        addr.ip().to_string(),
        addr.port(),
    );
    // A key in CONNECT changes nothing: the certificate makes it a device.
    options.set_credentials(key.as_str(), text.as_str());
    let (client, mut events) = AsyncClient::new(options, 16);
    client
        .subscribe(fleet.all_filter(), QoS::AtMostOnce)
        .await
        .unwrap();
    let suback = tokio::time::timeout(TIMEOUT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    assert_eq!(connack.code, ConnectReturnCode::Success);
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => return suback,
                Ok(_) => {}
                Err(e) => panic!("the device session stays up: {e}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(suback.return_codes, [SubscribeReasonCode::Failure]);
    let stats = fleet.running.broker_stats().unwrap();
    assert_eq!(stats.refused(broker::Refusal::SubscribeTopic), 1);
    assert_eq!(stats.sessions_started, 1, "a device session");
}

/// A subscriber that logs in and subscribes over a raw TLS socket with a small receive buffer,
/// then never reads.
async fn silent_subscriber(
    fleet: &Fleet,
    key: &ApiKeyId,
    text: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket
        .connect(fleet.running.broker_addr().unwrap())
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(fleet.tls_without_certificate()));
    let mut tls = connector
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut connect = rumqttc::mqttbytes::v4::Connect::new("silent");
    connect.keep_alive = 600;
    connect.set_login(key.as_str(), text);
    let mut subscribe = rumqttc::mqttbytes::v4::Subscribe::new(
        fleet.all_filter(),
        rumqttc::mqttbytes::QoS::AtMostOnce,
    );
    subscribe.pkid = 1;
    let mut bytes = BytesMut::new();
    connect.write(&mut bytes).unwrap();
    subscribe.write(&mut bytes).unwrap();
    tls.write_all(&bytes).await.unwrap();
    tls.flush().await.unwrap();
    tls
}

#[tokio::test]
async fn a_subscriber_that_never_reads_loses_counted_messages_and_never_slows_ingest() {
    // The default interval: a socket that takes nothing for that long ends the session, and
    // this one must stay for the whole run.
    let fleet = Fleet::with_recheck_interval(broker::DEFAULT_STREAM_RECHECK_INTERVAL).await;
    let device = fleet.device("east").await;
    let (key, text) = fleet.key(None).await;
    let (client, mut events) = fleet.connect_device(&device).await;
    let mut send = async |first_batch: u64, with: &str| {
        let started = std::time::Instant::now();
        for batch in first_batch..first_batch + BATCHES {
            let records = (batch * 1000 + 1..=(batch + 1) * 1000)
                .map(fleet_tests::records::telemetry_200_bytes)
                .collect();
            let payload = wire::encode_batch(&wire::Batch::new(records));
            let topic = wire::topic::telemetry(device.device_id);
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        wait_for_ack(&mut events, (first_batch + BATCHES) * 1000, TIMEOUT).await;
        let records = BATCHES * 1000;
        println!(
            "{records} records committed and acknowledged in {:?} {with}",
            started.elapsed()
        );
    };
    // 16 batches of 1,000 records, about 11 MB of JSON: far beyond the subscriber's queue and
    // both sockets' buffers. First with no subscriber (nothing is built), then with one that
    // never reads.
    const BATCHES: u64 = 16;
    send(0, "without a stream subscriber").await;

    let _silent = silent_subscriber(&fleet, &key, &text).await;
    let subscribers = "fleet_broker_stream_subscribers";
    let metrics = fleet.running.metrics_addr();
    tokio::time::timeout(TIMEOUT, async {
        while !fleet_tests::metrics::scrape_body(metrics)
            .await
            .lines()
            .any(|line| line == format!("{subscribers} 1"))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the silent subscriber connects");
    send(BATCHES, "with a silent stream subscriber").await;
    let (rows, distinct) = fleet_tests::records::committed(&fleet._db, fleet.tenant).await;
    assert_eq!((rows, distinct), (32_000, 32_000));

    let dropped = format!("fleet_broker_stream_dropped_total{{key_id=\"{key}\"}}");
    let delivered = format!("fleet_broker_stream_delivered_total{{key_id=\"{key}\"}}");
    // Every committed record reaches the hub once (the encoder runs behind ingest): queued for
    // the subscriber or dropped.
    let (delivered_count, dropped_count) = tokio::time::timeout(TIMEOUT, async {
        loop {
            let delivered = fleet_tests::metrics::counter(metrics, &delivered)
                .await
                .unwrap_or(0);
            let dropped = fleet_tests::metrics::counter(metrics, &dropped)
                .await
                .unwrap_or(0);
            if delivered + dropped >= 16_000 {
                return (delivered, dropped);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every record reaches the hub");
    println!(
        "silent subscriber: {delivered_count} queued toward its socket, {dropped_count} dropped"
    );
    assert_eq!(
        delivered_count + dropped_count,
        16_000,
        "every record offered once"
    );
    assert!(dropped_count > 0);
}
