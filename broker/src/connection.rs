//! One device connection, from TCP accept to the end of its MQTT session.
//!
//! ```text
//! TLS handshake (timeout, own task) ─▶ identity from the verified leaf
//!   ─▶ CONNECT (timeout): protocol 3.1.1, client id = device id, keep-alive, will topic
//!   ─▶ registered (a newer session of the device replaces this one)
//!   ─▶ admission hook (timeout, fail closed) ─▶ engine link ─▶ CONNACK 0x00, online
//!   ─▶ session loop: device packets checked and passed to the engine; engine packets
//!      written to the device; closed on revocation, replacement, keep-alive, a broken
//!      rule, a lost link or shutdown
//!   ─▶ will (when MQTT says so) + DISCONNECT into the engine, offline
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use certs::DeviceIdentity;
use rumqttd::local::LinkRx;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    self, ConnAck, ConnectReturnCode, LastWill, Packet, PingResp, Protocol, SubAck,
    SubscribeReasonCode,
};
use rumqttd::Notification;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};
use wire::DeviceId;

use crate::engine::{disconnect_packet, publish_packet, Engine, SharedLinkTx};
use crate::hooks::{AdmissionCheck, DisconnectReason, PresenceEvent};
use crate::policy::{self, Subscriptions, TokenBucket};
use crate::registry::{Registry, SessionControl};
use crate::stats::{Counters, Refusal};
use crate::tls;

/// How long closing a refused connection may take (sending close_notify).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Read buffer space reserved before each read.
const READ_CHUNK: usize = 2048;

/// Packets read from the device in one go before they are handed to the engine.
const MAX_BATCH: usize = 64;

/// The limits each connection applies, copied from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) handshake_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) admission_timeout: Duration,
    pub(crate) max_packet_size: usize,
    pub(crate) publish_rate: f64,
    pub(crate) publish_burst: u32,
    pub(crate) max_subscriptions: usize,
    pub(crate) max_keep_alive: u16,
}

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) limits: Limits,
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) engine: Arc<Engine>,
    pub(crate) counters: Counters,
    pub(crate) registry: Registry,
    pub(crate) admission: AdmissionCheck,
    pub(crate) presence: Option<mpsc::UnboundedSender<PresenceEvent>>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

type Stream = TlsStream<TcpStream>;

/// Serves one accepted TCP connection to its end. `_connection` is held for the
/// connection's whole life; `handshake` only until the handshake ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    remote_addr: SocketAddr,
    handshake: OwnedSemaphorePermit,
    _connection: OwnedSemaphorePermit,
) {
    let Some(stream) = tls_handshake(&shared, tcp, handshake).await else {
        return;
    };
    let identity = match tls::peer_identity(stream.get_ref().1) {
        Ok(identity) => identity,
        Err(error) => {
            warn!(%remote_addr, %error, "refused: verified certificate without identity");
            shared.counters.refused(Refusal::Identity);
            close(stream).await;
            return;
        }
    };
    shared.counters.handshake_completed();
    let mut device = DeviceIo {
        stream,
        reader: PacketReader::new(shared.limits.max_packet_size),
        write_buffer: BytesMut::new(),
    };
    let session = match admit(&shared, &mut device, identity).await {
        Ok(session) => session,
        Err(refusal) => {
            if let Some(refusal) = refusal {
                debug!(%remote_addr, %identity, %refusal, "session refused");
                shared.counters.refused(refusal);
            }
            close(device.stream).await;
            return;
        }
    };
    run_session(&shared, device, session, identity, remote_addr).await;
}

/// The TLS handshake, bounded by the handshake timeout. Any failure (no certificate,
/// another CA, expired, TLS below 1.2, garbage) is counted as such and ends here.
async fn tls_handshake(
    shared: &Shared,
    tcp: TcpStream,
    permit: OwnedSemaphorePermit,
) -> Option<Stream> {
    let result = timeout(shared.limits.handshake_timeout, shared.acceptor.accept(tcp)).await;
    drop(permit);
    match result {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            debug!(%error, "TLS handshake failed");
            shared.counters.refused(Refusal::TlsHandshake);
            None
        }
        Err(_elapsed) => {
            shared.counters.refused(Refusal::TlsHandshakeTimeout);
            None
        }
    }
}

/// A session that passed every check at CONNECT.
struct Session {
    control: Arc<SessionControl>,
    link_tx: SharedLinkTx,
    link_rx: LinkRx,
    will: Option<LastWill>,
    keep_alive: Duration,
}

/// Reads and checks CONNECT, asks the admission hook, opens the engine link and sends
/// CONNACK. Every refusal that MQTT lets us explain gets its CONNACK code first.
async fn admit(
    shared: &Shared,
    device: &mut DeviceIo,
    identity: DeviceIdentity,
) -> Result<Session, Option<Refusal>> {
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
        Ok(Err(error)) => return Err(Some(error.refusal())),
    };
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

    // Registered before the admission check: a revocation that lands while the check
    // runs finds the session and is remembered, so it cannot slip between the two.
    let control = shared.registry.register(identity.device_id);
    let opened = open(shared, identity, &connect.client_id).await;
    let (link_tx, link_rx) = match opened {
        Ok(link) => link,
        Err(refusal) => {
            shared
                .registry
                .remove(identity.device_id, control.session());
            refuse_connect(device, connack_code(refusal)).await;
            return Err(Some(refusal));
        }
    };
    // A revocation or a newer session that arrived during the checks wins over them.
    if let Some(reason) = control.reason() {
        if reason != DisconnectReason::Replaced {
            let _ = shared
                .engine
                .send(&link_tx, vec![disconnect_packet()])
                .await;
        }
        shared
            .registry
            .remove(identity.device_id, control.session());
        if reason == DisconnectReason::Revoked {
            refuse_connect(device, connack_code(Refusal::Revoked)).await;
            return Err(Some(Refusal::Revoked));
        }
        return Err(None);
    }
    let connack = Packet::ConnAck(
        ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
        },
        None,
    );
    if device.write_packets([connack]).await.is_err() {
        let _ = shared
            .engine
            .send(&link_tx, vec![disconnect_packet()])
            .await;
        shared
            .registry
            .remove(identity.device_id, control.session());
        return Err(None);
    }
    Ok(Session {
        control,
        link_tx,
        link_rx,
        will,
        keep_alive: Duration::from_secs(u64::from(connect.keep_alive)),
    })
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

/// Asks the admission hook, then opens the engine link.
async fn open(
    shared: &Shared,
    identity: DeviceIdentity,
    client_id: &str,
) -> Result<(SharedLinkTx, LinkRx), Refusal> {
    let verdict = timeout(
        shared.limits.admission_timeout,
        (shared.admission)(identity),
    )
    .await;
    match verdict {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return Err(Refusal::Revoked),
        Ok(Err(error)) => {
            warn!(%identity, %error, "admission check failed; refusing (fail closed)");
            return Err(Refusal::AdmissionError);
        }
        Err(_elapsed) => {
            warn!(%identity, "admission check timed out; refusing (fail closed)");
            return Err(Refusal::AdmissionError);
        }
    }
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

/// The session loop and its teardown.
async fn run_session(
    shared: &Shared,
    mut device: DeviceIo,
    session: Session,
    identity: DeviceIdentity,
    remote_addr: SocketAddr,
) {
    let Session {
        control,
        link_tx,
        mut link_rx,
        will,
        keep_alive,
    } = session;
    shared.counters.session_started();
    emit_presence(shared, identity, control.session(), remote_addr, None);
    info!(%identity, %remote_addr, session = control.session(), "device online");

    let mut state = SessionState {
        device_id: identity.device_id,
        subscriptions: Subscriptions::new(shared.limits.max_subscriptions),
        bucket: TokenBucket::new(
            shared.limits.publish_rate,
            shared.limits.publish_burst,
            Instant::now(),
        ),
    };
    let idle_limit = keep_alive.mul_f32(1.5);
    let mut deadline = Instant::now() + idle_limit;
    let mut shutdown = shared.shutdown.clone();

    let reason = loop {
        if *shutdown.borrow() {
            break DisconnectReason::Shutdown;
        }
        tokio::select! {
            biased;
            () = control.closed() => {
                break control.reason().unwrap_or(DisconnectReason::Revoked);
            }
            _ = shutdown.changed() => break DisconnectReason::Shutdown,
            () = sleep_until(deadline) => break DisconnectReason::KeepAliveTimeout,
            read = device.read_packet() => {
                deadline = Instant::now() + idle_limit;
                let first = match read {
                    Ok(packet) => packet,
                    Err(ReadError::Closed) => break DisconnectReason::ConnectionLost,
                    Err(ReadError::Io(error)) => {
                        debug!(%identity, %error, "device connection failed");
                        break DisconnectReason::ConnectionLost;
                    }
                    Err(error) => {
                        let refusal = error.refusal();
                        shared.counters.refused(refusal);
                        break DisconnectReason::Refused(refusal);
                    }
                };
                match handle_batch(shared, &mut state, &mut device, &link_tx, first).await {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Stop(reason)) => break reason,
                    Err(_io) => break DisconnectReason::ConnectionLost,
                }
            }
            notification = link_rx.next() => {
                match forward_to_device(shared, &mut device, &link_rx, notification).await {
                    Ok(Flow::Continue) => {}
                    // The router dropped the link: a newer session took the client id
                    // (then the registry already said so), or the engine stopped.
                    Ok(Flow::Stop(reason)) => {
                        break control.reason().unwrap_or(reason);
                    }
                    Err(_io) => break DisconnectReason::ConnectionLost,
                }
            }
        }
    };

    end_session(shared, &link_tx, will, reason).await;
    close(device.stream).await;
    shared
        .registry
        .remove(identity.device_id, control.session());
    shared.counters.session_ended();
    emit_presence(
        shared,
        identity,
        control.session(),
        remote_addr,
        Some(reason),
    );
    info!(%identity, %remote_addr, session = control.session(), %reason, "device offline");
}

/// Tells the engine the session is over, publishing the will first when MQTT asks for
/// it. Nothing is sent when the engine already dropped the link: its connection id
/// may belong to another session by now.
async fn end_session(
    shared: &Shared,
    link_tx: &SharedLinkTx,
    will: Option<LastWill>,
    reason: DisconnectReason,
) {
    if matches!(
        reason,
        DisconnectReason::EngineClosed | DisconnectReason::Replaced
    ) {
        return;
    }
    let mut packets = Vec::with_capacity(2);
    if let Some(will) = will.filter(|_| reason.publishes_will()) {
        let pkid = 1;
        let publish = publish_packet(&will.topic, &will.message, will.qos, pkid, will.retain);
        packets.push(Packet::Publish(publish, None));
    }
    packets.push(disconnect_packet());
    let _ = shared.engine.send(link_tx, packets).await;
}

fn emit_presence(
    shared: &Shared,
    identity: DeviceIdentity,
    session: u64,
    remote_addr: SocketAddr,
    reason: Option<DisconnectReason>,
) {
    if let Some(presence) = &shared.presence {
        let event = PresenceEvent {
            identity,
            session,
            online: reason.is_none(),
            at: OffsetDateTime::now_utc(),
            remote_addr,
            reason,
        };
        // A closed receiver means fleetd is shutting down; nothing to do.
        let _ = presence.send(event);
    }
}

/// What the session loop does next.
enum Flow {
    Continue,
    Stop(DisconnectReason),
}

/// Per-session rule state.
struct SessionState {
    device_id: DeviceId,
    subscriptions: Subscriptions,
    bucket: TokenBucket,
}

/// Checks the packet just read and any others already buffered, hands the allowed
/// ones to the engine as one batch, and answers PINGREQ and refused SUBSCRIBEs itself.
async fn handle_batch(
    shared: &Shared,
    state: &mut SessionState,
    device: &mut DeviceIo,
    link_tx: &SharedLinkTx,
    first: (Packet, u8),
) -> io::Result<Flow> {
    let mut upstream = Vec::new();
    let mut replies = Vec::new();
    let mut publishes = 0;
    let mut next = Some(first);
    let mut flow = Flow::Continue;
    while let Some((packet, header)) = next.take() {
        match check_packet(state, packet, header) {
            Checked::Forward(packet) => {
                publishes += u64::from(matches!(packet, Packet::Publish(..)));
                upstream.push(packet);
            }
            Checked::Reply(packet, refusal) => {
                if let Some(refusal) = refusal {
                    shared.counters.refused(refusal);
                }
                replies.push(packet);
            }
            Checked::Stop(reason) => {
                if let DisconnectReason::Refused(refusal) = reason {
                    shared.counters.refused(refusal);
                }
                flow = Flow::Stop(reason);
                break;
            }
        }
        if upstream.len() + replies.len() >= MAX_BATCH {
            break;
        }
        match device.reader.buffered() {
            Ok(packet) => next = packet,
            Err(error) => {
                let refusal = error.refusal();
                shared.counters.refused(refusal);
                flow = Flow::Stop(DisconnectReason::Refused(refusal));
            }
        }
    }
    // Packets accepted before a violation still go in: they were within the rules.
    shared.counters.publishes_received(publishes);
    if shared.engine.send(link_tx, upstream).await.is_err() {
        return Ok(Flow::Stop(DisconnectReason::EngineClosed));
    }
    if !replies.is_empty() {
        shared.counters.packets_sent(replies.len() as u64);
        device.write_packets(replies).await?;
    }
    Ok(flow)
}

/// The verdict on one device packet.
enum Checked {
    /// Hand it to the engine.
    Forward(Packet),
    /// Answer it here (PINGRESP, or a refusing SUBACK and its reason).
    Reply(Packet, Option<Refusal>),
    /// End the session.
    Stop(DisconnectReason),
}

/// Applies the rules to one packet from the device. `header` is the packet's first
/// byte, which carries a PUBLISH's QoS (rumqttd keeps that field crate-private).
fn check_packet(state: &mut SessionState, packet: Packet, header: u8) -> Checked {
    match packet {
        Packet::Publish(publish, _) => {
            if (header >> 1) & 0b11 == 2 {
                return Checked::Stop(DisconnectReason::Refused(Refusal::PublishQos));
            }
            if let Err(refusal) = policy::check_publish_topic(state.device_id, &publish.topic) {
                return Checked::Stop(DisconnectReason::Refused(refusal));
            }
            if !state.bucket.take(Instant::now()) {
                return Checked::Stop(DisconnectReason::Refused(Refusal::PublishRate));
            }
            Checked::Forward(Packet::Publish(publish, None))
        }
        Packet::PubAck(puback, _) => Checked::Forward(Packet::PubAck(puback, None)),
        Packet::Subscribe(mut subscribe, _) => {
            match state
                .subscriptions
                .admit(state.device_id, &mut subscribe.filters)
            {
                Ok(()) => Checked::Forward(Packet::Subscribe(subscribe, None)),
                Err(refusal) => {
                    let suback = SubAck {
                        pkid: subscribe.pkid,
                        return_codes: vec![SubscribeReasonCode::Failure; subscribe.filters.len()],
                    };
                    Checked::Reply(Packet::SubAck(suback, None), Some(refusal))
                }
            }
        }
        Packet::Unsubscribe(unsubscribe, _) => {
            state.subscriptions.remove(&unsubscribe.filters);
            Checked::Forward(Packet::Unsubscribe(unsubscribe, None))
        }
        Packet::PingReq(_) => Checked::Reply(Packet::PingResp(PingResp), None),
        Packet::Disconnect(..) => Checked::Stop(DisconnectReason::ClientDisconnect),
        // A second CONNECT, QoS 2 flow packets (QoS 2 is not offered), or packets only a
        // server sends.
        _ => Checked::Stop(DisconnectReason::Refused(Refusal::ProtocolError)),
    }
}

/// Writes what the engine sends to the device, answering its flow control.
async fn forward_to_device(
    shared: &Shared,
    device: &mut DeviceIo,
    link_rx: &LinkRx,
    notification: Result<Option<Notification>, rumqttd::local::LinkError>,
) -> io::Result<Flow> {
    let notification = match notification {
        Ok(Some(notification)) => notification,
        Ok(None) => return Ok(Flow::Continue),
        Err(_) => return Ok(Flow::Stop(DisconnectReason::EngineClosed)),
    };
    match notification {
        Notification::Unschedule => {
            if link_rx.wake().await.is_err() {
                return Ok(Flow::Stop(DisconnectReason::EngineClosed));
            }
            Ok(Flow::Continue)
        }
        // The router closed this link (for a publish it refused, or a newer session
        // with the same client id).
        Notification::Disconnect(..) => Ok(Flow::Stop(DisconnectReason::EngineClosed)),
        other => {
            let Some(packet) = Option::<Packet>::from(other) else {
                return Ok(Flow::Continue);
            };
            shared.counters.packets_sent(1);
            device.write_packets([packet]).await?;
            Ok(Flow::Continue)
        }
    }
}

/// Closes a TLS stream politely (close_notify), without waiting long.
async fn close(mut stream: Stream) {
    let _ = timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
}

/// The device side: the TLS stream, the packet reader and a write buffer.
struct DeviceIo {
    stream: Stream,
    reader: PacketReader,
    write_buffer: BytesMut,
}

impl DeviceIo {
    /// Reads the next packet (cancel safe: partial input stays in the reader).
    async fn read_packet(&mut self) -> Result<(Packet, u8), ReadError> {
        self.reader.next(&mut self.stream).await
    }

    /// Encodes packets as MQTT 3.1.1 and writes them in one go.
    async fn write_packets(&mut self, packets: impl IntoIterator<Item = Packet>) -> io::Result<()> {
        for packet in packets {
            V4.write(strip_properties(packet), &mut self.write_buffer)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
        }
        let result = self.stream.write_all(&self.write_buffer).await;
        self.write_buffer.clear();
        result?;
        self.stream.flush().await
    }
}

/// Drops MQTT 5 properties, which a 3.1.1 encoder cannot write (rumqttd's v4 encoder
/// panics on them).
fn strip_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(publish, _) => Packet::Publish(publish, None),
        Packet::PubAck(puback, _) => Packet::PubAck(puback, None),
        Packet::SubAck(suback, _) => Packet::SubAck(suback, None),
        Packet::UnsubAck(unsuback, _) => Packet::UnsubAck(unsuback, None),
        Packet::PubRec(pubrec, _) => Packet::PubRec(pubrec, None),
        Packet::PubRel(pubrel, _) => Packet::PubRel(pubrel, None),
        Packet::PubComp(pubcomp, _) => Packet::PubComp(pubcomp, None),
        Packet::Disconnect(disconnect, _) => Packet::Disconnect(disconnect, None),
        other => other,
    }
}

/// Why reading a packet failed.
#[derive(Debug)]
enum ReadError {
    /// The device closed the connection.
    Closed,
    /// The connection failed.
    Io(io::Error),
    /// The packet's announced length is above the limit.
    TooLarge,
    /// The bytes are not MQTT 3.1.1.
    Protocol(protocol::Error),
}

impl ReadError {
    fn refusal(&self) -> Refusal {
        match self {
            Self::TooLarge => Refusal::PacketTooLarge,
            Self::Closed | Self::Io(_) | Self::Protocol(_) => Refusal::ProtocolError,
        }
    }
}

/// Frames MQTT 3.1.1 packets out of a byte stream, refusing oversize ones from their
/// fixed header, before their body is read.
struct PacketReader {
    buffer: BytesMut,
    max_packet_size: usize,
}

impl PacketReader {
    fn new(max_packet_size: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            max_packet_size,
        }
    }

    /// A complete packet already buffered, with its first byte.
    fn buffered(&mut self) -> Result<Option<(Packet, u8)>, ReadError> {
        let Some(&header) = self.buffer.first() else {
            return Ok(None);
        };
        match V4.read_mut(&mut self.buffer, self.max_packet_size) {
            Ok(packet) => Ok(Some((packet, header))),
            Err(protocol::Error::InsufficientBytes(_)) => Ok(None),
            Err(protocol::Error::PayloadSizeLimitExceeded(_)) => Err(ReadError::TooLarge),
            Err(error) => Err(ReadError::Protocol(error)),
        }
    }

    /// The next packet, reading as needed. Cancel safe.
    async fn next<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<(Packet, u8), ReadError> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(packet);
            }
            self.buffer.reserve(READ_CHUNK);
            let read = stream
                .read_buf(&mut self.buffer)
                .await
                .map_err(ReadError::Io)?;
            if read == 0 {
                return Err(ReadError::Closed);
            }
        }
    }
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

        let code = |refusal| connack_code(refusal);
        assert_eq!(
            code(Refusal::ClientId),
            ConnectReturnCode::ClientIdentifierNotValid
        );
        assert_eq!(
            code(Refusal::KeepAlive),
            ConnectReturnCode::ClientIdentifierNotValid
        );
        assert_eq!(code(Refusal::WillTopic), ConnectReturnCode::NotAuthorized);
        assert_eq!(code(Refusal::Revoked), ConnectReturnCode::NotAuthorized);
        assert_eq!(
            code(Refusal::AdmissionError),
            ConnectReturnCode::ServiceUnavailable
        );
        assert_eq!(
            code(Refusal::EngineUnavailable),
            ConnectReturnCode::ServiceUnavailable
        );
        assert_eq!(
            code(Refusal::ProtocolVersion),
            ConnectReturnCode::RefusedProtocolVersion
        );
    }

    #[tokio::test]
    async fn an_oversize_packet_is_refused_from_its_header() {
        // PUBLISH announcing 1,000,000 bytes, of which only the header arrives.
        let mut input: &[u8] = &[0x30, 0xc0, 0x84, 0x3d];
        let mut reader = PacketReader::new(1024);
        assert!(matches!(
            reader.next(&mut input).await,
            Err(ReadError::TooLarge)
        ));
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error_and_eof_is_closed() {
        let mut garbage: &[u8] = &[0xf0, 0x00];
        let mut reader = PacketReader::new(1024);
        assert!(matches!(
            reader.next(&mut garbage).await,
            Err(ReadError::Protocol(_))
        ));
        let mut empty: &[u8] = &[];
        let mut reader = PacketReader::new(1024);
        assert!(matches!(
            reader.next(&mut empty).await,
            Err(ReadError::Closed)
        ));
    }
}
