//! `patch-wave`: every device reports its full package inventory at once (a Debian-like list
//! of 1,500 packages), as the agent does after `apt update` on a whole fleet at the same hour.

use std::time::{Duration, Instant};

use wire::{Body, Package, PackageManager, PatchStatus, UnixMillis};

use crate::fleetd_child::ServeOptions;
use crate::report::{self, Figure, Report};
use crate::run::{Meter, Run};
use crate::session::ConnectedFleet;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Devices reporting at once.
    #[arg(long, default_value_t = 1_000)]
    devices: usize,
    /// Packages in each inventory.
    #[arg(long, default_value_t = 1_500)]
    packages: usize,
    /// How long to wait for every inventory to commit.
    #[arg(long, default_value_t = 300)]
    timeout_seconds: u64,
}

/// Stems of Debian package names, combined into `packages` distinct names.
const STEMS: &[&str] = &[
    "acl",
    "apt",
    "attr",
    "audit",
    "base-files",
    "bash",
    "bsdutils",
    "bzip2",
    "ca-certificates",
    "coreutils",
    "curl",
    "dash",
    "dbus",
    "debconf",
    "debianutils",
    "diffutils",
    "dpkg",
    "e2fsprogs",
    "findutils",
    "gcc-12-base",
    "gnupg",
    "gpgv",
    "grep",
    "gzip",
    "hostname",
    "init-system-helpers",
    "iproute2",
    "iputils-ping",
    "kmod",
    "less",
    "login",
    "logrotate",
    "lsb-base",
    "mawk",
    "mount",
    "ncurses-base",
    "netbase",
    "openssh-client",
    "openssl",
    "passwd",
    "perl-base",
    "procps",
    "python3",
    "readline-common",
    "sed",
    "sensible-utils",
    "systemd",
    "sysvinit-utils",
    "tar",
    "tzdata",
    "udev",
    "util-linux",
    "vim-tiny",
    "wget",
    "xz-utils",
    "zlib1g",
];

/// A Debian 12 inventory of `n` packages: library and tool names with their architecture,
/// Debian version strings, one in twenty with an upgrade and one in a hundred a security one.
pub fn debian_inventory(n: usize) -> PatchStatus {
    let packages = (0..n)
        .map(|i| {
            let stem = STEMS[i % STEMS.len()];
            let variant = i / STEMS.len();
            let name = match variant {
                0 => format!("{stem}:arm64"),
                v if v % 2 == 1 => format!("lib{stem}{v}:arm64"),
                v => format!("{stem}-data{v}:all"),
            };
            let installed = format!(
                "{}.{}.{}-{}+deb12u{}",
                1 + i % 9,
                i % 31,
                i % 17,
                1 + i % 5,
                i % 4
            );
            let upgradable = i % 20 == 0;
            Package {
                name,
                candidate: upgradable.then(|| format!("{installed}.1")),
                security: upgradable && i % 100 == 0,
                installed,
            }
        })
        .collect();
    PatchStatus {
        os_id: "debian".into(),
        os_version: "12".into(),
        package_manager: PackageManager::Apt,
        packages,
        reboot_required: false,
        lists_refreshed_at: Some(UnixMillis::now()),
    }
}

pub async fn run(run: &Run, args: Args) -> anyhow::Result<Report> {
    let mut report = run.report("patch-wave");
    report.rate_unit = "inventories/s";
    let fleetd = run.fleetd(&ServeOptions::default()).await?;
    let fleet = ConnectedFleet::connect(run, &fleetd, "patch-wave", args.devices).await;
    let ConnectedFleet {
        db,
        tally,
        sessions,
        ..
    } = fleet;
    let inventory = debian_inventory(args.packages);
    let message_bytes = wire::encode_message(&wire::Batch::new(vec![wire::Record {
        seq: 1,
        recorded_at: UnixMillis::now(),
        body: Body::PatchStatus(inventory.clone()),
    }]))
    .len();
    let meter = Meter::start(fleetd.pid());
    let bar = report::progress(args.devices as u64, "inventories committed");
    let started = Instant::now();
    let publishers: Vec<_> = sessions
        .into_iter()
        .map(|mut session| {
            let inventory = inventory.clone();
            tokio::spawn(async move {
                let topic = wire::topic::patch_status(session.device_id);
                let sent = session
                    .publish(&topic, vec![Body::PatchStatus(inventory)])
                    .await;
                (session, sent)
            })
        })
        .collect();
    let mut sessions = Vec::new();
    let mut refused = 0;
    for publisher in publishers {
        let (session, sent) = publisher.await?;
        refused += usize::from(sent.is_err());
        sessions.push(session);
    }
    let deadline = started + Duration::from_secs(args.timeout_seconds);
    let mut samples = vec![(started, 0u64)];
    loop {
        let committed = tally.committed.load(std::sync::atomic::Ordering::Relaxed);
        bar.set_position(committed);
        if committed as usize >= args.devices - refused || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if samples
            .last()
            .is_some_and(|(at, _)| at.elapsed() >= Duration::from_secs(1))
        {
            samples.push((Instant::now(), committed));
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    report.resources = Some(meter.stop());
    let committed = tally.committed.load(std::sync::atomic::Ordering::Relaxed) as usize;
    let mut latencies = tally.latencies(started, Instant::now());
    latencies.sort();
    report.series = samples
        .windows(2)
        .map(|pair| report::Sample {
            t_seconds: (pair[1].0 - started).as_secs_f64(),
            rate: (pair[1].1 - pair[0].1) as f64 / (pair[1].0 - pair[0].0).as_secs_f64(),
            p99_ms: None,
        })
        .collect();
    report.require(committed == args.devices, || {
        format!(
            "{committed} of {} inventories committed within {} s",
            args.devices, args.timeout_seconds
        )
    });
    report.push(Figure::ours(
        "inventories committed",
        "inventories",
        committed as f64,
    ));
    report.push(Figure::ours(
        "not committed within the timeout",
        "inventories",
        (args.devices - committed) as f64,
    ));
    report.push(Figure::ours(
        "time until the last was committed",
        "s",
        elapsed.as_secs_f64(),
    ));
    report.push(Figure::ours(
        "packages committed per second",
        "/s",
        (committed * args.packages) as f64 / elapsed.as_secs_f64(),
    ));
    report.push_latencies("publish-to-commit", &latencies);
    report.notes.push(format!(
        "{} devices publish one inventory of {} packages each at the same moment ({message_bytes} bytes per message), QoS 1, mutual TLS; {refused} publishes refused by the client; {} connection errors",
        args.devices,
        args.packages,
        tally.connection_errors.load(std::sync::atomic::Ordering::Relaxed)
    ));
    drop(sessions);
    db.close().await?;
    fleetd.stop().await?;
    Ok(report)
}
