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
    /// Limits on the listeners' connections, per source address and per device.
    pub connections: ConnectionLimits,
    /// How long in-flight requests get to finish at shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
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
}

impl Default for EnrollmentConfig {
    fn default() -> Self {
        let limits = api::EnrollLimits::default();
        Self {
            broker_url: None,
            trusted_proxies: Vec::new(),
            max_failed_attempts_per_source: limits.failures_per_window,
            failed_attempts_window: limits.failure_window,
        }
    }
}

/// What one source address or one device may hold on the listeners, so that no one client
/// locks the others out (the global caps alone let one address take them all).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// TLS handshakes in progress at once from one IP address on the broker listener.
    pub broker_max_handshakes_per_address: usize,
    /// Connections of one device between its TLS handshake and CONNACK.
    pub broker_max_pending_connects_per_device: usize,
    /// Largest MQTT CONNECT, in bytes.
    pub broker_max_connect_size: usize,
    /// TLS handshakes in progress at once from one IP address on the API listener.
    pub api_max_handshakes_per_address: usize,
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
            broker_max_handshakes_per_address: broker::DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
            broker_max_pending_connects_per_device: broker::DEFAULT_MAX_PENDING_CONNECTS_PER_DEVICE,
            broker_max_connect_size: broker::DEFAULT_MAX_CONNECT_SIZE,
            api_max_handshakes_per_address: api.max_handshakes_per_address,
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
                self.broker_max_handshakes_per_address,
                "connections.broker_max_handshakes_per_address",
            ),
            (
                self.broker_max_pending_connects_per_device,
                "connections.broker_max_pending_connects_per_device",
            ),
            (
                self.api_max_handshakes_per_address,
                "connections.api_max_handshakes_per_address",
            ),
            (self.api_max_connections, "connections.api_max_connections"),
        ];
        if let Some((_, field)) = at_least_one.iter().find(|(value, _)| *value == 0) {
            return Some((field, "must be at least 1"));
        }
        if !(64..=broker::DEFAULT_MAX_PACKET_SIZE).contains(&self.broker_max_connect_size) {
            return Some((
                "connections.broker_max_connect_size",
                "must be between 64 bytes and the broker's packet size limit",
            ));
        }
        if self.api_header_read_timeout.is_zero() {
            return Some((
                "connections.api_header_read_timeout",
                "must be longer than zero",
            ));
        }
        if self.api_idle_timeout.is_zero() {
            return Some(("connections.api_idle_timeout", "must be longer than zero"));
        }
        None
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
}

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
            shutdown_grace: Duration::from_secs(10),
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
    #[error("invalid configuration: {0}")]
    Invalid(String),
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
        let mut config: Config = figment
            .merge(Env::prefixed(env_prefix).ignore(&["CONFIG"]).split("__"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
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
        if let Some((field, reason)) = self.connections.invalid_field() {
            return reject(field, reason);
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
            return Err(ConfigError::Invalid(format!("ingest: {e}")));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return reject(
                "log.level",
                "is not a tracing filter such as `info` or `info,store=debug`",
            );
        }
        Ok(())
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
# --broker-listen, --production) override both.
# Durations are written like "10s", "5m", "90d" or "1h 30m".

# --- Top level: storage, database, listeners, shutdown. -------------------------------------
# Environment: FLEETD_DATA_DIR, FLEETD_DATABASE_URL, FLEETD_DATABASE_URL_FILE,
# FLEETD_PRODUCTION, FLEETD_API_LISTEN, FLEETD_BROKER_LISTEN, FLEETD_METRICS_LISTEN,
# FLEETD_SHUTDOWN_GRACE.

# Production mode: refuse to start with a generated (development) PKI (pki.dir unset), with the
# root CA key (root-ca.key) in pki.dir on this host, or with listeners beyond loopback without a
# configured PKI. Off by default so that the quickstart runs on the embedded defaults; the
# start-up log says which mode fleetd runs in.
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
# Environment: FLEETD_ENROLLMENT__BROKER_URL, FLEETD_ENROLLMENT__TRUSTED_PROXIES,
# FLEETD_ENROLLMENT__MAX_FAILED_ATTEMPTS_PER_SOURCE, FLEETD_ENROLLMENT__FAILED_ATTEMPTS_WINDOW.
[enrollment]
# Broker URL (mqtts://host[:port]) given to enrolled devices. Default (unset):
# external_broker.url when set, else mqtts://<first server name>:<broker_listen port>.
# broker_url = "mqtts://fleet.example:8883"
# Proxies (CIDRs) whose X-Forwarded-For header is believed for the client address.
trusted_proxies = []
# Refused enrollments (bad token, CSR or request) one client address may make per window;
# past it that address alone is answered 429 with Retry-After until the window ends.
max_failed_attempts_per_source = {max_failed_attempts_per_source}
failed_attempts_window = "{failed_attempts_window}"

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
# FLEETD_DATABASE__APP_PASSWORD, FLEETD_DATABASE__POSTGRES_BINDIR.
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

# --- [connections]: what one address or one device may hold on the listeners. ----------------
# Above a cap the new connection is closed at once and counted; refusals are logged at most
# every 10 s per kind. fleetd raises its soft descriptor limit to the hard one at start and
# lowers the broker's and the API's connection caps to fit it if needed (with a warning), so
# neither listener can take the descriptors of the other. Environment:
# FLEETD_CONNECTIONS__<KEY>, e.g. FLEETD_CONNECTIONS__API_IDLE_TIMEOUT=2m.
[connections]
# TLS handshakes in progress at once from one IP address, broker listener.
broker_max_handshakes_per_address = {broker_per_address}
# Connections of one device between its TLS handshake and CONNACK (its live session does
# not count: a new CONNECT still replaces it).
broker_max_pending_connects_per_device = {broker_pending}
# Largest MQTT CONNECT, in bytes.
broker_max_connect_size = {broker_connect_size}
# TLS handshakes in progress at once from one IP address, API listener.
api_max_handshakes_per_address = {api_per_address}
# Connections at once on the API listener.
api_max_connections = {api_connections}
# Time an API client has to send a request's headers (after the handshake, and between
# keep-alive requests); a slowloris client is closed then.
api_header_read_timeout = "{api_header_read_timeout}"
# An API connection on which no byte moved either way for this long is closed.
api_idle_timeout = "{api_idle_timeout}"
"#,
        data_dir = d.data_dir.display().to_string(),
        production = d.production,
        api_listen = d.api_listen,
        broker_listen = d.broker_listen,
        metrics_listen = d.metrics_listen,
        ingest = toml::to_string(&d.ingest).expect("ingest defaults serialise"),
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
        shutdown_grace = humantime::format_duration(d.shutdown_grace),
        share_group = d.external_broker.share_group,
        log_format = match d.log.format {
            LogFormat::Plain => "plain",
            LogFormat::Json => "json",
        },
        log_level = d.log.level,
        max_connections = d.database.max_connections,
        connect_timeout = humantime::format_duration(d.database.connect_timeout),
        broker_per_address = d.connections.broker_max_handshakes_per_address,
        broker_pending = d.connections.broker_max_pending_connects_per_device,
        broker_connect_size = d.connections.broker_max_connect_size,
        api_per_address = d.connections.api_max_handshakes_per_address,
        api_connections = d.connections.api_max_connections,
        api_header_read_timeout = humantime::format_duration(d.connections.api_header_read_timeout),
        api_idle_timeout = humantime::format_duration(d.connections.api_idle_timeout),
    )
}

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
                "[connections]\nbroker_max_handshakes_per_address = 0",
                "connections.broker_max_handshakes_per_address",
            ),
            (
                "[connections]\nbroker_max_pending_connects_per_device = 0",
                "connections.broker_max_pending_connects_per_device",
            ),
            (
                "[connections]\nbroker_max_connect_size = 10",
                "connections.broker_max_connect_size",
            ),
            (
                "[connections]\napi_max_handshakes_per_address = 0",
                "connections.api_max_handshakes_per_address",
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
            let err = load_toml(text).unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        let limits = load_toml("[connections]\napi_idle_timeout = \"2m\"")
            .unwrap()
            .connections;
        assert_eq!(limits.api_idle_timeout, Duration::from_secs(120));
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
            sections, 7,
            "pki, enrollment, ingest, external_broker, log, database, connections"
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
