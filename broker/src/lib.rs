//! fleetplane's device broker: a mutual-TLS MQTT gateway in front of an embedded
//! rumqttd.
//!
//! Devices connect over MQTT 3.1.1 on TLS 1.2+ with a client certificate issued by the
//! fleet PKI. The gateway terminates TLS itself, takes the device's identity from the
//! verified certificate only, enforces the topic rules of [`wire::topic`] and the
//! per-device limits, asks the composition root whether the device is revoked, and
//! feeds what passes to rumqttd through in-process links. The composition root
//! (fleetd) receives device messages with [`RunningBroker::subscribe_local`], sends
//! acks and commands with [`RunningBroker::publish_local`], closes a revoked device's
//! session with [`RunningBroker::disconnect`], and drains [`PresenceEvent`]s into the
//! store.
//!
//! ```no_run
//! # async fn run(config: broker::BrokerConfig) -> Result<(), broker::BrokerError> {
//! use broker::{Broker, BrokerHooks};
//!
//! let broker = Broker::start(config, BrokerHooks::admit_all()).await?;
//! let mut ingest = broker.subscribe_local(wire::topic::INGEST_FILTER).await?;
//! while let Some(message) = ingest.recv().await {
//!     // decode, write, commit, then:
//!     # let device_id = wire::DeviceId::from(wire::Uuid::nil());
//!     broker.publish_local(&wire::topic::ack(device_id), vec![0u8]).await?;
//! }
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
mod tls;

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
    DEFAULT_ENGINE_SEGMENT_SIZE, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_INGEST_SEGMENT_SIZE,
    DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECT_SIZE,
    DEFAULT_MAX_HANDSHAKES_IN_FLIGHT, DEFAULT_MAX_HANDSHAKES_PER_ADDRESS, DEFAULT_MAX_KEEP_ALIVE,
    DEFAULT_MAX_PACKET_SIZE, DEFAULT_MAX_PENDING_CONNECTS_PER_DEVICE, DEFAULT_MAX_SUBSCRIPTIONS,
    DEFAULT_PUBLISH_BURST, DEFAULT_PUBLISH_RATE,
};
pub use engine::{LocalMessage, LocalSubscription};
pub use error::BrokerError;
pub use hooks::{
    Admission, AdmissionCheck, AdmissionError, AdmissionFuture, BrokerHooks, DisconnectReason,
    PresenceEvent,
};
pub use stats::{BrokerStats, Refusal};

use connection::{HandshakeSlot, Limits, Shared};
use engine::{Engine, EngineLimits};

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
        let acceptor = TlsAcceptor::from(tls::server_config(&config)?);
        let engine = Engine::start(EngineLimits {
            max_sessions: config.max_connections,
            segment_size: config.engine_segment_size,
            ingest_segment_size: config.ingest_segment_size,
            segment_count: config.engine_segment_count,
        })
        .await?;
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
            },
            acceptor,
            engine,
            counters: Default::default(),
            registry: Default::default(),
            pending_connects: PerKeyLimit::new(config.max_pending_connects_per_device),
            admission: hooks.admission,
            presence: hooks.presence,
            shutdown: shutdown_rx,
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

    /// A snapshot of the counters.
    pub fn stats(&self) -> BrokerStats {
        self.stats_reader().snapshot()
    }

    /// A handle that reads the counters without keeping the broker alive (for a metrics
    /// collector that outlives [`Self::shutdown`]).
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader {
            counters: Arc::clone(&self.shared.counters),
            connections: Arc::clone(&self.connections),
            max_connections: self.max_connections,
        }
    }

    /// Subscribes an in-process receiver to an MQTT filter, such as
    /// [`wire::topic::INGEST_FILTER`]. See [`LocalSubscription`] for the delivery
    /// guarantee (at most once: durability comes from the device outbox).
    pub async fn subscribe_local(&self, filter: &str) -> Result<LocalSubscription, BrokerError> {
        self.shared.engine.subscribe_local(filter).await
    }

    /// Publishes a message from the server (an ack watermark, a command) to a topic;
    /// devices subscribed to it receive it at the QoS they subscribed with (at most 1).
    /// Returns once the engine's queue has taken it.
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

/// Reads a broker's counters at any time, cheaply (atomics, no lock): see
/// [`RunningBroker::stats_reader`].
#[derive(Clone, Debug)]
pub struct StatsReader {
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
