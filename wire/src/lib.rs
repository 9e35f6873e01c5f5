//! The fleetplane wire format: the messages a device and the server exchange over
//! MQTT, and the topics they travel on.
//!
//! This crate is shared by the device agent and by ingest, so it stays small:
//! serde, ciborium, thiserror, uuid and fastrand (and sqlx's derive for the typed ids,
//! behind the `sqlx` feature the store turns on); nothing async, no server dependencies,
//! no `unsafe`. It builds for aarch64 and armv7 musl.
//!
//! Besides the messages it holds the other contracts both ends keep: the HTTPS enrollment
//! bodies ([`enrollment`]) and the retry policy ([`backoff`]).
//!
//! # Messages
//!
//! | Message    | Topic (see [`topic`])            | Rust type |
//! |------------|----------------------------------|-----------|
//! | records    | `fleet/v1/{device}/up/telemetry`, `up/patch`, `up/events` | [`Batch`] |
//! | presence   | `fleet/v1/{device}/up/presence`  | [`Presence`] |
//! | ack        | `fleet/v1/{device}/down/ack`     | [`Ack`] |
//!
//! Enrollment and certificate renewal travel over HTTPS, not MQTT; their JSON bodies are
//! in [`enrollment`], shared by the agent and the API in the same way.
//!
//! A [`Batch`] carries [`Record`]s (an empty batch is valid and says nothing).
//! Each record has the device's sequence number ([`Record::seq`], starting at 1,
//! strictly increasing across all kinds and within the batch, gaps allowed), the
//! device's clock ([`UnixMillis`]), and a [`Body`]: a
//! [`Telemetry`] sample, a [`PatchStatus`] report or an [`AgentEvent`]. Ingest
//! stores each (tenant, device, seq) once and answers with an [`Ack`] watermark
//! after the commit. The tenant and the device are never in a payload: they come
//! from the authenticated connection.
//!
//! Ingest's ledger keeps each record's [`Body`] alone, the bytes the device sent
//! (ingest decodes a message in one pass with [`decode_message_view`], which accepts what
//! [`decode_message_with_limit`] accepts and tells where each body lies; [`encode_body`]
//! writes the same bytes for a body the agent encoded); the management API reads it back with
//! [`decode_body`], under the same bounds as a batch. The agent's outbox keeps each whole [`Record`], as
//! [`encode_record`] writes it, and reads it back with [`decode_record`], under
//! the same bounds again.
//!
//! ```
//! use wire::{topic, AgentEvent, Batch, Body, DeviceId, Record, Started, UnixMillis};
//!
//! // Agent side.
//! let device: DeviceId = "6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94".parse().unwrap();
//! let record = Record {
//!     seq: 41,
//!     recorded_at: UnixMillis::now(),
//!     body: Body::Event(AgentEvent::Started(Started { agent_version: "0.1.0".into() })),
//! };
//! record.validate()?; // before it enters the outbox
//! let payload = wire::encode_batch(&Batch::new(vec![record]));
//! let topic = topic::events(device);
//!
//! // Ingest side.
//! let parsed = topic::parse_device_topic(&topic)?;
//! let batch = wire::decode_batch(&payload)?;
//! for record in &batch.records {
//!     topic::check_record(parsed.kind, record)?;
//! }
//! // After the COMMIT, once every earlier sequence number is handled too:
//! let ack = wire::encode_ack(&wire::Ack::new(batch.last_seq().unwrap_or(0)));
//! # let _ = ack;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The sequence header
//!
//! A record message may start with a fixed 35-byte [`SeqHeader`] before the
//! batch's CBOR: magic `FP`, header version 1, the epoch (id, first seq) and
//! the first and last sequence numbers the message accounts for, big endian
//! (layout in [`header`]). It lets ingest refuse a message whose body does not
//! decode *for good*: those sequence numbers are marked handled and the ack
//! watermark moves past them, where a message without a header has no numbers
//! to mark. The agent writes it ([`encode_message`]); messages without it, from
//! agents before it, are read as before ([`decode_batch`] reads both). A header
//! spans at most [`limits::MAX_RECORDS_PER_BATCH`] numbers, so it can declare
//! handled no more than one full batch would.
//!
//! # Encoding
//!
//! CBOR ([RFC 8949]) through serde and ciborium. Structs are maps with short
//! text keys (`s`, `t`, `b`, ...; each field's documentation names its key).
//! Telemetry goes out every few seconds over metered cellular links, and in a
//! sample of numbers the keys are most of the bytes: short keys roughly halve it.
//! Integer keys would save one more byte per field but serde cannot derive them,
//! and they make a hex dump unreadable; short text keys keep plain `#[derive]`s
//! and `#[serde(rename)]`. Rare messages (agent events) use readable names.
//! Absent optional fields and empty lists are not written.
//!
//! Enums that may grow ([`Body`], [`AgentEvent`]) travel as one-entry maps
//! `{ kind: payload }`. Timestamps are [`UnixMillis`]: milliseconds since the
//! Unix epoch in a `u64`.
//!
//! Writers other than this crate must keep to the CBOR types of the fields:
//! map keys are text strings, integers are CBOR integers, and floating-point
//! fields are CBOR floats (an integer `1` where a float is expected is refused;
//! write `1.0`, which CBOR encodes in three bytes). Definite and indefinite
//! lengths are both accepted; this crate writes definite ones.
//!
//! # Evolution rules
//!
//! Every message's top-level map has the key `v` holding `[major, minor]`
//! ([`SchemaVersion`]). That key and its shape never change, in any version.
//!
//! 1. **Unknown fields are ignored**, at every level, whatever their value. A
//!    newer minor version may add optional fields; older readers skip them.
//! 2. **Minor versions only add**: optional fields, record kinds, event kinds,
//!    package manager names. A field is never removed, renamed, retyped, or made
//!    required within a major version, and a limit in [`limits`] is never
//!    lowered.
//! 3. **A different major version is refused**, with
//!    [`DecodeError::UnsupportedMajorVersion`] naming the version found. The
//!    version is read before anything else, so such a message is never
//!    misread with the wrong schema.
//! 4. **An unknown record kind does not fail its batch.** It decodes as
//!    [`Body::Unknown`], and ingest refuses that record alone
//!    ([`topic::check_record`] returns [`RecordError::UnknownKind`]), counting
//!    it and advancing the ack watermark past it. Refusing the whole batch
//!    instead would let one record from a newer agent jam the device's outbox
//!    forever, since the agent would resend it on every retry. An unknown agent
//!    event kind decodes as [`AgentEvent::Other`] and is stored as such; an
//!    unknown package manager as [`PackageManager::Other`].
//!
//! # Bounds
//!
//! Decoding is safe on hostile input:
//!
//! * The input length is checked first, before any parsing or allocation
//!   ([`DecodeError::TooLarge`]); the default maximum is
//!   [`limits::DEFAULT_MAX_MESSAGE_BYTES`] (1 MiB), configurable with
//!   [`decode_batch_with_limit`]. Everything the decoder allocates is then
//!   bounded by the input: strings grow only with bytes actually read, and
//!   collections never pre-allocate from the element count a CBOR header
//!   claims, so a ten-byte header claiming 2³² elements costs nothing.
//! * Collections stop growing one element past their limit
//!   ([`limits::MAX_RECORDS_PER_BATCH`], [`limits::MAX_PACKAGES`],
//!   [`limits::MAX_CUSTOM_METRICS`], [`limits::MAX_COMPONENTS`]), and are then
//!   refused with a typed error; strings over [`limits::MAX_NAME_BYTES`] or
//!   [`limits::MAX_TEXT_BYTES`] likewise.
//! * Strings hold no character the server cannot store or show safely
//!   ([`DecodeError::ForbiddenCharacter`]): names no control character at all
//!   (NUL, C0, DEL, C1), free text none but tab, line feed and carriage return.
//!   PostgreSQL refuses NUL in text, so without this one device's record could
//!   fail the transaction it shares with other devices.
//! * Nesting deeper than 32 levels is refused before it can exhaust the stack.
//! * Exactly one CBOR item: trailing bytes are refused.
//! * A [`SeqHeader`] is read (35 bytes) before the size check, so an oversize
//!   message is still attributed; a header outside its bounds is refused
//!   ([`DecodeError::BadHeader`]) and attributes nothing.
//!
//! The agent checks its records against the same limits
//! ([`Record::validate`]) before queuing them, so ingest never has to refuse
//! what an honest agent sends.
//!
//! [RFC 8949]: https://www.rfc-editor.org/rfc/rfc8949

#![deny(missing_docs)]

pub mod backoff;
mod batch;
mod bounded;
mod codec;
mod control;
pub mod enrollment;
mod error;
mod event;
pub mod header;
pub mod ids;
pub mod limits;
mod patch;
mod telemetry;
mod time;
pub mod topic;
mod version;
mod view;

pub use batch::{Batch, Body, Epoch, Record, RecordKind};
pub use codec::{
    decode_ack, decode_batch, decode_batch_with_limit, decode_body, decode_body_with_limit,
    decode_presence, decode_record, decode_record_with_limit, encode_ack, encode_batch,
    encode_body, encode_presence, encode_record,
};
pub use control::{Ack, Presence};
pub use error::{DecodeError, RecordError};
pub use event::{
    AgentEvent, CertificateRenewed, CollectorError, EpochStarted, OutboxOverflow, Started,
};
pub use header::{decode_message_with_limit, encode_message, SeqHeader, Undecodable};
pub use ids::{DeviceId, TenantId};
pub use patch::{Package, PackageManager, PatchStatus};
pub use telemetry::{Disk, LoadAverage, Memory, NetworkInterface, Telemetry, Temperature};
pub use time::UnixMillis;
/// Why a text is not a UUID (from [`FromStr`](std::str::FromStr) on the typed ids).
pub use uuid::Error as UuidError;
pub use uuid::Uuid;
pub use version::SchemaVersion;
pub use view::{decode_message_view, BodyView, MessageView, RecordView};
