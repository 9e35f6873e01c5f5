//! fleetd's Prometheus metrics listener, read as a scraper reads it: plain HTTP, `GET /metrics`.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Everything the metrics listener at `addr` answers to `GET /metrics`, status line and headers
/// included.
pub async fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// The body of [`scrape`]: the samples only.
pub async fn scrape_body(addr: SocketAddr) -> String {
    let response = scrape(addr).await;
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_owned(),
        None => response,
    }
}

/// The value of the counter sample `name` (with its labels, as rendered) on the metrics
/// listener at `addr`, or `None` while it has not been created.
pub async fn counter(addr: SocketAddr, name: &str) -> Option<u64> {
    let response = scrape(addr).await;
    let value = response
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: not a counter: {value}")),
    )
}
