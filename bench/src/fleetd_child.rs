//! fleetd in a process of its own, so that /proc tells its CPU and memory from the load's: this
//! program re-executed as `fleet-bench serve`, which runs `fleetd::start` (what fleetd's main
//! runs) on ephemeral loopback ports against the bench's database, prints its addresses on one
//! line and serves until its standard input closes.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use certs::IssuingCa;
use serde::{Deserialize, Serialize};

/// What `serve` changes from fleetd's defaults. Every scenario states the ones it uses.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeOptions {
    /// Lift the per-device publish limit (20 messages/s, burst 200): the broker-tier comparison
    /// drives each device as fast as its acks come, as it does Mosquitto.
    #[arg(long)]
    pub unlimited_publish: bool,
}

/// The addresses a `serve` child listens on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Listening {
    pub api: SocketAddr,
    pub broker: SocketAddr,
    pub metrics: SocketAddr,
}

const READY: &str = "FLEETD-READY ";

/// The child side: fleetd on `database_url`, data in `data_dir`.
pub async fn serve(
    database_url: String,
    data_dir: PathBuf,
    options: ServeOptions,
) -> anyhow::Result<()> {
    let mut config = fleetd::Config::on_ephemeral_loopback_ports(
        &data_dir,
        database_url.parse().context("a postgres:// URL")?,
    );
    // Ten thousand devices connect from a few hundred loopback addresses (sim::source_address).
    config.broker.max_connections = 60_000;
    if options.unlimited_publish {
        config.broker.publish_rate = 1e9;
        config.broker.publish_burst = u32::MAX;
    }
    let running = fleetd::start(config).await?;
    let listening = Listening {
        api: running.api_addr(),
        broker: running.broker_addr().context("the embedded broker")?,
        metrics: running.metrics_addr(),
    };
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{READY}{}", serde_json::to_string(&listening)?)?;
        stdout.flush()?;
    }
    // Serve until the parent closes our standard input (or dies).
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    })
    .await;
    running.shutdown().await
}

/// The parent side: a running `serve` child.
pub struct Fleetd {
    child: Child,
    pub listening: Listening,
    /// fleetd's issuing CA (its development PKI in the data directory): device certificates.
    pub ca: std::sync::Arc<IssuingCa>,
    _data_dir: tempfile::TempDir,
}

impl Fleetd {
    /// Starts fleetd against `database_url` and waits until it listens.
    pub async fn start(database_url: &str, options: &ServeOptions) -> anyhow::Result<Self> {
        let data_dir = fleet_tests::data_dir();
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("serve")
            .arg("--database-url")
            .arg(database_url)
            .arg("--data-dir")
            .arg(data_dir.path());
        if options.unlimited_publish {
            command.arg("--unlimited-publish");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting fleet-bench serve")?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let ready = tokio::task::spawn_blocking(move || -> anyhow::Result<Listening> {
            for line in BufReader::new(stdout).lines() {
                let line = line?;
                if let Some(json) = line.strip_prefix(READY) {
                    return Ok(serde_json::from_str(json)?);
                }
            }
            bail!("fleetd ended before it listened")
        });
        let listening = match tokio::time::timeout(Duration::from_secs(120), ready).await {
            Ok(joined) => joined??,
            Err(_) => {
                let _ = child.kill();
                bail!("fleetd did not listen within 120 s")
            }
        };
        let ca = IssuingCa::load(&data_dir.path().join("pki")).context("fleetd's issuing CA")?;
        let ca = std::sync::Arc::new(ca);
        Ok(Self {
            child,
            listening,
            ca,
            _data_dir: data_dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes fleetd's standard input (it shuts down) and waits for it, killing it after 30 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("fleetd exited with {status}");
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.child.kill()?;
        bail!("fleetd did not stop within 30 s")
    }
}

impl Drop for Fleetd {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
