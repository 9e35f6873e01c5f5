//! Helpers shared by the broker tests: a fresh PKI per test (generated with `certs`,
//! never pasted), a broker on an ephemeral loopback port, and rumqttc clients that use
//! rustls with ring.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use broker::{
    Broker, BrokerConfig, BrokerHooks, DevicePublish, DevicePublishFuture, DevicePublishSink,
    PresenceEvent, RunningBroker,
};
use certs::{
    CertificateDer, DeviceIdentity, IssuingCa, Pki, PkiParams, ServerCertParams, Validity,
};
use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions,
    Packet, SubscribeReasonCode, TlsConfiguration, Transport,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;
use tokio::sync::mpsc;

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A PKI in a temporary directory.
pub struct TestPki {
    /// Where the PKI's files are, removed with it.
    _dir: TempDir,
    pub pki: Pki,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki"), &PkiParams::default()).unwrap();
        Self { _dir: dir, pki }
    }

    pub fn ca(&self) -> &IssuingCa {
        self.pki.issuing_ca()
    }

    pub fn root(&self) -> CertificateDer<'static> {
        self.ca().root_der().clone()
    }

    /// A device of a fresh tenant, valid for a day.
    pub fn device(&self) -> TestDevice {
        self.device_with(Validity::from_now(Duration::from_secs(86_400)).unwrap())
    }

    pub fn device_with(&self, validity: Validity) -> TestDevice {
        TestDevice::issue(self.ca(), validity)
    }

    /// A new device of `tenant`, valid for a day.
    pub fn device_of(&self, tenant: wire::TenantId) -> TestDevice {
        let validity = Validity::from_now(Duration::from_secs(86_400)).unwrap();
        TestDevice::issue_for(self.ca(), tenant, validity)
    }
}

/// A device key and its certificate chain (leaf + issuing CA).
pub struct TestDevice {
    pub identity: DeviceIdentity,
    pub key: rcgen::KeyPair,
    pub chain: Vec<CertificateDer<'static>>,
    pub chain_pem: String,
}

impl TestDevice {
    /// Makes a key and a CSR as a device would, and has `ca` sign it.
    pub fn issue(ca: &IssuingCa, validity: Validity) -> Self {
        Self::issue_for(ca, wire::TenantId::new_random(), validity)
    }

    /// [`Self::issue`] for a device of `tenant`.
    pub fn issue_for(ca: &IssuingCa, tenant: wire::TenantId, validity: Validity) -> Self {
        let identity = DeviceIdentity {
            tenant_id: tenant,
            device_id: wire::DeviceId::new_random(),
        };
        let issued = fleet_tests::device::issue(ca, identity, validity);
        Self {
            identity,
            chain: issued.chain,
            chain_pem: issued.chain_pem,
            key: issued.key,
        }
    }

    pub fn id(&self) -> wire::DeviceId {
        self.identity.device_id
    }

    pub fn client_id(&self) -> String {
        self.identity.device_id.to_string()
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    pub fn topic(&self, rest: &str) -> String {
        format!("fleet/v1/{}/{rest}", self.identity.device_id)
    }

    /// Writes `key.pem`, `chain.pem` into `dir` for command line clients.
    pub fn write_pem(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let key = dir.join(format!("{}.key", self.id()));
        let chain = dir.join(format!("{}.pem", self.id()));
        std::fs::write(&key, self.key.serialize_pem()).unwrap();
        std::fs::write(&chain, &self.chain_pem).unwrap();
        (key, chain)
    }
}

/// A broker for `pki` on 127.0.0.1, port 0, with `tweak` applied to its configuration.
pub async fn start_broker(
    pki: &TestPki,
    hooks: BrokerHooks,
    tweak: impl FnOnce(&mut BrokerConfig),
) -> RunningBroker {
    let server = pki
        .ca()
        .issue_server_cert(&ServerCertParams::new(
            vec!["localhost".into()],
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        ))
        .unwrap();
    let mut config = BrokerConfig::new(
        server.chain_der(),
        PrivateKeyDer::Pkcs8(server.key().to_pkcs8_der()),
        pki.root(),
    );
    config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    tweak(&mut config);
    Broker::start(config, hooks).await.unwrap()
}

/// A device-publish sink that passes every publish to the test, as ingest takes them.
struct ChannelSink(mpsc::UnboundedSender<DevicePublish>);

impl DevicePublishSink for ChannelSink {
    fn publish(&self, message: DevicePublish) -> DevicePublishFuture {
        let sent = self.0.send(message).map_err(|_| broker::SinkClosed);
        Box::pin(async move { sent })
    }
}

/// Installs a sink in `hooks` and returns what it receives: every device publish the gateway
/// let through, in order.
pub fn tap_ingest(hooks: &mut BrokerHooks) -> mpsc::UnboundedReceiver<DevicePublish> {
    let (tx, rx) = mpsc::unbounded_channel();
    hooks.device_publishes = Some(Arc::new(ChannelSink(tx)));
    rx
}

/// Hooks that admit everyone and hand presence events to the test.
pub fn hooks_with_presence() -> (BrokerHooks, mpsc::UnboundedReceiver<PresenceEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut hooks = BrokerHooks::admit_all();
    hooks.presence = Some(tx);
    (hooks, rx)
}

/// A rustls client configuration with ring, pinning `root`, presenting `device`'s
/// chain (or no certificate).
pub fn client_tls(
    root: &CertificateDer<'static>,
    device: Option<&TestDevice>,
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match device {
        Some(device) => builder
            .with_client_auth_cert(device.chain.clone(), device.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// MQTT options for `client_id` over TLS to the broker.
pub fn mqtt_options(addr: SocketAddr, client_id: &str, tls: rustls::ClientConfig) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
    options
}

/// A device's MQTT options with its own certificate and client id.
pub fn device_options(pki: &TestPki, broker: &RunningBroker, device: &TestDevice) -> MqttOptions {
    mqtt_options(
        broker.local_addr(),
        &device.client_id(),
        client_tls(&pki.root(), Some(device)),
    )
}

/// Polls until CONNACK or an error, within [`TIMEOUT`].
pub async fn wait_connack(eventloop: &mut EventLoop) -> Result<ConnAck, ConnectionError> {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            match eventloop.poll().await? {
                Event::Incoming(Packet::ConnAck(connack)) => return Ok(connack),
                _ => continue,
            }
        }
    })
    .await
    .expect("no CONNACK or error in time")
}

/// Connects with `options` and returns the client once CONNACK said yes.
pub async fn connect(options: MqttOptions) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let connack = wait_connack(&mut eventloop).await.expect("connected");
    assert_eq!(connack.code, ConnectReturnCode::Success);
    (client, eventloop)
}

/// The CONNACK code a connection attempt got, or `None` when it failed before one.
pub async fn connect_code(options: MqttOptions) -> Option<ConnectReturnCode> {
    let (_client, mut eventloop) = AsyncClient::new(options, 8);
    match wait_connack(&mut eventloop).await {
        Ok(connack) => Some(connack.code),
        Err(ConnectionError::ConnectionRefused(code)) => Some(code),
        Err(_) => None,
    }
}

/// Polls until `pick` takes an incoming packet, within `limit`; panics on a
/// connection error or when the time is up.
pub async fn next_incoming_within<T>(
    eventloop: &mut EventLoop,
    limit: Duration,
    mut pick: impl FnMut(Packet) -> Option<T>,
) -> T {
    tokio::time::timeout(limit, async {
        loop {
            if let Event::Incoming(packet) = eventloop.poll().await.unwrap() {
                if let Some(picked) = pick(packet) {
                    return picked;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no such packet within {limit:?}"))
}

/// The next PUBLISH the device receives, within [`TIMEOUT`].
pub async fn next_publish(eventloop: &mut EventLoop) -> rumqttc::Publish {
    next_incoming_within(eventloop, TIMEOUT, |packet| match packet {
        Packet::Publish(publish) => Some(publish),
        _ => None,
    })
    .await
}

/// The return codes of the next SUBACK the device receives, within [`TIMEOUT`].
pub async fn next_suback_codes(eventloop: &mut EventLoop) -> Vec<SubscribeReasonCode> {
    next_incoming_within(eventloop, TIMEOUT, |packet| match packet {
        Packet::SubAck(suback) => Some(suback.return_codes),
        _ => None,
    })
    .await
}

/// Polls the event loop until it fails (the server closed the connection), returning
/// the time it took, or panics after `limit`.
pub async fn wait_disconnected(eventloop: &mut EventLoop, limit: Duration) -> Duration {
    let start = std::time::Instant::now();
    tokio::time::timeout(limit, async {
        loop {
            if eventloop.poll().await.is_err() {
                return;
            }
        }
    })
    .await
    .expect("the server did not close the connection in time");
    start.elapsed()
}

/// Drives an event loop in the background until it fails.
pub fn drive(mut eventloop: EventLoop) -> tokio::task::JoinHandle<Vec<Event>> {
    tokio::spawn(async move {
        let mut events = Vec::new();
        while let Ok(event) = eventloop.poll().await {
            events.push(event);
        }
        events
    })
}

/// Every presence event received so far, without waiting.
pub fn presence_so_far(rx: &mut mpsc::UnboundedReceiver<PresenceEvent>) -> Vec<PresenceEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// A device's TLS connection with no MQTT client on it, for bytes rumqttc would not
/// send.
pub async fn raw_tls(
    pki: &TestPki,
    broker: &RunningBroker,
    device: &TestDevice,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_tls(&pki.root(), Some(device))));
    let tcp = tokio::net::TcpStream::connect(broker.local_addr())
        .await
        .unwrap();
    let server_name =
        rustls::pki_types::ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    connector.connect(server_name, tcp).await.unwrap()
}

/// Waits until `condition` holds on the broker's stats, or panics after [`TIMEOUT`].
pub async fn eventually(broker: &RunningBroker, condition: impl Fn(&broker::BrokerStats) -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let stats = broker.stats();
        if condition(&stats) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached; stats: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
