//! Simulated devices: each one enrolled in the store with its own key and a certificate from
//! fleetd's issuing CA, connecting over mutual TLS from a loopback address of its own range, as
//! MQTT 3.1.1 clients.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use certs::IssuingCa;
use fleet_tests::mqtt::DeviceCredentials;
use fleet_tests::TestDb;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::pki_types::{CertificateDer, ServerName};
use store::{AppDb, DeviceId, TenantId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Devices per loopback source address: the server's per-address handshake limit (128 at
/// once) is for one site's NAT, not for a whole fleet behind one address.
const DEVICES_PER_SOURCE_ADDRESS: usize = 100;

/// The loopback address device `n` connects from: 127.0.1.0 + n / 100 (Linux routes all of
/// 127.0.0.0/8 to lo), so no address runs out of ephemeral ports either.
pub fn source_address(n: usize) -> SocketAddr {
    let host = 256 + (n / DEVICES_PER_SOURCE_ADDRESS) as u32;
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + host.min(0x00ff_fffe));
    SocketAddr::from((ip, 0))
}

/// A tenant named `name` with `n` devices in its group "default", each with its credentials
/// issued by `ca`. The devices are inserted in one statement as the database owner (creating
/// them one by one through the store, audit records and all, takes minutes for ten thousand;
/// the scenarios measure what devices do, not how they are registered).
pub async fn provision(
    test_db: &TestDb,
    app: &AppDb,
    ca: &IssuingCa,
    name: &str,
    n: usize,
) -> (TenantId, Vec<DeviceCredentials>) {
    let tenant = fleet_tests::tenancy::tenant(app, name).await;
    let devices = insert_devices(test_db, tenant, n)
        .await
        .into_iter()
        .map(|id| DeviceCredentials::issued(ca, tenant, id))
        .collect();
    (tenant, devices)
}

/// Inserts `n` devices into `tenant`'s group "default" in one statement as the database
/// owner; returns their ids.
pub async fn insert_devices(test_db: &TestDb, tenant: TenantId, n: usize) -> Vec<DeviceId> {
    let mut owner = test_db.connect_as_owner().await;
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO devices (tenant_id, device_id, name, device_group, labels)
         SELECT $1, gen_random_uuid(), 'sim-' || lpad(i::text, 6, '0'), 'default', '{}'::jsonb
           FROM generate_series(1, $2::int8) AS i
         RETURNING device_id",
    )
    .bind(tenant)
    .bind(n as i64)
    .fetch_all(&mut owner)
    .await
    .expect("insert the simulated devices");
    ids.into_iter().map(DeviceId).collect()
}

/// A device's TLS client: the fleet root only, its own chain, and a session cache of its own
/// (a device keeps its last session's ticket for its next connection).
pub fn tls_config(
    root: &CertificateDer<'static>,
    device: &DeviceCredentials,
) -> Arc<rustls::ClientConfig> {
    let mut config = fleet_tests::device::device_tls(root, device.chain.clone(), &device.key);
    config.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(2)));
    Arc::new(config)
}

/// One connection that reached CONNACK, and how.
pub struct Connected {
    pub stream: TlsStream<TcpStream>,
    /// From the TCP connect to the CONNACK.
    pub took: Duration,
    /// Whether TLS resumed an earlier session instead of a full handshake.
    pub resumed: bool,
}

/// The MQTT 3.1.1 CONNECT of `client_id`: clean session, keep-alive `keep_alive` s.
fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut variable = Vec::with_capacity(12 + client_id.len());
    variable.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02]);
    variable.extend_from_slice(&keep_alive.to_be_bytes());
    variable.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    variable.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10];
    let mut remaining = variable.len();
    loop {
        let mut byte = (remaining % 128) as u8;
        remaining /= 128;
        if remaining > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if remaining == 0 {
            break;
        }
    }
    packet.extend_from_slice(&variable);
    packet
}

/// TCP from `source`, TLS with `tls`, CONNECT as `client_id`, CONNACK accepted.
pub async fn connect(
    server: SocketAddr,
    source: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    client_id: &str,
) -> anyhow::Result<Connected> {
    let started = Instant::now();
    let socket = tokio::net::TcpSocket::new_v4()?;
    // The port is chosen at connect, for the whole 4-tuple: a port bound first could be one
    // whose last connection to the same server is still in TIME_WAIT, and its SYN would wait
    // out a retransmission (a second) before it connects.
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    )
    .context("IP_BIND_ADDRESS_NO_PORT")?;
    socket.bind(source).context("binding the source address")?;
    let tcp = socket.connect(server).await.context("TCP connect")?;
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    stream
        .write_all(&connect_packet(client_id, 900))
        .await
        .context("CONNECT")?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.context("CONNACK")?;
    if connack[0] != 0x20 || connack[3] != 0 {
        bail!("CONNECT refused: {connack:?}");
    }
    let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    Ok(Connected {
        stream,
        took: started.elapsed(),
        resumed,
    })
}

/// Sends DISCONNECT and TLS close_notify, so the server sees a clean end.
pub async fn disconnect(mut stream: TlsStream<TcpStream>) {
    let _ = stream.write_all(&[0xe0, 0x00]).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packets_encode_their_length() {
        let short = connect_packet("d", 60);
        assert_eq!(short[..2], [0x10, 13]);
        assert_eq!(short.len(), 15);
        let long = connect_packet(&"x".repeat(200), 60);
        assert_eq!(long[..3], [0x10, (212 % 128) | 0x80, 1]);
        assert_eq!(long.len(), 3 + 212);
    }

    #[test]
    fn source_addresses_hold_a_hundred_devices_each() {
        assert_eq!(source_address(0).ip().to_string(), "127.0.1.0");
        assert_eq!(source_address(99), source_address(0));
        assert_eq!(source_address(100).ip().to_string(), "127.0.1.1");
        assert_eq!(source_address(50_000).ip().to_string(), "127.0.2.244");
    }
}
