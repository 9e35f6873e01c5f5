//! The agent's outbox recovery: whatever a segment file holds after a crash or disk damage,
//! opening the outbox never fails on its contents, and every record it then hands out for
//! publishing reads back with a sequence number above the one before.
#![no_main]

use edge_agent::outbox::{FsyncPolicy, Outbox, OutboxConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // On tmpfs where there is one: the target writes and reads a small directory per input.
    let parent = std::path::Path::new("/dev/shm");
    let dir = if parent.is_dir() {
        tempfile::tempdir_in(parent)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    std::fs::write(dir.path().join("00000000000000000001.seg"), bytes).unwrap();
    let config = OutboxConfig {
        fsync: FsyncPolicy::Never,
        ..OutboxConfig::default()
    };
    let (mut outbox, _report) = Outbox::open(dir.path(), config).expect("contents never fail open");
    let mut previous = 0;
    for record in outbox.pending(None).unwrap() {
        let record = record.expect("a recovered record reads back");
        assert!(record.seq > previous, "{} after {previous}", record.seq);
        previous = record.seq;
    }
    assert!(outbox.next_seq() > previous);
});
