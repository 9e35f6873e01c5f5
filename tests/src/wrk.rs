//! wrk, the HTTP load generator (Debian's package), driven by the benchmarks against the API.

use std::process::{Command, Stdio};

/// Whether wrk is on PATH (`apt-get install -y wrk`).
pub fn installed() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// What wrk said: its whole output and the figures read from it.
pub struct WrkReport {
    pub text: String,
    pub requests_per_sec: f64,
    pub p99: String,
    pub non_2xx: u64,
}

/// Runs `wrk -t threads -c connections -d seconds --latency` against `url` with `key` as the
/// bearer token; panics when wrk fails.
pub async fn run(url: &str, key: &str, threads: u64, connections: u64, seconds: u64) -> WrkReport {
    let url = url.to_owned();
    let header = format!("Authorization: Bearer {key}");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("wrk")
            .arg(format!("-t{threads}"))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{seconds}s"))
            .arg("--latency")
            .arg("--timeout")
            .arg("10s")
            .arg("-H")
            .arg(header)
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .expect("run wrk")
    })
    .await
    .expect("wrk task");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(prefix))
            .map(|rest| rest.trim().to_owned())
    };
    WrkReport {
        requests_per_sec: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p99: field("99%").unwrap_or_else(|| "?".into()),
        non_2xx: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        text,
    }
}

impl WrkReport {
    /// The p99 latency in milliseconds (wrk writes `850.00us`, `12.34ms` or `1.20s`).
    pub fn p99_ms(&self) -> Option<f64> {
        let p99 = self.p99.trim();
        let split = p99.find(|c: char| c.is_ascii_alphabetic())?;
        let value: f64 = p99[..split].parse().ok()?;
        match &p99[split..] {
            "us" => Some(value / 1000.0),
            "ms" => Some(value),
            "s" => Some(value * 1000.0),
            "m" => Some(value * 60_000.0),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_reads_every_unit_wrk_writes() {
        let report = |p99: &str| WrkReport {
            text: String::new(),
            requests_per_sec: 0.0,
            p99: p99.into(),
            non_2xx: 0,
        };
        assert_eq!(report("850.00us").p99_ms(), Some(0.85));
        assert_eq!(report("12.34ms").p99_ms(), Some(12.34));
        assert_eq!(report("1.20s").p99_ms(), Some(1200.0));
        assert_eq!(report("?").p99_ms(), None);
    }
}
