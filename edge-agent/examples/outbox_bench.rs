//! Outbox append throughput for each fsync policy.
//!
//! `cargo run --release -p edge-agent --example outbox_bench [DIR]`
//!
//! Appends 300-byte records (a typical telemetry batch entry) into a fresh outbox under
//! DIR (default: the system temp dir, which must be a real disk for the fsync figures to
//! mean anything) and prints records/s and MB/s. The outbox is sized so nothing is evicted.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use edge_agent::outbox::{FsyncPolicy, Outbox, OutboxConfig};

const RECORD_BYTES: usize = 300;
/// Each policy runs for about this long (or until `MAX_RECORDS`).
const RUN_TIME: Duration = Duration::from_secs(3);
const MAX_RECORDS: u64 = 200_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let policies = [
        ("always", FsyncPolicy::Always),
        ("every-100", FsyncPolicy::EveryN(100)),
        ("interval-1s", FsyncPolicy::Interval(Duration::from_secs(1))),
        ("never", FsyncPolicy::Never),
    ];
    println!("record payload {RECORD_BYTES} B, up to {RUN_TIME:?} per policy, dir {base:?}");
    println!(
        "{:<12} {:>10} {:>12} {:>8}",
        "policy", "records", "records/s", "MB/s"
    );
    for (name, fsync) in policies {
        let dir = tempfile::Builder::new()
            .prefix("outbox-bench-")
            .tempdir_in(&base)?;
        let config = OutboxConfig {
            max_bytes: 256 * 1024 * 1024,
            segment_bytes: 256 * 1024,
            fsync,
        };
        let (mut outbox, _) = Outbox::open(dir.path(), config)?;
        let payload = vec![0x5Au8; RECORD_BYTES];
        let started = Instant::now();
        let mut records = 0u64;
        while records < MAX_RECORDS && started.elapsed() < RUN_TIME {
            outbox.append(&payload)?;
            records += 1;
        }
        outbox.sync()?;
        let seconds = started.elapsed().as_secs_f64();
        let per_second = records as f64 / seconds;
        let megabytes = per_second * RECORD_BYTES as f64 / 1e6;
        println!("{name:<12} {records:>10} {per_second:>12.0} {megabytes:>8.2}");
    }
    Ok(())
}
