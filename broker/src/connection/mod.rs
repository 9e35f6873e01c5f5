//! One device connection, from TCP accept to the end of its MQTT session.
//!
//! ```text
//! TLS handshake (timeout, own task) ─▶ identity from the verified leaf
//!   ─▶ CONNECT (timeout): protocol 3.1.1, client id = device id, keep-alive, will topic
//!   ─▶ registered (a newer session of the device replaces this one)
//!   ─▶ admission hook (timeout, fail closed) ─▶ tenant session quota ─▶ CONNACK 0x00, online
//!   ─▶ session loop: device packets checked; publishes handed to the device-publish sink
//!      in order, PUBACKed once taken; server messages from the registry written to the
//!      device; closed on revocation, replacement, keep-alive, a broken rule, a closed
//!      sink or shutdown
//!   ─▶ will (when MQTT says so) into the sink, offline
//! ```
//!
//! - [`codec`]: MQTT 3.1.1 frames in and out of the TLS stream.
//! - [`admission`]: CONNECT, from the first packet to CONNACK 0x00.
//! - [`registration`]: the session's entry in the registry, its presence events and
//!   its place in the counters, undone by one guard whatever ends the session.
//! - [`session`]: the session loop, the rules and limits per packet.

mod admission;
pub(crate) mod codec;
mod registration;
mod session;
mod subscriber;

pub(crate) use subscriber::StreamSide;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use certs::tls::{PerKeyLimit, PerKeyPermit};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::engine::Engine;
use crate::hooks::{AdmissionCheck, DevicePublishSink, PresenceEvent};
use crate::registry::Registry;
use crate::stats::{Counters, Refusal};
use crate::tls;
use wire::DeviceId;

use codec::{DeviceIo, Stream};

/// How long closing a refused connection may take (sending close_notify).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The limits each connection applies, copied from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) handshake_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) admission_timeout: Duration,
    pub(crate) max_packet_size: usize,
    pub(crate) max_connect_size: usize,
    pub(crate) publish_rate: f64,
    pub(crate) publish_burst: u32,
    pub(crate) max_subscriptions: usize,
    pub(crate) max_keep_alive: u16,
    pub(crate) max_pending_publishes: usize,
}

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) limits: Limits,
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) engine: Arc<Engine>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) registry: Arc<Registry>,
    /// Connections per device identity between the handshake and CONNACK.
    pub(crate) pending_connects: PerKeyLimit<DeviceId>,
    pub(crate) admission: AdmissionCheck,
    pub(crate) presence: Option<mpsc::UnboundedSender<PresenceEvent>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Live streams, when on: connections without a client certificate go there.
    pub(crate) streams: Option<StreamSide>,
    pub(crate) device_publishes: Option<Arc<dyn DevicePublishSink>>,
}

/// A connection's place under the handshake caps (in flight, and per source address),
/// held until its handshake ends.
pub(crate) struct HandshakeSlot {
    pub(crate) _in_flight: OwnedSemaphorePermit,
    pub(crate) _address: PerKeyPermit<IpAddr>,
}

/// Serves one accepted TCP connection to its end. `_connection` is held for the
/// connection's whole life; `handshake` only until the handshake ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    remote_addr: SocketAddr,
    handshake: HandshakeSlot,
    _connection: OwnedSemaphorePermit,
) {
    // Each phase is boxed, and so is the TLS stream: the task keeps only the phase it is in.
    // Unboxed, every phase's state was laid out side by side, with a copy of the stream in
    // each: an idle session's task was 11.6 KiB, now under 1 KiB plus its session (2 KiB).
    let Some(stream) = Box::pin(tls_handshake(&shared, tcp, remote_addr, handshake)).await else {
        return;
    };
    let peer = tls::peer_identity(stream.get_ref().1);
    if let (Err(tls::PeerIdentityError::NoCertificate), Some(streams)) = (&peer, &shared.streams) {
        subscriber::serve(&shared, streams, stream, remote_addr).await;
        return;
    }
    let (identity, serial) = match peer {
        Ok(peer) => peer,
        Err(error) => {
            warn!(%remote_addr, %error, "refused: verified certificate without identity");
            shared.counters.refused(Refusal::Identity);
            codec::close(stream).await;
            return;
        }
    };
    shared.counters.handshake_completed();
    // Held until CONNACK or refusal: one certificate cannot park many connections here.
    let Some(pending) = shared.pending_connects.try_acquire(identity.device_id) else {
        shared
            .counters
            .refused_and_logged(Refusal::PendingConnectLimit, remote_addr.ip());
        codec::close(stream).await;
        return;
    };
    let mut device = DeviceIo::new(
        stream,
        shared.limits.max_connect_size,
        Arc::clone(&shared.counters),
    );
    let admitted = Box::pin(admission::admit(
        &shared,
        &mut device,
        identity,
        serial,
        remote_addr,
    ))
    .await;
    drop(pending);
    match admitted {
        Ok(admitted) => Box::pin(session::run(&shared, device, admitted, identity)).await,
        Err(refusal) => {
            match refusal {
                // A tenant at its quota may have thousands of devices retrying.
                Some(Refusal::TenantSessionLimit) => shared
                    .counters
                    .refused_and_logged(Refusal::TenantSessionLimit, remote_addr.ip()),
                // Only a device with a valid certificate of this fleet gets here, one
                // connection at a time per identity: one line each.
                Some(refusal) => {
                    info!(tenant = %identity.tenant_id, device = %identity.device_id, %remote_addr, reason = %refusal, "device refused");
                    shared.counters.refused(refusal);
                }
                None => {}
            }
            device.close().await;
        }
    }
}

/// The TLS handshake, bounded by the handshake timeout. Any failure (no certificate,
/// another CA, expired, TLS below 1.2, garbage) is counted as such and ends here.
async fn tls_handshake(
    shared: &Shared,
    tcp: TcpStream,
    remote_addr: SocketAddr,
    permit: HandshakeSlot,
) -> Option<Stream> {
    let in_progress = shared.counters.handshake_started();
    let result = timeout(shared.limits.handshake_timeout, shared.acceptor.accept(tcp)).await;
    drop((permit, in_progress));
    match result {
        Ok(Ok(stream)) => Some(Box::new(stream)),
        // Anyone can cause these by the thousand: logged at most every 10 s per reason.
        Ok(Err(error)) => {
            debug!(%remote_addr, %error, "TLS handshake failed");
            shared
                .counters
                .refused_and_logged(Refusal::TlsHandshake, remote_addr.ip());
            None
        }
        Err(_elapsed) => {
            shared
                .counters
                .refused_and_logged(Refusal::TlsHandshakeTimeout, remote_addr.ip());
            None
        }
    }
}
