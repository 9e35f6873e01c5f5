//! The tuning configuration (`agent.toml`): intervals, backoff, outbox size, logging.
//!
//! Kept apart from the identity (key, certificates, device id) in the state directory, so
//! that the configuration can be shipped by a package or a config-management tool and the
//! identity never is. Every value has a default; a missing file means all defaults.
//!
//! Durations are strings such as `"90s"`, `"6h"`, `"1h 30m"` ([`parse_duration`]), as in fleetd. The keys of earlier
//! releases, `interval_secs = 60` and the like, are still read: each is an alias of the
//! new key, and a bare integer is read as seconds.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::outbox::{FsyncPolicy, OutboxConfig};
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
    /// Time between samples.
    #[serde(alias = "interval_secs", deserialize_with = "duration")]
    pub interval: Duration,
    /// Each interval is stretched or shrunk by up to this fraction, at random, so that a
    /// fleet that booted together does not report in lockstep.
    pub jitter: f64,
}

/// `[patch]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PatchConfig {
    /// Time between full patch reports, even when nothing changed.
    #[serde(alias = "interval_secs", deserialize_with = "duration")]
    pub interval: Duration,
    /// Time between checks of the package database's modification time; a change
    /// triggers a report.
    #[serde(alias = "poll_secs", deserialize_with = "duration")]
    pub poll: Duration,
    /// Longest a package-manager command may run.
    #[serde(alias = "command_timeout_secs", deserialize_with = "duration")]
    pub command_timeout: Duration,
}

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// MQTT keep-alive.
    #[serde(alias = "keep_alive_secs", deserialize_with = "duration")]
    pub keep_alive: Duration,
    /// TCP + TLS + CONNACK timeout (whole seconds: a fraction is rounded up).
    #[serde(alias = "connect_timeout_secs", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles after every failure.
    #[serde(alias = "backoff_initial_secs", deserialize_with = "duration")]
    pub backoff_initial: Duration,
    /// Longest reconnect delay (each delay is jittered: a random value between half of it
    /// and all of it).
    #[serde(alias = "backoff_max_secs", deserialize_with = "duration")]
    pub backoff_max: Duration,
    /// Batches published and not yet acknowledged by the broker (PUBACK) at once.
    pub max_inflight_batches: usize,
    /// Sequence numbers published and not yet covered by the server's ack watermark at once;
    /// publishing waits for acks beyond this.
    pub max_unacked_records: u64,
    /// How long published records may stay without an ack while connected before the agent
    /// publishes them again (from the last ack); doubles after each resend that brought no
    /// ack, up to `resend_max`, and starts over once an ack moves.
    #[serde(deserialize_with = "duration")]
    pub resend_after: Duration,
    /// Longest wait between resends.
    #[serde(deserialize_with = "duration")]
    pub resend_max: Duration,
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
    /// Written `always` (fdatasync after every append: nothing acknowledged to the agent is
    /// lost to power loss), `every:N`, `interval:DURATION` (up to N-1 records or DURATION of
    /// records lost to power loss, never to a crash; a bare number is seconds) or `never`
    /// (tmpfs, tests). Parsed at load.
    #[serde(deserialize_with = "fsync_policy")]
    pub fsync: FsyncPolicy,
}

/// `[renewal]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RenewalConfig {
    /// Time between checks of the certificate's remaining lifetime (and between retries of
    /// a failed renewal, jittered). Renewal starts when less than a third of the lifetime
    /// remains.
    #[serde(alias = "check_secs", deserialize_with = "duration")]
    pub check: Duration,
    /// Renewal request timeout.
    #[serde(alias = "timeout_secs", deserialize_with = "duration")]
    pub timeout: Duration,
}

/// `[once]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnceConfig {
    /// How long `run --once` waits for the server's ack before giving up.
    #[serde(alias = "timeout_secs", deserialize_with = "duration")]
    pub timeout: Duration,
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
            interval: Duration::from_secs(60),
            jitter: 0.1,
        }
    }
}

impl Default for PatchConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(6 * 3600),
            poll: Duration::from_secs(60),
            command_timeout: Duration::from_secs(120),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_inflight_batches: 4,
            max_unacked_records: 4096,
            resend_after: Duration::from_secs(30),
            resend_max: Duration::from_secs(300),
            refusals_before_stop: 3,
        }
    }
}

impl Default for OutboxSection {
    fn default() -> Self {
        Self {
            max_bytes: 8 * 1024 * 1024,
            segment_bytes: 1024 * 1024,
            fsync: FsyncPolicy::Always,
        }
    }
}

impl Default for RenewalConfig {
    fn default() -> Self {
        Self {
            check: Duration::from_secs(3600),
            timeout: Duration::from_secs(60),
        }
    }
}

impl Default for OnceConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
        }
    }
}

/// A duration: a string such as `"90s"` or `"6h"` ([`parse_duration`]), or a bare integer of seconds (how the
/// `*_secs` keys of earlier releases were written).
fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"90s\" or \"6h\", or whole seconds")
        }
        fn visit_u64<E: serde::de::Error>(self, secs: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(secs))
        }
        fn visit_i64<E: serde::de::Error>(self, secs: i64) -> Result<Duration, E> {
            u64::try_from(secs)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("a duration cannot be negative ({secs})")))
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
            parse_duration(text)
                .map_err(|err| E::custom(format!("invalid duration {text:?}: {err}")))
        }
    }
    deserializer.deserialize_any(Visitor)
}

/// Parses `"90s"`, `"6h"`, `"1h 30m"`, `"250ms"`: whole numbers, each followed by a unit (`ms`,
/// `s`, `m`, `h`, `d`), added up. Written here rather than taken from humantime, which fleetd
/// uses: the agent's static binary has a 2 MiB budget and humantime cost 64 KiB of it on
/// aarch64-musl; these five units are all agent.toml needs (fleetd's spelling of them).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{:?} is too large", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            "" => return Err(format!("{number} has no unit (ms, s, m, h or d)")),
            other => return Err(format!("unknown unit {other:?} (ms, s, m, h or d)")),
        };
        let part = u32::try_from(number)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(|| format!("{number} is too large"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| "too large".to_owned())?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(total)
}

/// The `fsync` setting, parsed at load.
fn fsync_policy<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<FsyncPolicy, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_fsync(&text).map_err(serde::de::Error::custom)
}

/// The dotted name (`telemetry.interval`) of the key on the line at byte `at` of `text`.
fn key_at(text: &str, at: usize) -> Option<String> {
    let line_start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..)?.lines().next()?;
    let key = line.split_once('=')?.0.trim();
    let bare = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !bare(key) {
        return None;
    }
    let section = text[..line_start].lines().rev().find_map(|line| {
        let name = line.trim().strip_prefix('[')?.strip_suffix(']')?.trim();
        bare(name).then_some(name)
    });
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_owned(),
    })
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
    /// A value of the wrong type or out of its syntax is refused naming its key
    /// (`telemetry.interval: invalid duration "often": ...`).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|err| {
            match err.span().and_then(|span| key_at(text, span.start)) {
                Some(key) => format!("{key}: {}", err.message()),
                None => err.message().to_owned(),
            }
        })
    }

    /// Checks ranges; returns the configuration unchanged when it is usable.
    pub fn validated(self) -> Result<Self, String> {
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            return Err(format!(
                "log_level {:?} is not one of error, warn, info, debug, trace",
                self.log_level
            ));
        }
        let second = Duration::from_secs(1);
        if self.telemetry.interval < second
            || self.patch.interval < second
            || self.patch.poll < second
        {
            return Err(
                "telemetry.interval, patch.interval and patch.poll must be at least 1s".to_owned(),
            );
        }
        if !(0.0..=0.5).contains(&self.telemetry.jitter) {
            return Err("telemetry.jitter must be between 0.0 and 0.5".to_owned());
        }
        if self.mqtt.keep_alive < Duration::from_secs(5) || self.mqtt.backoff_initial < second {
            return Err(
                "mqtt.keep_alive must be at least 5s and mqtt.backoff_initial at least 1s"
                    .to_owned(),
            );
        }
        if self.mqtt.connect_timeout < second {
            return Err("mqtt.connect_timeout must be at least 1s".to_owned());
        }
        if self.mqtt.backoff_max < self.mqtt.backoff_initial {
            return Err("mqtt.backoff_max must be at least mqtt.backoff_initial".to_owned());
        }
        if self.mqtt.max_inflight_batches == 0
            || self.mqtt.max_unacked_records == 0
            || self.mqtt.refusals_before_stop == 0
        {
            return Err(
                "mqtt.max_inflight_batches, mqtt.max_unacked_records and mqtt.refusals_before_stop must be at least 1"
                    .to_owned(),
            );
        }
        if self.mqtt.resend_after < second {
            return Err("mqtt.resend_after must be at least 1s".to_owned());
        }
        if self.mqtt.resend_max < self.mqtt.resend_after {
            return Err("mqtt.resend_max must be at least mqtt.resend_after".to_owned());
        }
        if self.renewal.check < second || self.once.timeout < second {
            return Err("renewal.check and once.timeout must be at least 1s".to_owned());
        }
        self.outbox_config()?;
        Ok(self)
    }

    /// The outbox settings, checked.
    pub fn outbox_config(&self) -> Result<OutboxConfig, String> {
        let config = OutboxConfig {
            max_bytes: self.outbox.max_bytes,
            segment_bytes: self.outbox.segment_bytes,
            fsync: self.outbox.fsync,
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
    /// The tests check that it parses back to [`Config::default`].
    pub fn template() -> &'static str {
        TEMPLATE
    }

    /// Telemetry interval with jitter applied.
    pub fn jittered_telemetry_interval(&self) -> Duration {
        let base = self.telemetry.interval.as_secs_f64();
        let spread = (fastrand::f64() * 2.0 - 1.0) * self.telemetry.jitter;
        Duration::from_secs_f64((base * (1.0 + spread)).max(1.0))
    }

    /// The MQTT connect timeout in whole seconds (what the MQTT client takes), rounded up.
    pub fn connect_timeout_secs(&self) -> u64 {
        let timeout = self.mqtt.connect_timeout;
        timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0)
    }
}

/// Parses the `fsync` setting: `always`, `every:N`, `interval:DURATION` (`interval:5s`, or
/// `interval:5` for seconds) or `never`.
pub fn parse_fsync(text: &str) -> Result<FsyncPolicy, String> {
    let bad =
        || format!("outbox.fsync {text:?} is not always, every:N, interval:DURATION or never");
    match text.split_once(':') {
        None if text == "always" => Ok(FsyncPolicy::Always),
        None if text == "never" => Ok(FsyncPolicy::Never),
        Some(("every", n)) => n.parse().map(FsyncPolicy::EveryN).map_err(|_| bad()),
        Some(("interval", every)) => match every.parse() {
            Ok(secs) => Ok(FsyncPolicy::Interval(Duration::from_secs(secs))),
            Err(_) => parse_duration(every)
                .map(FsyncPolicy::Interval)
                .map_err(|_| bad()),
        },
        _ => Err(bad()),
    }
}

/// What `fleet-agent configfile` prints and `packaging/agent.toml` holds.
const TEMPLATE: &str = r#"# fleet-agent configuration (TOML). Every key is optional; the values shown are the
# defaults. The device identity (key, certificates, device id) is not here: it lives in
# the state directory (--state-dir, default /var/lib/fleet-agent).
# Durations are written like "90s", "5m", "6h" or "1h 30m".

# error, warn, info, debug or trace (FLEET_AGENT_LOG overrides it).
log_level = "info"

[telemetry]
# Time between metric samples (CPU, memory, disks, temperatures, load, network).
interval = "1m"
# Random stretch of each interval, as a fraction (0.0 to 0.5).
jitter = 0.1

[patch]
# Time between full patch-status reports (also sent at start).
interval = "6h"
# Time between checks of the package database; a change triggers a report.
poll = "1m"
# Longest a package-manager command may run before it is killed.
command_timeout = "2m"

[mqtt]
# MQTT keep-alive (at least 5s).
keep_alive = "1m"
# TCP + TLS + CONNACK timeout.
connect_timeout = "30s"
# Reconnect delay: starts here, doubles per failure, jittered, capped below.
backoff_initial = "1s"
backoff_max = "5m"
# Record batches in flight (published, not yet PUBACKed) at once.
max_inflight_batches = 4
# Records published and not yet acknowledged by the server (after its commit) at once.
max_unacked_records = 4096
# Published records without the server's ack for this long are published again, without
# reconnecting; the wait doubles per resend that brings no ack, up to resend_max.
resend_after = "30s"
resend_max = "5m"
# Consecutive certificate refusals by the broker before the agent stops as revoked.
refusals_before_stop = 3

[outbox]
# Bound of the on-disk outbox, bytes; when full the oldest records are dropped and reported.
max_bytes = 8388608
# Segment size, bytes (at most half of max_bytes); also the largest single record.
segment_bytes = 1048576
# always | every:N | interval:DURATION | never. "always" loses nothing to power loss.
fsync = "always"

[renewal]
# Time between certificate lifetime checks; renewal starts when less than a third of the
# lifetime remains, and a failed renewal is retried at this pace.
check = "1h"
# Renewal request timeout.
timeout = "1m"

[once]
# How long `run --once` waits for the server's ack.
timeout = "5m"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_back_to_the_defaults() {
        let parsed = Config::parse(Config::template()).expect("template parses");
        assert_eq!(parsed, Config::default());
        assert!(parsed.validated().is_ok());
    }

    #[test]
    fn every_template_key_is_commented_and_every_duration_is_humantime() {
        let template = Config::template();
        let lines: Vec<&str> = template.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            let Some((key, value)) = line.split_once(" = ") else {
                continue;
            };
            if line.starts_with('#') {
                continue;
            }
            assert!(!key.ends_with("_secs"), "{key} is not a humantime key");
            let commented = lines[..at]
                .iter()
                .rev()
                .take_while(|l| !l.is_empty())
                .any(|l| l.starts_with('#'));
            assert!(commented, "{key} has no comment");
            if value.starts_with('"') && parse_duration(value.trim_matches('"')).is_ok() {
                continue;
            }
            assert!(
                !matches!(key, "interval" | "poll" | "timeout" | "check")
                    && !key.ends_with("timeout")
                    && !key.starts_with("backoff")
                    && key != "keep_alive",
                "{key} = {value} is not a humantime duration"
            );
        }
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
        let config = Config::parse("[telemetry]\ninterval = \"5s\"\n").unwrap();
        assert_eq!(config.telemetry.interval, Duration::from_secs(5));
        assert_eq!(config.telemetry.jitter, TelemetryConfig::default().jitter);
        assert_eq!(config.patch, PatchConfig::default());
    }

    #[test]
    fn durations_parse_like_fleetds_and_bad_ones_say_why() {
        let cases = [
            ("90s", Duration::from_secs(90)),
            ("1h 30m", Duration::from_secs(5400)),
            ("1h30m", Duration::from_secs(5400)),
            ("250ms", Duration::from_millis(250)),
            ("2d", Duration::from_secs(172_800)),
            (" 5m ", Duration::from_secs(300)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
        for bad in [
            "",
            "5",
            "m",
            "5 minutes",
            "5x",
            "-5s",
            "99999999999h",
            "1.5h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn durations_are_humantime() {
        let config = Config::parse(
            "[patch]\ninterval = \"1h 30m\"\npoll = \"90s\"\ncommand_timeout = \"2m\"\n\
             [mqtt]\nconnect_timeout = \"1500ms\"\nbackoff_max = \"10m\"\n\
             [renewal]\ncheck = \"2h\"\n[once]\ntimeout = \"30s\"\n",
        )
        .unwrap()
        .validated()
        .unwrap();
        assert_eq!(config.patch.interval, Duration::from_secs(5400));
        assert_eq!(config.patch.poll, Duration::from_secs(90));
        assert_eq!(config.patch.command_timeout, Duration::from_secs(120));
        assert_eq!(config.mqtt.connect_timeout, Duration::from_millis(1500));
        assert_eq!(config.connect_timeout_secs(), 2, "rounded up, never to 0");
        assert_eq!(Config::default().connect_timeout_secs(), 30);
        assert_eq!(config.mqtt.backoff_max, Duration::from_secs(600));
        assert_eq!(config.renewal.check, Duration::from_secs(7200));
        assert_eq!(config.once.timeout, Duration::from_secs(30));
    }

    #[test]
    fn the_secs_keys_of_earlier_releases_are_still_read_as_seconds() {
        let config = Config::parse(
            "[telemetry]\ninterval_secs = 5\n\
             [patch]\ninterval_secs = 7200\npoll_secs = 30\ncommand_timeout_secs = 60\n\
             [mqtt]\nkeep_alive_secs = 20\nconnect_timeout_secs = 10\n\
             backoff_initial_secs = 2\nbackoff_max_secs = 60\n\
             [renewal]\ncheck_secs = 600\ntimeout_secs = 30\n\
             [once]\ntimeout_secs = 45\n",
        )
        .unwrap()
        .validated()
        .unwrap();
        let secs = Duration::from_secs;
        assert_eq!(config.telemetry.interval, secs(5));
        assert_eq!(
            config.patch,
            PatchConfig {
                interval: secs(7200),
                poll: secs(30),
                command_timeout: secs(60),
            }
        );
        assert_eq!(config.mqtt.keep_alive, secs(20));
        assert_eq!(config.mqtt.connect_timeout, secs(10));
        assert_eq!(config.mqtt.backoff_initial, secs(2));
        assert_eq!(config.mqtt.backoff_max, secs(60));
        assert_eq!(
            config.renewal,
            RenewalConfig {
                check: secs(600),
                timeout: secs(30),
            }
        );
        assert_eq!(config.once.timeout, secs(45));
        let err = Config::parse("[telemetry]\ninterval_secs = 5\ninterval = \"5s\"\n").unwrap_err();
        assert!(err.contains("interval"), "both spellings at once: {err}");
    }

    #[test]
    fn a_bad_duration_is_refused_naming_its_key() {
        for (text, key) in [
            ("[telemetry]\ninterval = \"often\"\n", "telemetry.interval"),
            (
                "[telemetry]\ninterval_secs = \"often\"\n",
                "telemetry.interval_secs",
            ),
            ("[mqtt]\nbackoff_max = -1\n", "mqtt.backoff_max"),
            ("[once]\ntimeout = true\n", "once.timeout"),
            ("[outbox]\nfsync = \"sometimes\"\n", "outbox.fsync"),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(err.starts_with(&format!("{key}: ")), "{text}: {err}");
        }
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
            "[telemetry]\ninterval = \"500ms\"",
            "[patch]\npoll = \"0s\"",
            "[mqtt]\nkeep_alive = \"4s\"",
            "[mqtt]\nconnect_timeout = \"0s\"",
            "[mqtt]\nbackoff_max_secs = 0",
            "[mqtt]\nbackoff_max = \"0s\"",
            "[mqtt]\nmax_unacked_records = 0",
            "[mqtt]\nresend_after = \"500ms\"",
            "[mqtt]\nresend_after = \"1m\"\nresend_max = \"30s\"",
            "[renewal]\ncheck = \"0s\"",
            "[once]\ntimeout = \"0s\"",
            "[outbox]\nsegment_bytes = 1000",
        ] {
            let config = Config::parse(text).unwrap();
            assert!(config.validated().is_err(), "{text} accepted");
        }
        // Refused as soon as it is parsed: fsync is a typed value.
        assert!(Config::parse("[outbox]\nfsync = \"sometimes\"").is_err());
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
        assert_eq!(
            parse_fsync("interval:5s").unwrap(),
            FsyncPolicy::Interval(Duration::from_secs(5))
        );
        assert_eq!(
            parse_fsync("interval:250ms").unwrap(),
            FsyncPolicy::Interval(Duration::from_millis(250))
        );
        assert!(parse_fsync("every:x").is_err());
        assert!(parse_fsync("interval:soon").is_err());
        assert_eq!(
            Config::parse("[outbox]\nfsync = \"every:10\"")
                .unwrap()
                .outbox_config()
                .unwrap()
                .fsync,
            FsyncPolicy::EveryN(10)
        );
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
