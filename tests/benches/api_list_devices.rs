//! `GET /v1/devices?limit=100` under load: requests per second and p99 latency, driven by `wrk`
//! over HTTPS with one owner key, once with the verified-key cache (the default) and once
//! without it (a cache with a zero time to live: every request pays argon2id). A program that prints numbers,
//! not a test.
//!
//!     apt-get install -y wrk   # Debian's wrk 4.1: HTTPS, keep-alive, no certificate checks
//!     TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!         cargo bench -p fleet-tests --bench api_list_devices
//!
//! Two diagnostic cases follow, to show where the time goes: `GET /v1/tenant` (the same key
//! check and tenant transaction with a tiny answer) and `GET /healthz` (TLS and HTTP alone).
//!
//! Setup: a fresh database on TEST_DATABASE_URL's server, one tenant with 10,000 devices
//! (inserted with one INSERT ... SELECT as the owner), the API served as fleetd serves it
//! (`api::router` on `api::serve_tls`) on an ephemeral port of 127.0.0.1, with fleetd's default
//! pool (16 connections) and TLS from a development PKI. Each case runs a 3 s warm-up, then the
//! measured run. While it runs, the CPU time of this process
//! (the API server: its threads do nothing else), of wrk and of the pool's PostgreSQL backends is
//! read from /proc, and `top -b -n 1` is printed once mid-run.
//!
//! Environment: `BENCH_SECONDS` (default 15), `BENCH_THREADS` (2), `BENCH_CONNECTIONS` (32).

use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use api::ApiState;
use fleet_tests::TestDb;
use sqlx::Row;
use store::api_keys::KeyEnv;
use store::audit::Actor;
use store::{tenants, Database, Purpose};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const DEVICES: i64 = 10_000;
const PATH: &str = "/v1/devices?limit=100";
/// fleetd's default `database.max_connections`.
const POOL: u32 = 16;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    if std::env::var("TEST_DATABASE_URL").map_or(true, |url| url.is_empty()) {
        println!(
            "api_list_devices: skipped, it needs TEST_DATABASE_URL (a PostgreSQL superuser URL, \
             e.g. postgres://postgres@127.0.0.1:5432/postgres)"
        );
        return;
    }
    if !fleet_tests::wrk::installed() {
        println!("api_list_devices: skipped, it needs wrk on PATH (apt-get install -y wrk)");
        return;
    }
    let seconds = env_or("BENCH_SECONDS", 15);
    let threads = env_or("BENCH_THREADS", 2);
    let connections = env_or("BENCH_CONNECTIONS", 32);

    let test_db = TestDb::new().await;
    let mut settings = test_db.settings();
    settings.max_connections = POOL;
    let db = Database::open(&settings, Purpose::Server)
        .await
        .expect("open the database");
    let (tenant, key) =
        tenants::create_with_owner_key(&db.app, "bench", &KeyEnv::live(), &Actor::System)
            .await
            .expect("tenant and owner key");
    let key = key.secret.expose().to_owned();
    let mut owner = test_db.connect_as_owner().await;
    sqlx::query(
        "INSERT INTO devices (tenant_id, device_id, name, device_group, labels)
         SELECT $1, gen_random_uuid(), 'device-' || lpad(n::text, 5, '0'), 'default',
                jsonb_build_object('site', 'site-' || (n % 10), 'rack', 'r' || (n % 40))
           FROM generate_series(1, $2) AS n",
    )
    .bind(tenant.id)
    .bind(DEVICES)
    .execute(&mut owner)
    .await
    .expect("insert devices");
    sqlx::query("ANALYZE devices")
        .execute(&mut owner)
        .await
        .expect("analyze");

    let pki_dir = tempfile::tempdir().expect("temporary directory");
    let (ca, _) = certs::Pki::load_or_generate_dev(pki_dir.path()).expect("development PKI");
    let server_cert = ca
        .issue_server_cert(&certs::ServerCertParams::new(
            vec!["localhost".into()],
            vec![IpAddr::from([127, 0, 0, 1])],
        ))
        .expect("server certificate");
    let tls = api::tls_server_config_for(&server_cert, ca.root_der().clone()).expect("TLS");
    let ca = Arc::new(ca);

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    println!(
        "GET {PATH}: {DEVICES} devices in the tenant, wrk -t{threads} -c{connections} -d{seconds}s \
         --latency, pool {POOL} connections, {cores} cores"
    );
    let cached = api::DEFAULT_KEY_CACHE_TTL;
    let mut results = Vec::new();
    for (label, path, ttl) in [
        ("key cache on (300 s)", PATH, cached),
        ("key cache off", PATH, Duration::ZERO),
        // Where the time goes: the same authentication and transaction with a tiny answer, and
        // TLS + HTTP alone (no key, no database).
        (
            "diagnostic: GET /v1/tenant, key cache on",
            "/v1/tenant",
            cached,
        ),
        ("diagnostic: GET /healthz", "/healthz", cached),
    ] {
        let state = ApiState {
            key_cache: api::KeyCache::new(ttl, api::DEFAULT_KEY_CACHE_CAPACITY),
            ..ApiState::new(db.app.clone(), ca.clone(), "mqtts://localhost:8883".into())
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(api::serve_tls(
            listener,
            tls.clone(),
            api::router(state),
            async move {
                let _ = stopped.await;
            },
        ));

        // One request checked by hand: 200 and a full page.
        let auth = format!("Bearer {key}");
        let answer = fleet_tests::https::https_request(
            addr,
            &ca,
            "GET",
            path,
            &[("authorization", &auth)],
            b"",
        )
        .await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        if path == PATH {
            let body = answer.json();
            assert_eq!(body["items"].as_array().map(Vec::len), Some(100));
        }
        let body_len = answer.body.len();

        let url = format!("https://{addr}{path}");
        fleet_tests::wrk::run(&url, &key, 1, connections, 3).await;
        let before = CpuSample::take(&mut owner).await;
        let top = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds / 2)).await;
            top_snapshot()
        });
        let report = fleet_tests::wrk::run(&url, &key, threads, connections, seconds).await;
        let after = CpuSample::take(&mut owner).await;
        let top = top.await.expect("top");
        let cpu = after.since(&before);

        println!("\n== {label}: GET {path}");
        println!("{}", report.text.trim_end());
        println!("-- top -b -n 1 at {}s:\n{top}", seconds / 2);
        println!(
            "-- CPU seconds over the run ({} s x {} cores = {} available): API server {:.1}, \
             PostgreSQL backends ({} of the pool) {:.1}, wrk {:.1}; response body {} bytes",
            seconds,
            cores,
            seconds * cores,
            cpu.server,
            cpu.backends,
            cpu.postgres,
            cpu.wrk,
            body_len
        );
        results.push((label, report, cpu));

        let _ = stop.send(());
        server.await.expect("server task").expect("server");
    }

    println!(
        "\n| case | requests/s | p99 | non-2xx | CPU s in {seconds} s: API / PostgreSQL / wrk | \
         CPU ms per request: API / PostgreSQL |"
    );
    println!("|---|---:|---:|---:|---|---|");
    for (label, report, cpu) in &results {
        let requests = report.requests_per_sec * seconds as f64;
        let per_request = |cpu_s: f64| {
            if requests > 0.0 {
                cpu_s * 1000.0 / requests
            } else {
                0.0
            }
        };
        println!(
            "| {label} | {:.0} | {} | {} | {:.1} / {:.1} / {:.1} | {:.2} / {:.2} |",
            report.requests_per_sec,
            report.p99,
            report.non_2xx,
            cpu.server,
            cpu.postgres,
            cpu.wrk,
            per_request(cpu.server),
            per_request(cpu.postgres)
        );
    }
    // Without the cache every request pays argon2id (about 25 ms of CPU): far slower, or the
    // TTL did not reach the cache.
    if let [(_, on, _), (_, off, _), ..] = results.as_slice() {
        if off.requests_per_sec * 5.0 > on.requests_per_sec {
            println!(
                "\nWARNING: the run without the key cache was not much slower ({:.0} vs {:.0} \
                 requests/s): was the cache really off?",
                off.requests_per_sec, on.requests_per_sec
            );
        }
    }
    drop(owner);
    db.close().await.expect("close");
}

/// CPU time (user + system, in seconds) of this process, of its waited-for children (wrk) and
/// of the application role's PostgreSQL backends on this database.
struct CpuSample {
    server: f64,
    children: f64,
    backends: Vec<(i32, f64)>,
}

/// Differences between two samples.
struct CpuUse {
    server: f64,
    wrk: f64,
    postgres: f64,
    backends: usize,
}

impl CpuSample {
    async fn take(owner: &mut sqlx::PgConnection) -> Self {
        let pids: Vec<i32> = sqlx::query(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND usename = public.fleet_app_role()",
        )
        .fetch_all(&mut *owner)
        .await
        .expect("backends")
        .iter()
        .map(|row| row.get::<i32, _>("pid"))
        .collect();
        let me = proc_times("self").unwrap_or_default();
        Self {
            server: me.0,
            children: me.1,
            backends: pids
                .into_iter()
                .filter_map(|pid| Some((pid, proc_times(&pid.to_string())?.0)))
                .collect(),
        }
    }

    fn since(&self, before: &CpuSample) -> CpuUse {
        let postgres = self
            .backends
            .iter()
            .map(|(pid, now)| {
                let then = before
                    .backends
                    .iter()
                    .find(|(p, _)| p == pid)
                    .map_or(0.0, |(_, t)| *t);
                now - then
            })
            .sum();
        CpuUse {
            server: self.server - before.server,
            wrk: self.children - before.children,
            postgres,
            backends: self.backends.len(),
        }
    }
}

/// (own user + system, waited-for children's user + system) of `/proc/<pid>/stat`, in seconds.
fn proc_times(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14 to 17 of the line, 12 to 15 after the name.
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // /proc counts in USER_HZ, which is 100 on Linux whatever the kernel's HZ.
    const USER_HZ: f64 = 100.0;
    Some((
        (ticks(11)? + ticks(12)?) / USER_HZ,
        (ticks(13)? + ticks(14)?) / USER_HZ,
    ))
}

/// The busiest processes, as `top` shows them.
fn top_snapshot() -> String {
    let output = Command::new("top")
        .args(["-b", "-n", "1", "-w", "160"])
        .output();
    match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout)
            .lines()
            .take(16)
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("(top: {e})"),
    }
}
