//! fleetplane's device broker: a mutual-TLS MQTT gateway in front of an embedded
//! rumqttd.
//!
//! Devices connect over MQTT 3.1.1 on TLS 1.2+ with a client certificate issued by the
//! fleet PKI. The gateway terminates TLS itself, takes the device's identity from the
//! verified certificate only, enforces the topic rules of [`wire::topic`] and the
//! per-device limits, asks the composition root whether the device is revoked, and
//! hands each device publish that passes to the composition root's
//! [`DevicePublishSink`] (fleetd: ingest), PUBACKing it once the sink took it. The
//! composition root sends an ack to one device's session with [`RunningBroker::deliver`],
//! closes a revoked device's session with [`RunningBroker::disconnect`], and drains
//! [`PresenceEvent`]s into the store. The embedded rumqttd only fans out server messages
//! ([`RunningBroker::subscribe_local`], [`RunningBroker::publish_local`]).
//!
//! ```no_run
//! # async fn run(config: broker::BrokerConfig) -> Result<(), broker::BrokerError> {
//! use std::sync::Arc;
//!
//! use broker::{Broker, BrokerHooks, DevicePublish, DevicePublishFuture, DevicePublishSink};
//!
//! struct Ingest;
//! impl DevicePublishSink for Ingest {
//!     fn publish(&self, message: DevicePublish) -> DevicePublishFuture {
//!         // queue it for the database; resolve once it is taken
//!         Box::pin(async { Ok(()) })
//!     }
//! }
//!
//! let mut hooks = BrokerHooks::admit_all();
//! hooks.device_publishes = Some(Arc::new(Ingest));
//! let broker = Broker::start(config, hooks).await?;
//! // after the database commit of a device's records:
//! # let device_id = wire::DeviceId::from(wire::Uuid::nil());
//! let _ = broker.deliver(device_id, wire::topic::TopicKind::Ack, vec![0u8]);
//! broker.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The behaviour (what is refused and how, limits, why a gateway) is described in the
//! crate's README.md.

#![warn(missing_docs)]

mod config;
mod connection;
mod engine;
mod error;
mod hooks;
mod policy;
mod registry;
mod stats;
mod stream;
mod tls;

/// The seams of the fuzz targets (`fuzz/`, built by cargo fuzz, which sets `cfg(fuzzing)`).
#[cfg(fuzzing)]
pub mod fuzzing {
    /// Frames `bytes` with the gateway's MQTT packet reader; returns the complete packets read
    /// before it wanted more or refused the rest.
    pub fn read_packets(bytes: &[u8]) -> usize {
        crate::connection::codec::read_all(bytes).0
    }
}

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certs::tls::PerKeyLimit;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};
use wire::DeviceId;

pub use config::{
    BrokerConfig, DEFAULT_ADMISSION_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_ENGINE_SEGMENT_COUNT,
    DEFAULT_ENGINE_SEGMENT_SIZE, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECT_SIZE, DEFAULT_MAX_HANDSHAKES_IN_FLIGHT,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS, DEFAULT_MAX_KEEP_ALIVE, DEFAULT_MAX_PACKET_SIZE,
    DEFAULT_MAX_PENDING_CONNECTS_PER_DEVICE, DEFAULT_MAX_PENDING_PUBLISHES,
    DEFAULT_MAX_SUBSCRIPTIONS, DEFAULT_PUBLISH_BURST, DEFAULT_PUBLISH_RATE,
};
pub use engine::{LocalMessage, LocalSubscription};
pub use error::BrokerError;
pub use hooks::{
    Admission, AdmissionCheck, AdmissionError, AdmissionFuture, BrokerHooks, DevicePublish,
    DevicePublishFuture, DevicePublishSink, DisconnectReason, PresenceEvent, SinkClosed,
};
pub use stats::{BrokerStats, Refusal, Undelivered};
pub use stream::{
    stream_topic, LiveStreams, StreamAuthError, StreamAuthority, StreamCredentials, StreamFuture,
    StreamGrant, StreamKeyStats, StreamRefusal, StreamScope, StreamVerdict,
    DEFAULT_MAX_PENDING_STREAM_CONNECTS_PER_ADDRESS, DEFAULT_STREAM_QUEUE_CAPACITY,
    DEFAULT_STREAM_RECHECK_INTERVAL, STREAM_ROOT,
};

use connection::{HandshakeSlot, Limits, Shared};
use engine::{Engine, EngineLimits};
use registry::{Downlink, Registry};
use wire::topic::{Direction, TopicKind};

/// How long [`RunningBroker::shutdown`] waits for sessions to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Starts brokers.
#[derive(Debug)]
pub struct Broker(());

impl Broker {
    /// Validates the configuration, starts the embedded engine and binds the device
    /// listener. Must be called within a tokio runtime.
    pub async fn start(
        config: BrokerConfig,
        hooks: BrokerHooks,
    ) -> Result<RunningBroker, BrokerError> {
        config.validate()?;
        let streams = stream_side(&config, hooks.streams.clone())?;
        let hub = streams.as_ref().map(|side| Arc::clone(&side.hub));
        let acceptor = TlsAcceptor::from(tls::server_config(&config)?);
        let engine = Engine::start(EngineLimits {
            segment_size: config.engine_segment_size,
            segment_count: config.engine_segment_count,
        })
        .await?;
        let registry = Arc::<Registry>::default();
        let counters = Arc::<stats::Counters>::default();
        let commands = engine.subscribe_local(&command_filter()).await?;
        tokio::spawn(route_commands(
            commands,
            Arc::clone(&registry),
            Arc::clone(&counters),
        ));
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| BrokerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| BrokerError::Bind {
            addr: config.listen,
            source,
        })?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            limits: Limits {
                handshake_timeout: config.handshake_timeout,
                connect_timeout: config.connect_timeout,
                admission_timeout: config.admission_timeout,
                max_packet_size: config.max_packet_size,
                max_connect_size: config.max_connect_size,
                publish_rate: config.publish_rate,
                publish_burst: config.publish_burst,
                max_subscriptions: config.max_subscriptions,
                max_keep_alive: config.max_keep_alive,
                max_pending_publishes: config.max_pending_publishes,
            },
            acceptor,
            engine,
            counters,
            registry,
            pending_connects: PerKeyLimit::new(config.max_pending_connects_per_device),
            admission: hooks.admission,
            presence: hooks.presence,
            shutdown: shutdown_rx,
            streams,
            device_publishes: hooks.device_publishes,
        });
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let handshakes = HandshakeLimits {
            in_flight: Arc::new(Semaphore::new(config.max_handshakes_in_flight)),
            per_address: PerKeyLimit::new(config.max_handshakes_per_address),
        };
        let accept_task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&shared),
            Arc::clone(&connections),
            handshakes,
        ));
        info!(%local_addr, "device broker listening");
        Ok(RunningBroker {
            local_addr,
            hub: hub.unwrap_or_default(),
            shared,
            connections,
            max_connections: config.max_connections,
            shutdown_tx,
            accept_task,
        })
    }
}

/// A running broker. Dropping it stops the listener but not the sessions: call
/// [`Self::shutdown`].
#[derive(Debug)]
pub struct RunningBroker {
    local_addr: SocketAddr,
    /// The live-stream subscribers (empty when streams are off).
    hub: Arc<stream::StreamHub>,
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
    max_connections: usize,
    shutdown_tx: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
}

impl RunningBroker {
    /// The address the device listener is bound to (with the real port when the
    /// configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the broker still takes devices: its accept loop runs and its engine's uplink
    /// thread is alive.
    pub fn is_serving(&self) -> bool {
        !self.accept_task.is_finished() && self.shared.engine.is_running()
    }

    /// Closes the device's live session now, if it has one, and says whether it had.
    ///
    /// The session ends with [`DisconnectReason::Revoked`]: its will is not published.
    /// This does not stop the device from reconnecting: the admission hook must refuse
    /// it from now on. A revocation that arrives while the device is between its
    /// handshake and its CONNACK is not lost: the session is registered before the hook
    /// is asked.
    pub fn disconnect(&self, device_id: DeviceId) -> bool {
        self.shared
            .registry
            .disconnect(device_id, DisconnectReason::Revoked)
    }

    /// The devices that have a live session now, including sessions still being admitted: what
    /// a re-check of revocations must cover.
    pub fn live_devices(&self) -> Vec<DeviceId> {
        self.shared.registry.devices()
    }

    /// Where committed records go to reach live-stream subscribers.
    pub fn stream_publisher(&self) -> StreamPublisher {
        StreamPublisher(Arc::clone(&self.hub))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> BrokerStats {
        self.stats_reader().snapshot()
    }

    /// A handle that reads the counters without keeping the broker alive (for a metrics
    /// collector that outlives [`Self::shutdown`]).
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader {
            hub: Arc::clone(&self.hub),
            counters: Arc::clone(&self.shared.counters),
            connections: Arc::clone(&self.connections),
            max_connections: self.max_connections,
        }
    }

    /// Sends a server message (`kind` is one of the `down` topics, such as
    /// [`TopicKind::Ack`]) to the device's live session on this broker, which writes it if it
    /// subscribed to a filter covering the topic, at the QoS it was granted. Returns at once:
    /// the message is queued on the session (at most a few: what is sent down is superseded
    /// by the next message). A message that is not written is counted
    /// ([`BrokerStats::undelivered`]) and the reason returned; the device does not get it.
    pub fn deliver(
        &self,
        device_id: DeviceId,
        kind: TopicKind,
        payload: impl Into<Bytes>,
    ) -> Result<(), BrokerError> {
        if kind.direction() != Direction::Down {
            return Err(BrokerError::InvalidTopic(kind.topic(device_id)));
        }
        let message = Downlink {
            topic: kind.topic(device_id),
            payload: payload.into(),
        };
        deliver(
            &self.shared.registry,
            &self.shared.counters,
            device_id,
            message,
        )
        .map_err(BrokerError::Undelivered)
    }

    /// Subscribes an in-process receiver to an MQTT filter on what the server publishes
    /// ([`Self::publish_local`]; device publishes go to the [`DevicePublishSink`], not here).
    /// See [`LocalSubscription`] for the delivery guarantee (at most once).
    pub async fn subscribe_local(&self, filter: &str) -> Result<LocalSubscription, BrokerError> {
        self.shared.engine.subscribe_local(filter).await
    }

    /// Publishes a message from the server to a topic, for in-process subscribers; a
    /// `fleet/v1/{device}/down/cmd` message is also routed to that device's session as
    /// [`Self::deliver`] does. Returns once the engine's queue has taken it.
    pub async fn publish_local(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), BrokerError> {
        self.shared
            .engine
            .publish_local(topic, payload.into())
            .await
    }

    /// Stops accepting, closes every session ([`DisconnectReason::Shutdown`]) and waits
    /// up to five seconds for them to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        self.shared.registry.close_all(DisconnectReason::Shutdown);
        let _ = (&mut self.accept_task).await;
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let drained =
            tokio::time::timeout(SHUTDOWN_GRACE, self.connections.acquire_many(all)).await;
        if drained.is_err() {
            warn!("some device connections were still open at the end of shutdown");
        }
    }
}

/// The filter of the one engine link that routes commands to device sessions.
fn command_filter() -> String {
    format!(
        "{}/+/{}/{}",
        wire::topic::ROOT,
        Direction::Down.as_str(),
        TopicKind::Command.as_str()
    )
}

/// Queues a message on the device's session, counting it if it cannot be.
fn deliver(
    registry: &Registry,
    counters: &stats::Counters,
    device_id: DeviceId,
    message: Downlink,
) -> Result<(), Undelivered> {
    let delivered = registry.deliver(device_id, message);
    if let Err(reason) = delivered {
        counters.undelivered(reason);
    }
    delivered
}

/// Routes every command published into the engine to its device's session.
async fn route_commands(
    mut commands: LocalSubscription,
    registry: Arc<Registry>,
    counters: Arc<stats::Counters>,
) {
    while let Some(message) = commands.recv().await {
        // The filter admits any third level; only a canonical device id names a session.
        let Ok(topic) = wire::topic::parse_device_topic(&message.topic) else {
            continue;
        };
        let downlink = Downlink {
            topic: message.topic,
            payload: message.payload,
        };
        let _ = deliver(&registry, &counters, topic.device_id, downlink);
    }
}

/// Reads a broker's counters at any time, cheaply (atomics, no lock): see
/// [`RunningBroker::stats_reader`].
#[derive(Clone, Debug)]
pub struct StatsReader {
    hub: Arc<stream::StreamHub>,
    counters: Arc<stats::Counters>,
    connections: Arc<Semaphore>,
    max_connections: usize,
}

impl StatsReader {
    /// A snapshot of the counters, with the connections open now.
    pub fn snapshot(&self) -> BrokerStats {
        let mut stats = self.counters.snapshot();
        let free = self
            .connections
            .available_permits()
            .min(self.max_connections);
        stats.connections_open = (self.max_connections - free) as u64;
        stats
    }

    /// Live-stream subscribers connected now.
    pub fn stream_subscribers(&self) -> usize {
        self.hub.subscriber_count()
    }

    /// Every API key that streamed from this broker, with its messages delivered and dropped.
    pub fn stream_keys(&self) -> Vec<StreamKeyStats> {
        self.hub.key_stats()
    }
}

/// Hands committed records to live-stream subscribers: see [`RunningBroker::stream_publisher`].
#[derive(Clone)]
pub struct StreamPublisher(Arc<stream::StreamHub>);

impl std::fmt::Debug for StreamPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPublisher").finish_non_exhaustive()
    }
}

impl StreamPublisher {
    /// Whether any subscriber is connected (one atomic load): when not, skip all encoding.
    pub fn has_subscribers(&self) -> bool {
        self.0.has_subscribers()
    }

    /// Whether `tenant` has a subscriber now.
    pub fn has_subscribers_in(&self, tenant: wire::TenantId) -> bool {
        self.0.has_subscribers_in(tenant)
    }

    /// Queues `payload` (one record, encoded) for every subscriber of `tenant` whose filters
    /// and scope take `device`'s records of `kind`, on
    /// [`stream_topic`]`(tenant, device, kind)`. Never waits: a subscriber whose queue is full
    /// loses this message (counted for its key). Returns how many subscribers got it.
    pub fn publish(
        &self,
        tenant: wire::TenantId,
        device: DeviceId,
        kind: wire::topic::TopicKind,
        payload: Bytes,
    ) -> usize {
        self.0.publish(tenant, device, kind, payload)
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// The live-stream side of the broker when streams are on; its authority is required then.
fn stream_side(
    config: &BrokerConfig,
    authority: Option<Arc<dyn StreamAuthority>>,
) -> Result<Option<connection::StreamSide>, BrokerError> {
    let Some(settings) = config.live_streams else {
        return Ok(None);
    };
    let authority = authority.ok_or(BrokerError::InvalidConfig {
        field: "live_streams",
        reason: "is on, but the hooks have no stream authority",
    })?;
    Ok(Some(connection::StreamSide {
        authority,
        hub: Arc::default(),
        settings,
        pending: PerKeyLimit::new(settings.max_pending_connects_per_address),
    }))
}

/// The caps on handshakes in progress: all of them, and per source address.
struct HandshakeLimits {
    in_flight: Arc<Semaphore>,
    per_address: PerKeyLimit<IpAddr>,
}

impl HandshakeLimits {
    /// A handshake slot for a connection from `address`, or the refusal.
    fn try_acquire(&self, address: IpAddr) -> Result<HandshakeSlot, Refusal> {
        let address = self
            .per_address
            .try_acquire(address)
            .ok_or(Refusal::AddressHandshakeLimit)?;
        let in_flight = Arc::clone(&self.in_flight)
            .try_acquire_owned()
            .map_err(|_| Refusal::HandshakeCapacity)?;
        Ok(HandshakeSlot {
            _in_flight: in_flight,
            _address: address,
        })
    }
}

/// Accepts TCP connections and gives each its own task. Never waits on a device: when
/// the connection or a handshake cap is reached, the new connection is closed at once.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
    handshakes: HandshakeLimits,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote_addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        shared.counters.tcp_accepted();
        let Ok(connection) = Arc::clone(&connections).try_acquire_owned() else {
            shared
                .counters
                .refused_and_logged(Refusal::ConnectionLimit, remote_addr.ip());
            continue;
        };
        let handshake = match handshakes.try_acquire(remote_addr.ip()) {
            Ok(handshake) => handshake,
            Err(refusal) => {
                shared
                    .counters
                    .refused_and_logged(refusal, remote_addr.ip());
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection::serve(
            Arc::clone(&shared),
            tcp,
            remote_addr,
            handshake,
            connection,
        ));
    }
}
