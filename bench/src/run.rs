//! What every scenario shares: a fresh database on the server of TEST_DATABASE_URL (dropped at
//! the end), the machine's description, and the meter of a measured phase.

use std::time::Instant;

use fleet_tests::TestDb;

use crate::fleetd_child::{Fleetd, ServeOptions};
use crate::procfs::{self, Machine, PostgresCpu};
use crate::report::{Report, Resources};

pub struct Run {
    pub test_db: TestDb,
    machine: Machine,
}

impl Run {
    pub async fn start() -> anyhow::Result<Self> {
        // The harness's server: TEST_DATABASE_URL's, or a private cluster of its own.
        let server = match std::env::var("TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => "TEST_DATABASE_URL",
            _ => "a private cluster, fsync off",
        };
        let open_files = procfs::raise_open_files();
        let test_db = TestDb::new().await;
        let postgres: String = {
            let mut owner = test_db.connect_as_owner().await;
            sqlx::query_scalar("SELECT current_setting('server_version')")
                .fetch_one(&mut owner)
                .await?
        };
        Ok(Self {
            test_db,
            machine: Machine::describe(
                format!(
                    "PostgreSQL {} ({server})",
                    postgres.split_whitespace().next().unwrap_or("?")
                ),
                open_files,
            ),
        })
    }

    /// This process's open-file limit, raised to its hard limit at the start.
    pub fn open_files_limit(&self) -> u64 {
        self.machine.open_files_limit
    }

    pub fn report(&self, scenario: &'static str) -> Report {
        Report::new(scenario, self.machine.clone())
    }

    /// fleetd in a child process on this run's database.
    pub async fn fleetd(&self, options: &ServeOptions) -> anyhow::Result<Fleetd> {
        Fleetd::start(self.test_db.url(), options).await
    }
}

/// CPU and memory from the start of a measured phase.
pub struct Meter {
    pid: u32,
    started: Instant,
    cpu: f64,
    load_cpu: f64,
    postgres: PostgresCpu,
}

impl Meter {
    /// Starts measuring fleetd (or a peer) as process `pid`.
    pub fn start(pid: u32) -> Self {
        Self {
            pid,
            started: Instant::now(),
            cpu: procfs::cpu_seconds(pid),
            load_cpu: procfs::cpu_seconds(std::process::id()),
            postgres: PostgresCpu::take(),
        }
    }

    pub fn stop(&self) -> Resources {
        Resources {
            wall_seconds: self.started.elapsed().as_secs_f64(),
            fleetd_cpu_seconds: procfs::cpu_seconds(self.pid) - self.cpu,
            fleetd_peak_rss_mib: procfs::peak_rss_kib(self.pid) as f64 / 1024.0,
            postgres_cpu_seconds: self.postgres.seconds_since(&PostgresCpu::take()),
            load_cpu_seconds: procfs::cpu_seconds(std::process::id()) - self.load_cpu,
        }
    }
}
