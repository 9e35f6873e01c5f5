//! `fleet-agent run`: collect, queue in the outbox, publish over mutual-TLS MQTT, trim on
//! the server's ack, reconnect with backoff, renew the certificate, stop when revoked.
//!
//! One task runs this loop on a current-thread runtime; rumqttc's event loop runs in a
//! task of its own per connection and hands its events over a channel (so that the timers
//! here never cancel a half-done connect or read), and package-manager commands run on the
//! blocking pool. The agent opens no listening socket: its only sockets are the outgoing
//! MQTT connection and, for renewal, an outgoing HTTPS connection.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::collect::packages::{
    self, collect_patch_status, detect_package_manager, CommandRunner, PackageManager,
};
use crate::collect::system::{collect_system, CpuSampler};
use crate::collect::FsRoot;
use crate::outbox::{Outbox, Seq};
use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, LastWill,
    MqttOptions, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, error, info, warn};
use wire::backoff::{Backoff, Jitter};
use wire::{AgentEvent, Body, CertificateRenewed, Presence, Started, UnixMillis};

use crate::certinfo::{self, rfc3339};
use crate::config::Config;
use crate::enroll::{self, EnrollError};
use crate::identity::{self, Identity, StateDir};
use crate::records::{self, RecordsError};
use crate::status::{Connection, RunState};
use crate::tls;
use crate::url::{Scheme, Url};

/// How `run` ended, when it did not end well.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Setup or local failure (identity, outbox, configuration).
    #[error("{0}")]
    Fatal(String),
    /// The broker keeps refusing the certificate, or it expired: the device must be
    /// enrolled again.
    #[error("{0}")]
    Revoked(String),
    /// `--once`: no covering ack in time.
    #[error("{0}")]
    OnceTimeout(String),
}

impl From<RecordsError> for RunError {
    fn from(err: RecordsError) -> Self {
        Self::Fatal(err.to_string())
    }
}

/// `run` options from the command line.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// One round, wait for its ack, exit.
    pub once: bool,
    /// Overrides `[once] timeout`.
    pub once_timeout: Option<Duration>,
}

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
struct Session {
    client: AsyncClient,
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    task: JoinHandle<()>,
    connected: bool,
    /// Highest sequence number handed to the client on this connection.
    cursor: Seq,
    /// Publishes (batches and presence) not yet PUBACKed.
    inflight: usize,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Link {
    /// Waiting until `retry_at` before the next attempt.
    Idle {
        retry_at: Instant,
    },
    Active(Session),
}

enum LinkEvent {
    RetryDue,
    Mqtt(Event),
    Failed(ConnectionError),
    /// The event-loop task ended without an error (after a clean disconnect).
    Closed,
}

async fn next_link_event(link: &mut Link) -> LinkEvent {
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

/// Files whose modification time says the package database (or the package lists)
/// changed.
fn package_db_files(manager: PackageManager) -> &'static [&'static str] {
    match manager {
        PackageManager::Apt => &["/var/lib/dpkg/status", "/var/lib/apt/lists"],
        PackageManager::Apk => &["/lib/apk/db/installed", "/var/cache/apk"],
        PackageManager::Opkg => &[
            "/usr/lib/opkg/status",
            "/var/lib/opkg/status",
            "/var/opkg-lists",
        ],
    }
}

/// Where the package lists live (their modification time = last refresh).
fn package_lists_dir(manager: PackageManager) -> &'static str {
    match manager {
        PackageManager::Apt => "/var/lib/apt/lists",
        PackageManager::Apk => "/var/cache/apk",
        PackageManager::Opkg => "/var/opkg-lists",
    }
}

fn mtime(root: &FsRoot, path: &str) -> Option<SystemTime> {
    std::fs::metadata(root.join(path))
        .and_then(|m| m.modified())
        .ok()
}

type PatchJob = JoinHandle<(packages::PatchStatus, Option<UnixMillis>)>;

/// The agent's state while running.
struct Agent {
    dir: StateDir,
    config: Config,
    identity: Identity,
    outbox: Outbox,
    state: RunState,
    backoff: Backoff,
    refusals: u32,
    link: Link,
    cpu: CpuSampler,
    root: FsRoot,
    runner: CommandRunner,
    manager: Option<PackageManager>,
    db_stamp: Vec<Option<SystemTime>>,
    patch_job: Option<PatchJob>,
    last_problems: std::collections::HashMap<&'static str, Vec<String>>,
    next_telemetry: Instant,
    next_patch: Instant,
    next_patch_poll: Instant,
    next_renewal_check: Instant,
}

enum Wake {
    Link(LinkEvent),
    Telemetry,
    PatchPoll,
    PatchDone(Result<(packages::PatchStatus, Option<UnixMillis>), tokio::task::JoinError>),
    RenewalCheck,
    OnceDeadline,
    Shutdown,
}

async fn join_patch(
    job: &mut Option<PatchJob>,
) -> Result<(packages::PatchStatus, Option<UnixMillis>), tokio::task::JoinError> {
    match job {
        Some(handle) => {
            let result = handle.await;
            *job = None;
            result
        }
        None => std::future::pending().await,
    }
}

/// Runs the agent until a signal (Ok), revocation, or with `--once`, the covering ack.
pub async fn run(dir: StateDir, config: Config, options: RunOptions) -> Result<(), RunError> {
    let identity = identity::load(&dir).map_err(|err| RunError::Fatal(err.to_string()))?;
    check_not_expired(&identity)?;
    mqtt_options(&identity, &config).map_err(RunError::Fatal)?;
    let outbox_config = config.outbox_config().map_err(RunError::Fatal)?;
    let (outbox, report) = Outbox::open(dir.outbox_dir(), outbox_config)
        .map_err(|err| RunError::Fatal(err.to_string()))?;
    if report.truncated_bytes > 0 || !report.corrupt_segments.is_empty() {
        warn!(
            truncated_bytes = report.truncated_bytes,
            corrupt = report.corrupt_segments.len(),
            "outbox repaired on open"
        );
    }
    let mut agent = Agent::new(dir, config, identity, outbox);
    info!(
        device = %agent.identity.record.device_id,
        broker = %agent.identity.record.broker_url,
        pending = agent.outbox.depth().records,
        "fleet-agent {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let result = agent.main_loop(options).await;
    agent.set_connection(
        Connection::Stopped,
        result.as_ref().err().map(ToString::to_string),
    );
    if let Err(err) = agent.outbox.sync() {
        warn!("flushing the outbox: {err}");
    }
    result
}

fn check_not_expired(identity: &Identity) -> Result<(), RunError> {
    if identity.validity.expired(certinfo::now_secs()) {
        return Err(RunError::Revoked(format!(
            "the device certificate expired at {}; it can no longer be renewed: enroll the device again",
            rfc3339(identity.validity.not_after)
        )));
    }
    Ok(())
}

impl Agent {
    fn new(dir: StateDir, config: Config, identity: Identity, outbox: Outbox) -> Self {
        let root = FsRoot::default();
        let manager = detect_package_manager(&root);
        let runner = CommandRunner {
            timeout: config.patch.command_timeout,
            ..CommandRunner::default()
        };
        let now = Instant::now();
        let state = RunState {
            pid: std::process::id(),
            connection: Connection::Connecting,
            since: certinfo::now_secs(),
            last_error: None,
            outbox_records: outbox.depth().records,
            outbox_bytes: outbox.depth().bytes,
            next_seq: outbox.next_seq(),
            last_ack: outbox.last_acked(),
            last_ack_at: None,
            last_publish_at: None,
            updated_at: certinfo::now_secs(),
        };
        Self {
            backoff: Backoff::new(config.mqtt.backoff_initial, config.mqtt.backoff_max)
                .with_jitter(Jitter::Equal),
            next_telemetry: now + config.jittered_telemetry_interval(),
            next_patch: now + config.patch.interval,
            next_patch_poll: now + config.patch.poll,
            next_renewal_check: now,
            dir,
            config,
            identity,
            outbox,
            state,
            refusals: 0,
            link: Link::Idle { retry_at: now },
            cpu: CpuSampler::new(),
            root,
            runner,
            manager,
            db_stamp: Vec::new(),
            patch_job: None,
            last_problems: Default::default(),
        }
    }

    async fn main_loop(&mut self, options: RunOptions) -> Result<(), RunError> {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|err| RunError::Fatal(format!("installing the SIGTERM handler: {err}")))?;
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|err| RunError::Fatal(format!("installing the SIGINT handler: {err}")))?;
        self.append(Body::Event(AgentEvent::Started(Started {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        })))?;
        self.collect_telemetry()?;
        self.db_stamp = self.package_db_stamp();
        let once_target = if options.once {
            self.collect_patch_now().await?;
            Some(self.outbox.next_seq() - 1)
        } else {
            self.start_patch_job();
            None
        };
        let once_timeout = options.once_timeout.unwrap_or(self.config.once.timeout);
        let once_deadline = Instant::now() + once_timeout;
        loop {
            if let Some(target) = once_target {
                if self.outbox.last_acked().unwrap_or(0) >= target {
                    info!(
                        target,
                        "run --once: the server acknowledged everything up to seq {target}"
                    );
                    self.goodbye().await;
                    return Ok(());
                }
            }
            self.pump()?;
            let wake = tokio::select! {
                event = next_link_event(&mut self.link) => Wake::Link(event),
                _ = sleep_until(self.next_telemetry), if once_target.is_none() => Wake::Telemetry,
                _ = sleep_until(self.next_patch_poll), if once_target.is_none() => Wake::PatchPoll,
                result = join_patch(&mut self.patch_job) => Wake::PatchDone(result),
                _ = sleep_until(self.next_renewal_check) => Wake::RenewalCheck,
                _ = sleep_until(once_deadline), if once_target.is_some() => Wake::OnceDeadline,
                _ = terminate.recv() => Wake::Shutdown,
                _ = interrupt.recv() => Wake::Shutdown,
            };
            match wake {
                Wake::Link(event) => self.on_link_event(event)?,
                Wake::Telemetry => {
                    self.next_telemetry =
                        Instant::now() + self.config.jittered_telemetry_interval();
                    self.collect_telemetry()?;
                }
                Wake::PatchPoll => self.poll_package_db(),
                Wake::PatchDone(result) => self.on_patch_done(result)?,
                Wake::RenewalCheck => self.check_renewal().await?,
                Wake::OnceDeadline => {
                    let target = once_target.unwrap_or(0);
                    return Err(RunError::OnceTimeout(
                        self.once_timeout_message(target, once_timeout),
                    ));
                }
                Wake::Shutdown => {
                    info!("signal received: stopping");
                    self.goodbye().await;
                    return Ok(());
                }
            }
        }
    }

    fn once_timeout_message(&self, target: Seq, timeout: Duration) -> String {
        let acked = self.outbox.last_acked().unwrap_or(0);
        let why = match (&self.link, &self.state.last_error) {
            (Link::Active(session), _) if session.connected => {
                "connected, but the server's ack did not cover the records".to_owned()
            }
            (_, Some(error)) => format!("not connected: {error}"),
            _ => "not connected".to_owned(),
        };
        format!(
            "run --once: no ack covering seq {target} within {}s (last ack {acked}; {why})",
            timeout.as_secs()
        )
    }

    // ----- records ------------------------------------------------------------------

    fn append(&mut self, body: Body) -> Result<(), RunError> {
        match records::append(&mut self.outbox, body) {
            Ok(_) => {}
            Err(RecordsError::Outbox(err)) => {
                return Err(RunError::Fatal(format!("outbox: {err}")))
            }
            // A record that breaks a limit is a bug or a freak system; report, go on.
            Err(err) => {
                warn!("{err}");
                let body = records::collector_error("agent", &err.to_string());
                records::append(&mut self.outbox, body)?;
            }
        }
        if !self.outbox.drop_reports().is_empty() {
            for report in self.outbox.drop_reports() {
                warn!(
                    count = report.count,
                    first = report.first_seq,
                    last = report.last_seq,
                    reason = report.reason.as_str(),
                    "outbox dropped records"
                );
            }
            records::append_drop_events(&mut self.outbox)?;
        }
        self.refresh_depth();
        Ok(())
    }

    /// Appends a collector-error event when the set of problems of `collector` changed
    /// (so a container without thermal zones does not report it every minute).
    fn report_problems(
        &mut self,
        collector: &'static str,
        problems: Vec<String>,
    ) -> Result<(), RunError> {
        if self.last_problems.get(collector) == Some(&problems) {
            return Ok(());
        }
        if !problems.is_empty() {
            for problem in &problems {
                debug!(collector, "{problem}");
            }
            let message = format!("{} problem(s); first: {}", problems.len(), problems[0]);
            self.append(records::collector_error(collector, &message))?;
        }
        self.last_problems.insert(collector, problems);
        Ok(())
    }

    fn collect_telemetry(&mut self) -> Result<(), RunError> {
        let metrics = collect_system(&self.root, &mut self.cpu);
        self.append(records::telemetry(&metrics))?;
        self.report_problems("system", metrics.problems)
    }

    fn package_db_stamp(&self) -> Vec<Option<SystemTime>> {
        self.manager
            .map(|manager| {
                package_db_files(manager)
                    .iter()
                    .map(|path| mtime(&self.root, path))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn poll_package_db(&mut self) {
        self.next_patch_poll = Instant::now() + self.config.patch.poll;
        let stamp = self.package_db_stamp();
        let changed = stamp != self.db_stamp;
        if changed || Instant::now() >= self.next_patch {
            if changed {
                info!("package database changed: collecting patch status");
            }
            self.db_stamp = stamp;
            self.start_patch_job();
        }
    }

    fn start_patch_job(&mut self) {
        self.next_patch = Instant::now() + self.config.patch.interval;
        if self.patch_job.is_some() {
            return;
        }
        let Some(manager) = self.manager else {
            let _ = self.report_problems(
                "patch",
                vec!["no supported package manager (dpkg, apk, opkg) found".to_owned()],
            );
            return;
        };
        let (root, runner) = (self.root.clone(), self.runner);
        self.patch_job = Some(tokio::task::spawn_blocking(move || {
            let status = collect_patch_status(&root, manager, &runner);
            let refreshed = mtime(&root, package_lists_dir(manager)).map(UnixMillis::from);
            (status, refreshed)
        }));
    }

    async fn collect_patch_now(&mut self) -> Result<(), RunError> {
        self.start_patch_job();
        if self.patch_job.is_some() {
            let result = join_patch(&mut self.patch_job).await;
            self.on_patch_done(result)?;
        }
        Ok(())
    }

    fn on_patch_done(
        &mut self,
        result: Result<(packages::PatchStatus, Option<UnixMillis>), tokio::task::JoinError>,
    ) -> Result<(), RunError> {
        let (status, refreshed) = match result {
            Ok(done) => done,
            Err(err) => {
                return self
                    .report_problems("patch", vec![format!("patch collection failed: {err}")]);
            }
        };
        self.append(records::patch_status(&status, refreshed))?;
        let problems = status.problems.iter().map(|p| format!("{p:?}")).collect();
        self.report_problems("patch", problems)
    }

    // ----- connection ---------------------------------------------------------------

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
        });
        self.set_connection(Connection::Connecting, None);
        Ok(())
    }

    fn on_link_event(&mut self, event: LinkEvent) -> Result<(), RunError> {
        match event {
            LinkEvent::RetryDue => self.connect(),
            LinkEvent::Mqtt(Event::Incoming(packet)) => self.on_incoming(packet),
            LinkEvent::Mqtt(Event::Outgoing(_)) => Ok(()),
            LinkEvent::Failed(err) => self.on_failure(&err),
            LinkEvent::Closed => {
                self.schedule_retry("connection closed".to_owned());
                Ok(())
            }
        }
    }

    fn on_incoming(&mut self, packet: Incoming) -> Result<(), RunError> {
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
                self.on_ack(&publish.payload)
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
        session.cursor = self.outbox.last_acked().unwrap_or(0);
        session.inflight = 0;
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
            pending = self.outbox.depth().records,
            "connected to {}", self.identity.record.broker_url
        );
        self.set_connection(Connection::Connected, None);
    }

    fn on_ack(&mut self, payload: &[u8]) -> Result<(), RunError> {
        let ack = match wire::decode_ack(payload) {
            Ok(ack) => ack,
            Err(err) => {
                warn!("ignoring an undecodable ack: {err}");
                return Ok(());
            }
        };
        match self.outbox.ack(ack.watermark) {
            Ok(()) => {
                debug!(watermark = ack.watermark, "ack");
                self.state.last_ack = self.outbox.last_acked();
                self.state.last_ack_at = Some(certinfo::now_secs());
                self.refresh_depth();
                self.store_state();
                Ok(())
            }
            Err(crate::outbox::OutboxError::AckBeyondAppended {
                watermark,
                last_appended,
            }) => {
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
    fn pump(&mut self) -> Result<(), RunError> {
        let device = self.identity.record.device_id;
        let max_inflight = self.config.mqtt.max_inflight_batches;
        let Link::Active(session) = &mut self.link else {
            return Ok(());
        };
        if !session.connected {
            return Ok(());
        }
        let last = self.outbox.next_seq() - 1;
        let mut published = false;
        while session.inflight < max_inflight && session.cursor < last {
            let mut skipped = Vec::new();
            let batch = records::next_batch(&mut self.outbox, session.cursor, &mut skipped)?;
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
    async fn goodbye(&mut self) {
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

    // ----- renewal ------------------------------------------------------------------

    async fn check_renewal(&mut self) -> Result<(), RunError> {
        let check = self.config.renewal.check;
        self.next_renewal_check = Instant::now() + check.mul_f64(0.75 + fastrand::f64() * 0.5);
        check_not_expired(&self.identity)?;
        if !self.identity.validity.renewal_due(certinfo::now_secs()) {
            return Ok(());
        }
        info!(expires = %rfc3339(self.identity.validity.not_after), "renewing the device certificate");
        let timeout = self.config.renewal.timeout;
        match enroll::renew(&self.dir, &self.identity, timeout).await {
            Ok(identity) => {
                info!(expires = %rfc3339(identity.validity.not_after), "certificate renewed");
                let not_after = UnixMillis((identity.validity.not_after.max(0) as u64) * 1000);
                self.identity = identity;
                self.append(Body::Event(AgentEvent::CertificateRenewed(
                    CertificateRenewed { not_after },
                )))?;
                // Reconnect with the new certificate.
                self.link = Link::Idle {
                    retry_at: Instant::now(),
                };
            }
            Err(err @ EnrollError::Refused { .. }) => error!("{err}"),
            Err(err) => warn!("{err}; will retry"),
        }
        Ok(())
    }

    // ----- state file ---------------------------------------------------------------

    fn refresh_depth(&mut self) {
        let depth = self.outbox.depth();
        self.state.outbox_records = depth.records;
        self.state.outbox_bytes = depth.bytes;
        self.state.next_seq = self.outbox.next_seq();
    }

    fn set_connection(&mut self, connection: Connection, error: Option<String>) {
        if self.state.connection != connection {
            self.state.since = certinfo::now_secs();
        }
        self.state.connection = connection;
        if error.is_some() || connection == Connection::Connected {
            self.state.last_error = error;
        }
        self.refresh_depth();
        self.store_state();
    }

    fn store_state(&mut self) {
        self.state.updated_at = certinfo::now_secs();
        if let Err(err) = self.state.store(&self.dir) {
            debug!("writing the state file: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
