//! Benchmark of the device gateway (not a test: numbers are printed, not asserted).
//!
//! ```text
//! cargo run --release -p broker --example bench_gateway -- [idle_devices] [publishers] [messages_each]
//! ```
//!
//! Prints:
//! 1. full mutual-TLS handshakes per second (no resumption), 16 concurrent clients;
//! 2. idle devices held (each connected with its own certificate and CONNACKed), with
//!    the broker process's RSS per connection. The clients run in a child process (this
//!    program re-executed), so the RSS is the server's alone; they connect from
//!    127.0.0.2, .3, ... (20,000 each), so more than one address's ephemeral ports fit, but
//!    the open-file limit (`ulimit -n`) must exceed the device count in both processes;
//! 3. QoS 1 publishes per second through the gateway (rumqttc publishers over mutual
//!    TLS, a device-publish sink that counts and takes each at once), and the same load against a
//!    Mosquitto started here with TLS client certificates (`require_certificate`,
//!    `use_identity_as_username`) and one MQTT subscriber over TLS. The ratio is the
//!    figure.
//!
//! Everything runs on this machine; clients and servers share its cores.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use broker::{Broker, BrokerConfig, BrokerHooks};
use bytes::BytesMut;
use certs::{
    CertificateDer, DeviceCsr, DeviceIdentity, IssuingCa, Pki, PkiParams, ServerCertParams,
    Validity,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Connect, Protocol};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PAYLOAD: usize = 100;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.get(1).map(String::as_str) == Some("--idle-clients") {
        return runtime.block_on(idle_clients(
            PathBuf::from(&args[2]),
            args[3].parse()?,
            args[4].parse()?,
        ));
    }
    let idle: usize = args
        .get(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(10_000);
    let publishers: usize = args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(50);
    let messages: usize = args.get(3).map(|n| n.parse()).transpose()?.unwrap_or(2_000);
    runtime.block_on(bench(idle, publishers, messages))
}

struct Device {
    identity: DeviceIdentity,
    key: rcgen::KeyPair,
    chain: Vec<CertificateDer<'static>>,
}

fn issue(ca: &IssuingCa) -> anyhow::Result<Device> {
    let identity = DeviceIdentity {
        tenant_id: wire::TenantId::new_random(),
        device_id: wire::DeviceId::new_random(),
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    let csr = DeviceCsr::from_pem(csr.as_bytes())?;
    let cert = ca.sign_device_csr(
        &csr,
        identity,
        Validity::from_now(Duration::from_secs(86_400))?,
    )?;
    Ok(Device {
        identity,
        chain: ca.chain_der(cert.der()),
        key,
    })
}

fn client_tls(
    root: &CertificateDer<'static>,
    device: &Device,
    resume: bool,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(
        device.chain.clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(device.key.serialize_der())),
    )
    .expect("client cert");
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    config
}

/// The device-publish sink of the benchmark: counts each publish and takes it at once.
struct CountingSink(Arc<AtomicU64>);

impl broker::DevicePublishSink for CountingSink {
    fn publish(&self, _message: broker::DevicePublish) -> broker::DevicePublishFuture {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

fn nofile_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn bench(idle: usize, publishers: usize, messages: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki_dir = dir.path().join("pki");
    let pki = Pki::generate(&pki_dir, &PkiParams::default())?;
    let ca = pki.issuing_ca();
    let root = ca.root_der().clone();
    let server = ca.issue_server_cert(&ServerCertParams::new(
        vec!["localhost".into()],
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
    ))?;
    let mut config = BrokerConfig::new(
        server.chain_der(),
        PrivateKeyDer::Pkcs8(server.key().to_pkcs8_der()),
        root.clone(),
    );
    config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    config.publish_rate = 1e9;
    config.publish_burst = u32::MAX;
    config.max_connections = idle + publishers + 1_000;
    config.max_handshakes_in_flight = 4_096;
    // The idle clients come from a few loopback addresses (ephemeral ports are per address).
    config.max_handshakes_per_address = 4_096;
    let rss_before_broker = rss_kib();
    let received = Arc::new(AtomicU64::new(0));
    let mut hooks = BrokerHooks::admit_all();
    hooks.device_publishes = Some(Arc::new(CountingSink(Arc::clone(&received))));
    let broker = Broker::start(config, hooks).await?;
    let addr = broker.local_addr();
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()?.get()
    );
    println!("RLIMIT_NOFILE (soft): {:?}", nofile_limit());

    // 1. Full handshakes per second.
    let device = Arc::new(issue(ca)?);
    let tls = Arc::new(client_tls(&root, &device, false));
    let done = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs(5);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let tls = Arc::clone(&tls);
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let connector = tokio_rustls::TlsConnector::from(tls);
            let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
            while start.elapsed() < duration {
                let tcp = TcpStream::connect(addr).await.expect("tcp");
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .expect("handshake");
                drop(stream);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let handshakes = done.load(Ordering::Relaxed);
    println!(
        "handshakes: {handshakes} full mutual-TLS handshakes in {elapsed:.1} s = {:.0}/s (16 concurrent clients, client and server on the same cores)",
        handshakes as f64 / elapsed
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 2. Idle devices held, clients in a child process.
    let limit = nofile_limit().unwrap_or(1024) as usize;
    let idle = idle.min(limit.saturating_sub(200));
    let rss_before = rss_kib();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--idle-clients",
            &pki_dir.display().to_string(),
            &addr.to_string(),
            &idle.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let start = Instant::now();
    let connected: usize = tokio::task::spawn_blocking(move || {
        for line in lines.by_ref() {
            let line = line?;
            if let Some(n) = line.strip_prefix("READY ") {
                return Ok(n.parse()?);
            }
            println!("  child: {line}");
        }
        bail!("child ended before READY")
    })
    .await??;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib();
    let stats = broker.stats();
    println!(
        "idle devices: {connected} connected in {:.1} s; sessions active {}; broker RSS {} MiB before, {} MiB with them = {:.1} KiB per connection (process RSS at start {} MiB)",
        start.elapsed().as_secs_f64(),
        stats.sessions_active,
        rss_before / 1024,
        rss_after / 1024,
        (rss_after.saturating_sub(rss_before)) as f64 / connected.max(1) as f64,
        rss_before_broker / 1024,
    );
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"stop\n");
    }
    let _ = child.wait();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 3. QoS 1 publishes through the gateway, then through Mosquitto.
    let devices: Vec<Device> = (0..publishers)
        .map(|_| issue(ca))
        .collect::<Result<_, _>>()?;
    let total = (publishers * messages) as u64;
    received.store(0, Ordering::Relaxed);
    let gateway = publish_load(addr, &root, &devices, messages, true, &received).await?;
    println!(
        "gateway: {total} QoS 1 publishes ({PAYLOAD} B, {publishers} publishers) acked in {:.2} s = {:.0}/s; taken by the device-publish sink: {}",
        gateway.0,
        total as f64 / gateway.0,
        gateway.1
    );
    broker.shutdown().await;

    match run_mosquitto(dir.path(), &pki, &server).await {
        Ok((mut mosquitto, port)) => {
            let mosquitto_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let received = Arc::new(AtomicU64::new(0));
            let subscriber =
                mosquitto_subscriber(mosquitto_addr, &root, ca, total, Arc::clone(&received))
                    .await?;
            let result =
                publish_load(mosquitto_addr, &root, &devices, messages, false, &received).await;
            subscriber.abort();
            let _ = mosquitto.kill().await;
            let mosquitto_result = result?;
            println!(
                "mosquitto: {total} QoS 1 publishes acked in {:.2} s = {:.0}/s; delivered to its TLS subscriber: {}",
                mosquitto_result.0,
                total as f64 / mosquitto_result.0,
                mosquitto_result.1
            );
            println!(
                "ratio gateway/mosquitto (QoS 1 publishes acked per second): {:.2}",
                mosquitto_result.0 / gateway.0
            );
        }
        Err(error) => println!("mosquitto: not run ({error:#})"),
    }
    Ok(())
}

/// Connects every publisher, then has each publish `messages` QoS 1 messages and waits
/// for all PUBACKs. Returns (seconds, messages delivered to the consumer meanwhile).
async fn publish_load(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    devices: &[Device],
    messages: usize,
    own_client_ids: bool,
    received: &Arc<AtomicU64>,
) -> anyhow::Result<(f64, u64)> {
    let mut clients = Vec::new();
    for (n, device) in devices.iter().enumerate() {
        let client_id = if own_client_ids {
            device.identity.device_id.to_string()
        } else {
            format!("bench-{n}")
        };
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(60));
        options.set_inflight(100);
        options.set_request_channel_capacity(1_000);
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
            client_tls(root, device, true),
        ))));
        let (client, mut eventloop) = AsyncClient::new(options, 1_000);
        loop {
            match eventloop.poll().await? {
                Event::Incoming(Packet::ConnAck(_)) => break,
                _ => continue,
            }
        }
        clients.push((
            client,
            eventloop,
            wire::topic::telemetry(device.identity.device_id),
        ));
    }
    let start_received = received.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (client, mut eventloop, topic) in clients {
        tasks.push(tokio::spawn(async move {
            let sender = tokio::spawn(async move {
                for _ in 0..messages {
                    client
                        .publish(&topic, QoS::AtLeastOnce, false, vec![7u8; PAYLOAD])
                        .await
                        .expect("queue");
                }
                client
            });
            let mut acked = 0;
            while acked < messages {
                if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.expect("poll") {
                    acked += 1;
                }
            }
            let client = sender.await.expect("sender");
            let _ = client.disconnect().await;
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Let the consumer drain: wait until its count stops moving.
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = received.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let delivered = last - start_received;
    let drained = start.elapsed().as_secs_f64();
    println!("  consumer count settled at {delivered} (checked until {drained:.1} s)");
    Ok((elapsed, delivered))
}

/// Starts Mosquitto with TLS client certificates on an ephemeral loopback port.
async fn run_mosquitto(
    dir: &Path,
    pki: &Pki,
    server: &certs::ServerCertificate,
) -> anyhow::Result<(tokio::process::Child, u16)> {
    let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|path| Path::new(path).exists())
        .context("mosquitto is not installed")?;
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let ca_file = dir.join("mosquitto-ca.pem");
    let cert_file = dir.join("mosquitto-server.pem");
    let key_file = dir.join("mosquitto-server.key");
    std::fs::write(&ca_file, pki.issuing_ca().root_pem())?;
    std::fs::write(&cert_file, server.chain_pem())?;
    std::fs::write(&key_file, server.key().to_pkcs8_pem().as_bytes())?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nlog_dest stderr\nlog_type error\nper_listener_settings false\nallow_anonymous true\nmax_inflight_messages 100\nmax_queued_messages 100000\nlistener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\n",
            ca_file.display(),
            cert_file.display(),
            key_file.display()
        ),
    )?;
    let child = tokio::process::Command::new(binary)
        .arg("-c")
        .arg(&conf)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    for _ in 0..100 {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_ok()
        {
            return Ok((child, port));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("mosquitto did not start listening")
}

/// Mosquitto's consumer: one TLS subscriber on every device's `up` topics.
async fn mosquitto_subscriber(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    ca: &IssuingCa,
    total: u64,
    received: Arc<AtomicU64>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let device = issue(ca)?;
    let mut options = MqttOptions::new("bench-ingest", addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(60));
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
        client_tls(root, &device, true),
    ))));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    client
        .subscribe(wire::topic::INGEST_FILTER, QoS::AtMostOnce)
        .await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await? {
            break;
        }
    }
    Ok(tokio::spawn(async move {
        let _client = client;
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(_)) = event {
                if received.fetch_add(1, Ordering::Relaxed) + 1 == total {
                    return;
                }
            }
        }
    }))
}

/// The child process: connects `count` devices (each its own certificate), prints
/// `READY n` and holds them until told to stop on stdin.
async fn idle_clients(pki_dir: PathBuf, addr: SocketAddr, count: usize) -> anyhow::Result<()> {
    let ca = Arc::new(IssuingCa::load(&pki_dir)?);
    let root = ca.root_der().clone();
    let start = Instant::now();
    let devices: Vec<Device> = (0..count).map(|_| issue(&ca)).collect::<Result<_, _>>()?;
    println!(
        "{count} device certificates issued in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(count.max(1));
    let semaphore = Arc::new(tokio::sync::Semaphore::new(64));
    for (n, device) in devices.into_iter().enumerate() {
        let tx = tx.clone();
        let root = root.clone();
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let source = source_address(n);
        tokio::spawn(async move {
            let result = connect_idle(addr, source, &root, &device).await;
            drop(permit);
            let _ = tx.send(result).await;
        });
    }
    drop(tx);
    let mut held = Vec::with_capacity(count);
    let mut failures = 0;
    while let Some(result) = rx.recv().await {
        match result {
            Ok(stream) => held.push(stream),
            Err(error) => {
                failures += 1;
                if failures <= 3 {
                    println!("connect failed: {error:#}");
                }
            }
        }
    }
    if failures > 0 {
        println!("{failures} connections failed");
    }
    println!("READY {}", held.len());
    std::io::stdout().flush()?;
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    drop(held);
    Ok(())
}

/// Idle devices per loopback source address: below the 28,000 ephemeral ports of one.
const DEVICES_PER_SOURCE_ADDRESS: usize = 20_000;

/// The loopback address idle device `n` connects from: 127.0.0.2, .3, ... (Linux routes all
/// of 127.0.0.0/8 to lo).
fn source_address(n: usize) -> SocketAddr {
    let host = u8::try_from(2 + n / DEVICES_PER_SOURCE_ADDRESS).unwrap_or(u8::MAX);
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0))
}

/// One device: TLS with its certificate, CONNECT (keep-alive 900 s), CONNACK.
async fn connect_idle(
    addr: SocketAddr,
    source: SocketAddr,
    root: &CertificateDer<'static>,
    device: &Device,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(root, device, false)));
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(source)?;
    let tcp = socket.connect(addr).await?;
    let mut stream = connector
        .connect(ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()), tcp)
        .await?;
    let connect = rumqttd::protocol::Packet::Connect(
        Connect {
            keep_alive: 900,
            client_id: device.identity.device_id.to_string(),
            clean_session: true,
        },
        None,
        None,
        None,
        None,
    );
    let mut buffer = BytesMut::new();
    V4.write(connect, &mut buffer)?;
    stream.write_all(&buffer).await?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await?;
    if connack != [0x20, 0x02, 0x00, 0x00] {
        bail!("refused: {connack:?}");
    }
    Ok(stream)
}
