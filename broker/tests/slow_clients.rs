//! Silent TCP connections cannot hold the door: each handshake runs in its own task
//! with a timeout, and capacity caps close new sockets at once instead of queueing.

mod common;

use std::time::{Duration, Instant};

use broker::{BrokerHooks, Refusal};
use common::*;
use tokio::net::TcpStream;

#[tokio::test]
async fn five_hundred_silent_connections_do_not_delay_a_real_device() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |_| {}).await;
    let mut silent = Vec::with_capacity(500);
    for _ in 0..500 {
        silent.push(TcpStream::connect(broker.local_addr()).await.unwrap());
    }
    eventually(&broker, |stats| stats.tcp_accepted == 500).await;

    let device = pki.device();
    let start = Instant::now();
    let (_client, _eventloop) = connect(device_options(&pki, &broker, &device)).await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "connect took {took:?}");
    drop(silent);
    broker.shutdown().await;
}

#[tokio::test]
async fn silent_connections_time_out_and_capacity_is_refused_at_once() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |config| {
        config.handshake_timeout = Duration::from_millis(300);
        config.max_handshakes_in_flight = 4;
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(TcpStream::connect(broker.local_addr()).await.unwrap());
    }
    eventually(&broker, |stats| {
        stats.refused(Refusal::HandshakeCapacity) == 2
    })
    .await;
    eventually(&broker, |stats| {
        stats.refused(Refusal::TlsHandshakeTimeout) == 4
    })
    .await;
    // Capacity is back: a device gets in.
    let device = pki.device();
    let _ = connect(device_options(&pki, &broker, &device)).await;
    drop(silent);
    broker.shutdown().await;
}

#[tokio::test]
async fn connections_above_the_cap_are_closed_at_once() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |config| {
        config.max_connections = 1;
    })
    .await;
    let device = pki.device();
    let (_client, eventloop) = connect(device_options(&pki, &broker, &device)).await;
    let driver = drive(eventloop);
    let other = pki.device();
    assert_eq!(
        connect_code(device_options(&pki, &broker, &other)).await,
        None
    );
    assert_eq!(broker.stats().refused(Refusal::ConnectionLimit), 1);
    driver.abort();
    broker.shutdown().await;
}
