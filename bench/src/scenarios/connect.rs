//! connect-storm and idle-fleet: simulated devices connecting over mutual TLS ([`sim::connect`])
//! to fleetd's gateway and, with the same certificates from the same program, to Mosquitto.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_tests::mqtt::DeviceCredentials;
use rustls::pki_types::CertificateDer;
use tokio::sync::Semaphore;

use crate::fleetd_child::ServeOptions;
use crate::report::{self, Figure, Report};
use crate::run::{Meter, Run};
use crate::sim::{self, Connected};

#[derive(Debug, clap::Args)]
pub struct StormArgs {
    /// Devices that connect at once.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Skip the Mosquitto run.
    #[arg(long)]
    no_mosquitto: bool,
}

#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// Fleet sizes, measured one after another on one fleetd.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    devices: Vec<usize>,
    /// How long the fleet stays idle before its memory is read.
    #[arg(long, default_value_t = 10)]
    settle_seconds: u64,
    /// Skip the Mosquitto run.
    #[arg(long)]
    no_mosquitto: bool,
}

/// Connections in progress at once while an idle fleet builds up (a storm has no such bound).
const IDLE_CONNECTS_AT_ONCE: usize = 256;
/// File descriptors this process keeps for itself besides one per connection.
const SPARE_FILES: u64 = 512;

/// One simulated device as a connection needs it.
struct Device {
    client_id: String,
    source: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

fn devices(root: &CertificateDer<'static>, credentials: &[DeviceCredentials]) -> Vec<Device> {
    credentials
        .iter()
        .enumerate()
        .map(|(n, device)| Device {
            client_id: device.device_id.to_string(),
            source: sim::source_address(n),
            tls: sim::tls_config(root, device),
        })
        .collect()
}

/// What one wave of connections did.
struct Wave {
    resumed: usize,
    /// Attempts refused (and retried after the agent's backoff).
    retries: usize,
    /// Devices that had not connected after [`GIVE_UP_AFTER`].
    failures: usize,
    first_failure: Option<String>,
    elapsed: Duration,
    /// Connect-to-CONNACK of every connection that made it, shortest first.
    latencies: Vec<Duration>,
}

impl Wave {
    /// Devices that connected.
    fn connected(&self) -> usize {
        self.latencies.len()
    }

    fn rate(&self) -> f64 {
        self.connected() as f64 / self.elapsed.as_secs_f64()
    }

    fn latency_ms(&self, q: f64) -> f64 {
        report::quantile_ms(&self.latencies, q)
    }

    fn describe(&self, broker: &str, what: &str, n: usize) -> String {
        format!(
            "{broker} {what}: {} of {n} connected in {:.1} s, {} resumed, {} attempts refused and retried, {} failed{}",
            self.connected(),
            self.elapsed.as_secs_f64(),
            self.resumed,
            self.retries,
            self.failures,
            self.first_failure
                .as_deref()
                .map_or(String::new(), |f| format!(" (first: {f})"))
        )
    }
}

/// The agent's reconnect backoff (edge-agent's defaults: from 1 s, doubling, equal jitter).
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// How long a device keeps trying before it counts as failed.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// A connection as the agent makes it: on a refusal (the gateway sheds handshakes beyond its
/// limits by closing them), it waits its backoff and tries again, until [`GIVE_UP_AFTER`].
/// The connection's `took` runs from the first attempt; returns the attempts too.
async fn connect_as_the_agent(
    server: SocketAddr,
    source: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    id: &str,
) -> (anyhow::Result<Connected>, u32) {
    let started = Instant::now();
    let mut backoff = BACKOFF_INITIAL;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = GIVE_UP_AFTER.saturating_sub(started.elapsed());
        let attempt = tokio::time::timeout(left, sim::connect(server, source, tls.clone(), id))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no CONNACK within {GIVE_UP_AFTER:?}")));
        match attempt {
            Ok(mut connected) => {
                connected.took = started.elapsed();
                return (Ok(connected), attempts);
            }
            Err(error) if started.elapsed() + backoff >= GIVE_UP_AFTER => {
                return (Err(error), attempts)
            }
            Err(_) => {
                // Equal jitter: half the backoff fixed, half random.
                let random = (uuid::Uuid::new_v4().as_u128() >> 64) as f64 / u64::MAX as f64;
                tokio::time::sleep(backoff.mul_f64(0.5 + 0.5 * random)).await;
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
        }
    }
}

/// Connects every device to `server`, at most `at_once` in progress; returns the wave and the
/// open connections.
async fn wave(
    server: SocketAddr,
    devices: &[Device],
    at_once: usize,
    label: &str,
) -> (Wave, Vec<Connected>) {
    let bar = report::progress(devices.len() as u64, label);
    let permits = Arc::new(Semaphore::new(at_once.max(1)));
    let started = Instant::now();
    let tasks: Vec<_> = devices
        .iter()
        .map(|device| {
            let (permits, bar) = (permits.clone(), bar.clone());
            let (tls, source, id) = (device.tls.clone(), device.source, device.client_id.clone());
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let connected = connect_as_the_agent(server, source, tls, &id).await;
                bar.inc(1);
                connected
            })
        })
        .collect();
    let mut connections = Vec::with_capacity(devices.len());
    let mut wave = Wave {
        resumed: 0,
        retries: 0,
        failures: 0,
        first_failure: None,
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(devices.len()),
    };
    for task in tasks {
        let failure = match task.await {
            Ok((connected, attempts)) => {
                wave.retries += attempts as usize - 1;
                match connected {
                    Ok(connected) => {
                        wave.latencies.push(connected.took);
                        wave.resumed += usize::from(connected.resumed);
                        connections.push(connected);
                        continue;
                    }
                    Err(error) => format!("{error:#}"),
                }
            }
            Err(panic) => panic.to_string(),
        };
        wave.failures += 1;
        wave.first_failure.get_or_insert(failure);
    }
    wave.elapsed = started.elapsed();
    wave.latencies.sort();
    bar.finish_and_clear();
    (wave, connections)
}

async fn disconnect_all(connections: Vec<Connected>) {
    let closing: Vec<_> = connections
        .into_iter()
        .map(|c| tokio::spawn(sim::disconnect(c.stream)))
        .collect();
    for close in closing {
        let _ = close.await;
    }
}

/// A broker the devices connect to.
struct Broker {
    name: &'static str,
    addr: SocketAddr,
    pid: u32,
}

/// A storm (every device at once, full handshakes) and the reconnection that follows it
/// (each device offering its session from the storm) against `broker`.
async fn storm_against(broker: &Broker, devices: &[Device]) -> (Wave, Wave) {
    let n = devices.len();
    let (full, connections) =
        wave(broker.addr, devices, n, &format!("{}: storm", broker.name)).await;
    eprintln!("{}", full.describe(broker.name, "storm", n));
    disconnect_all(connections).await;
    // Let the broker finish closing before the same identities come back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (again, connections) = wave(
        broker.addr,
        devices,
        n,
        &format!("{}: reconnect", broker.name),
    )
    .await;
    eprintln!("{}", again.describe(broker.name, "reconnect", n));
    disconnect_all(connections).await;
    (full, again)
}

/// `connect-storm`.
pub async fn storm(run: &Run, args: StormArgs) -> anyhow::Result<Report> {
    let n = args.devices;
    let mut report = run.report("connect-storm");
    report.rate_unit = "connections/s";
    let fleetd = run.fleetd(&ServeOptions::default()).await?;
    let db = run.test_db.open().await;
    eprintln!("provisioning {n} devices (keys, certificates)");
    let (_tenant, credentials) =
        sim::provision(&run.test_db, &db.app, &fleetd.ca, "connect-storm", n).await;
    let ours = Broker {
        name: "fleetd",
        addr: fleetd.listening.broker,
        pid: fleetd.pid(),
    };
    let meter = Meter::start(ours.pid);
    let (full, again) = storm_against(&ours, &devices(fleetd.ca.root_der(), &credentials)).await;
    report.resources = Some(meter.stop());
    for (wave, what) in [(&full, "storm"), (&again, "reconnect")] {
        report.require(wave.failures == 0, || wave.describe("fleetd", what, n));
    }

    let peer = if args.no_mosquitto {
        None
    } else {
        let dir = tempfile::tempdir()?;
        let mosquitto = fleet_tests::mosquitto::start_mosquitto(dir.path(), &fleetd.ca).await;
        let broker = Broker {
            name: "Mosquitto",
            addr: SocketAddr::from(([127, 0, 0, 1], mosquitto.port)),
            pid: mosquitto.pid(),
        };
        let meter = Meter::start(broker.pid);
        let waves = storm_against(&broker, &devices(fleetd.ca.root_der(), &credentials)).await;
        let used = meter.stop();
        report.notes.push(format!(
            "Mosquitto over both waves: {:.2} CPU s, peak RSS {:.1} MiB",
            used.fleetd_cpu_seconds, used.fleetd_peak_rss_mib
        ));
        Some(waves)
    };
    let mosquitto = mosquitto_version();
    let row = |what: &str, unit: &'static str, of: &dyn Fn(&Wave, &Wave) -> f64| {
        let figure = Figure::ours(what, unit, of(&full, &again));
        match &peer {
            Some((p_full, p_again)) => figure.against(mosquitto.clone(), of(p_full, p_again)),
            None => figure,
        }
    };
    report.push(row("devices connected, storm", "devices", &|f, _| {
        f.connected() as f64
    }));
    report.push(row(
        "attempts refused and retried, storm",
        "attempts",
        &|f, _| f.retries as f64,
    ));
    report.push(row("devices never connected, storm", "devices", &|f, _| {
        f.failures as f64
    }));
    report.push(row("handshakes/s, storm (full)", "/s", &|f, _| f.rate()));
    report.push(row("connect p50, storm", "ms", &|f, _| f.latency_ms(0.5)));
    report.push(row("connect p90, storm", "ms", &|f, _| f.latency_ms(0.9)));
    report.push(row("connect p99, storm", "ms", &|f, _| f.latency_ms(0.99)));
    report.push(row("connect max, storm", "ms", &|f, _| f.latency_ms(1.0)));
    report.push(row("reconnects resumed", "connections", &|_, a| {
        a.resumed as f64
    }));
    report.push(row("handshakes/s, reconnect", "/s", &|_, a| a.rate()));
    report.push(row(
        "attempts refused and retried, reconnect",
        "attempts",
        &|_, a| a.retries as f64,
    ));
    report.push(row("connect p99, reconnect", "ms", &|_, a| {
        a.latency_ms(0.99)
    }));
    if again.resumed < n / 2 {
        report.notes.push(format!(
            "only {} of {n} reconnects resumed: the gateway keeps rustls's default server session \
             store (256 sessions in memory, no ticketer): a storm's sessions overflow it, and \
             the reconnect wave's own first full handshakes evict what was left",
            again.resumed
        ));
    }
    report.notes.push(format!(
        "{n} devices, 100 per loopback source address, each with its own key and certificate; \
         from the first TCP connect to CONNACK, refused attempts retried with the agent's backoff \
         (1 s, doubling, equal jitter); handshakes/s = devices connected / time until the last; fleetd's gateway at its defaults (TLS 1.3), Mosquitto as \
         fleet_tests::mosquitto configures it (TLS 1.2 only, require_certificate)"
    ));
    db.close().await?;
    fleetd.stop().await?;
    Ok(report)
}

/// `idle-fleet`.
pub async fn idle(run: &Run, args: IdleArgs) -> anyhow::Result<Report> {
    let mut report = run.report("idle-fleet");
    let fleetd = run.fleetd(&ServeOptions::default()).await?;
    let db = run.test_db.open().await;
    let open_files = run.open_files_limit();
    let largest = args.devices.iter().copied().max().unwrap_or(0);
    let measurable = |n: usize| n as u64 + SPARE_FILES <= open_files;
    let provisioned = args
        .devices
        .iter()
        .copied()
        .filter(|n| measurable(*n))
        .max()
        .unwrap_or(0);
    eprintln!("provisioning {provisioned} devices (keys, certificates)");
    let (_tenant, credentials) =
        sim::provision(&run.test_db, &db.app, &fleetd.ca, "idle-fleet", provisioned).await;
    let mosquitto_dir = tempfile::tempdir()?;
    let mosquitto = if args.no_mosquitto {
        None
    } else {
        Some(fleet_tests::mosquitto::start_mosquitto(mosquitto_dir.path(), &fleetd.ca).await)
    };
    let settle = Duration::from_secs(args.settle_seconds);
    let meter = Meter::start(fleetd.pid());
    for &n in &args.devices {
        let what = format!("RSS per idle device, {n} devices");
        if !measurable(n) {
            report.push(
                Figure::unmeasured(
                    what,
                    "KiB",
                    format!(
                        "this machine allows {open_files} open files per process \
                         (RLIMIT_NOFILE hard limit, no CAP_SYS_RESOURCE to raise it); {n} \
                         connections need more in the load and in the broker"
                    ),
                )
                .against("goal", 16.0),
            );
            continue;
        }
        let devices = devices(fleetd.ca.root_der(), &credentials[..n]);
        let ours = Broker {
            name: "fleetd",
            addr: fleetd.listening.broker,
            pid: fleetd.pid(),
        };
        let (per_device, wave) = idle_against(&ours, &devices, settle).await;
        report.require(wave.failures == 0, || {
            wave.describe("fleetd", "idle fleet", n)
        });
        let mut figure = Figure::ours(what, "KiB", per_device);
        if let Some(mosquitto) = &mosquitto {
            let peer = Broker {
                name: "Mosquitto",
                addr: SocketAddr::from(([127, 0, 0, 1], mosquitto.port)),
                pid: mosquitto.pid(),
            };
            let (theirs, _) = idle_against(&peer, &devices, settle).await;
            figure = figure.against(mosquitto_version(), theirs);
        }
        report.push(figure.note("goal: at most 16 KiB"));
    }
    report.resources = Some(meter.stop());
    report.notes.push(format!(
        "RSS of the broker's process with every device connected and idle for {} s, minus its \
         RSS before they connected, over the number of devices; {IDLE_CONNECTS_AT_ONCE} \
         connects at once; keep-alive 900 s; largest size asked: {largest}",
        args.settle_seconds
    ));
    db.close().await?;
    fleetd.stop().await?;
    Ok(report)
}

/// KiB of `broker`'s RSS per connected idle device, and how the fleet connected.
async fn idle_against(broker: &Broker, devices: &[Device], settle: Duration) -> (f64, Wave) {
    let n = devices.len();
    let before = crate::procfs::rss_kib(broker.pid);
    let label = format!("{}: {n} idle", broker.name);
    let (wave, connections) = wave(broker.addr, devices, IDLE_CONNECTS_AT_ONCE, &label).await;
    eprintln!("{}", wave.describe(broker.name, "idle fleet", n));
    tokio::time::sleep(settle).await;
    let after = crate::procfs::rss_kib(broker.pid);
    let connected = connections.len().max(1);
    disconnect_all(connections).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    (after.saturating_sub(before) as f64 / connected as f64, wave)
}

/// "Mosquitto <version>" as the installed broker says it.
pub fn mosquitto_version() -> String {
    std::process::Command::new("mosquitto")
        .arg("-h")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .and_then(|line| {
                    line.split_whitespace()
                        .find(|w| w.starts_with(char::is_numeric))
                })
                .map(|v| format!("Mosquitto {v}"))
        })
        .unwrap_or_else(|| "Mosquitto".into())
}
