//! Live streams at the gateway: a connection without a client certificate logs in with a key
//! the stream authority judges (here a table in the test: the hook is the seam fleetd fills),
//! subscribes to its tenant's stream only, and receives what the stream publisher hands the hub,
//! within its filters and scope. Refusals fail closed and are counted.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use broker::{
    BrokerHooks, LiveStreams, Refusal, StreamAuthority, StreamCredentials, StreamFuture,
    StreamGrant, StreamRefusal, StreamScope,
};
use rumqttc::{AsyncClient, ConnectReturnCode, QoS, SubscribeReasonCode};
use wire::topic::TopicKind;
use wire::{DeviceId, TenantId};

use crate::common::*;

/// Keys: `tenant` (every device), `scoped` (only `allowed`), `role` (not authorized), `error`
/// (the check fails), `slow` (never answers); anything else is a bad key. Rechecks fail once
/// `revoked` is set.
struct TableAuthority {
    tenant: TenantId,
    allowed: DeviceId,
    revoked: AtomicBool,
}

impl TableAuthority {
    fn grant(&self, key_id: &str) -> StreamGrant {
        let scope = match key_id {
            "scoped" => StreamScope::Devices(HashSet::from([self.allowed])),
            _ => StreamScope::Tenant,
        };
        StreamGrant {
            tenant_id: self.tenant,
            key_id: key_id.to_owned(),
            scope,
        }
    }
}

impl StreamAuthority for TableAuthority {
    fn authenticate(&self, credentials: StreamCredentials) -> StreamFuture {
        let verdict = match (credentials.key_id.as_str(), credentials.key.as_str()) {
            (id @ ("tenant" | "scoped"), "secret") => Ok(Ok(self.grant(id))),
            ("role", "secret") => Ok(Err(StreamRefusal::NotAuthorized)),
            ("error", _) => Err("database down".into()),
            ("slow", _) => {
                return Box::pin(std::future::pending());
            }
            _ => Ok(Err(StreamRefusal::BadCredentials)),
        };
        Box::pin(async move { verdict })
    }

    fn recheck(&self, grant: &StreamGrant) -> StreamFuture {
        let verdict = if self.revoked.load(Ordering::Relaxed) {
            Ok(Err(StreamRefusal::BadCredentials))
        } else {
            Ok(Ok(grant.clone()))
        };
        Box::pin(async move { verdict })
    }
}

struct Streams {
    pki: TestPki,
    broker: broker::RunningBroker,
    authority: Arc<TableAuthority>,
}

async fn start(recheck_interval: Duration, queue_capacity: usize) -> Streams {
    let pki = TestPki::new();
    let authority = Arc::new(TableAuthority {
        tenant: TenantId::new_random(),
        allowed: DeviceId::new_random(),
        revoked: AtomicBool::new(false),
    });
    let hooks = BrokerHooks {
        streams: Some(authority.clone() as Arc<dyn StreamAuthority>),
        ..BrokerHooks::admit_all()
    };
    let broker = start_broker(&pki, hooks, |config| {
        config.admission_timeout = Duration::from_millis(300);
        config.live_streams = Some(LiveStreams {
            recheck_interval,
            queue_capacity,
            ..LiveStreams::default()
        });
    })
    .await;
    Streams {
        pki,
        broker,
        authority,
    }
}

impl Streams {
    fn options(&self, login: Option<(&str, &str)>) -> rumqttc::MqttOptions {
        let mut options = mqtt_options(
            self.broker.local_addr(),
            "integration",
            client_tls(&self.pki.root(), None),
        );
        if let Some((id, key)) = login {
            options.set_credentials(id, key);
        }
        options
    }

    fn filter(&self, rest: &str) -> String {
        format!("{}/{}/{rest}", broker::STREAM_ROOT, self.authority.tenant)
    }
}

#[tokio::test]
async fn logins_are_judged_by_the_authority_and_fail_closed() {
    let streams = start(Duration::from_secs(30), 16).await;
    for (login, code) in [
        (None, ConnectReturnCode::BadUserNamePassword),
        (
            Some(("tenant", "wrong")),
            ConnectReturnCode::BadUserNamePassword,
        ),
        (Some(("role", "secret")), ConnectReturnCode::NotAuthorized),
        (
            Some(("error", "secret")),
            ConnectReturnCode::ServiceUnavailable,
        ),
        (
            Some(("slow", "secret")),
            ConnectReturnCode::ServiceUnavailable,
        ),
        (Some(("tenant", "secret")), ConnectReturnCode::Success),
    ] {
        assert_eq!(
            connect_code(streams.options(login)).await,
            Some(code),
            "{login:?}"
        );
    }
    let stats = streams.broker.stats();
    assert_eq!(stats.refused(Refusal::StreamCredentials), 2);
    assert_eq!(stats.refused(Refusal::StreamNotAuthorized), 1);
    assert_eq!(stats.refused(Refusal::StreamCheckError), 2);
}

#[tokio::test]
async fn without_live_streams_a_connection_without_certificate_fails_its_handshake() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |_| {}).await;
    let mut options = mqtt_options(broker.local_addr(), "x", client_tls(&pki.root(), None));
    options.set_credentials("tenant", "secret");
    assert_eq!(connect_code(options).await, None);
    eventually(&broker, |stats| stats.refused(Refusal::TlsHandshake) == 1).await;
}

#[tokio::test]
async fn live_streams_need_an_authority() {
    let pki = TestPki::new();
    let server = pki
        .ca()
        .issue_server_cert(&certs::ServerCertParams::new(
            vec!["localhost".into()],
            vec![],
        ))
        .unwrap();
    let mut config = broker::BrokerConfig::new(
        server.chain_der(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(server.key().to_pkcs8_der()),
        pki.root(),
    );
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.live_streams = Some(LiveStreams::default());
    let error = broker::Broker::start(config, BrokerHooks::admit_all())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("live_streams"), "{error}");
}

#[tokio::test]
async fn a_subscriber_gets_its_filters_and_scope_only_and_is_closed_when_revoked() {
    let streams = start(Duration::from_millis(200), 16).await;
    let (client, mut events) = connect(streams.options(Some(("scoped", "secret")))).await;
    client
        .subscribe(streams.filter("+/telemetry"), QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        next_suback_codes(&mut events).await,
        [SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    let publisher = streams.broker.stream_publisher();
    let tenant = streams.authority.tenant;
    let allowed = streams.authority.allowed;
    assert!(publisher.has_subscribers_in(tenant));
    assert!(!publisher.has_subscribers_in(TenantId::new_random()));
    // Out of scope, another kind, then the one it may see.
    assert_eq!(
        publisher.publish(
            tenant,
            DeviceId::new_random(),
            TopicKind::Telemetry,
            "a".into()
        ),
        0
    );
    assert_eq!(
        publisher.publish(tenant, allowed, TopicKind::Events, "b".into()),
        0
    );
    assert_eq!(
        publisher.publish(tenant, allowed, TopicKind::Telemetry, "c".into()),
        1
    );
    let publish = next_publish(&mut events).await;
    assert_eq!(
        publish.topic,
        broker::stream_topic(tenant, allowed, TopicKind::Telemetry)
    );
    assert_eq!(&publish.payload[..], b"c");
    assert_eq!(publish.qos, QoS::AtMostOnce);

    streams.authority.revoked.store(true, Ordering::Relaxed);
    wait_disconnected(&mut events, TIMEOUT).await;
    eventually(&streams.broker, |stats| {
        stats.refused(Refusal::StreamKeyEnded) == 1
    })
    .await;
    assert!(!publisher.has_subscribers());
    drop(client);
}

#[tokio::test]
async fn a_subscriber_may_not_publish_nor_subscribe_outside_its_tenant_stream() {
    let streams = start(Duration::from_secs(30), 16).await;
    let (client, mut events) = connect(streams.options(Some(("tenant", "secret")))).await;
    for filter in [
        format!("{}/{}/#", broker::STREAM_ROOT, TenantId::new_random()),
        "#".to_owned(),
        wire::topic::INGEST_FILTER.to_owned(),
    ] {
        client.subscribe(filter, QoS::AtMostOnce).await.unwrap();
        assert_eq!(
            next_suback_codes(&mut events).await,
            [SubscribeReasonCode::Failure]
        );
    }
    client
        .publish(streams.filter("x/telemetry"), QoS::AtMostOnce, false, "{}")
        .await
        .unwrap();
    wait_disconnected(&mut events, TIMEOUT).await;
    let stats = streams.broker.stats();
    assert_eq!(stats.refused(Refusal::StreamSubscribeTopic), 3);
    assert_eq!(stats.refused(Refusal::StreamPublish), 1);
    let _: &AsyncClient = &client;
}
