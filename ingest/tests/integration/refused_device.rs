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

/// A device whose package names hold NUL and one whose bodies do not decode share a tenant batch
/// with 20 good devices sending at the same time: every good record is committed and acked, the
/// bad messages are refused and counted, and, since they carry the wire's sequence header, both
/// bad devices' watermarks move past the bad seqs.
#[tokio::test]
async fn a_nul_bearing_device_and_an_undecodable_one_cost_twenty_good_devices_nothing() {
    let (_test_db, db, tenant, devices) = acme_with_devices(GOOD_DEVICES + 2).await;
    let (nul, garbled, good) = (devices[0], devices[1], devices[2..].to_vec());
    let config = IngestConfig {
        batch_window: Duration::from_millis(200),
        ..test_config()
    };
    let (sender, handle, sink, metrics) = start_recorded(&db, config);

    // The good devices, at the same time, as an agent sends (with the header), one record per
    // message.
    let mut streams = Vec::new();
    for device in good.clone() {
        let sender = sender.clone();
        streams.push(tokio::spawn(async move {
            for seq in 1..=RECORDS {
                let payload = wire::encode_message(&wire::Batch::new(vec![telemetry(seq)]));
                send_raw(&sender, wire::topic::telemetry(device), payload).await;
            }
        }));
    }
    // The NUL device: seq 1 good, seq 2 a patch report naming a package "lib\0c6" (refused by
    // wire's validation), seq 3 good.
    let headed = |records: Vec<wire::Record>| wire::encode_message(&wire::Batch::new(records));
    send_raw(
        &sender,
        wire::topic::telemetry(nul),
        headed(vec![telemetry(1)]),
    )
    .await;
    let nul_patch = patch(2, wire::UnixMillis::now(), &[("lib\0c6", "1.0", None)]);
    send_raw(
        &sender,
        wire::topic::patch_status(nul),
        headed(vec![nul_patch]),
    )
    .await;
    send_raw(
        &sender,
        wire::topic::telemetry(nul),
        headed(vec![telemetry(3)]),
    )
    .await;
    // The garbled device: seqs 1..=2 whose body is cut short, a message without a header that
    // is not CBOR at all (nothing to attribute), then seqs 3..=4 good.
    let mut cut = headed(vec![telemetry(1), telemetry(2)]);
    cut.truncate(wire::header::HEADER_LEN + 5);
    send_raw(&sender, wire::topic::telemetry(garbled), cut).await;
    send_raw(&sender, wire::topic::telemetry(garbled), vec![0xff, 0x00]).await;
    send_raw(
        &sender,
        wire::topic::telemetry(garbled),
        headed(vec![telemetry(3), telemetry(4)]),
    )
    .await;
    for stream in streams {
        stream.await.unwrap();
    }

    sink.wait_for_watermark(&good, RECORDS, Duration::from_secs(20))
        .await;
    sink.wait_for_watermark(&[nul], 3, Duration::from_secs(10))
        .await;
    sink.wait_for_watermark(&[garbled], 4, Duration::from_secs(10))
        .await;
    handle.shutdown().await;

    let expected: Vec<i64> = (1..=RECORDS as i64).collect();
    for device in &good {
        assert_eq!(stored_seqs(&db, tenant, *device).await, expected);
    }
    assert_eq!(stored_seqs(&db, tenant, nul).await, vec![1, 3]);
    assert_eq!(stored_seqs(&db, tenant, garbled).await, vec![3, 4]);
    assert_eq!(metrics.rejects_total("forbidden_character"), 1);
    assert_eq!(metrics.rejects_total("malformed"), 2);
    assert_eq!(metrics.rejects_total("storage_error"), 0);
    assert_eq!(metrics.rejects_total("storage_refused"), 0);

    let mut tx = db.app.begin(tenant).await.unwrap();
    let nul_state = store::ingest_state::get(&mut tx, nul)
        .await
        .unwrap()
        .unwrap();
    let garbled_state = store::ingest_state::get(&mut tx, garbled)
        .await
        .unwrap()
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!((nul_state.watermark, nul_state.pending.len()), (3, 0));
    assert_eq!(nul_state.rejects.get("forbidden_character"), Some(&1));
    assert_eq!(
        nul_state.last_error.as_deref(),
        Some("seqs 2..=2 refused: package.name contains the control character U+0000 at byte 3")
    );
    assert_eq!(
        (garbled_state.watermark, garbled_state.pending.len()),
        (4, 0)
    );
    assert_eq!(garbled_state.rejects.get("malformed"), Some(&2));
    assert_eq!(
        garbled_state.last_error_reason.as_deref(),
        Some("malformed")
    );
}

/// A header claiming more seqs than a batch can hold attributes nothing: the device cannot
/// declare a range of its own seqs handled that way, and its real records still land.
#[tokio::test]
async fn a_header_claiming_too_wide_a_range_marks_nothing() {
    let (_test_db, db, tenant, devices) = acme_with_devices(1).await;
    let device = devices[0];
    let (sender, handle, sink, metrics) = start_recorded(&db, test_config());
    let mut forged = b"FP\x01".to_vec();
    for field in [0u64, 1, 1, 1_000_000] {
        forged.extend_from_slice(&field.to_be_bytes());
    }
    forged.extend_from_slice(&[0xff]);
    send_raw(&sender, wire::topic::telemetry(device), forged).await;
    send(&sender, device, (1..=RECORDS).map(telemetry).collect()).await;
    sink.wait_for_watermark(&[device], RECORDS, Duration::from_secs(10))
        .await;
    handle.shutdown().await;
    let expected: Vec<i64> = (1..=RECORDS as i64).collect();
    assert_eq!(stored_seqs(&db, tenant, device).await, expected);
    assert_eq!(metrics.rejects_total("bad_header"), 1);
    assert!(sink.acks_of(device).iter().all(|w| *w <= RECORDS));
}
