//! Live streams in embedded mode: the broker's stream subscribers are checked with the
//! management API's key authentication ([`StreamKeys`]), and ingest's committed records are
//! encoded as JSON and handed to the broker's stream hub ([`StreamRecords`]), best effort.

use std::sync::{Arc, OnceLock};

use broker::{
    StreamAuthority, StreamCredentials, StreamFuture, StreamGrant, StreamRefusal, StreamScope,
    StreamVerdict,
};
use bytes::Bytes;
use ingest::{CommittedRecord, StreamSink};

use crate::data_path::BrokerSlot;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::mpsc;
use wire::Body;

/// Commits' record lists queued between ingest's writers and the encoder.
const ENCODER_QUEUE: usize = 256;

/// The broker's [`StreamAuthority`]: the API's [`api::StreamAuth`], once the API has started
/// (before that, a subscriber is refused as unavailable: CONNACK 0x03).
#[derive(Clone, Default)]
pub struct StreamKeys(pub Arc<OnceLock<api::StreamAuth>>);

impl StreamKeys {
    fn auth(&self) -> Result<api::StreamAuth, broker::StreamAuthError> {
        self.0
            .get()
            .cloned()
            .ok_or_else(|| "the API is not started yet".into())
    }
}

impl StreamAuthority for StreamKeys {
    fn authenticate(&self, credentials: StreamCredentials) -> StreamFuture {
        let auth = self.auth();
        Box::pin(async move {
            let auth = auth?;
            let verdict = auth
                .authenticate(
                    &credentials.key_id,
                    &credentials.key,
                    credentials.remote_addr.ip(),
                )
                .await?;
            grant(&auth, verdict).await
        })
    }

    fn recheck(&self, grant_now: &StreamGrant) -> StreamFuture {
        let auth = self.auth();
        let tenant = grant_now.tenant_id;
        let key_id = grant_now.key_id.clone();
        Box::pin(async move {
            let auth = auth?;
            let Ok(key_id) = key_id.parse::<store::ApiKeyId>() else {
                return Ok(Err(StreamRefusal::BadCredentials));
            };
            let verdict = auth.recheck(tenant, &key_id).await?;
            grant(&auth, verdict).await
        })
    }
}

/// The broker's grant for an allowed caller: its scope's devices read now.
async fn grant(
    auth: &api::StreamAuth,
    verdict: Result<api::StreamCaller, api::StreamDenial>,
) -> Result<StreamVerdict, broker::StreamAuthError> {
    let caller = match verdict {
        Ok(caller) => caller,
        Err(api::StreamDenial::BadCredentials) => return Ok(Err(StreamRefusal::BadCredentials)),
        Err(api::StreamDenial::NotAuthorized) => return Ok(Err(StreamRefusal::NotAuthorized)),
    };
    let scope = match auth.scope_devices(&caller).await? {
        None => StreamScope::Tenant,
        Some(devices) => StreamScope::Devices(devices),
    };
    Ok(Ok(StreamGrant {
        tenant_id: caller.tenant,
        key_id: caller.key_id.to_string(),
        scope,
    }))
}

/// Ingest's [`StreamSink`]: queues each commit's records for the encoder task, never waiting.
pub struct StreamRecords {
    broker: BrokerSlot,
    queue: mpsc::Sender<Vec<CommittedRecord>>,
    dropped: Counter,
}

impl StreamRecords {
    /// The sink, with its `fleet_stream_records_dropped_total` counter, and its encoder thread.
    pub fn start(broker: BrokerSlot, registry: &mut Registry) -> std::io::Result<Self> {
        let dropped = Counter::default();
        registry.register(
            "fleet_stream_records_dropped",
            "Committed records not streamed because the live-stream encoder was behind",
            dropped.clone(),
        );
        let (queue, records) = mpsc::channel(ENCODER_QUEUE);
        // A thread of its own: encoding a commit's records never holds a tokio worker that
        // ingest or a session needs. It ends when ingest drops this sink.
        let encoder = Arc::clone(&broker);
        std::thread::Builder::new()
            .name("stream-encoder".into())
            .spawn(move || encode_and_publish(&encoder, records))?;
        Ok(Self {
            broker,
            queue,
            dropped,
        })
    }
}

impl StreamSink for StreamRecords {
    fn wants(&self, tenant: store::TenantId) -> bool {
        self.broker
            .get()
            .is_some_and(|broker| broker.stream_publisher().has_subscribers_in(tenant))
    }

    fn offer(&self, records: Vec<CommittedRecord>) {
        let count = records.len() as u64;
        if self.queue.try_send(records).is_err() {
            self.dropped.inc_by(count);
        }
    }
}

/// Encodes each record once and hands it to the hub, which fans it out.
fn encode_and_publish(broker: &BrokerSlot, mut records: mpsc::Receiver<Vec<CommittedRecord>>) {
    while let Some(batch) = records.blocking_recv() {
        let Some(publisher) = broker.get().map(|broker| broker.stream_publisher()) else {
            continue;
        };
        for record in batch {
            if !publisher.has_subscribers_in(record.tenant) {
                continue;
            }
            let payload = Bytes::from(stream_payload(&record));
            publisher.publish(record.tenant, record.device, record.kind, payload);
        }
    }
}

/// One streamed record, as its JSON payload (documented in broker/README.md).
#[derive(Serialize)]
struct StreamPayload<'a> {
    tenant_id: store::TenantId,
    device_id: store::DeviceId,
    kind: &'static str,
    epoch: u64,
    seq: u64,
    /// RFC 3339, UTC; `None` (null) past what a timestamp can hold.
    recorded_at: Option<String>,
    body: StreamBody<'a>,
}

/// A record's body as the management API shows it.
#[derive(Serialize)]
#[serde(untagged)]
enum StreamBody<'a> {
    Telemetry(api::views::telemetry::TelemetrySample),
    Event(api::views::telemetry::AgentEventView),
    Patch(PatchStreamView<'a>),
    Unknown { unknown_kind: &'a str },
}

/// A patch status under the names of the management API's patch view (`GET
/// /v1/devices/{id}/patch`), not the wire schema's short keys.
#[derive(Serialize)]
struct PatchStreamView<'a> {
    os_id: &'a str,
    os_version: &'a str,
    package_manager: &'a str,
    reboot_required: bool,
    /// RFC 3339; `None` (null): the device did not say.
    lists_refreshed_at: Option<String>,
    packages: Vec<PackageStreamView<'a>>,
}

/// One installed package, as the management API names it.
#[derive(Serialize)]
struct PackageStreamView<'a> {
    name: &'a str,
    installed: &'a str,
    candidate: Option<&'a str>,
    security: bool,
}

impl<'a> From<&'a wire::PatchStatus> for PatchStreamView<'a> {
    fn from(status: &'a wire::PatchStatus) -> Self {
        Self {
            os_id: &status.os_id,
            os_version: &status.os_version,
            package_manager: status.package_manager.as_str(),
            reboot_required: status.reboot_required,
            lists_refreshed_at: status.lists_refreshed_at.and_then(rfc3339),
            packages: status
                .packages
                .iter()
                .map(|package| PackageStreamView {
                    name: &package.name,
                    installed: &package.installed,
                    candidate: package.candidate.as_deref(),
                    security: package.security,
                })
                .collect(),
        }
    }
}

/// A device timestamp as RFC 3339 UTC; `None` past what a timestamp can hold.
fn rfc3339(at: wire::UnixMillis) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.0) * 1_000_000)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
}

/// The JSON of one streamed record.
pub fn stream_payload(record: &CommittedRecord) -> Vec<u8> {
    let body = match &record.body {
        Body::Telemetry(telemetry) => StreamBody::Telemetry(telemetry.into()),
        Body::Event(event) => StreamBody::Event(event.into()),
        Body::PatchStatus(status) => StreamBody::Patch(status.into()),
        Body::Unknown { kind } => StreamBody::Unknown { unknown_kind: kind },
    };
    let recorded_at = rfc3339(record.recorded_at);
    let payload = StreamPayload {
        tenant_id: record.tenant,
        device_id: record.device,
        kind: record.kind.as_str(),
        epoch: record.epoch,
        seq: record.seq,
        recorded_at,
        body,
    };
    // Serialising these types cannot fail (no maps with non-string keys, no I/O).
    serde_json::to_vec(&payload).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_telemetry_record_streams_as_documented() {
        let record = CommittedRecord {
            tenant: store::TenantId::new_random(),
            device: store::DeviceId::new_random(),
            kind: wire::topic::TopicKind::Telemetry,
            epoch: 7,
            seq: 42,
            recorded_at: wire::UnixMillis(1_764_627_251_123),
            body: Body::Telemetry(wire::Telemetry {
                cpu_usage_percent: Some(12.5),
                ..wire::Telemetry::default()
            }),
        };
        let json: serde_json::Value = serde_json::from_slice(&stream_payload(&record)).unwrap();
        assert_eq!(json["tenant_id"], record.tenant.to_string());
        assert_eq!(json["device_id"], record.device.to_string());
        assert_eq!(json["kind"], "telemetry");
        assert_eq!(json["epoch"], 7);
        assert_eq!(json["seq"], 42);
        assert_eq!(json["recorded_at"], "2025-12-01T22:14:11.123Z");
        assert_eq!(json["body"]["cpu_usage_percent"], 12.5);
    }

    #[test]
    fn a_patch_record_streams_under_the_management_api_names() {
        let status = wire::PatchStatus {
            os_id: "debian".into(),
            os_version: "12".into(),
            package_manager: wire::PackageManager::Apt,
            packages: vec![wire::Package {
                name: "openssl".into(),
                installed: "3.0.14-1".into(),
                candidate: Some("3.0.15-1".into()),
                security: true,
            }],
            reboot_required: true,
            lists_refreshed_at: None,
        };
        let record = CommittedRecord {
            tenant: store::TenantId::new_random(),
            device: store::DeviceId::new_random(),
            kind: wire::topic::TopicKind::PatchStatus,
            epoch: 0,
            seq: 1,
            recorded_at: wire::UnixMillis(1_764_627_251_123),
            body: Body::PatchStatus(status),
        };
        let json: serde_json::Value = serde_json::from_slice(&stream_payload(&record)).unwrap();
        let body = &json["body"];
        assert_eq!(json["kind"], "patch");
        assert_eq!(body["os_id"], "debian");
        assert_eq!(body["os_version"], "12");
        assert_eq!(body["package_manager"], "apt");
        assert_eq!(body["reboot_required"], true);
        assert!(body["lists_refreshed_at"].is_null());
        let package = &body["packages"][0];
        assert_eq!(package["name"], "openssl");
        assert_eq!(package["installed"], "3.0.14-1");
        assert_eq!(package["candidate"], "3.0.15-1");
        assert_eq!(package["security"], true);
        assert!(body.get("os").is_none(), "no wire keys: {body}");
    }
}
