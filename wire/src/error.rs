//! Why a message or a record was refused.
//!
//! Two levels, because ingest treats them differently:
//!
//! * [`DecodeError`]: the whole MQTT message is refused (nothing in it is stored).
//! * [`RecordError`]: one record inside an otherwise good batch is refused; its
//!   neighbours are stored.
//!
//! Both offer `reason()`, a stable, low-cardinality label for metrics
//! (`fleet_ingest_rejects_total{reason="oversize"}`). Labels never carry data from
//! the message, so a hostile device cannot blow up metric cardinality.

use crate::topic::TopicKind;
use crate::RecordKind;

/// Why [`decode_batch`](crate::decode_batch) (or another `decode_*` function)
/// refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message is longer than the configured maximum. It was refused before
    /// any parsing or allocation.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Length of the refused message, in bytes.
        len: usize,
        /// The maximum that was in force.
        max: usize,
    },

    /// The bytes are not CBOR, or are CBOR without the shape of the schema
    /// (a missing field, a wrong type, trailing bytes, nesting too deep).
    /// The text is for humans and is truncated; match on the variant, not on it.
    #[error("malformed message: {0}")]
    Malformed(String),

    /// The message declares a schema major version this build cannot read.
    #[error(
        "schema major version {got} is not supported (this build reads major version {supported})"
    )]
    UnsupportedMajorVersion {
        /// The major version found in the message.
        got: u16,
        /// The only major version this build reads.
        supported: u16,
    },

    /// The batch holds more records than
    /// [`MAX_RECORDS_PER_BATCH`](crate::limits::MAX_RECORDS_PER_BATCH).
    #[error("batch holds more than {max} records")]
    TooManyRecords {
        /// The maximum number of records per batch.
        max: usize,
    },

    /// A list or map inside a record (packages, custom metrics, disks, ...) holds
    /// more entries than its limit in [`limits`](crate::limits).
    #[error("{field} holds more than {max} entries")]
    TooManyEntries {
        /// Which list, for example `"patch.packages"`.
        field: &'static str,
        /// Its maximum number of entries.
        max: usize,
    },

    /// A string is longer than its limit in [`limits`](crate::limits).
    #[error("{field} is {len} bytes long, the maximum is {max} bytes")]
    FieldTooLong {
        /// Which string, for example `"package.name"`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// Its maximum length in bytes.
        max: usize,
    },

    /// A string holds a character the server does not store: NUL anywhere, any other control
    /// character in a name, or one other than tab, line feed and carriage return in free text.
    #[error("{field} contains the control character U+{code:04X} at byte {at}")]
    ForbiddenCharacter {
        /// Which string, for example `"package.name"`.
        field: &'static str,
        /// The character's code point.
        code: u32,
        /// Its byte offset in the string.
        at: usize,
    },

    /// The message starts with a [`SeqHeader`](crate::SeqHeader) that is truncated, of an
    /// unknown version, outside its bounds, or that does not agree with the batch after it.
    #[error("bad sequence header: {0}")]
    BadHeader(String),

    /// Sequence numbers in a batch must start above zero and strictly increase;
    /// this one does not.
    #[error("sequence number {seq} does not follow {previous}")]
    SeqNotIncreasing {
        /// The sequence number before it (0 for the first record).
        previous: u64,
        /// The offending sequence number.
        seq: u64,
    },
}

impl DecodeError {
    /// A stable label for metrics and per-device counters.
    ///
    /// The set of labels is fixed and small; it only grows when a variant is added.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "oversize",
            Self::Malformed(_) => "malformed",
            Self::UnsupportedMajorVersion { .. } => "unsupported_version",
            Self::TooManyRecords { .. } => "too_many_records",
            Self::TooManyEntries { .. } => "too_many_entries",
            Self::FieldTooLong { .. } => "field_too_long",
            Self::ForbiddenCharacter { .. } => "forbidden_character",
            Self::SeqNotIncreasing { .. } => "bad_sequence",
            Self::BadHeader(_) => "bad_header",
        }
    }

    /// Builds [`DecodeError::Malformed`], truncating the description.
    ///
    /// Serde's messages quote the offending input (`invalid type: string "..."`),
    /// and a device's last error is stored and displayed: truncating keeps a
    /// hostile device from writing a megabyte into it.
    pub(crate) fn malformed(description: impl std::fmt::Display) -> Self {
        const MAX_CHARS: usize = 200;
        let mut text = description.to_string();
        if let Some((cut, _)) = text.char_indices().nth(MAX_CHARS) {
            text.truncate(cut);
            text.push('…');
        }
        Self::Malformed(text)
    }
}

/// Why ingest refuses one record of a batch it otherwise accepts.
///
/// A refused record is counted and reported like a refused message, but it does
/// not hold back the records around it, and it still counts as handled for the
/// ack watermark: refusing it again on every retry would only jam the device's
/// outbox.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record's kind is unknown to this build: a newer agent (newer minor
    /// version) sent a kind this server does not know yet.
    #[error("unknown record kind")]
    UnknownKind,

    /// The record's kind may not travel on the topic it arrived on.
    #[error("a {record} record may not arrive on the {topic} topic")]
    WrongTopic {
        /// The kind of the record.
        record: RecordKind,
        /// The kind of the topic it arrived on.
        topic: TopicKind,
    },
}

impl RecordError {
    /// A stable label for metrics and per-device counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownKind => "unknown_record_kind",
            Self::WrongTopic { .. } => "wrong_topic",
        }
    }
}
