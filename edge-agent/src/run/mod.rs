//! `fleet-agent run`: collect, queue in the outbox, publish over mutual-TLS MQTT, trim on
//! the server's ack, reconnect with backoff, renew the certificate, stop when revoked.
//!
//! One task runs this loop on a current-thread runtime; rumqttc's event loop runs in a
//! task of its own per connection and hands its events over a channel (so that the timers
//! here never cancel a half-done connect or read), and package-manager commands run on the
//! blocking pool. The agent opens no listening socket: its only sockets are the outgoing
//! MQTT connection and, for renewal, an outgoing HTTPS connection.
//!
//! - this file: [`run`], the agent's state and the main loop that waits on every source
//!   of work at once, and the state file (`state.json`);
//! - [`link`]: the broker link (MQTT options, connection, publishing, acks, refusals);
//! - [`schedule`]: the collection timers (telemetry, patch status and its package-database
//!   poll) and the collectors' problem reports;
//! - [`renewal`]: certificate renewal.

mod link;
mod queue;
mod renewal;
mod schedule;

use std::time::{Duration, SystemTime};

use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};
use wire::backoff::{Backoff, Jitter};
use wire::{AgentEvent, Body, Started};

use self::link::{mqtt_options, next_link_event, Link, LinkEvent};
use self::queue::Queue;
use self::schedule::{join_patch, PatchJob, PatchResult};
use crate::certinfo::{self, rfc3339};
use crate::collect::packages::{detect_package_manager, CommandRunner, PackageManager};
use crate::collect::system::CpuSampler;
use crate::collect::FsRoot;
use crate::config::Config;
use crate::identity::{self, Identity, StateDir};
use crate::outbox::{DropReport, Outbox, Seq};
use crate::records::{self, RecordsError};
use crate::status::{Connection, RunState};

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

/// The agent's state while running.
struct Agent {
    dir: StateDir,
    config: Config,
    identity: Identity,
    outbox: Queue,
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
    /// The seq of the last `epoch_started` event of this run (0 if none): `--once` waits for it
    /// too, so the event is on the server when the run ends.
    epoch_event_seq: Seq,
}

enum Wake {
    Link(LinkEvent),
    Telemetry,
    PatchPoll,
    PatchDone(PatchResult),
    RenewalCheck,
    Resend,
    OnceDeadline,
    Shutdown,
}

/// Runs the agent until a signal (Ok), revocation, or with `--once`, the covering ack.
pub async fn run(dir: StateDir, config: Config, options: RunOptions) -> Result<(), RunError> {
    let identity = identity::load(&dir).map_err(|err| RunError::Fatal(err.to_string()))?;
    check_not_expired(&identity)?;
    mqtt_options(&identity, &config).map_err(RunError::Fatal)?;
    let outbox_config = config.outbox_config().map_err(RunError::Fatal)?;
    let (outbox, report) = Queue::open(dir.outbox_dir(), outbox_config).await?;
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
        pending = agent.outbox.snapshot().depth.records,
        "fleet-agent {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let result = agent.main_loop(options).await;
    agent.set_connection(
        Connection::Stopped,
        result.as_ref().err().map(ToString::to_string),
    );
    match agent.outbox.with(Outbox::sync).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!("flushing the outbox: {err}"),
        Err(err) => warn!("flushing the outbox: {err}"),
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
    fn new(dir: StateDir, config: Config, identity: Identity, outbox: Queue) -> Self {
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
            outbox_records: outbox.snapshot().depth.records,
            outbox_bytes: outbox.snapshot().depth.bytes,
            next_seq: outbox.snapshot().next_seq,
            last_ack: outbox.snapshot().last_acked,
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
            epoch_event_seq: 0,
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
        })))
        .await?;
        self.collect_telemetry().await?;
        self.db_stamp = self.package_db_stamp();
        let once_target = if options.once {
            self.collect_patch_now().await?;
            Some(self.outbox.snapshot().last_appended())
        } else {
            self.start_patch_job().await;
            None
        };
        let once_timeout = options.once_timeout.unwrap_or(self.config.once.timeout);
        let once_deadline = Instant::now() + once_timeout;
        loop {
            if let Some(target) = once_target.map(|t| t.max(self.epoch_event_seq)) {
                if self.outbox.snapshot().last_acked.unwrap_or(0) >= target {
                    info!(
                        target,
                        "run --once: the server acknowledged everything up to seq {target}"
                    );
                    self.goodbye().await;
                    return Ok(());
                }
            }
            self.pump().await?;
            let resend_due = self.resend_due();
            let wake = tokio::select! {
                event = next_link_event(&mut self.link) => Wake::Link(event),
                _ = sleep_until(self.next_telemetry), if once_target.is_none() => Wake::Telemetry,
                _ = sleep_until(self.next_patch_poll), if once_target.is_none() => Wake::PatchPoll,
                result = join_patch(&mut self.patch_job) => Wake::PatchDone(result),
                _ = sleep_until(self.next_renewal_check) => Wake::RenewalCheck,
                _ = sleep_until(resend_due.unwrap_or(once_deadline)), if resend_due.is_some() => Wake::Resend,
                _ = sleep_until(once_deadline), if once_target.is_some() => Wake::OnceDeadline,
                _ = terminate.recv() => Wake::Shutdown,
                _ = interrupt.recv() => Wake::Shutdown,
            };
            match wake {
                Wake::Link(event) => self.on_link_event(event).await?,
                Wake::Telemetry => {
                    self.next_telemetry =
                        Instant::now() + self.config.jittered_telemetry_interval();
                    self.collect_telemetry().await?;
                }
                Wake::PatchPoll => self.poll_package_db().await,
                Wake::PatchDone(result) => self.on_patch_done(result).await?,
                Wake::RenewalCheck => self.check_renewal().await?,
                Wake::Resend => self.resend(),
                Wake::OnceDeadline => {
                    let target = once_target.unwrap_or(0).max(self.epoch_event_seq);
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
        let acked = self.outbox.snapshot().last_acked.unwrap_or(0);
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

    /// Validates and appends a record, on the blocking pool. The overflow events of records
    /// the outbox had to drop are appended when the next ack has come (see
    /// [`append_drop_events`](Self::append_drop_events)).
    async fn append(&mut self, body: Body) -> Result<(), RunError> {
        self.outbox
            .with(move |outbox| append_to(outbox, body))
            .await??;
        self.refresh_depth();
        Ok(())
    }

    /// Turns the outbox's drop reports into overflow event records. Called after an ack: the
    /// ack has taken out of the reports whatever was delivered before its ack was lost (a
    /// record evicted while in flight), so each event counts exactly the records lost.
    async fn append_drop_events(&mut self) -> Result<(), RunError> {
        if !self.outbox.snapshot().drops_waiting {
            return Ok(());
        }
        self.outbox
            .with(|outbox| {
                for report in outbox.drop_reports() {
                    log_drop(report, "outbox dropped records");
                }
                emit_drop_events(outbox)
            })
            .await??;
        self.refresh_depth();
        Ok(())
    }

    // ----- state file ---------------------------------------------------------------

    fn refresh_depth(&mut self) {
        let snapshot = self.outbox.snapshot();
        self.state.outbox_records = snapshot.depth.records;
        self.state.outbox_bytes = snapshot.depth.bytes;
        self.state.next_seq = snapshot.next_seq;
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

/// What [`Agent::append_drop_events`] does on the blocking pool.
fn emit_drop_events(outbox: &mut Outbox) -> Result<(), RecordsError> {
    match records::append_drop_events(outbox) {
        Ok(_) => Ok(()),
        Err(RecordsError::Outbox(err)) if err.is_storage_full() => {
            // The reports stay in the state file; the next ack tries again.
            warn!("the disk is full: drop reports wait for room ({err})");
            Ok(())
        }
        Err(err) => Err(err),
    }
}

/// What [`Agent::append`] does on the blocking pool.
fn append_to(outbox: &mut Outbox, body: Body) -> Result<(), RunError> {
    // Evictions merge into the last report or add one: its number and the last tell.
    let last_drop = |outbox: &Outbox| {
        let reports = outbox.drop_reports();
        (reports.len(), reports.last().copied())
    };
    let drops_before = last_drop(outbox);
    match records::append(outbox, body) {
        Ok(_) => {}
        Err(RecordsError::Outbox(err)) if err.is_storage_full() => {
            // Nothing was left to evict: the record got no number and was never accepted.
            warn!(
                "the disk is full and the outbox holds nothing to evict: record not stored ({err})"
            );
        }
        Err(RecordsError::Outbox(err)) => return Err(RunError::Fatal(format!("outbox: {err}"))),
        // A record that breaks a limit is a bug or a freak system; report, go on.
        Err(err) => {
            warn!("{err}");
            let body = records::collector_error("agent", &err.to_string());
            records::append(outbox, body)?;
        }
    }
    let drops_after = last_drop(outbox);
    if let (true, (_, Some(report))) = (drops_after != drops_before, drops_after) {
        log_drop(
            &report,
            "outbox evicted records not yet acknowledged; reported once the next ack says which of them arrived",
        );
    }
    Ok(())
}

fn log_drop(report: &DropReport, message: &str) {
    warn!(
        count = report.count,
        first = report.first_seq,
        last = report.last_seq,
        reason = report.reason.as_str(),
        "{message}"
    );
}
