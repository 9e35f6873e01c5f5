//! A live-stream subscriber: a connection without a client certificate (live streams on), from
//! CONNECT with an API key to the end of its read-only session.
//!
//! ```text
//! handshake (no certificate) ─▶ pending limit per source address
//!   ─▶ CONNECT (timeout): 3.1.1, keep-alive, no will, username = key id, password = key
//!   ─▶ stream authority (timeout, fail closed) ─▶ CONNACK 0x00, joined the hub
//!   ─▶ session: SUBSCRIBE to the key's tenant stream only (QoS 0), UNSUBSCRIBE, PINGREQ;
//!      PUBLISH closes it; hub messages written at QoS 0; the key rechecked every
//!      `recheck_interval` (revoked or expired: closed; group scope re-read)
//! ```
//!
//! The session reads its hub queue promptly and writes toward the socket; a socket that takes
//! nothing fills that queue, and the hub then drops (and counts) this subscriber's messages
//! only. A write stalled for `recheck_interval` ends the session.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use certs::tls::PerKeyLimit;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Packet, PingResp, QoS, SubAck, SubscribeReasonCode, UnsubAck,
    UnsubAckReason,
};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, info};

use super::admission::{read_connect, refuse_connect};
use super::codec::{DeviceIo, ReadError, Stream};
use super::Shared;
use crate::engine::publish_packet;
use crate::hooks::DisconnectReason;
use crate::stats::Refusal;
use crate::stream::{
    LiveStreams, StreamAuthority, StreamCredentials, StreamFilter, StreamGrant, StreamHub,
    StreamMessage, StreamRefusal, Subscriber,
};

/// Messages written to the socket in one go.
const MAX_WRITE_BATCH: usize = 64;

/// What stream connections share, beside [`Shared`].
pub(crate) struct StreamSide {
    pub(crate) authority: Arc<dyn StreamAuthority>,
    pub(crate) hub: Arc<StreamHub>,
    pub(crate) settings: LiveStreams,
    /// Connections without a certificate per source address between handshake and CONNACK.
    pub(crate) pending: PerKeyLimit<IpAddr>,
}

/// Serves a connection that finished its handshake without a client certificate.
pub(super) async fn serve(
    shared: &Shared,
    streams: &StreamSide,
    stream: Stream,
    remote_addr: SocketAddr,
) {
    shared.counters.handshake_completed();
    let Some(pending) = streams.pending.try_acquire(remote_addr.ip()) else {
        shared
            .counters
            .refused_and_logged(Refusal::StreamPendingLimit, remote_addr.ip());
        super::codec::close(stream).await;
        return;
    };
    let mut client = DeviceIo::new(
        stream,
        shared.limits.max_connect_size,
        Arc::clone(&shared.counters),
    );
    let admitted = admit(shared, streams, &mut client, remote_addr).await;
    drop(pending);
    match admitted {
        Ok((grant, keep_alive)) => {
            run(shared, streams, client, grant, keep_alive, remote_addr).await;
        }
        Err(refusal) => {
            if let Some(refusal) = refusal {
                // Anyone can try keys by the thousand: logged at most every 10 s per reason
                // (the management API's failure limiter slows an address that keeps failing).
                shared
                    .counters
                    .refused_and_logged(refusal, remote_addr.ip());
            }
            client.close().await;
        }
    }
}

/// Reads and checks CONNECT, asks the authority, sends CONNACK.
async fn admit(
    shared: &Shared,
    streams: &StreamSide,
    client: &mut DeviceIo,
    remote_addr: SocketAddr,
) -> Result<(StreamGrant, Duration), Option<Refusal>> {
    let (connect, will, login) = read_connect(shared, client).await?;
    let refused = if connect.keep_alive == 0 || connect.keep_alive > shared.limits.max_keep_alive {
        Some(Refusal::KeepAlive)
    } else if will.is_some() {
        // A read-only client has nowhere to publish a will.
        Some(Refusal::WillTopic)
    } else {
        None
    };
    if let Some(refusal) = refused {
        refuse_connect(client, connack_code(refusal)).await;
        return Err(Some(refusal));
    }
    let Some(login) = login else {
        refuse_connect(client, ConnectReturnCode::BadUserNamePassword).await;
        return Err(Some(Refusal::StreamCredentials));
    };
    let credentials = StreamCredentials {
        key_id: login.username,
        key: login.password,
        remote_addr,
    };
    let verdict = timeout(
        shared.limits.admission_timeout,
        streams.authority.authenticate(credentials),
    )
    .await;
    let grant = match check_verdict(verdict) {
        Ok(grant) => grant,
        Err(refusal) => {
            refuse_connect(client, connack_code(refusal)).await;
            return Err(Some(refusal));
        }
    };
    let connack = Packet::ConnAck(
        ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
        },
        None,
    );
    client.write_packets([connack]).await.map_err(|_| None)?;
    Ok((grant, Duration::from_secs(u64::from(connect.keep_alive))))
}

/// The authority's answer (or its failure) as a grant or the refusal to count.
fn check_verdict<E: std::fmt::Display>(
    verdict: Result<Result<Result<StreamGrant, StreamRefusal>, E>, tokio::time::error::Elapsed>,
) -> Result<StreamGrant, Refusal> {
    match verdict {
        Ok(Ok(Ok(grant))) => Ok(grant),
        Ok(Ok(Err(StreamRefusal::BadCredentials))) => Err(Refusal::StreamCredentials),
        Ok(Ok(Err(StreamRefusal::NotAuthorized))) => Err(Refusal::StreamNotAuthorized),
        Ok(Err(error)) => {
            tracing::warn!(%error, "stream key check failed; refusing (fail closed)");
            Err(Refusal::StreamCheckError)
        }
        Err(_elapsed) => {
            tracing::warn!("stream key check timed out; refusing (fail closed)");
            Err(Refusal::StreamCheckError)
        }
    }
}

/// The MQTT 3.1.1 CONNACK code for a stream refusal at CONNECT.
fn connack_code(refusal: Refusal) -> ConnectReturnCode {
    match refusal {
        Refusal::KeepAlive => ConnectReturnCode::ClientIdentifierNotValid,
        Refusal::StreamCredentials => ConnectReturnCode::BadUserNamePassword,
        Refusal::WillTopic | Refusal::StreamNotAuthorized => ConnectReturnCode::NotAuthorized,
        _ => ConnectReturnCode::ServiceUnavailable,
    }
}

/// The session loop, then the log line with what this subscriber lost.
async fn run(
    shared: &Shared,
    streams: &StreamSide,
    mut client: DeviceIo,
    mut grant: StreamGrant,
    keep_alive: Duration,
    remote_addr: SocketAddr,
) {
    let (subscriber, mut messages) = streams.hub.join(&grant, streams.settings.queue_capacity);
    info!(tenant = %grant.tenant_id, key = %grant.key_id, %remote_addr, "stream subscriber connected");
    let idle_limit = keep_alive.mul_f32(1.5);
    let recheck_interval = streams.settings.recheck_interval;
    let mut deadline = Instant::now() + idle_limit;
    let mut recheck_at = Instant::now() + recheck_interval;
    let mut shutdown = shared.shutdown.clone();
    let reason = loop {
        if *shutdown.borrow() {
            break DisconnectReason::Shutdown;
        }
        let flow = tokio::select! {
            biased;
            _ = shutdown.changed() => Flow::Stop(DisconnectReason::Shutdown),
            () = sleep_until(deadline) => Flow::Stop(DisconnectReason::KeepAliveTimeout),
            () = sleep_until(recheck_at) => {
                recheck_at = Instant::now() + recheck_interval;
                recheck(shared, streams, &subscriber, &mut grant).await
            }
            read = client.read_packet() => {
                deadline = Instant::now() + idle_limit;
                match read {
                    Ok((packet, _header)) => {
                        match handle_packet(shared, &subscriber, grant.tenant_id, packet) {
                            Ok(reply) => {
                                let write = client.write_packets([reply]);
                                bounded_write(write, &mut shutdown, recheck_interval).await
                            }
                            Err(reason) => Flow::Stop(reason),
                        }
                    }
                    Err(ReadError::Closed | ReadError::Io(_)) => {
                        Flow::Stop(DisconnectReason::ConnectionLost)
                    }
                    Err(error) => {
                        let refusal = error.refusal();
                        shared.counters.refused(refusal);
                        Flow::Stop(DisconnectReason::Refused(refusal))
                    }
                }
            }
            Some(first) = messages.recv() => {
                let packets = publishes(shared, &mut messages, first);
                bounded_write(client.write_packets(packets), &mut shutdown, recheck_interval).await
            }
        };
        if let Flow::Stop(reason) = flow {
            break reason;
        }
    };
    info!(tenant = %grant.tenant_id, key = %subscriber.key_id(), %remote_addr, %reason, dropped = subscriber.dropped(), "stream subscriber disconnected");
    drop(subscriber);
    client.close().await;
}

enum Flow {
    Continue,
    Stop(DisconnectReason),
}

/// Asks the authority again: a refusal or a failure ends the session (fail closed); a grant
/// replaces the scope.
async fn recheck(
    shared: &Shared,
    streams: &StreamSide,
    subscriber: &Subscriber,
    grant: &mut StreamGrant,
) -> Flow {
    let verdict = timeout(
        shared.limits.admission_timeout,
        streams.authority.recheck(grant),
    )
    .await;
    match check_verdict(verdict) {
        Ok(fresh) if fresh.tenant_id == grant.tenant_id => {
            subscriber.set_scope(fresh.scope.clone());
            *grant = fresh;
            Flow::Continue
        }
        _ => {
            shared.counters.refused(Refusal::StreamKeyEnded);
            Flow::Stop(DisconnectReason::Revoked)
        }
    }
}

/// Waits for a write to the subscriber's socket, unless shutdown comes first or the socket takes
/// nothing for `stall_limit` (a subscriber that stopped reading).
async fn bounded_write(
    write: impl std::future::Future<Output = std::io::Result<()>>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    stall_limit: Duration,
) -> Flow {
    tokio::select! {
        written = write => match written {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop(DisconnectReason::ConnectionLost),
        },
        _ = shutdown.changed() => Flow::Stop(DisconnectReason::Shutdown),
        () = tokio::time::sleep(stall_limit) => {
            debug!("a stream subscriber's socket took nothing for the recheck interval");
            Flow::Stop(DisconnectReason::ConnectionLost)
        }
    }
}

/// The answer to one packet of the subscriber, or why the session ends.
fn handle_packet(
    shared: &Shared,
    subscriber: &Subscriber,
    tenant: wire::TenantId,
    packet: Packet,
) -> Result<Packet, DisconnectReason> {
    let reply = match packet {
        Packet::Subscribe(subscribe, _) => {
            let paths: Vec<&str> = subscribe.filters.iter().map(|f| f.path.as_str()).collect();
            let held = subscriber.filter_count();
            let codes = match admit_filters(tenant, &paths, held, shared.limits.max_subscriptions) {
                Ok(filters) => {
                    subscriber.subscribe(filters);
                    vec![SubscribeReasonCode::Success(QoS::AtMostOnce); paths.len()]
                }
                Err(refusal) => {
                    shared.counters.refused(refusal);
                    vec![SubscribeReasonCode::Failure; paths.len()]
                }
            };
            Packet::SubAck(
                SubAck {
                    pkid: subscribe.pkid,
                    return_codes: codes,
                },
                None,
            )
        }
        Packet::Unsubscribe(unsubscribe, _) => {
            subscriber.unsubscribe(unsubscribe.filters.iter().map(String::as_str));
            Packet::UnsubAck(
                UnsubAck {
                    pkid: unsubscribe.pkid,
                    reasons: vec![UnsubAckReason::Success; unsubscribe.filters.len()],
                },
                None,
            )
        }
        Packet::PingReq(_) => Packet::PingResp(PingResp),
        Packet::Disconnect(..) => return Err(DisconnectReason::ClientDisconnect),
        Packet::Publish(..) => {
            shared.counters.refused(Refusal::StreamPublish);
            return Err(DisconnectReason::Refused(Refusal::StreamPublish));
        }
        _ => {
            shared.counters.refused(Refusal::ProtocolError);
            return Err(DisconnectReason::Refused(Refusal::ProtocolError));
        }
    };
    shared.counters.packets_sent(1);
    Ok(reply)
}

/// A SUBSCRIBE's filters, all or nothing: each must be a filter of `tenant`'s stream, and the
/// subscriber may hold at most `max` (re-subscribing to a held filter counts again: a bound,
/// not an exact count).
fn admit_filters(
    tenant: wire::TenantId,
    paths: &[&str],
    held: usize,
    max: usize,
) -> Result<Vec<StreamFilter>, Refusal> {
    let filters: Option<Vec<StreamFilter>> = paths
        .iter()
        .map(|path| StreamFilter::parse(tenant, path))
        .collect();
    let filters = filters.ok_or(Refusal::StreamSubscribeTopic)?;
    if held + filters.len() > max {
        return Err(Refusal::SubscriptionLimit);
    }
    Ok(filters)
}

/// `first` and whatever else is queued (up to a batch), as QoS 0 PUBLISH packets.
fn publishes(
    shared: &Shared,
    messages: &mut mpsc::Receiver<StreamMessage>,
    first: StreamMessage,
) -> Vec<Packet> {
    let mut batch = vec![first];
    while batch.len() < MAX_WRITE_BATCH {
        match messages.try_recv() {
            Ok(message) => batch.push(message),
            Err(_) => break,
        }
    }
    shared.counters.packets_sent(batch.len() as u64);
    batch
        .into_iter()
        .map(|message| {
            let publish = publish_packet(
                message.topic.as_bytes(),
                &message.payload,
                QoS::AtMostOnce,
                0,
                false,
            );
            Packet::Publish(publish, None)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{StreamScope, STREAM_ROOT};

    const TENANT: &str = "0b9d7c3e-1a2f-4e5d-8c6b-7a9f0e1d2c3b";

    fn tenant() -> wire::TenantId {
        wire::TenantId::parse_canonical(TENANT).unwrap()
    }

    #[test]
    fn a_subscribe_is_all_or_nothing_and_capped() {
        let own = format!("{STREAM_ROOT}/{TENANT}/#");
        let other = format!("{STREAM_ROOT}/1c8e6d2f-3b4a-4f6e-9d7c-8b0a1f2e3d4c/#");
        assert_eq!(
            admit_filters(tenant(), &[&own], 0, 8).map(|f| f.len()),
            Ok(1)
        );
        assert_eq!(
            admit_filters(tenant(), &[&own, &other], 0, 8),
            Err(Refusal::StreamSubscribeTopic)
        );
        assert_eq!(
            admit_filters(tenant(), &[&own, &own], 7, 8),
            Err(Refusal::SubscriptionLimit)
        );
    }

    #[test]
    fn verdicts_map_to_refusals_and_connack_codes() {
        let grant = StreamGrant {
            tenant_id: tenant(),
            key_id: "k".into(),
            scope: StreamScope::Tenant,
        };
        type V =
            Result<Result<Result<StreamGrant, StreamRefusal>, String>, tokio::time::error::Elapsed>;
        let ok: V = Ok(Ok(Ok(grant.clone())));
        assert_eq!(check_verdict(ok), Ok(grant));
        let bad: V = Ok(Ok(Err(StreamRefusal::BadCredentials)));
        assert_eq!(check_verdict(bad), Err(Refusal::StreamCredentials));
        let role: V = Ok(Ok(Err(StreamRefusal::NotAuthorized)));
        assert_eq!(check_verdict(role), Err(Refusal::StreamNotAuthorized));
        let failed: V = Ok(Err("database down".into()));
        assert_eq!(check_verdict(failed), Err(Refusal::StreamCheckError));
        for (refusal, code) in [
            (
                Refusal::StreamCredentials,
                ConnectReturnCode::BadUserNamePassword,
            ),
            (
                Refusal::StreamNotAuthorized,
                ConnectReturnCode::NotAuthorized,
            ),
            (Refusal::WillTopic, ConnectReturnCode::NotAuthorized),
            (
                Refusal::StreamCheckError,
                ConnectReturnCode::ServiceUnavailable,
            ),
            (
                Refusal::KeepAlive,
                ConnectReturnCode::ClientIdentifierNotValid,
            ),
        ] {
            assert_eq!(connack_code(refusal), code, "{refusal}");
        }
    }
}
