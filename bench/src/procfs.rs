//! What /proc says about fleetd, PostgreSQL and this machine: CPU seconds, resident memory and
//! the open-file limit.

use std::collections::BTreeMap;

use serde::Serialize;

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on every Linux build
/// this project targets).
const TICKS_PER_SECOND: f64 = 100.0;

/// A process's name and its user + system CPU ticks, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    // After ") ": field 3 (state) is index 0, so utime (field 14) is 11 and stime (15) is 12.
    let fields: Vec<&str> = text.get(close + 2..)?.split(' ').collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU seconds `pid` has used so far (0 once it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    stat(pid).map_or(0.0, |(_, ticks)| ticks as f64 / TICKS_PER_SECOND)
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(key))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of `pid` now, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The most resident memory `pid` ever had, KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// CPU ticks of every PostgreSQL process of the machine, by pid.
#[derive(Debug, Clone, Default)]
pub struct PostgresCpu(BTreeMap<u32, u64>);

impl PostgresCpu {
    pub fn take() -> Self {
        let mut ticks = BTreeMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some((comm, t)) = stat(pid) {
                if comm.starts_with("postgres") {
                    ticks.insert(pid, t);
                }
            }
        }
        Self(ticks)
    }

    /// CPU seconds PostgreSQL used since `self`: processes that ended in between are lost,
    /// processes started in between count whole.
    pub fn seconds_since(&self, later: &Self) -> f64 {
        let ticks: u64 = later
            .0
            .iter()
            .map(|(pid, t)| t - self.0.get(pid).copied().unwrap_or(0).min(*t))
            .sum();
        ticks as f64 / TICKS_PER_SECOND
    }
}

/// Raises the soft open-file limit to the hard one (children inherit it) and returns it.
pub fn raise_open_files() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) => {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
            hard
        }
        Err(_) => 1024,
    }
}

/// The machine a run was measured on, as BENCHMARKS.md states it.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub open_files_limit: u64,
    pub load_average_at_start: String,
    pub postgres: String,
}

impl Machine {
    pub fn describe(postgres: String, open_files_limit: u64) -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        let memory_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            open_files_limit,
            load_average_at_start: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            postgres,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        assert!(cpu_seconds(pid) > 0.0);
        assert!(rss_kib(pid) > 0);
        // The high-water mark read after the RSS is at least that RSS (other tests' threads may
        // grow the process between the two reads).
        let rss = rss_kib(pid);
        assert!(peak_rss_kib(pid) >= rss);
        assert_eq!(cpu_seconds(u32::MAX), 0.0, "no such process");
    }
}
