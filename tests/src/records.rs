//! Device records as the tests and benchmarks send them.

use store::TenantId;
use wire::{Batch, Body, Record, Telemetry, UnixMillis};

use crate::TestDb;

/// A small telemetry record recorded now: CPU at 12.5 %, up for `seq` seconds.
pub fn telemetry(seq: u64) -> Record {
    with_telemetry(
        seq,
        Telemetry {
            cpu_usage_percent: Some(12.5),
            uptime_secs: Some(seq),
            ..Telemetry::default()
        },
    )
}

/// [`telemetry`] with 14 custom metrics: its stored CBOR body is about 200 bytes, the row shape
/// the benchmarks measure.
pub fn telemetry_200_bytes(seq: u64) -> Record {
    let mut record = telemetry(seq);
    if let Body::Telemetry(telemetry) = &mut record.body {
        telemetry.custom = (0..14)
            .map(|i| (format!("metric_{i:02}"), seq as f64 + f64::from(i)))
            .collect();
    }
    record
}

/// The encoded batch of a [`telemetry`] record for each of `seqs`.
pub fn telemetry_batch(seqs: impl IntoIterator<Item = u64>) -> Vec<u8> {
    wire::encode_batch(&Batch::new(seqs.into_iter().map(telemetry).collect()))
}

fn with_telemetry(seq: u64, telemetry: Telemetry) -> Record {
    Record {
        seq,
        recorded_at: UnixMillis::now(),
        body: Body::Telemetry(telemetry),
    }
}

/// The rows of `tenant`'s ledger and how many distinct (device, seq) they hold, as the owner sees
/// them: equal when no record was written twice.
pub async fn committed(db: &TestDb, tenant: TenantId) -> (i64, i64) {
    let mut owner = db.connect_as_owner().await;
    sqlx::query_as(
        "SELECT count(*), count(DISTINCT (device_id, seq)) FROM device_records WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(&mut owner)
    .await
    .unwrap()
}
