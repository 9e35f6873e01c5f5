//! Encoding and decoding: the size check, the version check, the parse and the
//! limit checks, in that order.

use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Serialize;

use crate::limits::{DEFAULT_MAX_MESSAGE_BYTES, MAX_CONTROL_MESSAGE_BYTES, MAX_NESTING};
use crate::{Ack, Batch, Body, DecodeError, Presence, Record, SchemaVersion};

/// Encodes a batch as CBOR.
///
/// Encoding does not check limits: call [`Batch::validate`] first if the batch
/// was not built from validated records.
pub fn encode_batch(batch: &Batch) -> Vec<u8> {
    encode(batch)
}

/// Decodes a batch, refusing input over
/// [`DEFAULT_MAX_MESSAGE_BYTES`](crate::limits::DEFAULT_MAX_MESSAGE_BYTES).
pub fn decode_batch(bytes: &[u8]) -> Result<Batch, DecodeError> {
    decode_batch_with_limit(bytes, DEFAULT_MAX_MESSAGE_BYTES)
}

/// Decodes a batch, refusing input over `max_message_bytes` before parsing it.
///
/// The batch may come with a [`SeqHeader`](crate::SeqHeader) before it (as
/// [`encode_message`](crate::encode_message) writes it) or without (as
/// [`encode_batch`] does); a header is checked and must agree with the batch.
/// [`decode_message_with_limit`](crate::decode_message_with_limit) also tells,
/// on refusal, which sequence numbers the header named.
///
/// On success the batch has passed [`Batch::validate`]: its counts and strings
/// are within [`limits`](crate::limits) and its sequence numbers increase. Its
/// records may still include [`Body::Unknown`](crate::Body::Unknown) ones.
pub fn decode_batch_with_limit(
    bytes: &[u8],
    max_message_bytes: usize,
) -> Result<Batch, DecodeError> {
    crate::decode_message_with_limit(bytes, max_message_bytes)
        .map(|(_, batch)| batch)
        .map_err(|refused| refused.error)
}

/// [`decode_batch_with_limit`] of a batch without a header.
pub(crate) fn decode_bare_batch(
    bytes: &[u8],
    max_message_bytes: usize,
) -> Result<Batch, DecodeError> {
    let batch: Batch = decode(bytes, max_message_bytes)?;
    batch.validate()?;
    Ok(batch)
}

/// Encodes one record body as CBOR: the one-entry map `{ kind: payload }`,
/// byte for byte as it appears inside an encoded [`Batch`].
///
/// This is the form the ingest ledger stores, so that the API can read a body
/// back with [`decode_body`] without knowing the encoding. Like
/// [`encode_batch`], it does not check limits.
pub fn encode_body(body: &Body) -> Vec<u8> {
    encode(body)
}

/// Decodes one record body written by [`encode_body`], refusing input over
/// [`DEFAULT_MAX_MESSAGE_BYTES`](crate::limits::DEFAULT_MAX_MESSAGE_BYTES).
///
/// A stored body was re-encoded from a message that passed ingest's size
/// check, and is never longer than that message; a deployment that raised the
/// message limit reads its bodies with [`decode_body_with_limit`].
pub fn decode_body(bytes: &[u8]) -> Result<Body, DecodeError> {
    decode_body_with_limit(bytes, DEFAULT_MAX_MESSAGE_BYTES)
}

/// Decodes one record body, refusing input over `max_body_bytes` before
/// parsing it.
///
/// Same bounds as [`decode_batch_with_limit`]: the size first, then a parse
/// that never pre-allocates from declared lengths and refuses deep nesting and
/// trailing bytes, then the limit checks of [`Record::validate`]. A body has no
/// version key of its own (the batch it came in had one), so none is checked.
/// An unknown kind decodes as [`Body::Unknown`](crate::Body::Unknown), as in a
/// batch.
///
/// [`Record::validate`]: crate::Record::validate
pub fn decode_body_with_limit(bytes: &[u8], max_body_bytes: usize) -> Result<Body, DecodeError> {
    check_size(bytes, max_body_bytes)?;
    let body: Body = parse_whole(bytes)?;
    body.validate()?;
    Ok(body)
}

/// Encodes one record as CBOR: the map `{s, t, b}`, byte for byte as it appears
/// inside an encoded [`Batch`].
///
/// This is the form the device agent keeps in its outbox until the record is
/// sent (with `s`, the sequence number, as a placeholder it replaces on the way
/// out). Like [`encode_batch`], it does not check limits: call
/// [`Record::validate`](crate::Record::validate) first.
pub fn encode_record(record: &Record) -> Vec<u8> {
    encode(record)
}

/// Decodes one record written by [`encode_record`], refusing input over
/// [`DEFAULT_MAX_MESSAGE_BYTES`](crate::limits::DEFAULT_MAX_MESSAGE_BYTES): a
/// record is never larger than the batch it must fit in.
pub fn decode_record(bytes: &[u8]) -> Result<Record, DecodeError> {
    decode_record_with_limit(bytes, DEFAULT_MAX_MESSAGE_BYTES)
}

/// Decodes one record, refusing input over `max_record_bytes` before parsing
/// it.
///
/// The bounds of [`decode_body_with_limit`], which are those of a batch: the
/// size first, then a parse that never pre-allocates from declared lengths and
/// refuses deep nesting and trailing bytes, then the limit checks of
/// [`Record::validate`](crate::Record::validate). A record has no version key of
/// its own, so none is checked. An unknown body kind decodes as
/// [`Body::Unknown`](crate::Body::Unknown), as in a batch.
pub fn decode_record_with_limit(
    bytes: &[u8],
    max_record_bytes: usize,
) -> Result<Record, DecodeError> {
    check_size(bytes, max_record_bytes)?;
    let record: Record = parse_whole(bytes)?;
    record.validate()?;
    Ok(record)
}

/// Encodes an ack as CBOR.
pub fn encode_ack(ack: &Ack) -> Vec<u8> {
    encode(ack)
}

/// Decodes an ack, refusing input over
/// [`MAX_CONTROL_MESSAGE_BYTES`](crate::limits::MAX_CONTROL_MESSAGE_BYTES).
pub fn decode_ack(bytes: &[u8]) -> Result<Ack, DecodeError> {
    decode(bytes, MAX_CONTROL_MESSAGE_BYTES)
}

/// Encodes a presence message as CBOR.
pub fn encode_presence(presence: &Presence) -> Vec<u8> {
    encode(presence)
}

/// Decodes a presence message, refusing input over
/// [`MAX_CONTROL_MESSAGE_BYTES`](crate::limits::MAX_CONTROL_MESSAGE_BYTES).
pub fn decode_presence(bytes: &[u8]) -> Result<Presence, DecodeError> {
    decode(bytes, MAX_CONTROL_MESSAGE_BYTES)
}

fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut bytes = Vec::new();
    // Writing to a Vec cannot fail, and our Serialize impls raise no errors of
    // their own (all map keys are strings), so a failure here is a bug in this
    // crate, not bad input.
    ciborium::into_writer(message, &mut bytes).expect("encoding a message into memory failed");
    bytes
}

/// The pipeline every message goes through.
fn decode<T: DeserializeOwned>(bytes: &[u8], max_bytes: usize) -> Result<T, DecodeError> {
    // First, before reading a single byte: the whole input bounds every
    // allocation the decoder can make.
    check_size(bytes, max_bytes)?;
    // Then the version, so that a message of another major version is refused as
    // such rather than as malformed, and is never half-read with the wrong schema.
    check_major_version(read_version(bytes)?)?;
    parse_whole(bytes)
}

/// Refuses input over `max_bytes`, before any parsing or allocation.
fn check_size(bytes: &[u8], max_bytes: usize) -> Result<(), DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: max_bytes,
        });
    }
    Ok(())
}

pub(crate) fn check_major_version(version: SchemaVersion) -> Result<(), DecodeError> {
    let supported = SchemaVersion::CURRENT.major;
    if version.major != supported {
        return Err(DecodeError::UnsupportedMajorVersion {
            got: version.major,
            supported,
        });
    }
    Ok(())
}

/// Parses `bytes` as exactly one CBOR item of type `T`.
fn parse_whole<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut rest = bytes;
    let message =
        ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_NESTING).map_err(describe)?;
    if !rest.is_empty() {
        return Err(DecodeError::malformed(format_args!(
            "{} bytes after the end of the message",
            rest.len()
        )));
    }
    Ok(message)
}

/// Reads the `"v"` entry of the top-level map and nothing after it.
///
/// Our encoder writes `"v"` first, so this usually reads a handful of bytes; if
/// another writer put it later, the entries before it are skipped. Whatever
/// follows is not read at all, since its shape depends on the version.
fn read_version(bytes: &[u8]) -> Result<SchemaVersion, DecodeError> {
    let mut rest = bytes;
    ciborium::de::from_reader_with_recursion_limit::<VersionOnly, _>(&mut rest, MAX_NESTING)
        .map(|VersionOnly(version)| version)
        .map_err(describe)
}

struct VersionOnly(SchemaVersion);

impl<'de> de::Deserialize<'de> for VersionOnly {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(VersionOnlyVisitor)
    }
}

struct VersionOnlyVisitor;

impl<'de> Visitor<'de> for VersionOnlyVisitor {
    type Value = VersionOnly;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message map with a \"v\" entry")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<VersionOnly, A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "v" {
                return map.next_value().map(VersionOnly);
            }
            map.next_value::<IgnoredAny>()?;
        }
        Err(de::Error::missing_field("v"))
    }
}

/// Turns ciborium's error into ours. Every failure to parse is `Malformed`; the
/// text says where, for humans.
fn describe(error: ciborium::de::Error<std::io::Error>) -> DecodeError {
    use ciborium::de::Error;
    match error {
        Error::Io(_) => DecodeError::malformed("truncated: the input ends inside an item"),
        Error::Syntax(offset) => {
            DecodeError::malformed(format_args!("invalid CBOR at byte {offset}"))
        }
        Error::Semantic(Some(offset), message) => {
            DecodeError::malformed(format_args!("{message} (at byte {offset})"))
        }
        Error::Semantic(None, message) => DecodeError::malformed(message),
        Error::RecursionLimitExceeded => {
            DecodeError::malformed(format_args!("nested deeper than {MAX_NESTING} levels"))
        }
    }
}
