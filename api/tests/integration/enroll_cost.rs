//! What an enrollment attempt costs the server (issue 11, item 2): bogus tokens cost a row
//! lookup, not argon2, and are limited per source address; tokens hashed with argon2id before
//! migration 0008 still enroll; an oversized body is answered 413, not reset.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{p256_csr, Response, TestServer};
use store::credentials;
use store::enrollment_tokens::{secret, PresentedToken};

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const REAL_DEVICE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// `token` with another secret (one character changed) and a checksum that matches again: well
/// formed, so only the hash comparison can refuse it.
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
    assert!(PresentedToken::parse(&wrong).is_ok(), "still well formed");
    wrong
}

fn retry_after(response: &Response) -> u64 {
    response.header("retry-after").unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bogus_attempts_from_one_address_leaves_real_enrollments_from_another_answered_within_a_second(
) {
    let server = Arc::new(TestServer::start().await);
    let issued = server.token(|t| t.daily_limit = 100).await;
    let real = issued.secret.expose().to_owned();
    let bogus = Arc::new(with_wrong_secret(&real));

    // The attacker: up to 1,000 attempts a second (one every millisecond, at most 200 in
    // flight, each on a new TLS connection), for as long as the real device is enrolling. A
    // debug build handshakes far fewer than that on two cores; the release rate is measured by
    // `tests/benches/enroll_cost.rs` (BENCHMARKS.md).
    let stop = Arc::new(tokio::sync::Notify::new());
    let statuses = Arc::new(std::sync::Mutex::new(Vec::<u16>::new()));
    let sent = Arc::new(AtomicU64::new(0));
    let attacker = {
        let (server, bogus, stop, statuses, sent) = (
            server.clone(),
            bogus.clone(),
            stop.clone(),
            statuses.clone(),
            sent.clone(),
        );
        tokio::spawn(async move {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(200));
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let csr = p256_csr();
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    () = stop.notified() => break,
                    _ = tick.tick() => {}
                }
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    continue;
                };
                sent.fetch_add(1, Ordering::Relaxed);
                let (server, bogus, statuses, csr) =
                    (server.clone(), bogus.clone(), statuses.clone(), csr.clone());
                tasks.spawn(async move {
                    let response = server.enroll_from(ATTACKER, &bogus, &csr).await;
                    statuses.lock().unwrap().push(response.status);
                    drop(permit);
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };

    // Let the flood build up, then the real device enrolls from its own address, five times.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    for _ in 0..5 {
        let asked = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(1),
            server.enroll_from(REAL_DEVICE, &real, &p256_csr()),
        )
        .await
        .unwrap_or_else(|_| panic!("a real enrollment was not answered within 1 s"));
        server.certificate_answer(&answer);
        assert!(asked.elapsed() < Duration::from_secs(1));
    }
    let flood_seconds = started.elapsed().as_secs_f64() + 0.5;
    stop.notify_one();
    tokio::time::timeout(Duration::from_secs(60), attacker)
        .await
        .expect("the attacker's requests end")
        .unwrap();

    let statuses = statuses.lock().unwrap().clone();
    let refused = statuses.iter().filter(|s| **s == 401).count();
    let slowed = statuses.iter().filter(|s| **s == 429).count();
    println!(
        "{} bogus attempts in {flood_seconds:.1} s: {refused} answered 401, {slowed} answered 429",
        sent.load(Ordering::Relaxed)
    );
    // At most the limit reached the token check; every other attempt was slowed.
    let limit = api::EnrollLimits::default().failures_per_window as usize;
    assert!(refused <= limit, "{refused} attempts got past the limit");
    assert_eq!(refused + slowed, statuses.len(), "{statuses:?}");
    assert!(slowed > 0);
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}

#[tokio::test]
async fn past_the_failure_limit_only_that_address_gets_429_with_retry_after() {
    let server = TestServer::start().await;
    let issued = server.token(|t| t.daily_limit = 10).await;
    let real = issued.secret.expose();
    let bogus = with_wrong_secret(real);
    let limit = api::EnrollLimits::default().failures_per_window;
    // A successful enrollment from the address does not count against it.
    server.certificate_answer(&server.enroll_from(ATTACKER, real, &p256_csr()).await);
    for _ in 0..limit {
        server
            .enroll_from(ATTACKER, &bogus, &p256_csr())
            .await
            .assert_problem(401, "invalid-token");
    }
    // Now even the right token is refused from there, before it is looked at...
    let slowed = server.enroll_from(ATTACKER, real, &p256_csr()).await;
    slowed.assert_problem(429, "too-many-failures");
    assert!((1..=60).contains(&retry_after(&slowed)));
    // ...while another address enrolls.
    server.certificate_answer(&server.enroll_from(REAL_DEVICE, real, &p256_csr()).await);
    server.stop().await;
}

#[tokio::test]
async fn a_token_hashed_with_argon2id_before_0008_still_enrolls() {
    let server = TestServer::start().await;
    let issued = server.token(|_| {}).await;
    let text = issued.secret.expose();
    let presented = PresentedToken::parse(text).unwrap();
    let mut owner = server.test_db.connect_as_owner().await;
    let id = issued.token.id;
    assert!(stored_hash(&mut owner, id).await.starts_with("$sha256$"));
    // As a token created before the migration has it.
    let legacy = secret::legacy_argon2_hash(&presented);
    sqlx::query("UPDATE enrollment_tokens SET secret_hash = $2 WHERE token_id = $1")
        .bind(issued.token.id)
        .bind(&legacy)
        .execute(&mut owner)
        .await
        .unwrap();

    server
        .enroll(&with_wrong_secret(text))
        .await
        .assert_problem(401, "invalid-token");
    assert_eq!(
        stored_hash(&mut owner, id).await,
        legacy,
        "a wrong secret changes nothing"
    );
    server.certificate_answer(&server.enroll(text).await);
    assert_eq!(
        stored_hash(&mut owner, id).await,
        legacy,
        "hashes are never rewritten"
    );
    server.certificate_answer(&server.enroll(text).await);
    server
        .enroll(&with_wrong_secret(text))
        .await
        .assert_problem(401, "invalid-token");
    drop(owner);
    server.stop().await;
}

async fn stored_hash(owner: &mut sqlx::PgConnection, id: store::EnrollmentTokenId) -> String {
    sqlx::query_scalar("SELECT secret_hash FROM enrollment_tokens WHERE token_id = $1")
        .bind(id)
        .fetch_one(owner)
        .await
        .unwrap()
}

/// A POST of `body` to `/v1/enroll` on a fresh TLS connection that writes the whole request,
/// then reads until the server closes: `Err` when writing or reading fails (a reset) instead of
/// ending with the server's close.
async fn post_and_read_to_the_end(server: &TestServer, body: &[u8]) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(fleet_tests::https::client_config(&server.ca));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let head = format!(
        "POST /v1/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    tls.write_all(body)
        .await
        .map_err(|e| format!("write: {e}"))?;
    tls.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read after {} bytes: {e}", answer.len()))?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn a_body_of_a_megabyte_or_more_is_answered_413_before_the_connection_closes() {
    let server = TestServer::start().await;
    for size in [1_000_000, 1 << 20, 4 << 20] {
        let body = vec![b'A'; size];
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            post_and_read_to_the_end(&server, &body),
        )
        .await
        .expect("answered")
        .unwrap_or_else(|e| panic!("{size} bytes: {e}"));
        assert!(
            answer.starts_with("HTTP/1.1 413 "),
            "{size} bytes: {answer}"
        );
        assert!(answer.contains("body-too-large"), "{answer}");
    }
    server.stop().await;
}
