//! Space held back on the outbox's file system for the state file.
//!
//! When the disk under the state directory fills up (another program, logs, a small SD card),
//! an append fails with "no space left". The outbox then makes room the way it does when it
//! reaches `max_bytes`: it evicts its oldest segment and reports the records in it as dropped
//! (outbox full). That report must be persisted *before* the segment is deleted, and persisting
//! it rewrites the state file, which needs a little free space of its own: on a completely full
//! disk it would fail, and the outbox could neither store nor evict. The reserve is a small file
//! of zeros written while there is space; releasing it (deleting it) frees enough for the state
//! file, and it is written again as soon as eviction or an ack has freed space.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use super::{OutboxError, ResultExt};

/// The reserve's name in the outbox directory.
pub(crate) const RESERVE_FILE: &str = "reserve";
/// How much it holds: three times the largest state file (64 drop reports of under 80 bytes
/// each, and the fixed lines), rounded up to whole 4 KiB pages and blocks.
pub(crate) const RESERVE_BYTES: u64 = 16 * 1024;
const CHUNK: usize = 4096;

/// The reserve file of one outbox directory.
#[derive(Debug)]
pub(crate) struct Reserve {
    path: PathBuf,
    /// Bytes the file holds now (0: absent).
    held: u64,
}

impl Reserve {
    /// The reserve of `dir`, as found there (written by [`refill`](Self::refill)).
    pub(crate) fn find(dir: &Path) -> Self {
        let path = dir.join(RESERVE_FILE);
        let held = fs::metadata(&path).map_or(0, |m| m.len());
        Self { path, held }
    }

    /// Writes the reserve up to [`RESERVE_BYTES`], as far as the disk allows: a partial reserve
    /// is kept (it still frees what it holds) and completed at a later call. Fails only on an
    /// I/O error other than a full disk.
    pub(crate) fn refill(&mut self, durable: bool) -> Result<(), OutboxError> {
        if self.held >= RESERVE_BYTES {
            return Ok(());
        }
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .at(&self.path)?;
        let zeros = [0u8; CHUNK];
        while self.held < RESERVE_BYTES {
            let len = CHUNK.min((RESERVE_BYTES - self.held) as usize);
            match file.write_all(&zeros[..len]) {
                Ok(()) => self.held += len as u64,
                Err(err) if is_storage_full(&err) => {
                    // A short write may have left part of a chunk: keep the file whole chunks.
                    file.set_len(self.held).at(&self.path)?;
                    break;
                }
                Err(err) => return Err(err).at(&self.path),
            }
        }
        // The blocks are allocated by the writes; the flush makes the length survive a power
        // loss, so a reserve found on open holds what its length says.
        if durable {
            file.sync_all().at(&self.path)?;
        }
        Ok(())
    }

    /// Deletes the reserve so its space can hold the state file. Returns whether it freed any.
    pub(crate) fn release(&mut self) -> Result<bool, OutboxError> {
        if self.held == 0 {
            return Ok(false);
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).at(&self.path),
        }
        self.held = 0;
        Ok(true)
    }
}

/// Whether an I/O error means the file system (or the user's quota) has no room.
pub(crate) fn is_storage_full(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
