//! One tenant batch, one transaction: lock the devices' ingest state in id order, drop what is
//! already handled, apply new patch reports, advance each watermark, then insert the rest and
//! save the state rows in one statement (a plain INSERT: what the state rows do not know is new,
//! so nothing to return; should a row collide anyway, the transaction is written again with
//! `ON CONFLICT DO NOTHING RETURNING` first), commit. Acks are built from what was committed.
//!
//! When the database refuses a batch's data, the pipeline writes it again one device's share at
//! a time ([`write_shares`]), and refuses for good only the shares the database still refuses
//! ([`refuse_share`]): one device's bad record never costs another device its ack.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;

use store::ingest_state::{self, IngestState, LockedDevice};
use store::patch_inventory::{self, PackageRow, PatchReport};
use store::records::{self, NewRecords, RecordKind};
use store::{AppDb, DeviceId, StoreError, TenantId, TenantTx};
use time::OffsetDateTime;
use wire::topic::{self, TopicKind};
use wire::{BodyView, PatchStatus, RecordView, UnixMillis};

use crate::batch::{DeviceInput, TenantBatch};
use crate::watermark::HandledSeqs;

/// What a committed batch did.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// What to acknowledge to every device that may be acknowledged.
    pub(crate) acks: Vec<AckOut>,
    pub(crate) committed: u64,
    pub(crate) duplicates: u64,
    pub(crate) rejects: BTreeMap<&'static str, u64>,
    /// The (device, seq) of every record the commit inserted (for live streams).
    pub(crate) inserted: HashSet<(DeviceId, i64)>,
}

impl Outcome {
    fn reject(&mut self, reason: &'static str) {
        *self.rejects.entry(reason).or_default() += 1;
    }

    /// Adds what `other` (another transaction of the same batch) did.
    pub(crate) fn merge(&mut self, other: Outcome) {
        self.acks.extend(other.acks);
        self.committed += other.committed;
        self.duplicates += other.duplicates;
        self.inserted.extend(other.inserted);
        for (reason, count) in other.rejects {
            *self.rejects.entry(reason).or_default() += count;
        }
    }
}

/// One device's ack after the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AckOut {
    pub(crate) device: DeviceId,
    /// The epoch the watermark counts in (a `wire::Epoch` id, bit for bit).
    pub(crate) epoch: i64,
    /// The durable watermark.
    pub(crate) watermark: i64,
    /// The lowest handled ranges above the watermark (the ack carries those that fit), so that
    /// an agent that evicted records it had sent does not report the stored ones as lost.
    pub(crate) handled_above: Vec<(i64, i64)>,
    /// The device reused sequence numbers of this epoch for other records: it must start a
    /// new epoch (see [`records::devices_reusing_seqs`]).
    pub(crate) new_epoch: bool,
}

/// A device's work in progress inside the transaction.
struct DeviceWork {
    device: DeviceId,
    state: IngestState,
    handled: HandledSeqs,
    /// The ledger rows planned for it: (seq, recorded_at).
    planned: Vec<(i64, OffsetDateTime)>,
    /// Records taken for replays of rows already stored (seq handled before this
    /// transaction): (seq, recorded_at).
    replays: Vec<(i64, OffsetDateTime)>,
    /// A record reused the seq of another record planned in this transaction.
    reuses_planned_seq: bool,
    /// Where the rows of the current epoch start in `planned`.
    epoch_planned_from: usize,
}

impl DeviceWork {
    /// The device went from epoch `left` to `self.state.epoch` during this transaction (or
    /// stayed): the replays and reuse seen in the epoch it left say nothing about the new one,
    /// whose seqs start over. Only the new epoch's own evidence flags its ack.
    fn note_epoch_change(&mut self, left: i64) {
        if self.state.epoch == left {
            return;
        }
        self.replays.clear();
        self.reuses_planned_seq = false;
        self.epoch_planned_from = self.planned.len();
    }

    /// The rows planned in the current epoch.
    fn planned_in_epoch(&self) -> &[(i64, OffsetDateTime)] {
        &self.planned[self.epoch_planned_from..]
    }
}

/// One device's share of a batch.
pub(crate) type DeviceShare<'a> = (DeviceId, &'a [DeviceInput]);

/// Every device's share of `batch`, in device order.
pub(crate) fn shares(batch: &TenantBatch) -> Vec<DeviceShare<'_>> {
    batch
        .devices
        .iter()
        .map(|(device, inputs)| (*device, inputs.as_slice()))
        .collect()
}

/// Writes the `shares` of devices of `tenant` in one transaction: first with a plain INSERT;
/// if a row was already in the ledger (unknown to the state rows: a record sent again from an
/// older outbox in a new epoch), again from the start with one that skips stored rows.
pub(crate) async fn write_shares(
    app: &AppDb,
    tenant: TenantId,
    shares: &[DeviceShare<'_>],
    max_pending_ranges: usize,
) -> Result<Outcome, StoreError> {
    match write_shares_once(app, tenant, shares, max_pending_ranges, InsertMode::AllNew).await {
        Err(e) if e.is_unique_violation() => {
            tracing::debug!(%tenant, "a record of the batch was already stored; writing it again skipping stored rows");
            write_shares_once(
                app,
                tenant,
                shares,
                max_pending_ranges,
                InsertMode::SkipStored,
            )
            .await
        }
        written => written,
    }
}

/// How the ledger rows of a batch are inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InsertMode {
    /// With the state rows' update ([`ingest_state::save_with_new_records`]), no `RETURNING`:
    /// a collision fails the transaction.
    AllNew,
    /// [`records::insert`]: collisions skipped, the new rows returned.
    SkipStored,
}

/// Which planned rows the INSERT wrote.
enum Inserted {
    All,
    Only(HashSet<(DeviceId, i64)>),
}

impl Inserted {
    fn contains(&self, device: DeviceId, seq: i64) -> bool {
        match self {
            Inserted::All => true,
            Inserted::Only(rows) => rows.contains(&(device, seq)),
        }
    }

    /// Of `work`'s planned rows, how many were written.
    fn count_for(&self, work: &DeviceWork) -> i64 {
        match self {
            Inserted::All => work.planned.len() as i64,
            Inserted::Only(rows) => rows.iter().filter(|(d, _)| *d == work.device).count() as i64,
        }
    }

    /// The (device, seq) of every row written, of those `work` planned.
    fn into_set(self, work: &[DeviceWork]) -> HashSet<(DeviceId, i64)> {
        match self {
            Inserted::All => work
                .iter()
                .flat_map(|w| w.planned.iter().map(|(seq, _)| (w.device, *seq)))
                .collect(),
            Inserted::Only(rows) => rows,
        }
    }
}

async fn write_shares_once(
    app: &AppDb,
    tenant: TenantId,
    shares: &[DeviceShare<'_>],
    max_pending_ranges: usize,
    mode: InsertMode,
) -> Result<Outcome, StoreError> {
    let mut tx = app.begin(tenant).await?;
    let device_ids: Vec<DeviceId> = shares.iter().map(|(device, _)| *device).collect();
    let locked: BTreeMap<DeviceId, LockedDevice> = ingest_state::lock(&mut tx, &device_ids)
        .await?
        .into_iter()
        .map(|locked| (locked.device_id, locked))
        .collect();
    let now = OffsetDateTime::now_utc();
    let mut outcome = Outcome::default();
    let mut rows = NewRecords::with_capacity(
        shares
            .iter()
            .flat_map(|(_, inputs)| inputs.iter())
            .map(DeviceInput::record_count)
            .sum(),
    );
    let mut patches: Vec<(DeviceId, PatchReport)> = Vec::new();
    let mut work: Vec<DeviceWork> = Vec::with_capacity(locked.len());
    for (device, inputs) in shares {
        let Some(locked) = locked.get(device) else {
            // Deleted since the directory answered: no state row to charge it to.
            inputs.iter().for_each(|_| outcome.reject("unknown_device"));
            continue;
        };
        let mut device_work = DeviceWork {
            device: *device,
            state: locked.state.clone(),
            handled: HandledSeqs::new(locked.state.watermark, locked.state.pending.clone()),
            planned: Vec::new(),
            replays: Vec::new(),
            reuses_planned_seq: false,
            epoch_planned_from: 0,
        };
        for input in *inputs {
            plan_input(
                &mut device_work,
                locked.revoked,
                input,
                now,
                max_pending_ranges,
                &mut rows,
                &mut patches,
                &mut outcome,
            );
        }
        if !locked.revoked {
            outcome.acks.push(AckOut {
                device: *device,
                epoch: device_work.state.epoch,
                watermark: device_work.handled.watermark(),
                handled_above: lowest_ranges(device_work.handled.ranges()),
                new_epoch: false,
            });
        }
        work.push(device_work);
    }
    flag_reused_seqs(&mut tx, &mut work, &mut outcome, now).await?;
    let inserted = match mode {
        InsertMode::AllNew => Inserted::All,
        InsertMode::SkipStored => {
            Inserted::Only(records::insert(&mut tx, &rows).await?.into_iter().collect())
        }
    };
    let written: i64 = work.iter().map(|w| inserted.count_for(w)).sum();
    outcome.committed = written as u64;
    outcome.duplicates += (rows.len() as u64).saturating_sub(written as u64);
    apply_patch_reports(&mut tx, patches, &inserted).await?;
    for device_work in &mut work {
        device_work.state.watermark = device_work.handled.watermark();
        device_work.state.pending = device_work.handled.ranges().to_vec();
    }
    let saves: Vec<(DeviceId, &IngestState, i64)> = work
        .iter()
        .map(|w| (w.device, &w.state, inserted.count_for(w)))
        .collect();
    match mode {
        InsertMode::AllNew => ingest_state::save_with_new_records(&mut tx, &saves, &rows).await?,
        InsertMode::SkipStored => ingest_state::save(&mut tx, &saves).await?,
    }
    tx.commit().await?;
    outcome.inserted = inserted.into_set(&work);
    Ok(outcome)
}

/// Refuses for good a device's share that the database refused on its own (`error`, a data
/// refusal): its records are counted as `storage_refused`, its last error says why, and their
/// sequence numbers are handled, so its watermark moves past them and the device is acked and
/// stops resending them. Nothing of the share is stored.
pub(crate) async fn refuse_share(
    app: &AppDb,
    tenant: TenantId,
    (device, inputs): DeviceShare<'_>,
    error: &StoreError,
    max_pending_ranges: usize,
) -> Result<Outcome, StoreError> {
    let mut outcome = Outcome::default();
    let mut tx = app.begin(tenant).await?;
    let Some(locked) = ingest_state::lock(&mut tx, &[device]).await?.pop() else {
        inputs.iter().for_each(|_| outcome.reject("unknown_device"));
        tx.rollback().await?;
        return Ok(outcome);
    };
    let now = OffsetDateTime::now_utc();
    let mut state = locked.state.clone();
    let mut handled = HandledSeqs::new(state.watermark, state.pending.clone());
    let mut refused = 0u64;
    for input in inputs {
        let records = match input {
            DeviceInput::Refused {
                reason,
                error,
                seqs,
            } => {
                refuse_message(
                    device,
                    &mut state,
                    &mut handled,
                    (reason, error, seqs.as_ref()),
                    !locked.revoked,
                    max_pending_ranges,
                    now,
                    &mut outcome,
                );
                continue;
            }
            DeviceInput::Records { records, epoch, .. } => {
                if !enter_epoch(device, &mut state, &mut handled, *epoch, now, &mut outcome) {
                    continue;
                }
                records
            }
        };
        for record in records {
            match i64::try_from(record.seq) {
                Ok(seq) if handled.contains(seq) => outcome.duplicates += 1,
                Ok(seq) => {
                    handled.insert(seq);
                    refused += 1;
                }
                Err(_) => outcome.reject("seq_out_of_range"),
            }
        }
    }
    if refused > 0 {
        let reason: String = error
            .to_string()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let text = format!("{refused} records refused by the database: {reason}");
        state.record_reject(STORAGE_REFUSED, &text, now);
        *outcome.rejects.entry(STORAGE_REFUSED).or_default() += refused;
    }
    state.watermark = handled.watermark();
    state.pending = handled.ranges().to_vec();
    ingest_state::save(&mut tx, &[(device, &state, 0)]).await?;
    tx.commit().await?;
    if !locked.revoked {
        outcome.acks.push(AckOut {
            device,
            epoch: state.epoch,
            watermark: state.watermark,
            handled_above: lowest_ranges(&state.pending),
            new_epoch: false,
        });
    }
    Ok(outcome)
}

/// The handled ranges an ack can carry at most: more never fit in a control message.
const ACK_RANGES: usize = 16;

fn lowest_ranges(ranges: &[(i64, i64)]) -> Vec<(i64, i64)> {
    ranges.iter().take(ACK_RANGES).copied().collect()
}

/// Finds the devices whose replays are not replays: a seq already handled, stored with another
/// `recorded_at` (the device's outbox was restored from an older copy and numbered new records
/// with seqs it had used). Their acks ask for a new epoch, in which the agent sends those
/// records again; the refusal is counted as `seq_reused` and set as the device's last error.
async fn flag_reused_seqs(
    tx: &mut TenantTx,
    work: &mut [DeviceWork],
    outcome: &mut Outcome,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let replays: Vec<(DeviceId, i64, OffsetDateTime)> = work
        .iter()
        .flat_map(|w| w.replays.iter().map(|(seq, at)| (w.device, *seq, *at)))
        .collect();
    let mut reusing: Vec<DeviceId> = work
        .iter()
        .filter(|w| w.reuses_planned_seq)
        .map(|w| w.device)
        .collect();
    if !replays.is_empty() {
        reusing.extend(records::devices_reusing_seqs(tx, &replays).await?);
    }
    reusing.sort_unstable();
    reusing.dedup();
    for device in reusing {
        if let Some(w) = work.iter_mut().find(|w| w.device == device) {
            let error = format!(
                "records numbered with sequence numbers already used in epoch {} for other records (an outbox restored from an older copy?): the device is asked to start a new epoch",
                w.state.epoch as u64
            );
            w.state.record_reject(SEQ_REUSED, &error, now);
            outcome.reject(SEQ_REUSED);
        }
        for ack in outcome.acks.iter_mut().filter(|ack| ack.device == device) {
            ack.new_epoch = true;
        }
    }
    Ok(())
}

/// The reject reason of a device's records numbered with seqs it had used for other records.
pub(crate) const SEQ_REUSED: &str = "seq_reused";

/// Puts the device's state in the sequence space of a message's `epoch`. A new epoch restarts
/// the watermark at its first sequence number (the agent lost or rolled back its state, so its
/// numbers start over; the old epoch's records stay in the ledger, whose key tells the two
/// apart by `recorded_at`). A message of an epoch the device has left behind is not stored
/// (`stale_epoch`; the agent sends its records again in the new epoch): returns false.
fn enter_epoch(
    device: DeviceId,
    state: &mut IngestState,
    handled: &mut HandledSeqs,
    epoch: wire::Epoch,
    now: OffsetDateTime,
    outcome: &mut Outcome,
) -> bool {
    // The id is stored bit for bit.
    let id = epoch.id as i64;
    if id == state.epoch {
        return true;
    }
    if state.is_retired(id) {
        let error = format!(
            "a message of epoch {} (left behind) was not stored",
            epoch.id
        );
        state.record_reject(STALE_EPOCH, &error, now);
        outcome.reject(STALE_EPOCH);
        return false;
    }
    let first_seq = i64::try_from(epoch.first_seq.max(1)).unwrap_or(i64::MAX);
    tracing::info!(
        %device,
        previous = state.epoch as u64,
        epoch = epoch.id,
        first_seq,
        left_at_watermark = state.watermark,
        "a device started a new sequence space"
    );
    state.start_epoch(id, first_seq);
    *handled = HandledSeqs::new(state.watermark, Vec::new());
    true
}

/// Refuses a message as a whole: counted once under its reason and set as the device's last
/// error. When it had a sequence header (`seqs`), the header's seqs are refused for good with
/// it, in the header's epoch: handled, so the watermark moves past them and the ack covers them.
/// Not when the device is revoked (never acked), when the epoch is one the device left, or when
/// they would open more than `max_pending_ranges` gaps (then they wait, as records do:
/// `too_many_gaps`, and the device sends the message again). The header's range is at most
/// `wire::limits::MAX_RECORDS_PER_BATCH` seqs, no more than one valid batch could mark.
#[allow(clippy::too_many_arguments)]
fn refuse_message(
    device: DeviceId,
    state: &mut IngestState,
    handled: &mut HandledSeqs,
    (reason, error, seqs): (&'static str, &str, Option<&wire::SeqHeader>),
    mark: bool,
    max_pending_ranges: usize,
    now: OffsetDateTime,
    outcome: &mut Outcome,
) {
    outcome.reject(reason);
    let Some(header) = seqs.filter(|_| mark) else {
        state.record_reject(reason, error, now);
        return;
    };
    state.record_reject(
        reason,
        &format!(
            "seqs {}..={} refused: {error}",
            header.first_seq, header.last_seq
        ),
        now,
    );
    if !enter_epoch(device, state, handled, header.epoch, now, outcome) {
        return;
    }
    // The header's bounds keep both within 1..2^63.
    let (from, to) = (header.first_seq as i64, header.last_seq as i64);
    let mut after = handled.clone();
    after.insert_range(from, to);
    if after.ranges().len() > max_pending_ranges.max(handled.ranges().len()) {
        let error = format!(
            "seqs {from}..={to} of a refused message: more than {max_pending_ranges} gaps above the watermark"
        );
        state.record_reject("too_many_gaps", &error, now);
        outcome.reject("too_many_gaps");
        return;
    }
    *handled = after;
}

/// The reject reason of a message from an epoch its device has left behind.
pub(crate) const STALE_EPOCH: &str = "stale_epoch";

/// The reject reason of records the database refused, one device's share at a time.
pub(crate) const STORAGE_REFUSED: &str = "storage_refused";

#[allow(clippy::too_many_arguments)]
fn plan_input(
    work: &mut DeviceWork,
    revoked: bool,
    input: &DeviceInput,
    now: OffsetDateTime,
    max_pending_ranges: usize,
    rows: &mut NewRecords,
    patches: &mut Vec<(DeviceId, PatchReport)>,
    outcome: &mut Outcome,
) {
    let (topic, records, bodies, received_at) = match input {
        DeviceInput::Refused {
            reason,
            error,
            seqs,
        } => {
            let left = work.state.epoch;
            refuse_message(
                work.device,
                &mut work.state,
                &mut work.handled,
                (reason, error, seqs.as_ref()),
                !revoked,
                max_pending_ranges,
                now,
                outcome,
            );
            work.note_epoch_change(left);
            return;
        }
        DeviceInput::Records {
            topic,
            epoch,
            records,
            bodies,
            received_at,
        } => {
            let left = work.state.epoch;
            let entered = enter_epoch(
                work.device,
                &mut work.state,
                &mut work.handled,
                *epoch,
                now,
                outcome,
            );
            work.note_epoch_change(left);
            if !entered {
                return;
            }
            (*topic, records, bodies, *received_at)
        }
    };
    if revoked {
        if !records.is_empty() {
            let error = format!("device revoked: {} records refused", records.len());
            work.state.record_reject("revoked", &error, now);
            *outcome.rejects.entry("revoked").or_default() += records.len() as u64;
        }
        return;
    }
    for (record, body) in records.iter().zip(bodies) {
        plan_record(
            work,
            topic,
            (record, body),
            received_at,
            now,
            max_pending_ranges,
            rows,
            patches,
            outcome,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_record(
    work: &mut DeviceWork,
    topic: TopicKind,
    (record, body): (&RecordView, &Bytes),
    received_at: OffsetDateTime,
    now: OffsetDateTime,
    max_pending_ranges: usize,
    rows: &mut NewRecords,
    patches: &mut Vec<(DeviceId, PatchReport)>,
    outcome: &mut Outcome,
) {
    let Ok(seq) = i64::try_from(record.seq) else {
        let error = format!("sequence number {} is beyond 2^63-1", record.seq);
        work.state.record_reject("seq_out_of_range", &error, now);
        outcome.reject("seq_out_of_range");
        return;
    };
    if work.handled.contains(seq) {
        outcome.duplicates += 1;
        let recorded_at = device_time(record.recorded_at);
        // A row planned in this transaction is not in the ledger yet: compare with the plan
        // of this epoch (the ledger, and the plan of an epoch left in this transaction, may
        // hold another epoch's row under the same seq).
        match work
            .planned_in_epoch()
            .iter()
            .find(|(planned, _)| *planned == seq)
        {
            Some((_, at)) if *at == recorded_at => {}
            Some(_) => work.reuses_planned_seq = true,
            None => work.replays.push((seq, recorded_at)),
        }
        return;
    }
    if let Err(e) = topic::check_kind(topic, record.body.kind()) {
        // Refused for good: handled, so the watermark passes it.
        work.state
            .record_reject(e.reason(), &format!("seq {seq}: {e}"), now);
        outcome.reject(e.reason());
        work.handled.insert(seq);
        return;
    }
    if work.handled.opens_new_range(seq) && work.handled.ranges().len() >= max_pending_ranges {
        // Not handled: the device sends it again once the holes below have filled.
        let error = format!("seq {seq}: more than {max_pending_ranges} gaps above the watermark");
        work.state.record_reject("too_many_gaps", &error, now);
        outcome.reject("too_many_gaps");
        return;
    }
    let recorded_at = device_time(record.recorded_at);
    let kind = ledger_kind(&record.body);
    // The bytes as the device sent them: decoding validated them, and the API decodes them
    // with the same rules (wire::decode_body).
    rows.push(
        work.device,
        seq,
        recorded_at,
        received_at,
        kind,
        body.clone(),
    );
    work.planned.push((seq, recorded_at));
    work.handled.insert(seq);
    match &record.body {
        BodyView::Event(Some(lost)) => {
            // The agent dropped these and will never send them: do not wait for them.
            let from = i64::try_from(lost.first_seq).unwrap_or(i64::MAX);
            let to = i64::try_from(lost.last_seq).unwrap_or(i64::MAX);
            work.handled.insert_range(from.max(1), to);
        }
        BodyView::PatchStatus(status) => patches.push((
            work.device,
            patch_report(seq, recorded_at, received_at, status),
        )),
        _ => {}
    }
}

/// Applies the new patch reports, oldest first per device, so the newest wins.
async fn apply_patch_reports(
    tx: &mut TenantTx,
    mut patches: Vec<(DeviceId, PatchReport)>,
    inserted: &Inserted,
) -> Result<(), StoreError> {
    patches.retain(|(device, report)| inserted.contains(*device, report.seq));
    patches.sort_by_key(|(device, report)| (*device, report.recorded_at, report.seq));
    for (device, report) in patches {
        patch_inventory::apply(tx, device, report).await?;
    }
    Ok(())
}

/// The ledger's kind of a record that passed `check_kind`.
fn ledger_kind(body: &BodyView) -> RecordKind {
    match body {
        BodyView::Telemetry => RecordKind::Telemetry,
        BodyView::PatchStatus(_) => RecordKind::PatchStatus,
        // check_kind refuses Unknown before this point.
        BodyView::Event(_) | BodyView::Unknown => RecordKind::Event,
    }
}

/// The device's clock as a timestamp; times past year 9999 are clamped (deterministically, so a
/// replay lands on the same row).
pub(crate) fn device_time(at: UnixMillis) -> OffsetDateTime {
    let latest = time::macros::datetime!(9999-12-31 23:59:59.999 UTC);
    let nanos = i128::from(at.as_millis()) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(latest)
        .min(latest)
}

fn patch_report(
    seq: i64,
    recorded_at: OffsetDateTime,
    received_at: OffsetDateTime,
    status: &PatchStatus,
) -> PatchReport {
    PatchReport {
        seq,
        recorded_at,
        received_at,
        os_id: status.os_id.clone(),
        os_version: status.os_version.clone(),
        package_manager: status.package_manager.as_str().to_owned(),
        reboot_required: status.reboot_required,
        lists_refreshed_at: status.lists_refreshed_at.map(device_time),
        packages: status.packages.iter().map(PackageRow::from).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_time_is_exact_in_range_and_clamped_beyond() {
        assert_eq!(device_time(UnixMillis(0)), OffsetDateTime::UNIX_EPOCH);
        assert_eq!(
            device_time(UnixMillis(1_700_000_000_123)).unix_timestamp_nanos(),
            1_700_000_000_123_000_000
        );
        let far = device_time(UnixMillis(u64::MAX));
        assert_eq!(far.year(), 9999);
        assert_eq!(far, device_time(UnixMillis(u64::MAX - 1)));
    }
}
