//! The ceilings a benchmark compares ingest with, on the same server and for the same row shape
//! (tests/benches/gateway_ingest.rs): INSERT ... unnest as the application role under forced
//! RLS (the real ceiling: COPY is refused under RLS), ingest's own statement
//! (store::ingest_state::save_with_new_records with no state rows, called, not copied), and
//! COPY into an identical table without RLS (the physical ceiling). The ceilings' SQL lives here
//! and nowhere else.

use std::time::Instant;

use sqlx::Connection;
use store::records::{NewRecords, RecordKind};
use store::{AppDb, DeviceId, TenantId};
use time::OffsetDateTime;

use crate::TestDb;

/// Rows per transaction of the INSERT ceilings (ingest's default batch_max_records).
const INSERT_ROWS_PER_TX: usize = 1000;
/// Rows per transaction of the COPY ceiling.
const COPY_ROWS_PER_TX: usize = 10_000;

/// The ceiling statement: ingest's INSERT on raw connections, outside store's transactions.
const UNNEST_SQL: &str =
    "INSERT INTO device_records (tenant_id, device_id, seq, recorded_at, received_at, kind, body)
     SELECT $1, * FROM unnest($2::uuid[], $3::int8[], $4::timestamptz[], $5::timestamptz[], $6::text[], $7::bytea[])";

/// What every ceiling measurement of one run shares: the server, tenant, devices, row count
/// and the stored body.
pub struct Ceiling<'a> {
    pub test_db: &'a TestDb,
    /// The application pool ingest's statement runs through (at least 2 connections).
    pub app: &'a AppDb,
    pub tenant: TenantId,
    pub devices: &'a [DeviceId],
    pub rows: usize,
    pub body: &'a [u8],
}

/// Which INSERT a ceiling measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// [`UNNEST_SQL`] on raw application-role connections, `app.tenant_id` set per
    /// transaction: the ceiling.
    Bare,
    /// store::ingest_state::save_with_new_records without state rows (ingest's INSERT, its
    /// state update left out) in a store transaction from the application pool.
    Ingest,
}

impl Ceiling<'_> {
    /// Rows per second of INSERT ... unnest as the application role under forced RLS,
    /// 1,000 rows per transaction, `connections` in parallel (opened before the clock starts);
    /// seqs start above `seq_base` (each call needs its own range).
    pub async fn unnest_rls(&self, insert: Insert, connections: usize, seq_base: i64) -> f64 {
        let share = self.rows / connections;
        let mut raw = Vec::new();
        if insert == Insert::Bare {
            for _ in 0..connections {
                raw.push(Some(self.test_db.connect_as_app().await));
            }
        } else {
            // Warm the pool: `connections` transactions open at once, then rolled back.
            let mut open = Vec::new();
            for _ in 0..connections {
                open.push(self.app.begin(self.tenant).await.expect("a transaction"));
                raw.push(None);
            }
            drop(open);
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (c, conn) in raw.into_iter().enumerate() {
            let (devices, body, app, tenant) = (
                self.devices.to_vec(),
                self.body.to_vec(),
                self.app.clone(),
                self.tenant,
            );
            tasks.push(tokio::spawn(async move {
                let mut conn = conn;
                let now = OffsetDateTime::now_utc();
                for chunk in 0..share / INSERT_ROWS_PER_TX {
                    let first = chunk * INSERT_ROWS_PER_TX;
                    let rows = (first..first + INSERT_ROWS_PER_TX).map(|n| {
                        (
                            devices[n % devices.len()],
                            seq_base + (c * share + n) as i64 + 1,
                        )
                    });
                    match conn.as_mut() {
                        Some(conn) => insert_bare(conn, tenant, rows, now, &body).await,
                        None => {
                            let mut records = NewRecords::with_capacity(INSERT_ROWS_PER_TX);
                            for (device, seq) in rows {
                                let kind = RecordKind::Telemetry;
                                records.push(device, seq, now, now, kind, body.clone());
                            }
                            let mut tx = app.begin(tenant).await.expect("a transaction");
                            store::ingest_state::save_with_new_records(&mut tx, &[], &records)
                                .await
                                .expect("ingest's INSERT: all rows new");
                            tx.commit().await.expect("commit");
                        }
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        (share / INSERT_ROWS_PER_TX * INSERT_ROWS_PER_TX * connections) as f64
            / started.elapsed().as_secs_f64()
    }

    /// Rows per second of COPY (text, 10,000 rows per transaction) as the owner into a table like
    /// device_records without RLS: the physical ceiling. Creates that table, `bench_copy`.
    pub async fn copy_without_rls(&self) -> f64 {
        let (tenant, devices, rows) = (self.tenant, self.devices, self.rows);
        let mut owner = self.test_db.connect_as_owner().await;
        sqlx::query("CREATE TABLE bench_copy (LIKE device_records INCLUDING DEFAULTS INCLUDING CONSTRAINTS, PRIMARY KEY (tenant_id, device_id, seq, recorded_at))")
            .execute(&mut owner)
            .await
            .unwrap();
        let body_hex: String = self.body.iter().map(|b| format!("{b:02x}")).collect();
        let now = OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let started = Instant::now();
        for chunk in 0..rows / COPY_ROWS_PER_TX {
            let mut tx = owner.begin().await.unwrap();
            let mut copy = tx
                .copy_in_raw("COPY bench_copy (tenant_id, device_id, seq, recorded_at, received_at, kind, body) FROM STDIN")
                .await
                .unwrap();
            let mut text = String::with_capacity(COPY_ROWS_PER_TX * (body_hex.len() + 200));
            for i in 0..COPY_ROWS_PER_TX {
                let n = chunk * COPY_ROWS_PER_TX + i;
                let device = devices[n % devices.len()];
                text.push_str(&format!(
                    "{tenant}\t{device}\t{}\t{now}\t{now}\ttelemetry\t\\\\x{body_hex}\n",
                    n + 1
                ));
            }
            copy.send(text.into_bytes()).await.unwrap();
            copy.finish().await.unwrap();
            tx.commit().await.unwrap();
        }
        (rows / COPY_ROWS_PER_TX * COPY_ROWS_PER_TX) as f64 / started.elapsed().as_secs_f64()
    }
}

/// A body exactly as ingest stored it for `tenant` (the CBOR of a record's body, its latest
/// row), so that the ceilings' rows have the shape of what was measured end to end.
pub async fn stored_body(db: &TestDb, tenant: TenantId) -> Vec<u8> {
    let mut owner = db.connect_as_owner().await;
    sqlx::query_scalar(
        "SELECT body FROM device_records WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(tenant)
    .fetch_one(&mut owner)
    .await
    .unwrap()
}

/// One transaction of [`UNNEST_SQL`] on a raw application-role connection.
async fn insert_bare(
    conn: &mut sqlx::PgConnection,
    tenant: TenantId,
    rows: impl Iterator<Item = (DeviceId, i64)>,
    now: OffsetDateTime,
    body: &[u8],
) {
    let (ids, seqs): (Vec<_>, Vec<_>) = rows.map(|(device, seq)| (device.0, seq)).unzip();
    let times = vec![now; ids.len()];
    let kinds = vec!["telemetry"; ids.len()];
    let bodies = vec![body.to_vec(); ids.len()];
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(UNNEST_SQL)
        .bind(tenant)
        .bind(&ids)
        .bind(&seqs)
        .bind(&times)
        .bind(&times)
        .bind(&kinds)
        .bind(&bodies)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}
