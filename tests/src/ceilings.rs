//! The ceilings a benchmark compares ingest with, on the same server and for the same row shape
//! (ingest/examples/bench_ceiling.rs, tests/benches/gateway_ingest.rs): INSERT ... unnest as
//! the application role under forced RLS (the real ceiling: COPY is refused under RLS), and COPY into an
//! identical table without RLS (the physical ceiling).

use std::time::Instant;

use sqlx::Connection;
use store::{DeviceId, TenantId};
use time::OffsetDateTime;

use crate::TestDb;

/// What every ceiling measurement of one run shares: the server, tenant, devices, row count
/// and the stored body.
pub struct Ceiling<'a> {
    pub test_db: &'a TestDb,
    pub tenant: TenantId,
    pub devices: &'a [DeviceId],
    pub rows: usize,
    pub body: &'a [u8],
}

impl Ceiling<'_> {
    /// Rows per second of raw INSERT ... unnest as the application role under forced RLS, 1,000 rows per
    /// transaction, `connections` in parallel (opened before the clock starts); seqs start above
    /// `seq_base`. With `ingest_shape`, ingest's own statement (store::records::insert), which
    /// also returns what it inserted.
    pub async fn unnest_rls(&self, connections: usize, seq_base: i64, ingest_shape: bool) -> f64 {
        let Ceiling {
            test_db,
            tenant,
            devices,
            rows,
            body,
        } = *self;
        let mut conns = Vec::new();
        for _ in 0..connections {
            conns.push(test_db.connect_as_app().await);
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (c, mut conn) in conns.into_iter().enumerate() {
            let devices = devices.to_vec();
            let share = rows / connections;
            let body = body.to_vec();
            tasks.push(tokio::spawn(async move {
            let now = OffsetDateTime::now_utc();
            for chunk in 0..share / 1000 {
                let mut tx = conn.begin().await.unwrap();
                sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
                    .bind(tenant.to_string())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let mut ids = Vec::with_capacity(1000);
                let mut seqs = Vec::with_capacity(1000);
                for i in 0..1000 {
                    let n = chunk * 1000 + i;
                    ids.push(devices[n % devices.len()].0);
                    seqs.push(seq_base + (c * share + n) as i64 + 1);
                }
                let times = vec![now; 1000];
                let kinds = vec!["telemetry"; 1000];
                let bodies = vec![body.clone(); 1000];
                // ingest_shape: ingest's own statement (store::records::insert), which also
                // returns what it inserted.
                let sql = if ingest_shape {
                    "INSERT INTO device_records (tenant_id, device_id, seq, recorded_at, received_at, kind, body)
                     SELECT $1, * FROM unnest($2::uuid[], $3::int8[], $4::timestamptz[], $5::timestamptz[], $6::text[], $7::bytea[])
                     ON CONFLICT DO NOTHING RETURNING device_id, seq"
                } else {
                    "INSERT INTO device_records (tenant_id, device_id, seq, recorded_at, received_at, kind, body)
                     SELECT $1, * FROM unnest($2::uuid[], $3::int8[], $4::timestamptz[], $5::timestamptz[], $6::text[], $7::bytea[])"
                };
                sqlx::query(sql)
                .bind(tenant).bind(&ids).bind(&seqs).bind(&times).bind(&times).bind(&kinds).bind(&bodies)
                .fetch_all(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
        }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        rows as f64 / started.elapsed().as_secs_f64()
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
        for chunk in 0..rows / 10_000 {
            let mut tx = owner.begin().await.unwrap();
            let mut copy = tx
            .copy_in_raw("COPY bench_copy (tenant_id, device_id, seq, recorded_at, received_at, kind, body) FROM STDIN")
            .await
            .unwrap();
            let mut text = String::with_capacity(10_000 * (body_hex.len() + 200));
            for i in 0..10_000 {
                let n = chunk * 10_000 + i;
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
        rows as f64 / started.elapsed().as_secs_f64()
    }
}
