//! `decode_message_view` (ingest's one-pass decoder) against `decode_message_with_limit` (serde
//! and ciborium): the same verdict on every input, the same reason and, for every refusal but
//! `Malformed`, the same error; on acceptance the same records, and body spans that decode to
//! the same bodies.

use ciborium::Value;
use proptest::prelude::*;
use wire::{
    decode_body, decode_message_view, decode_message_with_limit, encode_batch, encode_message,
    AgentEvent, Batch, Body, BodyView, DecodeError, Epoch, OutboxOverflow, Record, UnixMillis,
};

use crate::common::{self, raw};

const LIMIT: usize = 1 << 20;

/// Both decoders on `bytes`: they must agree.
#[track_caller]
fn agree(bytes: &[u8]) -> Result<Batch, DecodeError> {
    let reference = decode_message_with_limit(bytes, LIMIT);
    let view = decode_message_view(bytes, LIMIT);
    match (reference, view) {
        (Ok((header, batch)), Ok(view)) => {
            assert_eq!(view.header, header, "header of {}", hex(bytes));
            assert_eq!(view.epoch, batch.epoch());
            assert_eq!(view.records.len(), batch.records.len());
            for (record, seen) in batch.records.iter().zip(&view.records) {
                assert_eq!(seen.seq, record.seq);
                assert_eq!(seen.recorded_at, record.recorded_at);
                assert_eq!(seen.body.kind(), record.kind());
                let body = decode_body(&bytes[seen.span.clone()]).expect("the span is a body");
                assert_eq!(body, record.body, "span {:?} of {}", seen.span, hex(bytes));
                match (&seen.body, &record.body) {
                    (BodyView::PatchStatus(seen), Body::PatchStatus(status)) => {
                        assert_eq!(seen, status)
                    }
                    (BodyView::Event(overflow), Body::Event(event)) => {
                        let expected = match event {
                            AgentEvent::OutboxOverflow(lost) => Some(*lost),
                            _ => None,
                        };
                        assert_eq!(*overflow, expected);
                    }
                    _ => {}
                }
            }
            Ok(batch)
        }
        (Err(reference), Err(view)) => {
            assert_eq!(
                view.error.reason(),
                reference.error.reason(),
                "view: {}, reference: {}, input {}",
                view.error,
                reference.error,
                hex(bytes)
            );
            if !matches!(reference.error, DecodeError::Malformed(_)) {
                assert_eq!(view.error, reference.error, "input {}", hex(bytes));
            }
            assert_eq!(view.header, reference.header);
            Err(reference.error)
        }
        (reference, view) => panic!(
            "the decoders disagree on {}: reference {reference:?}, view {view:?}",
            hex(bytes)
        ),
    }
}

fn hex(bytes: &[u8]) -> String {
    if bytes.len() > 400 {
        return format!("{} bytes", bytes.len());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn to_value(bytes: &[u8]) -> Value {
    ciborium::from_reader(bytes).expect("CBOR")
}

fn from_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("encode");
    out
}

/// Every batch the agent can write decodes the same both ways, with and without the header.
#[test]
fn what_the_agent_writes_decodes_the_same() {
    let bodies = [
        Body::Telemetry(common::full_telemetry()),
        Body::Telemetry(Default::default()),
        Body::PatchStatus(common::one_package_status()),
        Body::Event(AgentEvent::OutboxOverflow(OutboxOverflow {
            dropped: 3,
            first_seq: 4,
            last_seq: 6,
        })),
        Body::Unknown {
            kind: "future".into(),
        },
    ];
    let records: Vec<Record> = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Record {
            seq: i as u64 + 7,
            recorded_at: UnixMillis(1_700_000_000_000 + i as u64),
            body,
        })
        .collect();
    let epoch = Epoch {
        id: 99,
        first_seq: 7,
    };
    let batch = Batch::in_epoch(records, epoch);
    assert_eq!(agree(&encode_message(&batch)).unwrap(), batch);
    assert_eq!(agree(&encode_batch(&batch)).unwrap(), batch);
    assert!(agree(&encode_batch(&Batch::new(vec![]))).is_ok());
}

/// Every prefix of a full message is refused the same way.
#[test]
fn every_truncation_is_refused_the_same() {
    let batch = common::batch_of(Body::Telemetry(common::full_telemetry()));
    let message = encode_message(&batch);
    for cut in 0..message.len() {
        let _ = agree(&message[..cut]);
    }
}

/// An empty batch whose version entry is `version`, raw.
fn with_version(version: &[Vec<u8>]) -> Vec<u8> {
    [
        raw::map(2),
        raw::text("v"),
        version.concat(),
        raw::text("r"),
        raw::array(0),
    ]
    .concat()
}

/// Inputs our encoder never writes, each at a corner of the decoder's rules.
#[test]
fn unusual_encodings_are_judged_the_same() {
    let telemetry = [raw::map(1), raw::text("tel"), raw::map(0)].concat();
    let started = |version: Vec<u8>| {
        [
            raw::map(1),
            raw::text("evt"),
            raw::map(1),
            raw::text("started"),
            raw::map(1),
            raw::text("agent_version"),
            version,
        ]
        .concat()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "tagged seq",
            raw::one_record([vec![0xc6], raw::uint(1)].concat(), telemetry.clone()),
        ),
        (
            "bignum seq",
            raw::one_record(vec![0xc2, 0x42, 0x00, 0x05], telemetry.clone()),
        ),
        (
            "bignum seq too large",
            raw::one_record([vec![0xc2, 0x49], vec![1; 9]].concat(), telemetry.clone()),
        ),
        (
            "bignum seq with leading zeros",
            raw::one_record(
                [vec![0xc2, 0x51], vec![0; 16], vec![7]].concat(),
                telemetry.clone(),
            ),
        ),
        (
            "indefinite bignum",
            raw::one_record(vec![0xc2, 0x5f, 0x41, 0x02, 0xff], telemetry.clone()),
        ),
        (
            "negative bignum seq",
            raw::one_record(vec![0xc3, 0x41, 0x01], telemetry.clone()),
        ),
        (
            "negative seq",
            raw::one_record(vec![0x20], telemetry.clone()),
        ),
        (
            "float seq",
            raw::one_record(raw::float(1.0), telemetry.clone()),
        ),
        (
            "tagged body",
            raw::one_record(raw::uint(1), [vec![0xd8, 0x20], telemetry.clone()].concat()),
        ),
        (
            "indefinite kind",
            raw::one_record(
                raw::uint(1),
                [
                    raw::map(1),
                    vec![0x7f, 0x62, b't', b'e', 0x61, b'l', 0xff],
                    raw::map(0),
                ]
                .concat(),
            ),
        ),
        (
            "nested indefinite text",
            raw::one_record(
                raw::uint(1),
                started(vec![0x7f, 0x7f, 0x61, b'1', 0xff, 0x61, b'2', 0xff]),
            ),
        ),
        (
            "a byte chunk in a text",
            raw::one_record(raw::uint(1), started(vec![0x7f, 0x41, b'1', 0xff])),
        ),
        (
            "invalid utf-8",
            raw::one_record(raw::uint(1), started(vec![0x62, 0xc3, 0x28])),
        ),
        (
            "indefinite text version",
            raw::one_record(raw::uint(1), started(vec![0x7f, 0xff])),
        ),
        (
            "empty byte string as the records",
            [raw::batch_prefix(), vec![0x40]].concat(),
        ),
        (
            "byte string as the records",
            [raw::batch_prefix(), vec![0x41, 0x00]].concat(),
        ),
        (
            "indefinite empty byte string as the records",
            [raw::batch_prefix(), vec![0x5f, 0xff]].concat(),
        ),
        ("version as bytes", with_version(&[vec![0x42, 1, 0]])),
        ("version as one byte", with_version(&[vec![0x41, 1]])),
        (
            "version as bytes of major 2",
            with_version(&[vec![0x42, 2, 0]]),
        ),
        (
            "version of three parts",
            with_version(&[raw::array(3), raw::uint(1), raw::uint(0), raw::map(0)]),
        ),
        (
            "version of one part",
            with_version(&[raw::array(1), raw::uint(1)]),
        ),
        (
            "version beyond u16",
            with_version(&[raw::array(2), raw::uint(1), raw::uint(70_000)]),
        ),
        (
            "major 2 after the records",
            [
                raw::map(2),
                raw::text("r"),
                raw::array(1),
                raw::map(0),
                raw::text("v"),
                raw::version(2, 0),
            ]
            .concat(),
        ),
        (
            "major 1 after bad records",
            [
                raw::map(2),
                raw::text("r"),
                raw::array(1),
                raw::map(0),
                raw::text("v"),
                raw::version(1, 0),
            ]
            .concat(),
        ),
        (
            "a byte-string key before v",
            [
                raw::map(2),
                vec![0x41, b'r'],
                raw::array(0),
                raw::text("v"),
                raw::version(1, 0),
            ]
            .concat(),
        ),
        (
            "a byte-string key after v",
            [raw::versioned_map(2), vec![0x41, b'r'], raw::array(0)].concat(),
        ),
        (
            "an integer key",
            [
                raw::versioned_map(3),
                raw::text("r"),
                raw::array(0),
                raw::uint(1),
                raw::uint(1),
            ]
            .concat(),
        ),
        (
            "a long unknown key",
            [
                raw::versioned_map(3),
                raw::text("r"),
                raw::array(0),
                raw::text(&"k".repeat(4097)),
                raw::uint(1),
            ]
            .concat(),
        ),
        (
            "a key of 4096 bytes",
            [
                raw::versioned_map(3),
                raw::text("r"),
                raw::array(0),
                raw::text(&"k".repeat(4096)),
                raw::uint(1),
            ]
            .concat(),
        ),
        (
            "an indefinite key",
            [
                raw::versioned_map(2),
                vec![0x7f, 0x61, b'r', 0xff],
                raw::array(0),
            ]
            .concat(),
        ),
        (
            "null epoch",
            [
                raw::versioned_map(3),
                raw::text("r"),
                raw::array(0),
                raw::text("e"),
                vec![0xf6],
            ]
            .concat(),
        ),
        (
            "undefined epoch",
            [
                raw::versioned_map(3),
                raw::text("r"),
                raw::array(0),
                raw::text("e"),
                vec![0xf7],
            ]
            .concat(),
        ),
        (
            "tagged null epoch",
            [
                raw::versioned_map(3),
                raw::text("r"),
                raw::array(0),
                raw::text("e"),
                vec![0xc6, 0xf6],
            ]
            .concat(),
        ),
        (
            "duplicate epoch",
            [
                raw::versioned_map(4),
                raw::text("r"),
                raw::array(0),
                raw::text("e"),
                vec![0xf6],
                raw::text("e"),
                vec![0xf6],
            ]
            .concat(),
        ),
        (
            "an epoch without f",
            [
                raw::versioned_map(3),
                raw::text("r"),
                raw::array(0),
                raw::text("e"),
                raw::map(1),
                raw::text("i"),
                raw::uint(1),
            ]
            .concat(),
        ),
        ("null cpu", raw::body_field("tel", "c", vec![0xf6])),
        (
            "half float cpu",
            raw::body_field("tel", "c", vec![0xf9, 0x3c, 0x00]),
        ),
        ("integer cpu", raw::body_field("tel", "c", raw::uint(50))),
        (
            "unknown simple value in an unknown field",
            raw::body_field("tel", "future", vec![0xf8, 0x10]),
        ),
        (
            "simple value 0 in an unknown field",
            raw::body_field("tel", "future", vec![0xe0]),
        ),
        (
            "a break in an unknown field",
            raw::body_field("tel", "future", vec![0xff]),
        ),
        (
            "reserved additional information",
            raw::body_field("tel", "future", vec![0x1c]),
        ),
        (
            "indefinite integer",
            raw::body_field("tel", "future", vec![0x1f]),
        ),
        (
            "a negative bignum too large to skip",
            raw::body_field("tel", "future", [vec![0xc3, 0x50], vec![0xff; 16]].concat()),
        ),
        (
            "a negative bignum to skip",
            raw::body_field("tel", "future", [vec![0xc3, 0x50], vec![0x7f; 16]].concat()),
        ),
        (
            "a long bignum to skip",
            raw::body_field("tel", "future", [vec![0xc2, 0x51], vec![0xff; 17]].concat()),
        ),
        (
            "a tagged map to skip",
            raw::body_field(
                "tel",
                "future",
                [vec![0xc6], raw::map(1), raw::uint(1), raw::uint(2)].concat(),
            ),
        ),
        (
            "invalid utf-8 to skip",
            raw::body_field("tel", "future", vec![0x61, 0xff]),
        ),
        (
            "a memory with a repeated field",
            raw::body_field(
                "tel",
                "m",
                [
                    raw::map(3),
                    raw::text("t"),
                    raw::uint(1),
                    raw::text("a"),
                    raw::uint(1),
                    raw::text("t"),
                    raw::uint(1),
                ]
                .concat(),
            ),
        ),
        (
            "a memory without a",
            raw::body_field(
                "tel",
                "m",
                [raw::map(1), raw::text("t"), raw::uint(1)].concat(),
            ),
        ),
        (
            "a load average without 15",
            raw::body_field(
                "tel",
                "l",
                [
                    raw::map(2),
                    raw::text("1"),
                    raw::float(1.0),
                    raw::text("5"),
                    raw::float(1.0),
                ]
                .concat(),
            ),
        ),
        (
            "custom metrics with a byte-string name",
            raw::body_field(
                "tel",
                "x",
                [raw::map(1), vec![0x41, b'a'], raw::float(1.0)].concat(),
            ),
        ),
        (
            "custom metrics as an array",
            raw::body_field("tel", "x", raw::array(0)),
        ),
        (
            "custom metrics with an indefinite name",
            raw::body_field(
                "tel",
                "x",
                [
                    raw::map(2),
                    vec![0x7f, 0x61, b'a', 0xff],
                    raw::float(1.0),
                    raw::text("a"),
                    raw::float(2.0),
                ]
                .concat(),
            ),
        ),
        (
            "custom metric names refused in order",
            raw::body_field(
                "tel",
                "x",
                [
                    raw::map(2),
                    raw::text("z\u{1}"),
                    raw::float(1.0),
                    raw::text("a\u{2}"),
                    raw::float(2.0),
                ]
                .concat(),
            ),
        ),
        (
            "a disk name and a metric name refused",
            raw::body_field(
                "tel",
                "d",
                [
                    raw::array(1),
                    raw::map(3),
                    raw::text("m"),
                    raw::text("/\u{0}"),
                    raw::text("t"),
                    raw::uint(1),
                    raw::text("f"),
                    raw::uint(1),
                ]
                .concat(),
            ),
        ),
        (
            "disks as an empty byte string",
            raw::body_field("tel", "d", vec![0x40]),
        ),
        (
            "a package manager as an indefinite string",
            raw::body_field("pat", "pm", vec![0x7f, 0x63, b'a', b'p', b't', 0xff]),
        ),
        (
            "a patch status without rr",
            [
                raw::record_prefix("pat"),
                raw::map(3),
                raw::text("os"),
                raw::text("debian"),
                raw::text("ov"),
                raw::text("12"),
                raw::text("pm"),
                raw::text("apt"),
            ]
            .concat(),
        ),
        (
            "a patch status with a refused os and a refused package",
            [
                raw::record_prefix("pat"),
                raw::map(5),
                raw::text("p"),
                raw::array(1),
                raw::map(2),
                raw::text("n"),
                raw::text("a\u{0}"),
                raw::text("i"),
                raw::text("1"),
                raw::text("os"),
                raw::text("debian\u{7}"),
                raw::text("ov"),
                raw::text("12"),
                raw::text("pm"),
                raw::text("apt"),
                raw::text("rr"),
                vec![0xf4],
            ]
            .concat(),
        ),
        (
            "a package with a null candidate",
            [
                raw::record_prefix("pat"),
                raw::map(5),
                raw::text("p"),
                raw::array(1),
                raw::map(3),
                raw::text("n"),
                raw::text("a"),
                raw::text("i"),
                raw::text("1"),
                raw::text("c"),
                vec![0xf6],
                raw::text("os"),
                raw::text("debian"),
                raw::text("ov"),
                raw::text("12"),
                raw::text("pm"),
                raw::text("apt"),
                raw::text("rr"),
                vec![0xc6, 0xf5],
            ]
            .concat(),
        ),
        (
            "an unknown kind with a control character",
            raw::one_record(
                raw::uint(1),
                [raw::map(1), raw::text("fu\u{1}ture"), raw::uint(0)].concat(),
            ),
        ),
        (
            "an unknown event kind with a control character",
            raw::one_record(
                raw::uint(1),
                [
                    raw::map(1),
                    raw::text("evt"),
                    raw::map(1),
                    raw::text("ne\u{1}w"),
                    raw::map(0),
                ]
                .concat(),
            ),
        ),
        (
            "an event of two kinds",
            raw::one_record(
                raw::uint(1),
                [
                    raw::map(1),
                    raw::text("evt"),
                    raw::map(2),
                    raw::text("started"),
                    raw::map(1),
                    raw::text("agent_version"),
                    raw::text("1"),
                    raw::text("x"),
                    raw::uint(1),
                ]
                .concat(),
            ),
        ),
        (
            "an indefinite body of one kind",
            raw::one_record(
                raw::uint(1),
                [vec![0xbf], raw::text("tel"), raw::map(0), vec![0xff]].concat(),
            ),
        ),
        (
            "an indefinite body of two kinds",
            raw::one_record(
                raw::uint(1),
                [
                    vec![0xbf],
                    raw::text("tel"),
                    raw::map(0),
                    raw::text("x"),
                    raw::uint(0),
                    vec![0xff],
                ]
                .concat(),
            ),
        ),
        (
            "an empty indefinite body",
            raw::one_record(raw::uint(1), vec![0xbf, 0xff]),
        ),
        (
            "seqs not increasing",
            [
                raw::batch_prefix(),
                raw::array(2),
                raw::map(3),
                raw::text("s"),
                raw::uint(2),
                raw::text("t"),
                raw::uint(0),
                raw::text("b"),
                telemetry.clone(),
                raw::map(3),
                raw::text("s"),
                raw::uint(2),
                raw::text("t"),
                raw::uint(0),
                raw::text("b"),
                telemetry.clone(),
            ]
            .concat(),
        ),
        ("seq 0", raw::one_record(raw::uint(0), telemetry.clone())),
    ];
    for (name, bytes) in cases {
        let verdict = std::panic::catch_unwind(|| agree(&bytes));
        assert!(verdict.is_ok(), "{name}");
    }
}

/// Containers nested around the nesting limit, in an unknown field of the batch and of a
/// telemetry sample, as arrays, maps and tags.
#[test]
fn nesting_is_counted_the_same() {
    for depth in 28..36 {
        for (open, close) in [
            (vec![0x81], None),
            (vec![0xa1, 0x00], None),
            (vec![0xc6], None),
            (vec![0x9f], Some(0xff)),
        ] {
            let mut value = Vec::new();
            for _ in 0..depth {
                value.extend(&open);
            }
            value.push(0x00);
            if let Some(close) = close {
                value.extend(std::iter::repeat_n(close, depth));
            }
            let batch = [
                raw::versioned_map(3),
                raw::text("r"),
                raw::array(0),
                raw::text("deep"),
                value.clone(),
            ]
            .concat();
            let _ = agree(&batch);
            let _ = agree(&raw::body_field("tel", "deep", value));
        }
    }
}

/// Lists and maps around their limits.
#[test]
fn limits_are_judged_the_same() {
    let record = |seq: u64| {
        [
            raw::map(3),
            raw::text("s"),
            raw::uint(seq),
            raw::text("t"),
            raw::uint(0),
            raw::text("b"),
            raw::map(1),
            raw::text("tel"),
            raw::map(0),
        ]
        .concat()
    };
    for count in [1024u64, 1025, 1026] {
        let mut bytes = [raw::batch_prefix(), raw::array(count)].concat();
        for seq in 1..=count {
            bytes.extend(record(seq));
        }
        let _ = agree(&bytes);
        // The records past the one kept beyond the limit are only skipped.
        let mut bad_tail = [raw::batch_prefix(), raw::array(count)].concat();
        for seq in 1..count {
            bad_tail.extend(record(seq));
        }
        bad_tail.extend(raw::map(0));
        let _ = agree(&bad_tail);
    }
    for count in [64u64, 65, 66] {
        let mut custom = raw::map(count);
        for i in 0..count {
            custom.extend(raw::text(&format!("m{i}")));
            custom.extend(raw::float(1.0));
        }
        let _ = agree(&raw::body_field("tel", "x", custom));
    }
    for count in [256u64, 257, 258] {
        let mut zones = raw::array(count);
        for i in 0..count {
            zones.extend(
                [
                    raw::map(2),
                    raw::text("z"),
                    raw::text(&format!("zone{i}")),
                    raw::text("c"),
                    raw::float(1.0),
                ]
                .concat(),
            );
        }
        let _ = agree(&raw::body_field("tel", "z", zones));
    }
    let _ = agree(&raw::body_field(
        "tel",
        "x",
        [raw::map(1), raw::text(&"n".repeat(257)), raw::float(1.0)].concat(),
    ));
}

/// A CBOR value of any shape, for replacing parts of a good message.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<u64>().prop_map(|n| Value::Integer(n.into())),
        any::<i64>().prop_map(|n| Value::Integer(n.into())),
        any::<f64>().prop_map(Value::Float),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        "[a-z\u{0}\u{7f}\u{85}é]{0,6}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..4).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::vec(("[a-z]{1,2}".prop_map(Value::Text), inner.clone()), 0..3)
                .prop_map(Value::Map),
            (0..8u64, inner).prop_map(|(tag, value)| Value::Tag(tag, Box::new(value))),
        ]
    })
}

/// How many nodes `value` has (itself included).
fn nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(nodes).sum(),
        Value::Map(entries) => entries.iter().map(|(k, v)| nodes(k) + nodes(v)).sum(),
        Value::Tag(_, inner) => nodes(inner),
        _ => 0,
    }
}

/// Replaces node `at` (modulo the node count, depth first) of `value` with `with`.
fn replace(value: &mut Value, at: usize, with: Value) {
    let mut index = at % nodes(value);
    replace_nth(value, &mut index, &mut Some(with));
}

/// Replaces the `index`th node, counting down; true once done.
fn replace_nth(value: &mut Value, index: &mut usize, with: &mut Option<Value>) -> bool {
    if *index == 0 {
        *value = with.take().expect("replaced once");
        return true;
    }
    *index -= 1;
    match value {
        Value::Array(items) => items.iter_mut().any(|item| replace_nth(item, index, with)),
        Value::Map(entries) => entries
            .iter_mut()
            .any(|(key, entry)| replace_nth(key, index, with) || replace_nth(entry, index, with)),
        Value::Tag(_, inner) => replace_nth(inner, index, with),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_batches_decode_the_same(batch in common::batch()) {
        agree(&encode_message(&batch)).unwrap();
        agree(&encode_batch(&batch)).unwrap();
    }

    #[test]
    fn mutated_bytes_are_judged_the_same(
        batch in common::batch(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..4),
    ) {
        let mut bytes = encode_message(&batch);
        for (at, byte, how) in edits {
            if bytes.is_empty() {
                break;
            }
            let at = at % bytes.len();
            match how {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => { bytes.remove(at); }
            }
        }
        let _ = agree(&bytes);
    }

    #[test]
    fn replaced_values_are_judged_the_same(
        batch in common::batch(),
        at in any::<usize>(),
        with in any_value(),
    ) {
        let mut value = to_value(&encode_batch(&batch));
        replace(&mut value, at, with);
        let _ = agree(&from_value(&value));
    }
}
