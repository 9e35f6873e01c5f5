//! Exactly once, in process: replays, out-of-order topics and two pipelines on one database
//! write every record once, and every device's last ack is its final watermark.

use std::time::Duration;

use crate::common::*;
use ingest::Metrics;
use store::{ingest_state, patch_inventory, records, DeviceId};
use wire::UnixMillis;

#[tokio::test]
async fn replays_and_two_instances_write_each_record_once_and_ack_the_final_watermark() {
    let (_test_db, db, tenant, devices) = acme_with_devices(20).await;
    let sink = RecordingSink::default();
    let metrics = Metrics::default();
    let (first, first_handle) = start_ingest(&db, test_config(), sink.clone(), &metrics);
    let (second, second_handle) = start_ingest(&db, test_config(), sink.clone(), &metrics);

    // 20 devices x 200 records in batches of 10, telemetry and events interleaved; every third
    // batch is sent twice, once to each instance.
    const PER_DEVICE: u64 = 200;
    let mut sends = Vec::new();
    for device in &devices {
        let (device, first, second) = (*device, first.clone(), second.clone());
        sends.push(tokio::spawn(async move {
            for chunk in 0..PER_DEVICE / 10 {
                let records: Vec<_> = (1..=10)
                    .map(|i| chunk * 10 + i)
                    .map(|seq| {
                        if seq % 7 == 0 {
                            started(seq)
                        } else {
                            telemetry(seq)
                        }
                    })
                    .collect();
                // One message per topic kind (records of a message share a topic).
                let (events, telemetry): (Vec<_>, Vec<_>) = records
                    .into_iter()
                    .partition(|r| topic_of(r) == wire::topic::TopicKind::Events);
                for part in [telemetry, events] {
                    if part.is_empty() {
                        continue;
                    }
                    let target = if chunk % 2 == 0 { &first } else { &second };
                    send(target, device, part.clone()).await;
                    if chunk % 3 == 0 {
                        let other = if chunk % 2 == 0 { &second } else { &first };
                        send(other, device, part).await;
                    }
                }
            }
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    sink.wait_for_watermark(&devices, PER_DEVICE, Duration::from_secs(20))
        .await;

    for device in &devices {
        let seqs = stored_seqs(&db, tenant, *device).await;
        assert_eq!(
            seqs,
            (1..=PER_DEVICE as i64).collect::<Vec<_>>(),
            "device {device}"
        );
        // In the order the sink received them, from both instances: a device never sees its
        // watermark go back, and the last word is everything that was sent.
        let acks = sink.acks_of(*device);
        if let Some(w) = acks.windows(2).find(|w| w[0] > w[1]) {
            panic!(
                "device {device}: ack {} after {}; acks never go down: {acks:?}",
                w[1], w[0]
            );
        }
        assert_eq!(acks.last(), Some(&PER_DEVICE), "device {device}: {acks:?}");
    }
    assert_eq!(
        metrics.records_committed_total(),
        devices.len() as u64 * PER_DEVICE
    );
    assert!(metrics.records_duplicate_total() > 0, "replays were seen");
    let mut tx = db.app.begin(tenant).await.unwrap();
    let state = ingest_state::get(&mut tx, devices[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.watermark, PER_DEVICE as i64);
    assert!(state.pending.is_empty());
    assert_eq!(state.records_committed, PER_DEVICE as i64);
    tx.rollback().await.unwrap();
    first_handle.shutdown().await;
    second_handle.shutdown().await;
}

#[tokio::test]
async fn the_watermark_waits_for_a_hole_and_jumps_when_it_fills() {
    let (_test_db, db, _, devices) = acme_with_devices(1).await;
    let device = devices[0];
    let (sender, handle, sink, _) = start_recorded(&db, test_config());

    send(&sender, device, vec![telemetry(1), telemetry(2)]).await;
    sink.wait_for_watermark(&[device], 2, Duration::from_secs(5))
        .await;
    send(&sender, device, vec![telemetry(5), telemetry(6)]).await;
    wait_for_acks(&sink, device, 2).await;
    assert_eq!(sink.last_ack(device), Some(2), "seq 3 and 4 are missing");
    // The ack says what is handled above the hole (an agent that evicted 3..=6 lost only 3).
    assert_eq!(sink.last_handled_above(device), [(5, 6)]);
    send(&sender, device, vec![started(4)]).await;
    wait_for_acks(&sink, device, 3).await;
    assert_eq!(sink.last_ack(device), Some(2));
    assert_eq!(sink.last_handled_above(device), [(4, 6)]);
    send(&sender, device, vec![telemetry(3)]).await;
    sink.wait_for_watermark(&[device], 6, Duration::from_secs(5))
        .await;
    assert_eq!(sink.last_handled_above(device), []);
    handle.shutdown().await;
}

#[tokio::test]
async fn records_the_agent_declared_lost_do_not_stall_the_watermark() {
    let (_test_db, db, tenant, devices) = acme_with_devices(1).await;
    let device = devices[0];
    let (sender, handle, sink, _) = start_recorded(&db, test_config());
    send(&sender, device, vec![telemetry(1), telemetry(2)]).await;
    // 3..=10 were dropped from a full outbox; the agent says so in seq 11.
    send(&sender, device, vec![overflow(11, 3, 10)]).await;
    send(&sender, device, vec![telemetry(12)]).await;
    sink.wait_for_watermark(&[device], 12, Duration::from_secs(5))
        .await;
    assert_eq!(stored_seqs(&db, tenant, device).await, vec![1, 2, 11, 12]);
    handle.shutdown().await;
}

#[tokio::test]
async fn patch_status_updates_the_inventory_and_its_history_only_on_change() {
    let (_test_db, db, tenant, devices) = acme_with_devices(1).await;
    let device = devices[0];
    let (sender, handle, sink, _) = start_recorded(&db, test_config());
    let t = |s: u64| UnixMillis(1_800_000_000_000 + s * 1000);
    send(
        &sender,
        device,
        vec![patch(
            1,
            t(1),
            &[("openssl", "3.0.1", Some("3.0.2")), ("curl", "7", None)],
        )],
    )
    .await;
    // Same inventory: no history.
    send(
        &sender,
        device,
        vec![patch(
            2,
            t(2),
            &[("curl", "7", None), ("openssl", "3.0.1", Some("3.0.2"))],
        )],
    )
    .await;
    // Upgraded.
    let newest = patch(
        4,
        t(4),
        &[
            ("openssl", "3.0.2", None),
            ("curl", "7", None),
            ("zlib", "1.3", None),
        ],
    );
    send(&sender, device, vec![newest.clone()]).await;
    while !stored_seqs(&db, tenant, device).await.contains(&4) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // An older report arriving late, and a replay of the newest: neither changes anything.
    send(
        &sender,
        device,
        vec![patch(3, t(3), &[("openssl", "1.0", None)])],
    )
    .await;
    send(&sender, device, vec![newest]).await;
    sink.wait_for_watermark(&[device], 4, Duration::from_secs(5))
        .await;

    let mut tx = db.app.begin(tenant).await.unwrap();
    let current = patch_inventory::current(&mut tx, device)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.seq, 4);
    let packages: Vec<(&str, &str)> = current
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.installed.as_str()))
        .collect();
    assert_eq!(
        packages,
        vec![("curl", "7"), ("openssl", "3.0.2"), ("zlib", "1.3")]
    );
    let history = patch_inventory::history(&mut tx, device).await.unwrap();
    let seqs: Vec<i64> = history.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, vec![1, 4], "{history:?}");
    assert_eq!(history[1].1["added"][0]["name"], "zlib");
    assert_eq!(history[1].1["changed"][0]["name"], "openssl");
    assert_eq!(records::count(&mut tx).await.unwrap(), 4);
    tx.rollback().await.unwrap();
    handle.shutdown().await;
}

async fn wait_for_acks(sink: &RecordingSink, device: DeviceId, count: usize) {
    for _ in 0..250 {
        if sink.acks_of(device).len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {count} acks: {:?}", sink.acks_of(device));
}

/// The ledger keeps each record's body as the device sent it, byte for byte, even in an
/// encoding wire does not write (here an indefinite-length map), and the API's decoder reads it.
#[tokio::test]
async fn the_stored_body_is_the_bytes_the_device_sent() {
    let (_test_db, db, tenant, devices) = acme_with_devices(1).await;
    let device = devices[0];
    let (sender, handle, sink, _metrics) = start_recorded(&db, test_config());
    let record = telemetry(1);
    let canonical = wire::encode_body(&record.body);
    let mut message = wire::encode_batch(&wire::Batch::new(vec![record.clone()]));
    let at = message.len() - canonical.len();
    assert_eq!(message[at..], canonical, "the body ends the message");
    assert_eq!(message[at], 0xa1, "a one-entry map");
    message[at] = 0xbf;
    message.push(0xff);
    let sent = message[at..].to_vec();
    send_raw(&sender, wire::topic::telemetry(device), message).await;
    sink.wait_for_watermark(&[device], 1, Duration::from_secs(10))
        .await;

    let mut tx = db.app.begin(tenant).await.unwrap();
    let stored = records::list_for_device(&mut tx, device, 0, 10)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].body, sent, "the bytes as sent");
    assert_ne!(stored[0].body, canonical, "not encoded again");
    assert_eq!(wire::decode_body(&stored[0].body), Ok(record.body));
    drop(sender);
    handle.shutdown().await;
}
