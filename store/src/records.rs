//! The record ledger: every accepted device record, once per (tenant, device, seq), in a table
//! partitioned by week of the device's clock; per-tenant retention; partition maintenance.

use bytes::Bytes;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::device_directory::begin_without_tenant;
use crate::{AppDb, DeviceId, StoreError, TenantId, TenantTx};

/// What kind of record a ledger row holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A telemetry sample.
    Telemetry,
    /// A patch status report.
    PatchStatus,
    /// An agent event.
    Event,
}

impl RecordKind {
    /// The value of the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Telemetry => "telemetry",
            RecordKind::PatchStatus => "patch_status",
            RecordKind::Event => "event",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "telemetry" => Ok(RecordKind::Telemetry),
            "patch_status" => Ok(RecordKind::PatchStatus),
            "event" => Ok(RecordKind::Event),
            other => Err(StoreError::Invalid {
                field: "record kind",
                reason: format!("unknown value {other:?}"),
            }),
        }
    }
}

/// `sqlx::query!($sql, $before..., tenant, the rows' columns...)`: the ledger's columns as the
/// statements that insert [`NewRecords`] bind them, after the parameters `$before` (a macro,
/// since the query macros take their arguments as written).
macro_rules! query_with_new_records {
    ($sql:literal, [$($before:expr),*], $tenant:expr, $rows:expr, $bodies:expr) => {
        sqlx::query!(
            $sql,
            $($before,)*
            $tenant as TenantId,
            &$rows.device_ids,
            &$rows.seqs,
            &$rows.recorded_at,
            &$rows.received_at,
            &$rows.kinds as &[&str],
            &$bodies as &[&[u8]],
        )
    };
}
pub(crate) use query_with_new_records;

/// Rows for [`insert`], column by column (the shape `unnest` takes).
#[derive(Clone, Debug, Default)]
pub struct NewRecords {
    pub(crate) device_ids: Vec<Uuid>,
    pub(crate) seqs: Vec<i64>,
    pub(crate) recorded_at: Vec<OffsetDateTime>,
    pub(crate) received_at: Vec<OffsetDateTime>,
    pub(crate) kinds: Vec<&'static str>,
    /// Shared, not copied: ingest hands in slices of the messages as received.
    bodies: Vec<Bytes>,
}

impl NewRecords {
    /// An empty set with room for `capacity` rows.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            device_ids: Vec::with_capacity(capacity),
            seqs: Vec::with_capacity(capacity),
            recorded_at: Vec::with_capacity(capacity),
            received_at: Vec::with_capacity(capacity),
            kinds: Vec::with_capacity(capacity),
            bodies: Vec::with_capacity(capacity),
        }
    }

    /// Adds one row.
    pub fn push(
        &mut self,
        device: DeviceId,
        seq: i64,
        recorded_at: OffsetDateTime,
        received_at: OffsetDateTime,
        kind: RecordKind,
        body: impl Into<Bytes>,
    ) {
        self.device_ids.push(device.0);
        self.seqs.push(seq);
        self.recorded_at.push(recorded_at);
        self.received_at.push(received_at);
        self.kinds.push(kind.as_str());
        self.bodies.push(body.into());
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    pub(crate) fn body_slices(&self) -> Vec<&[u8]> {
        self.bodies.iter().map(|body| body.as_ref()).collect()
    }
}

/// Inserts the rows into the transaction's tenant, skipping those already stored; returns the
/// (device, seq) of the rows that were new.
///
/// `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING`: what ingest runs
/// when [`ingest_state::save_with_new_records`](crate::ingest_state::save_with_new_records)
/// found a row already stored.
pub async fn insert(
    tx: &mut TenantTx,
    rows: &NewRecords,
) -> Result<Vec<(DeviceId, i64)>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let tenant = tx.tenant();
    let bodies = rows.body_slices();
    let inserted = query_with_new_records!(
        r#"INSERT INTO device_records (tenant_id, device_id, seq, recorded_at, received_at, kind, body)
           SELECT $1, * FROM unnest($2::uuid[], $3::int8[], $4::timestamptz[], $5::timestamptz[],
                                    $6::text[], $7::bytea[])
           ON CONFLICT DO NOTHING
           RETURNING device_id AS "device_id: DeviceId", seq"#,
        [],
        tenant,
        rows,
        bodies
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(inserted
        .into_iter()
        .map(|row| (row.device_id, row.seq))
        .collect())
}

/// Of the records `(device, seq, recorded_at)` that ingest takes for replays (their seq is
/// already handled), the devices for which some seq is in the ledger with another
/// `recorded_at` and never with this one: the device numbered a different record with a seq
/// it had used before (its outbox was restored from an older copy), so its sequence space has
/// diverged from the ledger's. An agent never reuses a seq within one epoch, and a replay
/// carries the same `recorded_at`.
pub async fn devices_reusing_seqs(
    tx: &mut TenantTx,
    replays: &[(DeviceId, i64, OffsetDateTime)],
) -> Result<Vec<DeviceId>, StoreError> {
    if replays.is_empty() {
        return Ok(Vec::new());
    }
    let devices: Vec<Uuid> = replays.iter().map(|(device, _, _)| device.0).collect();
    let seqs: Vec<i64> = replays.iter().map(|(_, seq, _)| *seq).collect();
    let times: Vec<OffsetDateTime> = replays.iter().map(|(_, _, at)| *at).collect();
    let tenant = tx.tenant();
    let rows = sqlx::query_scalar!(
        r#"SELECT DISTINCT u.device_id AS "device_id!: DeviceId"
             FROM unnest($2::uuid[], $3::int8[], $4::timestamptz[]) AS u(device_id, seq, recorded_at)
            WHERE EXISTS (SELECT 1 FROM device_records r
                           WHERE r.tenant_id = $1 AND r.device_id = u.device_id AND r.seq = u.seq)
              AND NOT EXISTS (SELECT 1 FROM device_records r
                               WHERE r.tenant_id = $1 AND r.device_id = u.device_id
                                 AND r.seq = u.seq AND r.recorded_at = u.recorded_at)"#,
        tenant as TenantId,
        &devices,
        &seqs,
        &times,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(rows)
}

/// A ledger row as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// The device.
    pub device_id: DeviceId,
    /// Its sequence number.
    pub seq: i64,
    /// The device's clock.
    pub recorded_at: OffsetDateTime,
    /// When ingest received it.
    pub received_at: OffsetDateTime,
    /// What kind of record.
    pub kind: RecordKind,
    /// The body as CBOR.
    pub body: Vec<u8>,
}

/// A device's records with seq above `after`, in seq order, at most `limit`.
pub async fn list_for_device(
    tx: &mut TenantTx,
    device: DeviceId,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredRecord>, StoreError> {
    let rows = sqlx::query_as!(
        RecordRow,
        r#"SELECT device_id AS "device_id: DeviceId", seq, recorded_at, received_at, kind, body
             FROM device_records
            WHERE device_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"#,
        device as DeviceId,
        after,
        limit,
    )
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter().map(StoredRecord::try_from).collect()
}

/// How many ledger rows the transaction's tenant has.
pub async fn count(tx: &mut TenantTx) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM device_records"#)
            .fetch_one(tx.conn())
            .await?,
    )
}

/// The tenant's record retention in days (its setting, or the default of 30).
pub async fn retention_days(tx: &mut TenantTx) -> Result<i32, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT coalesce((SELECT record_retention_days FROM tenant_ingest_settings),
                           fleet_default_record_retention_days()) AS "days!""#
    )
    .fetch_one(tx.conn())
    .await?)
}

/// Deletes at most `limit` records older than their own tenant's retention (by the device's
/// clock), across tenants, through `fleet_delete_expired_records` (a definer function that takes
/// no tenant and returns only the count), so that retention needs no owner connection; returns
/// how many. Call until it returns less than `limit`.
pub async fn delete_expired(app: &AppDb, limit: i64) -> Result<u64, StoreError> {
    let mut tx = begin_without_tenant(app).await?;
    let deleted = sqlx::query_scalar!(
        r#"SELECT fleet_delete_expired_records($1) AS "deleted!""#,
        limit
    )
    .fetch_one(tx.conn())
    .await?;
    tx.commit().await?;
    Ok(u64::try_from(deleted).unwrap_or(0))
}

/// Creates the weekly partitions from this week to `weeks_ahead` ahead that are missing; returns
/// how many it created.
pub async fn ensure_partitions(app: &AppDb, weeks_ahead: i32) -> Result<i32, StoreError> {
    let mut tx = begin_without_tenant(app).await?;
    let created = sqlx::query_scalar!(
        r#"SELECT fleet_ensure_record_partitions($1) AS "created!""#,
        weeks_ahead
    )
    .fetch_one(tx.conn())
    .await?;
    tx.commit().await?;
    Ok(created)
}

/// Drops at most `max_partitions` weekly partitions older than every tenant's retention; returns
/// how many it dropped.
pub async fn drop_expired_partitions(app: &AppDb, max_partitions: i32) -> Result<i32, StoreError> {
    let mut tx = begin_without_tenant(app).await?;
    let dropped = sqlx::query_scalar!(
        r#"SELECT fleet_drop_expired_record_partitions($1) AS "dropped!""#,
        max_partitions
    )
    .fetch_one(tx.conn())
    .await?;
    tx.commit().await?;
    Ok(dropped)
}

/// A device's records of `kind` recorded in `[from, to)`, ordered by (recorded_at, seq), after
/// the position `after`, at most `limit`.
pub async fn list_in_range(
    tx: &mut TenantTx,
    device: DeviceId,
    kind: RecordKind,
    from: OffsetDateTime,
    to: OffsetDateTime,
    after: Option<(OffsetDateTime, i64)>,
    limit: i64,
) -> Result<Vec<StoredRecord>, StoreError> {
    let (after_at, after_seq) = after.unzip();
    let rows = sqlx::query_as!(
        RecordRow,
        r#"SELECT device_id AS "device_id: DeviceId", seq, recorded_at, received_at, kind, body
             FROM device_records
            WHERE device_id = $1 AND kind = $2 AND recorded_at >= $3 AND recorded_at < $4
              AND ($5::timestamptz IS NULL OR (recorded_at, seq) > ($5, $6))
            ORDER BY recorded_at, seq LIMIT $7"#,
        device as DeviceId,
        kind.as_str(),
        from,
        to,
        after_at,
        after_seq,
        limit,
    )
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter().map(StoredRecord::try_from).collect()
}

/// A `device_records` row as selected: the macros' target.
struct RecordRow {
    device_id: DeviceId,
    seq: i64,
    recorded_at: OffsetDateTime,
    received_at: OffsetDateTime,
    kind: String,
    body: Vec<u8>,
}

impl TryFrom<RecordRow> for StoredRecord {
    type Error = StoreError;
    fn try_from(row: RecordRow) -> Result<Self, StoreError> {
        Ok(StoredRecord {
            device_id: row.device_id,
            seq: row.seq,
            recorded_at: row.recorded_at,
            received_at: row.received_at,
            kind: RecordKind::parse(&row.kind)?,
            body: row.body,
        })
    }
}
