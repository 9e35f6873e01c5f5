//! The tuning configuration (`agent.toml`): intervals, backoff, outbox size, logging.
//!
//! Kept apart from the identity (key, certificates, device id) in the state directory, so
//! that the configuration can be shipped by a package or a config-management tool and the
//! identity never is. Every value has a default; a missing file means all defaults.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use edge_agent::outbox::{FsyncPolicy, OutboxConfig};
use serde::Deserialize;

/// Default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fleet-agent/agent.toml";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: String,
    /// Telemetry sampling.
    pub telemetry: TelemetryConfig,
    /// Patch status reporting.
    pub patch: PatchConfig,
    /// The MQTT connection.
    pub mqtt: MqttConfig,
    /// The on-disk outbox.
    pub outbox: OutboxSection,
    /// Certificate renewal.
    pub renewal: RenewalConfig,
    /// `run --once`.
    pub once: OnceConfig,
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Seconds between samples.
    pub interval_secs: u64,
    /// Each interval is stretched or shrunk by up to this fraction, at random, so that a
    /// fleet that booted together does not report in lockstep.
    pub jitter: f64,
}

/// `[patch]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PatchConfig {
    /// Seconds between full patch reports, even when nothing changed.
    pub interval_secs: u64,
    /// Seconds between checks of the package database's modification time; a change
    /// triggers a report.
    pub poll_secs: u64,
    /// Longest a package-manager command may run.
    pub command_timeout_secs: u64,
}

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// MQTT keep-alive, seconds.
    pub keep_alive_secs: u64,
    /// TCP + TLS + CONNACK timeout, seconds.
    pub connect_timeout_secs: u64,
    /// First reconnect delay, seconds; doubles after every failure.
    pub backoff_initial_secs: u64,
    /// Longest reconnect delay, seconds (each delay is jittered: a random value between
    /// half of it and all of it).
    pub backoff_max_secs: u64,
    /// Batches published and not yet acknowledged by the broker (PUBACK) at once.
    pub max_inflight_batches: usize,
    /// Consecutive connection attempts the broker refuses for the device certificate
    /// (a TLS alert about the certificate, or CONNACK "not authorized") before the agent
    /// concludes it was revoked and stops.
    pub refusals_before_stop: u32,
}

/// `[outbox]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxSection {
    /// Upper bound of the outbox on disk, bytes. When full, the oldest records are dropped
    /// and the drop is reported to the server as an `outbox_overflow` event.
    pub max_bytes: u64,
    /// Segment size, bytes (at most half of `max_bytes`); also the largest record.
    pub segment_bytes: u64,
    /// `always` (fdatasync after every append: nothing acknowledged to the agent is lost
    /// to power loss), `every:N`, `interval:SECS` (up to N-1 records or SECS seconds of
    /// records lost to power loss, never to a crash) or `never` (tmpfs, tests).
    pub fsync: String,
}

/// `[renewal]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RenewalConfig {
    /// Seconds between checks of the certificate's remaining lifetime (and between
    /// retries of a failed renewal, jittered). Renewal starts when less than a third of
    /// the lifetime remains.
    pub check_secs: u64,
    /// Renewal request timeout, seconds.
    pub timeout_secs: u64,
}

/// `[once]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnceConfig {
    /// How long `run --once` waits for the server's ack before giving up, seconds.
    pub timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log_level: "info".to_owned(),
            telemetry: TelemetryConfig::default(),
            patch: PatchConfig::default(),
            mqtt: MqttConfig::default(),
            outbox: OutboxSection::default(),
            renewal: RenewalConfig::default(),
            once: OnceConfig::default(),
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            interval_secs: 60,
            jitter: 0.1,
        }
    }
}

impl Default for PatchConfig {
    fn default() -> Self {
        Self {
            interval_secs: 6 * 3600,
            poll_secs: 60,
            command_timeout_secs: 120,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            keep_alive_secs: 60,
            connect_timeout_secs: 30,
            backoff_initial_secs: 1,
            backoff_max_secs: 300,
            max_inflight_batches: 4,
            refusals_before_stop: 3,
        }
    }
}

impl Default for OutboxSection {
    fn default() -> Self {
        Self {
            max_bytes: 8 * 1024 * 1024,
            segment_bytes: 1024 * 1024,
            fsync: "always".to_owned(),
        }
    }
}

impl Default for RenewalConfig {
    fn default() -> Self {
        Self {
            check_secs: 3600,
            timeout_secs: 60,
        }
    }
}

impl Default for OnceConfig {
    fn default() -> Self {
        Self { timeout_secs: 300 }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Reads `path`; a file that does not exist means all defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: shown,
                    source,
                })
            }
        };
        Self::parse(&text)
            .map_err(|message| ConfigError::Parse {
                path: shown.clone(),
                message,
            })?
            .validated()
            .map_err(|message| ConfigError::Invalid {
                path: shown,
                message,
            })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|err| err.message().to_owned())
    }

    /// Checks ranges; returns the configuration unchanged when it is usable.
    pub fn validated(self) -> Result<Self, String> {
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            return Err(format!(
                "log_level {:?} is not one of error, warn, info, debug, trace",
                self.log_level
            ));
        }
        if self.telemetry.interval_secs == 0
            || self.patch.interval_secs == 0
            || self.patch.poll_secs == 0
        {
            return Err("intervals must be at least 1 second".to_owned());
        }
        if !(0.0..=0.5).contains(&self.telemetry.jitter) {
            return Err("telemetry.jitter must be between 0.0 and 0.5".to_owned());
        }
        if self.mqtt.keep_alive_secs < 5 || self.mqtt.backoff_initial_secs == 0 {
            return Err(
                "mqtt.keep_alive_secs must be at least 5 and backoff_initial_secs at least 1"
                    .to_owned(),
            );
        }
        if self.mqtt.backoff_max_secs < self.mqtt.backoff_initial_secs {
            return Err("mqtt.backoff_max_secs must be at least backoff_initial_secs".to_owned());
        }
        if self.mqtt.max_inflight_batches == 0 || self.mqtt.refusals_before_stop == 0 {
            return Err(
                "mqtt.max_inflight_batches and refusals_before_stop must be at least 1".to_owned(),
            );
        }
        if self.renewal.check_secs == 0 || self.once.timeout_secs == 0 {
            return Err("renewal.check_secs and once.timeout_secs must be at least 1".to_owned());
        }
        self.outbox_config()?;
        Ok(self)
    }

    /// The outbox settings, checked.
    pub fn outbox_config(&self) -> Result<OutboxConfig, String> {
        let config = OutboxConfig {
            max_bytes: self.outbox.max_bytes,
            segment_bytes: self.outbox.segment_bytes,
            fsync: parse_fsync(&self.outbox.fsync)?,
        };
        if config.segment_bytes < 64 * 1024
            || config.segment_bytes.saturating_mul(2) > config.max_bytes
        {
            return Err(
                "outbox.segment_bytes must be at least 65536 and at most half of outbox.max_bytes"
                    .to_owned(),
            );
        }
        Ok(config)
    }

    /// The commented template `fleet-agent configfile` prints: every key with its default.
    pub fn template() -> String {
        let d = Self::default();
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "# fleet-agent configuration (TOML). Every key is optional; the values shown are the"
        );
        let _ = writeln!(w, "# defaults. The device identity (key, certificates, device id) is not here: it lives in");
        let _ = writeln!(
            w,
            "# the state directory (--state-dir, default /var/lib/fleet-agent)."
        );
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "# error, warn, info, debug or trace (FLEET_AGENT_LOG overrides it)."
        );
        let _ = writeln!(w, "log_level = {:?}", d.log_level);
        let _ = writeln!(w);
        let _ = writeln!(w, "[telemetry]");
        let _ = writeln!(
            w,
            "# Seconds between metric samples (CPU, memory, disks, temperatures, load, network)."
        );
        let _ = writeln!(w, "interval_secs = {}", d.telemetry.interval_secs);
        let _ = writeln!(
            w,
            "# Random stretch of each interval, as a fraction (0.0 to 0.5)."
        );
        let _ = writeln!(w, "jitter = {:?}", d.telemetry.jitter);
        let _ = writeln!(w);
        let _ = writeln!(w, "[patch]");
        let _ = writeln!(
            w,
            "# Seconds between full patch-status reports (also sent at start)."
        );
        let _ = writeln!(w, "interval_secs = {}", d.patch.interval_secs);
        let _ = writeln!(
            w,
            "# Seconds between checks of the package database; a change triggers a report."
        );
        let _ = writeln!(w, "poll_secs = {}", d.patch.poll_secs);
        let _ = writeln!(
            w,
            "# Longest a package-manager command may run before it is killed."
        );
        let _ = writeln!(w, "command_timeout_secs = {}", d.patch.command_timeout_secs);
        let _ = writeln!(w);
        let _ = writeln!(w, "[mqtt]");
        let _ = writeln!(w, "keep_alive_secs = {}", d.mqtt.keep_alive_secs);
        let _ = writeln!(w, "# TCP + TLS + CONNACK timeout.");
        let _ = writeln!(w, "connect_timeout_secs = {}", d.mqtt.connect_timeout_secs);
        let _ = writeln!(
            w,
            "# Reconnect delay: starts here, doubles per failure, jittered, capped below."
        );
        let _ = writeln!(w, "backoff_initial_secs = {}", d.mqtt.backoff_initial_secs);
        let _ = writeln!(w, "backoff_max_secs = {}", d.mqtt.backoff_max_secs);
        let _ = writeln!(
            w,
            "# Record batches in flight (published, not yet PUBACKed) at once."
        );
        let _ = writeln!(w, "max_inflight_batches = {}", d.mqtt.max_inflight_batches);
        let _ = writeln!(
            w,
            "# Consecutive certificate refusals by the broker before the agent stops as revoked."
        );
        let _ = writeln!(w, "refusals_before_stop = {}", d.mqtt.refusals_before_stop);
        let _ = writeln!(w);
        let _ = writeln!(w, "[outbox]");
        let _ = writeln!(
            w,
            "# Bound of the on-disk outbox; when full the oldest records are dropped and reported."
        );
        let _ = writeln!(w, "max_bytes = {}", d.outbox.max_bytes);
        let _ = writeln!(
            w,
            "# Segment size (at most half of max_bytes); also the largest single record."
        );
        let _ = writeln!(w, "segment_bytes = {}", d.outbox.segment_bytes);
        let _ = writeln!(
            w,
            "# always | every:N | interval:SECS | never. \"always\" loses nothing to power loss."
        );
        let _ = writeln!(w, "fsync = {:?}", d.outbox.fsync);
        let _ = writeln!(w);
        let _ = writeln!(w, "[renewal]");
        let _ = writeln!(
            w,
            "# Seconds between certificate lifetime checks; renewal starts when less than a third"
        );
        let _ = writeln!(
            w,
            "# of the lifetime remains, and a failed renewal is retried at this pace."
        );
        let _ = writeln!(w, "check_secs = {}", d.renewal.check_secs);
        let _ = writeln!(w, "timeout_secs = {}", d.renewal.timeout_secs);
        let _ = writeln!(w);
        let _ = writeln!(w, "[once]");
        let _ = writeln!(w, "# How long `run --once` waits for the server's ack.");
        let _ = writeln!(w, "timeout_secs = {}", d.once.timeout_secs);
        out
    }

    /// Telemetry interval with jitter applied.
    pub fn jittered_telemetry_interval(&self) -> Duration {
        let base = self.telemetry.interval_secs as f64;
        let spread = (fastrand::f64() * 2.0 - 1.0) * self.telemetry.jitter;
        Duration::from_secs_f64((base * (1.0 + spread)).max(1.0))
    }
}

/// Parses the `fsync` setting.
pub fn parse_fsync(text: &str) -> Result<FsyncPolicy, String> {
    let bad = || format!("outbox.fsync {text:?} is not always, every:N, interval:SECS or never");
    match text.split_once(':') {
        None if text == "always" => Ok(FsyncPolicy::Always),
        None if text == "never" => Ok(FsyncPolicy::Never),
        Some(("every", n)) => n.parse().map(FsyncPolicy::EveryN).map_err(|_| bad()),
        Some(("interval", secs)) => secs
            .parse()
            .map(|secs| FsyncPolicy::Interval(Duration::from_secs(secs)))
            .map_err(|_| bad()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_back_to_the_defaults() {
        let parsed = Config::parse(&Config::template()).expect("template parses");
        assert_eq!(parsed, Config::default());
        assert!(parsed.validated().is_ok());
    }

    #[test]
    fn packaged_config_is_the_template() {
        let packaged = include_str!("../packaging/agent.toml");
        assert_eq!(
            packaged,
            Config::template(),
            "regenerate with: fleet-agent configfile > edge-agent/packaging/agent.toml"
        );
    }

    #[test]
    fn template_mentions_every_section() {
        let template = Config::template();
        for section in [
            "[telemetry]",
            "[patch]",
            "[mqtt]",
            "[outbox]",
            "[renewal]",
            "[once]",
        ] {
            assert!(template.contains(section), "{section} missing");
        }
    }

    #[test]
    fn missing_file_means_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::load(&dir.path().join("absent.toml")).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config = Config::parse("[telemetry]\ninterval_secs = 5\n").unwrap();
        assert_eq!(config.telemetry.interval_secs, 5);
        assert_eq!(config.patch, PatchConfig::default());
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let err = Config::parse("[telemetry]\nintervall = 5\n").unwrap_err();
        assert!(err.contains("intervall"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for text in [
            "log_level = \"loud\"",
            "[telemetry]\njitter = 0.9",
            "[telemetry]\ninterval_secs = 0",
            "[mqtt]\nbackoff_max_secs = 0",
            "[outbox]\nsegment_bytes = 1000",
            "[outbox]\nfsync = \"sometimes\"",
        ] {
            let config = Config::parse(text).unwrap();
            assert!(config.validated().is_err(), "{text} accepted");
        }
    }

    #[test]
    fn bad_file_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "this is = not [toml").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("agent.toml"), "{err}");
    }

    #[test]
    fn fsync_policies_parse() {
        assert_eq!(parse_fsync("always").unwrap(), FsyncPolicy::Always);
        assert_eq!(parse_fsync("never").unwrap(), FsyncPolicy::Never);
        assert_eq!(parse_fsync("every:10").unwrap(), FsyncPolicy::EveryN(10));
        assert_eq!(
            parse_fsync("interval:5").unwrap(),
            FsyncPolicy::Interval(Duration::from_secs(5))
        );
        assert!(parse_fsync("every:x").is_err());
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let config = Config::default();
        for _ in 0..100 {
            let secs = config.jittered_telemetry_interval().as_secs_f64();
            assert!((54.0..=66.0).contains(&secs), "{secs}");
        }
    }
}
