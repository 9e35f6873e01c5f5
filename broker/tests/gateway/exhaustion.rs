//! One source address or one certificate cannot take the door from everyone else: handshakes
//! are capped per source address, connections waiting for CONNECT per device identity, and a
//! CONNECT is small. The attacker's sockets come from 127.0.0.2 and the real device from
//! 127.0.0.1 (both loopback on Linux), so the per-address cap applies to the attacker only.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::common::*;
use broker::{BrokerHooks, Refusal};
use rumqttc::{AsyncClient, ConnectReturnCode, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

/// The attacker's source address.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Far longer than any test here runs: a silent socket is never let go by the timeout.
const HELD: Duration = Duration::from_secs(60);

/// A TCP connection to `server` from `ATTACKER`.
async fn connect_from_attacker(server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ATTACKER, 0))).unwrap();
    socket.connect(server).await.unwrap()
}

/// Reads until the server closes (EOF or reset), or panics after `limit`.
async fn assert_closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) {
    let mut buffer = [0u8; 256];
    let closed = timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
}

#[tokio::test]
async fn a_thousand_silent_sockets_from_one_address_do_not_lock_other_devices_out() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |config| {
        config.handshake_timeout = HELD;
    })
    .await;
    // More than the global handshake cap (1,024): without a per-address cap they take all of
    // it and every other device is refused until they time out.
    let mut silent = Vec::with_capacity(1100);
    for _ in 0..1100 {
        silent.push(connect_from_attacker(broker.local_addr()).await);
    }
    eventually(&broker, |stats| stats.tcp_accepted == 1100).await;

    let device = pki.device();
    let (_client, mut eventloop) = AsyncClient::new(device_options(&pki, &broker, &device), 64);
    let connack = next_incoming_within(&mut eventloop, TIMEOUT, |packet| match packet {
        Packet::ConnAck(connack) => Some(connack),
        _ => None,
    })
    .await;
    assert_eq!(connack.code, ConnectReturnCode::Success);
    let stats = broker.stats();
    let per_address = broker::DEFAULT_MAX_HANDSHAKES_PER_ADDRESS as u64;
    assert_eq!(
        stats.refused(Refusal::AddressHandshakeLimit),
        1100 - per_address
    );
    assert_eq!(stats.refused(Refusal::HandshakeCapacity), 0);
    drop(silent);
    broker.shutdown().await;
}

#[tokio::test]
async fn the_handshake_slots_of_an_address_come_back_when_its_sockets_go() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |config| {
        config.handshake_timeout = HELD;
        config.max_handshakes_per_address = 3;
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(connect_from_attacker(broker.local_addr()).await);
    }
    eventually(&broker, |stats| {
        stats.refused(Refusal::AddressHandshakeLimit) == 2
    })
    .await;
    // The refused ones were closed at once; the three held stay open.
    for refused in &mut silent[3..] {
        assert_closed_within(refused, TIMEOUT).await;
    }
    drop(silent);
    // Their slots are back: three more from the same address are taken, the fourth refused.
    let mut again = Vec::new();
    for _ in 0..4 {
        again.push(connect_from_attacker(broker.local_addr()).await);
    }
    eventually(&broker, |stats| {
        stats.refused(Refusal::AddressHandshakeLimit) == 3
    })
    .await;
    drop(again);
    broker.shutdown().await;
}

#[tokio::test]
async fn one_certificate_cannot_hold_more_than_two_connections_before_connect() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |config| {
        config.connect_timeout = HELD;
    })
    .await;
    let device = pki.device();
    let first = raw_tls(&pki, &broker, &device).await;
    let second = raw_tls(&pki, &broker, &device).await;
    let mut third = raw_tls(&pki, &broker, &device).await;
    // Today's code would keep the third open until connect_timeout (60 s here).
    assert_closed_within(&mut third, TIMEOUT).await;
    assert_eq!(broker.stats().refused(Refusal::PendingConnectLimit), 1);
    // Another device is not affected.
    let other = pki.device();
    let _other = connect(device_options(&pki, &broker, &other)).await;
    // A pending one gone, the device's real client gets in.
    drop(first);
    let real = async {
        loop {
            let (client, mut eventloop) =
                AsyncClient::new(device_options(&pki, &broker, &device), 64);
            if let Ok(connack) = wait_connack(&mut eventloop).await {
                assert_eq!(connack.code, ConnectReturnCode::Success);
                return (client, eventloop);
            }
            // The server may not have seen the first one close yet: one more try.
        }
    };
    let _real = timeout(TIMEOUT, real).await.expect("the device got in");
    drop(second);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_connect_above_the_connect_size_limit_is_refused_from_its_header() {
    let pki = TestPki::new();
    let broker = start_broker(&pki, BrokerHooks::admit_all(), |config| {
        config.connect_timeout = HELD;
    })
    .await;
    let device = pki.device();
    let mut tls = raw_tls(&pki, &broker, &device).await;
    // A CONNECT announcing 64 KiB (remaining length 65,536: 0x80 0x80 0x04), of which only
    // the fixed header is sent. Within max_packet_size (1 MiB), far above max_connect_size.
    tls.write_all(&[0x10, 0x80, 0x80, 0x04]).await.unwrap();
    tls.flush().await.unwrap();
    assert_closed_within(&mut tls, TIMEOUT).await;
    assert_eq!(broker.stats().refused(Refusal::ConnectTooLarge), 1);
    // The device's real CONNECT is far below the limit.
    let _client = connect(device_options(&pki, &broker, &device)).await;
    broker.shutdown().await;
}
