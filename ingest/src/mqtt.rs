//! External mode: ingest as an MQTT v5 client of an external broker (Mosquitto, EMQX, ...),
//! consuming `$share/{group}/fleet/v1/+/up/#` so that several instances split the load.
//!
//! Delivery: QoS 1, persistent session (`clean_start = false`, a session expiry), manual acks. A
//! message is PUBACKed to the broker only once ingest has handled it (committed or refused for
//! good), in the order received; so an ingest crash loses nothing: the broker redelivers
//! whatever was not PUBACKed when the instance reconnects with the same client id. The MQTT
//! receive maximum bounds how many unacknowledged messages the broker sends at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use store::DeviceId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::sink::{AckError, AckSink, BoxFuture};
use crate::source::{InboundMessage, IngestSender};
use crate::IngestError;

/// How to reach the external broker.
#[derive(Clone)]
pub struct ExternalBrokerConfig {
    /// Broker host name or address (must match its certificate).
    pub host: String,
    /// Broker TLS port.
    pub port: u16,
    /// MQTT client id: unique per instance and stable across restarts (it names the persistent
    /// session whose unacknowledged messages the broker redelivers).
    pub client_id: String,
    /// Shared-subscription group; instances in one group split the messages.
    pub share_group: String,
    /// The fleet root CA (PEM): the only trust anchor for the broker's certificate.
    pub ca_pem: String,
    /// Ingest's service client certificate chain (PEM, leaf first).
    pub client_chain_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub client_key_pem: String,
    /// How long the broker keeps the session (and its queued messages) while disconnected.
    pub session_expiry: Duration,
    /// Most unacknowledged QoS 1 messages the broker may send at once.
    pub receive_maximum: u16,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Largest packet accepted: the wire message limit plus headroom for the MQTT header.
    pub max_packet_bytes: usize,
}

impl std::fmt::Debug for ExternalBrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalBrokerConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("share_group", &self.share_group)
            .finish_non_exhaustive()
    }
}

impl ExternalBrokerConfig {
    /// Defaults for everything but the address, identity and TLS material.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        client_id: impl Into<String>,
        ca_pem: String,
        client_chain_pem: String,
        client_key_pem: String,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            client_id: client_id.into(),
            share_group: "fleet-ingest".into(),
            ca_pem,
            client_chain_pem,
            client_key_pem,
            session_expiry: Duration::from_secs(3600),
            receive_maximum: 1000,
            keep_alive: Duration::from_secs(30),
            max_packet_bytes: wire::limits::DEFAULT_MAX_MESSAGE_BYTES + 64 * 1024,
        }
    }
}

/// A connection to the external broker, before ingest runs: take its [`AckSink`], start ingest
/// with it, then [`ExternalSource::run`] it with ingest's sender.
pub struct ExternalSource {
    client: AsyncClient,
    eventloop: EventLoop,
    filter: String,
}

impl ExternalSource {
    /// Prepares the client; nothing connects until [`ExternalSource::run`].
    pub fn new(config: &ExternalBrokerConfig) -> Result<Self, IngestError> {
        let filter = wire::topic::shared_ingest_filter(&config.share_group).map_err(|e| {
            IngestError::Config {
                field: "share_group",
                reason: e.to_string(),
            }
        })?;
        let tls = crate::tls::client_config(
            &config.ca_pem,
            &config.client_chain_pem,
            &config.client_key_pem,
        )?;
        let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
        options
            .set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))))
            .set_clean_start(false)
            .set_session_expiry_interval(Some(
                u32::try_from(config.session_expiry.as_secs()).unwrap_or(u32::MAX),
            ))
            .set_receive_maximum(Some(config.receive_maximum))
            .set_max_packet_size(Some(
                u32::try_from(config.max_packet_bytes).unwrap_or(u32::MAX),
            ))
            .set_keep_alive(config.keep_alive)
            .set_manual_acks(true);
        let (client, eventloop) =
            AsyncClient::new(options, usize::from(config.receive_maximum).max(64) * 2);
        Ok(Self {
            client,
            eventloop,
            filter,
        })
    }

    /// Where ingest publishes acks: `fleet/v1/{device}/down/ack`, QoS 1. Never waits: when the
    /// client's queue is full the ack is dropped (the next one supersedes it).
    pub fn ack_sink(&self) -> Arc<dyn AckSink> {
        Arc::new(MqttAckSink {
            client: self.client.clone(),
        })
    }

    /// Connects and feeds `sender` until [`ExternalHandle::shutdown`].
    pub fn run(self, sender: IngestSender) -> ExternalHandle {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (pending_tx, pending_rx) = mpsc::channel(usize::from(u16::MAX));
        let acker = tokio::spawn(ack_in_order(self.client.clone(), pending_rx));
        let connected = Arc::new(AtomicBool::new(false));
        let poller = tokio::spawn(poll(
            Arc::clone(&connected),
            self.eventloop,
            self.client.clone(),
            self.filter,
            sender,
            pending_tx,
            shutdown_rx,
        ));
        ExternalHandle {
            client: self.client,
            shutdown,
            tasks: vec![poller, acker],
            connected,
        }
    }
}

/// The running external source.
pub struct ExternalHandle {
    client: AsyncClient,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    connected: Arc<AtomicBool>,
}

impl ExternalHandle {
    /// Whether the client holds a connection to the external broker (CONNACK received, no
    /// error since).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// [`Self::is_connected`], as a probe that outlives the handle's borrow (for readiness).
    pub fn connection_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let connected = Arc::clone(&self.connected);
        move || connected.load(Ordering::Relaxed)
    }

    /// Disconnects. Messages not yet handled are not PUBACKed: the broker keeps them for the
    /// session and redelivers them to this client id (or, for new messages, to the group).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.client.try_disconnect();
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn poll(
    connected: Arc<AtomicBool>,
    mut eventloop: EventLoop,
    client: AsyncClient,
    filter: String,
    sender: IngestSender,
    pending: mpsc::Sender<(Publish, oneshot::Receiver<()>)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = shutdown.changed() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                failures = 0;
                connected.store(true, Ordering::Relaxed);
                tracing::info!(
                    session_present = connack.session_present,
                    "connected to the external broker"
                );
                if let Err(e) = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "could not subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if forward(publish, &sender, &pending).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                connected.store(false, Ordering::Relaxed);
                failures = failures.saturating_add(1);
                let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                tracing::warn!(error = %e, ?delay, "external broker connection failed; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// Hands one publish to ingest and queues its PUBACK behind the earlier ones.
async fn forward(
    publish: Publish,
    sender: &IngestSender,
    pending: &mpsc::Sender<(Publish, oneshot::Receiver<()>)>,
) -> Result<(), IngestError> {
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let message = InboundMessage::new(topic, publish.payload.clone());
    if publish.qos == QoS::AtMostOnce {
        return sender.send(message).await;
    }
    let (message, handled) = message.with_handled_signal();
    // Queue the ack first so acks keep the order of arrival.
    let mut ack_only = publish;
    ack_only.payload = bytes::Bytes::new();
    pending
        .send((ack_only, handled))
        .await
        .map_err(|_| IngestError::Closed)?;
    sender.send(message).await
}

/// PUBACKs each message once ingest has handled it, in the order they arrived.
async fn ack_in_order(
    client: AsyncClient,
    mut pending: mpsc::Receiver<(Publish, oneshot::Receiver<()>)>,
) {
    while let Some((publish, handled)) = pending.recv().await {
        if handled.await.is_err() {
            // Ingest stopped before handling it: never acknowledge it, nor anything after it.
            return;
        }
        if let Err(e) = client.ack(&publish).await {
            tracing::warn!(error = %e, "PUBACK not sent; the broker will redeliver");
        }
    }
}

struct MqttAckSink {
    client: AsyncClient,
}

impl AckSink for MqttAckSink {
    fn publish_ack(
        &self,
        device: DeviceId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), AckError>> {
        let result = self
            .client
            .try_publish(wire::topic::ack(device), QoS::AtLeastOnce, false, payload)
            .map_err(|e| AckError(e.to_string()));
        Box::pin(async move { result })
    }
}
