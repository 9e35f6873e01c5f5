//! From collectors to wire records, into the outbox and back out as batches.
//!
//! # How outbox sequence numbers become wire sequence numbers
//!
//! The outbox assigns the sequence number when a record is appended and stores opaque
//! bytes. The agent stores each record as a [`wire::Record`], encoded with
//! [`wire::encode_record`] (the bytes the record has inside a batch), whose `seq` is
//! written as 0 (a placeholder: the number is not known before `append` returns), and when
//! it publishes, it decodes the stored record and sets `seq` to the number the outbox
//! stored in the record header ([`stored_to_wire`]). The outbox header is therefore the one
//! source of truth for sequence numbers: they survive restarts, never repeat, and a stored
//! record can never disagree with its header. (Encoding with `outbox.next_seq()` up front
//! would work too, but would make the payload depend on an outbox invariant the outbox does
//! not promise, and `append_drop_events` builds payloads without knowing theirs.)
//!
//! Records are validated against the wire limits before they enter the outbox
//! ([`wire::Record::validate`]): a record ingest would refuse must never jam the outbox.
//!
//! # Batches
//!
//! [`next_batch_within`] takes pending records in sequence order and groups a run of consecutive
//! records of the same kind into one [`wire::Batch`] for that kind's topic, up to
//! [`wire::limits::MAX_RECORDS_PER_BATCH`] records and the message size limit. Batches go
//! out in sequence order, so a replay after a reconnect resends exactly what is above the
//! last ack, in order.
//!
//! Each batch goes out with the wire's sequence header ([`wire::encode_message`]): its epoch
//! and first and last seq before the CBOR, so that the server can refuse it for good and move
//! its watermark past it even if the body does not decode there. The header says every seq
//! from first to last is in the message or never sent; a batch is a run of consecutive outbox
//! records of one kind, and the only numbers it leaves out are records it skipped (they cannot
//! be read back and are never sent), so that holds. A run spans at most
//! [`wire::limits::MAX_RECORDS_PER_BATCH`] seqs, the header's bound.

use crate::collect::packages::{self, PatchStatus as CollectedPatch, SecurityUpdate};
use crate::collect::system::SystemMetrics;
use crate::outbox::{self, DropReason, DropReport, Outbox, OutboxError, Seq};
use wire::{
    AgentEvent, Batch, Body, CollectorError, OutboxOverflow, PatchStatus, Record, RecordKind,
    Telemetry, UnixMillis,
};

/// Largest encoded batch: the broker's and ingest's payload limit, less room for the
/// batch envelope.
pub const MAX_BATCH_BYTES: usize = wire::limits::DEFAULT_MAX_MESSAGE_BYTES - 1024;

/// Why a record could not be queued or read back.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The record breaks a wire limit (ingest would refuse it forever).
    #[error("record refused before queuing: {0}")]
    Invalid(#[from] wire::DecodeError),
    /// The record is larger than one message may be.
    #[error("record of {0} bytes exceeds the message limit")]
    TooLarge(usize),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// A stored record could not be decoded (written by another version, or damaged in a
    /// way the outbox checksum did not catch).
    #[error("stored record {seq} cannot be decoded: {reason}")]
    Undecodable {
        /// Its sequence number.
        seq: Seq,
        /// What the decoder said.
        reason: String,
    },
}

/// Encodes a record body for the outbox (sequence number 0: see the module docs).
pub fn encode_stored(recorded_at: UnixMillis, body: Body) -> Result<Vec<u8>, RecordsError> {
    let record = Record {
        seq: 0,
        recorded_at,
        body,
    };
    record.validate()?;
    let bytes = wire::encode_record(&record);
    if bytes.len() > MAX_BATCH_BYTES {
        return Err(RecordsError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Validates and appends a record; returns its sequence number.
pub fn append(outbox: &mut Outbox, body: Body) -> Result<Seq, RecordsError> {
    let bytes = encode_stored(UnixMillis::now(), body)?;
    Ok(outbox.append(&bytes)?)
}

/// Rebuilds the wire record from an outbox record, taking the sequence number from the
/// outbox. The stored bytes are decoded under the bounds of a batch
/// ([`wire::decode_record`]).
pub fn stored_to_wire(stored: &outbox::Record) -> Result<Record, RecordsError> {
    let mut record =
        wire::decode_record(&stored.payload).map_err(|err| RecordsError::Undecodable {
            seq: stored.seq,
            reason: err.to_string(),
        })?;
    record.seq = stored.seq;
    Ok(record)
}

/// One batch ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingBatch {
    /// The kind of all its records (selects the topic).
    pub kind: RecordKind,
    /// The encoded [`wire::Batch`].
    pub payload: Vec<u8>,
    /// First and last sequence numbers in it.
    pub first_seq: Seq,
    /// Last sequence number in it.
    pub last_seq: Seq,
}

/// [`next_batch_within`] with the batch's own record limit.
#[cfg(test)]
pub fn next_batch(
    outbox: &mut Outbox,
    after: Seq,
    skipped: &mut Vec<(Seq, String)>,
) -> Result<Option<OutgoingBatch>, RecordsError> {
    next_batch_within(outbox, after, wire::limits::MAX_RECORDS_PER_BATCH, skipped)
}

/// The next batch after `after`: consecutive pending records of one kind, at most
/// `max_records` (and the batch limits). Records that cannot be decoded are skipped with a
/// warning (they would be refused by ingest anyway; the server's watermark passes over gaps
/// it is told about and the skipped number is reported in `skipped`).
pub fn next_batch_within(
    outbox: &mut Outbox,
    after: Seq,
    max_records: usize,
    skipped: &mut Vec<(Seq, String)>,
) -> Result<Option<OutgoingBatch>, RecordsError> {
    let max_records = max_records.clamp(1, wire::limits::MAX_RECORDS_PER_BATCH);
    let mut records: Vec<Record> = Vec::new();
    let mut kind = None;
    let mut bytes = 0usize;
    for stored in outbox.pending(Some(after))? {
        let stored = stored?;
        let record = match stored_to_wire(&stored) {
            Ok(record) => record,
            Err(err) => {
                skipped.push((stored.seq, err.to_string()));
                continue;
            }
        };
        let Some(record_kind) = record.kind() else {
            skipped.push((stored.seq, "unknown record kind".to_owned()));
            continue;
        };
        let size = stored.payload.len() + 16;
        // The sequence header spans at most a full batch's worth of seqs (skipped records
        // inside the run count too).
        let spans = records.first().is_none_or(|first: &Record| {
            record.seq - first.seq < wire::limits::MAX_RECORDS_PER_BATCH as u64
        });
        let fits = records.len() < max_records
            && spans
            && bytes + size <= MAX_BATCH_BYTES
            && kind.is_none_or(|k| k == record_kind);
        if !fits {
            break;
        }
        kind = Some(record_kind);
        bytes += size;
        records.push(record);
    }
    let (Some(kind), Some(first), Some(last)) = (kind, records.first(), records.last()) else {
        return Ok(None);
    };
    let (first_seq, last_seq) = (first.seq, last.seq);
    let epoch = outbox.epoch();
    let epoch = wire::Epoch {
        id: epoch.id,
        first_seq: epoch.first_seq,
    };
    let batch = Batch::in_epoch(records, epoch);
    Ok(Some(OutgoingBatch {
        kind,
        payload: wire::encode_message(&batch),
        first_seq,
        last_seq,
    }))
}

/// The topic of a record kind.
pub fn topic_for(kind: RecordKind, device: wire::DeviceId) -> String {
    match kind {
        RecordKind::Telemetry => wire::topic::telemetry(device),
        RecordKind::PatchStatus => wire::topic::patch_status(device),
        RecordKind::Event => wire::topic::events(device),
    }
}

/// Appends an `outbox_overflow` event for every pending drop report.
pub fn append_drop_events(outbox: &mut Outbox) -> Result<Vec<Seq>, RecordsError> {
    Ok(outbox.append_drop_events(|report| {
        encode_stored(UnixMillis::now(), drop_event(report))
            .expect("a drop event is small and within every limit")
    })?)
}

/// The event reporting a drop.
pub fn drop_event(report: &DropReport) -> Body {
    // Every drop reason is a gap the operators must see; the event kind is the same, the
    // reason is in the agent's log.
    let _: DropReason = report.reason;
    Body::Event(AgentEvent::OutboxOverflow(OutboxOverflow {
        dropped: report.count,
        first_seq: report.first_seq,
        last_seq: report.last_seq,
    }))
}

/// The event saying the outbox left the sequence space `previous` for `epoch` because the
/// server acknowledged `server_watermark` there when the outbox had assigned only up to
/// `last_appended`.
pub fn epoch_started(
    previous: outbox::Epoch,
    epoch: outbox::Epoch,
    server_watermark: Seq,
    last_appended: Seq,
) -> Body {
    Body::Event(AgentEvent::EpochStarted(wire::EpochStarted {
        previous: previous.id,
        epoch: epoch.id,
        first_seq: epoch.first_seq,
        server_watermark,
        last_appended,
    }))
}

/// A collector failure event; the text is cut to the wire limit.
pub fn collector_error(collector: &str, message: &str) -> Body {
    Body::Event(AgentEvent::CollectorError(CollectorError {
        collector: truncate(collector, wire::limits::MAX_NAME_BYTES),
        message: truncate(message, wire::limits::MAX_TEXT_BYTES),
    }))
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Maps system metrics to a telemetry body (capped at the wire limits).
pub fn telemetry(metrics: &SystemMetrics) -> Body {
    let cap = wire::limits::MAX_COMPONENTS;
    let name = |text: &str| truncate(text, wire::limits::MAX_NAME_BYTES);
    Body::Telemetry(Telemetry {
        cpu_usage_percent: metrics.cpu_percent.map(|p| p as f32),
        memory: metrics.memory.map(|m| wire::Memory {
            total_bytes: m.total_bytes,
            available_bytes: m.available_bytes,
        }),
        disks: metrics
            .disks
            .iter()
            .take(cap)
            .map(|d| wire::Disk {
                mount: name(&d.mount.mount_point),
                total_bytes: d.total_bytes,
                free_bytes: d.available_bytes,
            })
            .collect(),
        temperatures: metrics
            .temperatures
            .iter()
            .take(cap)
            .map(|t| wire::Temperature {
                zone: name(if t.kind.is_empty() { &t.zone } else { &t.kind }),
                celsius: t.celsius as f32,
            })
            .collect(),
        uptime_secs: metrics.uptime.map(|u| u.as_secs()),
        load: metrics.load.map(|l| wire::LoadAverage {
            one: l.one as f32,
            five: l.five as f32,
            fifteen: l.fifteen as f32,
        }),
        network: metrics
            .network
            .iter()
            .take(cap)
            .map(|n| wire::NetworkInterface {
                name: name(&n.name),
                rx_bytes: n.rx_bytes,
                tx_bytes: n.tx_bytes,
                rx_packets: n.rx_packets,
                tx_packets: n.tx_packets,
                rx_errors: n.rx_errors,
                tx_errors: n.tx_errors,
            })
            .collect(),
        custom: Default::default(),
    })
}

/// Maps a collected patch status to the wire body: installed packages with their upgrade
/// candidate and security flag merged in (capped at the wire limits).
pub fn patch_status(status: &CollectedPatch, lists_refreshed_at: Option<UnixMillis>) -> Body {
    let name = |text: &str| truncate(text, wire::limits::MAX_NAME_BYTES);
    let upgrade_of = |package: &str| status.upgrades.iter().find(|u| u.name == package);
    let packages = status
        .installed
        .iter()
        .take(wire::limits::MAX_PACKAGES)
        .map(|p| {
            let upgrade = upgrade_of(&p.name);
            wire::Package {
                name: name(&p.name),
                installed: name(&p.version),
                candidate: upgrade.map(|u| name(&u.candidate_version)),
                security: upgrade.is_some_and(|u| u.security == SecurityUpdate::Yes),
            }
        })
        .collect();
    let os = status.os.as_ref();
    Body::PatchStatus(PatchStatus {
        os_id: name(os.and_then(|o| o.id.as_deref()).unwrap_or("unknown")),
        os_version: name(os.and_then(|o| o.version_id.as_deref()).unwrap_or("")),
        package_manager: match status.manager {
            packages::PackageManager::Apt => wire::PackageManager::Apt,
            packages::PackageManager::Apk => wire::PackageManager::Apk,
            packages::PackageManager::Opkg => wire::PackageManager::Opkg,
        },
        packages,
        reboot_required: status.reboot.required,
        lists_refreshed_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::packages::{InstalledPackage, OsRelease, RebootRequired, Upgrade};
    use crate::collect::system::{LoadAverage, Memory};
    use crate::outbox::{FsyncPolicy, OutboxConfig};

    fn outbox(dir: &std::path::Path) -> Outbox {
        let config = OutboxConfig {
            max_bytes: 8 * 1024 * 1024,
            segment_bytes: 1024 * 1024,
            fsync: FsyncPolicy::Never,
        };
        Outbox::open(dir, config).unwrap().0
    }

    fn event(text: &str) -> Body {
        collector_error("test", text)
    }

    #[test]
    fn stored_records_take_their_seq_from_the_outbox() {
        let tmp = tempfile::tempdir().unwrap();
        let mut outbox = outbox(tmp.path());
        let first = append(&mut outbox, event("a")).unwrap();
        let second = append(&mut outbox, event("b")).unwrap();
        assert_eq!((first, second), (1, 2));
        let stored: Vec<_> = outbox.pending(None).unwrap().map(Result::unwrap).collect();
        let wire_records: Vec<_> = stored.iter().map(|s| stored_to_wire(s).unwrap()).collect();
        assert_eq!(wire_records[0].seq, 1);
        assert_eq!(wire_records[1].seq, 2);
        assert_eq!(wire_records[1].body, event("b"));
    }

    /// A record as agent 0.1 stored it (ciborium directly, before `wire::encode_record`):
    /// `collector_error("system", "1 problem(s); first: no thermal zones")` at
    /// 1 700 000 000 000 ms, seq 0.
    const STORED_BY_0_1: &str = "a361730061741b0000018bcfe568006162a163657674a16f636f6c6c6563\
        746f725f6572726f72a269636f6c6c6563746f726673797374656d676d657373616765782531207072\
        6f626c656d2873293b2066697273743a206e6f20746865726d616c207a6f6e6573";

    fn unhex(text: &str) -> Vec<u8> {
        let text: String = text.split_whitespace().collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn records_stored_by_earlier_agents_still_decode_and_are_written_the_same() {
        let old = unhex(STORED_BY_0_1);
        let body = collector_error("system", "1 problem(s); first: no thermal zones");
        let stored = outbox::Record {
            seq: 42,
            payload: old.clone(),
        };
        let record = stored_to_wire(&stored).unwrap();
        assert_eq!(
            record,
            Record {
                seq: 42,
                recorded_at: UnixMillis(1_700_000_000_000),
                body: body.clone()
            }
        );
        assert_eq!(
            encode_stored(UnixMillis(1_700_000_000_000), body).unwrap(),
            old,
            "the outbox format is unchanged"
        );
        // And through a real outbox, as after an upgrade of the agent.
        let tmp = tempfile::tempdir().unwrap();
        let mut outbox = outbox(tmp.path());
        outbox.append(&old).unwrap();
        let batch = next_batch(&mut outbox, 0, &mut Vec::new())
            .unwrap()
            .unwrap();
        let (header, decoded) = wire::decode_message_with_limit(
            &batch.payload,
            wire::limits::DEFAULT_MAX_MESSAGE_BYTES,
        )
        .unwrap();
        let header = header.expect("the agent sends the sequence header");
        assert_eq!((header.first_seq, header.last_seq), (1, 1));
        assert_eq!(header.epoch.id, outbox.epoch().id);
        assert_eq!(decoded.records[0].seq, 1);
        assert_eq!(decoded.records[0].body, record.body);
    }

    #[test]
    fn a_batch_spans_at_most_what_its_sequence_header_can_carry() {
        let tmp = tempfile::tempdir().unwrap();
        let mut outbox = outbox(tmp.path());
        let tel = telemetry(&SystemMetrics::default());
        append(&mut outbox, tel.clone()).unwrap(); // 1
        let max = wire::limits::MAX_RECORDS_PER_BATCH as u64;
        for _ in 0..max {
            outbox.append(&[0xff]).unwrap(); // 2..=1025, unreadable, skipped
        }
        append(&mut outbox, tel).unwrap(); // 1026
        let mut skipped = Vec::new();
        let first = next_batch(&mut outbox, 0, &mut skipped).unwrap().unwrap();
        assert_eq!((first.first_seq, first.last_seq), (1, 1));
        let second = next_batch(&mut outbox, 1, &mut skipped).unwrap().unwrap();
        assert_eq!((second.first_seq, second.last_seq), (max + 2, max + 2));
        for batch in [first, second] {
            let (header, _) = wire::decode_message_with_limit(&batch.payload, 1 << 20).unwrap();
            let header = header.expect("every batch has its header");
            assert_eq!(
                (header.first_seq, header.last_seq),
                (batch.first_seq, batch.last_seq)
            );
        }
        assert!(!skipped.is_empty());
    }

    #[test]
    fn batches_group_runs_of_one_kind_in_seq_order() {
        let tmp = tempfile::tempdir().unwrap();
        let mut outbox = outbox(tmp.path());
        let tel = telemetry(&SystemMetrics::default());
        append(&mut outbox, tel.clone()).unwrap(); // 1
        append(&mut outbox, tel.clone()).unwrap(); // 2
        append(&mut outbox, event("x")).unwrap(); // 3
        append(&mut outbox, tel).unwrap(); // 4
        let mut skipped = Vec::new();
        let mut after = 0;
        let mut seen = Vec::new();
        while let Some(batch) = next_batch(&mut outbox, after, &mut skipped).unwrap() {
            let decoded = wire::decode_batch(&batch.payload).unwrap();
            let seqs: Vec<_> = decoded.records.iter().map(|r| r.seq).collect();
            for record in &decoded.records {
                assert_eq!(record.kind(), Some(batch.kind));
            }
            seen.push((batch.kind, seqs));
            after = batch.last_seq;
        }
        assert_eq!(
            seen,
            vec![
                (RecordKind::Telemetry, vec![1, 2]),
                (RecordKind::Event, vec![3]),
                (RecordKind::Telemetry, vec![4]),
            ]
        );
        assert!(skipped.is_empty());
    }

    #[test]
    fn ack_trims_and_replay_starts_above_the_watermark() {
        let tmp = tempfile::tempdir().unwrap();
        let mut outbox = outbox(tmp.path());
        for i in 0..5 {
            append(&mut outbox, event(&i.to_string())).unwrap();
        }
        outbox.ack(3).unwrap();
        let floor = outbox.last_acked().unwrap_or(0);
        let batch = next_batch(&mut outbox, floor, &mut Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!((batch.first_seq, batch.last_seq), (4, 5));
        // An ack beyond what was appended is refused and changes nothing.
        assert!(outbox.ack(99).is_err());
        assert_eq!(outbox.last_acked(), Some(3));
        outbox.ack(5).unwrap();
        assert!(next_batch(&mut outbox, 5, &mut Vec::new())
            .unwrap()
            .is_none());
        assert_eq!(outbox.depth().records, 0);
    }

    #[test]
    fn batches_respect_the_record_count_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let mut outbox = outbox(tmp.path());
        for _ in 0..(wire::limits::MAX_RECORDS_PER_BATCH + 3) {
            append(&mut outbox, event("e")).unwrap();
        }
        let first = next_batch(&mut outbox, 0, &mut Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(first.last_seq, wire::limits::MAX_RECORDS_PER_BATCH as u64);
        let second = next_batch(&mut outbox, first.last_seq, &mut Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(second.last_seq - second.first_seq + 1, 3);
        let capped = next_batch_within(&mut outbox, 0, 10, &mut Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!((capped.first_seq, capped.last_seq), (1, 10));
    }

    #[test]
    fn undecodable_stored_records_are_skipped_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let mut outbox = outbox(tmp.path());
        outbox.append(b"\xff\x00 not cbor").unwrap();
        append(&mut outbox, event("ok")).unwrap();
        let mut skipped = Vec::new();
        let batch = next_batch(&mut outbox, 0, &mut skipped).unwrap().unwrap();
        assert_eq!((batch.first_seq, batch.last_seq), (2, 2));
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].0, 1);
    }

    #[test]
    fn invalid_records_never_enter_the_outbox() {
        let tmp = tempfile::tempdir().unwrap();
        let mut outbox = outbox(tmp.path());
        let body = Body::Event(AgentEvent::CollectorError(CollectorError {
            collector: "x".repeat(wire::limits::MAX_NAME_BYTES + 1),
            message: String::new(),
        }));
        assert!(matches!(
            append(&mut outbox, body),
            Err(RecordsError::Invalid(_))
        ));
        assert_eq!(outbox.next_seq(), 1);
    }

    #[test]
    fn drop_reports_become_overflow_events() {
        let tmp = tempfile::tempdir().unwrap();
        let config = OutboxConfig {
            max_bytes: 128 * 1024,
            segment_bytes: 64 * 1024,
            fsync: FsyncPolicy::Never,
        };
        let mut outbox = Outbox::open(tmp.path(), config).unwrap().0;
        let big = "y".repeat(1000);
        for _ in 0..200 {
            append(&mut outbox, event(&big)).unwrap();
        }
        assert!(!outbox.drop_reports().is_empty());
        let seqs = append_drop_events(&mut outbox).unwrap();
        assert!(!seqs.is_empty());
        assert!(outbox.drop_reports().is_empty());
        let last: Vec<_> = outbox
            .pending(Some(seqs[0] - 1))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let record = stored_to_wire(&last[0]).unwrap();
        let Body::Event(AgentEvent::OutboxOverflow(overflow)) = record.body else {
            panic!("not an overflow event: {record:?}");
        };
        assert!(overflow.dropped > 0);
        assert!(overflow.first_seq <= overflow.last_seq);
    }

    #[test]
    fn telemetry_maps_every_part() {
        let metrics = SystemMetrics {
            cpu_percent: Some(12.5),
            memory: Some(Memory {
                total_bytes: 100,
                available_bytes: 40,
                swap_total_bytes: 0,
                swap_free_bytes: 0,
            }),
            uptime: Some(std::time::Duration::from_secs(99)),
            load: Some(LoadAverage {
                one: 1.0,
                five: 0.5,
                fifteen: 0.25,
            }),
            ..Default::default()
        };
        let Body::Telemetry(t) = telemetry(&metrics) else {
            panic!()
        };
        assert_eq!(t.cpu_usage_percent, Some(12.5));
        assert_eq!(t.memory.unwrap().available_bytes, 40);
        assert_eq!(t.uptime_secs, Some(99));
        assert_eq!(t.load.unwrap().fifteen, 0.25);
        let record = encode_stored(UnixMillis(1), Body::Telemetry(t)).unwrap();
        assert!(record.len() < 100);
    }

    #[test]
    fn patch_status_merges_upgrades_into_packages() {
        let status = CollectedPatch {
            manager: packages::PackageManager::Apt,
            os: Some(OsRelease {
                id: Some("debian".into()),
                version_id: Some("12".into()),
                ..Default::default()
            }),
            installed: vec![
                InstalledPackage {
                    name: "openssl".into(),
                    version: "3.0.1".into(),
                },
                InstalledPackage {
                    name: "bash".into(),
                    version: "5.2".into(),
                },
            ],
            upgrades: vec![Upgrade {
                name: "openssl".into(),
                installed_version: Some("3.0.1".into()),
                candidate_version: "3.0.2".into(),
                architecture: None,
                origins: vec![],
                security: SecurityUpdate::Yes,
            }],
            reboot: RebootRequired {
                required: true,
                packages: vec![],
            },
            problems: vec![],
        };
        let Body::PatchStatus(p) = patch_status(&status, Some(UnixMillis(5))) else {
            panic!()
        };
        assert_eq!((p.os_id.as_str(), p.os_version.as_str()), ("debian", "12"));
        assert_eq!(p.packages[0].candidate.as_deref(), Some("3.0.2"));
        assert!(p.packages[0].security);
        assert_eq!(p.packages[1].candidate, None);
        assert!(p.reboot_required);
        assert_eq!(p.lists_refreshed_at, Some(UnixMillis(5)));
    }

    #[test]
    fn collector_error_text_is_cut_at_a_char_boundary() {
        let Body::Event(AgentEvent::CollectorError(e)) = collector_error("c", &"é".repeat(2000))
        else {
            panic!()
        };
        assert!(e.message.len() <= wire::limits::MAX_TEXT_BYTES);
        assert!(Record {
            seq: 1,
            recorded_at: UnixMillis(0),
            body: collector_error("c", &"é".repeat(2000))
        }
        .validate()
        .is_ok());
    }
}
