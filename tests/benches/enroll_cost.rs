//! What enrollment attempts cost (issue 11, item 2). A program that prints numbers, not a test.
//!
//!     TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!         cargo bench -p fleet-tests --bench enroll_cost
//!
//! 1. Flood: one address (127.0.0.1) sends bogus enrollments (well-formed tokens of the real
//!    tenant with a wrong secret) at up to `BENCH_FLOOD_RATE` a second on keep-alive
//!    connections for `BENCH_SECONDS`, while a real device from 127.0.0.2 enrolls one after
//!    another on fresh TLS connections: the attacker's answers by status, and the real device's
//!    latency (median, p99, max).
//! 2. Shared token: `BENCH_DEVICES` devices enroll with one token, `BENCH_CLIENTS` at once on
//!    keep-alive connections (CSRs made beforehand): enrollments per second, next to what argon2id
//!    verification alone would allow on this machine's cores (one verification timed here).
//!
//! The API is served as fleetd serves it (`api::router` on `api::serve_tls`, default limits,
//! a pool of 16 connections) on an ephemeral port of 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::ApiState;
use fleet_tests::https::KeepAlive;
use fleet_tests::TestDb;
use store::audit::Actor;
use store::enrollment_tokens;
use store::{credentials, tenants, Database, Purpose};
use tokio::net::TcpListener;

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const REAL_DEVICE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// The shared-token devices: an address of their own, since the flood has used up the
/// attacker's failed-attempt allowance.
const SHARED_TOKEN_DEVICES: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const POOL: u32 = 16;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn csr() -> String {
    fleet_tests::device::key_and_csr().1
}

/// `token` with one secret character changed and a matching checksum.
fn with_wrong_secret(token: &str) -> String {
    let body = &token[..token.len() - credentials::CHECKSUM_LEN];
    let last = body.as_bytes()[body.len() - 2];
    let swapped = if last == b'A' { 'B' } else { 'A' };
    let mut wrong = format!(
        "{}{swapped}{}",
        &body[..body.len() - 2],
        &body[body.len() - 1..]
    );
    let sum = credentials::checksum(&wrong);
    wrong.push_str(std::str::from_utf8(&sum).unwrap());
    wrong
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    if std::env::var("TEST_DATABASE_URL").map_or(true, |url| url.is_empty()) {
        println!("enroll_cost: skipped, it needs TEST_DATABASE_URL (a PostgreSQL superuser URL)");
        return;
    }
    let seconds = env_or("BENCH_SECONDS", 10);
    let flood_rate = env_or("BENCH_FLOOD_RATE", 1000);
    let devices = env_or("BENCH_DEVICES", 10_000) as usize;
    let clients = env_or("BENCH_CLIENTS", 16) as usize;

    let test_db = TestDb::new().await;
    let mut settings = test_db.settings();
    settings.max_connections = POOL;
    let db = Database::open(&settings, Purpose::Server).await.unwrap();
    let tenant = tenants::create(&db.app, "bench", &Actor::System)
        .await
        .unwrap()
        .id;
    let pki_dir = tempfile::tempdir().unwrap();
    let (ca, _) = certs::Pki::load_or_generate_dev(pki_dir.path()).unwrap();
    let server_cert = ca
        .issue_server_cert(&certs::ServerCertParams::new(
            vec!["localhost".into()],
            vec![IpAddr::from([127, 0, 0, 1])],
        ))
        .unwrap();
    let tls = api::tls_server_config_for(&server_cert, ca.root_der().clone()).unwrap();
    let ca = Arc::new(ca);
    let state = ApiState::new(db.app.clone(), ca.clone(), "mqtts://localhost:8883".into());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(api::serve_tls(
        listener,
        tls,
        api::router(state),
        std::future::pending(),
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // 1. The flood.
    let real = fleet_tests::enroll::shared_token(&db.app, tenant, 1_000_000).await;
    let bogus = Arc::new(fleet_tests::enroll::enroll_body(
        &with_wrong_secret(&real),
        &csr(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let connections = 8u64;
    let mut attackers = Vec::new();
    for _ in 0..connections {
        let (bogus, stop, statuses, ca) =
            (bogus.clone(), stop.clone(), statuses.clone(), ca.clone());
        attackers.push(tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 * connections / flood_rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut conn = KeepAlive::connect(addr, &ca, ATTACKER).await;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let status = match conn.enroll(&bogus).await {
                    Some(status) => status,
                    None => {
                        conn = KeepAlive::connect(addr, &ca, ATTACKER).await;
                        0
                    }
                };
                *statuses.lock().unwrap().entry(status).or_default() += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        let body = fleet_tests::enroll::enroll_body(&real, &csr());
        let asked = Instant::now();
        let answer = fleet_tests::https::https_request_from(
            REAL_DEVICE,
            addr,
            &ca,
            "POST",
            "/v1/enroll",
            &[("Content-Type", "application/json")],
            &body,
        )
        .await;
        latencies.push(asked.elapsed());
        assert_eq!(answer.status, 201, "{}", answer.text());
    }
    let flood_elapsed = started.elapsed().as_secs_f64() + 1.0;
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        attacker.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    let attempts: u64 = statuses.values().sum();
    latencies.sort();
    println!(
        "flood from {ATTACKER}: {attempts} bogus attempts in {flood_elapsed:.1} s = {:.0}/s \
         (offered {flood_rate}/s on {connections} keep-alive connections), answers by status {statuses:?}",
        attempts as f64 / flood_elapsed
    );
    println!(
        "real device from {REAL_DEVICE} meanwhile: {} enrollments, latency median {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );

    // 2. One token shared by many devices.
    let shared = Arc::new(fleet_tests::enroll::shared_token(&db.app, tenant, 1_000_000).await);
    let bodies: Vec<Vec<u8>> = (0..devices)
        .map(|_| fleet_tests::enroll::enroll_body(&shared, &csr()))
        .collect();
    let queue = Arc::new(Mutex::new(bodies));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (queue, ca) = (queue.clone(), ca.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = KeepAlive::connect(addr, &ca, SHARED_TOKEN_DEVICES).await;
            let mut enrolled = 0u64;
            loop {
                let Some(body) = queue.lock().unwrap().pop() else {
                    return enrolled;
                };
                match conn.enroll(&body).await {
                    Some(201) => enrolled += 1,
                    Some(other) => panic!("enrollment answered {other}"),
                    None => conn = KeepAlive::connect(addr, &ca, SHARED_TOKEN_DEVICES).await,
                }
            }
        }));
    }
    let mut enrolled = 0;
    for worker in workers {
        enrolled += worker.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let hash = {
        let mut owner = test_db.connect_as_owner().await;
        sqlx::query_scalar::<_, String>("SELECT secret_hash FROM enrollment_tokens LIMIT 1")
            .fetch_one(&mut owner)
            .await
            .unwrap()
    };
    let argon2 = argon2_seconds();
    println!(
        "shared token: {enrolled} of {devices} devices enrolled in {elapsed:.1} s = {:.0}/s with {clients} clients \
         (stored hash {}...); argon2id verification alone would allow {:.0}/s on {cores} cores ({:.1} ms each)",
        enrolled as f64 / elapsed,
        &hash[..8],
        cores as f64 / argon2,
        argon2 * 1000.0
    );
    db.close().await.unwrap();
}

/// Seconds one argon2id verification with the old parameters takes here.
fn argon2_seconds() -> f64 {
    let presented = enrollment_tokens::PresentedToken::parse(&{
        // Any well-formed token: only the hashing is timed.
        let body = format!(
            "fpe_{}_{}_{}",
            "0".repeat(32),
            "0".repeat(32),
            "A".repeat(43)
        );
        let mut text = body.clone();
        text.push_str(std::str::from_utf8(&credentials::checksum(&body)).unwrap());
        text
    })
    .unwrap();
    let legacy = enrollment_tokens::secret::legacy_argon2_hash(&presented);
    let enrollment_tokens::HashCheck::NeedsArgon2(hash) =
        enrollment_tokens::TokenHash::from_stored(legacy).check(&presented)
    else {
        unreachable!("an argon2id hash")
    };
    let started = Instant::now();
    for _ in 0..5 {
        assert!(enrollment_tokens::secret::verify_legacy(
            &hash,
            presented.secret()
        ));
    }
    started.elapsed().as_secs_f64() / 5.0
}
