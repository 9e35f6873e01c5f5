//! The Prometheus listener (plain HTTP, `/metrics` only, meant for an internal network) and the
//! series fleetd itself adds to the components' ones: the broker's counters, the process, and
//! the certificates' expiry. Every series fleetd exports is listed in `fleetd/METRICS.md`.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use broker::StatsReader;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::pki::ServerPki;

/// Serves the registry in the OpenMetrics text format until `stopped` turns true.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let registry = Arc::new(registry);
    let router = Router::new().route("/metrics", get(move || render(registry.clone())));
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await
}

async fn render(registry: Arc<Registry>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Encodes one counter sample without labels.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> std::fmt::Result {
    let sample = ConstCounter::new(value);
    sample.encode(encoder.encode_descriptor(name, help, unit, sample.metric_type())?)
}

/// Encodes one gauge sample without labels.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> std::fmt::Result {
    let sample = ConstGauge::new(value);
    sample.encode(encoder.encode_descriptor(name, help, unit, sample.metric_type())?)
}

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The embedded broker's counters (`RunningBroker::stats`), read at scrape time: nothing is
/// counted twice, and the collector does not keep the broker alive.
#[derive(Debug)]
pub struct BrokerCollector(pub StatsReader);

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let stats = self.0.snapshot();
        let state = ConstGauge::new(0i64);
        let mut connections = encoder.encode_descriptor(
            "fleet_broker_connections",
            "Device connections open now, by state: handshaking (TLS), connecting (after the \
             handshake, before CONNACK 0x00 or while closing), session (MQTT session accepted)",
            None,
            state.metric_type(),
        )?;
        let handshaking = stats.handshakes_in_progress;
        let sessions = stats.sessions_active;
        let connecting = stats
            .connections_open
            .saturating_sub(handshaking)
            .saturating_sub(sessions);
        for (name, value) in [
            ("handshaking", handshaking),
            ("connecting", connecting),
            ("session", sessions),
        ] {
            ConstGauge::new(int(value)).encode(connections.encode_family(&[("state", name)])?)?;
        }
        counter(
            &mut encoder,
            "fleet_broker_tcp_connections_accepted",
            "TCP connections accepted by the device listener, before any limit",
            None,
            stats.tcp_accepted,
        )?;
        counter(
            &mut encoder,
            "fleet_broker_tls_handshakes_completed",
            "TLS handshakes completed with a verified client certificate, or without one from a \
             live-stream subscriber",
            None,
            stats.handshakes_completed,
        )?;
        counter(
            &mut encoder,
            "fleet_broker_tls_handshakes_failed",
            "Device TLS handshakes that failed or timed out (refusals tls_handshake and \
             tls_handshake_timeout)",
            None,
            stats.handshakes_failed(),
        )?;
        counter(
            &mut encoder,
            "fleet_broker_sessions_started",
            "MQTT sessions accepted (CONNACK 0x00)",
            None,
            stats.sessions_started,
        )?;
        counter(
            &mut encoder,
            "fleet_broker_publishes_received",
            "PUBLISH packets accepted from devices",
            None,
            stats.publishes_received,
        )?;
        counter(
            &mut encoder,
            "fleet_broker_packets_sent",
            "MQTT packets written to devices, CONNACK excluded",
            None,
            stats.packets_sent,
        )?;
        counter(
            &mut encoder,
            "fleet_broker_received",
            "MQTT bytes read from devices (inside TLS)",
            Some(&Unit::Bytes),
            stats.bytes_received,
        )?;
        counter(
            &mut encoder,
            "fleet_broker_sent",
            "MQTT bytes written to devices (inside TLS)",
            Some(&Unit::Bytes),
            stats.bytes_sent,
        )?;
        labelled_counters(
            &mut encoder,
            "fleet_broker_refusals",
            "Connections, packets and subscriptions the device gateway refused, by reason",
            "reason",
            stats
                .refusals()
                .map(|(reason, count)| (reason.as_str(), count)),
        )?;
        labelled_counters(
            &mut encoder,
            "fleet_broker_server_messages_undelivered",
            "Server messages for one device (ack watermarks, commands) not written to it, by \
             reason: offline, queue_full, not_subscribed",
            "reason",
            stats
                .undelivered_by_reason()
                .map(|(reason, count)| (reason.as_str(), count)),
        )?;
        encode_streams(&self.0, &mut encoder)
    }
}

/// The live-stream series: subscribers now, and per API key the messages delivered and dropped.
fn encode_streams(reader: &StatsReader, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    gauge(
        encoder,
        "fleet_broker_stream_subscribers",
        "Live-stream subscribers (API keys over MQTT) connected now",
        None,
        int(reader.stream_subscribers() as u64),
    )?;
    let keys = reader.stream_keys();
    for (name, help, value) in [
        (
            "fleet_broker_stream_delivered",
            "Live-stream messages queued toward the subscribers of an API key",
            (|k: &broker::StreamKeyStats| k.delivered) as fn(&broker::StreamKeyStats) -> u64,
        ),
        (
            "fleet_broker_stream_dropped",
            "Live-stream messages dropped because a subscriber of an API key was too slow",
            |k: &broker::StreamKeyStats| k.dropped,
        ),
    ] {
        labelled_counters(
            encoder,
            name,
            help,
            "key_id",
            keys.iter().map(|key| (key.key_id.as_str(), value(key))),
        )?;
    }
    Ok(())
}

/// One counter family with a single label, a sample per value.
fn labelled_counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let sample = ConstCounter::new(0u64);
    let mut family = encoder.encode_descriptor(name, help, None, sample.metric_type())?;
    for (value, count) in samples {
        ConstCounter::new(count).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

/// The process, read from `/proc/self` at scrape time, under the names Prometheus client
/// libraries use: `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
/// `process_threads`.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(':')?;
                value.split_whitespace().next()?.parse::<u64>().ok()
            })
        };
        if let Some(kib) = field("VmRSS") {
            gauge(
                &mut encoder,
                "process_resident_memory",
                "Resident memory size",
                Some(&Unit::Bytes),
                int(kib.saturating_mul(1024)),
            )?;
        }
        if let Some(threads) = field("Threads") {
            gauge(
                &mut encoder,
                "process_threads",
                "OS threads of the process",
                None,
                int(threads),
            )?;
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            // The directory's own descriptor, open while it is read, is one of them.
            let open = entries.count().saturating_sub(1);
            gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors",
                None,
                int(open as u64),
            )?;
        }
        if let Ok((soft, _hard)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            gauge(
                &mut encoder,
                "process_max_fds",
                "The soft limit on open file descriptors (RLIMIT_NOFILE)",
                None,
                int(soft),
            )?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: &'static str,
}

/// `fleet_certificate_expiry_timestamp_seconds{certificate}`: the not-after of the root CA, the
/// issuing CA and the listeners' server certificate (issued at each start), as Unix seconds.
pub fn register_certificates(registry: &mut Registry, pki: &ServerPki) {
    let expiry = Family::<CertificateLabels, Gauge>::default();
    let ca = &pki.issuing_ca;
    let certificates = [
        ("root_ca", ca.root_not_after()),
        ("issuing_ca", Some(ca.not_after())),
        ("server", Some(pki.server_cert.not_after())),
    ];
    for (certificate, not_after) in certificates {
        if let Some(not_after) = not_after {
            expiry
                .get_or_create(&CertificateLabels { certificate })
                .set(not_after.unix_timestamp());
        }
    }
    registry.register(
        "fleet_certificate_expiry_timestamp_seconds",
        "When the certificate expires (not after), as Unix seconds",
        expiry,
    );
}
