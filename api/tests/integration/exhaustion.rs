//! The API's listener cannot be held open or filled by one client: handshakes are capped per
//! source address, connections overall, a client must send its headers within
//! `header_read_timeout` (right after the handshake and between keep-alive requests), and a
//! connection on which nothing moves for `idle_timeout` is closed. Attacking sockets come from
//! 127.0.0.2 and the real client from 127.0.0.1 (both loopback on Linux), so the per-address cap
//! applies to the attacker only.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use api::TlsLimits;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::common::TestServer;

/// The attacker's source address.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// How long a test waits for the server to close a connection it should close.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// A server with short timeouts, changed by `edit`.
async fn server(edit: impl FnOnce(&mut TlsLimits)) -> TestServer {
    let mut limits = TlsLimits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..TlsLimits::default()
    };
    edit(&mut limits);
    TestServer::start_limited(limits).await
}

async fn tcp_from(source: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(server).await.unwrap()
}

/// A TLS connection to the server from 127.0.0.1, with no request sent.
async fn tls(server: &TestServer) -> TlsStream<TcpStream> {
    let tcp = tcp_from(Ipv4Addr::LOCALHOST, server.addr).await;
    TlsConnector::from(fleet_tests::https::client_config(&server.ca))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the API")
}

/// Reads until the server closes (EOF or error); how long that took, or panics after `limit`.
async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buffer = [0u8; 1024];
    timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .expect("the server kept the connection open");
    start.elapsed()
}

#[tokio::test]
async fn a_client_silent_after_its_handshake_is_closed_after_the_header_read_timeout() {
    let server = server(|limits| limits.idle_timeout = Duration::from_secs(60)).await;
    let mut silent = tls(&server).await;
    closed_within(&mut silent, CLOSE_WITHIN).await;
    server.stop().await;
}

#[tokio::test]
async fn a_slowloris_client_is_closed_after_the_header_read_timeout() {
    let server = server(|limits| limits.idle_timeout = Duration::from_secs(60)).await;
    let (mut read, mut write) = tokio::io::split(tls(&server).await);
    // A header line every 100 ms: never idle, never done.
    let dribble = tokio::spawn(async move {
        write.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
        for n in 0u32.. {
            write.write_all(format!("X-{n}: y\r\n").as_bytes()).await?;
            write.flush().await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<_, std::io::Error>(())
    });
    closed_within(&mut read, CLOSE_WITHIN).await;
    dribble.abort();
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_its_body_is_closed_after_the_idle_timeout() {
    let server = server(|limits| limits.header_read_timeout = Duration::from_secs(60)).await;
    let mut stalled = tls(&server).await;
    stalled
        .write_all(
            b"POST /v1/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    stalled.flush().await.unwrap();
    closed_within(&mut stalled, CLOSE_WITHIN).await;
    server.stop().await;
}

#[tokio::test]
async fn a_thousand_silent_sockets_from_one_address_do_not_keep_other_clients_out() {
    // Default limits but the timeouts: the silent sockets are held far longer than the test.
    let server = server(|limits| {
        limits.handshake_timeout = Duration::from_secs(60);
        limits.header_read_timeout = Duration::from_secs(60);
        limits.idle_timeout = Duration::from_secs(60);
    })
    .await;
    // More than the in-flight handshake cap (1,024): without a per-address cap the accept loop
    // pauses until they time out.
    let mut silent = Vec::with_capacity(1100);
    for _ in 0..1100 {
        silent.push(tcp_from(ATTACKER, server.addr).await);
    }
    let started = Instant::now();
    let answer = timeout(CLOSE_WITHIN, server.request("GET", "/healthz", &[], b""))
        .await
        .expect("a client from another address is served");
    answer.assert_status(200);
    println!(
        "served beside 1,100 silent sockets in {:?}",
        started.elapsed()
    );
    // The attacker's sockets above its cap were closed at once.
    let per_address = TlsLimits::default().max_handshakes_per_address;
    for refused in &mut silent[per_address..] {
        closed_within(refused, CLOSE_WITHIN).await;
    }
    drop(silent);
    server.stop().await;
}

#[tokio::test]
async fn connections_above_the_cap_are_closed_at_once() {
    let server = server(|limits| {
        limits.max_connections = 2;
        limits.header_read_timeout = Duration::from_secs(60);
        limits.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let first = tls(&server).await;
    let second = tls(&server).await;
    let mut third = tcp_from(Ipv4Addr::LOCALHOST, server.addr).await;
    closed_within(&mut third, CLOSE_WITHIN).await;
    drop(first);
    // A place is free again (once the server has seen the close): a request is served.
    let answer = timeout(CLOSE_WITHIN, async {
        loop {
            let tcp = tcp_from(Ipv4Addr::LOCALHOST, server.addr).await;
            let connector = TlsConnector::from(fleet_tests::https::client_config(&server.ca));
            if let Ok(mut tls) = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
            {
                let request =
                    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
                if tls.write_all(request).await.is_ok() {
                    let mut raw = Vec::new();
                    let _ = tls.read_to_end(&mut raw).await;
                    if raw.starts_with(b"HTTP/1.1 200") {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(answer.is_ok(), "no request served after a place was freed");
    drop(second);
    server.stop().await;
}
