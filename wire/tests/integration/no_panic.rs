//! The decoders never panic, whatever the input: the stable-toolchain fuzzing of the CBOR
//! decoders, with the mutations of the other hostile-input targets (`corpus`).

use corpus::{apply, mutation};
use proptest::collection::vec;
use proptest::prelude::*;
use wire::{decode_ack, decode_batch, decode_body, decode_presence, encode_batch, encode_body};

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

/// The committed seeds of the `wire_message` fuzz target (fuzz/, corpus/seeds/wire_message)
/// still decode: a schema change that breaks them must replace them, or the fuzzer starts from
/// inputs that no longer reach the decoders' depths.
#[test]
fn the_message_seeds_decode() {
    let seeds = corpus::seeds("wire_message"); // ack, batch-0 to batch-5, presence
    assert_eq!(seeds.len(), 8);
    decode_ack(&seeds[0]).unwrap();
    for seed in &seeds[1..7] {
        let limit = wire::limits::DEFAULT_MAX_MESSAGE_BYTES;
        wire::decode_message_with_limit(seed, limit).unwrap();
        wire::decode_message_view(seed, limit).unwrap();
    }
    decode_presence(&seeds[7]).unwrap();
}
