//! The fault test (issue 17, item 1): real `fleet-agent` processes stream records through a real
//! fleetd process while the harness, at seeded random moments, kills fleetd with SIGKILL,
//! restarts PostgreSQL (fast and immediate), black-holes one agent's network for 30 s, kills an
//! agent while it writes its outbox, tears the last record of a stopped agent's outbox and fills
//! the disk under an agent's state directory. At the end every sequence number each agent ever
//! assigned is in PostgreSQL exactly once, or still waiting in its outbox, or inside a range the
//! agent itself reported as dropped; and every audit chain verifies.
//!
//! PostgreSQL is a cluster this test creates and runs with `pg_ctl` on an ephemeral loopback
//! port, and fleetd uses it as an external database: fleetd's own private cluster dies with
//! fleetd by design (and fleetd treats its exit as fatal), so restarting *that* one under a
//! running fleetd would test fleetd's supervision, not what a restarted database server does to
//! the data path.
//!
//! `FLEET_FAULTS_SEED` replays a run (the seed is printed); `FLEET_FAULTS_MINUTES` runs the fault
//! schedule for that many minutes instead of one round of it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_tests::tenancy::tenant;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sqlx::Connection;
use store::audit::{self, ChainVerdict};
use store::cluster::RunAs;
use store::enrollment_tokens::{self, NewEnrollmentToken};
use store::{DatabaseSettings, TenantId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const AGENTS: usize = 50;
const NETWORK_CUT: Duration = Duration::from_secs(30);
const RECORD_HEADER_LEN: usize = 16;
/// The whole default run stays well inside the CI budget of 6 minutes.
const WHOLE_RUN: Duration = Duration::from_secs(330);
/// The cut agent's outbox is small so that 30 s without delivery fill it.
const SMALL_OUTBOX: &str = "[outbox]\nmax_bytes = 131072\nsegment_bytes = 65536\n";
const AGENT_CONFIG: &str = "[telemetry]\ninterval_secs = 1\n[mqtt]\nbackoff_max_secs = 1\nkeep_alive_secs = 5\nresend_after = \"2s\"\nresend_max = \"4s\"\n";

/// A free loopback port (bound and released: fleetd and PostgreSQL need fixed ports across
/// restarts, so they cannot take port 0 themselves).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL cluster of this test's own, run by `pg_ctl` as the `postgres` user when root.
struct Postgres {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
}

impl Postgres {
    async fn create(parent: &Path) -> Self {
        let bindir = store::cluster::find_bindir(None).await.unwrap();
        let run_as = RunAs::detect().unwrap();
        let dir = parent.join("pgdata");
        std::fs::create_dir(&dir).unwrap();
        if let Some(user) = &run_as {
            user.chown(&dir).unwrap();
        }
        let postgres = Self {
            bindir,
            dir,
            port: free_port(),
            run_as,
        };
        let dir = postgres.dir.to_str().unwrap().to_owned();
        postgres.run(
            "initdb",
            &["-D", &dir, "-U", "postgres", "-A", "trust", "--no-sync"],
        );
        postgres
    }

    fn run(&self, program: &str, args: &[&str]) {
        let mut command = Command::new(self.bindir.join(program));
        command.args(args).current_dir(&self.dir);
        if let Some(user) = &self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn start(&self) {
        let dir = self.dir.to_str().unwrap();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {dir} -c max_connections=200",
            self.port
        );
        let log = format!("{dir}/server.log");
        self.run(
            "pg_ctl",
            &[
                "-D", dir, "-w", "-t", "60", "-l", &log, "-o", &options, "start",
            ],
        );
    }

    /// `mode` is `fast` or `immediate` (no checkpoint: crash recovery at the next start).
    fn stop(&self, mode: &str) {
        let dir = self.dir.to_str().unwrap();
        self.run("pg_ctl", &["-D", dir, "-w", "-t", "60", "-m", mode, "stop"]);
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.dir.join("postmaster.pid").exists() {
            let dir = self.dir.to_str().unwrap().to_owned();
            let mut command = Command::new(self.bindir.join("pg_ctl"));
            command.args(["-D", &dir, "-w", "-m", "immediate", "stop"]);
            if let Some(user) = &self.run_as {
                command.uid(user.uid).gid(user.gid);
            }
            let _ = command.output();
        }
    }
}

/// fleetd as a process of its own, on fixed loopback ports from its configuration file.
struct Fleetd {
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    api: SocketAddr,
    broker: SocketAddr,
    child: Option<Child>,
}

impl Fleetd {
    fn new(dir: &Path, database_url: &str) -> Self {
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let broker = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.join("fleetd.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\ndatabase_url = \"{database_url}\"\napi_listen = \"{api}\"\nbroker_listen = \"{broker}\"\nmetrics_listen = \"{metrics}\"\n[enrollment]\nmax_concurrent_verifications = 4\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        Self {
            binary: fleet_tests::workspace_binary("fleetd", "fleetd"),
            config,
            log: dir.join("fleetd.log"),
            api,
            broker,
            child: None,
        }
    }

    /// Starts it and waits until the API port answers.
    async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(self.broker).await.is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("fleetd exited with {status}: {}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "fleetd not up: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Fleetd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy between one agent and the broker that can black-hole the traffic: while cut it
/// reads and discards in both directions and never closes, as a dead link looks to both ends.
/// A connection that lost bytes is closed once the cut ends (its stream is no longer MQTT).
struct BlackHoleProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl BlackHoleProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    while flag.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = tokio::spawn(forward(client_read, server_write, flag.clone()));
                    let down = tokio::spawn(forward(server_read, client_write, flag));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self { addr, cut }
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut lost_bytes = false;
    loop {
        let read = tokio::time::timeout(Duration::from_millis(200), from.read(&mut buf)).await;
        if lost_bytes && !cut.load(Ordering::SeqCst) {
            return;
        }
        let n = match read {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        if cut.load(Ordering::SeqCst) {
            lost_bytes = true;
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A small tmpfs mounted for one agent's state directory, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs on {}", path.display());
        Self {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// One agent: its directory (agent.toml, state/, agent.log) and its process when running.
struct Agent {
    dir: PathBuf,
    device: Uuid,
    child: Option<Child>,
}

impl Agent {
    fn command(dir: &Path, binary: &Path) -> Command {
        let mut command = Command::new(binary);
        command
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--config")
            .arg(dir.join("agent.toml"))
            .env("FLEET_AGENT_ALLOW_ROOT", "1");
        command
    }

    fn start(&mut self, binary: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let child = Self::command(&self.dir, binary)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn signal(&mut self, signal: Signal) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
            child.wait().unwrap();
        }
    }

    fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(child) => child.try_wait().unwrap().is_some(),
        }
    }

    fn outbox(&self) -> PathBuf {
        self.dir.join("state/outbox")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn state(&self) -> serde_json::Value {
        std::fs::read(self.dir.join("state/state.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Everything acked: the last ack covers every assigned sequence number.
    fn drained(&self) -> bool {
        let state = self.state();
        let next = state["next_seq"].as_u64().unwrap_or(0);
        next > 1 && state["last_ack"].as_u64() == Some(next - 1)
    }
}

/// The last segment file of an outbox (names sort in sequence order).
fn last_segment(outbox: &Path) -> Option<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(outbox)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    segments.pop()
}

/// (offset, seq, total length) of each whole record of a segment file, by the format in
/// edge-agent/src/outbox/mod.rs.
fn segment_records(bytes: &[u8]) -> Vec<(usize, u64, usize)> {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset + RECORD_HEADER_LEN <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let seq = u64::from_le_bytes(bytes[offset + 4..offset + 12].try_into().unwrap());
        if seq == 0 || offset + RECORD_HEADER_LEN + len > bytes.len() {
            break;
        }
        records.push((offset, seq, RECORD_HEADER_LEN + len));
        offset += RECORD_HEADER_LEN + len;
    }
    records
}

/// Sequence numbers still in the outbox's segment files above its ack watermark.
fn pending_on_disk(outbox: &Path, acked: u64) -> BTreeSet<u64> {
    let mut seqs = BTreeSet::new();
    for entry in std::fs::read_dir(outbox).unwrap().filter_map(Result::ok) {
        if entry.path().extension().is_some_and(|e| e == "seg") {
            let bytes = std::fs::read(entry.path()).unwrap();
            seqs.extend(
                segment_records(&bytes)
                    .into_iter()
                    .map(|(_, seq, _)| seq)
                    .filter(|seq| *seq > acked),
            );
        }
    }
    seqs
}

/// A `key value` line of `outbox.meta`.
fn meta_value(outbox: &Path, key: &str) -> Option<String> {
    let meta = std::fs::read_to_string(outbox.join("outbox.meta")).ok()?;
    meta.lines()
        .find_map(|line| line.strip_prefix(&format!("{key} ")))
        .map(str::to_owned)
}

/// A small deterministic generator (SplitMix64): a printed seed replays the schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn pause(&mut self, min_ms: u64, max_ms: u64) -> Duration {
        Duration::from_millis(min_ms + self.below(max_ms - min_ms))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillFleetd,
    PostgresFast,
    PostgresImmediate,
    CutNetwork,
    KillAgentWhileWriting,
    TearLastRecord,
    FillDisk,
}

fn round_of_faults() -> Vec<Fault> {
    let mut faults = vec![Fault::KillFleetd; 5];
    faults.extend([
        Fault::PostgresFast,
        Fault::PostgresImmediate,
        Fault::CutNetwork,
        Fault::KillAgentWhileWriting,
        Fault::TearLastRecord,
        Fault::FillDisk,
    ]);
    faults
}

fn shuffle(faults: &mut [Fault], rng: &mut Rng) {
    for i in (1..faults.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        faults.swap(i, j);
    }
}

fn loopback_token(uses: u32) -> NewEnrollmentToken {
    NewEnrollmentToken {
        name: "faults".into(),
        allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
        daily_limit: uses,
        max_uses: None,
        expires_at: time::OffsetDateTime::now_utc() + time::Duration::days(1),
        device_group: "faults".into(),
        device_labels: BTreeMap::new(),
    }
}

/// Enrolls the agent in `dir` with `token`; returns its device id.
fn enroll(binary: &Path, dir: &Path, api: SocketAddr, root: &Path, token: &str) -> Uuid {
    let server = format!("https://localhost:{}", api.port());
    let output = Agent::command(dir, binary)
        .args(["enroll", "--server", &server, "--ca"])
        .arg(root)
        .args(["--token", token])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state/device.json")).unwrap()).unwrap();
    identity["device_id"].as_str().unwrap().parse().unwrap()
}

/// Points the agent's broker URL at `addr` (its proxy).
fn redirect_broker(dir: &Path, from: SocketAddr, to: SocketAddr) {
    let path = dir.join("state/device.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let from = format!(":{}", from.port());
    assert!(text.contains(&from), "broker port in {text}");
    std::fs::write(&path, text.replace(&from, &format!(":{}", to.port()))).unwrap();
}

#[derive(Default, Debug)]
struct Counts {
    faults: BTreeMap<&'static str, u32>,
}

impl Counts {
    fn note(&mut self, fault: &'static str) {
        *self.faults.entry(fault).or_default() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_crashes_restarts_cuts_torn_writes_and_a_full_disk() {
    tokio::time::timeout(WHOLE_RUN + long_mode(), run_faults())
        .await
        .expect("the fault run finished in time");
}

/// The extra fault time of `FLEET_FAULTS_MINUTES`.
fn long_mode() -> Duration {
    std::env::var("FLEET_FAULTS_MINUTES")
        .ok()
        .and_then(|m| m.parse::<u64>().ok())
        .map_or(Duration::ZERO, |m| Duration::from_secs(m * 60))
}

async fn run_faults() {
    let started = Instant::now();
    let seed = std::env::var("FLEET_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("fault test seed {seed} (replay with FLEET_FAULTS_SEED={seed})");
    let mut rng = Rng(seed);
    let mut counts = Counts::default();

    let work = fleet_tests::data_dir();
    let postgres = Postgres::create(work.path()).await;
    postgres.start();
    let mut admin = sqlx::PgConnection::connect(&postgres.url("postgres"))
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE fleet")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    let mut fleetd = Fleetd::new(work.path(), &postgres.url("fleet"));
    fleetd.start().await;
    let agent_binary = fleet_tests::workspace_binary("edge-agent", "fleet-agent");

    // A tenant and one token for every agent, straight in the database.
    let settings = DatabaseSettings {
        url: Some(postgres.url("fleet").parse().unwrap()),
        data_dir: PathBuf::from("/nonexistent-test-data-dir"),
        app_password: None,
        postgres_bindir: None,
        max_connections: 4,
        connect_timeout: Duration::from_secs(10),
    };
    let database = store::Database::open(&settings, store::Purpose::Server)
        .await
        .unwrap();
    let tenant_id: TenantId = tenant(&database.app, "faults").await;
    let token = {
        let mut tx = database.app.begin(tenant_id).await.unwrap();
        let new = loopback_token(AGENTS as u32 + 10);
        fleet_tests::ensure_group(&mut tx, &new.device_group).await;
        let issued = enrollment_tokens::create(&mut tx, &new, &audit::Actor::System)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        issued.secret.expose().to_owned()
    };
    database.close().await.unwrap();
    let root = work.path().join("root-ca.pem");
    std::fs::copy(work.path().join("data/pki/root-ca.pem"), &root)
        .or_else(|_| {
            let ca = certs::IssuingCa::load(&work.path().join("data/pki")).unwrap();
            std::fs::write(&root, ca.root_pem()).map(|()| 0)
        })
        .unwrap();

    // Agent 0 is behind the proxy with a small outbox; agent 1 has its state on a small tmpfs
    // and a proxy of its own (cut while its disk is full, so that the eviction takes records
    // that never reached the server).
    let proxy = BlackHoleProxy::start(fleetd.broker).await;
    let disk_proxy = BlackHoleProxy::start(fleetd.broker).await;
    let mut agents = Vec::new();
    let mut tmpfs = None;
    for index in 0..AGENTS {
        let dir = work.path().join(format!("agent-{index:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        if index == 1 {
            tmpfs = Some(Tmpfs::mount(&dir.join("state"), "512k"));
        }
        let config = if index == 0 {
            format!("{AGENT_CONFIG}{SMALL_OUTBOX}")
        } else {
            AGENT_CONFIG.to_owned()
        };
        std::fs::write(dir.join("agent.toml"), config).unwrap();
        agents.push(dir);
    }
    let enrolled = {
        let binary = agent_binary.clone();
        let dirs = agents.clone();
        let (api, root, token) = (fleetd.api, root.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            std::thread::scope(|scope| {
                let handles: Vec<_> = dirs
                    .chunks(AGENTS / 4)
                    .map(|chunk| {
                        scope.spawn(|| {
                            chunk
                                .iter()
                                .map(|dir| enroll(&binary, dir, api, &root, &token))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .await
        .unwrap()
    };
    redirect_broker(&agents[0], fleetd.broker, proxy.addr);
    redirect_broker(&agents[1], fleetd.broker, disk_proxy.addr);
    let mut agents: Vec<Agent> = agents
        .into_iter()
        .zip(enrolled)
        .map(|(dir, device)| Agent {
            dir,
            device,
            child: None,
        })
        .collect();
    for agent in &mut agents {
        agent.start(&agent_binary);
    }
    println!(
        "{AGENTS} agents enrolled and running after {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The schedule: one shuffled round of every fault (more rounds in the long mode).
    let long_until = Instant::now() + long_mode();
    let mut cut_ends: Option<Instant> = None;
    let mut torn = Vec::new();
    loop {
        let mut faults = round_of_faults();
        shuffle(&mut faults, &mut rng);
        for fault in faults {
            tokio::time::sleep(rng.pause(1_000, 6_000)).await;
            if cut_ends.is_some_and(|end| Instant::now() >= end) {
                proxy.cut.store(false, Ordering::SeqCst);
                cut_ends = None;
            }
            match fault {
                Fault::KillFleetd => {
                    fleetd.kill();
                    tokio::time::sleep(rng.pause(200, 3_000)).await;
                    fleetd.start().await;
                    counts.note("fleetd SIGKILL");
                }
                Fault::PostgresFast | Fault::PostgresImmediate => {
                    let mode = if fault == Fault::PostgresFast {
                        "fast"
                    } else {
                        "immediate"
                    };
                    postgres.stop(mode);
                    tokio::time::sleep(rng.pause(200, 3_000)).await;
                    postgres.start();
                    counts.note(if mode == "fast" {
                        "postgres stop -m fast"
                    } else {
                        "postgres stop -m immediate"
                    });
                }
                Fault::CutNetwork => {
                    if cut_ends.is_none() {
                        proxy.cut.store(true, Ordering::SeqCst);
                        cut_ends = Some(Instant::now() + NETWORK_CUT);
                        counts.note("network cut 30 s");
                    }
                }
                Fault::KillAgentWhileWriting => {
                    let index = 2 + rng.below(AGENTS as u64 - 2) as usize;
                    kill_while_writing(&mut agents[index]).await;
                    agents[index].start(&agent_binary);
                    counts.note("agent SIGKILL while writing");
                }
                Fault::TearLastRecord => {
                    // With fleetd down the last record is not yet acked: tearing it can lose it.
                    let index = 2 + rng.below(AGENTS as u64 - 2) as usize;
                    fleetd.kill();
                    tokio::time::sleep(Duration::from_millis(2_500)).await;
                    let agent = &mut agents[index];
                    agent.signal(Signal::SIGKILL);
                    if let Some((seq, payload)) = tear_last_record(&agent.outbox(), &mut rng) {
                        torn.push((index, seq, payload));
                    }
                    agent.start(&agent_binary);
                    fleetd.start().await;
                    counts.note("torn last record");
                }
                Fault::FillDisk => {
                    fill_disk(&mut agents[1], &disk_proxy.cut).await;
                    counts.note("disk full");
                }
            }
        }
        if Instant::now() >= long_until {
            break;
        }
    }
    if let Some(end) = cut_ends {
        tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
        proxy.cut.store(false, Ordering::SeqCst);
    }
    println!("faults done after {:?}: {:?}", started.elapsed(), counts);

    // Everything drains: every agent's last ack covers what it assigned.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for agent in agents.iter_mut() {
            if agent.has_exited() {
                agent.start(&agent_binary);
            }
        }
        let waiting: Vec<usize> = (0..AGENTS).filter(|i| !agents[*i].drained()).collect();
        if waiting.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agents {waiting:?} did not drain; first one's log:\n{}\nfleetd:\n{}",
            agents[waiting[0]].log(),
            fleetd.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for agent in agents.iter_mut() {
        agent.signal(Signal::SIGTERM);
    }

    // The accounting, per device, against PostgreSQL.
    let mut owner = sqlx::PgConnection::connect(&postgres.url("fleet"))
        .await
        .unwrap();
    let (mut assigned, mut stored, mut dropped, mut pending) = (0u64, 0u64, 0u64, 0u64);
    for agent in &agents {
        let rows: Vec<(i64,)> =
            sqlx::query_as("SELECT seq FROM device_records WHERE device_id = $1 ORDER BY seq")
                .bind(agent.device)
                .fetch_all(&mut owner)
                .await
                .unwrap();
        let seqs: BTreeSet<u64> = rows.iter().map(|(seq,)| *seq as u64).collect();
        assert_eq!(
            seqs.len(),
            rows.len(),
            "device {} has a sequence number twice",
            agent.device
        );
        let mut reported = BTreeSet::new();
        for (range, count) in reported_drops(&mut owner, agent.device).await {
            let range: BTreeSet<u64> = range.collect();
            assert!(
                range.is_disjoint(&seqs),
                "device {}: a reported drop {range:?} overlaps stored records",
                agent.device
            );
            // Counted exactly: the report's count is the size of its range, none of it stored.
            assert_eq!(
                count,
                range.len() as u64,
                "device {}: the drop report of {range:?} counts {count}",
                agent.device
            );
            reported.extend(range);
        }
        let epoch = meta_value(&agent.outbox(), "epoch").unwrap_or_default();
        assert!(
            epoch.ends_with(" 1"),
            "device {}: one sequence space from 1 (epoch {epoch})",
            agent.device
        );
        // The state file is written on every change, the meta file only at acks and drops.
        let next_seq: u64 = meta_value(&agent.outbox(), "next_seq")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            .max(agent.state()["next_seq"].as_u64().unwrap_or(0));
        let acked: u64 = meta_value(&agent.outbox(), "acked")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let waiting = pending_on_disk(&agent.outbox(), acked);
        let missing: Vec<u64> = (1..next_seq)
            .filter(|seq| !seqs.contains(seq) && !reported.contains(seq) && !waiting.contains(seq))
            .collect();
        assert!(
            missing.is_empty(),
            "device {} (agent dir {}): sequence numbers {missing:?} are neither stored, reported dropped nor in the outbox; log:\n{}",
            agent.device,
            agent.dir.display(),
            agent.log()
        );
        assigned += next_seq - 1;
        stored += seqs.len() as u64;
        dropped += reported.iter().filter(|s| **s < next_seq).count() as u64;
        pending += waiting.difference(&seqs).count() as u64;
    }
    // A torn record is either reported dropped or stored as it was written: its sequence number
    // must never name another record.
    for (index, seq, payload) in &torn {
        let agent = &agents[*index];
        let written = wire::encode_body(&wire::decode_record(payload).unwrap().body);
        let stored_body: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT body FROM device_records WHERE device_id = $1 AND seq = $2")
                .bind(agent.device)
                .bind(*seq as i64)
                .fetch_optional(&mut owner)
                .await
                .unwrap();
        let reported = reported_drops(&mut owner, agent.device)
            .await
            .iter()
            .any(|(range, _)| range.contains(seq));
        println!(
            "torn record: agent {index} seq {seq}: reported dropped {reported}, stored as written {}",
            stored_body.as_ref() == Some(&written)
        );
        assert!(
            reported || stored_body.as_ref() == Some(&written),
            "agent {index} (device {}): the torn record {seq} is neither reported dropped nor stored; seq {seq} holds another record: {}",
            agent.device,
            stored_body.is_some()
        );
    }
    let drops_by_reason = drops_by_reason(&agents);

    let mut tx = store::Database::open(&settings, store::Purpose::Server)
        .await
        .unwrap()
        .app
        .begin(tenant_id)
        .await
        .unwrap();
    let verdict = audit::verify(&mut tx).await.unwrap();
    assert!(
        matches!(verdict, ChainVerdict::Intact { .. }),
        "audit chain: {verdict:?}"
    );
    tx.rollback().await.unwrap();
    drop(tmpfs);
    println!(
        "fault test: seed {seed}, {AGENTS} agents, records assigned {assigned}, stored {stored}, dropped {dropped} by reason {drops_by_reason:?}, still in outboxes {pending}, duplicates 0, faults {:?}, elapsed {:?}",
        counts.faults,
        started.elapsed()
    );
}

/// The sequence ranges the device reported dropped, with the count each report gives (its
/// outbox overflow events in the ledger).
async fn reported_drops(
    owner: &mut sqlx::PgConnection,
    device: Uuid,
) -> Vec<(std::ops::RangeInclusive<u64>, u64)> {
    let bodies: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT body FROM device_records WHERE device_id = $1 AND kind = 'event' ORDER BY seq",
    )
    .bind(device)
    .fetch_all(owner)
    .await
    .unwrap();
    bodies
        .iter()
        .filter_map(|body| match wire::decode_body(body).unwrap() {
            wire::Body::Event(wire::AgentEvent::OutboxOverflow(overflow)) => {
                Some((overflow.first_seq..=overflow.last_seq, overflow.dropped))
            }
            _ => None,
        })
        .collect()
}

/// The agents' own drop reports by reason, from their logs (the wire event has no reason).
fn drops_by_reason(agents: &[Agent]) -> BTreeMap<String, u64> {
    let mut by_reason = BTreeMap::new();
    for agent in agents {
        for line in agent.log().lines() {
            if !line.contains("outbox dropped records") {
                continue;
            }
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(&format!("{name}=")))
                    .map(|v| v.trim_matches('"').to_owned())
            };
            if let (Some(reason), Some(count)) = (field("reason"), field("count")) {
                *by_reason.entry(reason).or_default() += count.parse::<u64>().unwrap_or(0);
            }
        }
    }
    by_reason
}

/// SIGKILL the moment the agent's last segment grows: as close to the middle of an append as
/// a process outside can get.
async fn kill_while_writing(agent: &mut Agent) {
    let outbox = agent.outbox();
    let size = |path: &Option<PathBuf>| {
        path.as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    };
    let segment = last_segment(&outbox);
    let before = (segment.clone(), size(&segment));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let segment = last_segment(&outbox);
        if (segment.clone(), size(&segment)) != before || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    agent.signal(Signal::SIGKILL);
}

/// Cuts the last record of the outbox's last segment partway, as a torn write leaves it;
/// returns its sequence number and payload.
fn tear_last_record(outbox: &Path, rng: &mut Rng) -> Option<(u64, Vec<u8>)> {
    let segment = last_segment(outbox)?;
    let bytes = std::fs::read(&segment).unwrap();
    let (offset, seq, len) = *segment_records(&bytes).last()?;
    let keep = offset + 1 + rng.below(len as u64 - 1) as usize;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(keep as u64).unwrap();
    Some((
        seq,
        bytes[offset + RECORD_HEADER_LEN..offset + len].to_vec(),
    ))
}

/// Fills the agent's tmpfs until its outbox is full: with the agent's link cut, so that what it
/// appends stays unacknowledged, a filler file takes every free byte; the agent must go on
/// appending by evicting its oldest records (and say so) rather than stop. Then frees the space
/// and restores the link.
async fn fill_disk(agent: &mut Agent, cut: &AtomicBool) {
    cut.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let evicted_before = agent.log().matches(EVICTED).count();
    let filler = agent.dir.join("state/filler");
    {
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
    }
    // Records of about 300 bytes once a second fill the last page of the segment in about 15 s.
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline
        && !agent.has_exited()
        && agent.log().matches(EVICTED).count() == evicted_before
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A few more appends on the full disk, each evicting again if it must.
    tokio::time::sleep(Duration::from_secs(3)).await;
    std::fs::remove_file(&filler).unwrap();
    cut.store(false, Ordering::SeqCst);
    let log = agent.log();
    assert!(
        !agent.has_exited(),
        "the agent stopped on a full disk; its log:\n{log}"
    );
    let evictions = log.matches(EVICTED).count() - evicted_before;
    println!("disk full: the agent kept running and evicted {evictions} times");
    assert!(
        evictions > 0,
        "the full disk never filled the outbox; the agent's log:\n{log}"
    );
}

/// What the agent logs when it evicts records not yet acknowledged.
const EVICTED: &str = "outbox evicted records not yet acknowledged";
