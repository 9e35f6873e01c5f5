//! Helpers shared by ingest's integration tests: a database with tenants and devices, simulated
//! device records, ack sinks that record or check what they are given.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use fleet_tests::records::telemetry;
use fleet_tests::TestDb;
use ingest::{
    AckError, AckSink, BoxFuture, InboundMessage, IngestConfig, IngestHandle, IngestSender, Metrics,
};
use store::{Database, DeviceId, TenantId};
use wire::topic::TopicKind;
use wire::{
    AgentEvent, Batch, Body, OutboxOverflow, Package, PackageManager, PatchStatus, Record, Started,
    UnixMillis,
};

/// Fast batching for tests.
pub fn test_config() -> IngestConfig {
    IngestConfig {
        batch_window: Duration::from_millis(5),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
        ..IngestConfig::default()
    }
}

pub fn started(seq: u64) -> Record {
    Record {
        seq,
        recorded_at: UnixMillis::now(),
        body: Body::Event(AgentEvent::Started(Started {
            agent_version: "0.1.0".into(),
        })),
    }
}

pub fn overflow(seq: u64, first_seq: u64, last_seq: u64) -> Record {
    Record {
        seq,
        recorded_at: UnixMillis::now(),
        body: Body::Event(AgentEvent::OutboxOverflow(OutboxOverflow {
            dropped: last_seq - first_seq + 1,
            first_seq,
            last_seq,
        })),
    }
}

pub fn patch(seq: u64, recorded_at: UnixMillis, packages: &[(&str, &str, Option<&str>)]) -> Record {
    Record {
        seq,
        recorded_at,
        body: Body::PatchStatus(PatchStatus {
            os_id: "debian".into(),
            os_version: "12".into(),
            package_manager: PackageManager::Apt,
            packages: packages
                .iter()
                .map(|(name, installed, candidate)| Package {
                    name: (*name).into(),
                    installed: (*installed).into(),
                    candidate: candidate.map(Into::into),
                    security: false,
                })
                .collect(),
            reboot_required: false,
            lists_refreshed_at: None,
        }),
    }
}

/// The topic a record belongs on.
pub fn topic_of(record: &Record) -> TopicKind {
    match record.body {
        Body::Telemetry(_) => TopicKind::Telemetry,
        Body::PatchStatus(_) => TopicKind::PatchStatus,
        _ => TopicKind::Events,
    }
}

/// Sends `records` (all on the topic of the first) as one message.
pub async fn send(sender: &IngestSender, device: DeviceId, records: Vec<Record>) {
    let topic = topic_of(&records[0]).topic(device);
    let payload = wire::encode_batch(&Batch::new(records));
    sender
        .send(InboundMessage::new(topic, payload))
        .await
        .unwrap();
}

/// Sends raw bytes to a device topic.
pub async fn send_raw(sender: &IngestSender, topic: String, payload: Vec<u8>) {
    sender
        .send(InboundMessage::new(topic, payload))
        .await
        .unwrap();
}

/// Remembers every ack, per device, in order.
#[derive(Clone, Default)]
pub struct RecordingSink {
    acks: Arc<Mutex<HashMap<DeviceId, Vec<u64>>>>,
    /// The epoch of every ack that asked for a new one, per device, in order.
    new_epoch: Arc<Mutex<HashMap<DeviceId, Vec<Option<u64>>>>>,
    /// Each device's last ack.
    last: Arc<Mutex<HashMap<DeviceId, wire::Ack>>>,
}

impl RecordingSink {
    /// What the device's last ack said was handled above its watermark.
    pub fn last_handled_above(&self, device: DeviceId) -> Vec<(u64, u64)> {
        self.last
            .lock()
            .unwrap()
            .get(&device)
            .map(|ack| ack.handled_above.clone())
            .unwrap_or_default()
    }

    pub fn acks_of(&self, device: DeviceId) -> Vec<u64> {
        self.acks
            .lock()
            .unwrap()
            .get(&device)
            .cloned()
            .unwrap_or_default()
    }

    /// How many of the device's acks asked it to start a new epoch.
    pub fn new_epoch_acks(&self, device: DeviceId) -> usize {
        self.new_epoch
            .lock()
            .unwrap()
            .get(&device)
            .map_or(0, Vec::len)
    }

    /// How many of the device's acks in `epoch` asked it to start another one.
    pub fn new_epoch_acks_in(&self, device: DeviceId, epoch: u64) -> usize {
        self.new_epoch
            .lock()
            .unwrap()
            .get(&device)
            .map_or(0, |epochs| {
                epochs.iter().filter(|e| **e == Some(epoch)).count()
            })
    }

    pub fn last_ack(&self, device: DeviceId) -> Option<u64> {
        self.acks_of(device).last().copied()
    }

    /// Waits until every device's last ack is `watermark`. The last one received, not the
    /// highest: a device whose acks went back down after reaching `watermark` is still behind.
    pub async fn wait_for_watermark(&self, devices: &[DeviceId], watermark: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let behind: Vec<(DeviceId, Option<u64>)> = devices
                .iter()
                .map(|d| (*d, self.last_ack(*d)))
                .filter(|(_, last)| *last != Some(watermark))
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} devices' last ack is not {watermark}, e.g. {:?}",
                behind.len(),
                &behind[..behind.len().min(3)]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl AckSink for RecordingSink {
    fn publish_ack(
        &self,
        device: DeviceId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), AckError>> {
        let ack = wire::decode_ack(&payload).expect("ingest encodes valid acks");
        if ack.new_epoch {
            self.new_epoch
                .lock()
                .unwrap()
                .entry(device)
                .or_default()
                .push(ack.epoch);
        }
        let watermark = ack.watermark;
        self.last.lock().unwrap().insert(device, ack);
        self.acks
            .lock()
            .unwrap()
            .entry(device)
            .or_default()
            .push(watermark);
        Box::pin(async { Ok(()) })
    }
}

/// Opens a fresh test database.
pub async fn open() -> (TestDb, Database) {
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    (test_db, db)
}

/// A fresh test database with the tenant `acme` and its `n` devices.
pub async fn acme_with_devices(n: usize) -> (TestDb, Database, TenantId, Vec<DeviceId>) {
    let (test_db, db) = open().await;
    let (tenant, devices) = fleet_tests::tenancy::tenant_with_devices(&db.app, "acme", n).await;
    (test_db, db, tenant, devices)
}

/// Starts an ingest pipeline on `db` with `config`, acking into `sink`, counting into `metrics`.
pub fn start_ingest(
    db: &Database,
    config: IngestConfig,
    sink: impl AckSink + 'static,
    metrics: &Metrics,
) -> (IngestSender, IngestHandle) {
    ingest::start(config, db.app.clone(), Arc::new(sink), metrics.clone()).unwrap()
}

/// Starts an ingest pipeline on `db` with `config` ([`start_ingest`]) acking into a new
/// [`RecordingSink`]; returns them with the sink and the pipeline's metrics.
pub fn start_recorded(
    db: &Database,
    config: IngestConfig,
) -> (IngestSender, IngestHandle, RecordingSink, Metrics) {
    let sink = RecordingSink::default();
    let metrics = Metrics::default();
    let (sender, handle) = start_ingest(db, config, sink.clone(), &metrics);
    (sender, handle, sink, metrics)
}

/// A device's ledger seqs, as the owner would see them.
pub async fn stored_seqs(db: &Database, tenant: TenantId, device: DeviceId) -> Vec<i64> {
    let mut tx = db.app.begin(tenant).await.unwrap();
    let rows = store::records::list_for_device(&mut tx, device, 0, 1_000_000)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    rows.iter().map(|r| r.seq).collect()
}
