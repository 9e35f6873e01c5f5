//! `enroll-storm`: devices enroll with one shared token through fleetd's API, each with a key
//! and CSR of its own made beforehand, from keep-alive connections.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_tests::https::KeepAlive;

use crate::fleetd_child::ServeOptions;
use crate::report::{self, Figure, Report, Sample};
use crate::run::{Meter, Run};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Devices enrolling with the one token.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Connections enrolling at once, each from a loopback address of its own.
    #[arg(long, default_value_t = 16)]
    clients: usize,
}

pub async fn run(run: &Run, args: Args) -> anyhow::Result<Report> {
    let mut report = run.report("enroll-storm");
    report.rate_unit = "enrollments/s";
    report.latency_label = "p99 enrollment request, ms";
    let fleetd = run.fleetd(&ServeOptions::default()).await?;
    let db = run.test_db.open().await;
    let tenant = fleet_tests::tenancy::tenant(&db.app, "enroll-storm").await;
    let token = fleet_tests::enroll::shared_token(&db.app, tenant, 1_000_000).await;
    eprintln!("making {} keys and CSRs", args.devices);
    let bodies: Vec<Vec<u8>> = (0..args.devices)
        .map(|_| fleet_tests::enroll::enroll_body(&token, &fleet_tests::device::key_and_csr().1))
        .collect();
    let queue = Arc::new(Mutex::new(bodies));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(args.devices)));
    let bar = report::progress(args.devices as u64, "enrolled");
    let ca = fleetd.ca.clone();
    let api = fleetd.listening.api;
    let meter = Meter::start(fleetd.pid());
    let started = Instant::now();
    let workers: Vec<_> = (0..args.clients)
        .map(|n| {
            let (queue, latencies, bar, ca) =
                (queue.clone(), latencies.clone(), bar.clone(), ca.clone());
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 3, n as u8 + 1));
            tokio::spawn(async move {
                let mut conn = KeepAlive::connect(api, &ca, from).await;
                let mut refused = Vec::new();
                loop {
                    let Some(body) = queue.lock().unwrap().pop() else {
                        return refused;
                    };
                    let sent = Instant::now();
                    match conn.enroll(&body).await {
                        Some(201) => {
                            latencies
                                .lock()
                                .unwrap()
                                .push((Instant::now(), sent.elapsed()));
                            bar.inc(1);
                        }
                        Some(other) => refused.push(other),
                        None => {
                            queue.lock().unwrap().push(body);
                            conn = KeepAlive::connect(api, &ca, from).await;
                        }
                    }
                }
            })
        })
        .collect();
    let mut refused = Vec::new();
    for worker in workers {
        refused.extend(worker.await?);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    report.resources = Some(meter.stop());
    let timed = latencies.lock().unwrap().clone();
    let mut sorted: Vec<Duration> = timed.iter().map(|(_, took)| *took).collect();
    sorted.sort();
    report.series = per_second(&timed, started, elapsed);
    let enrolled = sorted.len();
    report.require(enrolled == args.devices, || {
        format!(
            "{enrolled} of {} devices enrolled, refusals {:?}",
            args.devices,
            &refused[..refused.len().min(5)]
        )
    });
    report.push(Figure::ours("devices enrolled", "devices", enrolled as f64));
    report.push(
        Figure::ours("refused", "devices", refused.len() as f64).note(if refused.is_empty() {
            String::new()
        } else {
            format!("statuses {:?}", &refused[..refused.len().min(5)])
        }),
    );
    report.push(
        Figure::ours("time for all of them", "s", elapsed.as_secs_f64()).against("goal", 60.0),
    );
    report.push(Figure::ours(
        "enrollments/s",
        "/s",
        enrolled as f64 / elapsed.as_secs_f64(),
    ));
    report.push_latencies("request", &sorted);
    report.notes.push(format!(
        "{} devices, one token (127.0.0.0/8, 1,000,000 a day), {} keep-alive connections from \
         their own loopback addresses; each request: token check, CSR check, certificate issued \
         and stored, audit record",
        args.devices, args.clients
    ));
    db.close().await?;
    fleetd.stop().await?;
    Ok(report)
}

/// Enrollments completed in each second of the run.
fn per_second(timed: &[(Instant, Duration)], started: Instant, elapsed: Duration) -> Vec<Sample> {
    let seconds = elapsed.as_secs() as usize + 1;
    let mut counts = vec![0usize; seconds];
    let mut slowest = vec![Vec::new(); seconds];
    for (done, took) in timed {
        let second = ((*done - started).as_secs() as usize).min(seconds - 1);
        counts[second] += 1;
        slowest[second].push(*took);
    }
    counts
        .into_iter()
        .zip(slowest)
        .enumerate()
        .map(|(second, (count, mut took))| {
            took.sort();
            Sample {
                t_seconds: second as f64 + 1.0,
                rate: count as f64,
                p99_ms: (!took.is_empty()).then(|| report::quantile_ms(&took, 0.99)),
            }
        })
        .collect()
}
