//! The outbox: records wait on disk until the server's ack watermark covers them.
//!
//! The agent [`append`](Outbox::append)s each encoded message and gets its per-device
//! sequence number; it publishes [`pending`](Outbox::pending) records (everything above
//! the last ack, in order) and calls [`ack`](Outbox::ack) with the watermark the server
//! sends back after its database commit. Records are opaque bytes: the outbox does not
//! know the wire schema.
//!
//! # On-disk format
//!
//! One directory per outbox, holding:
//!
//! - **Segments** `NNNNNNNNNNNNNNNNNNNN.seg`: the 20-digit, zero-padded sequence number the
//!   segment was created for (so names sort in sequence order). Append-only; a segment
//!   receives records until the next one would push it past `segment_bytes`. Each record:
//!
//!   ```text
//!   offset  size  field
//!   0       4     payload length, u32 little-endian
//!   4       8     sequence number, u64 little-endian (>= 1, strictly increasing)
//!   12      4     CRC32 (IEEE) over bytes 0..12 and the payload, u32 little-endian
//!   16      len   payload
//!   ```
//!
//!   There is no segment header: the record layout is the format. A future format uses a
//!   new file extension and meta magic line.
//! - **`outbox.meta`**: a small text file (ack watermark, eviction watermark, sequence floor,
//!   the [`Epoch`] (sequence space: id and first sequence number; a file without it is epoch 0
//!   from 1), undelivered drop reports) ending in a CRC32 line; replaced atomically by writing
//!   `outbox.meta.tmp`, fsyncing it, renaming it over, and fsyncing the directory.
//! - **`lock`**: held with `flock(2)` while an [`Outbox`] is open, so two agents cannot
//!   interleave writes.
//! - **`reserve`**: 16 KiB of zeros held back for the state file (see *Full disk* below).
//!
//! Any other file is listed in [`OpenReport::ignored_files`] and left alone.
//!
//! # Recovery on open
//!
//! Every segment is read and every CRC checked, in order:
//!
//! - **Torn tail** (the file ends inside a record, or the rest is zeros, as an append cut
//!   by power loss leaves it): the file is truncated at the last valid record; the bytes are
//!   counted in [`OpenReport::truncated_bytes`]. The cut record may have been handed out
//!   (an append that returned before its flush under [`FsyncPolicy::EveryN`] or
//!   [`FsyncPolicy::Interval`], or storage that does not honour flushes), so when the last
//!   segment's tail is torn its sequence number (from the cut header when it is whole, else
//!   the one after the last valid record) becomes a [`DropReport`] with [`DropReason::Torn`]
//!   and is never assigned again: a torn record is reported, never silently replaced by
//!   another under the same number. At worst that reports one record that was never
//!   accepted (an append cut before it returned).
//! - **Corruption** (a complete record whose CRC fails, or a sequence number that does not
//!   increase): the rest of that segment is cut, since record boundaries after a damaged
//!   length cannot be trusted; later segments are kept. The lost sequence numbers become a
//!   [`DropReport`] with [`DropReason::Corrupted`] so the gap reaches the server. In a
//!   middle segment the range is exact (up to the next segment's first record); in the
//!   last segment it is an upper bound (cut bytes / 16 sequence numbers, the most the cut
//!   bytes could have held), and the next sequence number skips past it so a record that
//!   may already have been sent is never numbered twice.
//!
//! Opening never fails because of file contents; only I/O errors, a bad configuration or
//! a held lock make it fail.
//!
//! # Durability
//!
//! [`FsyncPolicy::Always`] is the default: `append` returns after `fdatasync`, so a
//! record whose sequence number was returned survives power loss (provided the storage
//! honours flushes). At one telemetry batch a minute that is one flush a minute, which
//! costs nothing measurable in flash wear. With [`FsyncPolicy::EveryN`] or
//! [`FsyncPolicy::Interval`] up to N-1 records, or the records of one interval, can be
//! lost to power loss (never to a process crash: the data is in the page cache). Whatever
//! the policy, [`pending`](Outbox::pending) flushes before handing records out, so a
//! record that left the device is always on disk, and its sequence number can never be
//! reused after a power loss (the server would otherwise drop the new record as a
//! duplicate). Creating and deleting segments fsyncs the directory.
//! [`FsyncPolicy::Never`] skips every fsync (tests, tmpfs).
//!
//! # Bounded size
//!
//! Segment files never add up to more than `max_bytes`. When an append would cross it the
//! oldest segment is deleted, its unacknowledged records are counted into a
//! [`DropReport`] ([`DropReason::OutboxFull`]) that is persisted before the file is
//! deleted and kept until the agent has sent it (see
//! [`append_drop_events`](Outbox::append_drop_events)): the gap is visible, never silent.
//!
//! # Full disk
//!
//! When the file system under the outbox fills up before `max_bytes` is reached, an append
//! that fails with "no space left" (or "quota exceeded") makes room the same way: the oldest
//! segment is evicted and its unacknowledged records reported ([`DropReason::OutboxFull`]),
//! and the append is tried again, until it fits or no segment holds anything. Newest data
//! wins, as when the outbox is full by its own bound. The report is persisted before the
//! segment is deleted; on a disk with no free byte that rewrite of the state file would fail,
//! so the outbox keeps a small reserve file and deletes it when the state file cannot be
//! written, and writes it again once eviction or an ack has freed space. Only when nothing is
//! left to evict does `append` fail ([`OutboxError::is_storage_full`]), before any sequence
//! number was assigned: the record was never accepted.

mod meta;
mod record;
mod reserve;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use self::meta::{Loaded, Meta, META_FILE, META_TMP_FILE};
pub use self::record::RECORD_HEADER_LEN;
use self::record::{RecordHeader, ScanEnd, SegmentScan};
use self::reserve::{Reserve, RESERVE_FILE};

/// A per-device sequence number. The first record gets 1; 0 means "none".
pub type Seq = u64;

const SEGMENT_EXTENSION: &str = "seg";
const LOCK_FILE: &str = "lock";
/// Drop reports merged into one when more than this many wait to be sent, so a device
/// that is offline for months cannot grow its meta file without bound.
const MAX_DROP_REPORTS: usize = 64;

/// When appended records are flushed to stable storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Flush after every append: nothing returned by `append` is lost to power loss.
    #[default]
    Always,
    /// Flush after every N appends (N = 0 behaves like 1).
    EveryN(u32),
    /// Flush on the first append after this much time has passed since the last flush.
    /// There is no background timer: an idle outbox flushes on its next append, `pending`,
    /// `sync` or `close`.
    Interval(Duration),
    /// Never flush (tests, tmpfs). Power loss may lose anything not yet written back.
    Never,
}

/// Sizes and durability of an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Upper bound of all segment files together (default 4 MiB).
    pub max_bytes: u64,
    /// Size at which a new segment is started (default 256 KiB); at most half of
    /// `max_bytes`, so eviction can always make room. Also bounds one record.
    pub segment_bytes: u64,
    /// When appends are flushed (default [`FsyncPolicy::Always`]).
    pub fsync: FsyncPolicy,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_bytes: 4 * 1024 * 1024,
            segment_bytes: 256 * 1024,
            fsync: FsyncPolicy::default(),
        }
    }
}

impl OutboxConfig {
    /// Largest payload one record may carry under this configuration.
    pub fn max_payload_len(&self) -> usize {
        let limit = self.segment_bytes.saturating_sub(RECORD_HEADER_LEN as u64);
        usize::try_from(limit.min(u64::from(u32::MAX))).unwrap_or(usize::MAX)
    }

    fn validate(&self) -> Result<(), OutboxError> {
        let smallest_segment = RECORD_HEADER_LEN as u64 + 1;
        if self.segment_bytes < smallest_segment {
            return Err(OutboxError::InvalidConfig(format!(
                "segment_bytes must be at least {smallest_segment}"
            )));
        }
        if self.segment_bytes.saturating_mul(2) > self.max_bytes {
            return Err(OutboxError::InvalidConfig(
                "segment_bytes must be at most half of max_bytes".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Why sequence numbers will never reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The outbox was full and its oldest segment was deleted to make room.
    OutboxFull,
    /// A segment was found damaged on open and cut (see the module docs).
    Corrupted,
    /// Records were appended but lost to power loss before the [`FsyncPolicy`] flushed
    /// them (detected on open from the sequence floor in the state file).
    Unflushed,
    /// The last record of the last segment was found cut short on open (see the module docs).
    Torn,
}

impl DropReason {
    /// Stable lower-case name (used in the meta file; fit for an agent event).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutboxFull => "outbox-full",
            Self::Corrupted => "corrupted",
            Self::Unflushed => "unflushed",
            Self::Torn => "torn",
        }
    }

    fn from_str(text: &str) -> Option<Self> {
        match text {
            "outbox-full" => Some(Self::OutboxFull),
            "corrupted" => Some(Self::Corrupted),
            "unflushed" => Some(Self::Unflushed),
            "torn" => Some(Self::Torn),
            _ => None,
        }
    }
}

/// Records that were dropped without reaching the server: `count` records with sequence
/// numbers in `first_seq..=last_seq`. (The range can contain numbers that were never
/// assigned; `count` is exact for [`DropReason::OutboxFull`] and an upper bound for a
/// corrupted last segment.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropReport {
    /// Why the records were dropped.
    pub reason: DropReason,
    /// How many records were dropped.
    pub count: u64,
    /// Lowest dropped sequence number.
    pub first_seq: Seq,
    /// Highest dropped sequence number.
    pub last_seq: Seq,
}

impl DropReport {
    /// Takes the numbers up to `watermark` out of the report; returns whether any are left.
    /// A report with gaps in its range (reports merged past [`MAX_DROP_REPORTS`]) cannot say
    /// how many of its records lie below the watermark, so it shrinks only once it is covered
    /// whole.
    fn forget_through(&mut self, watermark: Seq) -> bool {
        if watermark < self.first_seq {
            return true;
        }
        if watermark >= self.last_seq {
            return false;
        }
        if self.count == self.last_seq - self.first_seq + 1 {
            self.count -= watermark + 1 - self.first_seq;
            self.first_seq = watermark + 1;
        }
        true
    }

    /// This report without the numbers `first..=last`: none, one or two reports. A report
    /// with gaps is kept whole unless the range covers it (which of its numbers lie inside
    /// cannot be told).
    fn without(self, first: Seq, last: Seq) -> (Option<Self>, Option<Self>) {
        if last < self.first_seq || first > self.last_seq {
            return (Some(self), None);
        }
        if first <= self.first_seq && last >= self.last_seq {
            return (None, None);
        }
        if self.count != self.last_seq - self.first_seq + 1 {
            return (Some(self), None);
        }
        let exact = |first_seq: Seq, last_seq: Seq| Self {
            reason: self.reason,
            count: last_seq - first_seq + 1,
            first_seq,
            last_seq,
        };
        let below = (first > self.first_seq).then(|| exact(self.first_seq, first - 1));
        let above = (last < self.last_seq).then(|| exact(last + 1, self.last_seq));
        (below, above)
    }
}

/// The outbox's sequence space. The server keeps one watermark per device for the epoch it
/// saw last; a new epoch (after the state directory was wiped, restored from an older copy, or
/// the server acknowledged numbers this outbox never assigned) makes it count afresh from
/// `first_seq`, so new records are never taken for duplicates of old ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    /// Random, chosen when the epoch starts; 0 for outboxes from before epochs.
    pub id: u64,
    /// The lowest sequence number sent in this epoch.
    pub first_seq: Seq,
}

impl Default for Epoch {
    /// The epoch of outboxes from before epochs: 0, from sequence number 1.
    fn default() -> Self {
        Self {
            id: 0,
            first_seq: 1,
        }
    }
}

impl Epoch {
    /// A new epoch with a random non-zero id other than `other`'s, from `first_seq`.
    fn new_random(first_seq: Seq, other: u64) -> Self {
        let mut id = fastrand::u64(1..);
        while id == other {
            id = fastrand::u64(1..);
        }
        Self {
            id,
            first_seq: first_seq.max(1),
        }
    }
}

/// How many records wait for an ack, and how many bytes they occupy on disk (headers
/// included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Unacknowledged records.
    pub records: u64,
    /// Their bytes on disk, record headers included.
    pub bytes: u64,
}

/// A record handed out for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number.
    pub seq: Seq,
    /// The bytes given to [`Outbox::append`].
    pub payload: Vec<u8>,
}

/// What happened to the state file when the outbox was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaStatus {
    /// It was read and its checksum matched.
    Loaded,
    /// There was none and no segments either: a new outbox.
    Created,
    /// There was none although segments exist (it was deleted): the ack watermark
    /// restarts at 0, so already-acked records may be replayed (the server deduplicates).
    Missing,
    /// It was damaged and ignored, with the reason; consequences as for `Missing`, and
    /// drop reports not yet sent are lost.
    Damaged(String),
}

/// A segment found damaged on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptSegment {
    /// The segment file.
    pub path: PathBuf,
    /// Offset of the first damaged record; the file was truncated here.
    pub offset: u64,
    /// Bytes cut from the file.
    pub cut_bytes: u64,
}

/// What [`Outbox::open`] found and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Unacknowledged records available for replay.
    pub recovered_records: u64,
    /// Bytes cut from torn tails (interrupted appends).
    pub truncated_bytes: u64,
    /// Segments cut because of corruption.
    pub corrupt_segments: Vec<CorruptSegment>,
    /// Files in the directory that are not part of the outbox (left alone).
    pub ignored_files: Vec<PathBuf>,
    /// Segments deleted because everything in them was already acked or evicted (a crash
    /// came between updating the state file and deleting them), or they were empty.
    pub removed_segments: usize,
    /// The state file.
    pub meta: MetaStatus,
    /// The sequence space the outbox numbers in (new when the state file was created, missing
    /// or damaged).
    pub epoch: Epoch,
}

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A file system operation failed.
    #[error("outbox I/O on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The configuration cannot work.
    #[error("invalid outbox configuration: {0}")]
    InvalidConfig(String),
    /// Another process holds the outbox open.
    #[error("outbox {0} is in use by another process")]
    Locked(PathBuf),
    /// The payload does not fit in one segment.
    #[error("record payload of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Payload length.
        len: usize,
        /// [`OutboxConfig::max_payload_len`].
        max: usize,
    },
    /// The server acknowledged a sequence number this outbox never assigned. Nothing was
    /// changed. Likely causes: the state directory was restored or wiped while the device
    /// identity was kept, or a server bug; the agent should report it rather than trust it.
    #[error(
        "ack watermark {watermark} is beyond the last appended sequence number {last_appended}"
    )]
    AckBeyondAppended {
        /// The watermark received.
        watermark: Seq,
        /// The highest sequence number assigned so far.
        last_appended: Seq,
    },
    /// A record read back for replay failed its checksum (the disk changed it after open).
    #[error("record at offset {offset} of {path} failed its checksum")]
    CorruptRecord {
        /// The segment file.
        path: PathBuf,
        /// Offset of the record.
        offset: u64,
    },
}

impl OutboxError {
    /// The file system (or the user's quota) has no room, and the outbox had nothing left to
    /// evict: the record was not stored and got no sequence number. Not fatal: the next
    /// append may succeed once space is freed.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Self::Io { source, .. } if reserve::is_storage_full(source))
    }
}

/// Attaches the path to an I/O error.
pub(crate) trait ResultExt<T> {
    fn at(self, path: &Path) -> Result<T, OutboxError>;
}

impl<T> ResultExt<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, OutboxError> {
        self.map_err(|source| OutboxError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// One segment file and what the outbox knows about it without reading it again.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// File length (all bytes are valid records).
    bytes: u64,
    records: u64,
    first_seq: Option<Seq>,
    last_seq: Option<Seq>,
    /// Leading records already acked or evicted, and their bytes.
    skipped_records: u64,
    skipped_bytes: u64,
}

impl Segment {
    fn unsent(&self) -> Depth {
        Depth {
            records: self.records - self.skipped_records,
            bytes: self.bytes - self.skipped_bytes,
        }
    }
}

/// A bounded, crash-safe, on-disk queue of records awaiting the server's ack.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    config: OutboxConfig,
    _lock: Flock<File>,
    segments: VecDeque<Segment>,
    /// Append handle of the last segment, opened on the first append into it.
    active: Option<File>,
    next_seq: Seq,
    acked: Seq,
    evicted_through: Seq,
    /// Highest sequence number whose absence is already in a drop report (corrupt or
    /// unflushed tail); unlike `evicted_through` it is not a delivery watermark.
    lost_through: Seq,
    drops: Vec<DropReport>,
    epoch: Epoch,
    /// Leading drop reports being turned into records by `append_drop_events`; new drops
    /// are not merged into them.
    frozen_drops: usize,
    unsynced_appends: u32,
    last_sync: Instant,
    disk_bytes: u64,
    encode_buf: Vec<u8>,
    /// Space held back for the state file on a full disk.
    reserve: Reserve,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, repairing what a crash left behind.
    pub fn open(
        dir: impl Into<PathBuf>,
        config: OutboxConfig,
    ) -> Result<(Self, OpenReport), OutboxError> {
        config.validate()?;
        let dir = dir.into();
        fs::create_dir_all(&dir).at(&dir)?;
        let lock = lock_dir(&dir)?;
        let (meta, meta_status) = read_meta(&dir)?;
        let reserve = Reserve::find(&dir);
        let mut outbox = Self {
            dir,
            config,
            _lock: lock,
            segments: VecDeque::new(),
            active: None,
            next_seq: meta.next_seq.max(1),
            acked: meta.acked,
            evicted_through: meta.evicted_through,
            lost_through: meta.lost_through,
            drops: meta.drops.clone(),
            epoch: meta.epoch,
            frozen_drops: 0,
            unsynced_appends: 0,
            last_sync: Instant::now(),
            disk_bytes: 0,
            encode_buf: Vec::new(),
            reserve,
        };
        let mut report = OpenReport {
            recovered_records: 0,
            truncated_bytes: 0,
            corrupt_segments: Vec::new(),
            ignored_files: Vec::new(),
            removed_segments: 0,
            meta: meta_status,
            epoch: meta.epoch,
        };
        let paths = outbox.list_segments(&mut report)?;
        if report.meta == MetaStatus::Created && !paths.is_empty() {
            report.meta = MetaStatus::Missing;
        }
        let last_on_disk = outbox.recover_segments(paths, &mut report)?;
        outbox.note_unflushed(last_on_disk, meta.next_seq);
        outbox.next_seq = outbox
            .next_seq
            .max(outbox.acked + 1)
            .max(outbox.evicted_through + 1);
        if report.meta != MetaStatus::Loaded {
            // A new outbox, or one whose state is gone: which numbers the server has seen in
            // the old sequence space is unknown, so start a new one where the records on disk
            // begin (those the server already has land on their first copy).
            let first_seq = outbox
                .segments
                .iter()
                .find_map(|segment| segment.first_seq)
                .unwrap_or(outbox.next_seq);
            outbox.epoch = Epoch::new_random(first_seq, meta.epoch.id);
        }
        report.epoch = outbox.epoch;
        report.recovered_records = outbox.depth().records;
        outbox.store_meta()?;
        outbox.reserve.refill(outbox.durable())?;
        Ok((outbox, report))
    }

    /// Writes `payload` as the next record and returns its sequence number. Flushes as the
    /// [`FsyncPolicy`] says. May evict the oldest segment (see [`DropReport`]), also when the
    /// disk is full (see the module docs).
    pub fn append(&mut self, payload: &[u8]) -> Result<Seq, OutboxError> {
        let max = self.config.max_payload_len();
        if payload.len() > max {
            return Err(OutboxError::RecordTooLarge {
                len: payload.len(),
                max,
            });
        }
        loop {
            match self.append_record(payload) {
                // Each round evicts one segment, so this ends when nothing is left to evict.
                Err(err) if err.is_storage_full() && self.disk_bytes > 0 => self.evict_oldest()?,
                result => return result,
            }
        }
    }

    fn append_record(&mut self, payload: &[u8]) -> Result<Seq, OutboxError> {
        let record_len = (RECORD_HEADER_LEN + payload.len()) as u64;
        if self.needs_new_segment(record_len) {
            self.start_segment()?;
        }
        while self.disk_bytes + record_len > self.config.max_bytes && self.segments.len() > 1 {
            self.evict_oldest()?;
        }
        let seq = self.next_seq;
        self.write_record(seq, payload)?;
        self.next_seq += 1;
        self.unsynced_appends += 1;
        if self.sync_due() {
            self.sync()?;
        }
        Ok(seq)
    }

    /// Marks everything up to and including `watermark` as delivered and deletes the
    /// segments it fully covers. A watermark at or below [`last_acked`](Self::last_acked)
    /// changes nothing (a late or repeated ack). A watermark above the last appended
    /// sequence number is refused with [`OutboxError::AckBeyondAppended`].
    pub fn ack(&mut self, watermark: Seq) -> Result<(), OutboxError> {
        let last_appended = self.next_seq - 1;
        if watermark > last_appended {
            return Err(OutboxError::AckBeyondAppended {
                watermark,
                last_appended,
            });
        }
        if watermark <= self.acked {
            return Ok(());
        }
        self.acked = watermark;
        self.forget_delivered_drops(watermark);
        // State first: a crash before the deletes below only leaves files that the next
        // open recognises as covered and removes.
        self.store_meta()?;
        self.remove_covered_segments()?;
        self.recount_front_segment()
    }

    /// Takes numbers the server says it handled above its watermark (the ack's
    /// `handled_above`) out of the drop reports not yet sent: records evicted after they were
    /// delivered, while a hole below them kept the watermark back, were not lost. Persisted
    /// when a report changed.
    pub fn note_handled(
        &mut self,
        ranges: impl IntoIterator<Item = (Seq, Seq)>,
    ) -> Result<(), OutboxError> {
        let before = self.drops.clone();
        for (first, last) in ranges {
            let unsent = self.drops.split_off(self.frozen_drops);
            let mut to_come = unsent.len();
            let mut kept = Vec::with_capacity(unsent.len() + 1);
            for report in unsent {
                to_come -= 1;
                match report.without(first, last) {
                    (Some(below), Some(above))
                        if self.frozen_drops + kept.len() + 2 + to_come > MAX_DROP_REPORTS =>
                    {
                        // No room for one more report: keep the range, count exactly.
                        kept.push(DropReport {
                            count: below.count + above.count,
                            ..report
                        });
                    }
                    (below, above) => kept.extend(below.into_iter().chain(above)),
                }
            }
            self.drops.append(&mut kept);
        }
        if self.drops == before {
            return Ok(());
        }
        self.store_meta()
    }

    /// The sequence space the outbox numbers in.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Starts a new sequence space from the first unacknowledged record (or the next one to
    /// be appended): for when the server acknowledged numbers this outbox never assigned (see
    /// [`OutboxError::AckBeyondAppended`]). Persisted before it returns. Returns the epoch left
    /// behind and the new one.
    pub fn start_epoch(&mut self) -> Result<(Epoch, Epoch), OutboxError> {
        let previous = self.epoch;
        self.epoch = Epoch::new_random(self.skip_through() + 1, previous.id);
        if let Err(err) = self.store_meta() {
            self.epoch = previous;
            return Err(err);
        }
        Ok((previous, self.epoch))
    }

    /// Unacknowledged records with a sequence number above `after` (or above the last ack
    /// when `None`), oldest first: what to publish after a (re)connect. Flushes pending
    /// appends first, so nothing leaves the device that a power loss could take back.
    pub fn pending(&mut self, after: Option<Seq>) -> Result<Pending<'_>, OutboxError> {
        self.sync()?;
        let floor = after.unwrap_or(0).max(self.skip_through());
        Ok(Pending {
            segments: self.segments.iter(),
            current: None,
            floor,
        })
    }

    /// Unacknowledged records and their bytes on disk.
    pub fn depth(&self) -> Depth {
        self.segments
            .iter()
            .map(Segment::unsent)
            .fold(Depth::default(), |total, unsent| Depth {
                records: total.records + unsent.records,
                bytes: total.bytes + unsent.bytes,
            })
    }

    /// Bytes of all segment files (acked records still inside a segment included); never
    /// more than `max_bytes`.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// The highest acknowledged sequence number, if any ack arrived yet.
    pub fn last_acked(&self) -> Option<Seq> {
        (self.acked > 0).then_some(self.acked)
    }

    /// The sequence number the next append will get.
    pub fn next_seq(&self) -> Seq {
        self.next_seq
    }

    /// Drop reports not yet taken (persisted: they survive restarts).
    pub fn drop_reports(&self) -> &[DropReport] {
        &self.drops
    }

    /// Returns the drop reports and forgets them (persisted). If the process dies before
    /// the caller has made them durable elsewhere they are lost: prefer
    /// [`append_drop_events`](Self::append_drop_events).
    pub fn take_drop_reports(&mut self) -> Result<Vec<DropReport>, OutboxError> {
        if self.drops.is_empty() {
            return Ok(Vec::new());
        }
        let taken = std::mem::take(&mut self.drops);
        self.store_meta()?;
        Ok(taken)
    }

    /// Turns each pending drop report into a record of this outbox (`encode` builds the
    /// agent event), so the gap notice travels with the same guarantees as data. The
    /// reports are forgotten only after those records are flushed; a crash in between
    /// sends a report twice, never zero times. A report whose record a later one's append
    /// evicted is kept. Returns the sequence numbers of the new records still in the outbox.
    pub fn append_drop_events(
        &mut self,
        mut encode: impl FnMut(&DropReport) -> Vec<u8>,
    ) -> Result<Vec<Seq>, OutboxError> {
        if self.drops.is_empty() {
            return Ok(Vec::new());
        }
        let reports = self.drops.clone();
        self.frozen_drops = reports.len();
        let appended = reports
            .iter()
            .map(|report| self.append(&encode(report)))
            .collect::<Result<Vec<_>, _>>();
        let appended = match appended.and_then(|seqs| self.sync().map(|()| seqs)) {
            Ok(seqs) => seqs,
            Err(err) => {
                self.frozen_drops = 0;
                return Err(err);
            }
        };
        // An event that a later event's append evicted (a full outbox or disk) never leaves
        // the device: its report stays, to be sent again, and the eviction reported the event's
        // own number. Evictions go oldest first, so those events are the first ones.
        let evicted = appended
            .iter()
            .take_while(|seq| **seq <= self.evicted_through)
            .count();
        self.drops.drain(evicted..self.frozen_drops);
        self.frozen_drops = 0;
        self.store_meta()?;
        Ok(appended[evicted..].to_vec())
    }

    /// Flushes appended records to stable storage now, whatever the policy.
    pub fn sync(&mut self) -> Result<(), OutboxError> {
        if self.unsynced_appends == 0 {
            return Ok(());
        }
        if self.config.fsync != FsyncPolicy::Never {
            if let (Some(file), Some(segment)) = (&self.active, self.segments.back()) {
                file.sync_data().at(&segment.path)?;
            }
        }
        self.unsynced_appends = 0;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Flushes and closes the outbox (dropping it without `close` loses at most what the
    /// fsync policy allows).
    pub fn close(mut self) -> Result<(), OutboxError> {
        self.sync()
    }

    /// Records at or below this are delivered or dropped.
    fn skip_through(&self) -> Seq {
        self.acked.max(self.evicted_through)
    }

    fn durable(&self) -> bool {
        self.config.fsync != FsyncPolicy::Never
    }

    fn sync_due(&self) -> bool {
        match self.config.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::EveryN(n) => self.unsynced_appends >= n.max(1),
            FsyncPolicy::Interval(interval) => self.last_sync.elapsed() >= interval,
            FsyncPolicy::Never => false,
        }
    }

    /// Replaces the state file; on a full disk, releases the reserve and tries once more.
    fn store_meta(&mut self) -> Result<(), OutboxError> {
        let meta = Meta {
            acked: self.acked,
            evicted_through: self.evicted_through,
            lost_through: self.lost_through,
            next_seq: self.next_seq,
            drops: self.drops.clone(),
            epoch: self.epoch,
        };
        match meta::store(&self.dir, &meta, self.durable()) {
            Err(err) if err.is_storage_full() && self.reserve.release()? => {
                meta::store(&self.dir, &meta, self.durable())
            }
            result => result,
        }
    }

    /// Sorts the directory into segment paths (in sequence order) and everything else.
    fn list_segments(&self, report: &mut OpenReport) -> Result<Vec<PathBuf>, OutboxError> {
        let mut segments = Vec::new();
        for entry in fs::read_dir(&self.dir).at(&self.dir)? {
            let path = entry.at(&self.dir)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match name {
                META_FILE | LOCK_FILE | RESERVE_FILE => {}
                // A meta update interrupted before its rename: the old file is intact.
                META_TMP_FILE => fs::remove_file(&path).at(&path)?,
                _ if is_segment_name(name) && path.is_file() => segments.push(path),
                _ => report.ignored_files.push(path),
            }
        }
        segments.sort();
        report.ignored_files.sort();
        Ok(segments)
    }

    /// Scans every segment, cuts torn or corrupt parts, deletes empty or covered segments.
    /// Returns the highest sequence number found on disk (0 if none).
    fn recover_segments(
        &mut self,
        paths: Vec<PathBuf>,
        report: &mut OpenReport,
    ) -> Result<Seq, OutboxError> {
        let mut prev_seq = 0;
        let count = paths.len();
        for (index, path) in paths.into_iter().enumerate() {
            let bytes = fs::read(&path).at(&path)?;
            let scan = record::scan_segment(&bytes, prev_seq, self.skip_through());
            let cut_bytes = bytes.len() as u64 - scan.valid_len;
            if cut_bytes > 0 {
                truncate(&path, scan.valid_len, self.durable())?;
            }
            self.narrow_open_corruption_report(scan.first_seq);
            let is_last = index + 1 == count;
            match scan.end {
                ScanEnd::Clean => {}
                ScanEnd::Torn => {
                    report.truncated_bytes += cut_bytes;
                    if is_last && cut_bytes > 0 {
                        let tail = &bytes[scan.valid_len as usize..];
                        self.note_torn(tail, scan.last_seq.unwrap_or(prev_seq));
                    }
                }
                ScanEnd::Corrupt => {
                    report.corrupt_segments.push(CorruptSegment {
                        path: path.clone(),
                        offset: scan.valid_len,
                        cut_bytes,
                    });
                    self.note_corruption(scan.last_seq.unwrap_or(prev_seq), cut_bytes, is_last);
                }
            }
            prev_seq = scan.last_seq.unwrap_or(prev_seq);
            self.next_seq = self.next_seq.max(prev_seq + 1);
            if scan.records == 0 || scan.records == scan.skipped_records {
                fs::remove_file(&path).at(&path)?;
                report.removed_segments += 1;
            } else {
                self.push_scanned(path, &scan);
            }
        }
        if report.removed_segments > 0 && self.durable() {
            sync_dir(&self.dir)?;
        }
        Ok(prev_seq)
    }

    /// Sequence numbers below the floor saved in the state file were assigned; those
    /// neither on disk nor acked nor reported were lost to power loss before a flush.
    fn note_unflushed(&mut self, last_on_disk: Seq, saved_next_seq: Seq) {
        let accounted_through = last_on_disk.max(self.skip_through()).max(self.lost_through);
        if saved_next_seq > accounted_through + 1 {
            let (first_seq, last_seq) = (accounted_through + 1, saved_next_seq - 1);
            self.record_drop(DropReport {
                reason: DropReason::Unflushed,
                count: last_seq + 1 - first_seq,
                first_seq,
                last_seq,
            });
            self.lost_through = last_seq;
        }
    }

    /// Records the torn record at the end of the last segment, after `last_good`, as dropped
    /// and keeps its number from being assigned again. Its number is in its header when the
    /// header survived whole and names a number the outbox could have given out; otherwise
    /// it is the one after `last_good` or after the numbers already reported lost, whichever is
    /// higher (the next append skips those). A record already delivered or evicted is not
    /// reported.
    fn note_torn(&mut self, tail: &[u8], last_good: Seq) {
        let unaccounted = last_good.max(self.lost_through) + 1;
        // No append was given more than that or the state file's floor (which includes every
        // jump past a lost number). A header naming more is damage (its
        // checksum cannot be checked without the payload); believing it would make the report,
        // and every number after it, jump arbitrarily far.
        let most = unaccounted.max(self.next_seq);
        let from_header = tail
            .first_chunk::<RECORD_HEADER_LEN>()
            .map(|header| RecordHeader::parse(header).seq)
            .filter(|seq| *seq > last_good && *seq <= most);
        let seq = from_header.unwrap_or(unaccounted);
        // Delivered, evicted, or already reported at an earlier open.
        if seq <= self.skip_through() || seq <= self.lost_through {
            return;
        }
        self.record_drop(DropReport {
            reason: DropReason::Torn,
            count: 1,
            first_seq: seq,
            last_seq: seq,
        });
        self.next_seq = self.next_seq.max(seq + 1);
        self.lost_through = self.lost_through.max(seq);
    }

    /// Records the sequence numbers lost to corruption after `last_good`. For a middle
    /// segment they end where the next segment starts, which is only known after the next
    /// scan: the report is made with the upper bound and narrowed by
    /// `narrow_open_corruption_report`. For the last segment the bound stays, and no
    /// number in it is assigned again.
    fn note_corruption(&mut self, last_good: Seq, cut_bytes: u64, is_last: bool) {
        let most_records = cut_bytes.div_ceil(RECORD_HEADER_LEN as u64).max(1);
        let first_seq = last_good + 1;
        let last_seq = last_good + most_records;
        self.record_drop(DropReport {
            reason: DropReason::Corrupted,
            count: most_records,
            first_seq,
            last_seq,
        });
        if is_last {
            self.next_seq = self.next_seq.max(last_seq + 1);
            self.lost_through = self.lost_through.max(last_seq);
        }
    }

    fn push_scanned(&mut self, path: PathBuf, scan: &SegmentScan) {
        self.disk_bytes += scan.valid_len;
        self.segments.push_back(Segment {
            path,
            bytes: scan.valid_len,
            records: scan.records,
            first_seq: scan.first_seq,
            last_seq: scan.last_seq,
            skipped_records: scan.skipped_records,
            skipped_bytes: scan.skipped_bytes,
        });
    }

    /// A corruption report made for an earlier segment ends just before the first record
    /// that survived after it.
    fn narrow_open_corruption_report(&mut self, next_first: Option<Seq>) {
        let (Some(next_first), Some(last)) = (next_first, self.drops.last_mut()) else {
            return;
        };
        if last.reason == DropReason::Corrupted && last.last_seq >= next_first {
            let never_lost = last.last_seq + 1 - next_first;
            last.last_seq = next_first - 1;
            last.count = last.count.saturating_sub(never_lost);
            if last.count == 0 || last.last_seq < last.first_seq {
                self.drops.pop();
            }
        }
    }

    fn needs_new_segment(&self, record_len: u64) -> bool {
        match self.segments.back() {
            None => true,
            Some(segment) => segment.bytes + record_len > self.config.segment_bytes,
        }
    }

    /// Seals the current segment and creates the next one, named by the next sequence number.
    fn start_segment(&mut self) -> Result<(), OutboxError> {
        self.sync()?;
        let path = self.dir.join(segment_name(self.next_seq));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .at(&path)?;
        if self.durable() {
            sync_dir(&self.dir)?;
        }
        self.active = Some(file);
        self.segments.push_back(Segment {
            path,
            bytes: 0,
            records: 0,
            first_seq: None,
            last_seq: None,
            skipped_records: 0,
            skipped_bytes: 0,
        });
        Ok(())
    }

    fn write_record(&mut self, seq: Seq, payload: &[u8]) -> Result<(), OutboxError> {
        if self.active.is_none() {
            self.reopen_last_segment()?;
        }
        let (Some(file), Some(segment)) = (self.active.as_mut(), self.segments.back_mut()) else {
            unreachable!("append created a segment before writing");
        };
        self.encode_buf.clear();
        record::encode_into(&mut self.encode_buf, seq, payload);
        if let Err(err) = file.write_all(&self.encode_buf) {
            // Take back a partial write so the file stays a sequence of whole records, and
            // move the write position back with it (a segment created by `start_segment` is
            // not in append mode: the next write would leave a hole of zeros).
            let _ = file.set_len(segment.bytes);
            let _ = file.seek(SeekFrom::Start(segment.bytes));
            return Err(err).at(&segment.path);
        }
        let len = self.encode_buf.len() as u64;
        segment.bytes += len;
        segment.records += 1;
        segment.first_seq.get_or_insert(seq);
        segment.last_seq = Some(seq);
        self.disk_bytes += len;
        Ok(())
    }

    /// After open, appends continue in the last segment if it has room.
    fn reopen_last_segment(&mut self) -> Result<(), OutboxError> {
        let segment = self.segments.back().expect("a segment exists");
        let file = OpenOptions::new()
            .append(true)
            .open(&segment.path)
            .at(&segment.path)?;
        self.active = Some(file);
        Ok(())
    }

    /// Deletes the oldest segment to make room, after persisting the report of what it held.
    fn evict_oldest(&mut self) -> Result<(), OutboxError> {
        let segment = self.segments.front().expect("caller checked");
        let lost = segment.unsent();
        let last_seq = segment.last_seq.unwrap_or(self.evicted_through);
        if lost.records > 0 {
            let first_seq = segment
                .first_seq
                .unwrap_or(last_seq)
                .max(self.skip_through() + 1);
            self.record_drop(DropReport {
                reason: DropReason::OutboxFull,
                count: lost.records,
                first_seq,
                last_seq,
            });
        }
        self.evicted_through = self.evicted_through.max(last_seq);
        self.store_meta()?;
        let segment = self.segments.pop_front().expect("caller checked");
        if self.segments.is_empty() {
            self.active = None;
        }
        self.delete_segment(&segment)?;
        if self.durable() {
            sync_dir(&self.dir)?;
        }
        // A no-op unless a full disk took the reserve; the deleted segment freed its space.
        self.reserve.refill(self.durable())
    }

    /// Every number up to an ack reached the server (it acks only what it committed or refused
    /// for good), so a report not yet sent no longer counts them: a record evicted or torn
    /// after it was delivered but before its ack came back was not lost. This keeps the count
    /// of an outbox-full report exact when a full outbox or disk evicts records in flight.
    fn forget_delivered_drops(&mut self, watermark: Seq) {
        let mut unsent = self.drops.split_off(self.frozen_drops);
        unsent.retain_mut(|report| report.forget_through(watermark));
        self.drops.append(&mut unsent);
    }

    /// Adds a drop report, extending the last one when the ranges touch.
    fn record_drop(&mut self, report: DropReport) {
        if self.drops.len() > self.frozen_drops {
            if let Some(last) = self.drops.last_mut() {
                if last.reason == report.reason && last.last_seq + 1 >= report.first_seq {
                    last.count += report.count;
                    last.last_seq = report.last_seq;
                    return;
                }
            }
        }
        self.drops.push(report);
        if self.drops.len() > MAX_DROP_REPORTS && self.frozen_drops == 0 {
            // Keep the count exact; the merged range also spans what was delivered between.
            let second = self.drops.remove(1);
            let first = &mut self.drops[0];
            first.count += second.count;
            first.last_seq = second.last_seq;
        }
    }

    fn remove_covered_segments(&mut self) -> Result<(), OutboxError> {
        let skip_through = self.skip_through();
        let mut removed = false;
        while let Some(segment) = self.segments.front() {
            if segment.last_seq.is_some_and(|last| last > skip_through) {
                break;
            }
            let segment = self.segments.pop_front().expect("front exists");
            if self.segments.is_empty() {
                self.active = None;
            }
            self.delete_segment(&segment)?;
            removed = true;
        }
        if !removed {
            return Ok(());
        }
        if self.durable() {
            sync_dir(&self.dir)?;
        }
        self.reserve.refill(self.durable())
    }

    fn delete_segment(&mut self, segment: &Segment) -> Result<(), OutboxError> {
        fs::remove_file(&segment.path).at(&segment.path)?;
        self.disk_bytes -= segment.bytes;
        Ok(())
    }

    /// After an ack that lands inside the oldest segment, counts how much of it is covered.
    fn recount_front_segment(&mut self) -> Result<(), OutboxError> {
        let skip_through = self.skip_through();
        let Some(segment) = self.segments.front_mut() else {
            return Ok(());
        };
        if segment.first_seq.is_some_and(|first| first > skip_through) {
            return Ok(());
        }
        let bytes = read_prefix(&segment.path, segment.bytes)?;
        let scan = record::scan_segment(&bytes, 0, skip_through);
        segment.skipped_records = scan.skipped_records;
        segment.skipped_bytes = scan.skipped_bytes;
        Ok(())
    }
}

/// Iterator over unacknowledged records, returned by [`Outbox::pending`].
#[derive(Debug)]
pub struct Pending<'a> {
    segments: std::collections::vec_deque::Iter<'a, Segment>,
    current: Option<SegmentReader<'a>>,
    floor: Seq,
}

#[derive(Debug)]
struct SegmentReader<'a> {
    path: &'a Path,
    reader: BufReader<File>,
    offset: u64,
    end: u64,
}

impl Iterator for Pending<'_> {
    type Item = Result<Record, OutboxError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let segment = self
                    .segments
                    .by_ref()
                    .find(|s| s.last_seq.is_some_and(|last| last > self.floor))?;
                match SegmentReader::open(segment) {
                    Ok(reader) => self.current = Some(reader),
                    Err(err) => return Some(Err(err)),
                }
            }
            let reader = self.current.as_mut().expect("set above");
            match reader.next_record() {
                Ok(Some(record)) if record.seq <= self.floor => continue,
                Ok(Some(record)) => return Some(Ok(record)),
                Ok(None) => self.current = None,
                Err(err) => {
                    self.current = None;
                    return Some(Err(err));
                }
            }
        }
    }
}

impl<'a> SegmentReader<'a> {
    fn open(segment: &'a Segment) -> Result<Self, OutboxError> {
        let mut file = File::open(&segment.path).at(&segment.path)?;
        file.seek(SeekFrom::Start(segment.skipped_bytes))
            .at(&segment.path)?;
        Ok(Self {
            path: &segment.path,
            reader: BufReader::new(file),
            offset: segment.skipped_bytes,
            end: segment.bytes,
        })
    }

    fn next_record(&mut self) -> Result<Option<Record>, OutboxError> {
        if self.offset >= self.end {
            return Ok(None);
        }
        let corrupt = || OutboxError::CorruptRecord {
            path: self.path.to_owned(),
            offset: self.offset,
        };
        let mut header_bytes = [0u8; RECORD_HEADER_LEN];
        self.reader.read_exact(&mut header_bytes).at(self.path)?;
        let header = RecordHeader::parse(&header_bytes);
        let record_len = RECORD_HEADER_LEN as u64 + u64::from(header.len);
        if self.offset + record_len > self.end {
            return Err(corrupt());
        }
        let mut payload = vec![0u8; header.len as usize];
        self.reader.read_exact(&mut payload).at(self.path)?;
        if !header.matches(&payload) {
            return Err(corrupt());
        }
        self.offset += record_len;
        Ok(Some(Record {
            seq: header.seq,
            payload,
        }))
    }
}

fn segment_name(first_seq: Seq) -> String {
    format!("{first_seq:020}.{SEGMENT_EXTENSION}")
}

fn is_segment_name(name: &str) -> bool {
    name.strip_suffix(".seg")
        .is_some_and(|stem| stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
}

fn lock_dir(dir: &Path) -> Result<Flock<File>, OutboxError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .at(&path)?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| OutboxError::Locked(dir.to_owned()))
}

fn read_meta(dir: &Path) -> Result<(Meta, MetaStatus), OutboxError> {
    Ok(match meta::load(dir)? {
        Loaded::Valid(meta) => (meta, MetaStatus::Loaded),
        Loaded::Missing => (Meta::default(), MetaStatus::Created),
        Loaded::Damaged(reason) => (Meta::default(), MetaStatus::Damaged(reason)),
    })
}

fn truncate(path: &Path, len: u64, durable: bool) -> Result<(), OutboxError> {
    let file = OpenOptions::new().write(true).open(path).at(path)?;
    file.set_len(len).at(path)?;
    if durable {
        file.sync_all().at(path)?;
    }
    Ok(())
}

fn read_prefix(path: &Path, len: u64) -> Result<Vec<u8>, OutboxError> {
    let mut bytes = Vec::new();
    File::open(path)
        .at(path)?
        .take(len)
        .read_to_end(&mut bytes)
        .at(path)?;
    Ok(bytes)
}

/// Makes a created, renamed or deleted directory entry durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), OutboxError> {
    File::open(dir).at(dir)?.sync_all().at(dir)
}
