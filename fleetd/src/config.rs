//! fleetd's configuration: built-in defaults, then a TOML file, then `FLEETD_*` environment
//! variables, then command-line flags. Every field has a default that works on a laptop.
//!
//! Environment names are the field path in upper case with `__` between sections:
//! `FLEETD_API_LISTEN`, `FLEETD_DATABASE_URL`, `FLEETD_DATABASE__MAX_CONNECTIONS`.
//!
//! A setting that can be "none" is an `Option`: an absent key, an empty string in the file or an
//! empty environment variable all mean `None`. URLs are parsed once, here, into typed values;
//! a bad one is refused at load with the field's name.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
pub use store::DatabaseUrl;

/// Everything fleetd can be told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where fleetd keeps what it creates: the private PostgreSQL cluster, the dev PKI. A
    /// relative path (the default, `fleetd-data`) is resolved once, at load, against the
    /// directory fleetd starts in.
    pub data_dir: PathBuf,
    /// PostgreSQL URL of the owner role. `None` (absent or empty): a private cluster in
    /// `data_dir`. A secret (it may hold the password): never serialised, redacted in `Debug`.
    #[serde(deserialize_with = "empty_is_none", skip_serializing)]
    pub database_url: Option<DatabaseUrl>,
    /// A file holding `database_url` (one line), read once at load: keeps the password out of
    /// the configuration, the environment and argv. Exclusive with `database_url`.
    #[serde(deserialize_with = "empty_is_none")]
    pub database_url_file: Option<PathBuf>,
    /// Production mode: refuse to start on the development defaults (a generated PKI, the root
    /// key on this host, non-loopback listeners without a configured PKI).
    pub production: bool,
    /// Address of the HTTPS API listener (`/v1/...`, `/healthz`, `/readyz`).
    pub api_listen: SocketAddr,
    /// Address of the devices' MQTT-over-mutual-TLS listener.
    pub broker_listen: SocketAddr,
    /// Address of the plain-HTTP Prometheus listener (`/metrics`); keep it internal.
    pub metrics_listen: SocketAddr,
    /// The fleet PKI and the server certificates fleetd issues itself.
    pub pki: PkiConfig,
    /// Device onboarding.
    pub enrollment: EnrollmentConfig,
    /// How device records are batched into the database.
    pub ingest: ingest::IngestConfig,
    /// An external MQTT broker to consume device messages from, instead of the embedded one.
    pub external_broker: ExternalBrokerSettings,
    /// Logging.
    pub log: LogConfig,
    /// Database tuning.
    pub database: DatabaseConfig,
    /// Limits on the API listener's connections.
    pub connections: ConnectionLimits,
    /// The embedded broker's limits.
    pub broker: BrokerSettings,
    /// How the telemetry retention sweep runs.
    pub retention: RetentionSettings,
    /// The API's key cache and readiness threshold.
    pub api: ApiSettings,
    /// Signed checkpoints of the audit chain.
    pub audit: AuditSettings,
    /// Scheduled encrypted backups (off by default).
    pub backup: BackupSettings,
    /// How long in-flight requests get to finish at shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// SIEM forwarding of opted-in tenants' audit trails (off unless `collector` is set).
    pub siem: SiemSettings,
}

/// `[siem]`: the audit trails of the tenants that opted in, as RFC 5424 syslog over TLS
/// (RFC 5425) to one collector (`crate::siem`). Off while `collector` is unset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SiemSettings {
    /// The collector, `host:port` (an IPv6 address in brackets).
    #[serde(deserialize_with = "empty_is_none")]
    pub collector: Option<String>,
    /// PEM trust anchor(s) for the collector's certificate; required with `collector`.
    #[serde(deserialize_with = "empty_is_none")]
    pub ca_file: Option<PathBuf>,
    /// The name the collector's certificate must carry; default: the host of `collector`.
    #[serde(deserialize_with = "empty_is_none")]
    pub server_name: Option<String>,
    /// A client certificate chain (PEM), for a collector that requires mutual TLS.
    #[serde(deserialize_with = "empty_is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, PKCS#8, SEC1 or PKCS#1).
    #[serde(deserialize_with = "empty_is_none")]
    pub client_key_file: Option<PathBuf>,
    /// HOSTNAME of the messages; default: this host's name.
    #[serde(deserialize_with = "empty_is_none")]
    pub hostname: Option<String>,
    /// Events read and written per tenant at a time (1 to 10,000).
    pub batch: u32,
    /// How often the forwarder looks for new events once it has caught up.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Most events per tenant resent after a connection fails (what the collector may have
    /// received but not stored); 0 resends nothing.
    pub resend_window: u32,
}

impl Default for SiemSettings {
    fn default() -> Self {
        Self {
            collector: None,
            ca_file: None,
            server_name: None,
            client_cert_file: None,
            client_key_file: None,
            hostname: None,
            batch: 500,
            poll_interval: Duration::from_secs(1),
            resend_window: 1000,
        }
    }
}

impl SiemSettings {
    fn invalid_field(&self) -> Option<(&'static str, &'static str)> {
        if !(1..=10_000).contains(&self.batch) {
            return Some(("siem.batch", "must be between 1 and 10000"));
        }
        if self.poll_interval.is_zero() {
            return Some(("siem.poll_interval", "must be longer than zero"));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Some((
                "siem.client_key_file",
                "client_cert_file and client_key_file go together",
            ));
        }
        let collector = self.collector.as_deref()?;
        if split_host_port(collector).is_none() {
            return Some(("siem.collector", "must be host:port"));
        }
        if self.ca_file.is_none() {
            return Some(("siem.ca_file", "must be set with siem.collector"));
        }
        None
    }
}

/// `host:port` or `[v6]:port` as host and a port above 0.
pub fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|port| *port > 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty() && !host.contains(['/', '@', ' '])).then(|| (host.to_owned(), port))
}

/// Where the fleet PKI is and what the listeners' certificates name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PkiConfig {
    /// Directory of the root and issuing CA (`fleetctl pki init` makes one). `None` (absent
    /// or empty): `<data_dir>/pki`, created as a development PKI on first start.
    #[serde(deserialize_with = "empty_is_none")]
    pub dir: Option<PathBuf>,
    /// DNS names in the API and broker server certificates.
    pub server_names: Vec<String>,
    /// IP addresses in the API and broker server certificates.
    pub server_ips: Vec<IpAddr>,
    /// Lifetime of device certificates issued at enrollment.
    #[serde(with = "humantime_serde")]
    pub device_cert_lifetime: Duration,
    /// Least time between two renewals of one device (429 before it), unless its newest
    /// certificate is within its renewal window.
    #[serde(with = "humantime_serde")]
    pub renewal_min_interval: Duration,
    /// How long a certificate superseded by a renewal is still admitted, so the agent can
    /// switch to the new one; after it the broker refuses it and the CRL lists it.
    #[serde(with = "humantime_serde")]
    pub superseded_grace: Duration,
    /// Where to write the fleet's CRL (PEM) for an external broker (Mosquitto `crlfile`),
    /// rewritten atomically at start, on every revocation and every 5 minutes. `None`: no file
    /// (the CRL is still served at `GET /v1/pki/crl`).
    #[serde(deserialize_with = "empty_is_none")]
    pub crl_file: Option<PathBuf>,
}

/// Ingest-only mode: device messages come from an external MQTT broker (Mosquitto, EMQX, ...)
/// through an MQTT v5 shared subscription, so any number of fleetd instances split the load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalBrokerSettings {
    /// `mqtts://host:port` of the broker. `None` (absent or empty): the embedded broker on
    /// `broker_listen`.
    #[serde(deserialize_with = "empty_is_none")]
    pub url: Option<MqttsUrl>,
    /// MQTT client id of this instance: unique per instance and stable across restarts (it
    /// names the persistent session the broker redelivers from). Required with `url`.
    #[serde(deserialize_with = "empty_is_none")]
    pub client_id: Option<String>,
    /// Shared-subscription group; instances in one group split the messages.
    pub share_group: String,
}

impl Default for ExternalBrokerSettings {
    fn default() -> Self {
        Self {
            url: None,
            client_id: None,
            share_group: "fleet-ingest".into(),
        }
    }
}

impl ExternalBrokerSettings {
    /// Host and port of `url`, when one is set (load refuses a `url` without a port).
    pub fn host_port(&self) -> Option<(String, u16)> {
        let url = self.url.as_ref()?;
        Some((url.host().to_owned(), url.port()?))
    }
}

/// Device onboarding settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrollmentConfig {
    /// The broker URL enrolled devices are told to use. `None` (absent or empty): the
    /// external broker's URL, else `mqtts://<first server name>:<broker_listen port>`.
    #[serde(deserialize_with = "empty_is_none")]
    pub broker_url: Option<MqttsUrl>,
    /// Proxies whose `X-Forwarded-For` is believed for the client address (CIDRs).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Refused enrollments one client address may make per `failed_attempts_window` before it
    /// is answered 429 until the window ends (other addresses are not affected).
    pub max_failed_attempts_per_source: u32,
    /// The window of `max_failed_attempts_per_source`.
    #[serde(with = "humantime_serde")]
    pub failed_attempts_window: Duration,
    /// Token verifications (argon2id, tokens from before migration 0008) running at once; the
    /// rest wait their turn holding no database connection.
    pub max_concurrent_verifications: usize,
    /// How long an enrollment waits for its turn before it is answered 503 with Retry-After.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for EnrollmentConfig {
    fn default() -> Self {
        let limits = api::EnrollLimits::default();
        Self {
            broker_url: None,
            trusted_proxies: Vec::new(),
            max_failed_attempts_per_source: limits.failures_per_window,
            failed_attempts_window: limits.failure_window,
            max_concurrent_verifications: limits.max_concurrent_verifications,
            max_wait: limits.max_wait,
        }
    }
}

/// What one source address may hold on the API listener, so that no one client locks the
/// others out (the global caps alone let one address take them all). The broker's limits are
/// in [`BrokerSettings`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// TLS handshakes in progress at once from one IP address on the API listener.
    pub api_max_handshakes_per_address: usize,
    /// TLS handshakes in progress at once on the API listener; accepting pauses at the cap.
    pub api_max_handshakes_in_flight: usize,
    /// Time an API client has to finish its TLS handshake.
    #[serde(with = "humantime_serde")]
    pub api_handshake_timeout: Duration,
    /// Connections at once on the API listener.
    pub api_max_connections: usize,
    /// Time an API client has to send a request's headers (after the handshake, and between
    /// keep-alive requests).
    #[serde(with = "humantime_serde")]
    pub api_header_read_timeout: Duration,
    /// An API connection on which nothing moved for this long is closed.
    #[serde(with = "humantime_serde")]
    pub api_idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        let api = api::TlsLimits::default();
        Self {
            api_max_handshakes_per_address: api.max_handshakes_per_address,
            api_max_handshakes_in_flight: api.max_handshakes_in_flight,
            api_handshake_timeout: api.handshake_timeout,
            api_max_connections: api.max_connections,
            api_header_read_timeout: api.header_read_timeout,
            api_idle_timeout: api.idle_timeout,
        }
    }
}

impl ConnectionLimits {
    /// The first field out of range, and why.
    fn invalid_field(&self) -> Option<(&'static str, &'static str)> {
        let at_least_one = [
            (
                self.api_max_handshakes_per_address,
                "connections.api_max_handshakes_per_address",
            ),
            (
                self.api_max_handshakes_in_flight,
                "connections.api_max_handshakes_in_flight",
            ),
            (self.api_max_connections, "connections.api_max_connections"),
        ];
        if let Some((_, field)) = at_least_one.iter().find(|(value, _)| *value == 0) {
            return Some((field, "must be at least 1"));
        }
        let positive = [
            (
                self.api_handshake_timeout,
                "connections.api_handshake_timeout",
            ),
            (
                self.api_header_read_timeout,
                "connections.api_header_read_timeout",
            ),
            (self.api_idle_timeout, "connections.api_idle_timeout"),
        ];
        if let Some((_, field)) = positive.iter().find(|(value, _)| value.is_zero()) {
            return Some((field, "must be longer than zero"));
        }
        None
    }

    /// The API listener's limits, with the connection cap fleetd's descriptor budget allows.
    pub fn api_limits(&self, max_connections: usize) -> api::TlsLimits {
        api::TlsLimits {
            handshake_timeout: self.api_handshake_timeout,
            max_handshakes_in_flight: self.api_max_handshakes_in_flight,
            max_handshakes_per_address: self.api_max_handshakes_per_address,
            max_connections,
            header_read_timeout: self.api_header_read_timeout,
            idle_timeout: self.api_idle_timeout,
        }
    }
}

/// Settings of [`connections`](ConnectionLimits) that moved to `[broker]`: an old file is told
/// where they went.
const MOVED: [(&str, &str); 3] = [
    (
        "connections.broker_max_handshakes_per_address",
        "broker.max_handshakes_per_address",
    ),
    (
        "connections.broker_max_pending_connects_per_device",
        "broker.max_pending_connects_per_device",
    ),
    (
        "connections.broker_max_connect_size",
        "broker.max_connect_size",
    ),
];

/// The embedded broker's limits: the gateway in front of rumqttd (broker/README.md says what
/// each one guards). Unused in ingest-only mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// Device connections at once, handshaking or connected (lowered to fit the descriptor
    /// limit, with a warning).
    pub max_connections: usize,
    /// TLS handshakes in progress at once.
    pub max_handshakes_in_flight: usize,
    /// TLS handshakes in progress at once from one IP address.
    pub max_handshakes_per_address: usize,
    /// Connections of one device between its TLS handshake and CONNACK.
    pub max_pending_connects_per_device: usize,
    /// Time a TCP connection has to finish its TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time an authenticated connection has to send CONNECT.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time the admission check (the database) has to answer; past it the device is refused.
    #[serde(with = "humantime_serde")]
    pub admission_timeout: Duration,
    /// Largest CONNECT, in bytes.
    pub max_connect_size: usize,
    /// Largest MQTT packet a device may send, in bytes.
    pub max_packet_size: usize,
    /// Sustained PUBLISH packets per second per device.
    pub publish_rate: f64,
    /// PUBLISH burst per device (token bucket depth).
    pub publish_burst: u32,
    /// Subscriptions per device connection.
    pub max_subscriptions: usize,
    /// Longest keep-alive a device may ask for, in seconds.
    pub max_keep_alive_secs: u16,
    /// rumqttd's in-memory log: bytes per segment, per filter.
    pub engine_segment_size: usize,
    /// rumqttd's in-memory log: full segments kept per filter.
    pub engine_segment_count: usize,
    /// Live streams: connections without a client certificate log in with an API key and
    /// subscribe to their tenant's stream (broker/README.md). Off: a certificate is required.
    pub live_streams: bool,
    /// How often a stream subscriber's key is checked again and its groups' devices re-read.
    #[serde(with = "humantime_serde")]
    pub stream_recheck_interval: Duration,
    /// Messages queued per stream subscriber; beyond, its messages are dropped and counted.
    pub stream_queue_capacity: usize,
    /// Connections without a certificate from one address between handshake and CONNACK.
    pub max_pending_stream_connects_per_address: usize,
    /// A device's publishes read but not yet taken by ingest; above it its socket is not read.
    pub max_pending_publishes: usize,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            max_connections: broker::DEFAULT_MAX_CONNECTIONS,
            max_handshakes_in_flight: broker::DEFAULT_MAX_HANDSHAKES_IN_FLIGHT,
            max_handshakes_per_address: broker::DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
            max_pending_connects_per_device: broker::DEFAULT_MAX_PENDING_CONNECTS_PER_DEVICE,
            handshake_timeout: broker::DEFAULT_HANDSHAKE_TIMEOUT,
            connect_timeout: broker::DEFAULT_CONNECT_TIMEOUT,
            admission_timeout: broker::DEFAULT_ADMISSION_TIMEOUT,
            max_connect_size: broker::DEFAULT_MAX_CONNECT_SIZE,
            max_packet_size: broker::DEFAULT_MAX_PACKET_SIZE,
            publish_rate: broker::DEFAULT_PUBLISH_RATE,
            publish_burst: broker::DEFAULT_PUBLISH_BURST,
            max_subscriptions: broker::DEFAULT_MAX_SUBSCRIPTIONS,
            max_keep_alive_secs: broker::DEFAULT_MAX_KEEP_ALIVE,
            engine_segment_size: broker::DEFAULT_ENGINE_SEGMENT_SIZE,
            engine_segment_count: broker::DEFAULT_ENGINE_SEGMENT_COUNT,
            live_streams: true,
            stream_recheck_interval: broker::DEFAULT_STREAM_RECHECK_INTERVAL,
            stream_queue_capacity: broker::DEFAULT_STREAM_QUEUE_CAPACITY,
            max_pending_stream_connects_per_address:
                broker::DEFAULT_MAX_PENDING_STREAM_CONNECTS_PER_ADDRESS,
            max_pending_publishes: broker::DEFAULT_MAX_PENDING_PUBLISHES,
        }
    }
}

impl BrokerSettings {
    /// Sets every limit of `config` (all but the listener and the certificates) from these
    /// settings; `max_connections` is the cap the descriptor budget allows.
    pub fn apply(&self, config: &mut broker::BrokerConfig, max_connections: usize) {
        config.max_connections = max_connections;
        config.max_handshakes_in_flight = self.max_handshakes_in_flight;
        config.max_handshakes_per_address = self.max_handshakes_per_address;
        config.max_pending_connects_per_device = self.max_pending_connects_per_device;
        config.handshake_timeout = self.handshake_timeout;
        config.connect_timeout = self.connect_timeout;
        config.admission_timeout = self.admission_timeout;
        config.max_connect_size = self.max_connect_size;
        config.max_packet_size = self.max_packet_size;
        config.publish_rate = self.publish_rate;
        config.publish_burst = self.publish_burst;
        config.max_subscriptions = self.max_subscriptions;
        config.max_keep_alive = self.max_keep_alive_secs;
        config.engine_segment_size = self.engine_segment_size;
        config.engine_segment_count = self.engine_segment_count;
        config.live_streams = self.live_streams.then_some(broker::LiveStreams {
            recheck_interval: self.stream_recheck_interval,
            queue_capacity: self.stream_queue_capacity,
            max_pending_connects_per_address: self.max_pending_stream_connects_per_address,
        });
        config.max_pending_publishes = self.max_pending_publishes;
    }

    /// The first setting out of range, by the broker's own rules: its name under `[broker]`
    /// and what it must be.
    fn invalid_field(&self) -> Option<(String, &'static str)> {
        let mut config = broker::BrokerConfig::new(
            Vec::new(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(Vec::new().into()),
            rustls::pki_types::CertificateDer::from(Vec::new()),
        );
        self.apply(&mut config, self.max_connections);
        let (field, reason) = config.invalid_limit()?;
        let field = match field {
            "max_keep_alive" => "max_keep_alive_secs",
            "live_streams.recheck_interval" => "stream_recheck_interval",
            "live_streams.queue_capacity" => "stream_queue_capacity",
            "live_streams.max_pending_connects_per_address" => {
                "max_pending_stream_connects_per_address"
            }
            other => other,
        };
        Some((format!("broker.{field}"), reason))
    }
}

/// Signed checkpoints of the audit chain (store::audit_checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Time between checkpoint runs (each signs every tenant with new events).
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// The Ed25519 seed file (32 bytes, mode 0600). `None`: `<data_dir>/audit-checkpoint.key`,
    /// created at first start.
    #[serde(deserialize_with = "empty_is_none")]
    pub checkpoint_key: Option<PathBuf>,
    /// Where every checkpoint is also written, as `<tenant>/<seq>.json`; best on another mount
    /// or an append-only store. `None`: `<data_dir>/audit-checkpoints`.
    #[serde(deserialize_with = "empty_is_none")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Time between audit retention runs (the first at start): each prunes every tenant's events
    /// past its `audit_retention_days`, behind the newest signed checkpoint covering them.
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            checkpoint_interval: Duration::from_secs(300),
            checkpoint_key: None,
            checkpoint_dir: None,
            prune_interval: Duration::from_secs(24 * 3600),
        }
    }
}

/// Retention of telemetry (the per-tenant retention period is a tenant setting; this is how
/// the sweep runs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Time between runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Rows deleted per transaction (1 to 100,000).
    pub step_rows: i64,
    /// Pause between steps, to leave the database to ingest.
    #[serde(with = "humantime_serde")]
    pub step_pause: Duration,
    /// Weekly partitions kept ready ahead of now (at least 1).
    pub weeks_ahead: i32,
    /// Most partitions dropped per run (at least 1).
    pub max_partition_drops: i32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        let d = ingest::RetentionConfig::default();
        Self {
            interval: d.interval,
            step_rows: d.step_rows,
            step_pause: d.step_pause,
            weeks_ahead: d.weeks_ahead,
            max_partition_drops: d.max_partition_drops,
        }
    }
}

impl RetentionSettings {
    /// Ingest's view.
    pub fn to_ingest(&self) -> ingest::RetentionConfig {
        ingest::RetentionConfig {
            interval: self.interval,
            step_rows: self.step_rows,
            step_pause: self.step_pause,
            weeks_ahead: self.weeks_ahead,
            max_partition_drops: self.max_partition_drops,
        }
    }

    fn invalid_field(&self) -> Option<(&'static str, &'static str)> {
        if self.interval.is_zero() {
            return Some(("retention.interval", "must be longer than zero"));
        }
        if !(1..=100_000).contains(&self.step_rows) {
            return Some(("retention.step_rows", "must be between 1 and 100000"));
        }
        if self.weeks_ahead < 1 {
            return Some(("retention.weeks_ahead", "must be at least 1"));
        }
        if self.max_partition_drops < 1 {
            return Some(("retention.max_partition_drops", "must be at least 1"));
        }
        None
    }
}

/// Scheduled backups: store::backup::create every `interval` into `dir`, keeping `keep`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSettings {
    /// Whether fleetd makes backups.
    pub enabled: bool,
    /// Time between backups; the first is made one interval after start.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Where backups go. `None`: `<data_dir>/backups`.
    pub dir: Option<PathBuf>,
    /// The key file (`fleetctl backup keygen`), mode 0600; required when enabled.
    pub key_file: Option<PathBuf>,
    /// How many scheduled backups to keep (at least 1).
    pub keep: usize,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: Duration::from_secs(24 * 3600),
            dir: None,
            key_file: None,
            keep: 7,
        }
    }
}

impl BackupSettings {
    /// Where the backups go, with the data directory fleetd uses.
    pub fn dir_in(&self, data_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("backups"))
    }

    fn invalid_field(&self) -> Option<(&'static str, &'static str)> {
        if !self.enabled {
            return None;
        }
        if self.interval.is_zero() {
            return Some(("backup.interval", "must be longer than zero"));
        }
        if self.key_file.is_none() {
            return Some((
                "backup.key_file",
                "must name the backup key file when backups are enabled (fleetctl backup keygen)",
            ));
        }
        if self.keep == 0 {
            return Some(("backup.keep", "must be at least 1"));
        }
        None
    }
}

/// API keys and readiness.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// The environment written into new API keys (`fpk_<env>_...`): 1 to 8 lowercase letters
    /// or digits.
    pub key_env: String,
    /// Failed authentications one address may make per `failed_auth_window`; past it that
    /// address is answered 429 until the window ends.
    pub max_failed_auth_per_source: u32,
    /// The window of `max_failed_auth_per_source`.
    #[serde(with = "humantime_serde")]
    pub failed_auth_window: Duration,
    /// argon2 key verifications (keys from before SHA-256 hashing) running at once.
    pub key_verify_concurrency: usize,
    /// How long a verified API key is trusted from the cache (revocations still apply at once);
    /// 0s: every request verifies its key.
    #[serde(with = "humantime_serde")]
    pub key_cache_ttl: Duration,
    /// Most API keys in the cache.
    pub key_cache_capacity: usize,
    /// `/readyz` answers 503 (`ingest_lag`) when the oldest record ingest holds uncommitted is
    /// older than this.
    #[serde(with = "humantime_serde")]
    pub ready_max_ingest_lag: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        let auth = api::AuthLimits::default();
        Self {
            key_env: "live".into(),
            max_failed_auth_per_source: auth.failures_per_window,
            failed_auth_window: auth.failure_window,
            key_verify_concurrency: auth.verify_concurrency,
            key_cache_ttl: api::DEFAULT_KEY_CACHE_TTL,
            key_cache_capacity: api::DEFAULT_KEY_CACHE_CAPACITY,
            ready_max_ingest_lag: api::DEFAULT_READY_MAX_INGEST_LAG,
        }
    }
}

/// Logging settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `plain` for people, `json` for log collectors.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,store=debug`. `RUST_LOG` wins when set.
    pub level: String,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Database settings beyond the URL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connections in the application pool.
    pub max_connections: u32,
    /// How long to wait for a database connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Password of the database's application role (`fleet_app_<database>`, created by the
    /// migrations without one), for servers that ask for one. `None` (absent or empty): none.
    #[serde(deserialize_with = "empty_is_none")]
    pub app_password: Option<SecretString>,
    /// Directory of the PostgreSQL server binaries for the private cluster. `None` (absent
    /// or empty): found with `pg_config --bindir` or under /usr/lib/postgresql.
    #[serde(deserialize_with = "empty_is_none")]
    pub postgres_bindir: Option<PathBuf>,
    /// At start, the last this many events of every tenant's audit chain are verified (logged,
    /// and exported as `fleet_audit_chains_broken`); 0 skips the check.
    pub audit_tail_check_rows: u32,
}

/// Default [`DatabaseConfig::audit_tail_check_rows`].
pub const DEFAULT_AUDIT_TAIL_CHECK_ROWS: u32 = 1_000;

/// A string that never appears in logs or `Debug` output.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for SecretString {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "SecretString(<empty>)"
        } else {
            "SecretString(<redacted>)"
        })
    }
}

/// An `mqtts://host[:port]` URL (an IPv6 host in brackets), parsed at load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct MqttsUrl {
    text: String,
    host: String,
    port: Option<u16>,
}

impl MqttsUrl {
    /// The host, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, when the URL names one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for MqttsUrl {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const BAD: &str = "must be an mqtts://host[:port] URL, or empty";
        let authority = s.strip_prefix("mqtts://").ok_or(BAD)?;
        if authority.contains(['/', '@', '?', '#']) {
            return Err(BAD);
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(rest) => {
                let (host, after) = rest.split_once(']').ok_or(BAD)?;
                match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None if after.is_empty() => (host, None),
                    None => return Err(BAD),
                }
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(port) => Some(port.parse().ok().filter(|p| *p != 0).ok_or(BAD)?),
            None => None,
        };
        if host.is_empty() {
            return Err(BAD);
        }
        Ok(Self {
            text: s.to_owned(),
            host: host.to_owned(),
            port,
        })
    }
}

impl From<MqttsUrl> for String {
    fn from(url: MqttsUrl) -> Self {
        url.text
    }
}

impl fmt::Display for MqttsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Deserialises an optional value written as a string: absent, or empty (in the file or as an
/// empty environment variable), is `None`; anything else must parse as `T`, and the error
/// (which figment completes with the key and where the value came from) says why not.
fn empty_is_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("fleetd-data"),
            database_url: None,
            database_url_file: None,
            production: false,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            broker_listen: SocketAddr::from(([127, 0, 0, 1], 8883)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            ingest: ingest::IngestConfig::default(),
            external_broker: ExternalBrokerSettings::default(),
            pki: PkiConfig::default(),
            enrollment: EnrollmentConfig::default(),
            log: LogConfig::default(),
            database: DatabaseConfig::default(),
            connections: ConnectionLimits::default(),
            broker: BrokerSettings::default(),
            retention: RetentionSettings::default(),
            api: ApiSettings::default(),
            audit: AuditSettings::default(),
            backup: BackupSettings::default(),
            shutdown_grace: Duration::from_secs(10),
            siem: SiemSettings::default(),
        }
    }
}

impl Config {
    /// fleetd on `database` with its data (and private PKI) in `data_dir` and every listener on
    /// an ephemeral port of 127.0.0.1: for tests and tools that start a fleetd of their own
    /// next to other instances. The ports chosen are on the [`crate::Running`] handle.
    pub fn on_ephemeral_loopback_ports(
        data_dir: impl Into<PathBuf>,
        database: DatabaseUrl,
    ) -> Self {
        let ephemeral = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            data_dir: data_dir.into(),
            database_url: Some(database),
            api_listen: ephemeral,
            broker_listen: ephemeral,
            metrics_listen: ephemeral,
            ..Self::default()
        }
    }
}

impl Default for PkiConfig {
    fn default() -> Self {
        Self {
            dir: None,
            server_names: vec!["localhost".into()],
            server_ips: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ],
            device_cert_lifetime: certs::DEFAULT_DEVICE_CERT_LIFETIME,
            renewal_min_interval: api::DEFAULT_RENEWAL_MIN_INTERVAL,
            superseded_grace: api::DEFAULT_SUPERSEDED_GRACE,
            crl_file: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Plain,
            level: "info".into(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            connect_timeout: Duration::from_secs(10),
            app_password: None,
            postgres_bindir: None,
            audit_tail_check_rows: DEFAULT_AUDIT_TAIL_CHECK_ROWS,
        }
    }
}

/// Values given on the command line; they override everything else.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--database-url` (visible to every local user through /proc: prefer the file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<SecretString>,
    /// `--database-url-file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url_file: Option<PathBuf>,
    /// `--production` (only ever switches it on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub production: Option<bool>,
    /// `--api-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_listen: Option<String>,
    /// `--broker-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_listen: Option<String>,
    /// `--metrics-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named configuration file does not exist.
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    /// A value is of the wrong type or unknown; the message names the field and its source.
    #[error("invalid configuration: {message}")]
    Invalid {
        /// What is wrong, and where the value came from.
        message: String,
        /// The setting (`section.key`), when known.
        field: Option<String>,
    },
    /// A file a field names cannot be used; `reason` never quotes the file.
    #[error("invalid configuration: {field}: {}: {reason}", path.display())]
    UnreadableFile {
        /// The field.
        field: &'static str,
        /// The file it names.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// A setting of an older fleetd that lives elsewhere now.
    #[error("invalid configuration: {old} is now {new}")]
    Moved {
        /// Where it was.
        old: &'static str,
        /// Where it is.
        new: &'static str,
    },
    /// A `[broker]` value is out of range.
    #[error("invalid configuration: {field}: {reason}")]
    BrokerLimit {
        /// The field, `broker.<name>`.
        field: String,
        /// Why.
        reason: &'static str,
    },
    /// A value parsed but makes no sense.
    #[error("invalid configuration: {field}: {reason}")]
    Rejected {
        /// The field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
}

impl Config {
    /// Layers the file (when given), the environment and the overrides on the defaults.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::load_with_env(file, overrides, "FLEETD_")
    }

    /// [`Config::load`] with the environment variables under `env_prefix` (tests use their own).
    fn load_with_env(
        file: Option<&Path>,
        overrides: &Overrides,
        env_prefix: &str,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::MissingFile(file.to_path_buf()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let figment = figment.merge(Env::prefixed(env_prefix).ignore(&["CONFIG"]).split("__"));
        for (old, new) in MOVED {
            if figment.find_value(old).is_ok() {
                return Err(ConfigError::Moved { old, new });
            }
        }
        let mut config: Config = figment
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError::Invalid {
                field: error_field(&e),
                message: describe(e),
            })?;
        config.validate()?;
        config.read_database_url_file()?;
        config.resolve_paths()?;
        Ok(config)
    }

    /// Sets `database_url` from `database_url_file`, when one is named. Neither the file's
    /// contents nor a part of them appears in an error.
    fn read_database_url_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.database_url_file else {
            return Ok(());
        };
        if self.database_url.is_some() {
            return Err(ConfigError::Rejected {
                field: "database_url_file",
                reason: "set either database_url or database_url_file, not both",
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::UnreadableFile {
            field: "database_url_file",
            path: path.clone(),
            reason: e.kind().to_string(),
        })?;
        let url = DatabaseUrl::parse(text.trim_end()).map_err(|_| ConfigError::UnreadableFile {
            field: "database_url_file",
            path: path.clone(),
            reason: "does not hold a postgres:// or postgresql:// URL".into(),
        })?;
        self.database_url = Some(url);
        Ok(())
    }

    /// Makes `data_dir` absolute against the current directory, once: what is derived from it
    /// (the cluster's socket directory, the PKI) must not depend on which process later reads it
    /// from where (postgres changes into its data directory before it creates the socket).
    fn resolve_paths(&mut self) -> Result<(), ConfigError> {
        self.data_dir = std::path::absolute(&self.data_dir).map_err(|_| ConfigError::Rejected {
            field: "data_dir",
            reason: "cannot be resolved against the current directory",
        })?;
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let reject = |field, reason| Err(ConfigError::Rejected { field, reason });
        if self.data_dir.as_os_str().is_empty() {
            return reject("data_dir", "must not be empty");
        }
        if self.database.max_connections == 0 {
            return reject("database.max_connections", "must be at least 1");
        }
        if self.audit.checkpoint_interval < Duration::from_secs(1) {
            return reject("audit.checkpoint_interval", "must be at least 1s");
        }
        if self.audit.prune_interval < Duration::from_secs(60) {
            return reject("audit.prune_interval", "must be at least 1m");
        }
        if let Some((field, reason)) = self
            .connections
            .invalid_field()
            .or_else(|| self.retention.invalid_field())
            .or_else(|| self.backup.invalid_field())
            .or_else(|| self.siem.invalid_field())
        {
            return reject(field, reason);
        }
        if let Some((field, reason)) = self.broker.invalid_field() {
            return Err(ConfigError::BrokerLimit { field, reason });
        }
        if self.enrollment.max_concurrent_verifications == 0 {
            return reject(
                "enrollment.max_concurrent_verifications",
                "must be at least 1",
            );
        }
        if self.enrollment.max_wait.is_zero() {
            return reject("enrollment.max_wait", "must be longer than zero");
        }
        if store::api_keys::KeyEnv::new(&self.api.key_env).is_err() {
            return reject("api.key_env", "must be 1 to 8 lowercase letters or digits");
        }
        let at_least_one = [
            (self.api.key_cache_capacity, "api.key_cache_capacity"),
            (
                self.api.key_verify_concurrency,
                "api.key_verify_concurrency",
            ),
            (
                usize::try_from(self.api.max_failed_auth_per_source).unwrap_or(1),
                "api.max_failed_auth_per_source",
            ),
        ];
        if let Some((_, field)) = at_least_one.iter().find(|(value, _)| *value == 0) {
            return reject(field, "must be at least 1");
        }
        if self.api.failed_auth_window.is_zero() {
            return reject("api.failed_auth_window", "must be longer than zero");
        }
        if self.database.connect_timeout.is_zero() {
            return reject("database.connect_timeout", "must be longer than zero");
        }
        if self.pki.server_names.is_empty() && self.pki.server_ips.is_empty() {
            return reject(
                "pki.server_names",
                "server certificates need at least one name or IP address",
            );
        }
        // Minutes are useful only to watch renewal happen; production keeps days.
        if self.pki.device_cert_lifetime < Duration::from_secs(60) {
            return reject("pki.device_cert_lifetime", "must be at least 1m");
        }
        if self.pki.superseded_grace < Duration::from_secs(1) {
            return reject("pki.superseded_grace", "must be at least 1s");
        }
        if self.enrollment.max_failed_attempts_per_source == 0 {
            return reject(
                "enrollment.max_failed_attempts_per_source",
                "must be at least 1",
            );
        }
        if self.enrollment.failed_attempts_window.is_zero() {
            return reject(
                "enrollment.failed_attempts_window",
                "must be longer than zero",
            );
        }
        if let Some(url) = &self.external_broker.url {
            if url.port().is_none() {
                return reject(
                    "external_broker.url",
                    "must be mqtts://host:port, or empty for the embedded broker",
                );
            }
            if self.external_broker.client_id.is_none() {
                return reject(
                    "external_broker.client_id",
                    "must be set (unique and stable per instance) with external_broker.url",
                );
            }
        }
        if let Err(e) = self.ingest.validate() {
            let message = format!("ingest: {e}");
            // Ingest's messages name the field ("ingest config: writers: must be ...").
            let field = message
                .split_whitespace()
                .map(|word| word.trim_end_matches(':'))
                .find(|word| INGEST_DOCS.iter().any(|(key, _)| key == word))
                .map(|word| format!("ingest.{word}"));
            return Err(ConfigError::Invalid { message, field });
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return reject(
                "log.level",
                "is not a tracing filter such as `info` or `info,store=debug`",
            );
        }
        Ok(())
    }

    /// The audit checkpoint key file: `audit.checkpoint_key`, or `<data_dir>/audit-checkpoint.key`.
    pub fn audit_checkpoint_key(&self) -> PathBuf {
        self.audit
            .checkpoint_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-checkpoint.key"))
    }

    /// Where checkpoints are pushed as files: `audit.checkpoint_dir`, or
    /// `<data_dir>/audit-checkpoints`.
    pub fn audit_checkpoint_dir(&self) -> PathBuf {
        self.audit
            .checkpoint_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-checkpoints"))
    }

    /// The PKI directory: configured, or the development PKI's place in the data directory.
    pub fn pki_dir(&self) -> PathBuf {
        self.pki
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("pki"))
    }

    /// Whether the PKI is fleetd's own development PKI (created on demand) rather than one an
    /// operator set up.
    pub fn uses_dev_pki(&self) -> bool {
        self.pki.dir.is_none()
    }

    /// The broker URL devices are told at enrollment, given the port the broker listener
    /// actually bound (it differs from `broker_listen` when that asks for port 0).
    pub fn broker_url(&self, bound_port: u16) -> String {
        if let Some(url) = self
            .enrollment
            .broker_url
            .as_ref()
            .or(self.external_broker.url.as_ref())
        {
            return url.to_string();
        }
        let host = match (self.pki.server_names.first(), self.pki.server_ips.first()) {
            (Some(name), _) => name.clone(),
            (None, Some(IpAddr::V6(ip))) => format!("[{ip}]"),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => "localhost".into(),
        };
        format!("mqtts://{host}:{bound_port}")
    }

    /// The store's view of the database settings.
    pub fn database_settings(&self) -> store::DatabaseSettings {
        store::DatabaseSettings {
            url: self.database_url.clone(),
            data_dir: self.data_dir.clone(),
            app_password: self
                .database
                .app_password
                .as_ref()
                .map(|password| password.expose().to_owned()),
            postgres_bindir: self.database.postgres_bindir.clone(),
            max_connections: self.database.max_connections,
            connect_timeout: self.database.connect_timeout,
        }
    }
}

impl ConfigError {
    /// The setting the error is about (`section.key`, or `key` at the top level), when known.
    pub fn field(&self) -> Option<String> {
        match self {
            Self::MissingFile(_) => None,
            Self::Invalid { field, .. } => field.clone(),
            Self::UnreadableFile { field, .. } | Self::Rejected { field, .. } => {
                Some((*field).to_owned())
            }
            Self::Moved { old, .. } => Some((*old).to_owned()),
            Self::BrokerLimit { field, .. } => Some(field.clone()),
        }
    }
}

/// The setting a figment error is about: its key path, plus the unknown key for an unknown
/// field.
fn error_field(error: &figment::Error) -> Option<String> {
    let mut path = error.path.clone();
    if let figment::error::Kind::UnknownField(name, _) = &error.kind {
        if path.last() != Some(name) {
            path.push(name.clone());
        }
    }
    (!path.is_empty()).then(|| path.join("."))
}

/// The line (1-based) of setting `field` (`section.key` or `key`) in the TOML `text`, if it
/// is written there as `key = ...` in its section (or as `section.key = ...` at the top).
pub fn line_of(text: &str, field: &str) -> Option<usize> {
    let (section, key) = field.rsplit_once('.').unwrap_or(("", field));
    let assigns = |line: &str, key: &str| {
        line.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let mut current = String::new();
    for (at, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_owned();
        } else if (current == section && assigns(line, key))
            || (current.is_empty() && assigns(line, field))
        {
            return Some(at + 1);
        }
    }
    None
}

/// What a configuration amounts to, in a few lines (`fleetd check-config`). No secret: a
/// database URL is shown with its password redacted.
pub fn summary(config: &Config) -> String {
    let broker = match &config.external_broker.url {
        Some(url) => format!("{url} (external; this instance is ingest-only)"),
        None => format!("mqtts://{} (embedded)", config.broker_listen),
    };
    let database = match &config.database_url {
        Some(url) => url.redacted(),
        None => format!(
            "private cluster in {}",
            config.data_dir.join("postgres").display()
        ),
    };
    let pki = match &config.pki.dir {
        Some(dir) => dir.display().to_string(),
        None => format!("development PKI in {}", config.pki_dir().display()),
    };
    let format = match config.log.format {
        LogFormat::Plain => "plain",
        LogFormat::Json => "json",
    };
    format!(
        "api        https://{api}\n\
         broker     {broker}\n\
         metrics    http://{metrics}/metrics\n\
         database   {database}\n\
         pki        {pki}\n\
         data_dir   {data_dir}\n\
         log        {format}, {level}\n\
         production {production}",
        api = config.api_listen,
        metrics = config.metrics_listen,
        data_dir = config.data_dir.display(),
        level = config.log.level,
        production = if config.production { "on" } else { "off" },
    )
}

/// figment's errors name the key and where its value came from; keep all of them.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A commented configuration file holding every default, printed by `fleetd configfile`.
///
/// Every section says what it is for, its defaults and its environment override; the test
/// `the_template_parses_back_to_the_defaults` keeps it true.
pub fn template() -> String {
    let d = Config::default();
    format!(
        r#"# fleetd configuration. Every value shown is the default; delete what you do not change.
# A commented-out key is unset by default; an empty string ("") also means unset.
# Environment variables override this file: FLEETD_<FIELD>, with __ between sections
# (FLEETD_API_LISTEN, FLEETD_DATABASE__MAX_CONNECTIONS); an empty variable means unset.
# Command-line flags (--data-dir, --database-url, --database-url-file, --api-listen,
# --broker-listen, --metrics-listen, --production) override both.
# `fleetd check-config FILE` checks a file (and the environment) without starting.
# Durations are written like "10s", "5m", "90d" or "1h 30m".

# --- Top level: storage, database, listeners, shutdown. -------------------------------------
# Environment: FLEETD_DATA_DIR, FLEETD_DATABASE_URL, FLEETD_DATABASE_URL_FILE,
# FLEETD_PRODUCTION, FLEETD_API_LISTEN, FLEETD_BROKER_LISTEN, FLEETD_METRICS_LISTEN,
# FLEETD_SHUTDOWN_GRACE.

# Production mode: refuse to start with a generated (development) PKI (pki.dir unset), or with the
# root CA key (root-ca.key) in pki.dir on this host. Off by default so that the quickstart runs
# on the embedded defaults; the start-up log says which mode fleetd runs in. In either mode the
# development PKI is refused behind any listener beyond loopback.
production = {production}

# Where fleetd keeps what it creates: the private PostgreSQL cluster, the development PKI.
# A relative path is resolved against the directory fleetd starts in (fleetctl resolves its
# --data-dir the same way), e.g. /var/lib/fleetd for a system service.
data_dir = {data_dir:?}

# PostgreSQL URL (postgres:// or postgresql://) of the owner role (migrations run as it; it
# must be superuser or BYPASSRLS; PostgreSQL 15 or newer). fleetd itself works as the role
# fleet_app_<database name> (one per database, the only role granted CONNECT to it), created by
# the migrations; fleetd closes the owner's connections once started. Default (unset): fleetd
# creates and supervises a private cluster in data_dir.
# The URL may carry the password (postgres://user:password@host/db); fleetd never logs it.
# Command-line arguments are visible to every local user (/proc/PID/cmdline, ps): give a URL
# with a password here, in FLEETD_DATABASE_URL, or in a file named by database_url_file.
# database_url = "postgres://fleet_owner@db.example:5432/fleet"

# A file (e.g. mode 0600) holding database_url on one line, read at start. Exclusive with
# database_url.
# database_url_file = "/etc/fleetplane/database-url"

# Address of the HTTPS API listener: /v1/..., /healthz, /readyz.
api_listen = "{api_listen}"

# Address of the devices' MQTT listener (mutual TLS).
broker_listen = "{broker_listen}"

# Address of the plain-HTTP Prometheus listener (/metrics). Keep it on an internal network.
metrics_listen = "{metrics_listen}"

# How long in-flight requests get to finish at shutdown.
shutdown_grace = "{shutdown_grace}"

# --- [pki]: the fleet PKI, and the server certificates fleetd issues itself for the API and --
# broker listeners at every start. Environment: FLEETD_PKI__DIR, FLEETD_PKI__SERVER_NAMES
# (e.g. '["fleet.example"]'), FLEETD_PKI__SERVER_IPS, FLEETD_PKI__DEVICE_CERT_LIFETIME,
# FLEETD_PKI__RENEWAL_MIN_INTERVAL, FLEETD_PKI__SUPERSEDED_GRACE, FLEETD_PKI__CRL_FILE.
[pki]
# Directory of the fleet root and issuing CA (made by `fleetctl pki init`).
# Default (unset): <data_dir>/pki, created as a development PKI on first start.
# dir = "/etc/fleetplane/pki"
# Names and addresses in the server certificates (at least one of the two).
server_names = {server_names:?}
server_ips = {server_ips:?}
# Lifetime of device certificates (at least 1m); agents renew well before expiry.
device_cert_lifetime = "{device_cert_lifetime}"
# Least time between two renewals of one device (429 with Retry-After before it), unless its
# newest certificate is in its last third of validity. 0s: no limit.
renewal_min_interval = "{renewal_min_interval}"
# A renewal supersedes the device's older certificates: they are still admitted for this long
# (the agent's switch-over; at least 1s), then refused by the broker and listed in the CRL.
superseded_grace = "{superseded_grace}"
# The fleet's CRL (PEM), for an external broker's crlfile (Mosquitto: reload it with SIGHUP),
# rewritten atomically at start, on every revocation and every 5 minutes. Default (unset): no
# file; the CRL is served at GET /v1/pki/crl either way.
# crl_file = "/etc/mosquitto/fleet-crl.pem"

# --- [enrollment]: device onboarding through POST /v1/enroll. -------------------------------
# Environment: FLEETD_ENROLLMENT__<KEY>, e.g. FLEETD_ENROLLMENT__BROKER_URL,
# FLEETD_ENROLLMENT__MAX_FAILED_ATTEMPTS_PER_SOURCE.
[enrollment]
# Broker URL (mqtts://host[:port]) given to enrolled devices. Default (unset):
# external_broker.url when set, else mqtts://<first server name>:<broker_listen port>.
# broker_url = "mqtts://fleet.example:8883"
# Proxies (CIDRs) whose X-Forwarded-For header is believed for the client address.
trusted_proxies = []
# Refused enrollments (bad token, CSR or request) one client address may make per window;
# past it that address alone is answered 429 with Retry-After until the window ends.
max_failed_attempts_per_source = {max_failed_attempts_per_source}
# The window of max_failed_attempts_per_source.
failed_attempts_window = "{failed_attempts_window}"
# Verifications of older (argon2id) tokens running at once (default: one per core); the rest
# wait their turn holding no database connection.
max_concurrent_verifications = {max_concurrent_verifications}
# How long an enrollment waits for its turn before it is answered 503 with Retry-After.
max_wait = "{enroll_max_wait}"

# --- [ingest]: how device records are batched into PostgreSQL. ------------------------------
# Records per batch and the time window, writer tasks, queue and memory bounds (while the
# database is down, ingest stops taking messages once these fill and acknowledges nothing),
# directory cache, retry backoff. Environment: FLEETD_INGEST__<KEY>, e.g.
# FLEETD_INGEST__BATCH_WINDOW=50ms.
[ingest]
{ingest}
# --- [external_broker]: ingest-only mode. ----------------------------------------------------
# Consume device messages from an external broker through an MQTT v5 shared subscription
# instead of running the embedded broker; start any number of fleetd instances with the same
# share_group. fleetd authenticates as "fleetd-ingest" with a client certificate it issues
# itself from the PKI. Set up the broker as ingest/README.md says. Default: off (url unset).
# Environment: FLEETD_EXTERNAL_BROKER__URL, FLEETD_EXTERNAL_BROKER__CLIENT_ID,
# FLEETD_EXTERNAL_BROKER__SHARE_GROUP.
[external_broker]
# The broker, mqtts://host:port. Unset: the embedded broker on broker_listen.
# url = "mqtts://mqtt.example:8883"
# Required with url; unique and stable per instance: it names the broker session that
# survives restarts.
# client_id = "fleetd-ingest-1"
# Instances in one group split the messages.
share_group = {share_group:?}

# --- [log]: log output. Environment: FLEETD_LOG__FORMAT, FLEETD_LOG__LEVEL (RUST_LOG wins). --
[log]
# "plain" for people, "json" for log collectors.
format = "{log_format}"
# A tracing filter such as "info" or "info,store=debug". RUST_LOG wins when set.
level = {log_level:?}

# --- [database]: database tuning beyond the URL, and the private cluster. --------------------
# Environment: FLEETD_DATABASE__MAX_CONNECTIONS, FLEETD_DATABASE__CONNECT_TIMEOUT,
# FLEETD_DATABASE__APP_PASSWORD, FLEETD_DATABASE__POSTGRES_BINDIR,
# FLEETD_DATABASE__AUDIT_TAIL_CHECK_ROWS.
[database]
# Connections in fleetd's application pool.
max_connections = {max_connections}
# How long to wait for a database connection.
connect_timeout = "{connect_timeout}"
# Password of the role fleet_app_<database name>, if the server asks for one (set it with ALTER
# ROLE, or create the role with it before the first start). Default (unset): none.
# app_password = "..."
# Directory of initdb and postgres for the private cluster. Default (unset): found with
# pg_config --bindir or under /usr/lib/postgresql.
# postgres_bindir = "/usr/lib/postgresql/16/bin"
# At start, verify the last this many audit events of every tenant's chain (one transaction
# and this many SHA-256 per tenant); a broken chain is logged at ERROR and exported as
# fleet_audit_chains_broken, and fleetd still starts. 0 skips the check.
audit_tail_check_rows = {audit_tail_check_rows}

# --- [connections]: what one address may hold on the API listener. ---------------------------
# Above a cap the new connection is closed at once and counted. fleetd raises its soft
# descriptor limit to the hard one at start and lowers the broker's and the API's connection
# caps to fit it if needed (with a warning), so neither listener can take the descriptors of
# the other. The broker's limits are in [broker]. Environment: FLEETD_CONNECTIONS__<KEY>, e.g.
# FLEETD_CONNECTIONS__API_IDLE_TIMEOUT=2m.
[connections]
{connections}
# --- [broker]: the embedded broker's limits (unused in ingest-only mode). --------------------
# The gateway in front of rumqttd; broker/README.md says what each limit guards. Refusals an
# attacker can cause by the thousand are logged at most every 10 s per reason. Environment:
# FLEETD_BROKER__<KEY>, e.g. FLEETD_BROKER__PUBLISH_RATE=50.
[broker]
{broker}
# --- [retention]: how the telemetry retention sweep runs. -----------------------------------
# (How long each tenant keeps its telemetry is a tenant setting.) Environment:
# FLEETD_RETENTION__<KEY>, e.g. FLEETD_RETENTION__INTERVAL=30m.
[retention]
{retention}
# --- [audit]: signed checkpoints of the audit chain. -----------------------------------------
# Every interval and at shutdown, fleetd signs each tenant's chain up to its last event with an
# Ed25519 key kept outside the database, and writes each checkpoint to the database and as a file.
# `fleetctl audit verify --checkpoints DIR --public-key FILE` then detects a rewritten event, a cut
# tail or a forged checkpoint. Environment: FLEETD_AUDIT__CHECKPOINT_INTERVAL,
# FLEETD_AUDIT__CHECKPOINT_KEY, FLEETD_AUDIT__CHECKPOINT_DIR, FLEETD_AUDIT__PRUNE_INTERVAL.
[audit]
# Time between checkpoint runs (at least 1s).
checkpoint_interval = "{checkpoint_interval}"
# The signing key: a 32-byte Ed25519 seed, mode 0600. Back it up; keep it from database admins.
# Default (unset): <data_dir>/audit-checkpoint.key, created on first start.
# checkpoint_key = "/etc/fleetplane/audit-checkpoint.key"
# Where each checkpoint is also written, as <tenant>/<seq>.json, never overwritten: best another
# mount (or an append-only share). Default (unset): <data_dir>/audit-checkpoints.
# checkpoint_dir = "/mnt/audit/fleetplane"
# Time between audit retention runs, the first at start (at least 1m). Each removes the events of
# every tenant older than its audit_retention_days (a tenant setting, default 365), but only behind
# the newest signed checkpoint that covers them; verification then starts from that checkpoint.
prune_interval = "{prune_interval}"
# --- [api]: API keys, and when /readyz says ready. -------------------------------------------
# Environment: FLEETD_API__<KEY>, e.g. FLEETD_API__READY_MAX_INGEST_LAG=1m.
[api]
{api}# --- [backup]: scheduled encrypted backups (off by default). --------------------------------
# What `fleetctl backup create` makes (pg_dump, encrypted with the key file), every interval,
# into dir, keeping the newest; prove them with `fleetctl backup verify`. Each run connects as
# the owner role for the dump only. Environment: FLEETD_BACKUP__<KEY>, e.g.
# FLEETD_BACKUP__ENABLED=true.
[backup]
# Whether fleetd makes backups.
enabled = {backup_enabled}
# Time between backups; the first is made one interval after start.
interval = "{backup_interval}"
# Where backups go (default: <data_dir>/backups).
# dir = "/var/backups/fleetplane"
# The key file (fleetctl backup keygen --out FILE), mode 0600; required when enabled.
# key_file = "/etc/fleetplane/backup.key"
# How many scheduled backups to keep; older ones are removed after each new one.
keep = {backup_keep}

# --- [siem]: the audit trail of tenants that opted in (`fleetctl tenant set --siem-forwarding
# on`) as RFC 5424 syslog over TLS (RFC 5425 framing) to one collector; README, "SIEM
# forwarding". Off while collector is unset. Environment: FLEETD_SIEM__<KEY>, e.g.
# FLEETD_SIEM__COLLECTOR=siem.example:6514.
[siem]
# The collector, host:port (an IPv6 address in brackets).
# collector = "siem.example:6514"
# PEM trust anchor(s) for the collector's certificate (required with collector).
# ca_file = "/etc/fleetplane/siem-ca.pem"
# The name the collector's certificate must carry. Default: the host of collector.
# server_name = "siem.example"
# A client certificate chain and its key (PEM), for a collector that requires mutual TLS.
# client_cert_file = "/etc/fleetplane/siem-client.pem"
# client_key_file = "/etc/fleetplane/siem-client.key"
# HOSTNAME of the messages. Default: this host's name.
# hostname = "fleetd-1"
# Events read and written per tenant at a time (1 to 10000).
batch = {siem_batch}
# How often the forwarder looks for new events once it has caught up.
poll_interval = "{siem_poll_interval}"
# Most events per tenant sent again after a connection to the collector fails (what it may
# have received but not stored); the collector de-duplicates by tenant and seq. 0: none.
resend_window = {siem_resend_window}"#,
        data_dir = d.data_dir.display().to_string(),
        production = d.production,
        api_listen = d.api_listen,
        broker_listen = d.broker_listen,
        metrics_listen = d.metrics_listen,
        ingest = documented(&d.ingest, INGEST_DOCS),
        server_names = d.pki.server_names,
        server_ips = d
            .pki
            .server_ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        device_cert_lifetime = humantime::format_duration(d.pki.device_cert_lifetime),
        renewal_min_interval = humantime::format_duration(d.pki.renewal_min_interval),
        superseded_grace = humantime::format_duration(d.pki.superseded_grace),
        max_failed_attempts_per_source = d.enrollment.max_failed_attempts_per_source,
        failed_attempts_window = humantime::format_duration(d.enrollment.failed_attempts_window),
        max_concurrent_verifications = d.enrollment.max_concurrent_verifications,
        enroll_max_wait = humantime::format_duration(d.enrollment.max_wait),
        shutdown_grace = humantime::format_duration(d.shutdown_grace),
        share_group = d.external_broker.share_group,
        log_format = match d.log.format {
            LogFormat::Plain => "plain",
            LogFormat::Json => "json",
        },
        log_level = d.log.level,
        max_connections = d.database.max_connections,
        connect_timeout = humantime::format_duration(d.database.connect_timeout),
        audit_tail_check_rows = d.database.audit_tail_check_rows,
        connections = documented(&d.connections, CONNECTIONS_DOCS),
        broker = documented(&d.broker, BROKER_DOCS),
        retention = documented(&d.retention, RETENTION_DOCS),
        api = documented(&d.api, API_DOCS),
        checkpoint_interval = humantime::format_duration(d.audit.checkpoint_interval),
        prune_interval = humantime::format_duration(d.audit.prune_interval),
        backup_enabled = d.backup.enabled,
        backup_interval = humantime::format_duration(d.backup.interval),
        backup_keep = d.backup.keep,
        siem_batch = d.siem.batch,
        siem_poll_interval = humantime::format_duration(d.siem.poll_interval),
        siem_resend_window = d.siem.resend_window,
    )
}

/// The keys of `section` (a struct of defaults), each under its comment from `docs` and with
/// its default value. A key without a comment is a bug: the test
/// `every_key_of_the_template_is_commented` finds it.
fn documented(section: &impl Serialize, docs: &[(&str, &str)]) -> String {
    let table = toml::Table::try_from(section).expect("defaults serialise as a table");
    let mut out = String::new();
    for (key, doc) in docs {
        for line in doc.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        let value = table
            .get(*key)
            .unwrap_or_else(|| panic!("{key} documented but not a setting"));
        out.push_str(&format!("{key} = {value}\n"));
    }
    out
}

const INGEST_DOCS: &[(&str, &str)] = &[
    (
        "batch_max_records",
        "A tenant's batch is committed when it holds this many records...",
    ),
    (
        "batch_window",
        "... or when its oldest message has waited this long.",
    ),
    (
        "writers",
        "Transactions committing at once (each holds one pooled connection).",
    ),
    (
        "queue_capacity",
        "Messages waiting in the input queue before the broker's side waits.",
    ),
    (
        "max_buffered_bytes",
        "The memory bound: payload bytes ingest holds at once (queued, batched, committing or\n\
         retrying); decoded records cost about three times their payload.",
    ),
    (
        "max_message_bytes",
        "Largest accepted message in bytes (larger: refused as oversize). Keep it equal to\n\
         broker.max_packet_size.",
    ),
    (
        "directory_ttl",
        "How long a device -> tenant answer is reused (revocation is checked in every batch).",
    ),
    (
        "directory_negative_ttl",
        "How long \"no such device\" is remembered.",
    ),
    (
        "directory_capacity",
        "Most devices the directory cache remembers.",
    ),
    (
        "max_pending_ranges",
        "Most disjoint handled ranges kept above a device's watermark; a record that would open\n\
         one more is refused as too_many_gaps (not acknowledged: the device sends it again).",
    ),
    (
        "retry_initial",
        "First wait before retrying a failed commit; doubles up to retry_max.",
    ),
    ("retry_max", "Longest wait between commit retries."),
];

const CONNECTIONS_DOCS: &[(&str, &str)] = &[
    (
        "api_max_handshakes_per_address",
        "TLS handshakes in progress at once from one IP address.",
    ),
    (
        "api_max_handshakes_in_flight",
        "TLS handshakes in progress at once; accepting pauses at the cap.",
    ),
    (
        "api_handshake_timeout",
        "Time a client has to finish its TLS handshake.",
    ),
    ("api_max_connections", "Connections at once."),
    (
        "api_header_read_timeout",
        "Time a client has to send a request's headers (after the handshake, and between\n\
         keep-alive requests); a slowloris client is closed then.",
    ),
    (
        "api_idle_timeout",
        "A connection on which no byte moved either way for this long is closed.",
    ),
];

const BROKER_DOCS: &[(&str, &str)] = &[
    (
        "max_connections",
        "Device connections at once, handshaking or connected.",
    ),
    (
        "max_handshakes_in_flight",
        "TLS handshakes in progress at once; a connection past it is closed at once.",
    ),
    (
        "max_handshakes_per_address",
        "TLS handshakes in progress at once from one IP address (a NAT in front of many\n\
         devices reconnecting at once must fit).",
    ),
    (
        "max_pending_connects_per_device",
        "Connections of one device between its TLS handshake and CONNACK (its live session\n\
         does not count: a new CONNECT still replaces it).",
    ),
    (
        "handshake_timeout",
        "Time a TCP connection has to finish its TLS handshake.",
    ),
    (
        "connect_timeout",
        "Time an authenticated connection has to send its MQTT CONNECT.",
    ),
    (
        "admission_timeout",
        "Time the admission check (revocation, quota: a database read) has to answer; past it\n\
         the device is refused (fail closed).",
    ),
    (
        "max_connect_size",
        "Largest MQTT CONNECT in bytes (at least 64, at most max_packet_size).",
    ),
    (
        "max_packet_size",
        "Largest MQTT packet a device may send, in bytes (a full wire message plus its topic).",
    ),
    (
        "publish_rate",
        "Sustained PUBLISH packets per second per device (token bucket); above it the device\n\
         is disconnected.",
    ),
    (
        "publish_burst",
        "PUBLISH burst per device (the bucket's depth): an agent replaying its outbox after a\n\
         reconnect sends batches back to back.",
    ),
    ("max_subscriptions", "Subscriptions per device connection."),
    (
        "max_keep_alive_secs",
        "Longest keep-alive a device may ask for, in seconds (0 is refused).",
    ),
    (
        "engine_segment_size",
        "rumqttd's in-memory log, bytes per segment, per filter (it only fans out server\n\
         messages: each filter keeps up to size x (count + 1)).",
    ),
    (
        "engine_segment_count",
        "Full segments kept per filter, beside the active one.",
    ),
    (
        "live_streams",
        "Live streams for integrations: a client without a certificate logs in with an API key\n\
         (username = key id, password = key) and subscribes, read only, to\n\
         fleet/v1/stream/{tenant_id}/# (broker/README.md). false: every client needs a\n\
         device certificate.",
    ),
    (
        "stream_recheck_interval",
        "How often a stream subscriber's key is checked again (revoked or expired: closed) and\n\
         its groups' devices re-read: the bound on both.",
    ),
    (
        "stream_queue_capacity",
        "Messages queued per stream subscriber; beyond, its messages are dropped and counted\n\
         (fleet_broker_stream_dropped_total): a slow subscriber never slows ingest.",
    ),
    (
        "max_pending_stream_connects_per_address",
        "Connections without a certificate from one address between handshake and CONNACK.",
    ),
    (
        "max_pending_publishes",
        "A device's publishes read but not yet taken by ingest (their PUBACK waits); above it\n\
         the device's socket is not read until ingest catches up (TCP backpressure).",
    ),
];

const RETENTION_DOCS: &[(&str, &str)] = &[
    ("interval", "Time between runs."),
    ("step_rows", "Rows deleted per transaction (1 to 100000)."),
    (
        "step_pause",
        "Pause between steps, to leave the database to ingest.",
    ),
    ("weeks_ahead", "Weekly partitions kept ready ahead of now."),
    ("max_partition_drops", "Most partitions dropped per run."),
];

const API_DOCS: &[(&str, &str)] = &[
    (
        "key_env",
        "The environment written into new API keys (fpk_<env>_...): 1 to 8 lowercase\n\
         letters or digits.",
    ),
    (
        "max_failed_auth_per_source",
        "Failed authentications one address may make per failed_auth_window; past it that\n\
         address alone is answered 429 until the window ends.",
    ),
    (
        "failed_auth_window",
        "The window of max_failed_auth_per_source.",
    ),
    (
        "key_verify_concurrency",
        "argon2 verifications of older API keys running at once.",
    ),
    (
        "key_cache_ttl",
        "How long a verified key is trusted from the cache (revocations still apply at once).\n\
         0s: every request verifies its key.",
    ),
    ("key_cache_capacity", "Most keys in the cache."),
    (
        "ready_max_ingest_lag",
        "/readyz answers 503 with \"ingest_lag\" when ingest has held messages this long\n\
         without committing any (the database is down or a writer is stuck).",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn load_toml(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleetd.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), &Overrides::default())
    }

    #[test]
    fn connection_limits_out_of_range_are_refused_naming_the_field() {
        for (text, field) in [
            (
                "[connections]\napi_max_handshakes_per_address = 0",
                "connections.api_max_handshakes_per_address",
            ),
            (
                "[connections]\napi_max_handshakes_in_flight = 0",
                "connections.api_max_handshakes_in_flight",
            ),
            (
                "[connections]\napi_handshake_timeout = \"0s\"",
                "connections.api_handshake_timeout",
            ),
            (
                "[connections]\napi_max_connections = 0",
                "connections.api_max_connections",
            ),
            (
                "[connections]\napi_header_read_timeout = \"0s\"",
                "connections.api_header_read_timeout",
            ),
            (
                "[connections]\napi_idle_timeout = \"0s\"",
                "connections.api_idle_timeout",
            ),
        ] {
            let err = load_toml(text).unwrap_err();
            assert_eq!(err.field().as_deref(), Some(field), "{text}: {err}");
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
        let limits = load_toml("[connections]\napi_idle_timeout = \"2m\"")
            .unwrap()
            .connections;
        assert_eq!(limits.api_idle_timeout, Duration::from_secs(120));
    }

    #[test]
    fn broker_limits_out_of_range_are_refused_naming_the_field() {
        for (setting, field) in [
            ("max_connections = 0", "max_connections"),
            ("max_handshakes_in_flight = 0", "max_handshakes_in_flight"),
            (
                "max_handshakes_per_address = 0",
                "max_handshakes_per_address",
            ),
            (
                "max_pending_connects_per_device = 0",
                "max_pending_connects_per_device",
            ),
            ("handshake_timeout = \"0s\"", "handshake_timeout"),
            ("connect_timeout = \"0s\"", "connect_timeout"),
            ("admission_timeout = \"0s\"", "admission_timeout"),
            ("max_connect_size = 10", "max_connect_size"),
            (
                "max_packet_size = 2000\nmax_connect_size = 4096",
                "max_connect_size",
            ),
            ("max_packet_size = 10", "max_packet_size"),
            ("publish_rate = 0", "publish_rate"),
            ("publish_rate = -1.5", "publish_rate"),
            ("publish_burst = 0", "publish_burst"),
            ("max_keep_alive_secs = 0", "max_keep_alive_secs"),
            ("engine_segment_size = 100", "engine_segment_size"),
            ("engine_segment_count = 0", "engine_segment_count"),
            ("max_pending_publishes = 0", "max_pending_publishes"),
        ] {
            let text = format!("[broker]\n{setting}");
            let err = load_toml(&text).unwrap_err();
            let expected = format!("broker.{field}");
            assert_eq!(err.field(), Some(expected.clone()), "{text}: {err}");
            assert!(err.to_string().contains(&expected), "{text}: {err}");
        }
        let broker = load_toml("[broker]\npublish_rate = 50\nmax_keep_alive_secs = 60")
            .unwrap()
            .broker;
        assert_eq!(
            broker.publish_rate, 50.0,
            "an integer rate is read as a number"
        );
        let mut config = broker::BrokerConfig::new(
            Vec::new(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(Vec::new().into()),
            rustls::pki_types::CertificateDer::from(Vec::new()),
        );
        broker.apply(&mut config, 7);
        assert_eq!(
            (
                config.publish_rate,
                config.max_keep_alive,
                config.max_connections
            ),
            (50.0, 60, 7)
        );
    }

    #[test]
    fn the_broker_settings_of_connections_moved_to_broker() {
        for (old, new) in MOVED {
            let (section, key) = old.split_once('.').unwrap();
            let err = load_toml(&format!("[{section}]\n{key} = 100")).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid configuration: {old} is now {new}")
            );
            assert_eq!(err.field().as_deref(), Some(old));
        }
    }

    #[test]
    fn the_audit_section_defaults_under_the_data_dir_and_reads_its_keys() {
        let d = Config::default();
        assert_eq!(d.audit.checkpoint_interval, Duration::from_secs(300));
        assert_eq!(d.audit.prune_interval, Duration::from_secs(24 * 3600));
        assert_eq!(
            d.audit_checkpoint_key(),
            d.data_dir.join("audit-checkpoint.key")
        );
        assert_eq!(
            d.audit_checkpoint_dir(),
            d.data_dir.join("audit-checkpoints")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleetd.toml");
        std::fs::write(
            &path,
            "[audit]\ncheckpoint_interval = \"1m\"\ncheckpoint_key = \"/k/audit.key\"\ncheckpoint_dir = \"/mnt/audit\"\nprune_interval = \"6h\"",
        )
        .unwrap();
        let config =
            Config::load_with_env(Some(&path), &Overrides::default(), "CONFIGTEST_AUDIT_").unwrap();
        assert_eq!(config.audit.checkpoint_interval, Duration::from_secs(60));
        assert_eq!(config.audit_checkpoint_key(), PathBuf::from("/k/audit.key"));
        assert_eq!(config.audit_checkpoint_dir(), PathBuf::from("/mnt/audit"));
        assert_eq!(config.audit.prune_interval, Duration::from_secs(6 * 3600));
        std::env::set_var("CONFIGTEST_AUDITBAD_AUDIT__CHECKPOINT_INTERVAL", "0s");
        let err =
            Config::load_with_env(None, &Overrides::default(), "CONFIGTEST_AUDITBAD_").unwrap_err();
        assert_eq!(err.field().as_deref(), Some("audit.checkpoint_interval"));
        std::env::set_var("CONFIGTEST_PRUNEBAD_AUDIT__PRUNE_INTERVAL", "30s");
        let err =
            Config::load_with_env(None, &Overrides::default(), "CONFIGTEST_PRUNEBAD_").unwrap_err();
        assert_eq!(err.field().as_deref(), Some("audit.prune_interval"));
    }

    #[test]
    fn every_section_follows_the_environment_scheme() {
        std::env::set_var("CONFIGTEST_SCHEME_BROKER__PUBLISH_RATE", "50");
        std::env::set_var("CONFIGTEST_SCHEME_RETENTION__INTERVAL", "30m");
        std::env::set_var("CONFIGTEST_SCHEME_API__READY_MAX_INGEST_LAG", "1m");
        std::env::set_var("CONFIGTEST_SCHEME_METRICS_LISTEN", "127.0.0.1:19464");
        let config =
            Config::load_with_env(None, &Overrides::default(), "CONFIGTEST_SCHEME_").unwrap();
        assert_eq!(config.broker.publish_rate, 50.0);
        assert_eq!(config.retention.interval, Duration::from_secs(1800));
        assert_eq!(config.api.ready_max_ingest_lag, Duration::from_secs(60));
        assert_eq!(config.metrics_listen, "127.0.0.1:19464".parse().unwrap());
        std::env::set_var("CONFIGTEST_SCHEMEBAD_BROKER__PUBLISH_BURST", "0");
        let err = Config::load_with_env(None, &Overrides::default(), "CONFIGTEST_SCHEMEBAD_")
            .unwrap_err();
        assert_eq!(err.field().as_deref(), Some("broker.publish_burst"));
        let overrides = Overrides {
            metrics_listen: Some("127.0.0.1:29464".into()),
            ..Overrides::default()
        };
        let config = Config::load_with_env(None, &overrides, "CONFIGTEST_SCHEME_").unwrap();
        assert_eq!(
            config.metrics_listen,
            "127.0.0.1:29464".parse().unwrap(),
            "the flag wins over the environment"
        );
    }

    #[test]
    fn other_new_settings_are_checked() {
        for (text, field) in [
            ("[retention]\ninterval = \"0s\"", "retention.interval"),
            ("[backup]\nenabled = true", "backup.key_file"),
            (
                "[backup]\nenabled = true\nkey_file = \"k\"\nkeep = 0",
                "backup.keep",
            ),
            (
                "[backup]\nenabled = true\nkey_file = \"k\"\ninterval = \"0s\"",
                "backup.interval",
            ),
            ("[retention]\nstep_rows = 0", "retention.step_rows"),
            ("[siem]\nbatch = 0", "siem.batch"),
            ("[siem]\npoll_interval = \"0s\"", "siem.poll_interval"),
            ("[siem]\ncollector = \"siem.example\"", "siem.collector"),
            ("[siem]\ncollector = \"siem.example:6514\"", "siem.ca_file"),
            (
                "[siem]\nclient_cert_file = \"/c.pem\"",
                "siem.client_key_file",
            ),
            ("[retention]\nweeks_ahead = 0", "retention.weeks_ahead"),
            (
                "[retention]\nmax_partition_drops = 0",
                "retention.max_partition_drops",
            ),
            ("[api]\nkey_env = \"Live!\"", "api.key_env"),
            ("[api]\nkey_cache_capacity = 0", "api.key_cache_capacity"),
            (
                "[api]\nkey_verify_concurrency = 0",
                "api.key_verify_concurrency",
            ),
            (
                "[api]\nmax_failed_auth_per_source = 0",
                "api.max_failed_auth_per_source",
            ),
            (
                "[api]\nfailed_auth_window = \"0s\"",
                "api.failed_auth_window",
            ),
            (
                "[enrollment]\nmax_concurrent_verifications = 0",
                "enrollment.max_concurrent_verifications",
            ),
            ("[enrollment]\nmax_wait = \"0s\"", "enrollment.max_wait"),
            ("[ingest]\nwriters = 0", "ingest.writers"),
            ("[broker]\nmax_conections = 1", "broker.max_conections"),
            (
                "[broker]\nmax_connections = \"many\"",
                "broker.max_connections",
            ),
        ] {
            let err = load_toml(text).unwrap_err();
            assert_eq!(err.field().as_deref(), Some(field), "{text}: {err}");
        }
    }

    #[test]
    fn an_error_is_located_on_its_line() {
        let text = "api_listen = \"x\"\n\n[broker]\n# max_connections = 1\n  max_connections = 0\n\
                    [api]\nkey_env=\"x\"\n";
        assert_eq!(line_of(text, "api_listen"), Some(1));
        assert_eq!(line_of(text, "broker.max_connections"), Some(5));
        assert_eq!(line_of(text, "api.key_env"), Some(7));
        assert_eq!(line_of(text, "broker.publish_rate"), None);
        assert_eq!(
            line_of("broker.max_connections = 0", "broker.max_connections"),
            Some(1)
        );
    }

    #[test]
    fn every_key_of_the_generated_sections_is_commented() {
        let d = Config::default();
        for (name, table, docs) in [
            (
                "ingest",
                toml::Table::try_from(&d.ingest).unwrap(),
                INGEST_DOCS,
            ),
            (
                "connections",
                toml::Table::try_from(&d.connections).unwrap(),
                CONNECTIONS_DOCS,
            ),
            (
                "broker",
                toml::Table::try_from(&d.broker).unwrap(),
                BROKER_DOCS,
            ),
            (
                "retention",
                toml::Table::try_from(&d.retention).unwrap(),
                RETENTION_DOCS,
            ),
            ("api", toml::Table::try_from(&d.api).unwrap(), API_DOCS),
        ] {
            let documented: Vec<&str> = docs.iter().map(|(key, _)| *key).collect();
            let mut settings: Vec<&str> = table.keys().map(String::as_str).collect();
            let mut sorted = documented.clone();
            sorted.sort_unstable();
            settings.sort_unstable();
            assert_eq!(
                sorted, settings,
                "[{name}]: settings without a comment, or the reverse"
            );
        }
        // Every key line of the whole template has a comment right above it, or belongs to a
        // group of keys under one comment.
        let template = template();
        let lines: Vec<&str> = template.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
                continue;
            }
            let above = lines[..at]
                .iter()
                .rev()
                .find(|l| !l.contains(" = ") || l.starts_with('#'));
            assert!(
                above.is_some_and(|l| l.starts_with('#')),
                "{line} has no comment"
            );
        }
    }

    #[test]
    fn siem_collectors_are_host_and_port() {
        assert_eq!(
            split_host_port("siem.example:6514"),
            Some(("siem.example".into(), 6514))
        );
        assert_eq!(split_host_port("[::1]:6514"), Some(("::1".into(), 6514)));
        for bad in [
            "siem.example",
            ":6514",
            "h:0",
            "h:x",
            "::1:6514",
            "[::1:6514",
            "a/b:1",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
        let config =
            load_toml("[siem]\ncollector = \"127.0.0.1:6514\"\nca_file = \"/ca.pem\"\nbatch = 10")
                .unwrap();
        assert_eq!(config.siem.collector.as_deref(), Some("127.0.0.1:6514"));
        assert_eq!(config.siem.batch, 10);
        assert_eq!(Config::default().siem.collector, None);
    }

    #[test]
    fn the_template_parses_back_to_the_defaults() {
        let mut defaults = Config::default();
        defaults.data_dir = std::path::absolute(&defaults.data_dir).unwrap();
        assert_eq!(load_toml(&template()).unwrap(), defaults);
    }

    #[test]
    fn a_relative_data_dir_is_resolved_once_at_load() {
        let config = Config::load(None, &Overrides::default()).unwrap();
        assert!(
            config.data_dir.is_absolute(),
            "{}",
            config.data_dir.display()
        );
        assert_eq!(
            config.data_dir,
            std::env::current_dir().unwrap().join("fleetd-data")
        );
        let config = load_toml("data_dir = \"/var/lib/fleetd\"").unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/fleetd"));
    }

    #[test]
    fn a_bad_value_is_refused_naming_its_field() {
        let err = load_toml("api_listen = \"not an address\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_listen"), "{err}");
        let err = load_toml("[database]\nmax_connections = \"many\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_connections"), "{err}");
        let err = load_toml("[database]\nmax_connections = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("database.max_connections"), "{err}");
        let err = load_toml("[log]\nformat = \"xml\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("format"), "{err}");
        let err = load_toml("database_url = \"mysql://db/x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("database_url"), "{err}");
        let err = load_toml("shutdown_grace = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("shutdown_grace"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused_so_typos_do_not_pass_silently() {
        let err = load_toml("api_listn = \"127.0.0.1:1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_listn"), "{err}");
        let err = load_toml("[pki]\nservr_names = []")
            .unwrap_err()
            .to_string();
        assert!(err.contains("servr_names"), "{err}");
    }

    #[test]
    fn pki_and_enrollment_values_are_checked() {
        let err = load_toml("[pki]\ndevice_cert_lifetime = \"30s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pki.device_cert_lifetime"), "{err}");
        let err = load_toml("[pki]\nsuperseded_grace = \"0s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pki.superseded_grace"), "{err}");
        let err = load_toml("[pki]\nserver_names = []\nserver_ips = []")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pki.server_names"), "{err}");
        let err = load_toml("[enrollment]\nbroker_url = \"tcp://x:1883\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("enrollment.broker_url"), "{err}");
        let err = load_toml("[enrollment]\ntrusted_proxies = [\"10.0.0.0/33\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("trusted_proxies"), "{err}");
        for (field, bad) in [
            ("max_failed_attempts_per_source", "0"),
            ("failed_attempts_window", "\"0s\""),
        ] {
            let err = load_toml(&format!("[enrollment]\n{field} = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("enrollment.{field}")), "{err}");
        }
        let err = load_toml("[pki]\nserver_ips = [\"localhost\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server_ips"), "{err}");
    }

    #[test]
    fn external_mode_needs_a_url_and_a_client_id() {
        let err = load_toml("[external_broker]\nurl = \"tcp://x:1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("external_broker.url"), "{err}");
        let err = load_toml("[external_broker]\nurl = \"mqtts://mq:8883\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("external_broker.client_id"), "{err}");
        let config =
            load_toml("[external_broker]\nurl = \"mqtts://[::1]:8883\"\nclient_id = \"a\"")
                .unwrap();
        assert_eq!(
            config.external_broker.host_port(),
            Some(("::1".into(), 8883))
        );
        assert_eq!(config.external_broker.client_id.as_deref(), Some("a"));
        let err = load_toml("[external_broker]\nurl = \"mqtts://mq\"\nclient_id = \"a\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("external_broker.url"), "{err}");
        let err = load_toml("[external_broker]\nurl = \"mqtts://mq:x\"\nclient_id = \"a\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("external_broker.url"), "{err}");
        assert_eq!(
            config.broker_url(1),
            "mqtts://[::1]:8883",
            "devices are sent to the external broker"
        );
    }

    #[test]
    fn the_broker_url_is_derived_from_the_server_name_and_broker_port() {
        let config = load_toml(
            "broker_listen = \"0.0.0.0:18883\"\n[pki]\nserver_names = [\"fleet.example\"]",
        )
        .unwrap();
        assert_eq!(config.broker_url(18883), "mqtts://fleet.example:18883");
        let config = load_toml("[pki]\nserver_names = []\nserver_ips = [\"::1\"]").unwrap();
        assert_eq!(config.broker_url(8883), "mqtts://[::1]:8883");
        let config = load_toml("[enrollment]\nbroker_url = \"mqtts://lb:443\"").unwrap();
        assert_eq!(config.broker_url(8883), "mqtts://lb:443");
        let config = load_toml(
            "[enrollment]\nbroker_url = \"mqtts://lb\"\n\
             [external_broker]\nurl = \"mqtts://mq:8883\"\nclient_id = \"a\"",
        )
        .unwrap();
        assert_eq!(
            config.broker_url(1),
            "mqtts://lb",
            "enrollment.broker_url wins over the external broker"
        );
    }

    #[test]
    fn an_empty_string_or_absent_key_means_none() {
        let empty = load_toml(
            "database_url = \"\"\n\
             [pki]\ndir = \"\"\n\
             [enrollment]\nbroker_url = \"\"\n\
             [external_broker]\nurl = \"\"\nclient_id = \"\"\n\
             [database]\napp_password = \"\"\npostgres_bindir = \"\"",
        )
        .unwrap();
        let absent = load_toml("").unwrap();
        assert_eq!(empty, absent);
        assert_eq!(absent.database_url, None);
        assert_eq!(absent.pki.dir, None);
        assert!(absent.uses_dev_pki());
        assert_eq!(absent.pki_dir(), absent.data_dir.join("pki"));
        assert_eq!(absent.enrollment.broker_url, None);
        assert_eq!(absent.external_broker.url, None);
        assert_eq!(absent.external_broker.client_id, None);
        assert_eq!(absent.external_broker.host_port(), None);
        assert_eq!(absent.database.app_password, None);
        assert_eq!(absent.database.postgres_bindir, None);
        let settings = absent.database_settings();
        assert_eq!(settings.url, None);
        assert_eq!(settings.app_password, None);
        assert_eq!(settings.postgres_bindir, None);
    }

    #[test]
    fn set_values_are_parsed_once_at_load() {
        let config = load_toml(
            "database_url = \"postgresql://owner@db:5432/fleet\"\n\
             [pki]\ndir = \"/etc/fleetplane/pki\"\n\
             [database]\napp_password = \"s3cret\"\npostgres_bindir = \"/opt/pg/bin\"",
        )
        .unwrap();
        assert_eq!(
            config.database_url.as_ref().map(DatabaseUrl::expose),
            Some("postgresql://owner@db:5432/fleet")
        );
        assert!(!config.uses_dev_pki());
        assert_eq!(config.pki_dir(), PathBuf::from("/etc/fleetplane/pki"));
        let settings = config.database_settings();
        assert_eq!(
            settings.url.as_ref().map(DatabaseUrl::expose),
            Some("postgresql://owner@db:5432/fleet")
        );
        assert_eq!(settings.app_password.as_deref(), Some("s3cret"));
        assert_eq!(settings.postgres_bindir, Some(PathBuf::from("/opt/pg/bin")));
    }

    #[test]
    fn environment_variables_set_clear_and_are_checked_by_name() {
        // Each case has its own prefix, outside FLEETD_: tests run in parallel in one process.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleetd.toml");
        std::fs::write(
            &path,
            "database_url = \"postgres://file/x\"\n[pki]\ndir = \"/from/file\"",
        )
        .unwrap();
        std::env::set_var("CONFIGTEST_EMPTY_DATABASE_URL", "");
        std::env::set_var("CONFIGTEST_EMPTY_PKI__DIR", "");
        let config =
            Config::load_with_env(Some(&path), &Overrides::default(), "CONFIGTEST_EMPTY_").unwrap();
        assert_eq!(
            config.database_url, None,
            "an empty variable clears the file's value"
        );
        assert_eq!(config.pki.dir, None);

        std::env::set_var("CONFIGTEST_SET_DATABASE_URL", "postgres://env/y");
        std::env::set_var("CONFIGTEST_SET_EXTERNAL_BROKER__URL", "mqtts://mq:8883");
        std::env::set_var("CONFIGTEST_SET_EXTERNAL_BROKER__CLIENT_ID", "i1");
        let config =
            Config::load_with_env(Some(&path), &Overrides::default(), "CONFIGTEST_SET_").unwrap();
        assert_eq!(
            config.database_url.as_ref().map(DatabaseUrl::expose),
            Some("postgres://env/y")
        );
        assert_eq!(
            config.external_broker.host_port(),
            Some(("mq".into(), 8883))
        );

        std::env::set_var("CONFIGTEST_BAD_DATABASE_URL", "mysql://db/x");
        let err = Config::load_with_env(None, &Overrides::default(), "CONFIGTEST_BAD_")
            .unwrap_err()
            .to_string()
            .to_lowercase();
        assert!(err.contains("database_url"), "{err}");
        assert!(err.contains("postgres://"), "{err}");
        std::env::set_var("CONFIGTEST_BADURL_ENROLLMENT__BROKER_URL", "tcp://x:1");
        let err = Config::load_with_env(None, &Overrides::default(), "CONFIGTEST_BADURL_")
            .unwrap_err()
            .to_string()
            .to_lowercase();
        assert!(err.contains("enrollment.broker_url"), "{err}");
    }

    #[test]
    fn an_empty_database_url_flag_means_the_private_cluster() {
        let overrides = Overrides {
            database_url: Some(SecretString::new("")),
            ..Overrides::default()
        };
        let config = Config::load(None, &overrides).unwrap();
        assert_eq!(config.database_url, None);
        let overrides = Overrides {
            database_url: Some(SecretString::new("postgres://flag/z")),
            ..Overrides::default()
        };
        let config = Config::load(None, &overrides).unwrap();
        assert_eq!(
            config.database_url.as_ref().map(DatabaseUrl::expose),
            Some("postgres://flag/z")
        );
    }

    #[test]
    fn mqtts_urls_parse_like_the_agent_parses_them() {
        let url: MqttsUrl = "mqtts://[::1]:8883".parse().unwrap();
        assert_eq!((url.host(), url.port()), ("::1", Some(8883)));
        assert_eq!(url.to_string(), "mqtts://[::1]:8883");
        let url: MqttsUrl = "mqtts://lb".parse().unwrap();
        assert_eq!((url.host(), url.port()), ("lb", None));
        for bad in [
            "mqtt://x:1",
            "mqtts://",
            "mqtts://:1",
            "mqtts://x:0",
            "mqtts://x:99999",
            "mqtts://x:1/path",
            "mqtts://u@x:1",
            "mqtts://[::1",
        ] {
            assert!(bad.parse::<MqttsUrl>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn every_section_of_the_template_is_commented() {
        let template = template();
        let lines: Vec<&str> = template.lines().collect();
        let mut sections = 0;
        for (at, line) in lines.iter().enumerate() {
            let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) else {
                continue;
            };
            sections += 1;
            let comment: String = lines[..at]
                .iter()
                .rev()
                .take_while(|l| l.starts_with('#'))
                .copied()
                .collect::<Vec<_>>()
                .join("\n");
            let env = format!("FLEETD_{}__", name.to_uppercase());
            assert!(
                comment.contains(&format!("[{name}]")),
                "[{name}] has no comment"
            );
            assert!(
                comment.contains(&env),
                "[{name}]'s comment does not name {env}"
            );
        }
        assert_eq!(
            sections, 13,
            "pki, enrollment, ingest, external_broker, log, database, connections, broker, \
             retention, audit, api, backup, siem"
        );
        for key in [
            "database_url",
            "dir",
            "broker_url",
            "url",
            "client_id",
            "app_password",
        ] {
            assert!(
                template.contains(&format!("# {key} = ")),
                "unset {key} is not shown as an example"
            );
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Config::load(
            Some(Path::new("/nonexistent/fleetd.toml")),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/fleetd.toml"));
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleetd.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\napi_listen = \"127.0.0.1:1\"",
        )
        .unwrap();
        let overrides = Overrides {
            data_dir: Some("/from/flag".into()),
            ..Overrides::default()
        };
        let config = Config::load(Some(&path), &overrides).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(config.api_listen, "127.0.0.1:1".parse().unwrap());
    }

    #[test]
    fn the_app_password_is_redacted_in_debug_output() {
        let mut config = Config::default();
        config.database.app_password = Some(SecretString::new("hunter2"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn the_database_password_is_in_no_debug_output() {
        let overrides = Overrides {
            database_url: Some(SecretString::new("postgres://owner:hunter2@db/fleet")),
            ..Overrides::default()
        };
        let config = Config::load(None, &overrides).unwrap();
        for shown in [
            format!("{config:?}"),
            format!("{config:#?}"),
            format!("{overrides:?}"),
            format!("{:?}", config.database_settings()),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        assert!(format!("{config:?}").contains("postgres://owner:<redacted>@db/fleet"));
    }

    #[test]
    fn the_database_url_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let url_file = dir.path().join("database-url");
        std::fs::write(&url_file, "postgres://owner:hunter2@db/fleet\n").unwrap();
        let config = load_toml(&format!(
            "database_url_file = {:?}",
            url_file.display().to_string()
        ))
        .unwrap();
        assert_eq!(
            config.database_url.as_ref().map(DatabaseUrl::expose),
            Some("postgres://owner:hunter2@db/fleet")
        );
        let overrides = Overrides {
            database_url_file: Some(url_file.clone()),
            ..Overrides::default()
        };
        let config = Config::load(None, &overrides).unwrap();
        assert!(config.database_url.is_some());

        let both = format!(
            "database_url = \"postgres://x/y\"\ndatabase_url_file = {:?}",
            url_file.display().to_string()
        );
        let err = load_toml(&both).unwrap_err().to_string();
        assert!(err.contains("database_url_file"), "{err}");

        let missing = dir.path().join("absent");
        let err = load_toml(&format!(
            "database_url_file = {:?}",
            missing.display().to_string()
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("database_url_file") && err.contains("absent"),
            "{err}"
        );

        std::fs::write(&url_file, "mysql://root:hunter2@db/x").unwrap();
        let err = load_toml(&format!(
            "database_url_file = {:?}",
            url_file.display().to_string()
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("database_url_file"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn production_mode_is_off_by_default_and_set_by_file_or_flag() {
        assert!(
            !Config::load(None, &Overrides::default())
                .unwrap()
                .production
        );
        assert!(load_toml("production = true").unwrap().production);
        let overrides = Overrides {
            production: Some(true),
            ..Overrides::default()
        };
        assert!(Config::load(None, &overrides).unwrap().production);
    }
}
