//! System metrics from `/proc` and `/sys`.
//!
//! Each `parse_*` function takes the text of one file; [`collect_system`] reads them under
//! an [`FsRoot`] and puts together a [`SystemMetrics`]. A missing file leaves its field
//! empty; a file that cannot be parsed does too, and adds a line to
//! [`SystemMetrics::problems`]. Nothing here fails the collection as a whole.

use std::path::Path;
use std::time::Duration;

use super::{FsRoot, Parsed};

/// A file whose content could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct ParseError {
    /// The file, as an absolute path on the device (`/proc/stat`).
    pub file: &'static str,
    /// What was wrong.
    pub reason: String,
}

impl ParseError {
    fn new(file: &'static str, reason: impl Into<String>) -> Self {
        Self {
            file,
            reason: reason.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// CPU

/// Cumulative CPU time of all cores from the `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks spent doing anything.
    pub busy: u64,
    /// Ticks spent idle or waiting for I/O.
    pub idle: u64,
}

/// Reads the aggregate `cpu` line of `/proc/stat`. Guest time is already counted inside
/// user and nice, so it is not added again.
pub fn parse_proc_stat(text: &str) -> Result<CpuTimes, ParseError> {
    const FILE: &str = "/proc/stat";
    let line = text
        .lines()
        .find(|line| line.starts_with("cpu "))
        .ok_or_else(|| ParseError::new(FILE, "no aggregate cpu line"))?;
    let fields = line
        .split_whitespace()
        .skip(1)
        .take(8) // user nice system idle iowait irq softirq steal
        .map(str::parse::<u64>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ParseError::new(FILE, format!("cpu line: {err}")))?;
    if fields.len() < 4 {
        return Err(ParseError::new(FILE, "cpu line has fewer than 4 fields"));
    }
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    let busy = fields.iter().sum::<u64>() - idle;
    Ok(CpuTimes { busy, idle })
}

/// Percentage of CPU time spent busy between two samples (0–100, all cores together);
/// `None` when no time passed or the counters went backwards (a reset).
pub fn cpu_busy_percent(earlier: CpuTimes, later: CpuTimes) -> Option<f64> {
    let busy = later.busy.checked_sub(earlier.busy)?;
    let idle = later.idle.checked_sub(earlier.idle)?;
    let total = busy + idle;
    (total > 0).then(|| busy as f64 * 100.0 / total as f64)
}

/// Turns successive `/proc/stat` samples into CPU usage: usage is a delta, so the sampler
/// keeps the previous sample.
#[derive(Debug, Clone, Default)]
pub struct CpuSampler {
    previous: Option<CpuTimes>,
}

impl CpuSampler {
    /// A sampler with no previous sample.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `current` and returns the usage since the previous sample (`None` on the
    /// first call).
    pub fn observe(&mut self, current: CpuTimes) -> Option<f64> {
        let usage = self
            .previous
            .and_then(|previous| cpu_busy_percent(previous, current));
        self.previous = Some(current);
        usage
    }

    /// Reads `/proc/stat` under `root` and returns the usage since the previous call.
    pub fn sample(&mut self, root: &FsRoot) -> Result<Option<f64>, CollectError> {
        let text = read_required(root, "/proc/stat")?;
        Ok(self.observe(parse_proc_stat(&text)?))
    }
}

// ---------------------------------------------------------------------------------------
// Memory

/// Memory figures from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// `MemTotal`.
    pub total_bytes: u64,
    /// `MemAvailable`; on kernels older than 3.14, which lack it, `MemFree + Buffers + Cached`.
    pub available_bytes: u64,
    /// `SwapTotal` (0 without swap).
    pub swap_total_bytes: u64,
    /// `SwapFree`.
    pub swap_free_bytes: u64,
}

/// Reads `/proc/meminfo` (values in kB).
pub fn parse_meminfo(text: &str) -> Result<Memory, ParseError> {
    const FILE: &str = "/proc/meminfo";
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kilobytes = rest.split_whitespace().next()?.parse::<u64>().ok()?;
            Some(kilobytes * 1024)
        })
    };
    let total_bytes = field("MemTotal").ok_or_else(|| ParseError::new(FILE, "no MemTotal"))?;
    let available_bytes = field("MemAvailable")
        .or_else(|| Some(field("MemFree")? + field("Buffers")? + field("Cached")?))
        .ok_or_else(|| ParseError::new(FILE, "neither MemAvailable nor MemFree"))?;
    Ok(Memory {
        total_bytes,
        available_bytes,
        swap_total_bytes: field("SwapTotal").unwrap_or(0),
        swap_free_bytes: field("SwapFree").unwrap_or(0),
    })
}

// ---------------------------------------------------------------------------------------
// Disks

/// A mounted file system from `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The device or source (`/dev/mmcblk0p2`).
    pub source: String,
    /// Where it is mounted (octal escapes such as `\040` decoded).
    pub mount_point: String,
    /// File system type (`ext4`).
    pub fs_type: String,
}

/// File system types that hold no device storage worth reporting.
const PSEUDO_FS_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs", // read-only images (snaps): always 100% full, never actionable
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// Reads `/proc/mounts`, keeping real storage (pseudo and in-memory file systems are
/// skipped, and so is a second mount of the same mount point).
pub fn parse_mounts(text: &str) -> Parsed<Mount> {
    let mut seen = Vec::new();
    Parsed::from_lines(text, |line| {
        if line.trim().is_empty() {
            return Ok(None);
        }
        let mut fields = line.split_whitespace();
        let (Some(source), Some(mount_point), Some(fs_type)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err("fewer than 3 fields".to_owned());
        };
        if PSEUDO_FS_TYPES.contains(&fs_type) {
            return Ok(None);
        }
        let mount_point = unescape_mount_field(mount_point);
        if seen.contains(&mount_point) {
            return Ok(None);
        }
        seen.push(mount_point.clone());
        Ok(Some(Mount {
            source: unescape_mount_field(source),
            mount_point,
            fs_type: fs_type.to_owned(),
        }))
    })
}

/// The kernel writes space, tab, newline and backslash in mount fields as `\ooo`.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Space on one mounted file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskUsage {
    /// The mount.
    pub mount: Mount,
    /// Size of the file system.
    pub total_bytes: u64,
    /// Space an unprivileged user can still use (`f_bavail`, which excludes the root reserve).
    pub available_bytes: u64,
    /// Space in use (`total - free`, the figure `df` shows as used).
    pub used_bytes: u64,
}

/// Asks the kernel (`statvfs(2)`) how full the file system at `path` is.
pub fn disk_usage(mount: Mount, path: &Path) -> nix::Result<DiskUsage> {
    let stats = nix::sys::statvfs::statvfs(path)?;
    let fragment = stats.fragment_size() as u64;
    let total_bytes = stats.blocks() as u64 * fragment;
    let free_bytes = stats.blocks_free() as u64 * fragment;
    Ok(DiskUsage {
        mount,
        total_bytes,
        available_bytes: stats.blocks_available() as u64 * fragment,
        used_bytes: total_bytes.saturating_sub(free_bytes),
    })
}

// ---------------------------------------------------------------------------------------
// Temperatures

/// One thermal zone from `/sys/class/thermal/thermal_zone*`.
#[derive(Debug, Clone, PartialEq)]
pub struct Temperature {
    /// The zone directory name (`thermal_zone0`).
    pub zone: String,
    /// What it measures, from its `type` file (`cpu-thermal`, `x86_pkg_temp`); empty if absent.
    pub kind: String,
    /// Degrees Celsius.
    pub celsius: f64,
}

/// Reads a thermal zone's `temp` file (millidegrees Celsius).
pub fn parse_thermal_temp(text: &str) -> Result<f64, ParseError> {
    const FILE: &str = "/sys/class/thermal/thermal_zone*/temp";
    let millidegrees = text
        .trim()
        .parse::<i64>()
        .map_err(|err| ParseError::new(FILE, err.to_string()))?;
    Ok(millidegrees as f64 / 1000.0)
}

/// Reads every thermal zone under `root`; zones that cannot be read (some report
/// `EINVAL` or `ENODATA` while their sensor sleeps) are skipped with a problem noted.
pub fn read_temperatures(root: &FsRoot, problems: &mut Vec<String>) -> Vec<Temperature> {
    let dir = root.join("/sys/class/thermal");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut zones: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("thermal_zone"))
        .collect();
    zones.sort_by_key(|name| (name.len(), name.clone())); // zone2 before zone10
    zones
        .into_iter()
        .filter_map(|zone| {
            let read = |file: &str| std::fs::read_to_string(dir.join(&zone).join(file));
            let celsius = read("temp")
                .map_err(|err| err.to_string())
                .and_then(|text| parse_thermal_temp(&text).map_err(|err| err.to_string()));
            match celsius {
                Ok(celsius) => Some(Temperature {
                    kind: read("type")
                        .map(|t| t.trim().to_owned())
                        .unwrap_or_default(),
                    zone,
                    celsius,
                }),
                Err(reason) => {
                    problems.push(format!("{zone}: {reason}"));
                    None
                }
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Uptime and load

/// Reads the first field of `/proc/uptime`: seconds since boot.
pub fn parse_uptime(text: &str) -> Result<Duration, ParseError> {
    const FILE: &str = "/proc/uptime";
    let seconds = text
        .split_whitespace()
        .next()
        .and_then(|field| field.parse::<f64>().ok())
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .ok_or_else(|| ParseError::new(FILE, "no uptime in seconds"))?;
    Ok(Duration::from_secs_f64(seconds))
}

/// Load averages from `/proc/loadavg`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadAverage {
    /// Over 1 minute.
    pub one: f64,
    /// Over 5 minutes.
    pub five: f64,
    /// Over 15 minutes.
    pub fifteen: f64,
}

/// Reads the first three fields of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Result<LoadAverage, ParseError> {
    const FILE: &str = "/proc/loadavg";
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    let mut next = || {
        fields
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| ParseError::new(FILE, "expected three load averages"))
    };
    Ok(LoadAverage {
        one: next()?,
        five: next()?,
        fifteen: next()?,
    })
}

// ---------------------------------------------------------------------------------------
// Network

/// Counters of one network interface from `/proc/net/dev` (cumulative since boot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetInterface {
    /// Interface name (`eth0`).
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Outgoing packets dropped.
    pub tx_dropped: u64,
}

/// Reads `/proc/net/dev` (two header lines, then `name: 16 counters`).
pub fn parse_net_dev(text: &str) -> Parsed<NetInterface> {
    Parsed::from_lines(text, |line| {
        let Some((name, counters)) = line.split_once(':') else {
            // The two header lines have no colon; anything else without one is odd.
            return if line.contains('|') || line.trim().is_empty() {
                Ok(None)
            } else {
                Err("no interface name".to_owned())
            };
        };
        let counters = counters
            .split_whitespace()
            .map(str::parse::<u64>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| format!("counter: {err}"))?;
        let [rx_bytes, rx_packets, rx_errors, rx_dropped, _, _, _, _, tx_bytes, tx_packets, tx_errors, tx_dropped, ..] =
            counters[..]
        else {
            return Err(format!("{} counters, expected 16", counters.len()));
        };
        Ok(Some(NetInterface {
            name: name.trim().to_owned(),
            rx_bytes,
            rx_packets,
            rx_errors,
            rx_dropped,
            tx_bytes,
            tx_packets,
            tx_errors,
            tx_dropped,
        }))
    })
}

// ---------------------------------------------------------------------------------------
// All together

/// Why a required file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file's content was not understood.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// One round of system metrics. Empty fields mean "not available on this device".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SystemMetrics {
    /// CPU busy percentage since the previous round (`None` on the first round).
    pub cpu_percent: Option<f64>,
    /// Memory, if `/proc/meminfo` was readable.
    pub memory: Option<Memory>,
    /// Space per mounted file system.
    pub disks: Vec<DiskUsage>,
    /// Thermal zones.
    pub temperatures: Vec<Temperature>,
    /// Time since boot.
    pub uptime: Option<Duration>,
    /// Load averages.
    pub load: Option<LoadAverage>,
    /// Per-interface network counters.
    pub network: Vec<NetInterface>,
    /// What could not be read or parsed, one line each, for the agent's log.
    pub problems: Vec<String>,
}

/// Reads every metric under `root`. `cpu` keeps the previous `/proc/stat` sample between
/// rounds.
pub fn collect_system(root: &FsRoot, cpu: &mut CpuSampler) -> SystemMetrics {
    let mut metrics = SystemMetrics::default();
    let problems = &mut metrics.problems;
    metrics.cpu_percent = cpu.sample(root).unwrap_or_else(|err| {
        problems.push(err.to_string());
        None
    });
    metrics.memory = read_parsed(root, "/proc/meminfo", parse_meminfo, problems);
    metrics.uptime = read_parsed(root, "/proc/uptime", parse_uptime, problems);
    metrics.load = read_parsed(root, "/proc/loadavg", parse_loadavg, problems);
    metrics.network = read_lines(root, "/proc/net/dev", parse_net_dev, problems);
    metrics.disks = read_disks(root, problems);
    metrics.temperatures = read_temperatures(root, problems);
    metrics
}

/// Disk usage of every real mount; mounts the agent may not stat are skipped and noted.
pub fn read_disks(root: &FsRoot, problems: &mut Vec<String>) -> Vec<DiskUsage> {
    let mounts = read_lines(root, "/proc/mounts", parse_mounts, problems);
    mounts
        .into_iter()
        .filter_map(|mount| {
            let path = root.join(&mount.mount_point);
            let point = mount.mount_point.clone();
            disk_usage(mount, &path)
                .map_err(|err| problems.push(format!("statvfs {point}: {err}")))
                .ok()
        })
        .collect()
}

fn read_required(root: &FsRoot, file: &'static str) -> Result<String, CollectError> {
    std::fs::read_to_string(root.join(file)).map_err(|source| CollectError::Read {
        path: file.to_owned(),
        source,
    })
}

/// Reads and parses an optional single-value file, noting failures in `problems`.
fn read_parsed<T>(
    root: &FsRoot,
    file: &'static str,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
    problems: &mut Vec<String>,
) -> Option<T> {
    match root.read_optional(file) {
        Ok(Some(text)) => parse(&text)
            .map_err(|err| problems.push(err.to_string()))
            .ok(),
        Ok(None) => None,
        Err(err) => {
            problems.push(format!("reading {file}: {err}"));
            None
        }
    }
}

/// Reads and parses an optional line-oriented file, noting bad lines in `problems`.
fn read_lines<T>(
    root: &FsRoot,
    file: &'static str,
    parse: impl FnOnce(&str) -> Parsed<T>,
    problems: &mut Vec<String>,
) -> Vec<T> {
    let parsed = read_parsed(root, file, |text| Ok(parse(text)), problems).unwrap_or_default();
    problems.extend(parsed.problems.iter().map(|problem| {
        format!(
            "{file} line {}: {} ({:?})",
            problem.line_no, problem.reason, problem.line
        )
    }));
    parsed.items
}

#[cfg(test)]
mod tests;
