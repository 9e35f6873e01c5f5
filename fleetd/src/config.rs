//! fleetd's configuration: built-in defaults, then a TOML file, then `FLEETD_*` environment
//! variables, then command-line flags. Every field has a default that works on a laptop.
//!
//! Environment names are the field path in upper case with `__` between sections:
//! `FLEETD_API_LISTEN`, `FLEETD_DATABASE_URL`, `FLEETD_DATABASE__MAX_CONNECTIONS`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Everything fleetd can be told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where fleetd keeps what it creates: the private PostgreSQL cluster, the dev PKI. A
    /// relative path (the default, `fleetd-data`) is resolved once, at load, against the
    /// directory fleetd starts in.
    pub data_dir: PathBuf,
    /// PostgreSQL URL of the owner role. Empty: a private cluster in `data_dir`.
    pub database_url: String,
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
    /// How long in-flight requests get to finish at shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// Where the fleet PKI is and what the listeners' certificates name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PkiConfig {
    /// Directory of the root and issuing CA (`fleetctl pki init` makes one). Empty:
    /// `<data_dir>/pki`, created as a development PKI on first start.
    pub dir: PathBuf,
    /// DNS names in the API and broker server certificates.
    pub server_names: Vec<String>,
    /// IP addresses in the API and broker server certificates.
    pub server_ips: Vec<IpAddr>,
    /// Lifetime of device certificates issued at enrollment.
    #[serde(with = "humantime_serde")]
    pub device_cert_lifetime: Duration,
}

/// Ingest-only mode: device messages come from an external MQTT broker (Mosquitto, EMQX, ...)
/// through an MQTT v5 shared subscription, so any number of fleetd instances split the load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalBrokerSettings {
    /// `mqtts://host:port` of the broker. Empty: the embedded broker on `broker_listen`.
    pub url: String,
    /// MQTT client id of this instance: unique per instance and stable across restarts (it
    /// names the persistent session the broker redelivers from).
    pub client_id: String,
    /// Shared-subscription group; instances in one group split the messages.
    pub share_group: String,
}

impl Default for ExternalBrokerSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            client_id: String::new(),
            share_group: "fleet-ingest".into(),
        }
    }
}

impl ExternalBrokerSettings {
    /// Host and port of `url`, when one is set.
    pub fn host_port(&self) -> Option<(String, u16)> {
        let rest = self.url.strip_prefix("mqtts://")?;
        let (host, port) = rest.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Some((host.to_owned(), port.parse().ok()?))
    }
}

/// Device onboarding settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrollmentConfig {
    /// The broker URL enrolled devices are told to use. Empty:
    /// `mqtts://<first server name>:<broker_listen port>`.
    pub broker_url: String,
    /// Proxies whose `X-Forwarded-For` is believed for the client address (CIDRs).
    pub trusted_proxies: Vec<ipnet::IpNet>,
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
    /// Password of the `fleet_app` role, for servers that ask for one. Empty: none.
    pub app_password: SecretString,
    /// Directory of the PostgreSQL server binaries for the private cluster. Empty: found
    /// with `pg_config --bindir` or under /usr/lib/postgresql.
    pub postgres_bindir: PathBuf,
}

/// A string that never appears in logs or `Debug` output.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
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

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("fleetd-data"),
            database_url: String::new(),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            broker_listen: SocketAddr::from(([127, 0, 0, 1], 8883)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            ingest: ingest::IngestConfig::default(),
            external_broker: ExternalBrokerSettings::default(),
            pki: PkiConfig::default(),
            enrollment: EnrollmentConfig::default(),
            log: LogConfig::default(),
            database: DatabaseConfig::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for PkiConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            server_names: vec!["localhost".into()],
            server_ips: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ],
            device_cert_lifetime: certs::DEFAULT_DEVICE_CERT_LIFETIME,
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
            app_password: SecretString::default(),
            postgres_bindir: PathBuf::new(),
        }
    }
}

/// Values given on the command line; they override everything else.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--database-url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// `--api-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_listen: Option<String>,
    /// `--broker-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_listen: Option<String>,
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
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::MissingFile(file.to_path_buf()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let mut config: Config = figment
            .merge(Env::prefixed("FLEETD_").ignore(&["CONFIG"]).split("__"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        config.validate()?;
        config.resolve_paths()?;
        Ok(config)
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
        let scheme = self
            .database_url
            .split_once("://")
            .map(|(scheme, _)| scheme);
        if !self.database_url.is_empty() && !matches!(scheme, Some("postgres" | "postgresql")) {
            return reject(
                "database_url",
                "must be a postgres:// or postgresql:// URL, or empty for the private cluster",
            );
        }
        if self.database.max_connections == 0 {
            return reject("database.max_connections", "must be at least 1");
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
        if !self.enrollment.broker_url.is_empty()
            && !self.enrollment.broker_url.starts_with("mqtts://")
        {
            return reject(
                "enrollment.broker_url",
                "must be an mqtts:// URL, or empty to derive it",
            );
        }
        if !self.external_broker.url.is_empty() {
            if self.external_broker.host_port().is_none() {
                return reject(
                    "external_broker.url",
                    "must be mqtts://host:port, or empty for the embedded broker",
                );
            }
            if self.external_broker.client_id.is_empty() {
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
        if self.pki.dir.as_os_str().is_empty() {
            self.data_dir.join("pki")
        } else {
            self.pki.dir.clone()
        }
    }

    /// Whether the PKI is fleetd's own development PKI (created on demand) rather than one an
    /// operator set up.
    pub fn uses_dev_pki(&self) -> bool {
        self.pki.dir.as_os_str().is_empty()
    }

    /// The broker URL devices are told at enrollment, given the port the broker listener
    /// actually bound (it differs from `broker_listen` when that asks for port 0).
    pub fn broker_url(&self, bound_port: u16) -> String {
        if !self.enrollment.broker_url.is_empty() {
            return self.enrollment.broker_url.clone();
        }
        if !self.external_broker.url.is_empty() {
            return self.external_broker.url.clone();
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
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        store::DatabaseSettings {
            url: non_empty(&self.database_url),
            data_dir: self.data_dir.clone(),
            app_password: non_empty(self.database.app_password.expose()),
            postgres_bindir: (!self.database.postgres_bindir.as_os_str().is_empty())
                .then(|| self.database.postgres_bindir.clone()),
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
pub fn template() -> String {
    let d = Config::default();
    format!(
        r#"# fleetd configuration. Every value shown is the default; delete what you do not change.
# Environment variables override this file: FLEETD_<FIELD>, with __ between sections
# (FLEETD_API_LISTEN, FLEETD_DATABASE__MAX_CONNECTIONS). Command-line flags override both.

# Where fleetd keeps what it creates: the private PostgreSQL cluster, the development PKI.
# A relative path is resolved against the directory fleetd starts in (fleetctl resolves its
# --data-dir the same way), e.g. /var/lib/fleetd for a system service.
data_dir = {data_dir:?}

# PostgreSQL URL of the owner role (migrations run as it; it must be superuser or BYPASSRLS).
# fleetd itself works as the role fleet_app, created by the migrations.
# Empty: fleetd creates and supervises a private cluster in data_dir.
database_url = {database_url:?}

# Address of the HTTPS API listener: /v1/enroll, /healthz, /readyz.
api_listen = "{api_listen}"

# Address of the devices' MQTT listener (mutual TLS).
broker_listen = "{broker_listen}"

# Address of the plain-HTTP Prometheus listener (/metrics). Keep it on an internal network.
metrics_listen = "{metrics_listen}"

# How long in-flight requests get to finish at shutdown.
shutdown_grace = "{shutdown_grace}"

[pki]
# Directory of the fleet root and issuing CA (made by `fleetctl pki init`).
# Empty: <data_dir>/pki, created as a development PKI on first start.
dir = {pki_dir:?}
# Names and addresses in the server certificates fleetd issues for its listeners at start.
server_names = {server_names:?}
server_ips = {server_ips:?}
# Lifetime of device certificates; agents renew well before expiry.
device_cert_lifetime = "{device_cert_lifetime}"

[enrollment]
# Broker URL given to enrolled devices. Empty: mqtts://<first server name>:<broker_listen port>.
broker_url = ""
# Proxies (CIDRs) whose X-Forwarded-For header is believed for the client address.
trusted_proxies = []

# How device records are batched into PostgreSQL: records per batch and the time window,
# writer tasks, queue and memory bounds (while the database is down, ingest stops taking
# messages once these fill and acknowledges nothing), directory cache, retry backoff.
[ingest]
{ingest}
[external_broker]
# Ingest-only mode: consume device messages from this broker (mqtts://host:port) through an
# MQTT v5 shared subscription instead of running the embedded broker; start any number of
# fleetd instances with the same share_group. fleetd authenticates as "fleetd-ingest" with a
# client certificate it issues itself from the PKI. Set up the broker as ingest/README.md says.
url = ""
# Unique and stable per instance: it names the broker session that survives restarts.
client_id = ""
share_group = "fleet-ingest"

[log]
# "plain" for people, "json" for log collectors.
format = "{log_format}"
# A tracing filter such as "info" or "info,store=debug". RUST_LOG wins when set.
level = {log_level:?}

[database]
# Connections in fleetd's application pool.
max_connections = {max_connections}
# How long to wait for a database connection.
connect_timeout = "{connect_timeout}"
# Password of the fleet_app role, if the server asks for one.
app_password = ""
# Directory of initdb and postgres for the private cluster. Empty: found automatically.
postgres_bindir = {postgres_bindir:?}
"#,
        data_dir = d.data_dir.display().to_string(),
        database_url = d.database_url,
        api_listen = d.api_listen,
        broker_listen = d.broker_listen,
        metrics_listen = d.metrics_listen,
        ingest = toml::to_string(&d.ingest).expect("ingest defaults serialise"),
        pki_dir = d.pki.dir.display().to_string(),
        server_names = d.pki.server_names,
        server_ips = d
            .pki
            .server_ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        device_cert_lifetime = humantime::format_duration(d.pki.device_cert_lifetime),
        shutdown_grace = humantime::format_duration(d.shutdown_grace),
        log_format = match d.log.format {
            LogFormat::Plain => "plain",
            LogFormat::Json => "json",
        },
        log_level = d.log.level,
        max_connections = d.database.max_connections,
        connect_timeout = humantime::format_duration(d.database.connect_timeout),
        postgres_bindir = d.database.postgres_bindir.display().to_string(),
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
        config.database.app_password = SecretString("hunter2".into());
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
