//! The input seam: whoever receives device messages (the embedded broker's sessions, the
//! external MQTT client, a test) hands them to ingest through an [`IngestSender`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::IngestError;

/// One MQTT message from a device, as the broker delivered it.
///
/// The device comes from the topic, which the gateway (embedded mode) or the broker's ACL
/// (external mode) guarantees is the publisher's own; the tenant is resolved from the device.
#[derive(Debug)]
pub struct InboundMessage {
    /// The topic it was published to, such as `fleet/v1/{device}/up/telemetry`.
    pub topic: String,
    /// The payload (a CBOR batch).
    pub payload: Bytes,
    /// When the server received it.
    pub received_at: OffsetDateTime,
    handled: Option<oneshot::Sender<()>>,
}

impl InboundMessage {
    /// A message received now.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            received_at: OffsetDateTime::now_utc(),
            handled: None,
        }
    }

    /// Asks to be told when ingest is done with the message: its records committed, or it was
    /// refused for good. The receiver fails (without a value) if ingest stops before that, so
    /// the message must then not be acknowledged to the broker. The external MQTT source PUBACKs
    /// on this signal.
    pub fn with_handled_signal(mut self) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        self.handled = Some(tx);
        (self, rx)
    }
}

/// A message inside ingest, holding its share of the memory budget until it is handled.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) message: InboundMessage,
    _budget: OwnedSemaphorePermit,
    progress: Arc<Progress>,
}

/// Proof that a message was handled; completing it signals the source and frees its budget.
#[derive(Debug)]
pub(crate) struct Completion {
    handled: Option<oneshot::Sender<()>>,
    _budget: OwnedSemaphorePermit,
    progress: Arc<Progress>,
}

/// When ingest last finished a message (committed or refused for good), or began holding one
/// after holding none: what readiness reads as ingest's lag.
#[derive(Debug)]
struct Progress {
    base: Instant,
    /// Milliseconds after `base`.
    last: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    fn since(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

impl Queued {
    /// Splits the message into its content and its completion.
    pub(crate) fn into_parts(self) -> (InboundMessage, Completion) {
        let Queued {
            mut message,
            _budget,
            progress,
        } = self;
        let handled = message.handled.take();
        (
            message,
            Completion {
                handled,
                _budget,
                progress,
            },
        )
    }
}

impl Completion {
    /// The message is handled (committed or refused for good).
    pub(crate) fn complete(mut self) {
        if let Some(handled) = self.handled.take() {
            // The source may have gone away (a reconnect); nothing to tell then.
            let _ = handled.send(());
        }
    }
}

impl Drop for Completion {
    /// Done with, whichever way: that is progress.
    fn drop(&mut self) {
        self.progress.touch();
    }
}

/// Hands messages to ingest. Cheap to clone; `send` waits while ingest is at its memory bound
/// (that is the backpressure: a source that waits stops reading from its broker).
#[derive(Clone, Debug)]
pub struct IngestSender {
    queue: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
    max_permits: usize,
    progress: Arc<Progress>,
    loss: LossInjector,
}

/// A test seam on the hand-off into ingest: [`drop_next`](Self::drop_next) makes
/// [`IngestSender::send`] discard the next record messages (topics `up/telemetry`, `up/patch`,
/// `up/events`) as if they had been lost in transit, so that a test can prove the device heals
/// the loss. Off (zero) unless a test arms it; nothing in the configuration reaches it.
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct LossInjector {
    armed: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl LossInjector {
    /// Discards the next `count` record messages handed to ingest.
    pub fn drop_next(&self, count: u64) {
        self.armed.store(count, Ordering::SeqCst);
    }

    /// Record messages discarded so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }

    /// Takes one armed loss for `topic` if it is a record topic.
    fn take(&self, topic: &str) -> bool {
        use wire::topic::TopicKind;
        // Off (the only state outside tests): one atomic load per message, no topic parse.
        if self.armed.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let is_record = matches!(
            wire::topic::parse_device_topic(topic),
            Ok(parsed) if matches!(
                parsed.kind,
                TopicKind::Telemetry | TopicKind::PatchStatus | TopicKind::Events
            )
        );
        if !is_record {
            return false;
        }
        let taken = self
            .armed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if taken {
            self.dropped.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(%topic, "test hook: a device message was discarded on its way into ingest");
        }
        taken
    }
}

impl IngestSender {
    pub(crate) fn new(queue: mpsc::Sender<Queued>, max_buffered_bytes: usize) -> Self {
        Self {
            queue,
            budget: Arc::new(Semaphore::new(max_buffered_bytes)),
            max_permits: max_buffered_bytes,
            progress: Arc::new(Progress::new()),
            loss: LossInjector::default(),
        }
    }

    /// The loss-injection seam of this sender (and of its clones).
    #[doc(hidden)]
    pub fn loss_injector(&self) -> LossInjector {
        self.loss.clone()
    }

    /// Queues a message, waiting for room in the memory budget and the queue.
    pub async fn send(&self, message: InboundMessage) -> Result<(), IngestError> {
        if self.loss.take(&message.topic) {
            return Ok(());
        }
        let cost = message.payload.len().clamp(1, self.max_permits);
        let cost = u32::try_from(cost).map_err(|_| IngestError::Closed)?;
        if self.buffered_bytes() == 0 {
            // Holding nothing until now: the lag counts from here, not from the last message.
            self.progress.touch();
        }
        let permit = Arc::clone(&self.budget)
            .acquire_many_owned(cost)
            .await
            .map_err(|_| IngestError::Closed)?;
        self.queue
            .send(Queued {
                message,
                _budget: permit,
                progress: Arc::clone(&self.progress),
            })
            .await
            .map_err(|_| IngestError::Closed)
    }

    /// Payload bytes ingest holds right now.
    pub fn buffered_bytes(&self) -> usize {
        self.max_permits - self.budget.available_permits()
    }

    /// How long ingest has held messages without finishing any: zero while it holds none,
    /// else the time since it last committed (or refused) one, or since it began holding them.
    /// It grows while the database is down or a writer is stuck.
    pub fn lag(&self) -> Duration {
        if self.buffered_bytes() == 0 {
            return Duration::ZERO;
        }
        self.progress.since()
    }
}
