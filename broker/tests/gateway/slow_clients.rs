//! Silent TCP connections cannot hold the door: each handshake runs in its own task
//! with a timeout, and capacity caps close new sockets at once instead of queueing.

use std::time::Duration;

use crate::common::*;
use broker::{BrokerHooks, Refusal};
use rumqttc::{AsyncClient, ConnectReturnCode, Packet};
use tokio::net::TcpStream;

#[tokio::test]
async fn five_hundred_silent_connections_do_not_delay_a_real_device() {
    // Silent handshakes are held for a minute, far longer than the test runs: a device queued
    // behind them (handshakes handled one at a time, or a full accept loop) would get in only
    // when one of them times out, after 60 s.
    const HELD: Duration = Duration::from_secs(60);
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |config| {
        config.handshake_timeout = HELD;
        // The silent sockets and the device share 127.0.0.1: this test is about the handshake
        // task per connection, not the per-address cap (exhaustion.rs tests that).
        config.max_handshakes_per_address = 1024;
    })
    .await;
    let mut silent = Vec::with_capacity(500);
    for _ in 0..500 {
        silent.push(TcpStream::connect(broker.local_addr()).await.unwrap());
    }
    eventually(&broker, |stats| stats.tcp_accepted == 500).await;

    let device = pki.device();
    // Not a latency target: one TLS handshake and CONNECT take milliseconds, and even on a
    // loaded 2-core machine running a debug build a few seconds at most. A device that waited
    // for the silent connections would need HELD (60 s). The bound sits between the two, 4x
    // from the failure and far above a slow machine.
    let bound = HELD / 4;
    let (_client, mut eventloop) = AsyncClient::new(device_options(&pki, &broker, &device), 64);
    // Not `wait_connack`: its limit is TIMEOUT, not `bound`. A CONNACK missing within
    // `bound` means the device queued behind the silent connections.
    let connack = next_incoming_within(&mut eventloop, bound, |packet| match packet {
        Packet::ConnAck(connack) => Some(connack),
        _ => None,
    })
    .await;
    assert_eq!(connack.code, ConnectReturnCode::Success);
    // And it got in beside the silent connections, not in place of one: none was dropped.
    let stats = broker.stats();
    assert_eq!(stats.refused(Refusal::TlsHandshakeTimeout), 0);
    assert_eq!(stats.refused(Refusal::HandshakeCapacity), 0);
    assert_eq!((stats.tcp_accepted, stats.handshakes_completed), (501, 1));
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
