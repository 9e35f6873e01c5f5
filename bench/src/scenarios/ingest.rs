//! `ingest`: devices send telemetry at increasing offered rates, one fixed-length step each,
//! until publish-to-commit p99 passes the bound or fleetd commits less than it is offered; then
//! half the highest sustained rate for the latency goal. In the same run: the database tier
//! (this PostgreSQL's ceilings for the same rows, fleet_tests::ceilings) and the broker tier
//! (the most QoS 1 messages a second fleetd commits, against what Mosquitto delivers to one
//! subscriber, the same devices publishing through the same program).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_tests::ceilings::{Ceiling, Insert};
use fleet_tests::mqtt::DeviceCredentials;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use rustls::pki_types::CertificateDer;

use crate::fleetd_child::ServeOptions;
use crate::report::{self, Figure, Report, Sample};
use crate::run::{Meter, Run};
use crate::session::{ConnectedFleet, Session, Tally};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Devices sending telemetry.
    #[arg(long, default_value_t = 200)]
    devices: usize,
    /// Telemetry records (about 200 bytes each) per message.
    #[arg(long, default_value_t = 50)]
    records_per_message: u64,
    /// Offered rates in records/s, one step each, lowest first.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5000,10000,20000,30000,35000,40000,45000,50000,55000,60000,70000,80000,90000,100000"
    )]
    rates: Vec<u64>,
    /// Length of each step.
    #[arg(long, default_value_t = 10)]
    step_seconds: u64,
    /// A step is sustained while its publish-to-commit p99 stays under this.
    #[arg(long, default_value_t = 100.0)]
    p99_bound_ms: f64,
    /// Rows of each database ceiling.
    #[arg(long, default_value_t = 200_000)]
    ceiling_rows: usize,
    /// Devices of the broker tier (each publishing one-record messages as fast as it can).
    #[arg(long, default_value_t = 100)]
    broker_devices: usize,
    /// Length of the broker tier's run on each broker.
    #[arg(long, default_value_t = 10)]
    broker_seconds: u64,
    /// Skip the Mosquitto run of the broker tier.
    #[arg(long)]
    no_mosquitto: bool,
}

/// The gateway's per-device publish limit (20 messages/s), with a margin.
const PER_DEVICE_MESSAGES_PER_SECOND: f64 = 19.0;
/// The start of a step that is not measured (pacing settles, the first acks arrive).
const WARM_UP: Duration = Duration::from_secs(1);
/// How long a step's last messages may take to commit before they count as not committed.
const DRAIN: Duration = Duration::from_secs(5);
/// A step is sustained while fleetd commits at least this share of what it is offered.
const SUSTAINED_SHARE: f64 = 0.95;

/// One step's result.
#[derive(Debug, Clone, Copy)]
struct Step {
    offered: f64,
    committed: f64,
    published: usize,
    uncommitted: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Cores busy over the measured part of the step: fleetd, PostgreSQL, the load.
    cores: (f64, f64, f64),
}

impl Step {
    fn sustained(&self, bound_ms: f64) -> bool {
        self.p99_ms <= bound_ms && self.committed >= SUSTAINED_SHARE * self.offered
    }
}

/// Offers `offered` records/s for `length` from every session, evenly paced; fleetd is process
/// `fleetd`.
async fn step(
    fleetd: u32,
    sessions: Vec<Session>,
    tally: &Arc<Tally>,
    per_message: u64,
    offered: f64,
    length: Duration,
) -> (Vec<Session>, Step) {
    let n = sessions.len();
    let per_device = offered / (n as f64 * per_message as f64);
    let period = Duration::from_secs_f64(1.0 / per_device);
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + length;
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, mut session)| {
            // Devices spread over one period, not in lockstep.
            let first = start + period.mul_f64(i as f64 / n as f64);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval_at(first.into(), period);
                let mut published = 0usize;
                loop {
                    ticks.tick().await;
                    if Instant::now() >= end {
                        return (session, published);
                    }
                    if session.publish_telemetry(per_message).await.is_ok() {
                        published += 1;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep_until((start + WARM_UP).into()).await;
    let committed_at_warm = tally.committed.load(Ordering::Relaxed);
    let meter = Meter::start(fleetd);
    tokio::time::sleep_until(end.into()).await;
    let committed_at_end = tally.committed.load(Ordering::Relaxed);
    let cores = meter.stop().cores();
    let mut sessions = Vec::with_capacity(n);
    let mut published = 0;
    for task in tasks {
        let (session, count) = task.await.expect("a device's step");
        published += count;
        sessions.push(session);
    }
    let drained = end + DRAIN;
    while Instant::now() < drained && sessions.iter().any(|s| s.uncommitted() > 0) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let measured_from = start + WARM_UP;
    let mut latencies = tally.latencies(measured_from, end);
    let in_window = ((published as f64) * (length - WARM_UP).as_secs_f64() / length.as_secs_f64())
        .round() as usize;
    let uncommitted = sessions.iter().map(Session::uncommitted).sum();
    // Messages still uncommitted count with the longest wait they could have had.
    latencies.extend(std::iter::repeat_n(DRAIN + length, uncommitted));
    latencies.sort();
    let result = Step {
        offered,
        committed: (committed_at_end - committed_at_warm) as f64 / (length - WARM_UP).as_secs_f64(),
        published: in_window,
        uncommitted,
        p50_ms: report::quantile_ms(&latencies, 0.5),
        p90_ms: report::quantile_ms(&latencies, 0.9),
        p99_ms: report::quantile_ms(&latencies, 0.99),
        max_ms: report::quantile_ms(&latencies, 1.0),
        cores,
    };
    (sessions, result)
}

fn describe(step: &Step) -> String {
    format!(
        "offered {:.0} records/s: committed {:.0}/s, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} of ~{} messages uncommitted after the drain; cores busy: fleetd {:.2}, PostgreSQL {:.2}, load {:.2}",
        step.offered,
        step.committed,
        step.p50_ms,
        step.p90_ms,
        step.p99_ms,
        step.max_ms,
        step.uncommitted,
        step.published,
        step.cores.0,
        step.cores.1,
        step.cores.2
    )
}

/// One point a second over the whole stepped run: records committed in that second, and the
/// p99 of the messages committed in it.
fn series(tally: &Tally, samples: &[(Instant, u64)], origin: Instant) -> Vec<Sample> {
    let messages = tally.messages.lock().unwrap();
    samples
        .windows(2)
        .map(|pair| {
            let ((from, before), (to, after)) = (pair[0], pair[1]);
            let mut latencies: Vec<Duration> = messages
                .iter()
                .filter(|(_, committed)| (from..to).contains(committed))
                .map(|(published, committed)| *committed - *published)
                .collect();
            latencies.sort();
            Sample {
                t_seconds: (to - origin).as_secs_f64(),
                rate: (after - before) as f64 / (to - from).as_secs_f64(),
                p99_ms: (!latencies.is_empty()).then(|| report::quantile_ms(&latencies, 0.99)),
            }
        })
        .collect()
}

pub async fn run(run: &Run, args: Args) -> anyhow::Result<Report> {
    let mut report = run.report("ingest");
    let highest_offer = args.rates.iter().copied().max().unwrap_or(0) as f64;
    let highest_per_device =
        highest_offer / (args.devices as f64 * args.records_per_message as f64);
    anyhow::ensure!(
        highest_per_device <= PER_DEVICE_MESSAGES_PER_SECOND,
        "{highest_offer} records/s from {} devices is {highest_per_device:.1} messages/s each, above the gateway's per-device limit (20/s): use more devices or more records per message",
        args.devices
    );
    let fleetd = run.fleetd(&ServeOptions::default()).await?;
    let fleet = ConnectedFleet::connect(run, &fleetd, "ingest", args.devices).await;
    let ConnectedFleet {
        db,
        tenant,
        tally,
        mut sessions,
        ..
    } = fleet;
    eprintln!("{} devices connected", sessions.len());

    // Committed records, sampled every second, for the chart.
    let origin = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = {
        let (tally, samples) = (tally.clone(), samples.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticks.tick().await;
                let committed = tally.committed.load(Ordering::Relaxed);
                samples.lock().unwrap().push((Instant::now(), committed));
            }
        })
    };
    let meter = Meter::start(fleetd.pid());
    let length = Duration::from_secs(args.step_seconds);
    let bar = report::progress(args.rates.len() as u64, "ingest steps");
    let mut sustained: Option<Step> = None;
    let mut steps = Vec::new();
    for &rate in &args.rates {
        bar.set_message(format!("offering {rate} records/s"));
        let (back, result) = step(
            fleetd.pid(),
            sessions,
            &tally,
            args.records_per_message,
            rate as f64,
            length,
        )
        .await;
        sessions = back;
        bar.inc(1);
        eprintln!("{}", describe(&result));
        steps.push(result);
        if !result.sustained(args.p99_bound_ms) {
            break;
        }
        sustained = Some(result);
    }
    bar.finish_and_clear();
    let half = match sustained {
        Some(best) => {
            let (back, result) = step(
                fleetd.pid(),
                sessions,
                &tally,
                args.records_per_message,
                (best.committed / 2.0).max(1.0),
                length,
            )
            .await;
            sessions = back;
            eprintln!("half rate: {}", describe(&result));
            Some(result)
        }
        None => None,
    };
    // Capacity: every device at the gateway's per-device limit, whatever the latency.
    let saturating =
        PER_DEVICE_MESSAGES_PER_SECOND * (args.devices as u64 * args.records_per_message) as f64;
    let (back, saturated) = step(
        fleetd.pid(),
        sessions,
        &tally,
        args.records_per_message,
        saturating,
        length,
    )
    .await;
    sessions = back;
    eprintln!("saturation: {}", describe(&saturated));
    report.resources = Some(meter.stop());
    sampler.abort();
    report.series = series(&tally, &samples.lock().unwrap(), origin);
    let errors = tally.connection_errors.load(Ordering::Relaxed);
    report.require(errors == 0, || {
        format!("{errors} connection errors while offering load")
    });
    drop(sessions);
    for s in &steps {
        report.notes.push(describe(s));
    }
    report
        .notes
        .push(format!("saturation: {}", describe(&saturated)));

    // The database tier, same server, same rows, nothing else running.
    let body = fleet_tests::ceilings::stored_body(&run.test_db, tenant).await;
    let (ceiling_tenant, ceiling_devices) =
        fleet_tests::tenancy::tenant_with_devices(&db.app, "ceiling", 100).await;
    let ceiling = Ceiling {
        test_db: &run.test_db,
        app: &db.app,
        tenant: ceiling_tenant,
        devices: &ceiling_devices,
        rows: args.ceiling_rows.div_ceil(10_000) * 10_000,
        body: &body,
    };
    eprintln!("database ceilings, {} rows each", ceiling.rows);
    let rls_1 = ceiling.unnest_rls(Insert::Bare, 1, 0).await;
    let rls_2 = ceiling.unnest_rls(Insert::Bare, 2, 10_000_000).await;
    let copy = ceiling.copy_without_rls().await;
    let rls = rls_1.max(rls_2);
    let best = sustained.map_or(0.0, |s| s.committed);
    report.push(
        Figure::ours("highest sustained committed rate", "records/s", best)
            .against("INSERT ... unnest, forced RLS (best of 1 and 2 connections)", rls)
            .note(format!(
                "goal: at least 0.8 of the ceiling; p99 under {} ms and at least {:.0}% of the offer committed",
                args.p99_bound_ms,
                SUSTAINED_SHARE * 100.0
            )),
    );
    report.push(
        Figure::ours("highest sustained committed rate", "records/s", best)
            .against("COPY, no RLS (physical ceiling)", copy),
    );
    report.push(
        Figure::ours("committed rate at saturation (latency unbounded)", "records/s", saturated.committed)
            .against("INSERT ... unnest, forced RLS (best of 1 and 2 connections)", rls)
            .note(format!(
                "every device at 19 messages/s (the gateway's limit is 20): {:.0} records/s offered; p99 {:.0} ms",
                saturated.offered, saturated.p99_ms
            )),
    );
    report.push(Figure::ours(
        "ceiling: INSERT ... unnest, RLS, 1 connection",
        "records/s",
        rls_1,
    ));
    report.push(Figure::ours(
        "ceiling: INSERT ... unnest, RLS, 2 connections",
        "records/s",
        rls_2,
    ));
    if let Some(best) = sustained {
        report.push(Figure::ours(
            "p50 at the highest sustained rate",
            "ms",
            best.p50_ms,
        ));
        report.push(Figure::ours(
            "p99 at the highest sustained rate",
            "ms",
            best.p99_ms,
        ));
    }
    match half {
        Some(half) => {
            report.push(
                Figure::ours(
                    format!("p99 at half that rate ({:.0} records/s)", half.offered),
                    "ms",
                    half.p99_ms,
                )
                .against("goal", 50.0),
            );
            report.push(Figure::ours("p90 at half that rate", "ms", half.p90_ms));
            report.push(Figure::ours("max at half that rate", "ms", half.max_ms));
        }
        None => report.push(Figure::unmeasured(
            "p99 at half the highest sustained rate",
            "ms",
            "no step was sustained",
        )),
    }
    report.notes.push(format!(
        "{} devices, {} records of ~200 bytes per message, QoS 1, mutual TLS, gateway limits at their defaults; \
         {} s steps, the first second not measured; {errors} connection errors",
        args.devices, args.records_per_message, args.step_seconds
    ));
    db.close().await?;
    fleetd.stop().await?;

    // The broker tier.
    broker_tier(run, &args, &mut report).await?;
    Ok(report)
}

/// The broker tier: `broker_devices` devices publish one-record QoS 1 messages as fast as their
/// acknowledgements allow for `broker_seconds`, to a fleetd with the per-device publish limit
/// lifted (counting what it commits) and to Mosquitto (counting what one QoS 1 subscriber
/// receives).
async fn broker_tier(run: &Run, args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let length = Duration::from_secs(args.broker_seconds);
    let fleetd = run
        .fleetd(&ServeOptions {
            unlimited_publish: true,
        })
        .await?;
    let fleet = ConnectedFleet::connect(run, &fleetd, "broker-tier", args.broker_devices).await;
    let ConnectedFleet {
        db,
        credentials,
        tally,
        sessions,
        ..
    } = fleet;
    let meter = Meter::start(fleetd.pid());
    let start = Instant::now();
    let end = start + length;
    let publishers: Vec<_> = sessions
        .into_iter()
        .map(|mut session| {
            tokio::spawn(async move {
                while Instant::now() < end {
                    if session.publish_telemetry(1).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                session
            })
        })
        .collect();
    tokio::time::sleep_until((start + WARM_UP).into()).await;
    let at_warm = tally.committed.load(Ordering::Relaxed);
    tokio::time::sleep_until(end.into()).await;
    let ours = (tally.committed.load(Ordering::Relaxed) - at_warm) as f64
        / (length - WARM_UP).as_secs_f64();
    let used = meter.stop();
    for publisher in publishers {
        drop(publisher.await);
    }
    eprintln!("broker tier, fleetd: {ours:.0} messages/s committed");
    let mut figure = Figure::ours(
        "broker tier: QoS 1 messages/s delivered (fleetd: committed to PostgreSQL)",
        "/s",
        ours,
    )
    .note(format!(
        "goal: 3x Mosquitto; {} devices, one record per message, publish limit lifted; fleetd {:.1} CPU s, PostgreSQL {:.1} CPU s",
        args.broker_devices, used.fleetd_cpu_seconds, used.postgres_cpu_seconds
    ));
    if !args.no_mosquitto {
        let dir = tempfile::tempdir()?;
        let mosquitto = fleet_tests::mosquitto::start_mosquitto(dir.path(), &fleetd.ca).await;
        let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
        let meter = Meter::start(mosquitto.pid());
        let theirs = mosquitto_rate(&fleetd.ca, &credentials, broker, length).await?;
        let used = meter.stop();
        eprintln!("broker tier, Mosquitto: {theirs:.0} messages/s delivered");
        figure = figure.against(super::connect::mosquitto_version(), theirs);
        report.notes.push(format!(
            "broker tier, Mosquitto: one subscriber (fleetd-ingest's certificate) on fleet/v1/+/up/# at QoS 1, no persistence; Mosquitto {:.1} CPU s",
            used.fleetd_cpu_seconds
        ));
    }
    report.push(figure);
    db.close().await?;
    fleetd.stop().await?;
    Ok(())
}

/// An MQTT client of `chain`/`key` for Mosquitto at `broker`.
fn mosquitto_options(
    root: &CertificateDer<'static>,
    client_id: String,
    chain: Vec<CertificateDer<'static>>,
    key: &rcgen::KeyPair,
    broker: SocketAddr,
) -> MqttOptions {
    let tls = fleet_tests::device::device_tls(root, chain, key);
    let mut options = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(60));
    options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    options
}

/// Messages per second one QoS 1 subscriber receives from Mosquitto while every device
/// publishes one-record telemetry as fast as its PUBACKs allow.
async fn mosquitto_rate(
    ca: &certs::IssuingCa,
    devices: &[DeviceCredentials],
    broker: SocketAddr,
    length: Duration,
) -> anyhow::Result<f64> {
    let service = ca.issue_service_client_cert("fleetd-ingest")?;
    let key = rcgen::KeyPair::from_pem(&service.key().to_pkcs8_pem())?;
    let options = mosquitto_options(
        ca.root_der(),
        "fleet-bench-subscriber".into(),
        service.chain_der(),
        &key,
        broker,
    );
    let (subscriber, mut events) = fleet_tests::mqtt::connect_subscribed(
        options,
        "fleet/v1/+/up/#".into(),
        Duration::from_secs(30),
    )
    .await;
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = {
        let received = received.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
    };
    let mut clients = Vec::new();
    for device in devices {
        let options = mosquitto_options(
            ca.root_der(),
            device.device_id.to_string(),
            device.chain.clone(),
            &device.key,
            broker,
        );
        let (client, mut events) = AsyncClient::new(options, 256);
        let driver = tokio::spawn(async move {
            loop {
                if events.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        clients.push((device.device_id, client, driver));
    }
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + length;
    let publishers: Vec<_> = clients
        .iter()
        .map(|(device_id, client, _)| {
            let (client, topic) = (client.clone(), wire::topic::telemetry(*device_id));
            tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                let mut seq = 1;
                while Instant::now() < end {
                    let payload = wire::encode_message(&wire::Batch::new(vec![
                        fleet_tests::records::telemetry_200_bytes(seq),
                    ]));
                    seq += 1;
                    if client
                        .publish(&topic, QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep_until((start + WARM_UP).into()).await;
    let at_warm = received.load(Ordering::Relaxed);
    tokio::time::sleep_until(end.into()).await;
    let rate =
        (received.load(Ordering::Relaxed) - at_warm) as f64 / (length - WARM_UP).as_secs_f64();
    for publisher in publishers {
        publisher.abort();
    }
    for (_, client, driver) in clients {
        let _ = client.disconnect().await;
        driver.abort();
    }
    counter.abort();
    let _ = subscriber.disconnect().await;
    Ok(rate)
}
