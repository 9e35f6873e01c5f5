//! `fleet-agent status`, and `state.json`, the small file the run loop keeps current for it.
//!
//! `status` never opens the outbox (the running agent holds its lock) and never talks to
//! the network: it reads `device.json`, the certificate and `state.json`, and tells whether
//! the process that wrote `state.json` is still alive.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::certinfo::{self, rfc3339};
use crate::identity::{self, IdentityError, StateDir};

/// The connection as the run loop last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    /// Connecting (TCP, TLS, CONNACK).
    Connecting,
    /// Connected to the broker.
    Connected,
    /// Waiting before the next attempt.
    Disconnected,
    /// The agent stopped (exit, revocation, `--once` done).
    Stopped,
}

impl Connection {
    fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::Stopped => "stopped",
        }
    }
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// The agent process.
    pub pid: u32,
    /// The connection.
    pub connection: Connection,
    /// Since when (seconds since the epoch).
    pub since: i64,
    /// The last connection or publishing error, one line.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Unacknowledged records in the outbox.
    pub outbox_records: u64,
    /// Their bytes on disk.
    pub outbox_bytes: u64,
    /// The sequence number the next record will get.
    pub next_seq: u64,
    /// The last ack watermark.
    #[serde(default)]
    pub last_ack: Option<u64>,
    /// When it arrived.
    #[serde(default)]
    pub last_ack_at: Option<i64>,
    /// When the agent last published a batch.
    #[serde(default)]
    pub last_publish_at: Option<i64>,
    /// When this file was written.
    pub updated_at: i64,
}

impl RunState {
    /// Writes `state.json` atomically.
    pub fn store(&self, dir: &StateDir) -> Result<(), IdentityError> {
        let json = serde_json::to_vec_pretty(self).expect("serializes");
        identity::write_atomic(&dir.state_file(), &json, 0o644)
    }

    /// Reads `state.json`; `None` when absent or unreadable.
    pub fn load(dir: &StateDir) -> Option<Self> {
        let text = std::fs::read_to_string(dir.state_file()).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Everything `status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The state directory.
    pub state_dir: String,
    /// Whether `device.json` exists and is readable.
    pub enrolled: bool,
    /// Device id.
    pub device_id: Option<String>,
    /// Tenant id.
    pub tenant_id: Option<String>,
    /// Enrollment / renewal server.
    pub server_url: Option<String>,
    /// Broker.
    pub broker_url: Option<String>,
    /// Certificate validity.
    pub certificate: Option<CertificateStatus>,
    /// Whether the process that wrote `state.json` is alive.
    pub agent_running: bool,
    /// The run loop's last state.
    pub run: Option<RunState>,
    /// Things that are wrong, one line each.
    pub problems: Vec<String>,
}

/// The certificate part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateStatus {
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// When renewal starts (a third of the lifetime before expiry), RFC 3339.
    pub renew_from: String,
    /// Whether it has expired.
    pub expired: bool,
}

/// Gathers the report; never fails (what cannot be read becomes a problem line).
pub fn report(dir: &StateDir) -> StatusReport {
    let mut report = StatusReport {
        state_dir: dir.path().display().to_string(),
        enrolled: false,
        device_id: None,
        tenant_id: None,
        server_url: None,
        broker_url: None,
        certificate: None,
        agent_running: false,
        run: None,
        problems: Vec::new(),
    };
    match identity::load_record(dir) {
        Ok(record) => {
            report.enrolled = true;
            report.device_id = Some(record.device_id.to_string());
            report.tenant_id = Some(record.tenant_id.to_string());
            report.server_url = Some(record.server_url.clone());
            report.broker_url = Some(record.broker_url.clone());
            match identity::load_validity(dir, &record) {
                Ok(validity) => {
                    report.certificate = Some(CertificateStatus {
                        not_before: rfc3339(validity.not_before),
                        not_after: rfc3339(validity.not_after),
                        renew_from: rfc3339(validity.renew_at()),
                        expired: validity.expired(certinfo::now_secs()),
                    })
                }
                Err(err) => report.problems.push(format!("certificate: {err}")),
            }
        }
        Err(IdentityError::NotEnrolled(_)) => {}
        Err(err) => report.problems.push(err.to_string()),
    }
    report.run = RunState::load(dir);
    report.agent_running = report
        .run
        .as_ref()
        .is_some_and(|run| process_alive(run.pid));
    report
}

/// Whether `pid` is a live fleet-agent process.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
        .is_ok_and(|comm| comm.trim_end().starts_with("fleet-agent"))
}

/// The plain-words rendering.
pub fn render_plain(report: &StatusReport) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "state directory: {}", report.state_dir);
    if !report.enrolled {
        let _ = writeln!(
            w,
            "device:          not enrolled (run `fleet-agent enroll`)"
        );
    }
    if let (Some(device), Some(tenant)) = (&report.device_id, &report.tenant_id) {
        let _ = writeln!(w, "device:          {device} (tenant {tenant})");
    }
    if let Some(server) = &report.server_url {
        let _ = writeln!(w, "server:          {server}");
    }
    if let Some(broker) = &report.broker_url {
        let _ = writeln!(w, "broker:          {broker}");
    }
    let _ = writeln!(w, "connection:      {}", connection_line(report));
    if let Some(run) = &report.run {
        let _ = writeln!(
            w,
            "outbox:          {} record(s), {} bytes waiting for the server's ack (next seq {})",
            run.outbox_records, run.outbox_bytes, run.next_seq
        );
        let ack = match (run.last_ack, run.last_ack_at) {
            (Some(seq), Some(at)) => format!("seq {seq} at {}", rfc3339(at)),
            (Some(seq), None) => format!("seq {seq}"),
            _ => "none yet".to_owned(),
        };
        let _ = writeln!(w, "last ack:        {ack}");
        if let Some(error) = &run.last_error {
            let _ = writeln!(w, "last error:      {error}");
        }
    } else {
        let _ = writeln!(w, "outbox:          unknown (the agent has not run yet)");
    }
    if let Some(cert) = &report.certificate {
        let state = if cert.expired { "EXPIRED" } else { "valid" };
        let _ = writeln!(
            w,
            "certificate:     {state} until {} (renewal from {})",
            cert.not_after, cert.renew_from
        );
    }
    for problem in &report.problems {
        let _ = writeln!(w, "problem:         {problem}");
    }
    out
}

fn connection_line(report: &StatusReport) -> String {
    match &report.run {
        None => "agent not running".to_owned(),
        Some(run) if report.agent_running => format!(
            "{} since {} (agent pid {})",
            run.connection.as_str(),
            rfc3339(run.since),
            run.pid
        ),
        Some(run) => format!(
            "agent not running (last state: {} at {})",
            run.connection.as_str(),
            rfc3339(run.updated_at)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_state(pid: u32) -> RunState {
        RunState {
            pid,
            connection: Connection::Connected,
            since: 1_700_000_000,
            last_error: None,
            outbox_records: 3,
            outbox_bytes: 300,
            next_seq: 45,
            last_ack: Some(41),
            last_ack_at: Some(1_700_000_100),
            last_publish_at: None,
            updated_at: 1_700_000_100,
        }
    }

    #[test]
    fn empty_state_dir_reports_not_enrolled() {
        let tmp = tempfile::tempdir().unwrap();
        let report = report(&StateDir::new(tmp.path()));
        assert!(!report.enrolled);
        assert!(report.problems.is_empty());
        let text = render_plain(&report);
        assert!(text.contains("not enrolled"), "{text}");
        assert!(text.contains("agent not running"), "{text}");
    }

    #[test]
    fn enrolled_without_run_state_shows_identity_and_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        crate::identity::tests::install_fake(&dir);
        let report = report(&dir);
        assert!(report.enrolled);
        assert!(report.certificate.is_some());
        let text = render_plain(&report);
        assert!(
            text.contains("6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94"),
            "{text}"
        );
        assert!(text.contains("mqtts://127.0.0.1:1"), "{text}");
        assert!(text.contains("certificate:     valid until"), "{text}");
    }

    #[test]
    fn partial_state_reports_problems_instead_of_failing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        crate::identity::tests::install_fake(&dir);
        std::fs::remove_file(dir.cert_file(1)).unwrap();
        let report = report(&dir);
        assert!(report.enrolled);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        std::fs::write(dir.device_file(), "{").unwrap();
        let report = super::report(&dir);
        assert!(!report.enrolled);
        assert_eq!(report.problems.len(), 1);
    }

    #[test]
    fn run_state_of_a_dead_process_says_not_running() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        run_state(u32::MAX - 1).store(&dir).unwrap();
        let report = report(&dir);
        assert!(!report.agent_running);
        let text = render_plain(&report);
        assert!(
            text.contains("agent not running (last state: connected"),
            "{text}"
        );
        assert!(text.contains("3 record(s), 300 bytes"), "{text}");
        assert!(text.contains("seq 41 at 2023-11-14T22:15:00Z"), "{text}");
    }

    #[test]
    fn run_state_round_trips_and_json_report_has_every_field() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        run_state(std::process::id()).store(&dir).unwrap();
        assert_eq!(RunState::load(&dir).unwrap(), run_state(std::process::id()));
        let json = serde_json::to_value(report(&dir)).unwrap();
        for key in [
            "enrolled",
            "device_id",
            "broker_url",
            "certificate",
            "agent_running",
            "run",
            "problems",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(json["run"]["last_ack"], 41);
    }
}
