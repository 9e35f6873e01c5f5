//! System metrics and custom metrics sampled on the device.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bounded;
use crate::limits::{self, MAX_COMPONENTS, MAX_CUSTOM_METRICS};
use crate::DecodeError;

/// One sample of the device's metrics.
///
/// Every part is optional: a collector that fails on some platform (no thermal
/// zones in a container, say) leaves its part out instead of failing the sample,
/// and reports the failure as an
/// [`AgentEvent::CollectorError`](crate::AgentEvent::CollectorError). Empty and
/// absent parts are not written.
///
/// Counters (network) are cumulative since boot, as the kernel reports them;
/// rates are computed server-side, where a reset (reboot) is visible from
/// [`uptime_secs`](Self::uptime_secs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// CPU busy time over the last sampling interval, 0 to 100, averaged over all
    /// cores. Key `c`.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub cpu_usage_percent: Option<f32>,

    /// Physical memory. Key `m`.
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,

    /// One entry per mounted filesystem worth reporting. Key `d`.
    #[serde(
        rename = "d",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "bounded::vec::<_, _, MAX_COMPONENTS>"
    )]
    pub disks: Vec<Disk>,

    /// One entry per thermal zone. Key `z`.
    #[serde(
        rename = "z",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "bounded::vec::<_, _, MAX_COMPONENTS>"
    )]
    pub temperatures: Vec<Temperature>,

    /// Seconds since boot. Key `u`.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,

    /// Load averages. Key `l`.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadAverage>,

    /// One entry per network interface. Key `n`.
    #[serde(
        rename = "n",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "bounded::vec::<_, _, MAX_COMPONENTS>"
    )]
    pub network: Vec<NetworkInterface>,

    /// Application-defined metrics by name, at most
    /// [`MAX_CUSTOM_METRICS`](crate::limits::MAX_CUSTOM_METRICS). Key `x`.
    #[serde(
        rename = "x",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "bounded::map::<_, _, MAX_CUSTOM_METRICS>"
    )]
    pub custom: BTreeMap<String, f64>,
}

/// Physical memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Installed memory usable by the kernel (`MemTotal`). Key `t`.
    #[serde(rename = "t")]
    pub total_bytes: u64,
    /// Memory available for new work without swapping (`MemAvailable`). Key `a`.
    #[serde(rename = "a")]
    pub available_bytes: u64,
}

/// Space on one mounted filesystem, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Mount point, such as `/` or `/data`. Key `m`.
    #[serde(rename = "m")]
    pub mount: String,
    /// Size of the filesystem. Key `t`.
    #[serde(rename = "t")]
    pub total_bytes: u64,
    /// Space still free. Key `f`.
    #[serde(rename = "f")]
    pub free_bytes: u64,
}

/// The temperature of one thermal zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    /// Zone name, as the kernel types it (`cpu-thermal`, `x86_pkg_temp`). Key `z`.
    #[serde(rename = "z")]
    pub zone: String,
    /// Degrees Celsius. Key `c`.
    #[serde(rename = "c")]
    pub celsius: f32,
}

/// Run-queue load averages.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadAverage {
    /// Over the last minute. Key `1`.
    #[serde(rename = "1")]
    pub one: f32,
    /// Over the last five minutes. Key `5`.
    #[serde(rename = "5")]
    pub five: f32,
    /// Over the last fifteen minutes. Key `15`.
    #[serde(rename = "15")]
    pub fifteen: f32,
}

/// Counters of one network interface, cumulative since boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Interface name, such as `eth0`. Key `i`.
    #[serde(rename = "i")]
    pub name: String,
    /// Bytes received. Key `rb`.
    #[serde(rename = "rb")]
    pub rx_bytes: u64,
    /// Bytes sent. Key `tb`.
    #[serde(rename = "tb")]
    pub tx_bytes: u64,
    /// Packets received. Key `rp`.
    #[serde(rename = "rp")]
    pub rx_packets: u64,
    /// Packets sent. Key `tp`.
    #[serde(rename = "tp")]
    pub tx_packets: u64,
    /// Receive errors. Key `re`.
    #[serde(rename = "re")]
    pub rx_errors: u64,
    /// Transmit errors. Key `te`.
    #[serde(rename = "te")]
    pub tx_errors: u64,
}

impl Telemetry {
    /// Checks counts and name lengths against [`limits`](crate::limits).
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        limits::check_count("telemetry.disks", self.disks.len(), MAX_COMPONENTS)?;
        limits::check_count(
            "telemetry.temperatures",
            self.temperatures.len(),
            MAX_COMPONENTS,
        )?;
        limits::check_count("telemetry.network", self.network.len(), MAX_COMPONENTS)?;
        limits::check_count("telemetry.custom", self.custom.len(), MAX_CUSTOM_METRICS)?;
        for disk in &self.disks {
            limits::check_name("disk.mount", &disk.mount)?;
        }
        for temperature in &self.temperatures {
            limits::check_name("temperature.zone", &temperature.zone)?;
        }
        for interface in &self.network {
            limits::check_name("network.name", &interface.name)?;
        }
        for name in self.custom.keys() {
            limits::check_name("custom.name", name)?;
        }
        Ok(())
    }
}
