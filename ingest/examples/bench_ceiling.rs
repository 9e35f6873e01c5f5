//! Postgres ceilings for the ledger's rows and ingest's own rate, in one run.
//!
//! ```sh
//! CARGO_TARGET_DIR=target-ingest TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release -p ingest --example bench_ceiling -- [rows] [devices]
//! ```
//!
//! Prints rows/s for:
//! 1. `INSERT ... SELECT FROM unnest(...)`, 1,000 rows per transaction, into `device_records`
//!    as the application role under its forced RLS policy (the real ceiling: COPY is refused under RLS);
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

use fleet_tests::ceilings::Ceiling;
use fleet_tests::records::telemetry_200_bytes;
use fleet_tests::TestDb;
use ingest::{start, AckError, AckSink, BoxFuture, InboundMessage, IngestConfig, Metrics};
use store::DeviceId;
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

    let body = [0xa5u8; BODY];
    let ceiling = Ceiling {
        test_db: &test_db,
        tenant,
        devices: &devices,
        rows,
        body: &body,
    };
    let rate = ceiling.unnest_rls(1, 0, false).await;
    println!("INSERT unnest, 1,000/tx, forced RLS, app role, 1 conn : {rate:>9.0} rows/s");
    let rate = ceiling.unnest_rls(2, 10_000_000, false).await;
    println!("INSERT unnest, 1,000/tx, forced RLS, app role, 2 conns: {rate:>9.0} rows/s");
    let rate = ceiling.copy_without_rls().await;
    println!("COPY text, 10,000/tx, identical table without RLS, owner: {rate:>9.0} rows/s");
    let (rate, p50, p99) = pipeline(&db, &devices, rows).await?;
    println!(
        "ingest pipeline in process, {device_count} devices, 10 rec/msg     : {rate:>9.0} records/s (arrival->commit p50 {p50:.1} ms, p99 {p99:.1} ms)"
    );
    db.close().await?;
    Ok(())
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
