//! Who may connect: refused at the TLS handshake (no certificate, another CA, expired)
//! or at CONNECT (client id, keep-alive, revoked, admission error), each counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use broker::{Admission, AdmissionCheck, BrokerHooks, Refusal, RunningBroker};
use certs::Validity;
use rumqttc::{ConnectReturnCode, MqttOptions};
use time::OffsetDateTime;

/// Each attempt fails before any CONNACK, and the broker counts each as a failed
/// handshake: none completes, no session starts.
async fn assert_refused_at_the_handshake(
    broker: &RunningBroker,
    attempts: impl IntoIterator<Item = MqttOptions>,
) {
    let mut refused = 0;
    for options in attempts {
        assert_eq!(connect_code(options).await, None, "attempt {refused}");
        refused += 1;
    }
    eventually(broker, |stats| {
        stats.refused(Refusal::TlsHandshake) == refused
    })
    .await;
    let stats = broker.stats();
    assert_eq!((stats.handshakes_completed, stats.sessions_started), (0, 0));
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_at_the_handshake() {
    let pki = TestPki::new();
    let stranger_pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |_| {}).await;
    let stranger = stranger_pki.device();
    // The client trusts our server; only its own certificate is foreign.
    let options = mqtt_options(
        broker.local_addr(),
        &stranger.client_id(),
        client_tls(&pki.root(), Some(&stranger)),
    );
    assert_refused_at_the_handshake(&broker, [options]).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused_at_the_handshake() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |_| {}).await;
    let now = OffsetDateTime::now_utc();
    // Expired a day ago; valid only from tomorrow.
    let attempts = [(-10, -1), (1, 10)].map(|(from, until)| {
        let device = pki.device_with(
            Validity::between(
                now + time::Duration::days(from),
                now + time::Duration::days(until),
            )
            .unwrap(),
        );
        device_options(&pki, &broker, &device)
    });
    assert_refused_at_the_handshake(&broker, attempts).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_at_the_handshake() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |_| {}).await;
    let device = pki.device();
    let options = mqtt_options(
        broker.local_addr(),
        &device.client_id(),
        client_tls(&pki.root(), None),
    );
    assert_refused_at_the_handshake(&broker, [options]).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_client_id_other_than_the_device_id_is_refused_with_identifier_rejected() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |_| {}).await;
    let device = pki.device();
    let other = pki.device();
    let tls = || client_tls(&pki.root(), Some(&device));
    for client_id in [
        other.client_id(),
        device.client_id().to_uppercase(),
        device.id().0.simple().to_string(),
        "agent".to_owned(),
    ] {
        let options = mqtt_options(broker.local_addr(), &client_id, tls());
        assert_eq!(
            connect_code(options).await,
            Some(ConnectReturnCode::BadClientId),
            "{client_id}"
        );
    }
    assert_eq!(broker.stats().refused(Refusal::ClientId), 4);
    assert_eq!(broker.stats().sessions_started, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_keep_alive_above_the_maximum_is_refused_with_identifier_rejected() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |config| {
        config.max_keep_alive = 60;
    })
    .await;
    let device = pki.device();
    let mut options = device_options(&pki, &broker, &device);
    options.set_keep_alive(Duration::from_secs(61));
    assert_eq!(
        connect_code(options).await,
        Some(ConnectReturnCode::BadClientId)
    );
    assert_eq!(broker.stats().refused(Refusal::KeepAlive), 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_revoked_device_is_refused_with_not_authorized() {
    let pki = TestPki::new();
    let revoked = pki.device();
    let allowed = pki.device();
    let revoked_id = revoked.id();
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    let mut hooks = BrokerHooks::admit_all();
    hooks.admission = Arc::new(move |identity: certs::DeviceIdentity, _serial| {
        counter.fetch_add(1, Ordering::Relaxed);
        let verdict = if identity.device_id == revoked_id {
            Admission::Refuse
        } else {
            Admission::ADMIT_UNLIMITED
        };
        Box::pin(async move { Ok(verdict) })
    });
    let broker = start_broker(&pki, hooks, |_| {}).await;
    assert_eq!(
        connect_code(device_options(&pki, &broker, &revoked)).await,
        Some(ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(
        connect_code(device_options(&pki, &broker, &allowed)).await,
        Some(ConnectReturnCode::Success)
    );
    assert_eq!(asked.load(Ordering::Relaxed), 2);
    assert_eq!(broker.stats().refused(Refusal::Revoked), 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_failing_or_slow_admission_check_refuses_with_server_unavailable() {
    let pki = TestPki::new();
    let device = pki.device();
    let failing: AdmissionCheck = Arc::new(|_, _| Box::pin(async { Err("database down".into()) }));
    let hanging: AdmissionCheck = Arc::new(|_, _| Box::pin(std::future::pending()));
    for (name, admission) in [("failing", failing), ("hanging", hanging)] {
        let (mut hooks, mut presence) = hooks_with_presence();
        hooks.admission = admission;
        let broker = start_broker(&pki, hooks, |config| {
            config.admission_timeout = Duration::from_millis(200);
        })
        .await;
        assert_eq!(
            connect_code(device_options(&pki, &broker, &device)).await,
            Some(ConnectReturnCode::ServiceUnavailable),
            "{name}"
        );
        assert_eq!(broker.stats().refused(Refusal::AdmissionError), 1);
        // Registered for the check, unregistered before the CONNACK, never online.
        assert!(
            !broker.disconnect(device.id()),
            "{name}: no registry entry left"
        );
        assert_eq!(presence_so_far(&mut presence), [], "{name}");
        broker.shutdown().await;
    }
}
