//! Postgres ceilings for the ledger's rows and ingest's own rate, in one run.
//!
//! ```sh
//! CARGO_TARGET_DIR=target-ingest TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release -p ingest --example bench_ceiling -- [rows] [devices]
//! ```
//!
//! Prints rows/s for:
//! 1. `INSERT ... SELECT FROM unnest(...)`, 1,000 rows per transaction, into `device_records`
//!    as `fleet_app` under its forced RLS policy (the real ceiling: COPY is refused under RLS);
//! 2. the same with two connections;
//! 3. `COPY ... FROM STDIN` (text), 10,000 rows per transaction, into an identical table
//!    without RLS, as the owner (the physical ceiling);
//! 4. ingest's pipeline driven in process (no MQTT): N devices sending 10-record batches,
//!    committed records/s until every device's last ack is its last seq.
//!
//! Rows are about 256 bytes: two uuids, int8, two timestamptz, a kind, a 200-byte body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_tests::records::telemetry_200_bytes;
use fleet_tests::TestDb;
use ingest::{start, AckError, AckSink, BoxFuture, InboundMessage, IngestConfig, Metrics};
use sqlx::Connection;
use store::{DeviceId, TenantId};
use time::OffsetDateTime;
use wire::Batch;

const BODY: usize = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rows: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    let device_count: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let test_db = TestDb::new().await;
    let db = test_db.open().await;
    let (tenant, devices) =
        fleet_tests::tenancy::tenant_with_devices(&db.app, "bench", device_count).await;
    println!("rows per method: {rows}; devices: {device_count}; body: {BODY} bytes");

    let rate = unnest_rls(&test_db, tenant, &devices, rows, 1, 0).await?;
    println!("INSERT unnest, 1,000/tx, forced RLS, fleet_app, 1 conn : {rate:>9.0} rows/s");
    let rate = unnest_rls(&test_db, tenant, &devices, rows, 2, 10_000_000).await?;
    println!("INSERT unnest, 1,000/tx, forced RLS, fleet_app, 2 conns: {rate:>9.0} rows/s");
    let rate = copy_without_rls(&test_db, tenant, &devices, rows).await?;
    println!("COPY text, 10,000/tx, identical table without RLS, owner: {rate:>9.0} rows/s");
    let (rate, p50, p99) = pipeline(&db, &devices, rows).await?;
    println!(
        "ingest pipeline in process, {device_count} devices, 10 rec/msg     : {rate:>9.0} records/s (arrival->commit p50 {p50:.1} ms, p99 {p99:.1} ms)"
    );
    db.close().await?;
    Ok(())
}

/// Raw INSERT ... unnest as fleet_app, `connections` in parallel; seqs start above `seq_base`.
async fn unnest_rls(
    test_db: &TestDb,
    tenant: TenantId,
    devices: &[DeviceId],
    rows: usize,
    connections: usize,
    seq_base: i64,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let mut conn = test_db.connect_as_app().await;
        let devices = devices.to_vec();
        let share = rows / connections;
        tasks.push(tokio::spawn(async move {
            let body = vec![0xa5u8; BODY];
            let now = OffsetDateTime::now_utc();
            for chunk in 0..share / 1000 {
                let mut tx = conn.begin().await?;
                sqlx::query("SELECT set_config('app.tenant_id', $1, true)").bind(tenant.to_string()).execute(&mut *tx).await?;
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
                sqlx::query(
                    "INSERT INTO device_records (tenant_id, device_id, seq, recorded_at, received_at, kind, body)
                     SELECT $1, * FROM unnest($2::uuid[], $3::int8[], $4::timestamptz[], $5::timestamptz[], $6::text[], $7::bytea[])",
                )
                .bind(tenant).bind(&ids).bind(&seqs).bind(&times).bind(&times).bind(&kinds).bind(&bodies)
                .execute(&mut *tx).await?;
                tx.commit().await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

async fn copy_without_rls(
    test_db: &TestDb,
    tenant: TenantId,
    devices: &[DeviceId],
    rows: usize,
) -> anyhow::Result<f64> {
    let mut owner = test_db.connect_as_owner().await;
    sqlx::query("CREATE TABLE bench_copy (LIKE device_records INCLUDING DEFAULTS INCLUDING CONSTRAINTS, PRIMARY KEY (tenant_id, device_id, seq, recorded_at))")
        .execute(&mut owner).await?;
    let body_hex: String = std::iter::repeat_n("a5", BODY).collect();
    let now = OffsetDateTime::now_utc();
    let now = now.format(&time::format_description::well_known::Rfc3339)?;
    let started = Instant::now();
    for chunk in 0..rows / 10_000 {
        let mut tx = owner.begin().await?;
        let mut copy = tx.copy_in_raw("COPY bench_copy (tenant_id, device_id, seq, recorded_at, received_at, kind, body) FROM STDIN").await?;
        let mut text = String::with_capacity(10_000 * 600);
        for i in 0..10_000 {
            let n = chunk * 10_000 + i;
            let device = devices[n % devices.len()];
            text.push_str(&format!(
                "{tenant}\t{device}\t{}\t{now}\t{now}\ttelemetry\t\\\\x{body_hex}\n",
                n + 1
            ));
        }
        copy.send(text.into_bytes()).await?;
        copy.finish().await?;
        tx.commit().await?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

#[derive(Clone, Default)]
struct LastAcks(Arc<Mutex<HashMap<DeviceId, u64>>>);

impl AckSink for LastAcks {
    fn publish_ack(
        &self,
        device: DeviceId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), AckError>> {
        let ack = wire::decode_ack(&payload).map_err(|e| AckError(e.to_string()));
        if let Ok(ack) = &ack {
            self.0.lock().unwrap().insert(device, ack.watermark);
        }
        Box::pin(async move { ack.map(|_| ()) })
    }
}

async fn pipeline(
    db: &store::Database,
    devices: &[DeviceId],
    rows: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let sink = LastAcks::default();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let config = IngestConfig {
        batch_window: Duration::from_millis(10),
        ..IngestConfig::default()
    };
    let (sender, handle) = start(
        config,
        db.app.clone(),
        Arc::new(sink.clone()),
        metrics.clone(),
    )?;
    let per_device = (rows / devices.len() / 10 * 10) as u64;
    let sample = wire::encode_batch(&Batch::new(vec![telemetry_200_bytes(1)]));
    println!(
        "(pipeline telemetry body: about {} bytes)",
        sample.len() - 8
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for device in devices.iter().copied() {
        let sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let topic = wire::topic::telemetry(device);
            for chunk in 0..per_device / 10 {
                let records = (1..=10)
                    .map(|i| telemetry_200_bytes(chunk * 10 + i))
                    .collect();
                let payload = wire::encode_batch(&Batch::new(records));
                sender
                    .send(InboundMessage::new(topic.clone(), payload))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    loop {
        let done = devices
            .iter()
            .all(|d| sink.0.lock().unwrap().get(d) == Some(&per_device));
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let committed = metrics.records_committed_total();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    let (p50, p99) = lag_quantiles(&text);
    handle.shutdown().await;
    Ok((committed as f64 / elapsed, p50, p99))
}

/// p50 and p99 of fleet_ingest_commit_lag_seconds from the exposition text, in ms (bucket upper bounds).
fn lag_quantiles(text: &str) -> (f64, f64) {
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with("fleet_ingest_commit_lag_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                },
                count,
            ))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    let quantile = |q: f64| {
        buckets
            .iter()
            .find(|b| b.1 >= q * total)
            .map(|b| b.0 * 1000.0)
            .unwrap_or(f64::NAN)
    };
    (quantile(0.5), quantile(0.99))
}
