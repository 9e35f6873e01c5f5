//! Sequence spaces (epochs): a device's new epoch restarts its watermark without touching the
//! old epoch's records, a late message of the epoch it left is not stored, and a device that
//! reuses a seq of its epoch for another record is asked for a new epoch.

use std::time::Duration;

use crate::common::*;
use store::ingest_state;
use wire::{topic, Batch, Epoch, Record, UnixMillis};

fn at(seq: u64, millis: u64) -> Record {
    Record {
        recorded_at: UnixMillis(millis),
        ..telemetry(seq)
    }
}

async fn send_in(
    sender: &ingest::IngestSender,
    device: store::DeviceId,
    epoch: Epoch,
    records: Vec<Record>,
) {
    let payload = wire::encode_batch(&Batch::in_epoch(records, epoch));
    send_raw(sender, topic::telemetry(device), payload).await;
}

#[tokio::test]
async fn a_new_epoch_restarts_the_watermark_and_a_left_one_is_not_stored() {
    let (_test_db, db, tenant, devices) = acme_with_devices(1).await;
    let device = devices[0];
    let (sender, handle, sink, _metrics) = start_recorded(&db, test_config());
    let old = Epoch {
        id: 11,
        first_seq: 1,
    };
    let new = Epoch {
        id: u64::MAX,
        first_seq: 1,
    };
    let within = Duration::from_secs(10);
    send_in(
        &sender,
        device,
        old,
        (1..=3).map(|s| at(s, 1_000 + s)).collect(),
    )
    .await;
    sink.wait_for_watermark(&[device], 3, within).await;
    // The state directory was wiped: numbers start over in a new epoch.
    send_in(
        &sender,
        device,
        new,
        (1..=2).map(|s| at(s, 2_000 + s)).collect(),
    )
    .await;
    sink.wait_for_watermark(&[device], 2, within).await;
    // A late message of the old epoch, then more of the new one.
    send_in(&sender, device, old, vec![at(4, 1_004)]).await;
    send_in(&sender, device, new, vec![at(3, 2_003)]).await;
    sink.wait_for_watermark(&[device], 3, within).await;

    let mut seqs = stored_seqs(&db, tenant, device).await;
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        [1, 1, 2, 2, 3, 3],
        "both epochs' records, not the late one"
    );
    let mut tx = db.app.begin(tenant).await.unwrap();
    let state = ingest_state::get(&mut tx, device).await.unwrap().unwrap();
    tx.rollback().await.unwrap();
    assert_eq!((state.epoch as u64, state.watermark), (u64::MAX, 3));
    assert_eq!(state.retired_epochs, [0, 11]);
    assert_eq!(state.rejects.get("stale_epoch"), Some(&1));
    drop(sender);
    handle.shutdown().await;
}

#[tokio::test]
async fn a_seq_reused_for_another_record_asks_for_a_new_epoch() {
    let (_test_db, db, tenant, devices) = acme_with_devices(1).await;
    let device = devices[0];
    let (sender, handle, sink, _metrics) = start_recorded(&db, test_config());
    let epoch = Epoch {
        id: 5,
        first_seq: 1,
    };
    let within = Duration::from_secs(10);
    let first: Vec<Record> = (1..=3).map(|s| at(s, 1_000 + s)).collect();
    send_in(&sender, device, epoch, first.clone()).await;
    sink.wait_for_watermark(&[device], 3, within).await;
    // A replay (same records) is a plain duplicate.
    send_in(&sender, device, epoch, first).await;
    // An outbox restored from an older copy numbers other records 2 and 3.
    send_in(&sender, device, epoch, vec![at(2, 5_002), at(3, 5_003)]).await;
    let deadline = tokio::time::Instant::now() + within;
    while sink.new_epoch_acks(device) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ack asked for a new epoch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        sink.new_epoch_acks(device),
        1,
        "only the reuse, not the replay"
    );
    let mut tx = db.app.begin(tenant).await.unwrap();
    let state = ingest_state::get(&mut tx, device).await.unwrap().unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(state.rejects.get("seq_reused"), Some(&1));
    assert_eq!(state.last_error_reason.as_deref(), Some("seq_reused"));
    drop(sender);
    handle.shutdown().await;
}
