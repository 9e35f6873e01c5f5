//! The running pipeline: one batcher task and `writers` writer tasks.
//!
//! ```text
//! IngestSender ──bounded queue──▶ batcher ──a channel per writer──▶ writers (N) ──COMMIT──▶ AckSink
//!   (byte budget)                 per tenant and writer               one TenantTx each   then handled
//! ```
//!
//! Each device belongs to one writer ([`writer_of`](crate::batch::writer_of)), so writers never
//! wait on each other's state-row locks, and a device's messages commit in arrival order.
//!
//! Backpressure: every message holds its payload's share of the byte budget until it is handled.
//! While Postgres is down a writer retries its batch with backoff; the batch channel fills, the
//! batcher stops reading, the queue fills, the budget runs out, and `IngestSender::send` waits:
//! nothing is acknowledged and memory stays bounded. When Postgres returns, all of it drains.

use std::sync::Arc;
use std::time::Instant;

use store::{AppDb, StoreError, TenantId};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use wire::backoff::Backoff;

use crate::batch::{classify, topic_label, Classified, OpenBatches, TenantBatch};
use crate::commit::{refuse_share, shares, write_shares, DeviceShare, Outcome};
use crate::directory::Directory;
use crate::metrics::{Metrics, TopicLabel};
use crate::sink::{AckSink, NoStreams, StreamSink};
use crate::source::{IngestSender, Queued};
use crate::{IngestConfig, IngestError};

/// The running ingest pipeline.
pub struct IngestHandle {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    sender: IngestSender,
}

impl IngestHandle {
    /// Stops taking messages, commits what is batched (giving up on a batch whose database stays
    /// down: its messages are then never acknowledged, so the broker or device sends them again),
    /// and waits for the tasks to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Payload bytes held right now.
    pub fn buffered_bytes(&self) -> usize {
        self.sender.buffered_bytes()
    }

    /// [`IngestSender::lag`].
    pub fn lag(&self) -> std::time::Duration {
        self.sender.lag()
    }

    /// [`Self::lag`], as a probe that outlives the handle's borrow (for readiness).
    pub fn lag_probe(&self) -> impl Fn() -> std::time::Duration + Send + Sync + 'static {
        let sender = self.sender.clone();
        move || sender.lag()
    }
}

/// Starts ingest: records from `IngestSender` into the database as `app`, acks to `acks`.
pub fn start(
    config: IngestConfig,
    app: AppDb,
    acks: Arc<dyn AckSink>,
    metrics: Metrics,
) -> Result<(IngestSender, IngestHandle), IngestError> {
    start_with_streams(config, app, acks, Arc::new(NoStreams), metrics)
}

/// [`start`], handing every commit's inserted records to `streams` (live streams).
pub fn start_with_streams(
    config: IngestConfig,
    app: AppDb,
    acks: Arc<dyn AckSink>,
    streams: Arc<dyn StreamSink>,
    metrics: Metrics,
) -> Result<(IngestSender, IngestHandle), IngestError> {
    config.validate()?;
    let (queue_tx, queue_rx) = mpsc::channel(config.queue_capacity);
    let sender = IngestSender::new(queue_tx, config.max_buffered_bytes);
    let (batch_txs, batch_rxs): (Vec<_>, Vec<_>) =
        (0..config.writers).map(|_| mpsc::channel(1)).unzip();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let config = Arc::new(config);
    let mut tasks = Vec::with_capacity(config.writers + 1);
    let batcher = Batcher {
        directory: Directory::new(
            app.clone(),
            config.directory_ttl,
            config.directory_negative_ttl,
            config.directory_capacity,
        ),
        config: Arc::clone(&config),
        metrics: metrics.clone(),
        open: OpenBatches::new(config.writers),
        out: batch_txs,
        shutdown: shutdown_rx.clone(),
    };
    tasks.push(tokio::spawn(batcher.run(queue_rx)));
    for batches in batch_rxs {
        let writer = Writer {
            app: app.clone(),
            acks: Arc::clone(&acks),
            streams: Arc::clone(&streams),
            config: Arc::clone(&config),
            metrics: metrics.clone(),
            shutdown: shutdown_rx.clone(),
            sender: sender.clone(),
        };
        tasks.push(tokio::spawn(writer.run(batches)));
    }
    let handle = IngestHandle {
        shutdown,
        tasks,
        sender: sender.clone(),
    };
    Ok((sender, handle))
}

struct Batcher {
    directory: Directory,
    config: Arc<IngestConfig>,
    metrics: Metrics,
    open: OpenBatches,
    /// One channel per writer, indexed as `writer_of` numbers them.
    out: Vec<mpsc::Sender<TenantBatch>>,
    shutdown: watch::Receiver<bool>,
}

impl Batcher {
    async fn run(mut self, mut queue: mpsc::Receiver<Queued>) {
        loop {
            let deadline = self.open.next_deadline(self.config.batch_window);
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                message = queue.recv() => match message {
                    Some(message) => {
                        if self.accept(message).await.is_err() {
                            break;
                        }
                        // Decoding is CPU work on a runtime thread the writers share: let a
                        // writer whose statement has returned go on at once rather than idle
                        // in its transaction behind a backlog of messages.
                        tokio::task::yield_now().await;
                    }
                    None => break,
                },
                _ = sleep_until(deadline), if deadline.is_some() => {
                    if self.flush_due().await.is_err() {
                        break;
                    }
                }
            }
        }
        for (writer, batch) in self.open.take_all() {
            if self.send(writer, batch).await.is_err() {
                break;
            }
        }
    }

    /// Classifies a message and adds it to its tenant's batch. Err: the writers are gone.
    async fn accept(&mut self, queued: Queued) -> Result<(), Closed> {
        let (message, completion) = queued.into_parts();
        self.metrics
            .messages
            .get_or_create(&TopicLabel {
                topic: topic_label(&message.topic),
            })
            .inc();
        let (device, input) = match classify(&message, self.config.max_message_bytes) {
            Classified::ForDevice { device, input } => (device, input),
            Classified::Ignored => {
                completion.complete();
                return Ok(());
            }
            Classified::Refused { reason } => {
                self.metrics.reject(reason, 1);
                completion.complete();
                return Ok(());
            }
        };
        let Some(tenant) = self.tenant_of(device).await? else {
            self.metrics.reject("unknown_device", 1);
            completion.complete();
            return Ok(());
        };
        let item = (input, completion, message.received_at);
        if let Some((writer, full)) =
            self.open
                .push(tenant, device, item, self.config.batch_max_records)
        {
            self.send(writer, full).await?;
        }
        Ok(())
    }

    /// The device's tenant, retrying while the database is unreachable.
    async fn tenant_of(&mut self, device: store::DeviceId) -> Result<Option<TenantId>, Closed> {
        let mut backoff = Backoff::new(self.config.retry_initial, self.config.retry_max);
        loop {
            match self.directory.tenant_of(device).await {
                Ok(tenant) => return Ok(tenant),
                Err(e) => {
                    tracing::warn!(error = %e, "device directory lookup failed; retrying");
                    wait(&mut backoff, &mut self.shutdown).await?;
                }
            }
        }
    }

    async fn flush_due(&mut self) -> Result<(), Closed> {
        let due = self.open.take_due(Instant::now(), self.config.batch_window);
        for (writer, batch) in due {
            self.send(writer, batch).await?;
        }
        Ok(())
    }

    /// Hands `batch` to its writer, waiting while that writer is busy.
    async fn send(&self, writer: usize, batch: TenantBatch) -> Result<(), Closed> {
        self.out[writer].send(batch).await.map_err(|_| Closed)
    }
}

struct Writer {
    app: AppDb,
    acks: Arc<dyn AckSink>,
    streams: Arc<dyn StreamSink>,
    config: Arc<IngestConfig>,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
    sender: IngestSender,
}

impl Writer {
    async fn run(mut self, mut batches: mpsc::Receiver<TenantBatch>) {
        while let Some(batch) = batches.recv().await {
            let started = Instant::now();
            let Ok(outcome) = self.commit_with_retry(&batch).await else {
                // Shut down while the database was away: nothing acknowledged, nothing lost.
                break;
            };
            self.metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics
                .batch_records
                .observe(batch.record_count() as f64);
            // Before the acks: once a device holds its ack, its records are on their way to
            // the stream (offer never waits).
            crate::stream::offer_committed(&*self.streams, &batch, &outcome.inserted);
            self.publish_acks(&outcome).await;
            self.finish(batch, &outcome);
        }
    }

    /// Commits, retrying transient failures with backoff. When the database refuses the data
    /// (a data exception or a constraint), the batch is written again one device's share at a
    /// time, so only the devices whose own records are refused lose them ([`refuse_share`]).
    /// Any other permanent failure (a bug) refuses the batch's messages as `storage_error`
    /// without acknowledging any record: the devices send them again later.
    async fn commit_with_retry(&mut self, batch: &TenantBatch) -> Result<Outcome, Closed> {
        let shares = shares(batch);
        match self.commit_shares(batch.tenant, &shares).await? {
            Ok(outcome) => Ok(outcome),
            Err(e) if e.is_data_refusal() && shares.len() > 1 => {
                tracing::warn!(error = %e, tenant = %batch.tenant, devices = shares.len(), "batch refused by the database; writing it device by device");
                let mut outcome = Outcome::default();
                for share in shares {
                    outcome.merge(self.commit_share_alone(batch.tenant, share).await?);
                }
                Ok(outcome)
            }
            Err(e) if e.is_data_refusal() => self.refuse(batch.tenant, shares[0], &e).await,
            Err(e) => Ok(self.storage_error(batch.tenant, batch.completions.len(), &e)),
        }
    }

    /// One device's share in a transaction of its own; refused for good if the database
    /// refuses its data again.
    async fn commit_share_alone(
        &mut self,
        tenant: TenantId,
        share: DeviceShare<'_>,
    ) -> Result<Outcome, Closed> {
        match self.commit_shares(tenant, &[share]).await? {
            Ok(outcome) => Ok(outcome),
            Err(e) if e.is_data_refusal() => self.refuse(tenant, share, &e).await,
            Err(e) => Ok(self.storage_error(tenant, share.1.len(), &e)),
        }
    }

    async fn refuse(
        &mut self,
        tenant: TenantId,
        share: DeviceShare<'_>,
        refusal: &StoreError,
    ) -> Result<Outcome, Closed> {
        tracing::warn!(error = %refusal, %tenant, device = %share.0, "the database refuses this device's records; refusing them for good");
        let mut backoff = Backoff::new(self.config.retry_initial, self.config.retry_max);
        loop {
            match refuse_share(
                &self.app,
                tenant,
                share,
                refusal,
                self.config.max_pending_ranges,
            )
            .await
            {
                Ok(outcome) => return Ok(outcome),
                Err(e) if e.is_transient() => {
                    self.metrics.commit_retries.inc();
                    wait(&mut backoff, &mut self.shutdown).await?;
                }
                Err(e) => return Ok(self.storage_error(tenant, share.1.len(), &e)),
            }
        }
    }

    /// Writes `shares` in one transaction, retrying transient failures; the permanent error,
    /// if any.
    async fn commit_shares(
        &mut self,
        tenant: TenantId,
        shares: &[DeviceShare<'_>],
    ) -> Result<Result<Outcome, StoreError>, Closed> {
        let mut backoff = Backoff::new(self.config.retry_initial, self.config.retry_max);
        loop {
            match write_shares(&self.app, tenant, shares, self.config.max_pending_ranges).await {
                Ok(outcome) => return Ok(Ok(outcome)),
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, %tenant, "batch commit failed; retrying");
                    self.metrics.commit_retries.inc();
                    wait(&mut backoff, &mut self.shutdown).await?;
                }
                Err(e) => return Ok(Err(e)),
            }
        }
    }

    /// A permanent failure that is not the data's: `messages` refused as `storage_error`,
    /// nothing acknowledged.
    fn storage_error(&self, tenant: TenantId, messages: usize, e: &StoreError) -> Outcome {
        tracing::error!(error = %e, %tenant, "batch refused by the database");
        let mut outcome = Outcome::default();
        outcome.rejects.insert("storage_error", messages as u64);
        outcome
    }

    async fn publish_acks(&self, outcome: &Outcome) {
        for ack in &outcome.acks {
            let watermark = u64::try_from(ack.watermark).unwrap_or(0);
            // The epoch id is stored bit for bit.
            let mut message = wire::Ack::in_epoch(watermark, ack.epoch as u64);
            message.new_epoch = ack.new_epoch;
            message.fit_handled_above(ack.handled_above.iter().map(|&(first, last)| {
                (
                    u64::try_from(first).unwrap_or(0),
                    u64::try_from(last).unwrap_or(0),
                )
            }));
            let payload = wire::encode_ack(&message);
            match self.acks.publish_ack(ack.device, payload).await {
                Ok(()) => {
                    self.metrics.acks_published.inc();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ack not published");
                    self.metrics.ack_failures.inc();
                }
            }
        }
    }

    fn finish(&self, batch: TenantBatch, outcome: &Outcome) {
        self.metrics.records_committed.inc_by(outcome.committed);
        self.metrics.records_duplicate.inc_by(outcome.duplicates);
        for (reason, count) in &outcome.rejects {
            self.metrics.reject(reason, *count);
        }
        let now = OffsetDateTime::now_utc();
        for (completion, received_at) in batch.completions {
            let lag = (now - received_at).as_seconds_f64().max(0.0);
            self.metrics.commit_lag_seconds.observe(lag);
            completion.complete();
        }
        self.metrics
            .buffered_bytes
            .set(self.sender.buffered_bytes() as i64);
    }
}

/// The writers or the whole pipeline are gone.
#[derive(Debug)]
struct Closed;

/// Sleeps for the next delay of `backoff` (the retry policy shared with the agent, here
/// without jitter), unless shutdown comes first.
async fn wait(backoff: &mut Backoff, shutdown: &mut watch::Receiver<bool>) -> Result<(), Closed> {
    if *shutdown.borrow() {
        return Err(Closed);
    }
    let delay = backoff.next_delay();
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = shutdown.changed() => Err(Closed),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
