//! Revocation: a live session closes within 2 s of `disconnect`, and the device's next
//! attempt is refused by the admission hook.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use broker::{Admission, BrokerHooks, DisconnectReason, Refusal};
use rumqttc::{ConnectReturnCode, QoS};

/// An admission hook backed by an in-memory revocation list, as the store would be.
fn revocation_list() -> (BrokerHooks, Arc<Mutex<HashSet<wire::DeviceId>>>) {
    let revoked = Arc::new(Mutex::new(HashSet::new()));
    let list = Arc::clone(&revoked);
    let mut hooks = BrokerHooks::admit_all();
    hooks.admission = Arc::new(move |identity: certs::DeviceIdentity, _serial| {
        let verdict = if list.lock().unwrap().contains(&identity.device_id) {
            Admission::Refuse
        } else {
            Admission::ADMIT_UNLIMITED
        };
        Box::pin(async move { Ok(verdict) })
    });
    (hooks, revoked)
}

#[tokio::test]
async fn a_revoked_device_is_dropped_within_two_seconds_and_cannot_reconnect() {
    let pki = TestPki::new();
    let (mut hooks, revoked) = revocation_list();
    let (presence_tx, mut presence) = tokio::sync::mpsc::unbounded_channel();
    hooks.presence = Some(presence_tx);
    let mut ingest = tap_ingest(&mut hooks);
    let broker = start_broker(&pki, hooks, |_| {}).await;
    let device = pki.device();
    let bystander = pki.device();
    let (_bystander_client, bystander_loop) =
        connect(device_options(&pki, &broker, &bystander)).await;
    let bystander_driver = drive(bystander_loop);

    let mut options = device_options(&pki, &broker, &device);
    options.set_last_will(rumqttc::LastWill::new(
        wire::topic::presence(device.id()),
        "gone",
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = connect(options).await;
    revoked.lock().unwrap().insert(device.id());
    assert!(broker.disconnect(device.id()));
    let took = wait_disconnected(&mut eventloop, Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(2), "took {took:?}");
    drop(client);

    let offline = loop {
        let event = presence.recv().await.unwrap();
        if event.identity == device.identity && !event.online {
            break event;
        }
    };
    assert_eq!(offline.reason, Some(DisconnectReason::Revoked));
    // A revoked device's will is not published: it gets no data in.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ingest.recv())
            .await
            .is_err()
    );

    assert_eq!(
        connect_code(device_options(&pki, &broker, &device)).await,
        Some(ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(broker.stats().refused(Refusal::Revoked), 1);
    assert!(!broker.disconnect(device.id()), "no session left");
    assert!(
        !bystander_driver.is_finished(),
        "other devices stay connected"
    );
    eventually(&broker, |stats| stats.sessions_active == 1).await;
    // The offline event above was the only one: nothing more for the revoked session
    // once it is no longer counted, and nothing for the refused attempt.
    assert_eq!(
        presence_so_far(&mut presence)
            .iter()
            .filter(|event| event.identity == device.identity)
            .count(),
        0
    );
    bystander_driver.abort();
    broker.shutdown().await;
}

#[tokio::test]
async fn a_revocation_during_the_admission_check_is_not_lost() {
    let pki = TestPki::new();
    let device = pki.device();
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let (checking_tx, mut checking) = tokio::sync::mpsc::unbounded_channel();
    let mut hooks = BrokerHooks::admit_all();
    hooks.admission = Arc::new(move |_, _| {
        let mut gate = gate_rx.clone();
        let checking = checking_tx.clone();
        Box::pin(async move {
            // The check is running: the session was registered before it was called.
            let _ = checking.send(());
            // The check read the database before the revocation committed.
            let _ = gate.wait_for(|open| *open).await;
            Ok(Admission::ADMIT_UNLIMITED)
        })
    });
    let (presence_tx, mut presence) = tokio::sync::mpsc::unbounded_channel();
    hooks.presence = Some(presence_tx);
    let broker = start_broker(&pki, hooks, |_| {}).await;
    let attempt = tokio::spawn(connect_code(device_options(&pki, &broker, &device)));
    tokio::time::timeout(TIMEOUT, checking.recv())
        .await
        .expect("the admission check runs")
        .unwrap();
    assert!(
        broker.disconnect(device.id()),
        "registered before the check"
    );
    gate_tx.send(true).unwrap();
    let code = attempt.await.unwrap();
    assert_eq!(code, Some(ConnectReturnCode::NotAuthorized));
    assert_eq!(broker.stats().sessions_started, 0);
    assert_eq!(broker.stats().refused(Refusal::Revoked), 1);
    // Refused before it went online: unregistered before the CONNACK, never reported.
    assert!(!broker.disconnect(device.id()), "no registry entry left");
    assert_eq!(presence_so_far(&mut presence), []);
    broker.shutdown().await;
}
