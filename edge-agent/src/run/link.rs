//! The broker link: MQTT options for the device, one connection at a time (its event
//! loop in a task of its own), publishing pending batches within the in-flight limit,
//! acks trimming the outbox, and connection failures sorted into certificate refusals
//! (which stop the agent after `refusals_before_stop` in a row) and anything else
//! (retried with backoff).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, LastWill,
    MqttOptions, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};
use wire::Presence;

use super::{Agent, RunError};
use crate::certinfo;
use crate::config::Config;
use crate::identity::Identity;
use crate::outbox::Seq;
use crate::records;
use crate::status::Connection;
use crate::tls;
use crate::url::{Scheme, Url};

/// Why a connection attempt or connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The broker refused the device certificate (TLS alert) or the client (CONNACK).
    CertificateRefused(String),
    /// Anything else: network, timeouts, broker restarts.
    Other(String),
}

/// Sorts a connection error into a certificate refusal or anything else.
pub fn classify(err: &ConnectionError) -> Failure {
    let text = err.to_string();
    if let ConnectionError::ConnectionRefused(code) = err {
        return match code {
            ConnectReturnCode::NotAuthorized
            | ConnectReturnCode::BadUserNamePassword
            | ConnectReturnCode::BadClientId => {
                Failure::CertificateRefused(format!("the broker refused the connection ({code:?})"))
            }
            _ => Failure::Other(text),
        };
    }
    match find_tls_error(err) {
        Some(rustls::Error::AlertReceived(alert)) if is_certificate_alert(*alert) => {
            Failure::CertificateRefused(format!(
                "the broker refused the device certificate (TLS alert {alert:?})"
            ))
        }
        Some(rustls::Error::InvalidCertificate(why)) => Failure::Other(format!(
            "the broker's certificate is not trusted by the pinned fleet root: {why:?}"
        )),
        _ => Failure::Other(text),
    }
}

fn is_certificate_alert(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired
    )
}

fn find_tls_error(err: &ConnectionError) -> Option<&rustls::Error> {
    let io = match err {
        ConnectionError::Tls(rumqttc::TlsError::TLS(tls)) => return Some(tls),
        ConnectionError::Tls(rumqttc::TlsError::Io(io))
        | ConnectionError::Io(io)
        | ConnectionError::MqttState(rumqttc::StateError::Io(io))
        | ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::Io(io),
        )) => io,
        _ => return None,
    };
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Builds the MQTT options for the device: client id = device id, clean session (the
/// outbox replays), will = presence offline (retained), TLS with the device key.
pub fn mqtt_options(identity: &Identity, config: &Config) -> Result<MqttOptions, String> {
    let broker = Url::parse(&identity.record.broker_url, Scheme::Mqtts)?;
    let device = identity.record.device_id;
    let mut options = MqttOptions::new(device.to_string(), broker.host, broker.port);
    options
        .set_keep_alive(config.mqtt.keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(
            wire::limits::DEFAULT_MAX_MESSAGE_BYTES + 4096,
            wire::limits::DEFAULT_MAX_MESSAGE_BYTES + 4096,
        )
        .set_inflight(u16::try_from(config.mqtt.max_inflight_batches + 2).unwrap_or(u16::MAX))
        .set_last_will(LastWill::new(
            wire::topic::presence(device),
            wire::encode_presence(&Presence::new(false)),
            QoS::AtLeastOnce,
            true,
        ));
    let tls = tls::device_client(identity).map_err(|err| err.to_string())?;
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    Ok(options)
}

/// A live connection: the client handle, the event channel from its event-loop task, and
/// the publishing cursor.
pub(super) struct Session {
    client: AsyncClient,
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    task: JoinHandle<()>,
    pub(super) connected: bool,
    /// Highest sequence number handed to the client on this connection.
    cursor: Seq,
    /// Publishes (batches and presence) not yet PUBACKed.
    inflight: usize,
    /// When the records above the last ack are published again if no ack moves by then.
    resend_at: Option<Instant>,
    /// The current wait before a resend (from `mqtt.resend_after`, doubling to `resend_max`).
    resend_delay: Duration,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) enum Link {
    /// Waiting until `retry_at` before the next attempt.
    Idle {
        retry_at: Instant,
    },
    Active(Session),
}

pub(super) enum LinkEvent {
    RetryDue,
    Mqtt(Event),
    Failed(ConnectionError),
    /// The event-loop task ended without an error (after a clean disconnect).
    Closed,
}

pub(super) async fn next_link_event(link: &mut Link) -> LinkEvent {
    match link {
        Link::Idle { retry_at } => {
            sleep_until(*retry_at).await;
            LinkEvent::RetryDue
        }
        Link::Active(session) => match session.events.recv().await {
            Some(Ok(event)) => LinkEvent::Mqtt(event),
            Some(Err(err)) => LinkEvent::Failed(err),
            None => LinkEvent::Closed,
        },
    }
}

fn spawn_event_loop(
    mut eventloop: EventLoop,
) -> (
    mpsc::Receiver<Result<Event, ConnectionError>>,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let result = eventloop.poll().await;
            let failed = result.is_err();
            if tx.send(result).await.is_err() || failed {
                break;
            }
        }
    });
    (rx, task)
}

impl Agent {
    fn connect(&mut self) -> Result<(), RunError> {
        let options = mqtt_options(&self.identity, &self.config).map_err(RunError::Fatal)?;
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let mut network = eventloop.network_options();
        network.set_connection_timeout(self.config.connect_timeout_secs());
        eventloop.set_network_options(network);
        let (events, task) = spawn_event_loop(eventloop);
        self.link = Link::Active(Session {
            client,
            events,
            task,
            connected: false,
            cursor: 0,
            inflight: 0,
            resend_at: None,
            resend_delay: self.config.mqtt.resend_after,
        });
        self.set_connection(Connection::Connecting, None);
        Ok(())
    }

    pub(super) async fn on_link_event(&mut self, event: LinkEvent) -> Result<(), RunError> {
        match event {
            LinkEvent::RetryDue => self.connect(),
            LinkEvent::Mqtt(Event::Incoming(packet)) => self.on_incoming(packet).await,
            LinkEvent::Mqtt(Event::Outgoing(_)) => Ok(()),
            LinkEvent::Failed(err) => self.on_failure(&err),
            LinkEvent::Closed => {
                self.schedule_retry("connection closed".to_owned());
                Ok(())
            }
        }
    }

    async fn on_incoming(&mut self, packet: Incoming) -> Result<(), RunError> {
        match packet {
            Incoming::ConnAck(ConnAck {
                code: ConnectReturnCode::Success,
                ..
            }) => {
                self.on_connected();
                Ok(())
            }
            Incoming::PubAck(_) => {
                if let Link::Active(session) = &mut self.link {
                    session.inflight = session.inflight.saturating_sub(1);
                }
                Ok(())
            }
            Incoming::Publish(publish)
                if publish.topic == wire::topic::ack(self.identity.record.device_id) =>
            {
                self.on_ack(&publish.payload).await
            }
            Incoming::Publish(publish) => {
                debug!(topic = %publish.topic, "ignoring a message on an unexpected topic");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_connected(&mut self) {
        let device = self.identity.record.device_id;
        let Link::Active(session) = &mut self.link else {
            return;
        };
        session.connected = true;
        session.cursor = self.outbox.snapshot().last_acked.unwrap_or(0);
        session.inflight = 0;
        session.resend_at = None;
        session.resend_delay = self.config.mqtt.resend_after;
        // Subscribe first: MQTT handles a client's packets in order, so no ack for the
        // records below can arrive before the subscription exists.
        let subscribed = session
            .client
            .try_subscribe(wire::topic::ack(device), QoS::AtLeastOnce);
        let presence = session.client.try_publish(
            wire::topic::presence(device),
            QoS::AtLeastOnce,
            true,
            wire::encode_presence(&Presence::new(true)),
        );
        if presence.is_ok() {
            session.inflight += 1;
        }
        if let Err(err) = subscribed.and(presence) {
            warn!("queuing subscribe/presence: {err}");
        }
        self.backoff.reset();
        self.refusals = 0;
        info!(
            pending = self.outbox.snapshot().depth.records,
            "connected to {}", self.identity.record.broker_url
        );
        self.set_connection(Connection::Connected, None);
    }

    async fn on_ack(&mut self, payload: &[u8]) -> Result<(), RunError> {
        let ack = match wire::decode_ack(payload) {
            Ok(ack) => ack,
            Err(err) => {
                warn!("ignoring an undecodable ack: {err}");
                return Ok(());
            }
        };
        let epoch = self.outbox.snapshot().epoch;
        if ack.epoch.is_some_and(|id| id != epoch.id) {
            // An ack of a sequence space this outbox has left (or never had).
            debug!(
                ack_epoch = ack.epoch,
                epoch = epoch.id,
                "ignoring an ack of another epoch"
            );
            return Ok(());
        }
        let watermark = ack.watermark;
        if ack.new_epoch {
            // The server holds other records under numbers this outbox used: trimming with
            // this watermark would drop records it does not have.
            let last_appended = self.outbox.snapshot().last_appended();
            return self.start_epoch(watermark, last_appended).await;
        }
        let acked_before = self.outbox.snapshot().last_acked.unwrap_or(0);
        let handled: Vec<_> = ack.handled_ranges().collect();
        match self
            .outbox
            .with(move |outbox| {
                outbox.ack(watermark)?;
                outbox.note_handled(handled)
            })
            .await?
        {
            Ok(()) => {
                debug!(watermark, "ack");
                let acked = self.outbox.snapshot().last_acked.unwrap_or(0);
                if acked > acked_before {
                    self.on_ack_progress(acked);
                }
                self.state.last_ack = self.outbox.snapshot().last_acked;
                self.state.last_ack_at = Some(certinfo::now_secs());
                self.append_drop_events().await?;
                self.refresh_depth();
                self.store_state();
                Ok(())
            }
            Err(crate::outbox::OutboxError::AckBeyondAppended {
                watermark,
                last_appended,
            }) if ack.epoch.is_some() => self.start_epoch(watermark, last_appended).await,
            Err(crate::outbox::OutboxError::AckBeyondAppended {
                watermark,
                last_appended,
            }) => {
                // A server from before epochs: a new epoch would not change its answer.
                warn!(
                    watermark,
                    last_appended,
                    "the server acknowledged records this device never sent; ignoring the ack"
                );
                Ok(())
            }
            Err(err) => Err(RunError::Fatal(format!("outbox: {err}"))),
        }
    }

    /// The server's numbering in this outbox's epoch is not this outbox's: it acknowledged
    /// `watermark` although the outbox never assigned more than `last_appended`, or it asked
    /// for a new epoch because it holds other records under numbers this outbox used (the
    /// state directory was restored from an older copy, or another client published with this
    /// device's identity). The records the agent numbered there would be taken for duplicates.
    /// Start a new sequence space, say so in an event, and send everything unacknowledged again
    /// in it.
    async fn start_epoch(&mut self, watermark: Seq, last_appended: Seq) -> Result<(), RunError> {
        let (previous, epoch) = self
            .outbox
            .with(crate::outbox::Outbox::start_epoch)
            .await?
            .map_err(|err| RunError::Fatal(format!("outbox: {err}")))?;
        warn!(
            watermark,
            last_appended,
            previous = previous.id,
            epoch = epoch.id,
            first_seq = epoch.first_seq,
            "the server's sequence numbers are not this outbox's; starting a new epoch so that none of its records is taken for a duplicate"
        );
        self.append(records::epoch_started(
            previous,
            epoch,
            watermark,
            last_appended,
        ))
        .await?;
        self.epoch_event_seq = self.outbox.snapshot().last_appended();
        if let Link::Active(session) = &mut self.link {
            // Everything unacknowledged goes out again, numbered in the new epoch.
            session.cursor = self.outbox.snapshot().last_acked.unwrap_or(0);
            session.resend_at = None;
        }
        self.store_state();
        Ok(())
    }

    /// The watermark moved to `acked`: the resend wait starts over, counted from now for
    /// whatever is still out.
    fn on_ack_progress(&mut self, acked: Seq) {
        let initial = self.config.mqtt.resend_after;
        let Link::Active(session) = &mut self.link else {
            return;
        };
        session.cursor = session.cursor.max(acked);
        session.resend_delay = initial;
        session.resend_at = (session.cursor > acked).then(|| Instant::now() + initial);
    }

    /// When the unacknowledged records are due for a resend, if any are out.
    pub(super) fn resend_due(&self) -> Option<Instant> {
        match &self.link {
            Link::Active(session) if session.connected => session.resend_at,
            _ => None,
        }
    }

    /// No ack covered the published records in time: publish them again from the last ack,
    /// on the same connection (a loss between the broker and the commit heals without a
    /// reconnect; ingest drops what it already has). The next wait is twice as long.
    pub(super) fn resend(&mut self) {
        let acked = self.outbox.snapshot().last_acked.unwrap_or(0);
        let resend_max = self.config.mqtt.resend_max;
        let Link::Active(session) = &mut self.link else {
            return;
        };
        session.resend_at = None;
        if session.cursor <= acked {
            return;
        }
        warn!(
            first = acked + 1,
            last = session.cursor,
            waited_secs = session.resend_delay.as_secs(),
            "no ack for published records; publishing them again"
        );
        session.cursor = acked;
        session.resend_delay = (session.resend_delay * 2).min(resend_max);
    }

    fn on_failure(&mut self, err: &ConnectionError) -> Result<(), RunError> {
        match classify(err) {
            Failure::CertificateRefused(reason) => {
                self.refusals += 1;
                warn!(refusals = self.refusals, "{reason}");
                if self.refusals >= self.config.mqtt.refusals_before_stop {
                    return Err(RunError::Revoked(format!(
                        "stopping: {reason}, {} times in a row; the device was probably revoked: enroll it again",
                        self.refusals
                    )));
                }
                self.schedule_retry(reason);
            }
            Failure::Other(reason) => {
                self.schedule_retry(reason);
            }
        }
        Ok(())
    }

    fn schedule_retry(&mut self, reason: String) {
        let delay = self.backoff.next_delay();
        warn!(
            "connection to {} failed: {reason}; retrying in {:.1}s",
            self.identity.record.broker_url,
            delay.as_secs_f64()
        );
        self.link = Link::Idle {
            retry_at: Instant::now() + delay,
        };
        self.set_connection(Connection::Disconnected, Some(reason));
    }

    /// Publishes pending batches while the connection has room.
    pub(super) async fn pump(&mut self) -> Result<(), RunError> {
        let device = self.identity.record.device_id;
        let max_inflight = self.config.mqtt.max_inflight_batches;
        let Link::Active(session) = &mut self.link else {
            return Ok(());
        };
        if !session.connected {
            return Ok(());
        }
        let last = self.outbox.snapshot().last_appended();
        let acked = self.outbox.snapshot().last_acked.unwrap_or(0);
        let max_unacked = self.config.mqtt.max_unacked_records;
        let mut published = false;
        while session.inflight < max_inflight && session.cursor < last {
            let room = max_unacked.saturating_sub(session.cursor.saturating_sub(acked));
            if room == 0 {
                break; // the next ack makes room
            }
            let after = session.cursor;
            let max_records = usize::try_from(room).unwrap_or(usize::MAX);
            let (batch, skipped) = self
                .outbox
                .with(move |outbox| {
                    let mut skipped = Vec::new();
                    let batch =
                        records::next_batch_within(outbox, after, max_records, &mut skipped);
                    (batch, skipped)
                })
                .await?;
            let batch = batch?;
            for (seq, reason) in skipped {
                warn!(seq, "skipping a stored record: {reason}");
            }
            let Some(batch) = batch else {
                session.cursor = last;
                break;
            };
            let topic = records::topic_for(batch.kind, device);
            match session
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, batch.payload)
            {
                Ok(()) => {
                    debug!(first = batch.first_seq, last = batch.last_seq, kind = %batch.kind, "published");
                    session.cursor = batch.last_seq;
                    session.inflight += 1;
                    session
                        .resend_at
                        .get_or_insert_with(|| Instant::now() + session.resend_delay);
                    published = true;
                }
                Err(_) => break, // the request channel is full: the next event makes room
            }
        }
        if published {
            self.state.last_publish_at = Some(certinfo::now_secs());
        }
        Ok(())
    }

    /// On a clean stop: presence offline (a clean DISCONNECT suppresses the will), then
    /// disconnect, giving the event loop a moment to send both.
    pub(super) async fn goodbye(&mut self) {
        let device = self.identity.record.device_id;
        let Link::Active(session) = &mut self.link else {
            return;
        };
        if !session.connected {
            return;
        }
        let _ = session.client.try_publish(
            wire::topic::presence(device),
            QoS::AtLeastOnce,
            true,
            wire::encode_presence(&Presence::new(false)),
        );
        let _ = session.client.try_disconnect();
        let drain = async {
            while let Some(Ok(event)) = session.events.recv().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{self, StateDir};

    fn io_with(err: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, err)
    }

    #[test]
    fn certificate_alerts_and_not_authorized_count_as_refusals() {
        let revoked = ConnectionError::Io(io_with(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRevoked,
        )));
        assert!(matches!(classify(&revoked), Failure::CertificateRefused(_)));
        let bad = ConnectionError::Tls(rumqttc::TlsError::Io(io_with(
            rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate),
        )));
        assert!(matches!(classify(&bad), Failure::CertificateRefused(_)));
        let direct = ConnectionError::Tls(rumqttc::TlsError::TLS(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA,
        )));
        assert!(matches!(classify(&direct), Failure::CertificateRefused(_)));
        // TLS 1.3: the client finishes its side of the handshake, and the broker's alert
        // arrives while reading CONNACK.
        let while_reading = ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::Io(io_with(rustls::Error::AlertReceived(
                rustls::AlertDescription::UnknownCA,
            ))),
        ));
        assert!(matches!(
            classify(&while_reading),
            Failure::CertificateRefused(_)
        ));
        let refused = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        assert!(matches!(classify(&refused), Failure::CertificateRefused(_)));
    }

    #[test]
    fn network_trouble_and_untrusted_brokers_are_not_refusals() {
        let reset = ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(classify(&reset), Failure::Other(_)));
        assert!(matches!(
            classify(&ConnectionError::NetworkTimeout),
            Failure::Other(_)
        ));
        let untrusted = ConnectionError::Tls(rumqttc::TlsError::Io(io_with(
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        )));
        match classify(&untrusted) {
            Failure::Other(text) => assert!(text.contains("not trusted"), "{text}"),
            other => panic!("{other:?}"),
        }
        let unavailable = ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable);
        assert!(matches!(classify(&unavailable), Failure::Other(_)));
        let other_alert = ConnectionError::Io(io_with(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure,
        )));
        assert!(matches!(classify(&other_alert), Failure::Other(_)));
    }

    #[test]
    fn mqtt_options_follow_the_contract() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        crate::identity::tests::install_fake(&dir);
        let identity = identity::load(&dir).unwrap();
        let options = mqtt_options(&identity, &Config::default()).unwrap();
        assert_eq!(options.client_id(), "6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94");
        assert!(options.clean_session());
        assert!(options.max_packet_size() > wire::limits::DEFAULT_MAX_MESSAGE_BYTES);
        let will = options.last_will().unwrap();
        assert_eq!(
            will.topic,
            "fleet/v1/6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94/up/presence"
        );
        assert!(will.retain);
        assert!(!wire::decode_presence(&will.message).unwrap().online);
        assert_eq!(options.broker_address(), ("127.0.0.1".to_owned(), 1));
    }
}
