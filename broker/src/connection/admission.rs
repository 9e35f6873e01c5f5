//! CONNECT admission: from the first packet to CONNACK 0x00. The identity comes from
//! the verified certificate; CONNECT must agree with it (client id), keep within the
//! limits (keep-alive) and the topic rules (will); then the admission hook decides.

use std::net::SocketAddr;
use std::time::Duration;

use certs::{DeviceIdentity, SerialNumber};
use rumqttd::protocol::{self, ConnAck, Connect, ConnectReturnCode, LastWill, Login, Packet};
use tokio::time::timeout;
use tracing::warn;
use wire::DeviceId;

use super::codec::{DeviceIo, ReadError};
use super::registration::Registration;
use super::{Shared, CLOSE_TIMEOUT};
use crate::hooks::{Admission, DisconnectReason};
use crate::policy;
use crate::stats::Refusal;

/// What a client's CONNECT carries that admission looks at.
pub(super) type ConnectPacket = (Connect, Option<LastWill>, Option<Login>);

/// Reads the first packet, which must be CONNECT, under the connect timeout and
/// `max_connect_size`; then the session's packets get the full size. An unsupported protocol
/// level gets its CONNACK here; `Err(None)`: the connection closed without a word.
pub(super) async fn read_connect(
    shared: &Shared,
    client: &mut DeviceIo,
) -> Result<ConnectPacket, Option<Refusal>> {
    let first = timeout(shared.limits.connect_timeout, client.read_packet()).await;
    let connect = match first {
        Err(_elapsed) => return Err(Some(Refusal::ConnectTimeout)),
        Ok(Ok((Packet::Connect(connect, _, will, _, login), _))) => (connect, will, login),
        Ok(Ok(_other)) => return Err(Some(Refusal::ProtocolError)),
        Ok(Err(ReadError::Protocol(
            protocol::Error::InvalidProtocolLevel(_) | protocol::Error::InvalidProtocol,
        ))) => {
            refuse_connect(client, ConnectReturnCode::RefusedProtocolVersion).await;
            return Err(Some(Refusal::ProtocolVersion));
        }
        Ok(Err(ReadError::Closed | ReadError::Io(_))) => return Err(None),
        Ok(Err(ReadError::TooLarge)) => return Err(Some(Refusal::ConnectTooLarge)),
        Ok(Err(error)) => return Err(Some(error.refusal())),
    };
    client.set_max_packet_size(shared.limits.max_packet_size);
    Ok(connect)
}

/// A session that passed every check at CONNECT.
pub(super) struct Admitted {
    pub(super) registration: Registration,
    pub(super) will: Option<LastWill>,
    pub(super) keep_alive: Duration,
}

/// Reads and checks CONNECT, asks the admission hook and sends CONNACK. Every refusal that MQTT lets us explain gets its CONNACK code first.
pub(super) async fn admit(
    shared: &Shared,
    device: &mut DeviceIo,
    identity: DeviceIdentity,
    serial: SerialNumber,
    remote_addr: SocketAddr,
) -> Result<Admitted, Option<Refusal>> {
    // Username and password, if any, are ignored: the certificate is the credential.
    let (connect, will, _login) = read_connect(shared, device).await?;
    if let Err(refusal) = check_connect(
        identity.device_id,
        &connect.client_id,
        connect.keep_alive,
        will.as_ref(),
        shared.limits.max_keep_alive,
    ) {
        refuse_connect(device, connack_code(refusal)).await;
        return Err(Some(refusal));
    }

    let registration = match register(shared, identity, serial, remote_addr).await {
        Ok(registration) => registration,
        // The registration was dropped on the way out of `register`: a device told "no"
        // has no session left to find.
        Err(Some(refusal)) => {
            refuse_connect(device, connack_code(refusal)).await;
            return Err(Some(refusal));
        }
        Err(None) => return Err(None),
    };
    let connack = Packet::ConnAck(
        ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
        },
        None,
    );
    if device.write_packets([connack]).await.is_err() {
        return Err(None);
    }
    Ok(Admitted {
        registration,
        will,
        keep_alive: Duration::from_secs(u64::from(connect.keep_alive)),
    })
}

/// Registers the session and asks the admission hook. On refusal (`Some` when the device
/// gets a CONNACK saying why) the registration is gone by the time this returns.
async fn register(
    shared: &Shared,
    identity: DeviceIdentity,
    serial: SerialNumber,
    remote_addr: SocketAddr,
) -> Result<Registration, Option<Refusal>> {
    // Registered before the admission check: a revocation that lands while the check
    // runs finds the session and is remembered, so it cannot slip between the two.
    let registration = Registration::register(shared, identity, remote_addr);
    let quota = ask_admission(shared, identity, serial)
        .await
        .map_err(Some)?;
    registration
        .take_tenant_place(quota)
        .map_err(|_| Some(Refusal::TenantSessionLimit))?;
    // A revocation or a newer session that arrived during the checks wins over them.
    if let Some(reason) = registration.control().reason() {
        return Err((reason == DisconnectReason::Revoked).then_some(Refusal::Revoked));
    }
    Ok(registration)
}

/// The CONNECT checks that need no I/O.
fn check_connect(
    device_id: DeviceId,
    client_id: &str,
    keep_alive: u16,
    will: Option<&LastWill>,
    max_keep_alive: u16,
) -> Result<(), Refusal> {
    if !client_id_matches(device_id, client_id) {
        return Err(Refusal::ClientId);
    }
    if keep_alive == 0 || keep_alive > max_keep_alive {
        return Err(Refusal::KeepAlive);
    }
    policy::check_will(device_id, will)
}

/// The client id must be the device id, canonical: lowercase and hyphenated.
fn client_id_matches(device_id: DeviceId, client_id: &str) -> bool {
    device_id.is_canonical_text(client_id)
}

/// The MQTT 3.1.1 CONNACK code for a refusal at CONNECT.
fn connack_code(refusal: Refusal) -> ConnectReturnCode {
    match refusal {
        Refusal::ProtocolVersion => ConnectReturnCode::RefusedProtocolVersion,
        Refusal::ClientId | Refusal::KeepAlive => ConnectReturnCode::ClientIdentifierNotValid,
        Refusal::WillTopic | Refusal::Revoked => ConnectReturnCode::NotAuthorized,
        _ => ConnectReturnCode::ServiceUnavailable,
    }
}

/// Asks the admission hook; the tenant's session quota when it admits.
async fn ask_admission(
    shared: &Shared,
    identity: DeviceIdentity,
    serial: SerialNumber,
) -> Result<u32, Refusal> {
    let verdict = timeout(
        shared.limits.admission_timeout,
        (shared.admission)(identity, serial),
    )
    .await;
    match verdict {
        Ok(Ok(Admission::Admit {
            tenant_session_quota,
        })) => Ok(tenant_session_quota),
        Ok(Ok(Admission::Refuse)) => Err(Refusal::Revoked),
        Ok(Err(error)) => {
            warn!(%identity, %error, "admission check failed; refusing (fail closed)");
            Err(Refusal::AdmissionError)
        }
        Err(_elapsed) => {
            warn!(%identity, "admission check timed out; refusing (fail closed)");
            Err(Refusal::AdmissionError)
        }
    }
}

/// Sends a refusing CONNACK; errors are moot, the connection closes next.
/// Answers CONNECT with a refusing CONNACK, bounded by the close timeout.
pub(super) async fn refuse_connect(device: &mut DeviceIo, code: ConnectReturnCode) {
    let connack = Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    );
    let _ = timeout(CLOSE_TIMEOUT, device.write_packets([connack])).await;
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rumqttd::protocol::QoS;

    use super::*;

    const DEVICE: &str = "6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94";

    fn device() -> DeviceId {
        DeviceId::parse_canonical(DEVICE).unwrap()
    }

    #[test]
    fn the_client_id_must_be_the_canonical_device_id() {
        assert!(client_id_matches(device(), DEVICE));
        assert!(!client_id_matches(device(), &DEVICE.to_uppercase()));
        assert!(!client_id_matches(device(), &DEVICE.replace('-', "")));
        assert!(!client_id_matches(device(), ""));
        assert!(!client_id_matches(
            device(),
            "0b9d7c3e-1a2f-4e5d-8c6b-7a9f0e1d2c3b"
        ));
    }

    #[test]
    fn connect_checks_map_to_their_connack_codes() {
        let check = |client_id: &str, keep_alive: u16, will: Option<&LastWill>| {
            check_connect(device(), client_id, keep_alive, will, 900)
        };
        assert_eq!(check(DEVICE, 60, None), Ok(()));
        assert_eq!(check("other", 60, None), Err(Refusal::ClientId));
        assert_eq!(check(DEVICE, 0, None), Err(Refusal::KeepAlive));
        assert_eq!(check(DEVICE, 901, None), Err(Refusal::KeepAlive));
        let will = LastWill {
            topic: Bytes::from_static(b"fleet/v1/+/up/presence"),
            message: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
        };
        assert_eq!(check(DEVICE, 60, Some(&will)), Err(Refusal::WillTopic));

        for (refusal, code) in [
            (
                Refusal::ClientId,
                ConnectReturnCode::ClientIdentifierNotValid,
            ),
            (
                Refusal::KeepAlive,
                ConnectReturnCode::ClientIdentifierNotValid,
            ),
            (Refusal::WillTopic, ConnectReturnCode::NotAuthorized),
            (Refusal::Revoked, ConnectReturnCode::NotAuthorized),
            (
                Refusal::AdmissionError,
                ConnectReturnCode::ServiceUnavailable,
            ),
            (
                Refusal::TenantSessionLimit,
                ConnectReturnCode::ServiceUnavailable,
            ),
            (
                Refusal::ProtocolVersion,
                ConnectReturnCode::RefusedProtocolVersion,
            ),
        ] {
            assert_eq!(connack_code(refusal), code, "{refusal}");
        }
    }
}
