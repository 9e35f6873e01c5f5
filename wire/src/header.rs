//! The sequence header: a small fixed prefix before a [`Batch`]'s CBOR that names the sequence
//! numbers the message accounts for, so that a message whose body does not decode can still be
//! refused for good and its sequence numbers marked handled.
//!
//! ```text
//! offset  size  field
//!      0     2  magic "FP" (0x46 0x50)
//!      2     1  header version, 1
//!      3     8  epoch id          (u64, big endian)   Batch.e.i, 0 for epoch 0
//!     11     8  epoch first seq   (u64, big endian)   Batch.e.f, 1 for epoch 0
//!     19     8  first seq         (u64, big endian)
//!     27     8  last seq          (u64, big endian)
//!     35        the batch's CBOR, as encode_batch writes it
//! ```
//!
//! A batch's CBOR always starts with a map (first byte 0xA0..=0xBF), never with 0x46 (a CBOR
//! byte string), so a reader tells the two apart by the first two bytes: messages without the
//! header, as agents before it send them, are read as before.
//!
//! The header says: every sequence number from `first_seq` to `last_seq` (inclusive) of that
//! epoch is either in this message or will never be sent by this device. The agent's batches
//! keep to it (a batch is a run of consecutive outbox records of one kind; the numbers it skips
//! are records it could not read back and will never send).
//!
//! Bound: `1 <= first_seq <= last_seq < 2^63` and at most
//! [`MAX_RECORDS_PER_BATCH`] numbers (`last_seq - first_seq < 1024`). A header outside it is
//! refused ([`DecodeError::BadHeader`]) and attributes nothing. So a header can mark handled no
//! more than a valid batch of 1,024 records could, and nothing a valid batch could not (an
//! `OutboxOverflow` event already declares any range of its own device's numbers lost).
//!
//! Decoding a headed message ([`decode_batch_with_limit`](crate::decode_batch_with_limit))
//! checks the header before the size limit, so even an oversize message is attributed; then the
//! body as before; then that the body agrees with the header (same epoch, every record's seq
//! inside `first_seq..=last_seq`, at least one record). Any failure after a valid header is an
//! [`Undecodable`] that still carries the header.

use crate::limits::MAX_RECORDS_PER_BATCH;
use crate::{Batch, DecodeError, Epoch};

/// The first two bytes of a headed message.
pub const HEADER_MAGIC: [u8; 2] = *b"FP";
/// The header version this build writes and reads.
pub const HEADER_VERSION: u8 = 1;
/// The header's length in bytes.
pub const HEADER_LEN: usize = 35;

/// The sequence numbers one message accounts for (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqHeader {
    /// The epoch the numbers count in.
    pub epoch: Epoch,
    /// The lowest sequence number the message accounts for.
    pub first_seq: u64,
    /// The highest sequence number the message accounts for.
    pub last_seq: u64,
}

impl SeqHeader {
    /// The header of `batch`: its epoch and its first and last records' seqs. None for an empty
    /// batch (it accounts for nothing) or one whose seqs the header could not carry (outside the
    /// bound in the [module docs](self)); such a batch goes without a header.
    pub fn of(batch: &Batch) -> Option<Self> {
        let header = Self {
            epoch: batch.epoch(),
            first_seq: batch.records.first()?.seq,
            last_seq: batch.records.last()?.seq,
        };
        header.check().ok()?;
        Some(header)
    }

    /// How many sequence numbers it accounts for (at least one).
    pub fn count(&self) -> u64 {
        self.last_seq - self.first_seq + 1
    }

    fn check(&self) -> Result<(), DecodeError> {
        if self.first_seq == 0 || self.first_seq > self.last_seq || self.last_seq > i64::MAX as u64
        {
            return Err(DecodeError::BadHeader(format!(
                "sequence range {}..={} is not 1 <= first <= last < 2^63",
                self.first_seq, self.last_seq
            )));
        }
        if self.last_seq - self.first_seq >= MAX_RECORDS_PER_BATCH as u64 {
            return Err(DecodeError::BadHeader(format!(
                "sequence range {}..={} spans more than {MAX_RECORDS_PER_BATCH} numbers",
                self.first_seq, self.last_seq
            )));
        }
        Ok(())
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&HEADER_MAGIC);
        out.push(HEADER_VERSION);
        for field in [
            self.epoch.id,
            self.epoch.first_seq,
            self.first_seq,
            self.last_seq,
        ] {
            out.extend_from_slice(&field.to_be_bytes());
        }
    }

    /// Splits a headed message into its header and body; `Ok(None)` when `bytes` has no header
    /// (it does not start with [`HEADER_MAGIC`]).
    pub fn split(bytes: &[u8]) -> Result<Option<(Self, &[u8])>, DecodeError> {
        if !bytes.starts_with(&HEADER_MAGIC) {
            return Ok(None);
        }
        if bytes.len() < HEADER_LEN {
            return Err(DecodeError::BadHeader(format!(
                "{} bytes, a header takes {HEADER_LEN}",
                bytes.len()
            )));
        }
        if bytes[2] != HEADER_VERSION {
            return Err(DecodeError::BadHeader(format!(
                "header version {} (this build reads {HEADER_VERSION})",
                bytes[2]
            )));
        }
        let field = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(word)
        };
        let header = Self {
            epoch: Epoch {
                id: field(3),
                first_seq: field(11),
            },
            first_seq: field(19),
            last_seq: field(27),
        };
        header.check()?;
        Ok(Some((header, &bytes[HEADER_LEN..])))
    }

    /// Refuses a decoded `batch` that does not agree with the header.
    pub(crate) fn check_body(&self, batch: &Batch) -> Result<(), DecodeError> {
        let seqs = batch.records.first().zip(batch.records.last());
        self.check_span(
            batch.epoch(),
            seqs.map(|(first, last)| (first.seq, last.seq)),
        )
    }

    /// Refuses a batch of `epoch` whose records run from `seqs.0` to `seqs.1` (`None`: no
    /// record) when it does not agree with the header.
    pub(crate) fn check_span(
        &self,
        epoch: Epoch,
        seqs: Option<(u64, u64)>,
    ) -> Result<(), DecodeError> {
        if epoch != self.epoch {
            return Err(DecodeError::BadHeader(format!(
                "header names epoch {}, the batch epoch {}",
                self.epoch.id, epoch.id
            )));
        }
        let Some((first, last)) = seqs else {
            return Err(DecodeError::BadHeader(
                "a headed batch holds no record".into(),
            ));
        };
        if first < self.first_seq || last > self.last_seq {
            return Err(DecodeError::BadHeader(format!(
                "records {first}..={last} outside the header's {}..={}",
                self.first_seq, self.last_seq
            )));
        }
        Ok(())
    }
}

/// A message refused as a whole, with the sequence numbers it accounts for when it had a valid
/// header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// Why it was refused.
    pub error: DecodeError,
    /// Its header, if it had a valid one: those sequence numbers are refused for good.
    pub header: Option<SeqHeader>,
}

/// Encodes `batch` as a message: [`SeqHeader::of`] the batch (when it has one) followed by
/// [`encode_batch`](crate::encode_batch). What the agent publishes.
pub fn encode_message(batch: &Batch) -> Vec<u8> {
    let body = crate::encode_batch(batch);
    let Some(header) = SeqHeader::of(batch) else {
        return body;
    };
    let mut message = Vec::with_capacity(HEADER_LEN + body.len());
    header.write(&mut message);
    message.extend_from_slice(&body);
    message
}

/// Decodes a message with or without a [`SeqHeader`], refusing input over
/// `max_message_bytes` (header included). On refusal, the header tells which sequence numbers
/// the refused message accounted for.
pub fn decode_message_with_limit(
    bytes: &[u8],
    max_message_bytes: usize,
) -> Result<(Option<SeqHeader>, Batch), Undecodable> {
    let (header, body) = split_within(bytes, max_message_bytes)?;
    let refused = |error| Undecodable { error, header };
    let batch = crate::codec::decode_bare_batch(body, max_message_bytes).map_err(refused)?;
    if let Some(header) = &header {
        header.check_body(&batch).map_err(refused)?;
    }
    Ok((header, batch))
}

/// The first checks of every record message: its header (read before the size, so that an
/// oversize message is still attributed), then its size. The header, if any, and the batch's
/// CBOR after it.
pub(crate) fn split_within(
    bytes: &[u8],
    max_message_bytes: usize,
) -> Result<(Option<SeqHeader>, &[u8]), Undecodable> {
    let (header, body) = match SeqHeader::split(bytes) {
        Ok(Some((header, body))) => (Some(header), body),
        Ok(None) => (None, bytes),
        Err(error) => {
            return Err(Undecodable {
                error,
                header: None,
            })
        }
    };
    if bytes.len() > max_message_bytes {
        return Err(Undecodable {
            error: DecodeError::TooLarge {
                len: bytes.len(),
                max: max_message_bytes,
            },
            header,
        });
    }
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Body, Package, PackageManager, PatchStatus, Record, Telemetry, UnixMillis};

    fn telemetry(seq: u64) -> Record {
        Record {
            seq,
            recorded_at: UnixMillis(1_700_000_000_000 + seq),
            body: Body::Telemetry(Telemetry::default()),
        }
    }

    const EPOCH: Epoch = Epoch {
        id: 0x0123_4567_89ab_cdef,
        first_seq: 5,
    };

    fn headed(header: SeqHeader, body: &[u8]) -> Vec<u8> {
        let mut message = Vec::new();
        header.write(&mut message);
        message.extend_from_slice(body);
        message
    }

    fn header(first_seq: u64, last_seq: u64) -> SeqHeader {
        SeqHeader {
            epoch: EPOCH,
            first_seq,
            last_seq,
        }
    }

    #[test]
    fn a_message_is_the_header_then_the_batch_and_decodes_back() {
        let batch = Batch::in_epoch(vec![telemetry(7), telemetry(9)], EPOCH);
        let message = encode_message(&batch);
        let body = crate::encode_batch(&batch);
        assert_eq!(message.len(), HEADER_LEN + body.len());
        assert_eq!(&message[..3], b"FP\x01");
        assert_eq!(&message[3..11], &EPOCH.id.to_be_bytes());
        assert_eq!(&message[11..19], &5u64.to_be_bytes());
        assert_eq!(&message[19..27], &7u64.to_be_bytes());
        assert_eq!(&message[27..35], &9u64.to_be_bytes());
        assert_eq!(&message[HEADER_LEN..], &body[..]);
        assert_eq!(
            decode_message_with_limit(&message, 4096),
            Ok((Some(header(7, 9)), batch.clone()))
        );
        assert_eq!(crate::decode_batch(&message), Ok(batch));
    }

    #[test]
    fn messages_without_a_header_read_as_before() {
        let batch = Batch::new(vec![telemetry(1)]);
        let body = crate::encode_batch(&batch);
        assert_ne!(body[0], HEADER_MAGIC[0], "a batch starts with a CBOR map");
        assert_eq!(
            decode_message_with_limit(&body, 4096),
            Ok((None, batch.clone()))
        );
        // An empty batch accounts for nothing and goes without a header.
        let empty = Batch::new(Vec::new());
        assert_eq!(encode_message(&empty), crate::encode_batch(&empty));
        // Garbage without a header attributes nothing.
        let refused = decode_message_with_limit(&[0xff, 0x00], 4096).unwrap_err();
        assert_eq!(
            (refused.error.reason(), refused.header),
            ("malformed", None)
        );
    }

    #[test]
    fn a_body_that_does_not_decode_is_refused_with_the_headers_seqs() {
        let garbage = headed(header(5, 8), &[0xff, 0xfe, 0x00]);
        let refused = decode_message_with_limit(&garbage, 4096).unwrap_err();
        assert_eq!(refused.error.reason(), "malformed");
        assert_eq!(refused.header, Some(header(5, 8)));
        assert_eq!(refused.header.unwrap().count(), 4);

        // A body refused by validation: a NUL in a package name.
        let nul = Batch::in_epoch(
            vec![Record {
                seq: 6,
                recorded_at: UnixMillis(1),
                body: Body::PatchStatus(PatchStatus {
                    os_id: "debian".into(),
                    os_version: "12".into(),
                    package_manager: PackageManager::Apt,
                    packages: vec![Package {
                        name: "lib\0c".into(),
                        installed: "1".into(),
                        candidate: None,
                        security: false,
                    }],
                    reboot_required: false,
                    lists_refreshed_at: None,
                }),
            }],
            EPOCH,
        );
        let refused = decode_message_with_limit(&encode_message(&nul), 4096).unwrap_err();
        assert_eq!(refused.error.reason(), "forbidden_character");
        assert_eq!(refused.header, Some(header(6, 6)));

        // Oversize: the header is read before the size is refused.
        let big = headed(header(5, 5), &[0xa0; 5000]);
        let refused = decode_message_with_limit(&big, 4096).unwrap_err();
        assert_eq!(refused.error.reason(), "oversize");
        assert_eq!(refused.header, Some(header(5, 5)));
    }

    #[test]
    fn a_body_that_disagrees_with_its_header_is_refused_with_the_headers_seqs() {
        let batch = Batch::in_epoch(vec![telemetry(7), telemetry(9)], EPOCH);
        let body = crate::encode_batch(&batch);
        for wrong in [
            header(8, 9),
            header(7, 8),
            SeqHeader {
                epoch: Epoch::LEGACY,
                ..header(7, 9)
            },
        ] {
            let refused = decode_message_with_limit(&headed(wrong, &body), 4096).unwrap_err();
            assert_eq!(refused.error.reason(), "bad_header", "{wrong:?}");
            assert_eq!(refused.header, Some(wrong));
        }
        let empty = crate::encode_batch(&Batch::in_epoch(Vec::new(), EPOCH));
        let refused = decode_message_with_limit(&headed(header(7, 7), &empty), 4096).unwrap_err();
        assert_eq!(refused.error.reason(), "bad_header");
    }

    #[test]
    fn a_header_outside_its_bounds_attributes_nothing() {
        let body = crate::encode_batch(&Batch::in_epoch(vec![telemetry(7)], EPOCH));
        let max = MAX_RECORDS_PER_BATCH as u64;
        for wrong in [
            header(0, 7),
            header(8, 7),
            header(1, max + 1),
            header(7, u64::MAX),
            header(1 << 63, 1 << 63),
        ] {
            let refused = decode_message_with_limit(&headed(wrong, &body), 1 << 20).unwrap_err();
            assert_eq!(refused.error.reason(), "bad_header", "{wrong:?}");
            assert_eq!(refused.header, None, "{wrong:?}");
        }
        // The widest header allowed: 1,024 numbers.
        assert!(SeqHeader::split(&headed(header(1, max), &body))
            .unwrap()
            .is_some());
        // Truncated, and of another version.
        let message = headed(header(7, 7), &body);
        for bad in [&message[..HEADER_LEN - 1], b"FP"] {
            let refused = decode_message_with_limit(bad, 4096).unwrap_err();
            assert_eq!(
                (refused.error.reason(), refused.header),
                ("bad_header", None)
            );
        }
        let mut other = message.clone();
        other[2] = 2;
        let refused = decode_message_with_limit(&other, 4096).unwrap_err();
        assert_eq!(
            (refused.error.reason(), refused.header),
            ("bad_header", None)
        );
    }

    #[test]
    fn a_batch_whose_seqs_a_header_cannot_carry_goes_without_one() {
        let batch = Batch::new(vec![telemetry(1), telemetry(2_000)]);
        assert_eq!(SeqHeader::of(&batch), None);
        assert_eq!(encode_message(&batch), crate::encode_batch(&batch));
    }
}
