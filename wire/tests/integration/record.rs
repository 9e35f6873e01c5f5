//! One record on its own, as the device agent keeps it in its outbox: `encode_record`
//! writes exactly what the agent wrote before (ciborium directly), so outboxes already on
//! devices still decode, and `decode_record` reads it back under the bounds of a batch.

use crate::common::raw;
use proptest::prelude::*;
use wire::limits::{DEFAULT_MAX_MESSAGE_BYTES, MAX_NAME_BYTES};
use wire::{
    decode_record, decode_record_with_limit, encode_batch, encode_record, AgentEvent, Batch, Body,
    CollectorError, DecodeError, Record, Started, Telemetry, UnixMillis,
};

/// What the agent stored in its outbox before `encode_record` existed.
fn ciborium_bytes(record: &Record) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::into_writer(record, &mut bytes).unwrap();
    bytes
}

/// A record as the agent stores it: sequence number 0 (a placeholder).
fn stored(body: Body) -> Record {
    Record {
        seq: 0,
        recorded_at: UnixMillis(1_700_000_000_000),
        body,
    }
}

/// `{"s": 0, "t": millis, "b": {kind: ` (the caller appends the payload).
fn stored_head(millis: u64, kind: &str) -> Vec<u8> {
    let head = [raw::map(3), raw::text("s"), raw::uint(0), raw::text("t")];
    let body = [raw::text("b"), raw::map(1), raw::text(kind)];
    [head.concat(), raw::uint(millis), body.concat()].concat()
}

fn record() -> impl Strategy<Value = Record> {
    (any::<u64>(), any::<u64>(), crate::common::body()).prop_map(|(seq, millis, body)| Record {
        seq,
        recorded_at: UnixMillis(millis),
        body,
    })
}

proptest! {
    #[test]
    fn records_round_trip(record in record()) {
        prop_assert_eq!(decode_record(&encode_record(&record)), Ok(record));
    }

    #[test]
    fn the_bytes_are_what_the_agent_stored_before(record in record()) {
        prop_assert_eq!(encode_record(&record), ciborium_bytes(&record));
    }
}

#[test]
fn the_bytes_are_those_of_the_record_inside_a_batch() {
    let record = Record {
        seq: 7,
        ..stored(Body::Telemetry(crate::common::full_telemetry()))
    };
    let batch = encode_batch(&Batch::new(vec![record.clone()]));
    assert!(batch.ends_with(&encode_record(&record)));
}

#[test]
fn the_encoding_is_the_documented_map() {
    let record = stored(Body::Event(AgentEvent::Started(Started {
        agent_version: "0.1.0".into(),
    })));
    let expected = stored_head(1_700_000_000_000, "evt");
    let bytes = encode_record(&record);
    assert!(bytes.starts_with(&expected), "{bytes:02x?}");
    assert_eq!(bytes, ciborium_bytes(&record));
    assert_eq!(decode_record(&bytes), Ok(record));
}

#[test]
fn an_unknown_body_kind_decodes_as_unknown() {
    let bytes = [stored_head(0, "future"), raw::uint(1)].concat();
    let record = decode_record(&bytes).unwrap();
    assert_eq!(
        record.body,
        Body::Unknown {
            kind: "future".into()
        }
    );
}

#[test]
fn the_size_limit_comes_first_and_is_inclusive() {
    let garbage = vec![0xff; DEFAULT_MAX_MESSAGE_BYTES + 1];
    assert_eq!(
        decode_record(&garbage),
        Err(DecodeError::TooLarge {
            len: DEFAULT_MAX_MESSAGE_BYTES + 1,
            max: DEFAULT_MAX_MESSAGE_BYTES
        })
    );
    let record = stored(Body::Telemetry(crate::common::full_telemetry()));
    let bytes = encode_record(&record);
    assert_eq!(decode_record_with_limit(&bytes, bytes.len()), Ok(record));
    assert!(matches!(
        decode_record_with_limit(&bytes, bytes.len() - 1),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn truncated_trailing_and_garbage_input_is_refused() {
    let bytes = encode_record(&stored(Body::Telemetry(crate::common::full_telemetry())));
    for len in 0..bytes.len() {
        assert!(
            decode_record(&bytes[..len]).is_err(),
            "prefix of {len} accepted"
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0x00);
    assert!(matches!(
        decode_record(&trailing),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        decode_record(b"\xff\x00 not cbor"),
        Err(DecodeError::Malformed(_))
    ));
    let mut deep = [
        raw::map(1),
        raw::text("b"),
        raw::map(1),
        raw::text("future"),
    ]
    .concat();
    deep.extend(std::iter::repeat_n(0x81, 10_000));
    assert!(matches!(
        decode_record(&deep),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn lying_length_headers_cost_nothing() {
    let start = std::time::Instant::now();
    assert!(decode_record(&raw::map(1 << 32)).is_err());
    let body = [
        raw::map(1),
        raw::text("b"),
        raw::map(1),
        raw::text("tel"),
        raw::map(1),
        raw::text("d"),
        raw::array(1 << 32),
    ];
    assert!(decode_record(&body.concat()).is_err());
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn the_limits_of_a_batch_apply() {
    let record = stored(Body::Event(AgentEvent::CollectorError(CollectorError {
        collector: "x".repeat(MAX_NAME_BYTES + 1),
        message: String::new(),
    })));
    assert!(matches!(
        decode_record(&encode_record(&record)),
        Err(DecodeError::FieldTooLong { .. })
    ));
    let fine = stored(Body::Telemetry(Telemetry::default()));
    assert_eq!(decode_record(&encode_record(&fine)), Ok(fine));
}
