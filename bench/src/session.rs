//! A simulated device's session with fleetd as the agent holds it: MQTT 3.1.1 over mutual TLS
//! (rumqttc, as the agent), subscribed to its acks, records in an epoch of its own numbered from
//! 1 behind the sequence header ([`wire::encode_message`]), QoS 1; a message counts as committed
//! when an ack of its epoch covers its last seq.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_tests::mqtt::DeviceCredentials;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use rustls::pki_types::CertificateDer;
use wire::{Batch, Body, DeviceId, Epoch, Record, UnixMillis};

/// What every session of a run adds to.
#[derive(Default)]
pub struct Tally {
    /// Records acked (watermark advances), all devices.
    pub committed: AtomicU64,
    /// Connection errors seen by the sessions' event loops (rumqttc reconnects).
    pub connection_errors: AtomicU64,
    /// (published, committed) of every message, in the order their acks came.
    pub messages: Mutex<Vec<(Instant, Instant)>>,
}

impl Tally {
    /// Latencies of the messages published in `[from, to)`, shortest first.
    pub fn latencies(&self, from: Instant, to: Instant) -> Vec<Duration> {
        let mut latencies: Vec<Duration> = self
            .messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(published, _)| (from..to).contains(published))
            .map(|(published, committed)| *committed - *published)
            .collect();
        latencies.sort();
        latencies
    }
}

pub struct Session {
    pub device_id: DeviceId,
    client: AsyncClient,
    epoch: Epoch,
    next_seq: u64,
    /// (published at, last seq) of messages not yet covered by an ack.
    pending: Arc<Mutex<VecDeque<(Instant, u64)>>>,
    events: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.events.abort();
    }
}

impl Session {
    /// Connects `device` to the gateway at `broker` and subscribes to its acks.
    pub async fn open(
        device: &DeviceCredentials,
        root: &CertificateDer<'static>,
        broker: SocketAddr,
        tally: Arc<Tally>,
    ) -> Self {
        let mut options = device.options(root, broker.ip().to_string(), broker.port());
        // Outlasts a loaded machine's stalls.
        options.set_keep_alive(Duration::from_secs(60));
        let device_id = device.device_id;
        let (client, mut events) = fleet_tests::mqtt::connect_subscribed(
            options,
            wire::topic::ack(device_id),
            Duration::from_secs(120),
        )
        .await;
        let epoch = Epoch {
            id: uuid::Uuid::new_v4().as_u64_pair().0.max(1),
            first_seq: 1,
        };
        let pending = Arc::new(Mutex::new(VecDeque::<(Instant, u64)>::new()));
        let acked = pending.clone();
        let events = tokio::spawn(async move {
            let mut watermark = 0;
            loop {
                let publish = match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => publish,
                    Ok(_) => continue,
                    Err(_) => {
                        tally.connection_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let at = Instant::now();
                let Ok(ack) = wire::decode_ack(&publish.payload) else {
                    continue;
                };
                if ack.epoch != Some(epoch.id) || ack.watermark <= watermark {
                    continue;
                }
                tally
                    .committed
                    .fetch_add(ack.watermark - watermark, Ordering::Relaxed);
                watermark = ack.watermark;
                let mut pending = acked.lock().unwrap();
                let mut messages = tally.messages.lock().unwrap();
                while pending.front().is_some_and(|(_, last)| *last <= watermark) {
                    let (published, _) = pending.pop_front().unwrap();
                    messages.push((published, at));
                }
            }
        });
        Self {
            device_id,
            client,
            epoch,
            next_seq: 1,
            pending,
            events,
        }
    }

    /// Publishes the next records, one per body, as one message on `topic`.
    pub async fn publish(&mut self, topic: &str, bodies: Vec<Body>) -> anyhow::Result<()> {
        let now = UnixMillis::now();
        let first = self.next_seq;
        let records: Vec<Record> = bodies
            .into_iter()
            .zip(first..)
            .map(|(body, seq)| Record {
                seq,
                recorded_at: now,
                body,
            })
            .collect();
        let last = first + records.len() as u64 - 1;
        let payload = wire::encode_message(&Batch::in_epoch(records, self.epoch));
        self.next_seq = last + 1;
        self.pending
            .lock()
            .unwrap()
            .push_back((Instant::now(), last));
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
        Ok(())
    }

    /// Publishes `n` telemetry records of about 200 bytes each as one message.
    pub async fn publish_telemetry(&mut self, n: u64) -> anyhow::Result<()> {
        let bodies = (self.next_seq..self.next_seq + n)
            .map(|seq| fleet_tests::records::telemetry_200_bytes(seq).body)
            .collect();
        self.publish(&wire::topic::telemetry(self.device_id), bodies)
            .await
    }

    /// Messages published and not yet committed.
    pub fn uncommitted(&self) -> usize {
        self.pending.lock().unwrap().len()
    }
}

/// Opens a session for every device, `at_once` connecting at a time.
async fn open_all(
    devices: &[DeviceCredentials],
    root: &CertificateDer<'static>,
    broker: SocketAddr,
    tally: &Arc<Tally>,
    at_once: usize,
) -> Vec<Session> {
    let bar = crate::report::progress(devices.len() as u64, "connecting");
    let mut sessions = Vec::with_capacity(devices.len());
    for chunk in devices.chunks(at_once.max(1)) {
        let opening: Vec<_> = chunk
            .iter()
            .map(|device| Session::open(device, root, broker, tally.clone()))
            .collect();
        for session in futures_util::future::join_all(opening).await {
            bar.inc(1);
            sessions.push(session);
        }
    }
    bar.finish_and_clear();
    sessions
}

/// A tenant `name` of `n` devices provisioned on `fleetd`'s database, every one connected to
/// its gateway with a session; the pool that provisioned them stays open with it.
pub struct ConnectedFleet {
    pub db: store::Database,
    pub tenant: wire::TenantId,
    pub credentials: Vec<DeviceCredentials>,
    pub tally: Arc<Tally>,
    pub sessions: Vec<Session>,
}

impl ConnectedFleet {
    pub async fn connect(
        run: &crate::run::Run,
        fleetd: &crate::fleetd_child::Fleetd,
        name: &str,
        n: usize,
    ) -> Self {
        let db = run.test_db.open().await;
        let (tenant, credentials) =
            crate::sim::provision(&run.test_db, &db.app, &fleetd.ca, name, n).await;
        let tally = Arc::new(Tally::default());
        let sessions = open_all(
            &credentials,
            fleetd.ca.root_der(),
            fleetd.listening.broker,
            &tally,
            32,
        )
        .await;
        Self {
            db,
            tenant,
            credentials,
            tally,
            sessions,
        }
    }
}
