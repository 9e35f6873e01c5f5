//! Issue 11's exhaustion goal, against the real fleetd binary as a child process (its own
//! descriptor limit and its own RSS): with 1,000 idle TCP connections, 500 stalled TLS
//! handshakes and 1,000 slowloris connections held from one address on each listener, a real
//! device still connects and an enrollment still succeeds within 1 s, and fleetd's memory
//! returns to its baseline after the attack.
//!
//! - The attacker's sockets come from 127.0.0.2, the real device and the enrollment from
//!   127.0.0.1 (both loopback on Linux): the per-address caps are meant to stop the attacker,
//!   not the device behind it.
//! - fleetd starts with a soft `RLIMIT_NOFILE` of 1,024 (set by `sh -c 'ulimit -Sn 1024; exec
//!   …'`, no unsafe code), the limit the failure was reported under; it raises it itself.
//! - The attack is held for a bounded time (the measurements, a few seconds), then dropped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_tests::mqtt::DeviceCredentials;
use fleet_tests::TestDb;
use rumqttc::{AsyncClient, Event, Packet};
use rustls::pki_types::ServerName;
use store::enrollment_tokens::{self, NewEnrollmentToken};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;

/// The attacker's source address.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The goal: a device connect and an enrollment each within this, under attack.
const GOAL: Duration = Duration::from_secs(1);
const IDLE_TCP: usize = 1000;
const STALLED_HANDSHAKES: usize = 500;
const SLOWLORIS: usize = 1000;
/// Bound on starting fleetd and on each wait of the test.
const WAIT: Duration = Duration::from_secs(60);

fn fleetd_binary() -> PathBuf {
    fleet_tests::workspace_binary("fleetd", "fleetd")
}

/// fleetd as a child with a soft descriptor limit of 1,024; its log lines are collected.
struct Fleetd {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    api: SocketAddr,
    broker: SocketAddr,
}

impl Fleetd {
    fn start(db: &TestDb, data_dir: &Path) -> Self {
        let script = format!(
            "ulimit -Sn 1024 && exec '{}' --data-dir '{}' --database-url '{}' \
             --api-listen 127.0.0.1:0 --broker-listen 127.0.0.1:0",
            fleetd_binary().display(),
            data_dir.display(),
            db.url()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .env("FLEETD_METRICS_LISTEN", "127.0.0.1:0")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("fleetd ready") {
                    let _ = ready_tx.send(line.clone());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let ready = ready_rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("fleetd not ready: {:?}", log.lock().unwrap()));
        Self {
            child,
            api: address_after(&ready, "https://"),
            broker: address_after(&ready, "mqtts://"),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, from /proc.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    fn soft_descriptor_limit(&self) -> String {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).unwrap();
        limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .unwrap()
            .to_owned()
    }

    fn log_lines_with(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }

    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "fleetd did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Fleetd {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// The `127.0.0.1:port` after `scheme` in fleetd's ready line.
fn address_after(line: &str, scheme: &str) -> SocketAddr {
    let rest = &line[line.find(scheme).expect(scheme) + scheme.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().unwrap()
}

async fn tcp_from(source: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(server).await
}

/// What the attacker holds on one listener until dropped.
struct Attack {
    sockets: Vec<TcpStream>,
    /// Dropping the set aborts the slowloris tasks and closes their connections.
    _slowloris: JoinSet<()>,
}

/// Opens the idle sockets, the stalled handshakes and the slowloris connections against
/// `server` from [`ATTACKER`]. `tls` is the client the slowloris connections handshake with;
/// `dribble` what they then send, a byte at a time, every 500 ms.
async fn attack(
    server: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    dribble: &'static [u8],
) -> Attack {
    let mut sockets = Vec::with_capacity(IDLE_TCP + STALLED_HANDSHAKES);
    for _ in 0..IDLE_TCP {
        if let Ok(socket) = tcp_from(ATTACKER, server).await {
            sockets.push(socket);
        }
    }
    for _ in 0..STALLED_HANDSHAKES {
        let Ok(mut socket) = tcp_from(ATTACKER, server).await else {
            continue;
        };
        // A TLS record header announcing a 512-byte ClientHello, and its first byte only.
        let _ = socket
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await;
        sockets.push(socket);
    }
    let mut slowloris = JoinSet::new();
    for _ in 0..SLOWLORIS {
        let tls = Arc::clone(&tls);
        slowloris.spawn(async move {
            let Ok(tcp) = tcp_from(ATTACKER, server).await else {
                return;
            };
            let connector = tokio_rustls::TlsConnector::from(tls);
            let name = ServerName::try_from("localhost").unwrap();
            let Ok(Ok(mut stream)) = timeout(WAIT, connector.connect(name, tcp)).await else {
                return;
            };
            for byte in dribble.iter().cycle() {
                if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    Attack {
        sockets,
        _slowloris: slowloris,
    }
}

/// How long a real device (127.0.0.1) takes from TCP connect to CONNACK 0x00.
async fn time_device_connect(
    credentials: &DeviceCredentials,
    root: &certs::CertificateDer<'static>,
    broker: SocketAddr,
) -> Duration {
    let options = credentials.options(root, "127.0.0.1", broker.port());
    let started = Instant::now();
    let (_client, mut events) = AsyncClient::new(options, 16);
    timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    assert_eq!(connack.code, rumqttc::ConnectReturnCode::Success);
                    return;
                }
                Ok(_) => {}
                Err(error) => panic!("the device could not connect: {error}"),
            }
        }
    })
    .await
    .expect("CONNACK");
    started.elapsed()
}

/// How long a real enrollment (127.0.0.1) takes, and that it succeeded.
async fn time_enrollment(api: SocketAddr, ca: &certs::IssuingCa, token: &str) -> Duration {
    let (_key, csr) = fleet_tests::device::key_and_csr();
    let body = serde_json::json!({ "token": token, "csr": csr }).to_string();
    let started = Instant::now();
    let response = timeout(
        WAIT,
        fleet_tests::https::https_request(
            api,
            ca,
            "POST",
            "/v1/enroll",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        ),
    )
    .await
    .expect("an enrollment answer");
    let elapsed = started.elapsed();
    response.assert_status(201);
    elapsed
}

async fn token(app: &store::AppDb, tenant: store::TenantId) -> String {
    let new = NewEnrollmentToken {
        name: "goal".into(),
        allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
        daily_limit: 10,
        max_uses: None,
        expires_at: time::OffsetDateTime::now_utc() + time::Duration::days(1),
        device_group: "goal".into(),
        device_labels: BTreeMap::new(),
    };
    let mut tx = app.begin(tenant).await.unwrap();
    fleet_tests::ensure_group(&mut tx, &new.device_group).await;
    let issued = enrollment_tokens::create(&mut tx, &new, &store::audit::Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    issued.secret.expose().to_owned()
}

/// Waits (bounded) until fleetd holds no more descriptors than `baseline` plus a few: the
/// attacker's connections are all closed on its side.
async fn wait_for_descriptors(fleetd: &Fleetd, baseline: usize) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let open = fleetd.open_descriptors();
        if open <= baseline + 8 {
            return open;
        }
        assert!(
            Instant::now() < deadline,
            "fleetd still holds {open} descriptors (baseline {baseline})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_held_connection_attack_a_device_connects_and_an_enrollment_succeeds_within_a_second(
) {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    // The development PKI fleetd would create, made here first so the test can issue with it.
    let (ca, _) = certs::Pki::load_or_generate_dev(&data_dir.path().join("pki")).unwrap();
    let root = ca.root_der().clone();
    let fleetd = Fleetd::start(&db, data_dir.path());
    let app = db.open().await;
    let (tenant, devices) = fleet_tests::tenancy::tenant_with_devices(&app.app, "acme", 2).await;
    let device = DeviceCredentials::issued(&ca, tenant, devices[0]);
    // The broker's slowloris presents a valid certificate of another device of the tenant.
    let attacker_device = DeviceCredentials::issued(&ca, tenant, devices[1]);
    let broker_tls = Arc::new(fleet_tests::device::device_tls(
        &root,
        attacker_device.chain.clone(),
        &attacker_device.key,
    ));
    let api_tls = fleet_tests::https::client_config(&ca);
    let enroll_token = token(&app.app, tenant).await;

    // Baseline: one device connect and one enrollment without attack, so every lazy
    // allocation (pools, caches) is made before the first RSS reading.
    let quiet_connect = time_device_connect(&device, &root, fleetd.broker).await;
    let quiet_enroll = time_enrollment(fleetd.api, &ca, &enroll_token).await;
    let baseline_descriptors = fleetd.open_descriptors();
    let baseline_rss = fleetd.rss_kib();
    println!("{}", fleetd.soft_descriptor_limit());

    let broker_attack = attack(fleetd.broker, broker_tls, &[0x10, 0x7f, 0x00, 0x04]).await;
    let api_attack = attack(fleetd.api, api_tls, b"GET /healthz HTTP/1.1\r\nX-a: b\r\n").await;
    let held = broker_attack.sockets.len() + api_attack.sockets.len();
    let during_descriptors = fleetd.open_descriptors();
    let attacked_connect = time_device_connect(&device, &root, fleetd.broker).await;
    let attacked_enroll = time_enrollment(fleetd.api, &ca, &enroll_token).await;
    let during_rss = fleetd.rss_kib();

    drop(broker_attack);
    drop(api_attack);
    let after_descriptors = wait_for_descriptors(&fleetd, baseline_descriptors).await;
    let after_rss = fleetd.rss_kib();
    println!(
        "device connect {quiet_connect:?} quiet, {attacked_connect:?} under attack; \
         enrollment {quiet_enroll:?} quiet, {attacked_enroll:?} under attack; \
         attacker sockets opened {held}; fleetd descriptors {baseline_descriptors} / \
         {during_descriptors} / {after_descriptors}, RSS {baseline_rss} / {during_rss} / \
         {after_rss} KiB (before / during / after)"
    );
    let too_many_files = fleetd.log_lines_with("Too many open files");
    assert_eq!(too_many_files, 0, "fleetd ran out of descriptors");
    assert!(
        attacked_connect < GOAL,
        "device connect took {attacked_connect:?}"
    );
    assert!(
        attacked_enroll < GOAL,
        "enrollment took {attacked_enroll:?}"
    );
    // Back to baseline: within 16 MiB (allocator pages, a thread's stack) of before.
    assert!(
        after_rss <= baseline_rss + 16 * 1024,
        "RSS {after_rss} KiB after the attack, {baseline_rss} KiB before"
    );
    fleetd.stop();
}
