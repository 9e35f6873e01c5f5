use std::fs;

use super::*;

/// Files recorded from the Debian 12 (x86_64, VM) development machine.
const PROC_STAT: &str = include_str!("../../../tests/fixtures/proc/stat");
const PROC_MEMINFO: &str = include_str!("../../../tests/fixtures/proc/meminfo");
const PROC_MOUNTS: &str = include_str!("../../../tests/fixtures/proc/mounts");
const PROC_UPTIME: &str = include_str!("../../../tests/fixtures/proc/uptime");
const PROC_LOADAVG: &str = include_str!("../../../tests/fixtures/proc/loadavg");
const PROC_NET_DEV: &str = include_str!("../../../tests/fixtures/proc/net-dev");

#[test]
fn proc_stat_counts_iowait_as_idle_and_steal_as_busy() {
    let times = parse_proc_stat(PROC_STAT).unwrap();
    // cpu  44221 0 13434 106724 1089 0 673 2480 0 0
    assert_eq!(times.idle, 106_724 + 1089);
    assert_eq!(times.busy, 44_221 + 13_434 + 673 + 2480);
}

#[test]
fn proc_stat_without_cpu_line_is_an_error() {
    assert!(parse_proc_stat("intr 1 2 3\n").is_err());
    assert!(parse_proc_stat("cpu  1 x 3 4\n").is_err());
}

#[test]
fn cpu_sampler_reports_the_delta_between_samples() {
    let mut sampler = CpuSampler::new();
    assert_eq!(
        sampler.observe(CpuTimes {
            busy: 100,
            idle: 900
        }),
        None
    );
    let usage = sampler
        .observe(CpuTimes {
            busy: 130,
            idle: 970,
        })
        .unwrap();
    assert!((usage - 30.0).abs() < 1e-9);
    // Counters that go backwards (a reset) give no figure rather than a huge one.
    assert_eq!(sampler.observe(CpuTimes { busy: 1, idle: 1 }), None);
}

#[test]
fn meminfo_gives_bytes() {
    let memory = parse_meminfo(PROC_MEMINFO).unwrap();
    assert!(memory.total_bytes > memory.available_bytes);
    assert_eq!(memory.total_bytes % 1024, 0);
}

#[test]
fn meminfo_of_an_old_kernel_falls_back_to_free_plus_caches() {
    let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n";
    assert_eq!(parse_meminfo(old).unwrap().available_bytes, 420 * 1024);
}

#[test]
fn mounts_keep_real_storage_only() {
    let parsed = parse_mounts(PROC_MOUNTS);
    assert!(parsed.problems.is_empty());
    let points: Vec<&str> = parsed
        .items
        .iter()
        .map(|m| m.mount_point.as_str())
        .collect();
    assert!(points.contains(&"/"), "{points:?}");
    assert!(parsed
        .items
        .iter()
        .all(|m| m.fs_type != "proc" && m.fs_type != "tmpfs"));
}

#[test]
fn mount_points_with_escaped_spaces_are_decoded_and_odd_lines_reported() {
    // Written by hand in the kernel's format (a Raspberry Pi with a USB stick).
    let text = "/dev/mmcblk0p2 / ext4 rw,noatime 0 0\n\
                /dev/mmcblk0p1 /boot/firmware vfat rw 0 0\n\
                /dev/sda1 /media/pi/MY\\040STICK exfat rw 0 0\n\
                /dev/mmcblk0p2 / ext4 rw,noatime 0 0\n\
                broken-line\n\n";
    let parsed = parse_mounts(text);
    let points: Vec<&str> = parsed
        .items
        .iter()
        .map(|m| m.mount_point.as_str())
        .collect();
    assert_eq!(points, ["/", "/boot/firmware", "/media/pi/MY STICK"]);
    assert_eq!(parsed.problems.len(), 1);
    assert_eq!(parsed.problems[0].line_no, 5);
}

#[test]
fn uptime_and_load_parse() {
    assert!(parse_uptime(PROC_UPTIME).unwrap() > Duration::from_secs(1));
    let load = parse_loadavg(PROC_LOADAVG).unwrap();
    assert!(load.one >= 0.0 && load.fifteen >= 0.0);
    assert_eq!(
        parse_loadavg("0.52 0.58 0.59 1/467 12345\n").unwrap(),
        LoadAverage {
            one: 0.52,
            five: 0.58,
            fifteen: 0.59
        }
    );
    assert!(parse_loadavg("0.52\n").is_err());
    assert!(parse_uptime("-3 1\n").is_err());
}

#[test]
fn net_dev_reads_every_interface() {
    let parsed = parse_net_dev(PROC_NET_DEV);
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    let eth0 = parsed.items.iter().find(|i| i.name == "eth0").unwrap();
    assert_eq!((eth0.rx_bytes, eth0.rx_packets), (226_478_033, 6925));
    assert_eq!((eth0.tx_bytes, eth0.tx_packets), (430_954, 3648));
}

#[test]
fn net_dev_odd_lines_are_reported_not_fatal() {
    let text = format!(
        "{PROC_NET_DEV}  wlan0: 1 2 3\ngarbage\n  eth9: 1 2 x 4 5 6 7 8 9 10 11 12 13 14 15 16\n"
    );
    let parsed = parse_net_dev(&text);
    assert_eq!(parsed.items.len(), 4);
    assert_eq!(parsed.problems.len(), 3);
}

#[test]
fn thermal_temp_is_millidegrees() {
    assert_eq!(parse_thermal_temp("48312\n").unwrap(), 48.312);
    assert_eq!(parse_thermal_temp("-5000").unwrap(), -5.0);
    assert!(parse_thermal_temp("").is_err());
}

/// A fake root with the recorded /proc files and two thermal zones, one broken.
fn fake_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let proc = dir.path().join("proc");
    fs::create_dir_all(proc.join("net")).unwrap();
    fs::write(proc.join("stat"), PROC_STAT).unwrap();
    fs::write(proc.join("meminfo"), PROC_MEMINFO).unwrap();
    fs::write(proc.join("uptime"), PROC_UPTIME).unwrap();
    fs::write(proc.join("loadavg"), PROC_LOADAVG).unwrap();
    fs::write(proc.join("net/dev"), PROC_NET_DEV).unwrap();
    fs::write(
        proc.join("mounts"),
        "/dev/root / ext4 rw 0 0\nproc /proc proc rw 0 0\n",
    )
    .unwrap();
    for (zone, kind, temp) in [
        ("thermal_zone0", "cpu-thermal", "51540\n"),
        ("thermal_zone1", "gpu", "N/A\n"),
    ] {
        let zone_dir = dir.path().join("sys/class/thermal").join(zone);
        fs::create_dir_all(&zone_dir).unwrap();
        fs::write(zone_dir.join("type"), kind).unwrap();
        fs::write(zone_dir.join("temp"), temp).unwrap();
    }
    dir
}

#[test]
fn collect_system_reads_a_fake_tree() {
    let dir = fake_root();
    let root = FsRoot::new(dir.path());
    let mut cpu = CpuSampler::new();
    let metrics = collect_system(&root, &mut cpu);
    assert_eq!(metrics.cpu_percent, None, "first sample has no delta");
    assert!(metrics.memory.is_some() && metrics.uptime.is_some() && metrics.load.is_some());
    assert_eq!(metrics.network.len(), 4);
    assert_eq!(metrics.disks.len(), 1);
    assert_eq!(metrics.disks[0].mount.mount_point, "/");
    assert!(metrics.disks[0].total_bytes > 0);
    assert_eq!(metrics.temperatures.len(), 1);
    assert_eq!(metrics.temperatures[0].kind, "cpu-thermal");
    assert_eq!(metrics.temperatures[0].celsius, 51.54);
    assert_eq!(metrics.problems.len(), 1, "{:?}", metrics.problems);
    assert!(metrics.problems[0].starts_with("thermal_zone1"));
}

#[test]
fn missing_files_leave_fields_empty_without_failing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cpu = CpuSampler::new();
    let metrics = collect_system(&FsRoot::new(dir.path()), &mut cpu);
    assert_eq!(metrics.memory, None);
    assert!(metrics.disks.is_empty() && metrics.temperatures.is_empty());
    assert!(metrics.network.is_empty());
    // /proc/stat is the one file every Linux has: its absence is worth a line.
    assert_eq!(metrics.problems.len(), 1, "{:?}", metrics.problems);
}

#[test]
fn real_system_collects_something() {
    let mut cpu = CpuSampler::new();
    let root = FsRoot::default();
    collect_system(&root, &mut cpu);
    std::thread::sleep(Duration::from_millis(150)); // several clock ticks (USER_HZ = 100)
    let metrics = collect_system(&root, &mut cpu);
    assert!(metrics.memory.is_some());
    assert!(metrics
        .cpu_percent
        .is_some_and(|pct| (0.0..=100.0).contains(&pct)));
    assert!(!metrics.disks.is_empty());
}
