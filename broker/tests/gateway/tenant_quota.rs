//! The per-tenant session quota at admission: a tenant at its quota gets its next device
//! refused with CONNACK 0x03 (counted, other tenants unaffected), and a device replacing its
//! own live session is not refused.

use std::sync::Arc;

use crate::common::*;
use broker::{Admission, BrokerHooks, Refusal, RunningBroker};
use rumqttc::{AsyncClient, ConnectReturnCode, EventLoop};

const QUOTA: u32 = 2;

/// A broker whose admission gives `limited` a quota of [`QUOTA`] and every other tenant none
/// to speak of.
async fn broker_with_quota(pki: &TestPki, limited: wire::TenantId) -> RunningBroker {
    let mut hooks = BrokerHooks::admit_all();
    hooks.admission = Arc::new(move |identity: certs::DeviceIdentity, _serial| {
        let verdict = if identity.tenant_id == limited {
            Admission::Admit {
                tenant_session_quota: QUOTA,
            }
        } else {
            Admission::ADMIT_UNLIMITED
        };
        Box::pin(async move { Ok(verdict) })
    });
    start_broker(pki, hooks, |_| {}).await
}

async fn connected(
    pki: &TestPki,
    broker: &RunningBroker,
    device: &TestDevice,
) -> (AsyncClient, EventLoop) {
    connect(device_options(pki, broker, device)).await
}

#[tokio::test]
async fn a_tenant_at_its_quota_gets_its_next_device_refused_while_others_connect() {
    let pki = TestPki::new();
    let limited = wire::TenantId::new_random();
    let other = wire::TenantId::new_random();
    let broker = broker_with_quota(&pki, limited).await;
    let devices: Vec<TestDevice> = (0..=QUOTA).map(|_| pki.device_of(limited)).collect();
    let mut sessions = Vec::new();
    for device in &devices[..QUOTA as usize] {
        sessions.push(connected(&pki, &broker, device).await);
    }
    assert_eq!(
        connect_code(device_options(&pki, &broker, &devices[QUOTA as usize])).await,
        Some(ConnectReturnCode::ServiceUnavailable)
    );
    assert_eq!(broker.stats().refused(Refusal::TenantSessionLimit), 1);
    for _ in 0..=QUOTA {
        sessions.push(connected(&pki, &broker, &pki.device_of(other)).await);
    }
    assert_eq!(broker.stats().sessions_active, u64::from(2 * QUOTA + 1));
    // A place freed by a session ending goes to the next device.
    let (client, mut eventloop) = sessions.remove(0);
    client.disconnect().await.unwrap();
    wait_disconnected(&mut eventloop, TIMEOUT).await;
    eventually(&broker, |stats| {
        stats.sessions_active == u64::from(2 * QUOTA)
    })
    .await;
    drop(connected(&pki, &broker, &devices[QUOTA as usize]).await);
    assert_eq!(broker.stats().refused(Refusal::TenantSessionLimit), 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_connected_device_reconnecting_at_the_quota_is_not_refused() {
    let pki = TestPki::new();
    let limited = wire::TenantId::new_random();
    let broker = broker_with_quota(&pki, limited).await;
    let devices: Vec<TestDevice> = (0..QUOTA).map(|_| pki.device_of(limited)).collect();
    let mut sessions = Vec::new();
    for device in &devices {
        sessions.push(connected(&pki, &broker, device).await);
    }
    // The tenant is at its quota; each device connects again over its live session, twice.
    for round in 0..2 {
        for device in &devices {
            let code = connect_code(device_options(&pki, &broker, device)).await;
            assert_eq!(code, Some(ConnectReturnCode::Success), "round {round}");
        }
    }
    assert_eq!(broker.stats().refused(Refusal::TenantSessionLimit), 0);
    broker.shutdown().await;
}
