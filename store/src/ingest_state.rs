//! Per-device ingest state: the ack watermark, the handled ranges above it, and what ingest
//! refused (counters by reason, the last error).
//!
//! Ingest locks the rows of every device in a batch ([`lock`]) before writing its records, in
//! device-id order so that two ingest instances holding batches for the same devices cannot
//! deadlock, and writes them back ([`save`]) in the same transaction.

use std::collections::BTreeMap;

use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::records::{query_with_new_records, NewRecords};
use crate::{DeviceId, StoreError, TenantId, TenantTx};

/// Longest last-error text kept (the schema enforces the same).
pub const MAX_ERROR_CHARS: usize = 1000;

/// A device's ingest state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestState {
    /// Every seq in `(0, watermark]` is handled: committed, refused for good, or declared lost.
    pub watermark: i64,
    /// Handled ranges above the watermark, inclusive, sorted and disjoint.
    pub pending: Vec<(i64, i64)>,
    /// Records committed to the ledger, ever.
    pub records_committed: i64,
    /// Refusals by reason (stable labels such as `malformed`, `wrong_topic`).
    pub rejects: BTreeMap<String, i64>,
    /// The last refusal, for humans.
    pub last_error: Option<String>,
    /// Its reason label.
    pub last_error_reason: Option<String>,
    /// When it happened.
    pub last_error_at: Option<OffsetDateTime>,
    /// The device's sequence space the watermark counts in (a `wire::Epoch` id, bit for bit;
    /// 0 for agents from before epochs).
    pub epoch: i64,
    /// Epochs left behind, newest last, at most [`MAX_RETIRED_EPOCHS`].
    pub retired_epochs: Vec<i64>,
}

/// How many retired epochs a device's state remembers.
pub const MAX_RETIRED_EPOCHS: usize = 16;

impl IngestState {
    /// Counts one refusal and makes it the last error.
    pub fn record_reject(&mut self, reason: &str, error: &str, at: OffsetDateTime) {
        *self.rejects.entry(reason.to_owned()).or_default() += 1;
        self.last_error = Some(error.chars().take(MAX_ERROR_CHARS).collect());
        self.last_error_reason = Some(reason.to_owned());
        self.last_error_at = Some(at);
    }

    /// Moves to the sequence space `epoch`, which counts from `first_seq`: the watermark
    /// restarts at `first_seq - 1` with no ranges above it, and the epoch left behind is
    /// remembered as retired (the oldest forgotten beyond [`MAX_RETIRED_EPOCHS`]).
    pub fn start_epoch(&mut self, epoch: i64, first_seq: i64) {
        self.retired_epochs
            .retain(|retired| *retired != self.epoch && *retired != epoch);
        self.retired_epochs.push(self.epoch);
        let excess = self.retired_epochs.len().saturating_sub(MAX_RETIRED_EPOCHS);
        self.retired_epochs.drain(..excess);
        self.epoch = epoch;
        self.watermark = first_seq.saturating_sub(1).max(0);
        self.pending.clear();
    }

    /// Whether `epoch` is one this device has left behind.
    pub fn is_retired(&self, epoch: i64) -> bool {
        epoch != self.epoch && self.retired_epochs.contains(&epoch)
    }
}

/// A device of the batch's tenant, locked for the rest of the transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedDevice {
    /// The device.
    pub device_id: DeviceId,
    /// Whether it was revoked (its records are refused).
    pub revoked: bool,
    /// Its ingest state as of the lock.
    pub state: IngestState,
}

/// Locks the ingest state of those `devices` that exist in the transaction's tenant (creating
/// missing rows), in device-id order; devices the tenant does not have are absent from the result.
///
/// One statement when every device already has its row (every batch but a device's first);
/// otherwise the missing rows are created, in id order, and the batch's rows locked again.
pub async fn lock(
    tx: &mut TenantTx,
    devices: &[DeviceId],
) -> Result<Vec<LockedDevice>, StoreError> {
    let mut ids: Vec<Uuid> = devices.iter().map(|d| d.0).collect();
    ids.sort_unstable();
    ids.dedup();
    let locked = select_for_update(tx, &ids).await?;
    if locked.len() == ids.len() {
        return Ok(locked);
    }
    let tenant = tx.tenant();
    sqlx::query!(
        "INSERT INTO device_ingest_state (tenant_id, device_id)
         SELECT $1, d.device_id FROM devices d
          WHERE d.device_id = ANY ($2::uuid[])
          ORDER BY d.device_id
         ON CONFLICT DO NOTHING",
        tenant as TenantId,
        &ids,
    )
    .execute(tx.conn())
    .await?;
    select_for_update(tx, &ids).await
}

/// `SELECT ... FOR UPDATE` of the state rows of `ids` (sorted), joined with the devices' status.
async fn select_for_update(
    tx: &mut TenantTx,
    ids: &[Uuid],
) -> Result<Vec<LockedDevice>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT s.device_id AS "device_id: DeviceId", d.status = 'revoked' AS "revoked!",
                  s.watermark, s.pending_ranges, s.records_committed,
                  s.rejects AS "rejects: Json<BTreeMap<String, i64>>",
                  s.last_error, s.last_error_reason, s.last_error_at, s.epoch, s.retired_epochs
             FROM device_ingest_state s
             JOIN devices d USING (tenant_id, device_id)
            WHERE s.device_id = ANY ($1::uuid[])
            ORDER BY s.device_id
              FOR UPDATE OF s"#,
        ids,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| LockedDevice {
            device_id: row.device_id,
            revoked: row.revoked,
            state: StateRow {
                watermark: row.watermark,
                pending_ranges: row.pending_ranges,
                records_committed: row.records_committed,
                rejects: row.rejects,
                last_error: row.last_error,
                last_error_reason: row.last_error_reason,
                last_error_at: row.last_error_at,
                epoch: row.epoch,
                retired_epochs: row.retired_epochs,
            }
            .into(),
        })
        .collect())
}

/// Writes back the state of devices locked by [`lock`] in this transaction, adding
/// `committed[i]` to the committed count of `devices[i]`.
pub async fn save(
    tx: &mut TenantTx,
    devices: &[(DeviceId, &IngestState, i64)],
) -> Result<(), StoreError> {
    save_with_new_records(tx, devices, &NewRecords::default()).await
}

/// [`save`] of `devices` and the insert of `rows` into the ledger, in one statement: one round
/// trip for both, and no `RETURNING` (ingest has already dropped what the state rows say is
/// handled, so every row is new). A row already stored fails the statement with a unique
/// violation ([`StoreError::is_unique_violation`]) and nothing of it is written; then
/// [`records::insert`](crate::records::insert) tells which rows are new. (COPY is refused
/// under row-level security, and `ON CONFLICT DO NOTHING RETURNING` costs about a third more
/// per row.)
pub async fn save_with_new_records(
    tx: &mut TenantTx,
    devices: &[(DeviceId, &IngestState, i64)],
    rows: &NewRecords,
) -> Result<(), StoreError> {
    if devices.is_empty() && rows.is_empty() {
        return Ok(());
    }
    let u = StateColumns::of(devices);
    let tenant = tx.tenant();
    let bodies = rows.body_slices();
    query_with_new_records!(
        "WITH inserted AS (
             INSERT INTO device_records (tenant_id, device_id, seq, recorded_at, received_at, kind, body)
             SELECT $11, * FROM unnest($12::uuid[], $13::int8[], $14::timestamptz[],
                                       $15::timestamptz[], $16::text[], $17::bytea[])
         )
         UPDATE device_ingest_state s
            SET watermark = u.watermark, pending_ranges = u.pending::bigint[],
                records_committed = u.committed, rejects = u.rejects, last_error = u.last_error,
                last_error_reason = u.last_error_reason, last_error_at = u.last_error_at,
                epoch = u.epoch, retired_epochs = u.retired::bigint[], updated_at = now()
           FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::int8[], $5::jsonb[], $6::text[],
                       $7::text[], $8::timestamptz[], $9::int8[], $10::text[])
                AS u(device_id, watermark, pending, committed, rejects, last_error,
                     last_error_reason, last_error_at, epoch, retired)
          WHERE s.device_id = u.device_id",
        [
            &u.ids,
            &u.watermarks,
            &u.pending,
            &u.committed,
            &u.rejects as _,
            &u.errors as _,
            &u.reasons as _,
            &u.error_times as _,
            &u.epochs,
            &u.retired
        ],
        tenant,
        rows,
        bodies
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The state rows to write, column by column (the shape `unnest` takes).
struct StateColumns<'a> {
    ids: Vec<Uuid>,
    watermarks: Vec<i64>,
    pending: Vec<String>,
    committed: Vec<i64>,
    rejects: Vec<Json<&'a BTreeMap<String, i64>>>,
    errors: Vec<Option<&'a str>>,
    reasons: Vec<Option<&'a str>>,
    error_times: Vec<Option<OffsetDateTime>>,
    epochs: Vec<i64>,
    retired: Vec<String>,
}

impl<'a> StateColumns<'a> {
    /// `devices[i]`'s state, its committed count raised by `devices[i].2`.
    fn of(devices: &'a [(DeviceId, &'a IngestState, i64)]) -> Self {
        let n = devices.len();
        let mut u = StateColumns {
            ids: Vec::with_capacity(n),
            watermarks: Vec::with_capacity(n),
            pending: Vec::with_capacity(n),
            committed: Vec::with_capacity(n),
            rejects: Vec::with_capacity(n),
            errors: Vec::with_capacity(n),
            reasons: Vec::with_capacity(n),
            error_times: Vec::with_capacity(n),
            epochs: Vec::with_capacity(n),
            retired: Vec::with_capacity(n),
        };
        for (device, state, new_records) in devices {
            u.ids.push(device.0);
            u.watermarks.push(state.watermark);
            u.pending.push(ranges_literal(&state.pending));
            u.committed.push(state.records_committed + new_records);
            u.rejects.push(Json(&state.rejects));
            u.errors.push(state.last_error.as_deref());
            u.reasons.push(state.last_error_reason.as_deref());
            u.error_times.push(state.last_error_at);
            u.epochs.push(state.epoch);
            u.retired.push(array_literal(&state.retired_epochs));
        }
        u
    }
}

/// One device's ingest state, if it has one in the transaction's tenant.
pub async fn get(tx: &mut TenantTx, device: DeviceId) -> Result<Option<IngestState>, StoreError> {
    let row = sqlx::query_as!(
        StateRow,
        r#"SELECT watermark, pending_ranges, records_committed,
                  rejects AS "rejects: Json<BTreeMap<String, i64>>",
                  last_error, last_error_reason, last_error_at, epoch, retired_epochs
             FROM device_ingest_state WHERE device_id = $1"#,
        device as DeviceId,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(row.map(IngestState::from))
}

/// A `device_ingest_state` row as selected: the macros' target.
struct StateRow {
    watermark: i64,
    pending_ranges: Vec<i64>,
    records_committed: i64,
    rejects: Json<BTreeMap<String, i64>>,
    last_error: Option<String>,
    last_error_reason: Option<String>,
    last_error_at: Option<OffsetDateTime>,
    epoch: i64,
    retired_epochs: Vec<i64>,
}

impl From<StateRow> for IngestState {
    fn from(row: StateRow) -> Self {
        IngestState {
            watermark: row.watermark,
            pending: row
                .pending_ranges
                .chunks_exact(2)
                .map(|pair| (pair[0], pair[1]))
                .collect(),
            records_committed: row.records_committed,
            rejects: row.rejects.0,
            last_error: row.last_error,
            last_error_reason: row.last_error_reason,
            last_error_at: row.last_error_at,
            epoch: row.epoch,
            retired_epochs: row.retired_epochs,
        }
    }
}

/// `{from1,to1,from2,to2}`: a bigint[] literal, since unnest cannot take ragged arrays.
fn ranges_literal(ranges: &[(i64, i64)]) -> String {
    let items: Vec<i64> = ranges.iter().flat_map(|(from, to)| [*from, *to]).collect();
    array_literal(&items)
}

/// `{a,b,c}`: a bigint[] literal.
fn array_literal(items: &[i64]) -> String {
    let items: Vec<String> = items.iter().map(i64::to_string).collect();
    format!("{{{}}}", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_literal_flattens_pairs() {
        assert_eq!(ranges_literal(&[]), "{}");
        assert_eq!(ranges_literal(&[(3, 4), (9, 12)]), "{3,4,9,12}");
    }

    #[test]
    fn a_new_epoch_restarts_the_watermark_and_retires_the_old_one() {
        let mut state = IngestState {
            watermark: 40,
            pending: vec![(45, 50)],
            ..IngestState::default()
        };
        state.start_epoch(7, 5);
        assert_eq!((state.epoch, state.watermark), (7, 4));
        assert!(state.pending.is_empty());
        assert!(state.is_retired(0) && !state.is_retired(7) && !state.is_retired(8));
        for epoch in 8..40 {
            state.start_epoch(epoch, 1);
        }
        assert_eq!(state.retired_epochs.len(), MAX_RETIRED_EPOCHS);
        assert_eq!(state.retired_epochs.last(), Some(&38));
        assert!(!state.is_retired(0), "the oldest are forgotten");
        // Back to a retired epoch (an agent restored twice): it becomes current again.
        state.start_epoch(30, 1);
        assert!(!state.is_retired(30) && state.is_retired(39));
        assert_eq!(state.watermark, 0);
    }

    #[test]
    fn a_reject_is_counted_and_its_text_bounded() {
        let mut state = IngestState::default();
        let at = OffsetDateTime::UNIX_EPOCH;
        state.record_reject("malformed", &"x".repeat(5000), at);
        state.record_reject("malformed", "short", at);
        assert_eq!(state.rejects["malformed"], 2);
        assert_eq!(state.last_error.as_deref(), Some("short"));
        state.record_reject("oversize", &"é".repeat(2000), at);
        assert_eq!(state.last_error.unwrap().chars().count(), MAX_ERROR_CHARS);
    }
}
