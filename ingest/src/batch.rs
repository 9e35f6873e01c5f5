//! From messages to per-tenant batches: topic and payload checks that need no database, and the
//! batch a writer commits in one transaction.

use std::collections::BTreeMap;
use std::time::Instant;

use store::{DeviceId, TenantId};
use time::OffsetDateTime;
use wire::topic::{self, Direction, TopicKind};
use wire::{Epoch, Record, SeqHeader};

use crate::source::{Completion, InboundMessage};

/// What one message says about its device.
#[derive(Debug)]
pub(crate) enum DeviceInput {
    /// A decoded batch from a record topic.
    Records {
        topic: TopicKind,
        /// The device's sequence space the records are numbered in.
        epoch: Epoch,
        records: Vec<Record>,
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
    let input = match wire::decode_message_with_limit(&message.payload, max_message_bytes) {
        Ok((_, batch)) => DeviceInput::Records {
            topic: parsed.kind,
            epoch: batch.epoch(),
            records: batch.records,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{AgentEvent, Batch, Body, DeviceId, Started, UnixMillis};

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
                input: DeviceInput::Records { records, topic, .. },
            } => {
                assert_eq!(d, device());
                assert_eq!(topic, TopicKind::Events);
                assert_eq!(records.len(), 1);
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
}
