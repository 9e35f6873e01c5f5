//! The decoders never panic, whatever the input: the stable-toolchain companion
//! of the cargo-fuzz target in `fuzz/`.

use proptest::collection::vec;
use proptest::prelude::*;
use wire::{decode_ack, decode_batch, decode_body, decode_presence, encode_batch, encode_body};

/// How to damage a valid encoding.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the byte at this position (modulo the length).
    Set(usize, u8),
    /// Flip one bit.
    Flip(usize, u8),
    /// Insert bytes.
    Insert(usize, Vec<u8>),
    /// Remove a range.
    Remove(usize, usize),
    /// Cut the input short.
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set(at, byte)),
        (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<usize>(), vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<usize>(), 1..16usize).prop_map(|(at, len)| Mutation::Remove(at, len)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let position = |at: usize, len: usize| if len == 0 { 0 } else { at % len };
    match mutation {
        Mutation::Set(at, byte) if !bytes.is_empty() => {
            let at = position(*at, bytes.len());
            bytes[at] = *byte;
        }
        Mutation::Flip(at, bit) if !bytes.is_empty() => {
            let at = position(*at, bytes.len());
            bytes[at] ^= 1 << bit;
        }
        Mutation::Insert(at, inserted) => {
            let at = position(*at, bytes.len() + 1);
            bytes.splice(at..at, inserted.iter().copied());
        }
        Mutation::Remove(at, len) if !bytes.is_empty() => {
            let start = position(*at, bytes.len());
            let end = (start + len).min(bytes.len());
            bytes.drain(start..end);
        }
        Mutation::Truncate(at) => {
            let at = position(*at, bytes.len() + 1);
            bytes.truncate(at);
        }
        _ => {}
    }
}

/// Decodes with every decoder; whatever a batch decodes to must encode and
/// decode again to the same bytes.
fn decode_everything(bytes: &[u8]) {
    let _ = decode_ack(bytes);
    let _ = decode_presence(bytes);
    if let Ok(batch) = decode_batch(bytes) {
        let encoded = encode_batch(&batch);
        let again = decode_batch(&encoded).expect("a decoded batch re-encodes validly");
        assert_eq!(encode_batch(&again), encoded);
    }
    if let Ok(body) = decode_body(bytes) {
        let encoded = encode_body(&body);
        let again = decode_body(&encoded).expect("a decoded body re-encodes validly");
        assert_eq!(encode_body(&again), encoded);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_batches_never_panic(
        batch in crate::common::batch(),
        mutations in vec(mutation(), 1..6),
    ) {
        let mut bytes = encode_batch(&batch);
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_headed_messages_never_panic(
        batch in crate::common::batch(),
        mutations in vec(mutation(), 1..6),
    ) {
        let mut bytes = wire::encode_message(&batch);
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        decode_everything(&bytes);
        let _ = wire::decode_message_with_limit(&bytes, 1 << 20);
    }

    #[test]
    fn mutated_bodies_never_panic(
        body in crate::common::body(),
        mutations in vec(mutation(), 1..6),
    ) {
        let mut bytes = encode_body(&body);
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        decode_everything(&bytes);
    }
}
