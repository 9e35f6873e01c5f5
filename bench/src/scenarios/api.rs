//! `api`: authenticated `GET /v1/devices?limit=100` and `GET /v1/patch-summary` on a tenant of
//! 10,000 devices with inventories, driven by wrk and by this program's own keep-alive client,
//! with an owner key (the key cache at its default).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_tests::https::KeepAlive;
use store::api_keys::Role;
use store::patch_inventory::{PackageRow, PatchReport};
use time::OffsetDateTime;

use crate::fleetd_child::ServeOptions;
use crate::report::{self, Figure, Report};
use crate::run::{Meter, Run};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Devices in the tenant.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Packages in each device's inventory.
    #[arg(long, default_value_t = 50)]
    packages: usize,
    /// Length of each measured run (wrk's and ours) per route.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections at once (wrk's and ours).
    #[arg(long, default_value_t = 32)]
    connections: usize,
}

const ROUTES: [&str; 2] = ["/v1/devices?limit=100", "/v1/patch-summary"];

/// Every device's inventory, through the store as ingest applies it; one in seven with a reboot
/// due. Returns how long it took.
async fn inventories(
    app: &store::AppDb,
    tenant: store::TenantId,
    devices: &[store::DeviceId],
    packages: usize,
) -> anyhow::Result<()> {
    let inventory = super::patch_wave::debian_inventory(packages);
    let rows: Vec<PackageRow> = inventory.packages.iter().map(PackageRow::from).collect();
    let bar = report::progress(devices.len() as u64, "inventories");
    let now = OffsetDateTime::now_utc();
    for chunk in devices.chunks(500) {
        let mut tx = app.begin(tenant).await?;
        for (n, device) in chunk.iter().enumerate() {
            let report = PatchReport {
                seq: 1,
                recorded_at: now,
                received_at: now,
                os_id: "debian".into(),
                os_version: "12".into(),
                package_manager: "apt".into(),
                reboot_required: n % 7 == 0,
                lists_refreshed_at: Some(now),
                packages: rows.clone(),
            };
            store::patch_inventory::apply(&mut tx, *device, report).await?;
            bar.inc(1);
        }
        tx.commit().await?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Requests/s and p99 (ms) of `connections` keep-alive clients sending GET `path` for `length`.
async fn our_client(
    fleetd: &crate::fleetd_child::Fleetd,
    path: &'static str,
    key: &str,
    connections: usize,
    length: Duration,
) -> (f64, f64, usize) {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let end = Instant::now() + length;
    let bearer = Arc::new(format!("Bearer {key}"));
    let workers: Vec<_> = (0..connections)
        .map(|n| {
            let (ca, api, latencies, bearer) = (
                fleetd.ca.clone(),
                fleetd.listening.api,
                latencies.clone(),
                bearer.clone(),
            );
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 4, n as u8 + 1));
            tokio::spawn(async move {
                let mut conn = KeepAlive::connect(api, &ca, from).await;
                let mut failed = 0;
                let mut mine = Vec::new();
                while Instant::now() < end {
                    let sent = Instant::now();
                    match conn
                        .request("GET", path, &[("Authorization", bearer.as_str())], b"")
                        .await
                    {
                        Some(200) => mine.push(sent.elapsed()),
                        Some(_) => failed += 1,
                        None => {
                            failed += 1;
                            conn = KeepAlive::connect(api, &ca, from).await;
                        }
                    }
                }
                latencies.lock().unwrap().extend(mine);
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for worker in workers {
        failed += worker.await.unwrap_or(1);
    }
    let mut all = latencies.lock().unwrap().clone();
    all.sort();
    (
        all.len() as f64 / length.as_secs_f64(),
        report::quantile_ms(&all, 0.99),
        failed,
    )
}

pub async fn run(run: &Run, args: Args) -> anyhow::Result<Report> {
    let mut report = run.report("api");
    let fleetd = run.fleetd(&ServeOptions::default()).await?;
    let db = run.test_db.open().await;
    let tenant = fleet_tests::tenancy::tenant(&db.app, "api").await;
    let devices = crate::sim::insert_devices(&run.test_db, tenant, args.devices).await;
    inventories(&db.app, tenant, &devices, args.packages).await?;
    {
        let mut owner = run.test_db.connect_as_owner().await;
        // Freshly written tables: vacuum them now, or autovacuum does it during a measured run.
        sqlx::query("VACUUM (ANALYZE)").execute(&mut owner).await?;
    }
    let key = fleet_tests::tenancy::api_key(&db.app, tenant, Role::Owner, None).await;
    let key = key.secret.expose().to_owned();
    let length = Duration::from_secs(args.seconds);
    let wrk = fleet_tests::wrk::installed();
    let meter = Meter::start(fleetd.pid());
    for path in ROUTES {
        let answer = fleet_tests::https::https_request(
            fleetd.listening.api,
            &fleetd.ca,
            "GET",
            path,
            &[("authorization", &format!("Bearer {key}"))],
            b"",
        )
        .await;
        anyhow::ensure!(answer.status == 200, "GET {path}: {}", answer.text());
        let bytes = answer.body.len();
        // Warm the key cache and the pool.
        our_client(&fleetd, path, &key, 4, Duration::from_secs(1)).await;
        // wrk first, then ours: neither runs on a machine the other just left busy.
        let measured = if wrk {
            let url = format!("https://{}{path}", fleetd.listening.api);
            let measured =
                fleet_tests::wrk::run(&url, &key, 2, args.connections as u64, args.seconds).await;
            eprintln!("{}", measured.text.trim_end());
            Some(measured)
        } else {
            None
        };
        let (ours, ours_p99, failed) =
            our_client(&fleetd, path, &key, args.connections, length).await;
        eprintln!("GET {path}: {ours:.0} requests/s, p99 {ours_p99:.1} ms (fleet-bench's client)");
        report.require(failed == 0, || {
            format!("GET {path}: {failed} requests failed")
        });
        let what = format!("GET {path}: requests/s");
        let p99_what = format!("GET {path}: p99");
        if let Some(measured) = measured {
            report.require(measured.non_2xx == 0, || {
                format!("GET {path}: wrk saw {} non-2xx answers", measured.non_2xx)
            });
            let peer = format!("wrk -t2 -c{}", args.connections);
            report.push(
                Figure::ours(&what, "/s", ours)
                    .against(&peer, measured.requests_per_sec)
                    .note(format!(
                        "{bytes}-byte answer; {failed} failed (ours), {} non-2xx (wrk)",
                        measured.non_2xx
                    )),
            );
            let p99 = Figure::ours(&p99_what, "ms", ours_p99);
            report.push(match measured.p99_ms() {
                Some(theirs) => p99.against(&peer, theirs),
                None => p99.note(format!("wrk's p99: {}", measured.p99)),
            });
        } else {
            report.push(
                Figure::ours(&what, "/s", ours)
                    .note("wrk is not installed (apt-get install -y wrk): our client only"),
            );
            report.push(Figure::ours(&p99_what, "ms", ours_p99));
        }
    }
    report.resources = Some(meter.stop());
    report.notes.push(format!(
        "{} devices in one tenant, {} packages each; owner key (key cache at its default); {} \
         connections, {} s per run; fleet-bench's client is {} keep-alive HTTPS connections from \
         their own loopback addresses",
        args.devices, args.packages, args.connections, args.seconds, args.connections
    ));
    db.close().await?;
    fleetd.stop().await?;
    Ok(report)
}
