//! From messages to per-tenant batches: topic and payload checks that need no database, and the
//! batch a writer commits in one transaction.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use store::{DeviceId, TenantId};
use time::OffsetDateTime;
use wire::topic::{self, Direction, TopicKind};
use wire::{Epoch, RecordView, SeqHeader};

use crate::source::{Completion, InboundMessage};

/// What one message says about its device.
#[derive(Debug)]
pub(crate) enum DeviceInput {
    /// A decoded batch from a record topic.
    Records {
        topic: TopicKind,
        /// The device's sequence space the records are numbered in.
        epoch: Epoch,
        records: Vec<RecordView>,
        /// Each record's body as the device sent it (a slice of the message, not a copy): what
        /// the ledger stores. One per record, in the same order.
        bodies: Vec<Bytes>,
        received_at: OffsetDateTime,
    },
    /// A message refused as a whole (malformed, oversize, unknown version, ...). `seqs`, from
    /// its sequence header when it had a valid one, are refused for good with it.
    Refused {
        reason: &'static str,
        error: String,
        seqs: Option<SeqHeader>,
    },
}

impl DeviceInput {
    /// How many records it carries (none when refused as a whole).
    pub(crate) fn record_count(&self) -> usize {
        match self {
            DeviceInput::Records { records, .. } => records.len(),
            DeviceInput::Refused { .. } => 0,
        }
    }
}

/// The verdict on a message before its tenant is known.
#[derive(Debug)]
pub(crate) enum Classified {
    /// For a device: look up its tenant and batch it.
    ForDevice {
        device: DeviceId,
        input: DeviceInput,
    },
    /// Not for ingest to store (presence): handled as is.
    Ignored,
    /// Refused without a device to charge it to (the topic is not a device's).
    Refused { reason: &'static str },
}

/// The `topic` metrics label of a topic string.
pub(crate) fn topic_label(topic: &str) -> &'static str {
    topic::parse_device_topic(topic)
        .map(|parsed| parsed.kind.as_str())
        .unwrap_or("invalid")
}

/// Checks the topic and decodes the payload.
pub(crate) fn classify(message: &InboundMessage, max_message_bytes: usize) -> Classified {
    let parsed = match topic::parse_device_topic(&message.topic) {
        Ok(parsed) => parsed,
        Err(e) => return Classified::Refused { reason: e.reason() },
    };
    let device = parsed.device_id;
    if parsed.kind == TopicKind::Presence {
        return Classified::Ignored;
    }
    if parsed.direction() != Direction::Up {
        return Classified::Refused {
            reason: "not_up_topic",
        };
    }
    // One pass: validation, what ingest reads of each record, and where its body lies.
    let input = match wire::decode_message_view(&message.payload, max_message_bytes) {
        Ok(view) => DeviceInput::Records {
            topic: parsed.kind,
            epoch: view.epoch,
            bodies: view
                .records
                .iter()
                .map(|record| message.payload.slice(record.span.clone()))
                .collect(),
            records: view.records,
            received_at: message.received_at,
        },
        Err(refused) => DeviceInput::Refused {
            reason: refused.error.reason(),
            error: refused.error.to_string(),
            seqs: refused.header,
        },
    };
    Classified::ForDevice { device, input }
}

/// Messages of one tenant, committed together.
#[derive(Debug)]
pub(crate) struct TenantBatch {
    pub(crate) tenant: TenantId,
    pub(crate) devices: BTreeMap<DeviceId, Vec<DeviceInput>>,
    pub(crate) completions: Vec<(Completion, OffsetDateTime)>,
    pub(crate) opened: Instant,
    /// Records plus messages: what the size limit counts.
    pub(crate) weight: usize,
}

impl TenantBatch {
    pub(crate) fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            devices: BTreeMap::new(),
            completions: Vec::new(),
            opened: Instant::now(),
            weight: 0,
        }
    }

    pub(crate) fn push(
        &mut self,
        device: DeviceId,
        input: DeviceInput,
        completion: Completion,
        received_at: OffsetDateTime,
    ) {
        self.weight += 1 + input.record_count();
        self.devices.entry(device).or_default().push(input);
        self.completions.push((completion, received_at));
    }

    /// The records it carries (its weight without the one per message).
    pub(crate) fn record_count(&self) -> usize {
        self.weight - self.completions.len()
    }
}

/// The writer that owns `device`, of `writers`: every message of a device goes to the same
/// writer, in arrival order, so a device's messages commit in order and two writers never lock
/// the same `device_ingest_state` row (they would wait on each other). A device id is random;
/// its bits are mixed anyway, so that ids made otherwise spread too.
pub(crate) fn writer_of(device: DeviceId, writers: usize) -> usize {
    let id = device.0.as_u128();
    let folded = (id as u64) ^ ((id >> 64) as u64);
    let mixed = folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    (mixed % writers.max(1) as u64) as usize
}

/// The open batches: one per tenant and writer. A message joins the batch of its tenant and of
/// its device's writer ([`writer_of`]), so each batch is for exactly one writer and the device
/// sets of the writers are disjoint by construction.
#[derive(Debug)]
pub(crate) struct OpenBatches {
    writers: usize,
    open: HashMap<(TenantId, usize), TenantBatch>,
}

impl OpenBatches {
    pub(crate) fn new(writers: usize) -> Self {
        Self {
            writers,
            open: HashMap::new(),
        }
    }

    /// Adds a message; returns its batch with its writer when it has reached `max_weight`.
    pub(crate) fn push(
        &mut self,
        tenant: TenantId,
        device: DeviceId,
        (input, completion, received_at): (DeviceInput, Completion, OffsetDateTime),
        max_weight: usize,
    ) -> Option<(usize, TenantBatch)> {
        let writer = writer_of(device, self.writers);
        let key = (tenant, writer);
        let batch = self
            .open
            .entry(key)
            .or_insert_with(|| TenantBatch::new(tenant));
        batch.push(device, input, completion, received_at);
        if batch.weight < max_weight {
            return None;
        }
        self.open.remove(&key).map(|batch| (writer, batch))
    }

    /// When the oldest open batch is due, after `window`.
    pub(crate) fn next_deadline(&self, window: Duration) -> Option<Instant> {
        self.open.values().map(|batch| batch.opened + window).min()
    }

    /// Takes the batches open for `window` or longer at `now`, with their writers.
    pub(crate) fn take_due(&mut self, now: Instant, window: Duration) -> Vec<(usize, TenantBatch)> {
        let due: Vec<(TenantId, usize)> = self
            .open
            .iter()
            .filter(|(_, batch)| batch.opened + window <= now)
            .map(|(key, _)| *key)
            .collect();
        due.into_iter()
            .filter_map(|key| self.open.remove(&key).map(|batch| (key.1, batch)))
            .collect()
    }

    /// Takes every open batch, with its writer.
    pub(crate) fn take_all(&mut self) -> Vec<(usize, TenantBatch)> {
        self.open
            .drain()
            .map(|((_, writer), batch)| (writer, batch))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{AgentEvent, Batch, Body, DeviceId, Record, Started, UnixMillis};

    fn device() -> DeviceId {
        DeviceId::parse_canonical("6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94").unwrap()
    }

    fn event_batch() -> Vec<u8> {
        wire::encode_batch(&Batch::new(vec![Record {
            seq: 1,
            recorded_at: UnixMillis(1),
            body: Body::Event(AgentEvent::Started(Started {
                agent_version: "1".into(),
            })),
        }]))
    }

    #[test]
    fn a_good_batch_is_for_its_device() {
        let message = InboundMessage::new(topic::events(device()), event_batch());
        match classify(&message, 1024) {
            Classified::ForDevice {
                device: d,
                input:
                    DeviceInput::Records {
                        records,
                        topic,
                        bodies,
                        ..
                    },
            } => {
                assert_eq!(d, device());
                assert_eq!(topic, TopicKind::Events);
                assert_eq!(records.len(), 1);
                assert_eq!(records[0].body.kind(), Some(wire::RecordKind::Event));
                let Batch { records: sent, .. } = wire::decode_batch(&event_batch()).unwrap();
                assert_eq!(bodies, vec![Bytes::from(wire::encode_body(&sent[0].body))]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_carry_stable_reasons() {
        let cases = [
            (topic::events(device()), vec![0xff, 0x00], "malformed"),
            (topic::events(device()), vec![0; 2048], "oversize"),
        ];
        for (topic, payload, expected) in cases {
            match classify(&InboundMessage::new(topic, payload), 1024) {
                Classified::ForDevice {
                    input: DeviceInput::Refused { reason, .. },
                    ..
                } => assert_eq!(reason, expected),
                other => panic!("{expected}: {other:?}"),
            }
        }
        // With a sequence header, the refusal names the seqs.
        let mut headed = wire::encode_message(&Batch::new(vec![Record {
            seq: 4,
            recorded_at: UnixMillis(1),
            body: Body::Event(AgentEvent::Started(Started {
                agent_version: "1".into(),
            })),
        }]));
        let body_starts = headed.len() - event_batch().len();
        headed.truncate(body_starts + 2);
        match classify(&InboundMessage::new(topic::events(device()), headed), 1024) {
            Classified::ForDevice {
                input: DeviceInput::Refused { reason, seqs, .. },
                ..
            } => {
                assert_eq!(reason, "malformed");
                let seqs = seqs.expect("attributed");
                assert_eq!((seqs.first_seq, seqs.last_seq), (4, 4));
            }
            other => panic!("{other:?}"),
        }
        let not_ours = InboundMessage::new("something/else", event_batch());
        assert!(matches!(
            classify(&not_ours, 1024),
            Classified::Refused {
                reason: "not_fleet_topic"
            }
        ));
        let down = InboundMessage::new(topic::ack(device()), event_batch());
        assert!(matches!(
            classify(&down, 1024),
            Classified::Refused {
                reason: "not_up_topic"
            }
        ));
        let presence = InboundMessage::new(topic::presence(device()), vec![]);
        assert!(matches!(classify(&presence, 1024), Classified::Ignored));
    }

    fn event_message(seq: u64) -> Vec<u8> {
        wire::encode_batch(&Batch::new(vec![Record {
            seq,
            recorded_at: UnixMillis(seq),
            body: Body::Event(AgentEvent::Started(Started {
                agent_version: "1".into(),
            })),
        }]))
    }

    #[tokio::test]
    async fn two_writers_never_hold_the_same_device_and_each_device_keeps_its_order() {
        const WRITERS: usize = 3;
        let (queue, mut queued) = tokio::sync::mpsc::channel(10_000);
        let sender = crate::source::IngestSender::new(queue, 1 << 24);
        let tenants = [TenantId::new_random(), TenantId::new_random()];
        let devices: Vec<(TenantId, DeviceId)> = (0..40)
            .map(|n| (tenants[n % 2], DeviceId::new_random()))
            .collect();
        let mut open = OpenBatches::new(WRITERS);
        let mut emitted = Vec::new();
        for seq in 1..=20 {
            for (tenant, device) in &devices {
                let message = InboundMessage::new(topic::events(*device), event_message(seq));
                sender.send(message).await.unwrap();
                let (message, completion) = queued.recv().await.unwrap().into_parts();
                let Classified::ForDevice { device: d, input } = classify(&message, 1024) else {
                    panic!("a good message");
                };
                let item = (input, completion, message.received_at);
                emitted.extend(open.push(*tenant, d, item, 7));
            }
        }
        emitted.extend(open.take_all());
        let mut writer_of_device: HashMap<DeviceId, usize> = HashMap::new();
        let mut last_seq: HashMap<DeviceId, u64> = HashMap::new();
        for (writer, batch) in &emitted {
            for (device, inputs) in &batch.devices {
                assert_eq!(writer_of(*device, WRITERS), *writer);
                let first = *writer_of_device.entry(*device).or_insert(*writer);
                assert_eq!(first, *writer, "a device in two writers' batches");
                assert!(
                    devices.contains(&(batch.tenant, *device)),
                    "the device's own tenant"
                );
                for input in inputs {
                    let DeviceInput::Records { records, .. } = input else {
                        panic!("records");
                    };
                    let last = last_seq.entry(*device).or_default();
                    assert!(records[0].seq > *last, "out of order");
                    *last = records[0].seq;
                }
            }
        }
        assert!(
            last_seq.values().all(|seq| *seq == 20),
            "every message batched once"
        );
        let used: std::collections::HashSet<usize> = writer_of_device.values().copied().collect();
        assert_eq!(used.len(), WRITERS, "the devices spread over every writer");
    }
}
