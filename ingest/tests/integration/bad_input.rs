//! Every kind of bad input is refused, counted by reason (per device when there is a device),
//! and never holds back a good device sending at the same time.

use std::time::Duration;

use crate::common::*;
use store::devices;
use store::{ingest_state, DeviceId};
use wire::topic::{self, TopicKind};
use wire::{Batch, Body, Record, UnixMillis};

#[tokio::test]
async fn each_kind_of_bad_input_is_refused_and_counted_while_a_good_device_loses_nothing() {
    let (_test_db, db, tenant, devices) = acme_with_devices(3).await;
    let (good, bad, revoked) = (devices[0], devices[1], devices[2]);
    let mut tx = db.app.begin(tenant).await.unwrap();
    devices::revoke(
        &mut tx,
        revoked,
        &store::device_groups::GroupScope::All,
        &store::audit::Actor::System,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let (sender, handle, sink, metrics) = start_recorded(
        &db,
        ingest::IngestConfig {
            max_message_bytes: 4096,
            ..test_config()
        },
    );

    let good_sender = sender.clone();
    let good_stream = tokio::spawn(async move {
        for chunk in 0..50u64 {
            send(
                &good_sender,
                good,
                (1..=10).map(|i| telemetry(chunk * 10 + i)).collect(),
            )
            .await;
        }
    });

    let telemetry_topic = topic::telemetry(bad);
    // Malformed CBOR.
    send_raw(&sender, telemetry_topic.clone(), vec![0xff, 0xfe, 0x00]).await;
    // Oversize.
    send_raw(&sender, telemetry_topic.clone(), vec![0xa0; 5000]).await;
    // Unknown major version.
    let mut future = Batch::new(vec![telemetry(1)]);
    future.version = wire::SchemaVersion::new(9, 0);
    send_raw(
        &sender,
        telemetry_topic.clone(),
        wire::encode_batch(&future),
    )
    .await;
    // Kind not matching its topic: an event on the telemetry topic (seq 1), then good records.
    let event_on_telemetry = wire::encode_batch(&Batch::new(vec![started(1), telemetry(2)]));
    send_raw(&sender, telemetry_topic.clone(), event_on_telemetry).await;
    // An unknown record kind from a newer agent (seq 3).
    let unknown = Record {
        seq: 3,
        recorded_at: UnixMillis::now(),
        body: Body::Unknown {
            kind: "future".into(),
        },
    };
    send_raw(
        &sender,
        topic::events(bad),
        wire::encode_batch(&Batch::new(vec![unknown])),
    )
    .await;
    // A device no tenant has.
    let stranger = DeviceId::new_random();
    send(&sender, stranger, vec![telemetry(1)]).await;
    // A revoked device.
    send(&sender, revoked, vec![telemetry(1), telemetry(2)]).await;
    // Not a device topic, and a down topic.
    send_raw(&sender, "fleet/v1/not-a-uuid/up/telemetry".into(), vec![]).await;
    send_raw(&sender, topic::ack(bad), vec![]).await;

    good_stream.await.unwrap();
    sink.wait_for_watermark(&[good], 500, Duration::from_secs(15))
        .await;
    // The refused records 1 and 3 count as handled: the bad device's watermark passes them.
    sink.wait_for_watermark(&[bad], 3, Duration::from_secs(5))
        .await;
    assert_eq!(stored_seqs(&db, tenant, good).await.len(), 500);
    assert_eq!(stored_seqs(&db, tenant, bad).await, vec![2]);
    assert!(
        sink.acks_of(revoked).is_empty(),
        "a revoked device is never acknowledged"
    );
    assert!(stored_seqs(&db, tenant, revoked).await.is_empty());

    for (reason, expected) in [
        ("malformed", 1),
        ("oversize", 1),
        ("unsupported_version", 1),
        ("wrong_topic", 1),
        ("unknown_record_kind", 1),
        ("unknown_device", 1),
        ("revoked", 2),
        ("invalid_device_id", 1),
        ("not_up_topic", 1),
    ] {
        assert_eq!(metrics.rejects_total(reason), expected, "{reason}");
    }

    let mut tx = db.app.begin(tenant).await.unwrap();
    let state = ingest_state::get(&mut tx, bad).await.unwrap().unwrap();
    for reason in [
        "malformed",
        "oversize",
        "unsupported_version",
        "wrong_topic",
        "unknown_record_kind",
    ] {
        assert_eq!(
            state.rejects.get(reason),
            Some(&1),
            "{reason}: {:?}",
            state.rejects
        );
    }
    assert!(state.last_error.is_some() && state.last_error_at.is_some());
    let revoked_state = ingest_state::get(&mut tx, revoked).await.unwrap().unwrap();
    assert_eq!(revoked_state.rejects.get("revoked"), Some(&1));
    assert_eq!(revoked_state.last_error_reason.as_deref(), Some("revoked"));
    let good_state = ingest_state::get(&mut tx, good).await.unwrap().unwrap();
    assert!(good_state.rejects.is_empty());
    tx.rollback().await.unwrap();
    let _ = TopicKind::Telemetry;
    handle.shutdown().await;
}

#[tokio::test]
async fn a_device_with_too_many_gaps_is_refused_until_they_fill() {
    let (_test_db, db, tenant, devices) = acme_with_devices(1).await;
    let device = devices[0];
    let (sender, handle, sink, metrics) = start_recorded(
        &db,
        ingest::IngestConfig {
            max_pending_ranges: 2,
            ..test_config()
        },
    );
    send(
        &sender,
        device,
        vec![telemetry(2), telemetry(4), telemetry(6)],
    )
    .await;
    wait_until(|| metrics.rejects_total("too_many_gaps") == 1).await;
    assert_eq!(stored_seqs(&db, tenant, device).await, vec![2, 4]);
    send(
        &sender,
        device,
        vec![telemetry(1), telemetry(3), telemetry(5), telemetry(6)],
    )
    .await;
    sink.wait_for_watermark(&[device], 6, Duration::from_secs(5))
        .await;
    handle.shutdown().await;
}

async fn wait_until(condition: impl Fn() -> bool) {
    for _ in 0..250 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition never held");
}
