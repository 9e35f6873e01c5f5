//! Postgres stopped for 10 s mid-stream: nothing lost, nothing duplicated, and no ack for a
//! record that was not committed at the time the ack was sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use ingest::{AckError, AckSink, BoxFuture, IngestConfig, Metrics};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use store::cluster::{ClusterOptions, PrivateCluster, DATABASE};
use store::{Database, DatabaseSettings, DeviceId, Purpose};

/// Checks, for every ack, that every record up to its watermark is in the ledger right then.
/// When the check itself cannot reach the database (it is stopping), the ack is kept with its
/// time: the test then requires it to precede the end of the stop.
#[derive(Clone)]
struct CheckingSink {
    owner: PgPool,
    acks: RecordingSink,
    violations: Arc<Mutex<Vec<String>>>,
    unchecked: Arc<Mutex<Vec<Instant>>>,
    times: Arc<Mutex<Vec<Instant>>>,
}

impl AckSink for CheckingSink {
    fn publish_ack(
        &self,
        device: DeviceId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), AckError>> {
        Box::pin(async move {
            let watermark = wire::decode_ack(&payload).unwrap().watermark as i64;
            let committed: Result<i64, _> = sqlx::query_scalar(
                "SELECT count(*) FROM device_records WHERE device_id = $1 AND seq <= $2",
            )
            .bind(device)
            .bind(watermark)
            .fetch_one(&self.owner)
            .await;
            self.times.lock().unwrap().push(Instant::now());
            match committed {
                Ok(n) if n == watermark => {}
                Ok(n) => self
                    .violations
                    .lock()
                    .unwrap()
                    .push(format!("{device}: ack {watermark}, {n} committed")),
                Err(_) => self.unchecked.lock().unwrap().push(Instant::now()),
            }
            self.acks.publish_ack(device, payload).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_ten_seconds_loses_and_duplicates_nothing_and_acks_only_what_is_committed(
) {
    let data = fleet_tests::data_dir();
    let options = ClusterOptions {
        dir: data.path().join("postgres"),
        bindir: None,
        durable: true,
        remove_when_stopped: false,
    };
    let cluster = PrivateCluster::start(&options).await.unwrap();
    let url = cluster.url(DATABASE);
    let settings = DatabaseSettings {
        url: Some(url.parse().expect("a postgres:// URL")),
        data_dir: data.path().to_owned(),
        app_password: None,
        postgres_bindir: None,
        max_connections: 4,
        connect_timeout: Duration::from_secs(1),
    };
    let db = Database::open(&settings, Purpose::Server).await.unwrap();
    let (_, devices) = fleet_tests::tenancy::tenant_with_devices(&db.app, "acme", 10).await;
    let owner = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(cluster.connect_options(DATABASE))
        .await
        .unwrap();
    let sink = CheckingSink {
        owner,
        acks: RecordingSink::default(),
        violations: Arc::default(),
        unchecked: Arc::default(),
        times: Arc::default(),
    };
    let metrics = Metrics::default();
    let config = IngestConfig {
        max_buffered_bytes: 32 * 1024,
        max_message_bytes: 16 * 1024,
        ..test_config()
    };
    let (sender, handle) = start_ingest(&db, config, sink.clone(), &metrics);

    // Each device streams 1 record every 20 ms for about 14 s (blocked by backpressure meanwhile).
    const PER_DEVICE: u64 = 400;
    let mut streams = Vec::new();
    for device in devices.clone() {
        let sender = sender.clone();
        streams.push(tokio::spawn(async move {
            for seq in 1..=PER_DEVICE {
                let record = telemetry(seq);
                send(&sender, device, vec![record.clone()]).await;
                if seq % 10 == 0 {
                    send(&sender, device, vec![record]).await; // a replay now and then
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.stop().await.unwrap();
    // Acks of commits that finished just before the stop may still be on their way.
    let stopped = Instant::now() + Duration::from_millis(500);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(handle.buffered_bytes() <= 32 * 1024);
    let restarting = Instant::now();
    let cluster = PrivateCluster::start(&options).await.unwrap();
    let during: Vec<_> = sink
        .times
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t > stopped && **t < restarting)
        .copied()
        .collect();
    assert!(
        during.is_empty(),
        "{} acks while the database was down",
        during.len()
    );

    for stream in streams {
        stream.await.unwrap();
    }
    sink.acks
        .wait_for_watermark(&devices, PER_DEVICE, Duration::from_secs(30))
        .await;
    for device in &devices {
        let seqs: Vec<i64> =
            sqlx::query_scalar("SELECT seq FROM device_records WHERE device_id = $1 ORDER BY seq")
                .bind(device)
                .fetch_all(&sink.owner)
                .await
                .unwrap();
        assert_eq!(
            seqs,
            (1..=PER_DEVICE as i64).collect::<Vec<_>>(),
            "{device}"
        );
    }
    let violations = sink.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:?}");
    let late_unchecked = sink
        .unchecked
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t > stopped)
        .count();
    assert_eq!(
        late_unchecked, 0,
        "acks the test could not check after the stop"
    );
    assert!(metrics.records_committed_total() == devices.len() as u64 * PER_DEVICE);
    handle.shutdown().await;
    db.close().await.unwrap();
    cluster.stop().await.unwrap();
}
