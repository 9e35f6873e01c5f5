//! SIEM forwarding of the audit trail (`[siem]`): every event of each opted-in tenant, in `seq`
//! order, as an RFC 5424 syslog message over TLS with RFC 5425 octet-counting framing.
//!
//! Delivery is at-least-once, per tenant (README, "SIEM forwarding"):
//!
//! - The durable cursor (`store::siem`) moves forward only after the batch was written and
//!   flushed into the TLS connection, so a restart of fleetd resends what it had not recorded.
//! - TCP acceptance is not delivery: a collector that dies may lose what it had received but not
//!   stored. So after any failure of a connection (a write error, or the collector closing it,
//!   which an idle forwarder notices by reading), each tenant's cursor moves back to where it was
//!   when that connection opened, by at most `resend_window` events, and those events are sent
//!   again on the next connection. The move back is written to the database before anything is
//!   sent again, so a restart in between still resends them.
//! - The receiver de-duplicates by (`tenant`, `seq`) from the structured data.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use store::audit::{self, AuditEvent};
use store::{AppDb, TenantId};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use wire::backoff::Backoff;

use crate::config::SiemSettings;

/// The private enterprise number in the SD-ID `fleetplane@32473`: 32473 is the example number
/// IANA reserves for documentation (RFC 5612). An installation that owns a PEN can only change
/// it here; receivers match on the whole SD-ID.
pub const SD_ID: &str = "fleetplane@32473";

/// APP-NAME of every message.
const APP_NAME: &str = "fleetplane";

/// PRI: facility 13 ("log audit", RFC 5424 table 1) and severity 6 (informational).
const PRI: u8 = 13 * 8 + 6;

/// Longest wait for one TCP connect, TLS handshake, write or flush.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a new connection waits for a late refusal of the handshake before writing.
const SETTLE: Duration = Duration::from_millis(250);

/// How long a clean close waits for the collector's end of the connection.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The forwarder's counters, registered when `[siem]` is configured (fleetd/METRICS.md).
#[derive(Clone, Default)]
pub struct SiemMetrics {
    forwarded: Family<ResultLabel, Counter>,
    connection_failures: Family<ReasonLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

impl SiemMetrics {
    /// Registers `fleet_siem_forwarded_total` and `fleet_siem_connection_failures_total`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "fleet_siem_forwarded",
            "Audit events written and flushed to the SIEM collector (result=sent), and events \
             moved back for resending after a connection failed (result=rewound)",
            metrics.forwarded.clone(),
        );
        registry.register(
            "fleet_siem_connection_failures",
            "Connections to the SIEM collector that failed: connect, tls (handshake, e.g. an \
             untrusted certificate), io (write, flush or the collector closing)",
            metrics.connection_failures.clone(),
        );
        metrics
    }

    /// Events counted under `result` (`sent`, `rewound`).
    pub fn forwarded(&self, result: &'static str) -> u64 {
        self.forwarded.get_or_create(&ResultLabel { result }).get()
    }

    /// Connection failures counted under `reason` (`connect`, `tls`, `io`).
    pub fn connection_failures(&self, reason: &'static str) -> u64 {
        self.connection_failures
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    fn count(&self, result: &'static str, events: usize) {
        self.forwarded
            .get_or_create(&ResultLabel { result })
            .inc_by(events as u64);
    }

    fn failed(&self, reason: &'static str) {
        self.connection_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// What the forwarder needs, checked: built from `[siem]` by [`Forwarder::new`].
pub struct Forwarder {
    app: AppDb,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    batch: i64,
    poll_interval: Duration,
    resend_window: i64,
    hostname: String,
    metrics: SiemMetrics,
}

/// Why a connection ended.
enum Ended {
    /// fleetd is stopping.
    Stopped,
    /// The connection failed (the events written on it may be lost).
    Failed(anyhow::Error),
    /// The database failed; the connection itself may be fine but is closed all the same.
    Database(anyhow::Error),
}

impl Forwarder {
    /// Reads the trust anchor (and the client certificate, when configured) and builds the TLS
    /// client on the project's one client policy (`certs::tls::client_builder`).
    pub fn new(
        app: AppDb,
        settings: &SiemSettings,
        metrics: SiemMetrics,
    ) -> anyhow::Result<Option<Self>> {
        let Some(collector) = &settings.collector else {
            return Ok(None);
        };
        let (host, port) = crate::config::split_host_port(collector)
            .context("siem.collector must be host:port")?;
        let server_name = settings.server_name.clone().unwrap_or_else(|| host.clone());
        let server_name = ServerName::try_from(server_name)
            .context("siem.server_name is not a DNS name or IP address")?;
        let ca_file = settings
            .ca_file
            .as_ref()
            .context("siem.ca_file must be set with siem.collector")?;
        let ca_pem = std::fs::read_to_string(ca_file)
            .with_context(|| format!("reading siem.ca_file {}", ca_file.display()))?;
        let client = match (&settings.client_cert_file, &settings.client_key_file) {
            (Some(cert), Some(key)) => Some((
                std::fs::read_to_string(cert)
                    .with_context(|| format!("reading siem.client_cert_file {}", cert.display()))?,
                SecretPem(
                    std::fs::read_to_string(key).with_context(|| {
                        format!("reading siem.client_key_file {}", key.display())
                    })?,
                ),
            )),
            (None, None) => None,
            _ => anyhow::bail!("siem.client_cert_file and siem.client_key_file go together"),
        };
        let tls = client_config(&ca_pem, client.as_ref().map(|(c, k)| (c.as_str(), k)))?;
        Ok(Some(Self {
            app,
            host,
            port,
            server_name,
            tls: Arc::new(tls),
            batch: i64::from(settings.batch),
            poll_interval: settings.poll_interval,
            resend_window: i64::from(settings.resend_window),
            hostname: settings.hostname.clone().unwrap_or_else(local_hostname),
            metrics,
        }))
    }

    /// Runs until `stop` turns true.
    pub fn spawn(self, stop: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(self.run(stop))
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        // Cursors to move back to, not yet written (the database failed meanwhile).
        let mut rewinds: HashMap<TenantId, i64> = HashMap::new();
        tracing::info!(collector = %format!("{}:{}", self.host, self.port), "SIEM forwarding on");
        loop {
            let stopped = *stop.borrow();
            if stopped {
                return self.rewind_before_stopping(&mut rewinds).await;
            }
            let ended = match self.write_rewinds(&mut rewinds).await {
                Err(e) => Ended::Database(e),
                Ok(()) => match self.connect().await {
                    Err((reason, e)) => {
                        self.metrics.failed(reason);
                        Ended::Failed(e)
                    }
                    Ok(mut stream) => {
                        // Each tenant's cursor when this connection opened (first use).
                        let mut opened_at: HashMap<TenantId, i64> = HashMap::new();
                        let ended = self
                            .serve(&mut stream, &mut opened_at, &mut backoff, &mut stop)
                            .await;
                        let ended = match ended {
                            Ended::Stopped => match close(&mut stream).await {
                                Ok(()) => Ended::Stopped,
                                Err(e) => Ended::Failed(e),
                            },
                            other => other,
                        };
                        match &ended {
                            Ended::Stopped => {}
                            Ended::Failed(_) | Ended::Database(_) => {
                                if matches!(ended, Ended::Failed(_)) {
                                    self.metrics.failed("io");
                                }
                                self.plan_rewinds(&opened_at, &mut rewinds).await;
                            }
                        }
                        ended
                    }
                },
            };
            let delay = match ended {
                Ended::Stopped => return,
                Ended::Failed(e) if *stop.borrow() => {
                    tracing::warn!(error = %format!("{e:#}"), "SIEM collector connection failed");
                    return self.rewind_before_stopping(&mut rewinds).await;
                }
                Ended::Failed(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "SIEM collector connection failed");
                    backoff.next_delay()
                }
                Ended::Database(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "SIEM forwarder: database failed");
                    backoff.next_delay()
                }
            };
            let stopped = tokio::select! {
                () = tokio::time::sleep(delay) => false,
                _ = stop.wait_for(|stop| *stop) => true,
            };
            if stopped {
                return self.rewind_before_stopping(&mut rewinds).await;
            }
        }
    }

    /// Stopping with a move back still planned (a connection failed, and the stop came before
    /// the next attempt): write it now, since there is no next connection to write it before.
    async fn rewind_before_stopping(&self, rewinds: &mut HashMap<TenantId, i64>) {
        if let Err(e) = self.write_rewinds(rewinds).await {
            tracing::error!(error = %format!("{e:#}"), "SIEM cursor not moved back");
        }
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, (&'static str, anyhow::Error)> {
        let tcp = tokio::time::timeout(
            IO_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| ("connect", anyhow::anyhow!("connect timed out")))?
        .map_err(|e| ("connect", anyhow::Error::from(e).context("connect")))?;
        let _ = tcp.set_nodelay(true);
        let connector = TlsConnector::from(Arc::clone(&self.tls));
        let mut stream =
            tokio::time::timeout(IO_TIMEOUT, connector.connect(self.server_name.clone(), tcp))
                .await
                .map_err(|_| ("tls", anyhow::anyhow!("TLS handshake timed out")))?
                .map_err(|e| ("tls", anyhow::Error::from(e).context("TLS handshake")))?;
        // In TLS 1.3 the client's handshake ends before the server has judged its certificate:
        // a refusal arrives as an alert just after. Waiting for it briefly, before anything is
        // written, keeps a refused connection from moving the cursor at all (should it come
        // later, the move back after the failure still resends).
        let mut byte = [0u8; 1];
        match tokio::time::timeout(SETTLE, stream.read(&mut byte)).await {
            Err(_) => Ok(stream),
            Ok(Ok(0)) => Err((
                "tls",
                anyhow::anyhow!("the collector closed the connection after the handshake"),
            )),
            Ok(Ok(_)) => Err(("io", anyhow::anyhow!("the collector sent data"))),
            Ok(Err(e)) => Err((
                "tls",
                anyhow::Error::from(e).context("refused after the handshake"),
            )),
        }
    }

    /// Forwards until fleetd stops or something fails.
    async fn serve(
        &self,
        stream: &mut TlsStream<TcpStream>,
        opened_at: &mut HashMap<TenantId, i64>,
        backoff: &mut Backoff,
        stop: &mut watch::Receiver<bool>,
    ) -> Ended {
        loop {
            if *stop.borrow() {
                return Ended::Stopped;
            }
            let tenants = match store::siem::forwarding_tenants(&self.app).await {
                Ok(tenants) => tenants,
                Err(e) => return Ended::Database(e.into()),
            };
            let mut full_batch = false;
            for tenant in tenants {
                let (cursor, events) = match self.next_batch(tenant).await {
                    Ok(batch) => batch,
                    Err(e) => return Ended::Database(e),
                };
                let Some(last) = events.last().map(|e| e.seq) else {
                    continue;
                };
                opened_at.entry(tenant).or_insert(cursor);
                let mut bytes = Vec::new();
                for event in &events {
                    bytes.extend_from_slice(&frame(&format_event(event, &self.hostname)));
                }
                let written = async {
                    stream.write_all(&bytes).await?;
                    stream.flush().await
                };
                match tokio::time::timeout(IO_TIMEOUT, written).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Ended::Failed(anyhow::Error::from(e).context("write")),
                    Err(_) => return Ended::Failed(anyhow::anyhow!("write timed out")),
                }
                if let Err(e) = self.set_cursor(tenant, last).await {
                    return Ended::Database(e);
                }
                self.metrics.count("sent", events.len());
                backoff.reset();
                full_batch |= events.len() as i64 == self.batch;
            }
            if full_batch {
                continue;
            }
            // Idle: wait, and read meanwhile, so that a collector that went away is noticed
            // now and not at the next event (a collector sends nothing: any byte or EOF ends it).
            let mut byte = [0u8; 1];
            tokio::select! {
                () = tokio::time::sleep(self.poll_interval) => {}
                _ = stop.wait_for(|stop| *stop) => return Ended::Stopped,
                read = stream.read(&mut byte) => {
                    let why = match read {
                        Ok(0) => anyhow::anyhow!("the collector closed the connection"),
                        Ok(_) => anyhow::anyhow!("the collector sent data (syslog collectors do not)"),
                        Err(e) => anyhow::Error::from(e).context("read"),
                    };
                    return Ended::Failed(why);
                }
            }
        }
    }

    async fn next_batch(&self, tenant: TenantId) -> anyhow::Result<(i64, Vec<AuditEvent>)> {
        let mut tx = self.app.begin(tenant).await?;
        let cursor = store::siem::cursor(&mut tx).await?;
        let events = audit::list_after(&mut tx, cursor, self.batch).await?;
        tx.commit().await?;
        Ok((cursor, events))
    }

    async fn set_cursor(&self, tenant: TenantId, seq: i64) -> anyhow::Result<()> {
        let mut tx = self.app.begin(tenant).await?;
        store::siem::set_cursor(&mut tx, seq).await?;
        tx.commit().await?;
        Ok(())
    }

    /// After a failed connection: per tenant written on it, back to where it was when the
    /// connection opened, by at most `resend_window` events.
    async fn plan_rewinds(
        &self,
        opened_at: &HashMap<TenantId, i64>,
        rewinds: &mut HashMap<TenantId, i64>,
    ) {
        for (&tenant, &opened) in opened_at {
            let back_to = match self.current_cursor(tenant).await {
                Ok(current) => {
                    let back_to = opened.max(current - self.resend_window);
                    self.metrics
                        .count("rewound", usize::try_from(current - back_to).unwrap_or(0));
                    back_to
                }
                // Unknown (the database failed): back to where the connection opened.
                Err(_) => opened,
            };
            let slot = rewinds.entry(tenant).or_insert(back_to);
            *slot = (*slot).min(back_to);
        }
    }

    async fn current_cursor(&self, tenant: TenantId) -> anyhow::Result<i64> {
        let mut tx = self.app.begin(tenant).await?;
        let cursor = store::siem::cursor(&mut tx).await?;
        tx.commit().await?;
        Ok(cursor)
    }

    async fn write_rewinds(&self, rewinds: &mut HashMap<TenantId, i64>) -> anyhow::Result<()> {
        while let Some((&tenant, &seq)) = rewinds.iter().next() {
            self.set_cursor(tenant, seq).await?;
            tracing::info!(tenant_id = %tenant, seq, "SIEM cursor moved back to resend");
            rewinds.remove(&tenant);
        }
        Ok(())
    }
}

/// Ends the connection cleanly: `close_notify`, then (bounded) what the collector answers. An
/// alert instead of the end (a refusal that came late) is a failure: what was written on the
/// connection is moved back for resending.
async fn close(stream: &mut TlsStream<TcpStream>) -> anyhow::Result<()> {
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.shutdown()).await;
    let mut buf = [0u8; 512];
    let drained = tokio::time::timeout(CLOSE_WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                // rsyslog closes TCP without its own close_notify: a clean end here.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(anyhow::Error::from(e).context("closing")),
            }
        }
    })
    .await;
    drained.unwrap_or(Ok(()))
}

/// PEM of a private key: no `Debug`, so it cannot reach a log.
struct SecretPem(String);

/// The collector's trust anchors, and a client certificate when the collector asks for one.
fn client_config(ca_pem: &str, client: Option<(&str, &SecretPem)>) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("siem.ca_file: certificate")?)
            .context("siem.ca_file: certificate")?;
    }
    anyhow::ensure!(!roots.is_empty(), "siem.ca_file holds no certificate");
    let builder = certs::tls::client_builder(roots).context("TLS protocol versions")?;
    Ok(match client {
        None => builder.with_no_client_auth(),
        Some((chain_pem, key_pem)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .context("siem.client_cert_file")?;
            anyhow::ensure!(
                !chain.is_empty(),
                "siem.client_cert_file holds no certificate"
            );
            let key = PrivateKeyDer::from_pem_slice(key_pem.0.as_bytes())
                .map_err(|_| anyhow::anyhow!("siem.client_key_file holds no private key"))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("siem.client_cert_file and siem.client_key_file")?
        }
    })
}

/// This host's name (the HOSTNAME field), or the nil value `-` when unknown.
fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// One event as an RFC 5424 message:
/// `<110>1 TIMESTAMP HOSTNAME fleetplane - ACTION [fleetplane@32473 tenant=".." seq=".."
/// hash=".." prev_hash=".." actor=".." target=".."] DETAILS-JSON`.
pub fn format_event(event: &AuditEvent, hostname: &str) -> String {
    format!(
        "<{PRI}>1 {timestamp} {host} {APP_NAME} - {msgid} [{SD_ID} tenant=\"{tenant}\" \
         seq=\"{seq}\" hash=\"{hash}\" prev_hash=\"{prev}\" actor=\"{actor}\" \
         target=\"{target}\"] {details}",
        timestamp = timestamp(event.occurred_at),
        host = header_field(hostname, 255),
        msgid = header_field(&event.action, 32),
        tenant = event.tenant_id,
        seq = event.seq,
        hash = hex::encode(event.hash),
        prev = hex::encode(event.prev_hash),
        actor = escape_param_value(&event.actor),
        target = escape_param_value(&event.target),
        details = event.details,
    )
}

/// RFC 5425 octet counting: `MSG-LEN SP SYSLOG-MSG`, the length in bytes.
pub fn frame(message: &str) -> Vec<u8> {
    let mut out = format!("{} ", message.len()).into_bytes();
    out.extend_from_slice(message.as_bytes());
    out
}

/// A PARAM-VALUE (RFC 5424 section 6.3.3): `"`, `\` and `]` get a backslash before them.
pub fn escape_param_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header field (HOSTNAME, MSGID): printable US-ASCII without space, at most `max` bytes;
/// anything else becomes `_`, and an empty one the nil value `-`.
fn header_field(text: &str, max: usize) -> String {
    let field: String = text
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if field.is_empty() {
        "-".into()
    } else {
        field
    }
}

/// RFC 5424 TIMESTAMP: the audit trail's own UTC form with microseconds, which RFC 5424 allows.
fn timestamp(at: OffsetDateTime) -> String {
    store::audit::rfc3339_micros(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(actor: &str, target: &str, details: &str) -> AuditEvent {
        AuditEvent {
            tenant_id: TenantId(uuid::Uuid::from_u128(0x1234)),
            seq: 42,
            occurred_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000)
                .unwrap(),
            actor: actor.into(),
            action: "device.revoke".into(),
            target: target.into(),
            details: details.into(),
            prev_hash: [0xab; 32],
            hash: [0x01; 32],
            canonical_version: 2,
            erased_by: None,
        }
    }

    #[test]
    fn an_event_is_one_rfc5424_message() {
        let message = format_event(&event("operator:alice", "device:d1", r#"{"a":1}"#), "gw1");
        assert_eq!(
            message,
            format!(
                "<110>1 2023-11-14T22:13:20.123456Z gw1 fleetplane - device.revoke \
                 [fleetplane@32473 tenant=\"00000000-0000-0000-0000-000000001234\" seq=\"42\" \
                 hash=\"{}\" prev_hash=\"{}\" actor=\"operator:alice\" target=\"device:d1\"] \
                 {{\"a\":1}}",
                "01".repeat(32),
                "ab".repeat(32),
            )
        );
    }

    #[test]
    fn param_values_escape_quote_backslash_and_bracket_only() {
        assert_eq!(escape_param_value(r#"a"b\c]d[e="#), r#"a\"b\\c\]d[e="#);
        assert_eq!(escape_param_value(r"\\"), r"\\\\");
        assert_eq!(escape_param_value("ünï"), "ünï");
        let message = format_event(&event(r#"operator:"x"]"#, r"device:\", "{}"), "h");
        assert!(
            message.contains(r#"actor="operator:\"x\"\]" target="device:\\"]"#),
            "{message}"
        );
    }

    #[test]
    fn header_fields_are_printable_ascii_or_nil() {
        assert_eq!(header_field("gw 1\n", 255), "gw_1_");
        assert_eq!(header_field("", 255), "-");
        assert_eq!(header_field(&"x".repeat(40), 32).len(), 32);
        assert_eq!(header_field("é", 32), "_");
    }

    #[test]
    fn framing_counts_octets_not_characters() {
        assert_eq!(frame("abc"), b"3 abc");
        let framed = frame("é");
        assert_eq!(framed, "2 é".as_bytes());
        assert_eq!(frame(""), b"0 ");
    }

    #[test]
    fn timestamps_are_utc_with_six_fraction_digits() {
        let at = OffsetDateTime::from_unix_timestamp(0)
            .unwrap()
            .to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(timestamp(at), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn bad_trust_material_is_refused_with_its_setting() {
        let err = client_config("", None).unwrap_err().to_string();
        assert!(err.contains("siem.ca_file"), "{err}");
        let garbage = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        let err = format!("{:#}", client_config(garbage, None).unwrap_err());
        assert!(err.contains("siem.ca_file"), "{err}");
    }
}
