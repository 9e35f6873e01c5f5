//! A device's MQTT client as the agent connects: MQTT 3.1.1 over mutual TLS with its own
//! certificate from the fleet PKI, subscribed to its acks before it publishes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use certs::{DeviceIdentity, IssuingCa, Validity};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode, TlsConfiguration,
    Transport,
};
use rustls::pki_types::CertificateDer;
use store::{DeviceId, TenantId};
use wire::Batch;

/// Requests a client may queue before `publish` waits for its event loop.
const CAPACITY: usize = 256;

/// A device's MQTT identity: its id, its key and the certificate chain for it (leaf first).
pub struct DeviceCredentials {
    pub device_id: DeviceId,
    pub key: rcgen::KeyPair,
    pub chain: Vec<CertificateDer<'static>>,
}

impl DeviceCredentials {
    /// `device` of `tenant` with a key made as a device makes it and a certificate `ca` issued
    /// for it, valid for an hour.
    pub fn issued(ca: &IssuingCa, tenant: TenantId, device: DeviceId) -> Self {
        let identity = DeviceIdentity {
            tenant_id: tenant,
            device_id: device,
        };
        let validity = Validity::from_now(Duration::from_secs(3600)).unwrap();
        let issued = crate::device::issue(ca, identity, validity);
        DeviceCredentials {
            device_id: device,
            key: issued.key,
            chain: issued.chain,
        }
    }

    /// The options of this device for the broker at `host:port`: its id as client id, TLS
    /// trusting only `root` and presenting its chain, keep-alive 30 s, packets up to 2 MiB.
    pub fn options(
        &self,
        root: &CertificateDer<'static>,
        host: impl Into<String>,
        port: u16,
    ) -> MqttOptions {
        let tls = crate::device::device_tls(root, self.chain.clone(), &self.key);
        let mut options = MqttOptions::new(self.device_id.to_string(), host, port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
        options
    }
}

/// A new device of `tenant` ([`DeviceCredentials::issued`] by `ca`) and its client for the
/// broker on `localhost:port`, not yet connected.
pub fn device_client(
    ca: &IssuingCa,
    tenant: TenantId,
    device: DeviceId,
    port: u16,
) -> (AsyncClient, EventLoop) {
    let options =
        DeviceCredentials::issued(ca, tenant, device).options(ca.root_der(), "localhost", port);
    AsyncClient::new(options, CAPACITY)
}

/// Polls `events` (connecting it) until the broker grants the one subscription just asked for,
/// at QoS 1; panics on a refusal, a connection error or when `within` has passed.
pub async fn wait_for_suback(events: &mut EventLoop, within: Duration) {
    let suback = tokio::time::timeout(within, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(suback))) => return suback,
                Ok(_) => {}
                Err(e) => panic!("connection failed before SUBACK: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("SUBACK within {within:?}"));
    assert_eq!(
        suback.return_codes,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        "subscription granted"
    );
}

/// Connects with `options`, subscribes to `topic` at QoS 1 and waits for the grant
/// ([`wait_for_suback`]).
pub async fn connect_subscribed(
    options: MqttOptions,
    topic: String,
    within: Duration,
) -> (AsyncClient, EventLoop) {
    let (client, mut events) = AsyncClient::new(options, CAPACITY);
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    wait_for_suback(&mut events, within).await;
    (client, events)
}

/// Waits until every ingest instance's `$share` subscription on the broker at `localhost:port`
/// is in place. Their SUBACKs reach only ingest's own event loops, so this watches the
/// consequence instead: a device the database does not know (with a certificate from `ca` for
/// `tenant`) publishes until every instance has received (and refused as `unknown_device`) one
/// of its messages; the broker delivers to a shared subscriber only once it has granted the
/// subscription, and spreads a group's messages over its members. The probes write nothing and
/// count as neither committed nor duplicate.
///
/// `unknown_device_refusals` reads each instance's count of those refusals; panics when some
/// instance still has none after `within`, or the probe loses its connection.
pub async fn wait_until_every_instance_is_subscribed<F, Fut>(
    ca: &IssuingCa,
    tenant: TenantId,
    port: u16,
    within: Duration,
    mut unknown_device_refusals: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Vec<u64>>,
{
    let probe = DeviceId::new_random();
    let (client, mut events) = device_client(ca, tenant, probe, port);
    let driver = tokio::spawn(async move {
        loop {
            // Ends (and the wait below fails) if the probe loses its connection.
            if let Err(e) = events.poll().await {
                return e;
            }
        }
    });
    let payload = wire::encode_batch(&Batch::new(vec![crate::records::telemetry(1)]));
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let refused = unknown_device_refusals().await;
        if refused.iter().all(|n| *n > 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every instance received a probe: {refused:?}"
        );
        assert!(!driver.is_finished(), "the probe's connection is up");
        client
            .publish(
                wire::topic::telemetry(probe),
                QoS::AtLeastOnce,
                false,
                payload.clone(),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver.abort();
}

/// Polls `events` until an ack with a watermark of at least `watermark` arrives; returns it.
/// Panics when the connection fails or `within` passes first.
pub async fn wait_for_ack(events: &mut EventLoop, watermark: u64, within: Duration) -> u64 {
    tokio::time::timeout(within, async {
        loop {
            if let Event::Incoming(Packet::Publish(publish)) =
                events.poll().await.expect("connection stays up")
            {
                let ack = wire::decode_ack(&publish.payload).expect("an ack");
                if ack.watermark >= watermark {
                    return ack.watermark;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no ack for {watermark} within {within:?}"))
}
