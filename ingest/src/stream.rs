//! The records a commit inserted, for live streams ([`StreamSink`]).

use std::collections::HashSet;

use store::DeviceId;

use crate::batch::{DeviceInput, TenantBatch};
use crate::sink::{CommittedRecord, StreamSink};

/// Offers `sink` the records of `batch` that its commit inserted (`inserted`: (device, seq)),
/// each once, in batch order. Builds nothing unless the sink wants the batch's tenant.
pub(crate) fn offer_committed(
    sink: &dyn StreamSink,
    batch: &TenantBatch,
    inserted: &HashSet<(DeviceId, i64)>,
) {
    if inserted.is_empty() || !sink.wants(batch.tenant) {
        return;
    }
    let mut unsent = inserted.clone();
    let mut records = Vec::with_capacity(inserted.len());
    for (device, inputs) in &batch.devices {
        for input in inputs {
            let DeviceInput::Records {
                topic,
                epoch,
                records: batch_records,
                bodies,
                ..
            } = input
            else {
                continue;
            };
            for (record, body) in batch_records.iter().zip(bodies) {
                let Ok(seq) = i64::try_from(record.seq) else {
                    continue;
                };
                if !unsent.remove(&(*device, seq)) {
                    continue;
                }
                // Decoded only now, for a tenant someone streams: the bytes passed ingest's
                // decoder, which accepts what this one does (wire's tests hold them to it).
                let body = match wire::decode_body_with_limit(body, body.len()) {
                    Ok(body) => body,
                    Err(e) => {
                        tracing::warn!(error = %e, %device, seq, "a committed body does not decode; not streamed");
                        continue;
                    }
                };
                records.push(CommittedRecord {
                    tenant: batch.tenant,
                    device: *device,
                    kind: *topic,
                    epoch: epoch.id,
                    seq: record.seq,
                    recorded_at: record.recorded_at,
                    body,
                });
            }
        }
    }
    sink.offer(records);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use time::OffsetDateTime;
    use wire::topic::TopicKind;
    use wire::{Body, BodyView, Epoch, RecordView, Telemetry, UnixMillis};

    use super::*;

    #[derive(Default)]
    struct Collect {
        wanted: bool,
        records: Mutex<Vec<CommittedRecord>>,
    }

    impl StreamSink for Collect {
        fn wants(&self, _tenant: store::TenantId) -> bool {
            self.wanted
        }
        fn offer(&self, records: Vec<CommittedRecord>) {
            self.records.lock().unwrap().extend(records);
        }
    }

    fn record(seq: u64) -> RecordView {
        RecordView {
            seq,
            recorded_at: UnixMillis(1_700_000_000_000 + seq),
            body: BodyView::Telemetry,
            span: 0..0,
        }
    }

    fn batch(device: DeviceId) -> TenantBatch {
        let mut batch = TenantBatch::new(store::TenantId::new_random());
        let input = |seqs: &[u64]| DeviceInput::Records {
            topic: TopicKind::Telemetry,
            epoch: Epoch {
                id: 7,
                first_seq: 1,
            },
            records: seqs.iter().copied().map(record).collect(),
            bodies: seqs
                .iter()
                .map(|_| wire::encode_body(&Body::Telemetry(Telemetry::default())).into())
                .collect(),
            received_at: OffsetDateTime::now_utc(),
        };
        // Seq 2 twice (a replay inside the batch), seq 3 not inserted (a duplicate).
        batch
            .devices
            .insert(device, vec![input(&[1, 2]), input(&[2, 3])]);
        batch
    }

    #[test]
    fn only_inserted_records_are_offered_once_each() {
        let device = DeviceId::new_random();
        let batch = batch(device);
        let inserted: HashSet<(DeviceId, i64)> = [(device, 1), (device, 2)].into();
        let sink = Collect {
            wanted: true,
            ..Collect::default()
        };
        offer_committed(&sink, &batch, &inserted);
        let records = sink.records.lock().unwrap();
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2]);
        assert!(records.iter().all(|r| r.epoch == 7 && r.device == device));
        assert_eq!(records[0].tenant, batch.tenant);
        assert_eq!(records[1].recorded_at, UnixMillis(1_700_000_000_002));
        assert_eq!(records[1].body, Body::Telemetry(Telemetry::default()));
    }

    #[test]
    fn nothing_is_built_when_the_sink_does_not_want_the_tenant() {
        let device = DeviceId::new_random();
        let sink = Collect::default();
        offer_committed(&sink, &batch(device), &[(device, 1)].into());
        assert!(sink.records.lock().unwrap().is_empty());
    }
}
