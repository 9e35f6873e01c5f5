use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// Small sizes so a few hundred records roll and evict segments.
fn small_config() -> OutboxConfig {
    OutboxConfig {
        max_bytes: 4096,
        segment_bytes: 1024,
        fsync: FsyncPolicy::Never,
    }
}

/// Records of [`payload_for`] that fit in [`small_config`] before eviction: 35 * 116 =
/// 4060 bytes (segments only count the bytes written, not their capacity).
const RECORDS_THAT_FIT: usize = 35;

/// Deterministic 100-byte payload (116 bytes on disk: 8 records per 1 KiB segment), so
/// any record can be checked by its seq.
fn payload_for(seq: Seq) -> Vec<u8> {
    format!("{}end\n", format!("record {seq:08} ").repeat(6)).into_bytes()
}

fn open(dir: &Path, config: OutboxConfig) -> (Outbox, OpenReport) {
    Outbox::open(dir, config).expect("open outbox")
}

fn append_n(outbox: &mut Outbox, n: usize) -> Vec<Seq> {
    (0..n)
        .map(|_| {
            let seq = outbox.next_seq();
            outbox.append(&payload_for(seq)).expect("append")
        })
        .collect()
}

/// A fresh outbox of [`small_config`] in a temporary directory, holding `n` records of
/// [`payload_for`] (sequence numbers 1 to `n`).
fn filled(n: usize) -> (tempfile::TempDir, Outbox) {
    let dir = tempfile::tempdir().unwrap();
    let (mut outbox, _) = open(dir.path(), small_config());
    append_n(&mut outbox, n);
    (dir, outbox)
}

/// No ack yet, and `records` records waiting.
fn assert_nothing_acked(outbox: &Outbox, records: u64) {
    assert_eq!(outbox.last_acked(), None);
    assert_eq!(outbox.depth().records, records);
}

/// Five records in one segment, the outbox closed: the directory, the segment's path,
/// its bytes, and where the last record starts in them.
fn closed_with_five_records() -> (tempfile::TempDir, PathBuf, Vec<u8>, usize) {
    let (dir, outbox) = filled(5);
    drop(outbox);
    let segment = segment_files(dir.path()).pop().unwrap();
    let original = fs::read(&segment).unwrap();
    let last_start = original.len() - (payload_for(5).len() + RECORD_HEADER_LEN);
    (dir, segment, original, last_start)
}

fn pending_seqs(outbox: &mut Outbox, after: Option<Seq>) -> Vec<Seq> {
    outbox
        .pending(after)
        .expect("pending")
        .map(|record| {
            let record = record.expect("readable record");
            assert_eq!(
                record.payload,
                payload_for(record.seq),
                "payload of {}",
                record.seq
            );
            record.seq
        })
        .collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}

#[test]
fn sequence_numbers_start_at_one_and_increase() {
    let dir = tempfile::tempdir().unwrap();
    let (mut outbox, report) = open(dir.path(), small_config());
    assert_eq!(report.meta, MetaStatus::Created);
    assert_eq!(append_n(&mut outbox, 3), vec![1, 2, 3]);
    assert_nothing_acked(&outbox, 3);
}

#[test]
fn replays_everything_above_the_ack_in_order_after_reopen() {
    let (dir, mut outbox) = filled(20);
    outbox.ack(7).unwrap();
    drop(outbox);

    let (mut outbox, report) = open(dir.path(), small_config());
    assert_eq!(report.recovered_records, 13);
    assert_eq!(report.meta, MetaStatus::Loaded);
    assert_eq!(outbox.last_acked(), Some(7));
    assert_eq!(
        pending_seqs(&mut outbox, None),
        (8..=20).collect::<Vec<_>>()
    );
    assert_eq!(
        pending_seqs(&mut outbox, Some(15)),
        (16..=20).collect::<Vec<_>>()
    );
    assert_eq!(
        pending_seqs(&mut outbox, Some(2)),
        (8..=20).collect::<Vec<_>>()
    );
}

#[test]
fn sequence_survives_restart_after_everything_was_acked() {
    let (dir, mut outbox) = filled(25);
    outbox.ack(25).unwrap();
    assert!(
        segment_files(dir.path()).is_empty(),
        "all segments acked away"
    );
    drop(outbox);

    let (mut outbox, report) = open(dir.path(), small_config());
    assert_eq!(report.recovered_records, 0);
    assert_eq!(outbox.append(b"after").unwrap(), 26);
}

#[test]
fn sequence_survives_plain_restart() {
    let (dir, outbox) = filled(5);
    outbox.close().unwrap();
    let (mut outbox, _) = open(dir.path(), small_config());
    assert_eq!(append_n(&mut outbox, 2), vec![6, 7]);
    assert_eq!(pending_seqs(&mut outbox, None), (1..=7).collect::<Vec<_>>());
}

#[test]
fn ack_deletes_fully_covered_segments_only() {
    let (dir, mut outbox) = filled(30); // ~116 bytes each: 8 per 1 KiB segment
    let before = segment_files(dir.path());
    assert_eq!(before.len(), 4);
    outbox.ack(12).unwrap(); // covers segment 1..=8 and half of 9..=16
    let after = segment_files(dir.path());
    assert_eq!(after, before[1..].to_vec());
    assert_eq!(outbox.depth().records, 18);
    assert_eq!(pending_seqs(&mut outbox, None).first(), Some(&13));
}

#[test]
fn ack_beyond_the_last_appended_seq_is_refused_and_changes_nothing() {
    let (_dir, mut outbox) = filled(3);
    let err = outbox.ack(4).unwrap_err();
    assert!(matches!(
        err,
        OutboxError::AckBeyondAppended {
            watermark: 4,
            last_appended: 3
        }
    ));
    assert_nothing_acked(&outbox, 3);
}

#[test]
fn stale_ack_is_ignored() {
    let (_dir, mut outbox) = filled(5);
    outbox.ack(4).unwrap();
    outbox.ack(2).unwrap();
    assert_eq!(outbox.last_acked(), Some(4));
    assert_eq!(pending_seqs(&mut outbox, None), vec![5]);
}

#[test]
fn full_outbox_drops_oldest_segment_and_accounts_exactly() {
    let (_dir, mut outbox) = filled(RECORDS_THAT_FIT);
    assert!(outbox.drop_reports().is_empty());
    append_n(&mut outbox, 1); // 36 * 116 > 4096: segment 1..=8 goes
    assert_eq!(
        outbox.drop_reports(),
        &[DropReport {
            reason: DropReason::OutboxFull,
            count: 8,
            first_seq: 1,
            last_seq: 8
        }]
    );
    append_n(&mut outbox, 8); // 37..=44: at 44, segment 9..=16 goes
    assert_eq!(outbox.drop_reports().len(), 1, "contiguous drops merge");
    assert_eq!(outbox.drop_reports()[0].count, 16);
    assert_eq!(outbox.drop_reports()[0].last_seq, 16);
    assert!(outbox.disk_bytes() <= 4096);
    assert_eq!(
        pending_seqs(&mut outbox, None),
        (17..=44).collect::<Vec<_>>()
    );
}

#[test]
fn drop_count_excludes_records_already_acked() {
    let (_dir, mut outbox) = filled(RECORDS_THAT_FIT);
    outbox.ack(5).unwrap();
    append_n(&mut outbox, 1);
    assert_eq!(
        outbox.drop_reports(),
        &[DropReport {
            reason: DropReason::OutboxFull,
            count: 3,
            first_seq: 6,
            last_seq: 8
        }]
    );
}

#[test]
fn an_ack_takes_what_it_covers_out_of_a_report_not_yet_sent() {
    // Records 1..=8 were evicted while in flight; the server had committed 1..=5 and its ack
    // came late: only 6..=8 were lost.
    let (_dir, mut outbox) = filled(RECORDS_THAT_FIT + 1);
    outbox.ack(5).unwrap();
    assert_eq!(
        outbox.drop_reports(),
        &[DropReport {
            reason: DropReason::OutboxFull,
            count: 3,
            first_seq: 6,
            last_seq: 8
        }]
    );
    // An ack past the whole range: nothing in it was lost.
    outbox.ack(9).unwrap();
    assert!(outbox.drop_reports().is_empty());
}

#[test]
fn an_ack_inside_a_merged_report_with_gaps_leaves_its_exact_count_alone() {
    let (dir, outbox) = filled(RECORDS_THAT_FIT + 1);
    drop(outbox);
    // Merged past the report limit, a report's range can span delivered numbers: its count
    // stays as it is until an ack covers the whole range.
    let (mut outbox, _) = open(dir.path(), small_config());
    outbox.drops[0] = DropReport {
        reason: DropReason::OutboxFull,
        count: 2,
        first_seq: 1,
        last_seq: 8,
    };
    outbox.ack(4).unwrap();
    assert_eq!(outbox.drop_reports()[0].count, 2);
    assert_eq!(outbox.drop_reports()[0].first_seq, 1);
    outbox.ack(8).unwrap();
    assert!(outbox.drop_reports().is_empty());
}

#[test]
fn handled_numbers_above_a_hole_are_taken_out_of_a_report_not_yet_sent() {
    // Records 1..=8 were evicted while in flight; the server had refused a batch with 1
    // (storage error, to be resent) and committed 3..=5 and 7: its watermark stays at 0, and
    // only 1, 2, 6 and 8 were lost.
    let (dir, mut outbox) = filled(RECORDS_THAT_FIT + 1);
    let report = |count, first_seq, last_seq| DropReport {
        reason: DropReason::OutboxFull,
        count,
        first_seq,
        last_seq,
    };
    outbox.note_handled([(3, 5), (7, 7)]).unwrap();
    assert_eq!(
        outbox.drop_reports(),
        &[report(2, 1, 2), report(1, 6, 6), report(1, 8, 8)]
    );
    // Repeated and meaningless ranges change nothing.
    outbox.note_handled([(3, 5), (100, 200)]).unwrap();
    assert_eq!(outbox.drop_reports().len(), 3);
    drop(outbox);
    let (mut outbox, _) = open(dir.path(), small_config());
    assert_eq!(
        outbox.drop_reports(),
        &[report(2, 1, 2), report(1, 6, 6), report(1, 8, 8)],
        "persisted"
    );
    outbox.note_handled([(1, 2)]).unwrap();
    assert_eq!(outbox.drop_reports(), &[report(1, 6, 6), report(1, 8, 8)]);
}

#[test]
fn handled_numbers_leave_a_report_with_gaps_alone_unless_they_cover_it() {
    let (dir, outbox) = filled(RECORDS_THAT_FIT + 1);
    drop(outbox);
    let (mut outbox, _) = open(dir.path(), small_config());
    let gappy = DropReport {
        reason: DropReason::OutboxFull,
        count: 2,
        first_seq: 1,
        last_seq: 8,
    };
    outbox.drops[0] = gappy;
    outbox.note_handled([(3, 4)]).unwrap();
    assert_eq!(outbox.drop_reports(), &[gappy]);
    outbox.note_handled([(1, 8)]).unwrap();
    assert!(outbox.drop_reports().is_empty());
}

#[test]
fn a_split_past_the_report_limit_keeps_the_range_and_counts_exactly() {
    let (dir, outbox) = filled(RECORDS_THAT_FIT + 1);
    drop(outbox);
    let (mut outbox, _) = open(dir.path(), small_config());
    outbox.drops = (0..MAX_DROP_REPORTS as u64)
        .map(|i| DropReport {
            reason: DropReason::OutboxFull,
            count: 3,
            first_seq: 1 + 10 * i,
            last_seq: 3 + 10 * i,
        })
        .collect();
    outbox.note_handled([(2, 2)]).unwrap();
    assert_eq!(outbox.drop_reports().len(), MAX_DROP_REPORTS);
    assert_eq!(
        outbox.drop_reports()[0],
        DropReport {
            reason: DropReason::OutboxFull,
            count: 2,
            first_seq: 1,
            last_seq: 3,
        }
    );
}

#[test]
fn drop_report_survives_restart_until_taken() {
    let (dir, outbox) = filled(RECORDS_THAT_FIT + 1);
    let reports = outbox.drop_reports().to_vec();
    drop(outbox);

    let (mut outbox, _) = open(dir.path(), small_config());
    assert_eq!(outbox.drop_reports(), reports.as_slice());
    assert_eq!(outbox.take_drop_reports().unwrap(), reports);
    drop(outbox);
    let (outbox, _) = open(dir.path(), small_config());
    assert!(outbox.drop_reports().is_empty());
    // Evicted records stay gone after restart.
    assert_eq!(outbox.depth().records, 28);
}

#[test]
fn drop_events_become_records_and_reports_clear() {
    let (_dir, mut outbox) = filled(RECORDS_THAT_FIT + 1);
    let seqs = outbox
        .append_drop_events(|report| {
            format!("dropped {}..={}", report.first_seq, report.last_seq).into_bytes()
        })
        .unwrap();
    assert_eq!(seqs, vec![37]);
    assert!(outbox.drop_reports().is_empty());
    let last = outbox.pending(Some(36)).unwrap().next().unwrap().unwrap();
    assert_eq!(last.payload, b"dropped 1..=8");
}

#[test]
fn oversize_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut outbox, _) = open(dir.path(), small_config());
    let err = outbox.append(&[0u8; 1024]).unwrap_err();
    assert!(matches!(
        err,
        OutboxError::RecordTooLarge {
            len: 1024,
            max: 1008
        }
    ));
    assert_eq!(outbox.append(&[0u8; 1008]).unwrap(), 1);
}

#[test]
fn config_that_cannot_evict_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_bytes: 1000,
        segment_bytes: 600,
        fsync: FsyncPolicy::Never,
    };
    assert!(matches!(
        Outbox::open(dir.path(), config),
        Err(OutboxError::InvalidConfig(_))
    ));
}

#[test]
fn second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_outbox, _) = open(dir.path(), small_config());
    assert!(matches!(
        Outbox::open(dir.path(), small_config()),
        Err(OutboxError::Locked(_))
    ));
}

#[test]
fn foreign_files_are_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    fs::write(dir.path().join("123.seg"), b"not twenty digits").unwrap();
    fs::create_dir(dir.path().join("00000000000000000009.seg")).unwrap();
    let (_outbox, report) = open(dir.path(), small_config());
    assert_eq!(report.ignored_files.len(), 3);
    assert!(dir.path().join("notes.txt").exists());
}

#[test]
fn a_torn_last_record_at_every_offset_is_reported_and_its_number_not_reused() {
    let (dir, segment, original, last_start) = closed_with_five_records();

    // From one byte of the last record kept (none kept is a whole record missing: the
    // unflushed case, found from the sequence floor).
    for cut in last_start + 1..original.len() {
        fs::write(&segment, &original[..cut]).unwrap();
        let (mut outbox, report) = open(dir.path(), small_config());
        assert_eq!(
            report.truncated_bytes,
            (cut - last_start) as u64,
            "cut at {cut}"
        );
        assert!(report.corrupt_segments.is_empty(), "cut at {cut}");
        assert_eq!(
            pending_seqs(&mut outbox, None),
            vec![1, 2, 3, 4],
            "cut at {cut}"
        );
        assert_eq!(fs::metadata(&segment).unwrap().len(), last_start as u64);
        // The torn record may have been handed out: its number is reported and not reused.
        assert_eq!(
            outbox.drop_reports(),
            [DropReport {
                reason: DropReason::Torn,
                count: 1,
                first_seq: 5,
                last_seq: 5,
            }],
            "cut at {cut}"
        );
        assert_eq!(outbox.next_seq(), 6, "cut at {cut}");
        drop(outbox);
        // The report survives a reopen, and is not made a second time.
        let (outbox, _) = open(dir.path(), small_config());
        assert_eq!(outbox.drop_reports().len(), 1, "cut at {cut}");
        assert_eq!(outbox.next_seq(), 6, "cut at {cut}");
        drop(outbox);
        fs::write(&segment, &original).unwrap();
        fs::remove_file(dir.path().join("outbox.meta")).unwrap();
        let (outbox, _) = open(dir.path(), small_config());
        drop(outbox);
    }
}

#[test]
fn a_torn_header_naming_a_number_never_given_out_is_not_believed() {
    let (dir, segment, original, last_start) = closed_with_five_records();
    // The last record's header whole, its number damaged, the payload cut.
    let mut torn = original[..last_start + RECORD_HEADER_LEN + 10].to_vec();
    torn[last_start + 4..last_start + 12].copy_from_slice(&(1u64 << 40).to_le_bytes());
    fs::write(&segment, &torn).unwrap();
    let (outbox, _) = open(dir.path(), small_config());
    assert_eq!(
        outbox.drop_reports(),
        [DropReport {
            reason: DropReason::Torn,
            count: 1,
            first_seq: 5,
            last_seq: 5,
        }]
    );
    assert_eq!(outbox.next_seq(), 6);
}

#[test]
fn a_torn_tail_of_a_record_already_acked_is_not_reported() {
    let (dir, segment, original, last_start) = closed_with_five_records();
    let (mut outbox, _) = open(dir.path(), small_config());
    outbox.ack(5).unwrap();
    drop(outbox);
    // ack(5) covers the whole segment and deletes it; put it back torn, as a crash before
    // the delete would leave it.
    fs::write(&segment, &original[..last_start + 3]).unwrap();
    let (outbox, _) = open(dir.path(), small_config());
    assert!(
        outbox.drop_reports().is_empty(),
        "{:?}",
        outbox.drop_reports()
    );
    assert_eq!(outbox.next_seq(), 6);
}

#[test]
fn corrupted_tail_is_detected_and_cut() {
    let (dir, segment, original, last_start) = closed_with_five_records();

    // Flip each byte of the last record's seq, crc and payload in turn (the length field
    // is covered by the truncation test: a wrong length reads as a cut-short record).
    for offset in (last_start + 4)..original.len() {
        let mut damaged = original.clone();
        damaged[offset] ^= 0xA5;
        fs::write(&segment, &damaged).unwrap();
        let (mut outbox, report) = open(dir.path(), small_config());
        assert_eq!(
            report.corrupt_segments.len(),
            1,
            "flip at {offset}: {report:?}"
        );
        assert_eq!(pending_seqs(&mut outbox, None), vec![1, 2, 3, 4]);
        let corrupted = outbox.take_drop_reports().unwrap();
        assert_eq!(corrupted.len(), 1);
        assert_eq!(corrupted[0].reason, DropReason::Corrupted);
        assert_eq!(corrupted[0].first_seq, 5);
        // Record 5 may have been sent: its number is not given out again.
        assert!(outbox.append(b"next").unwrap() > corrupted[0].last_seq);
        drop(outbox);
        // Restore for the next round: a fresh outbox with the same five records.
        for file in fs::read_dir(dir.path()).unwrap() {
            fs::remove_file(file.unwrap().path()).unwrap();
        }
        let (mut outbox, _) = open(dir.path(), small_config());
        append_n(&mut outbox, 5);
    }
}

#[test]
fn corruption_in_a_middle_segment_cuts_that_segment_and_reports_the_exact_gap() {
    let (dir, outbox) = filled(20); // segments 1..=8, 9..=16, 17..=20
    drop(outbox);
    let middle = segment_files(dir.path())[1].clone();
    let mut bytes = fs::read(&middle).unwrap();
    let record_len = payload_for(1).len() + RECORD_HEADER_LEN;
    bytes[2 * record_len + 20] ^= 0xFF; // payload of record 11
    fs::write(&middle, &bytes).unwrap();

    let (mut outbox, report) = open(dir.path(), small_config());
    assert_eq!(report.corrupt_segments.len(), 1);
    assert_eq!(report.corrupt_segments[0].offset, 2 * record_len as u64);
    let expected: Vec<Seq> = (1..=10).chain(17..=20).collect();
    assert_eq!(pending_seqs(&mut outbox, None), expected);
    assert_eq!(
        outbox.drop_reports(),
        &[DropReport {
            reason: DropReason::Corrupted,
            count: 6,
            first_seq: 11,
            last_seq: 16
        }]
    );
    assert_eq!(outbox.append(b"x").unwrap(), 21);
}

#[test]
fn garbage_after_the_last_record_is_cut() {
    let (dir, outbox) = filled(3);
    drop(outbox);
    let segment = segment_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&segment).unwrap();
    let good = bytes.len();
    bytes.extend_from_slice(&[0u8; 100]);
    fs::write(&segment, &bytes).unwrap();
    let (mut outbox, report) = open(dir.path(), small_config());
    assert_eq!(report.truncated_bytes, 100);
    assert_eq!(fs::metadata(&segment).unwrap().len(), good as u64);
    assert_eq!(pending_seqs(&mut outbox, None), vec![1, 2, 3]);
}

#[test]
fn damaged_meta_file_is_reported_and_records_are_replayed() {
    let (dir, mut outbox) = filled(4);
    outbox.ack(2).unwrap();
    drop(outbox);
    fs::write(dir.path().join("outbox.meta"), b"garbage").unwrap();
    let (mut outbox, report) = open(dir.path(), small_config());
    assert!(matches!(report.meta, MetaStatus::Damaged(_)));
    // The ack watermark is gone with it: replaying 1 and 2 is harmless (server dedups).
    assert_eq!(pending_seqs(&mut outbox, None), vec![1, 2, 3, 4]);
    assert_eq!(outbox.next_seq(), 5);
}

#[test]
fn unflushed_records_lost_to_power_loss_are_reported() {
    let (dir, mut outbox) = filled(6);
    outbox.ack(2).unwrap(); // saves next_seq 7
    drop(outbox);
    // Simulate the page cache never reaching the disk for records 5 and 6.
    let segment = segment_files(dir.path()).pop().unwrap();
    let record_len = (payload_for(1).len() + RECORD_HEADER_LEN) as u64;
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len(4 * record_len).unwrap();
    drop(file);

    let (mut outbox, _) = open(dir.path(), small_config());
    assert_eq!(pending_seqs(&mut outbox, None), vec![3, 4]);
    assert_eq!(
        outbox.drop_reports(),
        &[DropReport {
            reason: DropReason::Unflushed,
            count: 2,
            first_seq: 5,
            last_seq: 6
        }]
    );
    assert_eq!(outbox.append(b"x").unwrap(), 7);
}

/// Environment variable that turns the test binary into the crash-test child.
const CRASH_CHILD_DIR: &str = "FLEET_OUTBOX_CRASH_CHILD_DIR";

/// The child side of the kill -9 test: appends (and now and then acks) until killed,
/// printing each sequence number only after `append` returned with the record fsynced.
#[test]
fn crash_child_entry() {
    let Ok(dir) = std::env::var(CRASH_CHILD_DIR) else {
        return; // not a child: nothing to do
    };
    let config = OutboxConfig {
        max_bytes: 1 << 20,
        segment_bytes: 4096,
        fsync: FsyncPolicy::Always,
    };
    let (mut outbox, _) = Outbox::open(&dir, config).expect("child opens outbox");
    loop {
        let seq = outbox.next_seq();
        let appended = outbox.append(&payload_for(seq)).expect("child appends");
        println!("APPENDED {appended}");
        if appended % 40 == 0 {
            outbox.ack(appended - 25).expect("child acks");
            println!("ACKED {}", appended - 25);
        }
    }
}

/// A tiny xorshift generator: kill timings need variety, not quality.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn kill_9_during_appends_loses_nothing_that_was_reported_durable() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut seed = Instant::now().elapsed().as_nanos() as u64 | 1;
    seed ^= u64::from(std::process::id()) << 17;
    let mut highest_seen: Seq = 0;

    for round in 0..6 {
        let mut child = Command::new(&exe)
            .args(["--exact", "outbox::tests::crash_child_entry", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CRASH_CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let (mut appended, mut acked) = (Vec::new(), 0);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(seq) = line.strip_prefix("APPENDED ") {
                    appended.push(seq.parse::<Seq>().unwrap());
                    let _ = started_tx.send(());
                } else if let Some(seq) = line.strip_prefix("ACKED ") {
                    acked = seq.parse::<Seq>().unwrap();
                }
            }
            (appended, acked)
        });
        // Start the kill timer once the child is appending: on a loaded machine, starting
        // the test binary alone can take longer than the shortest delay.
        let _ = started_rx.recv_timeout(Duration::from_secs(60));
        let delay = 20 + next_random(&mut seed) % 180;
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (appended, acked) = reader.join().unwrap();
        assert!(
            !appended.is_empty(),
            "round {round}: child appended nothing"
        );
        assert!(
            appended.windows(2).all(|w| w[0] < w[1]),
            "round {round}: seqs not increasing across restarts"
        );
        assert!(
            appended[0] > highest_seen,
            "round {round}: seq reused after restart"
        );
        highest_seen = *appended.last().unwrap();

        let (mut outbox, report) = open(dir.path(), small_config_with_child_sizes());
        assert!(
            report.corrupt_segments.is_empty(),
            "round {round}: {report:?}"
        );
        assert!(outbox.drop_reports().is_empty(), "round {round}");
        let replay = pending_seqs(&mut outbox, None); // checks every payload and CRC
        assert!(replay.windows(2).all(|w| w[0] < w[1]));
        let floor = outbox.last_acked().unwrap_or(0).max(acked);
        for seq in appended.iter().filter(|&&seq| seq > floor) {
            assert!(
                replay.binary_search(seq).is_ok(),
                "round {round}: durable record {seq} missing"
            );
        }
        // At most the one record in flight at the kill exists beyond what was reported.
        let beyond = replay.iter().filter(|&&seq| seq > highest_seen).count();
        assert!(beyond <= 1, "round {round}: {beyond} unreported records");
        highest_seen = highest_seen.max(replay.last().copied().unwrap_or(0));
        outbox.close().unwrap();
    }
}

fn small_config_with_child_sizes() -> OutboxConfig {
    OutboxConfig {
        max_bytes: 1 << 20,
        segment_bytes: 4096,
        fsync: FsyncPolicy::Always,
    }
}

#[test]
fn a_new_outbox_has_an_epoch_of_its_own_that_survives_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut outbox, report) = open(tmp.path(), small_config());
    let epoch = outbox.epoch();
    assert_ne!(epoch.id, 0);
    assert_eq!((epoch.first_seq, report.epoch), (1, epoch));
    append_n(&mut outbox, 5);
    outbox.ack(2).unwrap();
    drop(outbox);
    let (mut outbox, _) = open(tmp.path(), small_config());
    assert_eq!(outbox.epoch(), epoch, "kept in outbox.meta");

    let (previous, started) = outbox.start_epoch().unwrap();
    assert_eq!(previous, epoch);
    assert_ne!(started.id, epoch.id);
    assert_eq!(started.first_seq, 3, "from the first unacknowledged record");
    assert_eq!(
        pending_seqs(&mut outbox, None),
        [3, 4, 5],
        "nothing is dropped"
    );
    drop(outbox);
    let (outbox, _) = open(tmp.path(), small_config());
    assert_eq!(outbox.epoch(), started, "the new epoch is persisted");
}

#[test]
fn an_outbox_whose_state_file_is_gone_starts_an_epoch_where_its_records_begin() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut outbox, _) = open(tmp.path(), small_config());
    let epoch = outbox.epoch();
    append_n(&mut outbox, 20);
    outbox.ack(9).unwrap();
    drop(outbox);
    fs::remove_file(tmp.path().join(META_FILE)).unwrap();
    let (outbox, report) = open(tmp.path(), small_config());
    assert_eq!(report.meta, MetaStatus::Missing);
    assert_ne!(outbox.epoch().id, epoch.id);
    let first_on_disk = segment_files(tmp.path())
        .first()
        .and_then(|path| path.file_stem()?.to_str()?.parse::<Seq>().ok())
        .unwrap();
    assert_eq!(outbox.epoch().first_seq, first_on_disk);
}

/// A tmpfs of `size` mounted on a new temporary directory (needs root, as CI runs), unmounted
/// when dropped: a file system that really fills up.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            output.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file `name` until the disk refuses more; returns its path.
    fn fill(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        let mut file = fs::File::create(&path).unwrap();
        let chunk = [0xa5u8; 512];
        while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// An outbox bounded far above the disk it is on, so the disk fills first.
fn config_bigger_than_the_disk() -> OutboxConfig {
    OutboxConfig {
        max_bytes: 64 * 1024 * 1024,
        segment_bytes: 8 * 1024,
        fsync: FsyncPolicy::Always,
    }
}

#[test]
fn a_full_disk_evicts_the_oldest_records_and_reports_exactly_which() {
    let disk = SmallDisk::mount("256k");
    let (mut outbox, _) = open(disk.path(), config_bigger_than_the_disk());
    assert!(disk.path().join("reserve").exists());
    append_n(&mut outbox, 150);
    disk.fill("filler");
    // The disk is full: every further append still succeeds, by evicting the oldest segment.
    append_n(&mut outbox, 150);
    let reports = outbox.drop_reports().to_vec();
    assert!(!reports.is_empty(), "the full disk evicted nothing");
    let mut dropped = std::collections::BTreeSet::new();
    for report in &reports {
        assert_eq!(report.reason, DropReason::OutboxFull);
        assert_eq!(report.count, report.last_seq - report.first_seq + 1);
        dropped.extend(report.first_seq..=report.last_seq);
    }
    let pending = pending_seqs(&mut outbox, None);
    // Every number is either still waiting or in a report, never both, never neither.
    let mut all: Vec<Seq> = pending
        .iter()
        .copied()
        .chain(dropped.iter().copied())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=300).collect::<Vec<_>>());
    // And the reports survive a reopen (they were persisted before each segment went).
    drop(outbox);
    let (mut outbox, report) = open(disk.path(), config_bigger_than_the_disk());
    assert_eq!(report.meta, MetaStatus::Loaded);
    assert_eq!(outbox.drop_reports(), reports.as_slice());
    assert_eq!(pending_seqs(&mut outbox, None), pending);
}

#[test]
fn with_nothing_left_to_evict_a_full_disk_refuses_the_record_before_numbering_it() {
    let disk = SmallDisk::mount("128k");
    let (mut outbox, _) = open(disk.path(), config_bigger_than_the_disk());
    append_n(&mut outbox, 10);
    let first_filler = disk.fill("filler-1");
    // Acks still rewrite the state file on the full disk (the reserve gives the room).
    outbox.ack(5).unwrap();
    outbox.ack(10).unwrap();
    assert_eq!(outbox.last_acked(), Some(10));
    // Everything is acked and its segment gone, and what that freed is taken too: there is
    // nothing left to make room with.
    let second_filler = disk.fill("filler-2");
    let err = outbox.append(&payload_for(11)).unwrap_err();
    assert!(err.is_storage_full(), "{err}");
    assert_eq!(outbox.next_seq(), 11, "a refused record gets no number");
    assert!(outbox.drop_reports().is_empty());
    fs::remove_file(first_filler).unwrap();
    fs::remove_file(second_filler).unwrap();
    assert_eq!(outbox.append(&payload_for(11)).unwrap(), 11);
    assert_eq!(pending_seqs(&mut outbox, None), vec![11]);
}

#[test]
fn drop_reports_wait_on_a_full_disk_with_nothing_to_evict_and_go_out_once_there_is_room() {
    let disk = SmallDisk::mount("128k");
    let (mut outbox, _) = open(disk.path(), config_bigger_than_the_disk());
    append_n(&mut outbox, 10);
    let first_filler = disk.fill("filler-1");
    outbox.ack(10).unwrap();
    let second_filler = disk.fill("filler-2");
    let report = |first_seq: Seq| DropReport {
        reason: DropReason::OutboxFull,
        count: 2,
        first_seq,
        last_seq: first_seq + 1,
    };
    outbox.drops = vec![report(3), report(7)];
    let err = outbox
        .append_drop_events(|report| payload_for(report.first_seq))
        .unwrap_err();
    assert!(err.is_storage_full(), "{err}");
    assert_eq!(outbox.next_seq(), 11, "no event got a number");
    assert_eq!(outbox.drop_reports(), &[report(3), report(7)], "kept");
    fs::remove_file(first_filler).unwrap();
    fs::remove_file(second_filler).unwrap();
    let seqs = outbox
        .append_drop_events(|report| payload_for(report.first_seq))
        .unwrap();
    assert_eq!(seqs, vec![11, 12]);
    assert!(outbox.drop_reports().is_empty());
    let events: Vec<(Seq, Vec<u8>)> = outbox
        .pending(None)
        .unwrap()
        .map(|record| record.map(|r| (r.seq, r.payload)).unwrap())
        .collect();
    assert_eq!(events, vec![(11, payload_for(3)), (12, payload_for(7))]);
}

#[test]
fn a_drop_event_evicted_by_the_next_one_keeps_its_report() {
    // Five events of almost a segment each in a full four-segment outbox: the fifth evicts the
    // segment holding the first.
    let (_dir, mut outbox) = filled(RECORDS_THAT_FIT);
    let report = |first_seq: Seq| DropReport {
        reason: DropReason::Corrupted,
        count: 1,
        first_seq,
        last_seq: first_seq,
    };
    let reports: Vec<DropReport> = (0..5).map(|i| report(1000 + 10 * i)).collect();
    outbox.drops = reports.clone();
    let big = vec![b'x'; 1000];
    let seqs = outbox.append_drop_events(|_| big.clone()).unwrap();
    let first_event = RECORDS_THAT_FIT as Seq + 1;
    assert_eq!(
        seqs,
        (first_event + 1..=first_event + 4).collect::<Vec<_>>()
    );
    let left = outbox.drop_reports().to_vec();
    assert_eq!(left[0], reports[0], "the evicted event's report is kept");
    assert!(
        left[1..].iter().all(|r| r.reason == DropReason::OutboxFull),
        "{left:?}"
    );
    let evicted_event = left
        .iter()
        .any(|r| r.reason == DropReason::OutboxFull && r.last_seq == first_event);
    assert!(
        evicted_event,
        "the eviction reports the event's number: {left:?}"
    );
    assert!(!left.contains(&reports[1]), "the others went out");
    // Once the events are acked (so nothing more is evicted), the kept report goes out again.
    outbox.ack(first_event + 4).unwrap();
    let waiting = outbox.drop_reports().to_vec();
    assert!(waiting.contains(&reports[0]), "{waiting:?}");
    let again = outbox.append_drop_events(|_| b"small".to_vec()).unwrap();
    assert_eq!(again.len(), waiting.len());
    assert!(outbox.drop_reports().is_empty());
}
