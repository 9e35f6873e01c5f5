//! One device whose records the database refuses costs no other device its records or its ack.

use std::time::Duration;

use crate::common::*;
use ingest::IngestConfig;

const GOOD_DEVICES: usize = 20;
const RECORDS: u64 = 5;

#[tokio::test]
async fn a_device_refused_by_the_database_is_isolated_from_its_tenant_batch() {
    let (test_db, db, tenant, devices) = acme_with_devices(GOOD_DEVICES + 1).await;
    let (bad, good) = (devices[0], &devices[1..]);
    refuse_rows_of(&test_db, bad).await;

    // A long batch window: every device's messages share one tenant batch.
    let config = IngestConfig {
        batch_window: Duration::from_millis(500),
        ..test_config()
    };
    let (sender, handle, sink, metrics) = start_recorded(&db, config);
    for seq in 1..=RECORDS {
        for device in &devices {
            send(&sender, *device, vec![telemetry(seq)]).await;
        }
    }

    sink.wait_for_watermark(&devices, RECORDS, Duration::from_secs(20))
        .await;
    handle.shutdown().await;
    let expected: Vec<i64> = (1..=RECORDS as i64).collect();
    for device in good {
        assert_eq!(stored_seqs(&db, tenant, *device).await, expected);
    }
    assert_eq!(stored_seqs(&db, tenant, bad).await, Vec::<i64>::new());
    assert_eq!(metrics.rejects_total("storage_refused"), RECORDS);
    assert_eq!(metrics.rejects_total("storage_error"), 0);

    assert_refused_for_good(&db, tenant, bad, RECORDS).await;
}

#[tokio::test]
async fn a_device_refused_alone_in_its_batch_is_refused_for_good_and_acked() {
    let (test_db, db, tenant, devices) = acme_with_devices(1).await;
    let bad = devices[0];
    refuse_rows_of(&test_db, bad).await;
    let (sender, handle, sink, metrics) = start_recorded(&db, test_config());
    send(&sender, bad, (1..=RECORDS).map(telemetry).collect()).await;

    sink.wait_for_watermark(&[bad], RECORDS, Duration::from_secs(20))
        .await;
    handle.shutdown().await;
    assert_eq!(stored_seqs(&db, tenant, bad).await, Vec::<i64>::new());
    assert_eq!(metrics.rejects_total("storage_refused"), RECORDS);
    assert_eq!(metrics.rejects_total("storage_error"), 0);
    assert_refused_for_good(&db, tenant, bad, RECORDS).await;
}

/// Makes the database itself refuse `device`'s rows, as it would refuse any data it cannot
/// store (SQLSTATE 22023, a data exception), through a real trigger.
async fn refuse_rows_of(test_db: &fleet_tests::TestDb, device: store::DeviceId) {
    let mut owner = test_db.connect_as_owner().await;
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION test_refuse_device() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.device_id = '{device}' THEN
             RAISE EXCEPTION 'this row is refused' USING ERRCODE = '22023';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER test_refuse_device BEFORE INSERT ON device_records
           FOR EACH ROW EXECUTE FUNCTION test_refuse_device();"
    ))
    .execute(&mut owner)
    .await
    .unwrap();
}

/// The device's seqs up to `watermark` are handled, and its last error says the database
/// refused them and why.
async fn assert_refused_for_good(
    db: &store::Database,
    tenant: store::TenantId,
    device: store::DeviceId,
    watermark: u64,
) {
    let mut tx = db.app.begin(tenant).await.unwrap();
    let state = store::ingest_state::get(&mut tx, device)
        .await
        .unwrap()
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        state.watermark, watermark as i64,
        "the bad seqs are handled"
    );
    assert_eq!(state.last_error_reason.as_deref(), Some("storage_refused"));
    let error = state.last_error.unwrap();
    assert!(error.contains("refused by the database"), "{error}");
    assert!(error.contains("this row is refused"), "{error}");
}
