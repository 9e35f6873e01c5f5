//! CONNECT admission: from the first packet to CONNACK 0x00. The identity comes from
//! the verified certificate; CONNECT must agree with it (client id), keep within the
//! limits (keep-alive) and the topic rules (will); then the admission hook decides.

use std::net::SocketAddr;
use std::time::Duration;

use certs::{DeviceIdentity, SerialNumber};
use rumqttd::local::LinkRx;
use rumqttd::protocol::{self, ConnAck, ConnectReturnCode, LastWill, Packet};
use tokio::time::timeout;
use tracing::warn;
use wire::DeviceId;

use super::codec::{DeviceIo, ReadError};
use super::registration::Registration;
use super::{Shared, CLOSE_TIMEOUT};
use crate::engine::SharedLinkTx;
use crate::hooks::{Admission, DisconnectReason};
use crate::policy;
use crate::stats::Refusal;

/// A session that passed every check at CONNECT.
pub(super) struct Admitted {
    pub(super) registration: Registration,
    pub(super) link_tx: SharedLinkTx,
    pub(super) link_rx: LinkRx,
    pub(super) will: Option<LastWill>,
    pub(super) keep_alive: Duration,
}

/// Reads and checks CONNECT, asks the admission hook, opens the engine link and sends
/// CONNACK. Every refusal that MQTT lets us explain gets its CONNACK code first.
pub(super) async fn admit(
    shared: &Shared,
    device: &mut DeviceIo,
    identity: DeviceIdentity,
    serial: SerialNumber,
    remote_addr: SocketAddr,
) -> Result<Admitted, Option<Refusal>> {
    let first = timeout(shared.limits.connect_timeout, device.read_packet()).await;
    let (connect, will) = match first {
        Err(_elapsed) => return Err(Some(Refusal::ConnectTimeout)),
        Ok(Ok((Packet::Connect(connect, _, will, _, _login), _))) => (connect, will),
        Ok(Ok(_other)) => return Err(Some(Refusal::ProtocolError)),
        Ok(Err(ReadError::Protocol(
            protocol::Error::InvalidProtocolLevel(_) | protocol::Error::InvalidProtocol,
        ))) => {
            refuse_connect(device, ConnectReturnCode::RefusedProtocolVersion).await;
            return Err(Some(Refusal::ProtocolVersion));
        }
        Ok(Err(ReadError::Closed | ReadError::Io(_))) => return Err(None),
        Ok(Err(ReadError::TooLarge)) => return Err(Some(Refusal::ConnectTooLarge)),
        Ok(Err(error)) => return Err(Some(error.refusal())),
    };
    // CONNECT was read under `max_connect_size`; the session's packets get the full size.
    device.set_max_packet_size(shared.limits.max_packet_size);
    // Username and password, if any, are ignored: the certificate is the credential.
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

    let (registration, link_tx, link_rx) =
        match register_and_open(shared, identity, serial, &connect.client_id, remote_addr).await {
            Ok(opened) => opened,
            // The registration was dropped on the way out of `register_and_open`: a
            // device told "no" has no session left to find.
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
        shared.engine.end_link(&link_tx).await;
        return Err(None);
    }
    Ok(Admitted {
        registration,
        link_tx,
        link_rx,
        will,
        keep_alive: Duration::from_secs(u64::from(connect.keep_alive)),
    })
}

/// Registers the session, asks the admission hook and opens the engine link. On
/// refusal (`Some` when the device gets a CONNACK saying why) the registration is
/// gone by the time this returns.
async fn register_and_open(
    shared: &Shared,
    identity: DeviceIdentity,
    serial: SerialNumber,
    client_id: &str,
    remote_addr: SocketAddr,
) -> Result<(Registration, SharedLinkTx, LinkRx), Option<Refusal>> {
    // Registered before the admission check: a revocation that lands while the check
    // runs finds the session and is remembered, so it cannot slip between the two.
    let registration = Registration::register(shared, identity, remote_addr);
    let quota = ask_admission(shared, identity, serial)
        .await
        .map_err(Some)?;
    registration
        .take_tenant_place(quota)
        .map_err(|_| Some(Refusal::TenantSessionLimit))?;
    let (link_tx, link_rx) = open_link(shared, identity, client_id).await.map_err(Some)?;
    // A revocation or a newer session that arrived during the checks wins over them.
    if let Some(reason) = registration.control().reason() {
        if reason != DisconnectReason::Replaced {
            shared.engine.end_link(&link_tx).await;
        }
        return Err((reason == DisconnectReason::Revoked).then_some(Refusal::Revoked));
    }
    Ok((registration, link_tx, link_rx))
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

/// Opens the session's engine link.
async fn open_link(
    shared: &Shared,
    identity: DeviceIdentity,
    client_id: &str,
) -> Result<(SharedLinkTx, LinkRx), Refusal> {
    match shared.engine.open_link(client_id.to_owned()).await {
        Ok((link_tx, link_rx, _connack)) => Ok((link_tx, link_rx)),
        Err(error) => {
            warn!(%identity, %error, "engine refused the session");
            Err(Refusal::EngineUnavailable)
        }
    }
}

/// Sends a refusing CONNACK; errors are moot, the connection closes next.
async fn refuse_connect(device: &mut DeviceIo, code: ConnectReturnCode) {
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
                Refusal::EngineUnavailable,
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
