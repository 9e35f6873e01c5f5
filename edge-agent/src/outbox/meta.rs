//! The outbox's small state file (`outbox.meta`): ack watermark, eviction watermark,
//! sequence floor and undelivered drop reports. Replaced atomically (write a temporary
//! file, fsync it, rename over the old one, fsync the directory), and checksummed so a
//! damaged file is recognised rather than half-believed.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::Path;

use super::{DropReason, DropReport, Epoch, OutboxError, ResultExt, Seq};

pub(crate) const META_FILE: &str = "outbox.meta";
pub(crate) const META_TMP_FILE: &str = "outbox.meta.tmp";
const MAGIC_LINE: &str = "fleet-outbox-meta v1";

/// Everything the outbox cannot derive from its segments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Highest sequence number the server acknowledged.
    pub acked: Seq,
    /// Highest sequence number removed by eviction or lost to corruption.
    pub evicted_through: Seq,
    /// Highest sequence number already reported lost (corrupt or unflushed tail).
    pub lost_through: Seq,
    /// No sequence number below this is ever assigned again (it was in use when the file
    /// was written), so numbers stay unique even when every segment is gone.
    pub next_seq: Seq,
    /// Gaps not yet handed to the server.
    pub drops: Vec<DropReport>,
    /// The sequence space: its id (0 in files from before epochs, which have no `epoch`
    /// line) and its first sequence number.
    pub epoch: Epoch,
}

/// What [`load`] found.
#[derive(Debug)]
pub(crate) enum Loaded {
    Missing,
    Valid(Meta),
    Damaged(String),
}

/// Reads `dir/outbox.meta`. Only I/O failures other than "not found" are errors.
pub(crate) fn load(dir: &Path) -> Result<Loaded, OutboxError> {
    let path = dir.join(META_FILE);
    match fs::read(&path) {
        Ok(bytes) => Ok(match String::from_utf8(bytes) {
            Ok(text) => parse(&text).map_or_else(Loaded::Damaged, Loaded::Valid),
            Err(_) => Loaded::Damaged("not UTF-8".to_owned()),
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Loaded::Missing),
        Err(err) => Err(err).at(&path),
    }
}

/// Replaces `dir/outbox.meta` atomically; `durable` adds the fsyncs.
pub(crate) fn store(dir: &Path, meta: &Meta, durable: bool) -> Result<(), OutboxError> {
    let tmp = dir.join(META_TMP_FILE);
    let path = dir.join(META_FILE);
    let mut file = File::create(&tmp).at(&tmp)?;
    file.write_all(render(meta).as_bytes()).at(&tmp)?;
    if durable {
        file.sync_all().at(&tmp)?;
    }
    drop(file);
    fs::rename(&tmp, &path).at(&path)?;
    if durable {
        super::sync_dir(dir)?;
    }
    Ok(())
}

fn render(meta: &Meta) -> String {
    let mut body = format!(
        "{MAGIC_LINE}\nacked {}\nevicted_through {}\nlost_through {}\nnext_seq {}\n",
        meta.acked, meta.evicted_through, meta.lost_through, meta.next_seq
    );
    let _ = writeln!(body, "epoch {} {}", meta.epoch.id, meta.epoch.first_seq);
    for drop in &meta.drops {
        let _ = writeln!(
            body,
            "drop {} {} {} {}",
            drop.reason.as_str(),
            drop.count,
            drop.first_seq,
            drop.last_seq
        );
    }
    let crc = crc32fast::hash(body.as_bytes());
    let _ = writeln!(body, "crc32 {crc:08x}");
    body
}

fn parse(text: &str) -> Result<Meta, String> {
    let (body, crc_line) = split_checksum(text)?;
    let expected = crc_line
        .strip_prefix("crc32 ")
        .and_then(|hex| u32::from_str_radix(hex.trim_end(), 16).ok())
        .ok_or("missing crc32 line")?;
    if crc32fast::hash(body.as_bytes()) != expected {
        return Err("checksum mismatch".to_owned());
    }
    let mut lines = body.lines();
    if lines.next() != Some(MAGIC_LINE) {
        return Err("unknown format".to_owned());
    }
    let mut meta = Meta::default();
    for line in lines {
        parse_line(line, &mut meta).ok_or_else(|| format!("bad line {line:?}"))?;
    }
    Ok(meta)
}

/// Splits off the last line (the checksum) from the body it covers.
fn split_checksum(text: &str) -> Result<(&str, &str), String> {
    let trimmed = text.strip_suffix('\n').ok_or("truncated")?;
    let cut = trimmed.rfind('\n').ok_or("truncated")? + 1;
    Ok(trimmed.split_at(cut))
}

fn parse_line(line: &str, meta: &mut Meta) -> Option<()> {
    let mut fields = line.split(' ');
    let key = fields.next()?;
    let mut number = || fields.next()?.parse::<u64>().ok();
    match key {
        "acked" => meta.acked = number()?,
        "evicted_through" => meta.evicted_through = number()?,
        "lost_through" => meta.lost_through = number()?,
        "next_seq" => meta.next_seq = number()?,
        "epoch" => {
            let id = number()?;
            meta.epoch = Epoch {
                id,
                first_seq: number()?,
            };
        }
        "drop" => {
            let reason = DropReason::from_str(fields.next()?)?;
            let mut number = || fields.next()?.parse::<u64>().ok();
            let (count, first_seq, last_seq) = (number()?, number()?, number()?);
            meta.drops.push(DropReport {
                reason,
                count,
                first_seq,
                last_seq,
            });
        }
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Meta {
        Meta {
            acked: 41,
            evicted_through: 7,
            lost_through: 3,
            next_seq: 99,
            drops: vec![DropReport {
                reason: DropReason::OutboxFull,
                count: 3,
                first_seq: 5,
                last_seq: 7,
            }],
            epoch: Epoch {
                id: u64::MAX,
                first_seq: 12,
            },
        }
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &sample(), true).unwrap();
        match load(dir.path()).unwrap() {
            Loaded::Valid(meta) => assert_eq!(meta, sample()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_from_before_epochs_is_epoch_zero_from_seq_one() {
        let mut body =
            format!("{MAGIC_LINE}\nacked 41\nevicted_through 7\nlost_through 3\nnext_seq 99\n");
        let crc = crc32fast::hash(body.as_bytes());
        let _ = writeln!(body, "crc32 {crc:08x}");
        let meta = parse(&body).unwrap();
        assert_eq!(meta.epoch, Epoch::default());
        assert_eq!((meta.acked, meta.next_seq), (41, 99));
    }

    #[test]
    fn edited_file_is_reported_damaged() {
        let text = render(&sample()).replace("acked 41", "acked 42");
        assert_eq!(parse(&text), Err("checksum mismatch".to_owned()));
        assert!(parse("").is_err());
        assert!(parse(&render(&sample())[..20]).is_err());
    }
}
