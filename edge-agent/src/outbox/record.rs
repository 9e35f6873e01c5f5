//! One record on disk: encoding, and the scan that finds where a segment stops being valid.

use super::Seq;

/// Bytes before the payload: length (u32), sequence number (u64), CRC32 (u32), little-endian.
pub const RECORD_HEADER_LEN: usize = 16;

/// Appends the encoded record to `buf` (the caller reuses `buf` to avoid an allocation per append).
pub(crate) fn encode_into(buf: &mut Vec<u8>, seq: Seq, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("caller checked the record size");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&checksum(len, seq, payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// CRC32 over length, sequence number and payload. The length is covered too, so a flipped
/// length bit cannot make the reader take a wrong slice for a valid record.
pub(crate) fn checksum(len: u32, seq: Seq, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// The fixed-size part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub len: u32,
    pub seq: Seq,
    pub crc: u32,
}

impl RecordHeader {
    /// Reads the header from the first [`RECORD_HEADER_LEN`] bytes of `bytes`.
    pub fn parse(bytes: &[u8; RECORD_HEADER_LEN]) -> Self {
        let (len, rest) = bytes.split_at(4);
        let (seq, crc) = rest.split_at(8);
        Self {
            len: u32::from_le_bytes(len.try_into().expect("4 bytes")),
            seq: u64::from_le_bytes(seq.try_into().expect("8 bytes")),
            crc: u32::from_le_bytes(crc.try_into().expect("4 bytes")),
        }
    }

    /// Whether `payload` belongs to this header.
    pub fn matches(&self, payload: &[u8]) -> bool {
        checksum(self.len, self.seq, payload) == self.crc
    }
}

/// How the valid prefix of a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every byte belongs to a valid record.
    Clean,
    /// The file ends inside a record, or the rest is zeros: an interrupted append (power
    /// loss before the data reached the disk). Nothing after it was ever acknowledged.
    Torn,
    /// A complete record that fails its CRC, or a sequence number that does not increase:
    /// damage to data that was once written correctly.
    Corrupt,
}

/// The result of checking one segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentScan {
    /// Valid records in the segment.
    pub records: u64,
    pub first_seq: Option<Seq>,
    pub last_seq: Option<Seq>,
    /// Length of the valid prefix; the file is cut here when it is longer.
    pub valid_len: u64,
    /// Leading records with `seq <= skip_through` (acked or evicted) and their bytes.
    pub skipped_records: u64,
    pub skipped_bytes: u64,
    pub end: ScanEnd,
}

/// Walks the records of one segment. `prev_seq` is the last valid sequence number seen in
/// earlier segments (records must be strictly greater); `skip_through` is the watermark
/// below which records are already delivered or dropped.
pub(crate) fn scan_segment(bytes: &[u8], prev_seq: Seq, skip_through: Seq) -> SegmentScan {
    let mut scan = SegmentScan {
        records: 0,
        first_seq: None,
        last_seq: None,
        valid_len: 0,
        skipped_records: 0,
        skipped_bytes: 0,
        end: ScanEnd::Clean,
    };
    let mut offset = 0usize;
    let mut last = prev_seq;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        match check_record(rest, last) {
            Ok((seq, record_len)) => {
                if seq <= skip_through && scan.skipped_records == scan.records {
                    scan.skipped_records += 1;
                    scan.skipped_bytes += record_len as u64;
                }
                scan.records += 1;
                scan.first_seq.get_or_insert(seq);
                scan.last_seq = Some(seq);
                last = seq;
                offset += record_len;
                scan.valid_len = offset as u64;
            }
            Err(end) => {
                scan.end = end;
                break;
            }
        }
    }
    scan
}

/// Validates the record at the start of `rest`; returns its sequence number and total length.
fn check_record(rest: &[u8], prev_seq: Seq) -> Result<(Seq, usize), ScanEnd> {
    let damaged = || {
        if rest.iter().all(|&b| b == 0) {
            ScanEnd::Torn
        } else {
            ScanEnd::Corrupt
        }
    };
    let Some(header_bytes) = rest.first_chunk::<RECORD_HEADER_LEN>() else {
        return Err(ScanEnd::Torn);
    };
    let header = RecordHeader::parse(header_bytes);
    let record_len = RECORD_HEADER_LEN + header.len as usize;
    let Some(payload) = rest.get(RECORD_HEADER_LEN..record_len) else {
        // The declared length runs past the end of the file: the write was cut short. A
        // damaged length field looks the same; either way nothing valid follows.
        return Err(ScanEnd::Torn);
    };
    if !header.matches(payload) {
        return Err(damaged());
    }
    if header.seq <= prev_seq {
        return Err(ScanEnd::Corrupt);
    }
    Ok((header.seq, record_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(records: &[(Seq, &[u8])]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (seq, payload) in records {
            encode_into(&mut buf, *seq, payload);
        }
        buf
    }

    #[test]
    fn clean_segment_scans_every_record() {
        let bytes = encoded(&[(1, b"a"), (2, b"bb"), (5, b"")]);
        let scan = scan_segment(&bytes, 0, 0);
        assert_eq!(scan.records, 3);
        assert_eq!((scan.first_seq, scan.last_seq), (Some(1), Some(5)));
        assert_eq!(scan.valid_len, bytes.len() as u64);
        assert_eq!(scan.end, ScanEnd::Clean);
    }

    #[test]
    fn records_at_or_below_the_watermark_are_counted_as_skipped() {
        let bytes = encoded(&[(1, b"a"), (2, b"bb"), (3, b"c")]);
        let scan = scan_segment(&bytes, 0, 2);
        assert_eq!(scan.skipped_records, 2);
        assert_eq!(scan.skipped_bytes, (2 * RECORD_HEADER_LEN + 3) as u64);
    }

    #[test]
    fn zero_filled_tail_is_torn_not_corrupt() {
        let mut bytes = encoded(&[(1, b"a")]);
        let good = bytes.len() as u64;
        bytes.extend_from_slice(&[0u8; 40]);
        let scan = scan_segment(&bytes, 0, 0);
        assert_eq!((scan.valid_len, scan.end), (good, ScanEnd::Torn));
    }

    #[test]
    fn flipped_payload_byte_is_corrupt() {
        let mut bytes = encoded(&[(1, b"hello"), (2, b"world")]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let scan = scan_segment(&bytes, 0, 0);
        assert_eq!(scan.records, 1);
        assert_eq!(scan.end, ScanEnd::Corrupt);
    }

    #[test]
    fn non_increasing_sequence_is_corrupt() {
        let bytes = encoded(&[(4, b"a"), (4, b"b")]);
        let scan = scan_segment(&bytes, 0, 0);
        assert_eq!((scan.records, scan.end), (1, ScanEnd::Corrupt));
        assert_eq!(
            scan_segment(&bytes, 9, 0).records,
            0,
            "must exceed earlier segments"
        );
    }

    #[test]
    fn the_segment_seeds_scan_as_written() {
        let seeds = corpus::seeds("outbox_segment");
        let whole = scan_segment(&seeds[0], 0, 0);
        assert_eq!(
            (whole.records, whole.last_seq, whole.end),
            (8, Some(8), ScanEnd::Clean)
        );
        assert_eq!(scan_segment(&seeds[1], 0, 0).end, ScanEnd::Torn);
        assert_eq!(scan_segment(&seeds[2], 0, 0).records, 8);
    }

    corpus::proptest::proptest! {
        #![proptest_config(corpus::config())]

        /// The stable-toolchain fuzzing of outbox recovery (seeds: corpus/seeds/outbox_segment):
        /// whatever the damage, the valid prefix is within the file, holds increasing sequence
        /// numbers, and scans again to exactly the same records with a clean end.
        #[test]
        fn a_damaged_segment_keeps_a_valid_prefix_and_never_panics(
            bytes in corpus::mutated("outbox_segment"),
            prev in 0u64..4,
        ) {
            let scan = scan_segment(&bytes, prev, 0);
            let valid = usize::try_from(scan.valid_len).unwrap();
            corpus::proptest::prop_assert!(valid <= bytes.len());
            if let (Some(first), Some(last)) = (scan.first_seq, scan.last_seq) {
                corpus::proptest::prop_assert!(prev < first && first <= last);
            }
            let again = scan_segment(&bytes[..valid], prev, 0);
            corpus::proptest::prop_assert_eq!(again.records, scan.records);
            corpus::proptest::prop_assert_eq!(again.last_seq, scan.last_seq);
            corpus::proptest::prop_assert_eq!(again.end, ScanEnd::Clean);
        }
    }
}
