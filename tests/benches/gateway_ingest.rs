//! Devices through the real gateway into Postgres, against this machine's Postgres ceilings, in
//! one run. A program that prints numbers, not a test.
//!
//!     TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!         cargo bench -p fleet-tests --bench gateway_ingest -- [devices] [records_per_device] [records_per_message]
//!
//! Defaults: 100 devices x 2,000 records, 50 records per message. An optional fourth argument,
//! messages per second per device, paces every device evenly below capacity (a latency run);
//! without it every device sends its burst at once (a throughput run: latency is then queueing).
//! Prints:
//! 1. end to end: committed records/s from the first publish to the last final ack, and the
//!    publish-to-commit latency of every message (the arrival of the first ack whose watermark
//!    covers the message's last seq, minus the moment the device published it): p50/p99/max;
//! 2. in the same run, on the same server, for the same row shape (the same CBOR telemetry body),
//!    the ceilings of fleet_tests::ceilings: INSERT ... unnest, 1,000 rows per transaction, forced
//!    RLS, as the application role with app.tenant_id set (the real ceiling: COPY is refused
//!    under RLS), 1 and 2 connections; ingest's own statement (store::ingest_state::save_with_new_records, without state rows); COPY into
//!    an identical table without RLS (the physical ceiling); the ratios ours / ceilings;
//! 3. ingest alone, in process (no TLS, no MQTT): the same devices' messages handed straight to
//!    ingest::start's sender, committed records/s until every device's last ack, so the gap
//!    between 1 and the ceiling splits into the gateway's share and ingest's;
//! 4. where the time went during the end-to-end phase: CPU of fleetd's runtime threads, the load
//!    generator's (two separate runtimes, so /proc tells them apart; rumqttd's router thread is
//!    among "other threads"), the PostgreSQL processes and the whole machine; what the application role
//!    sessions were doing (pg_stat_activity sampled every 2 ms); ingest's Prometheus metrics
//!    from fleetd's /metrics.
//!
//! Every simulated device sends what the agent sends: batches in an epoch of its own (a random
//! id, from seq 1) behind the sequence header (wire::encode_message), and takes only acks of
//! that epoch.
//!
//! Each simulated device keeps under the gateway's per-device publish limit (20 messages/s,
//! burst 200) with its own token bucket at 95% of it. With the defaults (40 messages per device)
//! that is the burst alone; the offered load is capped at devices x 19 x records_per_message
//! records/s once bursts are spent.
//!
//! `GATEWAY_BENCH_PERF=<file>`: runs `perf record -a` (cpu-clock) over the end-to-end phase only.
//! `GATEWAY_BENCH_INGEST=writers=6,batch_window_ms=5,batch_max_records=500`: ingest settings
//! other than the defaults, to compare them in runs of one build.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_tests::ceilings::{Ceiling, Insert};
use fleet_tests::mqtt::{connect_subscribed, DeviceCredentials};
use fleet_tests::records::{committed, telemetry_200_bytes};
use fleet_tests::TestDb;
use ingest::{AckError, AckSink, BoxFuture, InboundMessage};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use store::{DeviceId, TenantId};
use wire::{Batch, Epoch};

const TIMEOUT: Duration = Duration::from_secs(120);
/// The gateway's defaults (broker::config), with a margin.
const PUBLISH_RATE: f64 = 20.0 * 0.95;
const PUBLISH_BURST: f64 = 200.0 * 0.95;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let arg = |i: usize, default: u64| -> u64 {
        args.get(i)
            .map(|s| s.parse().expect("numeric argument"))
            .unwrap_or(default)
    };
    let device_count = arg(0, 100) as usize;
    let records = arg(1, 2000);
    let per_message = arg(2, 50);
    // Optional: messages per second per device, evenly paced (no burst); 0 = burst then 95% of the limit.
    let paced = arg(3, 0) as f64;
    assert!(
        per_message > 0 && records.is_multiple_of(per_message),
        "records_per_device must be a multiple of records_per_message"
    );
    assert!(
        per_message <= wire::limits::MAX_RECORDS_PER_BATCH as u64,
        "the sequence header spans at most {} records",
        wire::limits::MAX_RECORDS_PER_BATCH
    );

    // Two runtimes, so that /proc/self/task tells fleetd's CPU from the load generator's.
    let fleetd_rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fleetd-rt")
            .enable_all()
            .build()
            .expect("fleetd runtime"),
    );
    let loadgen_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loadgen-rt")
        .enable_all()
        .build()
        .expect("load generator runtime");
    loadgen_rt.block_on(run(
        fleetd_rt.clone(),
        device_count,
        records,
        per_message,
        paced,
    ));
    drop(loadgen_rt);
    if let Ok(rt) = Arc::try_unwrap(fleetd_rt) {
        rt.shutdown_timeout(Duration::from_secs(5));
    }
}

async fn run(
    fleetd_rt: Arc<tokio::runtime::Runtime>,
    device_count: usize,
    records: u64,
    per_message: u64,
    paced: f64,
) {
    let test_db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let mut config = fleetd::Config::on_ephemeral_loopback_ports(
        data_dir.path(),
        test_db.url().parse().expect("a postgres:// URL"),
    );
    tune_from_env(&mut config.ingest);
    let ingest_config = config.ingest.clone();
    let running = Arc::new(
        fleetd_rt
            .spawn(fleetd::start(config))
            .await
            .unwrap()
            .expect("fleetd starts"),
    );
    let server = if std::env::var("TEST_DATABASE_URL").is_ok() {
        "TEST_DATABASE_URL"
    } else {
        "private cluster (fsync off)"
    };
    println!(
        "gateway_ingest: {device_count} devices x {records} records, {per_message} per message, QoS1, mutual TLS; server: {server}"
    );
    println!(
        "ingest: batch_max_records {}, batch_window {:?}, writers {}; gateway limit 20 msg/s burst 200 per device (bench paces at 95%)",
        ingest_config.batch_max_records, ingest_config.batch_window, ingest_config.writers
    );

    // Devices in the store, certificates from fleetd's issuing CA, all connected before the clock starts.
    let tenant = {
        let running = running.clone();
        fleetd_rt
            .spawn(
                async move { fleet_tests::tenancy::tenant(&running.database().app, "bench").await },
            )
            .await
            .unwrap()
    };
    let creds = {
        let running = running.clone();
        fleetd_rt
            .spawn(async move { provision(&running, tenant, device_count).await })
            .await
            .unwrap()
    };
    let connect_started = Instant::now();
    let mut connected = Vec::new();
    for chunk in creds.chunks(16) {
        let mut handles = Vec::new();
        for device in chunk {
            let options = mqtt_options(&running, device);
            let id = device.device_id;
            handles.push(tokio::spawn(async move {
                let subscribed = connect_subscribed(options, wire::topic::ack(id), TIMEOUT).await;
                (id, subscribed)
            }));
        }
        for h in handles {
            connected.push(h.await.unwrap());
        }
    }
    println!(
        "{device_count} devices connected and subscribed in {:.2?}",
        connect_started.elapsed()
    );

    let sampler = tokio::spawn(sample_waits(test_db.connect_as_owner().await));
    let cpu_before = CpuSnapshot::take();
    let perf = start_perf();
    let start = Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = connected
        .into_iter()
        .map(|(device_id, (client, events))| {
            tokio::spawn(device(
                device_id,
                client,
                events,
                records,
                per_message,
                start,
                paced,
            ))
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let cpu_after = CpuSnapshot::take();
    stop_perf(perf);
    sampler.abort();
    let waits = sampler.await.err();
    drop(waits);

    let first_publish = results.iter().map(|r| r.publishes[0].0).min().unwrap();
    let last_ack = results.iter().map(|r| r.final_ack).max().unwrap();
    let elapsed = last_ack - first_publish;
    let total = device_count as u64 * records;
    let mut latencies = Vec::with_capacity((total / per_message) as usize);
    for r in &results {
        let mut acks = r.acks.iter().peekable();
        for (published, last_seq) in &r.publishes {
            while acks.peek().is_some_and(|(_, w)| w < last_seq) {
                acks.next();
            }
            let (at, _) = acks.peek().expect("an ack covers every message");
            latencies.push(at.saturating_duration_since(*published));
        }
    }
    latencies.sort();
    let q = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    let (count, distinct) = committed(&test_db, tenant).await;
    assert_eq!(
        (count, distinct),
        (total as i64, total as i64),
        "every record exactly once"
    );
    let ours = total as f64 / elapsed.as_secs_f64();
    println!();
    println!("end to end, first publish -> last final ack: {total} records in {elapsed:.2?}");
    println!("  committed records/s                     : {ours:>9.0}");
    println!(
        "  publish->commit-ack latency per message : p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} messages)",
        ms(q(0.50)),
        ms(q(0.99)),
        ms(*latencies.last().unwrap()),
        latencies.len()
    );
    cpu_before.report(&cpu_after, elapsed);
    print_waits();
    let metrics = fleet_tests::metrics::scrape_body(running.metrics_addr()).await;

    // Ceilings, same server, same row shape, after the end-to-end phase (nothing else running).
    let db = test_db.open().await;
    let ceiling_rows = (total as usize).div_ceil(10_000) * 10_000;
    let (ceiling_tenant, ceiling_devices) =
        fleet_tests::tenancy::tenant_with_devices(&db.app, "ceiling", 100).await;
    let body = fleet_tests::ceilings::stored_body(&test_db, tenant).await;
    println!();
    println!(
        "ceilings, {ceiling_rows} rows each, same {}-byte body:",
        body.len()
    );
    let ceiling = Ceiling {
        test_db: &test_db,
        app: &db.app,
        tenant: ceiling_tenant,
        devices: &ceiling_devices,
        rows: ceiling_rows,
        body: &body,
    };
    let rls = ceiling.unnest_rls(Insert::Bare, 1, 0).await;
    println!("  INSERT unnest, 1,000/tx, forced RLS, app role, 1 conn : {rls:>9.0} rows/s");
    let rls_ingest = ceiling.unnest_rls(Insert::Ingest, 1, 20_000_000).await;
    println!("  ingest's INSERT (save_with_new_records), 1 conn      : {rls_ingest:>9.0} rows/s");
    let rls2 = ceiling.unnest_rls(Insert::Bare, 2, 10_000_000).await;
    println!("  INSERT unnest, 1,000/tx, forced RLS, app role, 2 conns: {rls2:>9.0} rows/s");
    let copy = ceiling.copy_without_rls().await;
    println!("  COPY text, 10,000/tx, identical table without RLS     : {copy:>9.0} rows/s");

    let alone = ingest_alone(&db, device_count, records, per_message, ingest_config).await;
    println!();
    println!(
        "ingest alone, in process (no TLS, no MQTT), {device_count} devices x {records} records, {per_message} per message:"
    );
    println!(
        "  committed records/s                     : {:>9.0} (commit lag p50 <= {} ms, p99 <= {} ms)",
        alone.rate,
        alone.lag_p50 * 1000.0,
        alone.lag_p99 * 1000.0
    );
    db.close().await.expect("close the ceilings' pool");

    println!();
    println!(
        "committed / RLS ceiling (1 conn): {:.2}  (2 conns: {:.2}; ingest's INSERT: {:.2}; COPY: {:.2})",
        ours / rls,
        ours / rls2,
        ours / rls_ingest,
        ours / copy
    );
    println!(
        "ingest alone / RLS ceiling (1 conn): {:.2}; end to end / ingest alone: {:.2}",
        alone.rate / rls,
        ours / alone.rate
    );
    print_metrics(&metrics);

    let running = Arc::try_unwrap(running).ok().expect("no other owner");
    fleetd_rt
        .spawn(async move { running.shutdown().await })
        .await
        .unwrap()
        .unwrap();
}

/// Applies `GATEWAY_BENCH_INGEST` (see the file's docs) to `config`.
fn tune_from_env(config: &mut ingest::IngestConfig) {
    let Ok(settings) = std::env::var("GATEWAY_BENCH_INGEST") else {
        return;
    };
    for setting in settings.split(',').filter(|s| !s.is_empty()) {
        let (key, value) = setting
            .split_once('=')
            .expect("GATEWAY_BENCH_INGEST: key=value,...");
        let value: u64 = value.parse().expect("GATEWAY_BENCH_INGEST: numeric values");
        match key {
            "writers" => config.writers = value as usize,
            "batch_window_ms" => config.batch_window = Duration::from_millis(value),
            "batch_max_records" => config.batch_max_records = value as usize,
            other => panic!("GATEWAY_BENCH_INGEST: unknown setting {other}"),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct DeviceResult {
    /// (published at, last seq of the message)
    publishes: Vec<(Instant, u64)>,
    /// (arrived at, watermark), in arrival order
    acks: Vec<(Instant, u64)>,
    final_ack: Instant,
}

async fn device(
    device_id: wire::DeviceId,
    client: AsyncClient,
    mut events: EventLoop,
    records: u64,
    per_message: u64,
    start: Instant,
    paced: f64,
) -> DeviceResult {
    // The agent's outbox: a random non-zero epoch id, counting from seq 1.
    let epoch = Epoch {
        id: uuid::Uuid::new_v4().as_u64_pair().0.max(1),
        first_seq: 1,
    };
    let (rate, burst) = if paced > 0.0 {
        assert!(paced <= PUBLISH_RATE, "keep under the gateway's limit");
        (paced, 1.0)
    } else {
        (PUBLISH_RATE, PUBLISH_BURST)
    };
    // The event loop drives the connection (publishes go out from here) and collects acks.
    let poller = tokio::spawn(async move {
        let mut acks = Vec::new();
        tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Event::Incoming(Packet::Publish(publish)) =
                    events.poll().await.expect("connection stays up")
                {
                    let at = Instant::now();
                    let ack = wire::decode_ack(&publish.payload).expect("an ack");
                    assert!(!ack.new_epoch, "no reused seqs in a fresh epoch");
                    if ack.epoch != Some(epoch.id) {
                        continue;
                    }
                    acks.push((at, ack.watermark));
                    if ack.watermark >= records {
                        return;
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no final ack in time"));
        (acks, events)
    });
    tokio::time::sleep_until(start.into()).await;
    let topic = wire::topic::telemetry(device_id);
    let mut publishes = Vec::with_capacity((records / per_message) as usize);
    // Devices start spread over one pacing interval, not in lockstep.
    if paced > 0.0 {
        let offset = (device_id.0.as_u128() % 1000) as f64 / 1000.0 / rate;
        tokio::time::sleep(Duration::from_secs_f64(offset)).await;
    }
    let mut tokens = burst;
    let mut refilled = Instant::now();
    for first in (1..=records).step_by(per_message as usize) {
        let now = Instant::now();
        tokens = (tokens + (now - refilled).as_secs_f64() * rate).min(burst);
        refilled = now;
        if tokens < 1.0 {
            tokio::time::sleep(Duration::from_secs_f64((1.0 - tokens) / rate)).await;
            tokens = 1.0;
            refilled = Instant::now();
        }
        tokens -= 1.0;
        let last = first + per_message - 1;
        let payload = wire::encode_message(&Batch::in_epoch(
            (first..=last).map(telemetry_200_bytes).collect(),
            epoch,
        ));
        publishes.push((Instant::now(), last));
        client
            .publish(&topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let (acks, _events) = poller.await.unwrap();
    let final_ack = acks.last().unwrap().0;
    drop(client);
    DeviceResult {
        publishes,
        acks,
        final_ack,
    }
}

// ---- provisioning and MQTT (as tests/tests/device_e2e.rs) ----

async fn provision(
    running: &fleetd::Running,
    tenant: TenantId,
    n: usize,
) -> Vec<DeviceCredentials> {
    let ids = fleet_tests::tenancy::add_devices(&running.database().app, tenant, "sim-", n).await;
    let ca = &running.pki().issuing_ca;
    ids.into_iter()
        .map(|id| DeviceCredentials::issued(ca, tenant, id))
        .collect()
}

/// `device`'s options for fleetd's embedded broker, with a keep-alive that outlasts a loaded
/// machine's stalls.
fn mqtt_options(running: &fleetd::Running, device: &DeviceCredentials) -> MqttOptions {
    let addr = running.broker_addr().expect("the embedded broker");
    let mut options = device.options(
        running.pki().issuing_ca.root_der(),
        addr.ip().to_string(),
        addr.port(),
    );
    options.set_keep_alive(Duration::from_secs(60));
    options
}

// ---- where the CPU went ----

/// CPU ticks (utime + stime) by consumer, and the machine's busy/idle ticks.
struct CpuSnapshot {
    threads: BTreeMap<String, u64>,
    postgres: BTreeMap<u32, u64>,
    machine_busy: u64,
    machine_total: u64,
}

fn stat_ticks(path: &str) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let fields: Vec<&str> = text[close + 2..].split(' ').collect();
    // fields[0] is state (field 3); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

impl CpuSnapshot {
    fn take() -> Self {
        let mut threads = BTreeMap::new();
        for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let path = format!("{}/stat", entry.path().display());
            if let Some((comm, ticks)) = stat_ticks(&path) {
                let group = if comm.starts_with("fleetd-rt") {
                    "fleetd runtime"
                } else if comm.starts_with("loadgen-rt") {
                    "load generator runtime"
                } else {
                    "other threads of the bench process"
                };
                *threads.entry(group.to_owned()).or_default() += ticks;
            }
        }
        let mut postgres = BTreeMap::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some((comm, ticks)) = stat_ticks(&format!("/proc/{pid}/stat")) {
                if comm.starts_with("postgres") {
                    postgres.insert(pid, ticks);
                }
            }
        }
        let cpu = std::fs::read_to_string("/proc/stat").unwrap();
        let line: Vec<u64> = cpu
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total: u64 = line.iter().take(8).sum();
        let idle = line[3] + line[4];
        Self {
            threads,
            postgres,
            machine_busy: total - idle,
            machine_total: total,
        }
    }

    fn report(&self, after: &CpuSnapshot, wall: Duration) {
        let hz = 100.0;
        let secs = |ticks: u64| ticks as f64 / hz;
        println!(
            "CPU during the end-to-end phase ({:.2} s wall, 2 cores = {:.2} core-s):",
            wall.as_secs_f64(),
            2.0 * wall.as_secs_f64()
        );
        for (group, ticks) in &after.threads {
            let before = self.threads.get(group).copied().unwrap_or(0);
            println!("  {group:<36}: {:>6.2} core-s", secs(ticks - before));
        }
        let pg: u64 = after
            .postgres
            .iter()
            .map(|(pid, t)| t - self.postgres.get(pid).copied().unwrap_or(0).min(*t))
            .sum();
        println!(
            "  {:<36}: {:>6.2} core-s",
            "postgres processes (all)",
            secs(pg)
        );
        let busy = after.machine_busy - self.machine_busy;
        let total = after.machine_total - self.machine_total;
        println!(
            "  {:<36}: {:>6.2} core-s busy of {:.2} ({:.0}% of both cores; includes other jobs on the machine)",
            "machine (/proc/stat)",
            secs(busy),
            secs(total),
            100.0 * busy as f64 / total.max(1) as f64
        );
    }
}

fn start_perf() -> Option<std::process::Child> {
    let file = std::env::var("GATEWAY_BENCH_PERF").ok()?;
    let child = std::process::Command::new("perf")
        .args([
            "record",
            "-a",
            "-e",
            "cpu-clock",
            "-F",
            "999",
            "-g",
            "-o",
            &file,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(500));
    Some(child)
}

fn stop_perf(perf: Option<std::process::Child>) {
    if let Some(mut child) = perf {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
}

// ---- what fleetd's database sessions were doing ----

static WAITS: std::sync::Mutex<BTreeMap<String, u64>> = std::sync::Mutex::new(BTreeMap::new());
static SAMPLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Every 2 ms: the state and wait event of the application role's sessions in this database.
async fn sample_waits(mut owner: sqlx::PgConnection) {
    loop {
        let rows: Vec<(String, Option<String>, Option<String>, String)> = sqlx::query_as(
            "SELECT coalesce(state, ''), wait_event_type, wait_event, left(regexp_replace(query, '\\s+', ' ', 'g'), 40)
             FROM pg_stat_activity WHERE datname = current_database() AND usename = public.fleet_app_role()",
        )
        .fetch_all(&mut owner)
        .await
        .unwrap_or_default();
        SAMPLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut waits = WAITS.lock().unwrap();
            for (state, wtype, wevent, query) in rows {
                let key = match (state.as_str(), wtype, wevent) {
                    ("active", None, _) => format!("active on CPU   | {query}"),
                    ("active", Some(t), Some(e)) => format!("active, {t}:{e} | {query}"),
                    (s, _, _) => s.to_owned(),
                };
                *waits.entry(key).or_default() += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn print_waits() {
    let samples = SAMPLES.load(std::sync::atomic::Ordering::Relaxed).max(1) as f64;
    let waits = WAITS.lock().unwrap();
    let mut sorted: Vec<_> = waits.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1));
    println!(
        "application role sessions in pg_stat_activity, {samples} samples (mean sessions in each state):"
    );
    for (key, n) in sorted.into_iter().take(12) {
        println!("  {:>5.2}  {key}", *n as f64 / samples);
    }
}

// ---- fleetd's /metrics ----

/// Counters as they are; histograms as count, mean and bucket quantiles.
fn print_metrics(text: &str) {
    println!();
    println!("fleetd /metrics (ingest) after the end-to-end phase:");
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("fleet_ingest_")) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(f64::NAN);
        if key.contains("_bucket{") {
            continue;
        } else if let Some(name) = key.strip_suffix("_sum") {
            sums.insert(name.to_owned(), value);
        } else if key.ends_with("_count") || value == 0.0 {
            continue;
        } else {
            println!("  {key} {value}");
        }
    }
    for (name, buckets) in histograms(text, "fleet_ingest_") {
        let count = buckets.last().map(|b| b.1).unwrap_or(0.0);
        if count == 0.0 {
            continue;
        }
        let sum = sums.get(&name).copied().unwrap_or(f64::NAN);
        println!(
            "  {name}: count {count}, sum {sum:.3}, mean {:.4}, p50 <= {}, p99 <= {}",
            sum / count,
            quantile(&buckets, 0.5),
            quantile(&buckets, 0.99)
        );
    }
}

/// The histograms whose names start with `prefix` in exposition `text`: name -> (upper bound,
/// cumulative count), sorted by bound (series of one name with other labels are added up).
fn histograms(text: &str, prefix: &str) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut histograms: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with(prefix)) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, _)) = key.split_once("_bucket{") else {
            continue;
        };
        let le = key
            .split("le=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("+Inf");
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        histograms
            .entry(name.to_owned())
            .or_default()
            .push((le, value.parse().unwrap_or(f64::NAN)));
    }
    for buckets in histograms.values_mut() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Labelled series of one name: add up the counts of equal bounds.
        buckets.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 += later.1;
            }
            same
        });
    }
    histograms
}

/// The upper bound of the first bucket holding the `q` quantile.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let count = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets
        .iter()
        .find(|b| b.1 >= q * count)
        .map(|b| b.0)
        .unwrap_or(f64::NAN)
}

// ---- ingest alone, in process ----

struct Alone {
    rate: f64,
    lag_p50: f64,
    lag_p99: f64,
}

/// The last watermark acked to each device, in the device's epoch.
#[derive(Clone, Default)]
struct LastAcks(Arc<Mutex<HashMap<DeviceId, u64>>>);

impl AckSink for LastAcks {
    fn publish_ack(
        &self,
        device: DeviceId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), AckError>> {
        let ack = wire::decode_ack(&payload).map_err(|e| AckError(e.to_string()));
        if let Ok(ack) = &ack {
            self.0.lock().unwrap().insert(device, ack.watermark);
        }
        Box::pin(async move { ack.map(|_| ()) })
    }
}

/// `device_count` new devices of a new tenant, each sending `records` records in messages of
/// `per_message` (headed, in an epoch of its own) straight into ingest's sender with fleetd's
/// ingest settings, as fast as ingest takes them; committed records/s until every device's last
/// ack is its last seq, and ingest's commit lag.
async fn ingest_alone(
    db: &store::Database,
    device_count: usize,
    records: u64,
    per_message: u64,
    config: ingest::IngestConfig,
) -> Alone {
    let (_, devices) =
        fleet_tests::tenancy::tenant_with_devices(&db.app, "alone", device_count).await;
    let sink = LastAcks::default();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ingest::Metrics::register(&mut registry);
    let (sender, handle) = ingest::start(
        config,
        db.app.clone(),
        Arc::new(sink.clone()),
        metrics.clone(),
    )
    .expect("ingest starts");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for device in devices.iter().copied() {
        let sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let epoch = Epoch {
                id: uuid::Uuid::new_v4().as_u64_pair().0.max(1),
                first_seq: 1,
            };
            let topic = wire::topic::telemetry(device);
            for first in (1..=records).step_by(per_message as usize) {
                let batch = Batch::in_epoch(
                    (first..first + per_message)
                        .map(telemetry_200_bytes)
                        .collect(),
                    epoch,
                );
                let payload = wire::encode_message(&batch);
                sender
                    .send(InboundMessage::new(topic.clone(), payload))
                    .await
                    .expect("ingest takes the message");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let deadline = Instant::now() + TIMEOUT;
    while !devices
        .iter()
        .all(|d| sink.0.lock().unwrap().get(d) == Some(&records))
    {
        assert!(
            Instant::now() < deadline,
            "ingest alone: no final acks in time"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let committed = metrics.records_committed_total();
    assert_eq!(
        committed,
        device_count as u64 * records,
        "every record once"
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("exposition");
    handle.shutdown().await;
    let lag = histograms(&text, "fleet_ingest_commit_lag_seconds")
        .remove("fleet_ingest_commit_lag_seconds")
        .unwrap_or_default();
    Alone {
        rate: committed as f64 / elapsed,
        lag_p50: quantile(&lag, 0.5),
        lag_p99: quantile(&lag, 0.99),
    }
}
