//! Hostile input for the parsers that face the network or the disk: committed seed inputs per
//! target (`seeds/<target>/`, one file each, valid inputs and any input that once broke a
//! parser) and the mutations applied to them. Each parser's crate runs a bounded property test
//! over `mutated(target)`: the stable-toolchain fuzzing of this project, reproducible from the
//! seed proptest prints. `FLEET_FUZZ_CASES` sets the number of cases per target (default 1,000).

use std::path::PathBuf;

pub use proptest;
use proptest::collection::vec;
use proptest::prelude::*;

/// How to damage an input.
#[derive(Debug, Clone)]
pub enum Mutation {
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
    /// Repeat a range (lengths and counts that no longer match what follows).
    Duplicate(usize, usize),
}

/// One random mutation.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set(at, byte)),
        (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<usize>(), vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<usize>(), 1..16usize).prop_map(|(at, len)| Mutation::Remove(at, len)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1..64usize).prop_map(|(at, len)| Mutation::Duplicate(at, len)),
    ]
}

/// Applies `mutation` to `bytes`.
pub fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
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
        Mutation::Duplicate(at, len) if !bytes.is_empty() => {
            let start = position(*at, bytes.len());
            let end = (start + len).min(bytes.len());
            let copy = bytes[start..end].to_vec();
            bytes.splice(end..end, copy);
        }
        _ => {}
    }
}

/// The committed seeds of `target`, in file-name order. Panics when there are none: a target
/// without seeds would test nothing.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable entry").path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// A seed of `target`, whole or damaged by up to five mutations.
pub fn mutated(target: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds(target);
    (0..seeds.len(), vec(mutation(), 0..6)).prop_map(move |(seed, mutations)| {
        let mut bytes = seeds[seed].clone();
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        bytes
    })
}

/// The proptest configuration of a hostile-input test: `FLEET_FUZZ_CASES` cases (default
/// 1,000).
pub fn config() -> ProptestConfig {
    let cases = std::env::var("FLEET_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    ProptestConfig::with_cases(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_seeds_and_mutations_stay_in_bounds() {
        for target in [
            "mqtt_packet",
            "csr",
            "csr_der",
            "api_key",
            "enrollment_token",
            "outbox_segment",
        ] {
            assert!(!seeds(target).is_empty(), "{target}");
        }
        let mut bytes = b"abc".to_vec();
        apply(&mut bytes, &Mutation::Duplicate(1, 10));
        assert_eq!(bytes, b"abcbc");
        apply(&mut bytes, &Mutation::Truncate(2));
        assert_eq!(bytes, b"ab");
    }
}
