//! Ingest's decoder: one pass over a record message that validates it and yields, per record,
//! what ingest acts on (sequence number, device time, kind, the few body fields it reads) and
//! where the record's body lies in the message, so that the ledger stores the bytes as sent.
//!
//! It refuses exactly what [`decode_message_with_limit`] refuses, with the same
//! [`DecodeError`] variant and so the same [`reason`](DecodeError::reason): the same checks in
//! the same order (size, sequence header, version, parse, [`Batch::validate`], the header
//! against the batch). Only the words of [`DecodeError::Malformed`] differ (that text is for
//! humans). The parse follows the rules of the serde + ciborium decoder it stands beside, field
//! by field:
//!
//! * tags before a typed value are skipped; inside skipped values each tag is a nesting level,
//!   and a bignum (tags 2 and 3) is an integer; unsigned fields take tag-2 bignums up to
//!   `u64::MAX`;
//! * field names are definite text or byte strings of at most 4,096 bytes (ciborium's
//!   scratch buffer); other strings may be indefinite, in valid UTF-8 chunks;
//! * a list may also be given as a byte string, which only an empty one survives (its
//!   elements would be integers, not records), and the version `[major, minor]` as two bytes;
//! * `null` and `undefined` are an absent optional field;
//! * a list keeps one element past its limit and skips the rest unread, as `bounded` does;
//! * nesting deeper than [`MAX_NESTING`] is refused, counted as ciborium counts it.
//!
//! `tests/integration/view.rs` checks the agreement on generated, mutated and hand-made
//! messages. Nothing is allocated per record but the record list itself; a patch report's
//! strings are copied out (ingest stores them), and a segmented custom metric name is joined
//! to compare it with the others.
//!
//! [`decode_message_with_limit`]: crate::decode_message_with_limit
//! [`Batch::validate`]: crate::Batch::validate

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use crate::limits::{
    self, MAX_COMPONENTS, MAX_CUSTOM_METRICS, MAX_NESTING, MAX_PACKAGES, MAX_RECORDS_PER_BATCH,
    MAX_TEXT_BYTES,
};
use crate::{
    DecodeError, Epoch, OutboxOverflow, Package, PackageManager, PatchStatus, RecordKind,
    SchemaVersion, SeqHeader, Undecodable, UnixMillis,
};

/// A record message as ingest reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageView {
    /// Its sequence header, if it had one.
    pub header: Option<SeqHeader>,
    /// The batch's epoch ([`Epoch::LEGACY`] when it names none).
    pub epoch: Epoch,
    /// Its records, in order.
    pub records: Vec<RecordView>,
}

/// One record of a [`MessageView`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecordView {
    /// [`Record::seq`](crate::Record::seq).
    pub seq: u64,
    /// [`Record::recorded_at`](crate::Record::recorded_at).
    pub recorded_at: UnixMillis,
    /// What ingest reads of the body.
    pub body: BodyView,
    /// Where the body (the value of the record's `b` key, tags included) lies in the message,
    /// sequence header included: the bytes [`decode_body`](crate::decode_body) reads back.
    pub span: Range<usize>,
}

/// What ingest reads of a record's [`Body`](crate::Body).
#[derive(Debug, Clone, PartialEq)]
pub enum BodyView {
    /// A telemetry sample (validated, not kept: the ledger keeps its bytes).
    Telemetry,
    /// A patch report, whole: ingest applies it to the inventory.
    PatchStatus(PatchStatus),
    /// An agent event; an outbox overflow says which seqs will never come.
    Event(Option<OutboxOverflow>),
    /// A kind this build does not know ([`Body::Unknown`](crate::Body::Unknown)).
    Unknown,
}

impl BodyView {
    /// [`Body::kind`](crate::Body::kind).
    pub fn kind(&self) -> Option<RecordKind> {
        match self {
            Self::Telemetry => Some(RecordKind::Telemetry),
            Self::PatchStatus(_) => Some(RecordKind::PatchStatus),
            Self::Event(_) => Some(RecordKind::Event),
            Self::Unknown => None,
        }
    }
}

/// Decodes a record message for ingest: what [`decode_message_with_limit`] accepts, as views
/// (see the [module docs](self)).
///
/// [`decode_message_with_limit`]: crate::decode_message_with_limit
pub fn decode_message_view(
    bytes: &[u8],
    max_message_bytes: usize,
) -> Result<MessageView, Undecodable> {
    let (header, body) = crate::header::split_within(bytes, max_message_bytes)?;
    let refused = |error| Undecodable { error, header };
    let start = bytes.len() - body.len();
    let (epoch, records) = Reader::new(bytes, start).message().map_err(refused)?;
    let epoch = epoch.unwrap_or(Epoch::LEGACY);
    if let Some(header) = &header {
        let first = records.first().map(|r| r.seq);
        let last = records.last().map(|r| r.seq);
        header.check_span(epoch, first.zip(last)).map_err(refused)?;
    }
    Ok(MessageView {
        header,
        epoch,
        records,
    })
}

/// A parse result: `Err` is a refusal of the whole message.
type Parse<T> = Result<T, DecodeError>;

/// A limit check deferred to the end of the parse (any parse error comes first, as in
/// `decode_message_with_limit`, which validates the decoded batch).
type Invalid = Option<DecodeError>;

/// Identifiers and short strings go through ciborium's 4 KiB scratch buffer; a longer field
/// name is refused there.
const SCRATCH: u64 = 4096;

const TAG_BIGNUM: u64 = 2;
const TAG_NEGATIVE_BIGNUM: u64 = 3;
const BREAK: u8 = 0xff;

/// One CBOR head, as ciborium-ll reads it.
#[derive(Clone, Copy, Debug)]
enum Head {
    Uint(u64),
    Negative,
    Bytes(Option<u64>),
    Text(Option<u64>),
    Array(Option<u64>),
    Map(Option<u64>),
    Tag(u64),
    Simple(u8),
    Float,
    Break,
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Head::Uint(_) => "integer",
            Head::Negative => "negative integer",
            Head::Bytes(_) => "bytes",
            Head::Text(_) => "string",
            Head::Array(_) => "array",
            Head::Map(_) => "map",
            Head::Tag(_) => "tag",
            Head::Simple(20 | 21) => "bool",
            Head::Simple(22) => "null",
            Head::Simple(23) => "undefined",
            Head::Simple(_) => "simple value",
            Head::Float => "float",
            Head::Break => "break",
        })
    }
}

/// How many items a container still holds: a count, or until a break.
enum Items {
    Counted(u64),
    UntilBreak,
}

impl From<Option<u64>> for Items {
    fn from(len: Option<u64>) -> Self {
        len.map_or(Items::UntilBreak, Items::Counted)
    }
}

/// Parses a map's entries: called with each key; returns false to skip the value.
type Fields<'f, 'a> = dyn FnMut(&mut Reader<'a>, &'a [u8]) -> Parse<bool> + 'f;

/// Parses one element of a list.
type Element<'f, 'a> = dyn FnMut(&mut Reader<'a>) -> Parse<()> + 'f;

/// A cursor over the message.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Nesting levels left.
    depth: usize,
    /// The custom metric names of the telemetry being read (kept to refuse a repeated one).
    names: Vec<Cow<'a, str>>,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], at: usize) -> Self {
        Self {
            bytes,
            at,
            depth: MAX_NESTING,
            names: Vec::new(),
        }
    }

    /// The whole batch: the version first (a message of another major version is refused as
    /// such, however the rest looks), then the parse, then the limits.
    fn message(mut self) -> Parse<(Option<Epoch>, Vec<RecordView>)> {
        let start = self.at;
        let version = self.read_version()?;
        crate::codec::check_major_version(version)?;
        self.at = start;
        self.depth = MAX_NESTING;
        let (epoch, records, invalid) = self.batch()?;
        if self.at < self.bytes.len() {
            return Err(DecodeError::malformed(format_args!(
                "{} bytes after the end of the message",
                self.bytes.len() - self.at
            )));
        }
        if records.len() > MAX_RECORDS_PER_BATCH {
            return Err(DecodeError::TooManyRecords {
                max: MAX_RECORDS_PER_BATCH,
            });
        }
        match invalid {
            Some(error) => Err(error),
            None => Ok((epoch, records)),
        }
    }

    // --- errors -------------------------------------------------------------------------

    fn error(&self, at: usize, what: impl fmt::Display) -> DecodeError {
        DecodeError::malformed(format_args!("{what} (at byte {at})"))
    }

    fn expected(&self, at: usize, found: Head, expected: &str) -> DecodeError {
        self.error(
            at,
            format_args!("invalid type: {found}, expected {expected}"),
        )
    }

    fn truncated() -> DecodeError {
        DecodeError::malformed("truncated: the input ends inside an item")
    }

    // --- CBOR ---------------------------------------------------------------------------

    fn take(&mut self, len: u64) -> Parse<&'a [u8]> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.at.checked_add(len))
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(Self::truncated)?;
        let content = &self.bytes[self.at..end];
        self.at = end;
        Ok(content)
    }

    fn head(&mut self) -> Parse<Head> {
        let start = self.at;
        let initial = *self.take(1)?.first().ok_or_else(Self::truncated)?;
        let (major, info) = (initial >> 5, initial & 0x1f);
        let argument = match info {
            0..=23 => Some(u64::from(info)),
            24..=27 => Some(
                self.take(1 << (info - 24))?
                    .iter()
                    .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
            ),
            31 => None,
            _ => return Err(self.error(start, "invalid CBOR")),
        };
        Ok(match (major, argument) {
            (0, Some(value)) => Head::Uint(value),
            (1, Some(_)) => Head::Negative,
            (2, len) => Head::Bytes(len),
            (3, len) => Head::Text(len),
            (4, len) => Head::Array(len),
            (5, len) => Head::Map(len),
            (6, Some(tag)) => Head::Tag(tag),
            (7, None) => Head::Break,
            (7, Some(value)) => match info {
                // One byte or inline: a simple value.
                0..=24 => Head::Simple(value as u8),
                _ => Head::Float,
            },
            _ => return Err(self.error(start, "invalid CBOR")),
        })
    }

    fn peek(&mut self) -> Parse<Head> {
        let at = self.at;
        let head = self.head();
        self.at = at;
        head
    }

    /// The next head that is not a tag (typed values ignore their tags), with its offset.
    fn untagged(&mut self) -> Parse<(usize, Head)> {
        loop {
            let start = self.at;
            match self.head()? {
                Head::Tag(_) => continue,
                head => return Ok((start, head)),
            }
        }
    }

    fn enter(&mut self) -> Parse<()> {
        if self.depth == 0 {
            return Err(DecodeError::malformed(format_args!(
                "nested deeper than {MAX_NESTING} levels"
            )));
        }
        self.depth -= 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.depth += 1;
    }

    /// Whether another item follows in a container (consuming its break when it ends).
    fn next_item(&mut self, items: &mut Items) -> Parse<bool> {
        match items {
            Items::Counted(0) => Ok(false),
            Items::Counted(left) => {
                *left -= 1;
                Ok(true)
            }
            Items::UntilBreak => {
                if *self.bytes.get(self.at).ok_or_else(Self::truncated)? == BREAK {
                    self.at += 1;
                    Ok(false)
                } else {
                    Ok(true)
                }
            }
        }
    }

    /// The chunks of a byte (`text` false) or text string whose head said `len`: one, or those
    /// of an indefinite string (ciborium also takes indefinite chunks nested inside).
    fn chunks(
        &mut self,
        text: bool,
        len: Option<u64>,
        each: &mut dyn FnMut(usize, &'a [u8]) -> Parse<()>,
    ) -> Parse<()> {
        if let Some(len) = len {
            let at = self.at;
            return each(at, self.take(len)?);
        }
        let mut open = 1usize;
        loop {
            let start = self.at;
            match (self.head()?, text) {
                (Head::Break, _) if open == 1 => return Ok(()),
                (Head::Break, _) => open -= 1,
                (Head::Text(Some(len)), true) | (Head::Bytes(Some(len)), false) => {
                    let at = self.at;
                    each(at, self.take(len)?)?;
                }
                (Head::Text(None), true) | (Head::Bytes(None), false) => open += 1,
                _ => return Err(self.error(start, "invalid CBOR: a foreign chunk in a string")),
            }
        }
    }

    /// Skips one item of any type (serde's `IgnoredAny`), checking what ciborium checks.
    fn skip(&mut self) -> Parse<()> {
        let start = self.at;
        match self.head()? {
            Head::Uint(_) | Head::Negative | Head::Float | Head::Simple(20..=23) => Ok(()),
            head @ (Head::Simple(_) | Head::Break) => {
                Err(self.expected(start, head, "a known value"))
            }
            Head::Bytes(len) => self.chunks(false, len, &mut |_, _| Ok(())),
            Head::Text(len) => self.chunks(true, len, &mut |at, chunk| utf8(at, chunk).map(drop)),
            Head::Array(len) => self.skip_items(len, 1),
            Head::Map(len) => self.skip_items(len, 2),
            Head::Tag(tag) => {
                if tag == TAG_BIGNUM || tag == TAG_NEGATIVE_BIGNUM {
                    if let Head::Bytes(Some(0..=16)) = self.peek()? {
                        let value = self.bignum()?;
                        if tag == TAG_NEGATIVE_BIGNUM && value > i128::MAX as u128 {
                            return Err(self.error(start, "integer too large"));
                        }
                        return Ok(());
                    }
                }
                self.enter()?;
                self.skip()?;
                self.leave();
                Ok(())
            }
        }
    }

    fn skip_items(&mut self, len: Option<u64>, per_item: usize) -> Parse<()> {
        self.enter()?;
        let mut items = Items::from(len);
        while self.next_item(&mut items)? {
            for _ in 0..per_item {
                self.skip()?;
            }
        }
        self.leave();
        Ok(())
    }

    /// A bignum's bytes (after its tag), as ciborium reads them: leading zeros dropped, at most
    /// 16 bytes left.
    fn bignum(&mut self) -> Parse<u128> {
        let start = self.at;
        let Head::Bytes(len) = self.head()? else {
            return Err(self.error(start, "invalid type: a bignum's content, expected bytes"));
        };
        let (mut value, mut digits) = (0u128, 0usize);
        self.chunks(false, len, &mut |at, chunk| {
            for byte in chunk {
                if digits == 16 {
                    return Err(DecodeError::malformed(format_args!(
                        "bigint too large (at byte {at})"
                    )));
                }
                if digits == 0 && *byte == 0 {
                    continue;
                }
                value = (value << 8) | u128::from(*byte);
                digits += 1;
            }
            Ok(())
        })?;
        Ok(value)
    }

    // --- typed values -------------------------------------------------------------------

    fn uint(&mut self) -> Parse<u64> {
        loop {
            let start = self.at;
            return match self.head()? {
                Head::Uint(value) => Ok(value),
                Head::Tag(TAG_BIGNUM) => u64::try_from(self.bignum()?)
                    .map_err(|_| self.error(start, "integer too large")),
                Head::Tag(TAG_NEGATIVE_BIGNUM) => {
                    self.bignum()?;
                    Err(self.error(start, "unexpected negative integer"))
                }
                Head::Tag(_) => continue,
                Head::Negative => Err(self.error(start, "unexpected negative integer")),
                head => Err(self.expected(start, head, "an unsigned integer")),
            };
        }
    }

    fn u16(&mut self) -> Parse<u16> {
        let start = self.at;
        let value = self.uint()?;
        u16::try_from(value).map_err(|_| {
            self.error(
                start,
                format_args!("invalid value: integer `{value}`, expected u16"),
            )
        })
    }

    fn float(&mut self) -> Parse<()> {
        match self.untagged()? {
            (_, Head::Float) => Ok(()),
            (at, head) => Err(self.expected(at, head, "a float")),
        }
    }

    fn bool(&mut self) -> Parse<bool> {
        match self.untagged()? {
            (_, Head::Simple(20)) => Ok(false),
            (_, Head::Simple(21)) => Ok(true),
            (at, head) => Err(self.expected(at, head, "a bool")),
        }
    }

    /// An optional field's `null` or `undefined` (consumed): the field is absent.
    fn null(&mut self) -> Parse<bool> {
        if let Head::Simple(22 | 23) = self.peek()? {
            self.head()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// A text string of any form (serde's `String`).
    fn string(&mut self) -> Parse<Cow<'a, str>> {
        let (at, len) = match self.untagged()? {
            (_, Head::Text(len)) => (self.at, len),
            (at, head) => return Err(self.expected(at, head, "a string")),
        };
        if let Some(len) = len {
            return utf8(at, self.take(len)?).map(Cow::Borrowed);
        }
        let mut joined = String::new();
        self.chunks(true, None, &mut |at, chunk| {
            joined.push_str(utf8(at, chunk)?);
            Ok(())
        })?;
        Ok(Cow::Owned(joined))
    }

    /// A definite text string that fits the scratch buffer (serde's `&str`).
    fn short_str(&mut self) -> Parse<&'a str> {
        match self.untagged()? {
            (_, Head::Text(Some(len))) if len <= SCRATCH => {
                let at = self.at;
                utf8(at, self.take(len)?)
            }
            (at, head) => Err(self.expected(at, head, "a definite string of at most 4096 bytes")),
        }
    }

    /// A field name: a definite text or byte string that fits the scratch buffer.
    fn key(&mut self) -> Parse<&'a [u8]> {
        match self.untagged()? {
            (_, Head::Text(Some(len))) if len <= SCRATCH => {
                let at = self.at;
                Ok(utf8(at, self.take(len)?)?.as_bytes())
            }
            (_, Head::Bytes(Some(len))) if len <= SCRATCH => self.take(len),
            (at, head) => Err(self.expected(at, head, "a field name")),
        }
    }

    /// A map's head (tags skipped), entered.
    fn open_map(&mut self, what: &str) -> Parse<Items> {
        match self.untagged()? {
            (_, Head::Map(len)) => {
                self.enter()?;
                Ok(Items::from(len))
            }
            (at, head) => Err(self.expected(at, head, what)),
        }
    }

    /// A struct: a map whose entries `field` reads (unknown ones are skipped).
    fn structure(&mut self, what: &str, field: &mut Fields<'_, 'a>) -> Parse<()> {
        let mut entries = self.open_map(what)?;
        while self.next_item(&mut entries)? {
            let key = self.key()?;
            if !field(self, key)? {
                self.skip()?;
            }
        }
        self.leave();
        Ok(())
    }

    /// A list (`bounded::vec`): its first `keep` elements read by `element`, the rest skipped;
    /// how many were read. A byte string is a list of integers, which no element type of the
    /// schema is: only an empty one passes.
    fn list(&mut self, what: &str, keep: usize, element: &mut Element<'_, 'a>) -> Parse<usize> {
        match self.untagged()? {
            (_, Head::Array(len)) => {
                self.enter()?;
                let mut items = Items::from(len);
                let mut kept = 0;
                while self.next_item(&mut items)? {
                    if kept < keep {
                        element(self)?;
                        kept += 1;
                    } else {
                        self.skip()?;
                    }
                }
                self.leave();
                Ok(kept)
            }
            (at, Head::Bytes(len)) => {
                let mut count = 0;
                self.chunks(false, len, &mut |_, chunk| {
                    count += chunk.len();
                    Ok(())
                })?;
                if count > 0 {
                    return Err(
                        self.error(at, format_args!("invalid type: integer, expected {what}"))
                    );
                }
                Ok(0)
            }
            (at, head) => Err(self.expected(at, head, "an array")),
        }
    }

    /// A one-entry map `{ kind: payload }` (`bounded::open_enum`); `payload` reads the value.
    fn one_entry<T>(
        &mut self,
        what: &str,
        payload: &mut dyn FnMut(&mut Reader<'a>, &str) -> Parse<T>,
    ) -> Parse<T> {
        let start = self.at;
        let mut entries = self.open_map(what)?;
        if !self.next_item(&mut entries)? {
            return Err(self.error(start, format_args!("invalid length 0, expected {what}")));
        }
        let kind = self.string()?;
        let value = payload(self, &kind)?;
        if self.next_item(&mut entries)? {
            return Err(self.error(start, format_args!("invalid length 2, expected {what}")));
        }
        self.leave();
        Ok(value)
    }

    /// A struct of `N` required unsigned integers, in the order of `names`.
    fn uints<const N: usize>(&mut self, what: &str, names: [&str; N]) -> Parse<[u64; N]> {
        let mut values = [None; N];
        self.structure(what, &mut |r, key| {
            let Some(i) = names.iter().position(|name| name.as_bytes() == key) else {
                return Ok(false);
            };
            once(&values[i], names[i])?;
            values[i] = Some(r.uint()?);
            Ok(true)
        })?;
        let mut out = [0; N];
        for (i, value) in values.iter().enumerate() {
            out[i] = value.ok_or_else(|| missing(names[i]))?;
        }
        Ok(out)
    }

    /// A struct of `N` required floats.
    fn floats<const N: usize>(&mut self, what: &str, names: [&str; N]) -> Parse<()> {
        let mut seen = [false; N];
        self.structure(what, &mut |r, key| {
            let Some(i) = names.iter().position(|name| name.as_bytes() == key) else {
                return Ok(false);
            };
            once(&seen[i].then_some(()), names[i])?;
            r.float()?;
            seen[i] = true;
            Ok(true)
        })?;
        match seen.iter().position(|seen| !seen) {
            Some(i) => Err(missing(names[i])),
            None => Ok(()),
        }
    }

    // --- the schema ---------------------------------------------------------------------

    /// `codec::read_version`: the top-level map's `v` entry, skipping the entries before it.
    fn read_version(&mut self) -> Parse<SchemaVersion> {
        let mut entries = self.open_map("a message map with a \"v\" entry")?;
        while self.next_item(&mut entries)? {
            if self.string()? == "v" {
                return self.version();
            }
            self.skip()?;
        }
        Err(missing("v"))
    }

    fn version(&mut self) -> Parse<SchemaVersion> {
        let expected = "a version as [major, minor]";
        match self.untagged()? {
            (at, Head::Array(len)) => {
                self.enter()?;
                let mut items = Items::from(len);
                let mut parts = [0u16; 2];
                for (i, part) in parts.iter_mut().enumerate() {
                    if !self.next_item(&mut items)? {
                        return Err(
                            self.error(at, format_args!("invalid length {i}, expected {expected}"))
                        );
                    }
                    *part = self.u16()?;
                }
                while self.next_item(&mut items)? {
                    self.skip()?;
                }
                self.leave();
                Ok(SchemaVersion::new(parts[0], parts[1]))
            }
            (at, Head::Bytes(len)) => {
                let mut parts: Vec<u8> = Vec::with_capacity(2);
                self.chunks(false, len, &mut |_, chunk| {
                    parts.extend(chunk.iter().take(2 - parts.len().min(2)));
                    Ok(())
                })?;
                match parts[..] {
                    [major, minor] => Ok(SchemaVersion::new(major.into(), minor.into())),
                    _ => Err(self.error(
                        at,
                        format_args!("invalid length {}, expected {expected}", parts.len()),
                    )),
                }
            }
            (at, head) => Err(self.expected(at, head, "an array")),
        }
    }

    fn batch(&mut self) -> Parse<(Option<Epoch>, Vec<RecordView>, Invalid)> {
        let (mut version, mut epoch) = (false, None);
        let mut records: Option<Vec<RecordView>> = None;
        let mut invalid = None;
        self.structure("struct Batch", &mut |r, key| {
            match key {
                b"v" => {
                    once(&version.then_some(()), "v")?;
                    r.version()?;
                    version = true;
                }
                b"r" => {
                    once(&records, "r")?;
                    let mut list = Vec::new();
                    let mut previous = 0;
                    r.list("struct Record", MAX_RECORDS_PER_BATCH + 1, &mut |r| {
                        let (record, error) = r.record()?;
                        if invalid.is_none() {
                            invalid = if record.seq <= previous {
                                Some(DecodeError::SeqNotIncreasing {
                                    previous,
                                    seq: record.seq,
                                })
                            } else {
                                error
                            };
                        }
                        previous = record.seq;
                        list.push(record);
                        Ok(())
                    })?;
                    records = Some(list);
                }
                b"e" => {
                    once(&epoch, "e")?;
                    epoch = Some(match r.null()? {
                        true => None,
                        false => {
                            let [id, first_seq] = r.uints("struct Epoch", ["i", "f"])?;
                            Some(Epoch { id, first_seq })
                        }
                    });
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        if !version {
            return Err(missing("v"));
        }
        let records = records.ok_or_else(|| missing("r"))?;
        Ok((epoch.flatten(), records, invalid))
    }

    fn record(&mut self) -> Parse<(RecordView, Invalid)> {
        let (mut seq, mut recorded_at, mut body) = (None, None, None);
        self.structure("struct Record", &mut |r, key| {
            match key {
                b"s" => {
                    once(&seq, "s")?;
                    seq = Some(r.uint()?);
                }
                b"t" => {
                    once(&recorded_at, "t")?;
                    recorded_at = Some(UnixMillis(r.uint()?));
                }
                b"b" => {
                    once(&body, "b")?;
                    let start = r.at;
                    let (view, invalid) = r.body()?;
                    body = Some((view, invalid, start..r.at));
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        let seq = seq.ok_or_else(|| missing("s"))?;
        let recorded_at = recorded_at.ok_or_else(|| missing("t"))?;
        let (body, invalid, span) = body.ok_or_else(|| missing("b"))?;
        let record = RecordView {
            seq,
            recorded_at,
            body,
            span,
        };
        Ok((record, invalid))
    }

    fn body(&mut self) -> Parse<(BodyView, Invalid)> {
        self.one_entry(
            "a record body as a one-entry map",
            &mut |r, kind| match kind {
                "tel" => r.telemetry().map(|invalid| (BodyView::Telemetry, invalid)),
                "pat" => r.patch_status(),
                "evt" => r.event(),
                _ => {
                    r.skip()?;
                    Ok((
                        BodyView::Unknown,
                        limits::check_name("record.kind", kind).err(),
                    ))
                }
            },
        )
    }

    /// A telemetry sample; the checks `Telemetry::validate` makes, in its order.
    fn telemetry(&mut self) -> Parse<Invalid> {
        const TELEMETRY_FIELDS: [&str; 8] = ["c", "m", "d", "z", "u", "l", "n", "x"];
        let mut seen = [false; 8];
        let mut counts = [0usize; 4];
        let mut names: [Invalid; 3] = [None, None, None];
        let mut custom_invalid = None;
        self.structure("struct Telemetry", &mut |r, key| {
            let Some(field) = TELEMETRY_FIELDS.iter().position(|f| f.as_bytes() == key) else {
                return Ok(false);
            };
            once(&seen[field].then_some(()), TELEMETRY_FIELDS[field])?;
            seen[field] = true;
            match field {
                0 => {
                    if !r.null()? {
                        r.float()?;
                    }
                }
                1 => {
                    if !r.null()? {
                        r.uints("struct Memory", ["t", "a"])?;
                    }
                }
                2 => {
                    let first = &mut names[0];
                    counts[0] = r.list("struct Disk", MAX_COMPONENTS + 1, &mut |r| {
                        let mount = r.disk()?;
                        first_invalid(first, || limits::check_name("disk.mount", &mount));
                        Ok(())
                    })?;
                }
                3 => {
                    let first = &mut names[1];
                    counts[1] = r.list("struct Temperature", MAX_COMPONENTS + 1, &mut |r| {
                        let zone = r.temperature()?;
                        first_invalid(first, || limits::check_name("temperature.zone", &zone));
                        Ok(())
                    })?;
                }
                4 => {
                    if !r.null()? {
                        r.uint()?;
                    }
                }
                5 => {
                    if !r.null()? {
                        r.floats("struct LoadAverage", ["1", "5", "15"])?;
                    }
                }
                6 => {
                    let first = &mut names[2];
                    counts[2] =
                        r.list("struct NetworkInterface", MAX_COMPONENTS + 1, &mut |r| {
                            let name = r.network_interface()?;
                            first_invalid(first, || limits::check_name("network.name", &name));
                            Ok(())
                        })?;
                }
                _ => (counts[3], custom_invalid) = r.custom_metrics()?,
            }
            Ok(true)
        })?;
        let limits = [
            ("telemetry.disks", MAX_COMPONENTS),
            ("telemetry.temperatures", MAX_COMPONENTS),
            ("telemetry.network", MAX_COMPONENTS),
            ("telemetry.custom", MAX_CUSTOM_METRICS),
        ];
        let too_many = counts
            .iter()
            .zip(limits)
            .find_map(|(count, (field, max))| limits::check_count(field, *count, max).err());
        Ok(too_many
            .or_else(|| names.into_iter().flatten().next())
            .or(custom_invalid))
    }

    /// Custom metrics (`bounded::map`): unique text keys, float values, one past the limit
    /// kept; their count and the name check of the smallest refused name (`BTreeMap` order).
    fn custom_metrics(&mut self) -> Parse<(usize, Invalid)> {
        let mut entries = self.open_map("a map with unique text keys")?;
        let mut names = std::mem::take(&mut self.names);
        names.clear();
        let keep = MAX_CUSTOM_METRICS + 1;
        while self.next_item(&mut entries)? {
            if names.len() < keep {
                let start = self.at;
                let name = self.string()?;
                self.float()?;
                if names.contains(&name) {
                    return Err(self.error(start, "repeated map key"));
                }
                names.push(name);
            } else {
                self.skip()?;
                self.skip()?;
            }
        }
        self.leave();
        let invalid = names
            .iter()
            .filter_map(|name| {
                limits::check_name("custom.name", name)
                    .err()
                    .map(|e| (name, e))
            })
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(_, e)| e);
        let count = names.len();
        self.names = names;
        Ok((count, invalid))
    }

    /// A disk; its mount point.
    fn disk(&mut self) -> Parse<Cow<'a, str>> {
        let (mut mount, mut total, mut free) = (None, false, false);
        self.structure("struct Disk", &mut |r, key| {
            match key {
                b"m" => {
                    once(&mount, "m")?;
                    mount = Some(r.string()?);
                }
                b"t" => {
                    once(&total.then_some(()), "t")?;
                    r.uint()?;
                    total = true;
                }
                b"f" => {
                    once(&free.then_some(()), "f")?;
                    r.uint()?;
                    free = true;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        let mount = mount.ok_or_else(|| missing("m"))?;
        required(total, "t")?;
        required(free, "f")?;
        Ok(mount)
    }

    /// A thermal zone; its name.
    fn temperature(&mut self) -> Parse<Cow<'a, str>> {
        let (mut zone, mut celsius) = (None, false);
        self.structure("struct Temperature", &mut |r, key| {
            match key {
                b"z" => {
                    once(&zone, "z")?;
                    zone = Some(r.string()?);
                }
                b"c" => {
                    once(&celsius.then_some(()), "c")?;
                    r.float()?;
                    celsius = true;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        let zone = zone.ok_or_else(|| missing("z"))?;
        required(celsius, "c")?;
        Ok(zone)
    }

    /// A network interface; its name.
    fn network_interface(&mut self) -> Parse<Cow<'a, str>> {
        const COUNTERS: [&str; 6] = ["rb", "tb", "rp", "tp", "re", "te"];
        let mut name = None;
        let mut counters = [false; 6];
        self.structure("struct NetworkInterface", &mut |r, key| {
            if key == b"i" {
                once(&name, "i")?;
                name = Some(r.string()?);
                return Ok(true);
            }
            let Some(i) = COUNTERS.iter().position(|c| c.as_bytes() == key) else {
                return Ok(false);
            };
            once(&counters[i].then_some(()), COUNTERS[i])?;
            r.uint()?;
            counters[i] = true;
            Ok(true)
        })?;
        let name = name.ok_or_else(|| missing("i"))?;
        for (seen, counter) in counters.iter().zip(COUNTERS) {
            required(*seen, counter)?;
        }
        Ok(name)
    }

    /// A patch report, copied out whole; the checks of `PatchStatus::validate`, in its order.
    fn patch_status(&mut self) -> Parse<(BodyView, Invalid)> {
        let (mut os_id, mut os_version, mut manager) = (None, None, None);
        let (mut packages, mut reboot, mut refreshed) = (None, None, None);
        let mut package_invalid = None;
        self.structure("struct PatchStatus", &mut |r, key| {
            match key {
                b"os" => {
                    once(&os_id, "os")?;
                    os_id = Some(r.string()?.into_owned());
                }
                b"ov" => {
                    once(&os_version, "ov")?;
                    os_version = Some(r.string()?.into_owned());
                }
                b"pm" => {
                    once(&manager, "pm")?;
                    manager = Some(PackageManager::from_name(r.short_str()?));
                }
                b"p" => {
                    once(&packages, "p")?;
                    let mut list = Vec::new();
                    r.list("struct Package", MAX_PACKAGES + 1, &mut |r| {
                        let package = r.package()?;
                        first_invalid(&mut package_invalid, || package.validate());
                        list.push(package);
                        Ok(())
                    })?;
                    packages = Some(list);
                }
                b"rr" => {
                    once(&reboot, "rr")?;
                    reboot = Some(r.bool()?);
                }
                b"lr" => {
                    once(&refreshed, "lr")?;
                    refreshed = Some(match r.null()? {
                        true => None,
                        false => Some(UnixMillis(r.uint()?)),
                    });
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        let status = PatchStatus {
            os_id: os_id.ok_or_else(|| missing("os"))?,
            os_version: os_version.ok_or_else(|| missing("ov"))?,
            package_manager: manager.ok_or_else(|| missing("pm"))?,
            packages: packages.unwrap_or_default(),
            reboot_required: reboot.ok_or_else(|| missing("rr"))?,
            lists_refreshed_at: refreshed.flatten(),
        };
        // `PatchStatus::validate` checks the packages one by one; the first refused is the one
        // found while reading.
        let invalid = status.validate_header().err().or(package_invalid);
        Ok((BodyView::PatchStatus(status), invalid))
    }

    fn package(&mut self) -> Parse<Package> {
        let (mut name, mut installed, mut candidate, mut security) = (None, None, None, None);
        self.structure("struct Package", &mut |r, key| {
            match key {
                b"n" => {
                    once(&name, "n")?;
                    name = Some(r.string()?.into_owned());
                }
                b"i" => {
                    once(&installed, "i")?;
                    installed = Some(r.string()?.into_owned());
                }
                b"c" => {
                    once(&candidate, "c")?;
                    candidate = Some(match r.null()? {
                        true => None,
                        false => Some(r.string()?.into_owned()),
                    });
                }
                b"s" => {
                    once(&security, "s")?;
                    security = Some(r.bool()?);
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Package {
            name: name.ok_or_else(|| missing("n"))?,
            installed: installed.ok_or_else(|| missing("i"))?,
            candidate: candidate.flatten(),
            security: security.unwrap_or(false),
        })
    }

    /// An agent event; the checks of `AgentEvent::validate`.
    fn event(&mut self) -> Parse<(BodyView, Invalid)> {
        self.one_entry("an agent event as a one-entry map", &mut |r, kind| {
            let mut overflow = None;
            let invalid = match kind {
                "started" => {
                    let [version] = r.strings("struct Started", ["agent_version"])?;
                    limits::check_name("started.agent_version", &version).err()
                }
                "outbox_overflow" => {
                    let [dropped, first_seq, last_seq] = r.uints(
                        "struct OutboxOverflow",
                        ["dropped", "first_seq", "last_seq"],
                    )?;
                    overflow = Some(OutboxOverflow {
                        dropped,
                        first_seq,
                        last_seq,
                    });
                    None
                }
                "certificate_renewed" => {
                    r.uints("struct CertificateRenewed", ["not_after"])?;
                    None
                }
                "collector_error" => {
                    let [collector, message] =
                        r.strings("struct CollectorError", ["collector", "message"])?;
                    limits::check_name("collector_error.collector", &collector)
                        .and_then(|()| {
                            limits::check_len("collector_error.message", &message, MAX_TEXT_BYTES)
                        })
                        .err()
                }
                "epoch_started" => {
                    r.uints(
                        "struct EpochStarted",
                        [
                            "previous",
                            "epoch",
                            "first_seq",
                            "server_watermark",
                            "last_appended",
                        ],
                    )?;
                    None
                }
                _ => {
                    r.skip()?;
                    limits::check_name("event.kind", kind).err()
                }
            };
            Ok((BodyView::Event(overflow), invalid))
        })
    }

    /// A struct of `N` required strings.
    fn strings<const N: usize>(
        &mut self,
        what: &str,
        names: [&str; N],
    ) -> Parse<[Cow<'a, str>; N]> {
        let mut values: [Option<Cow<'a, str>>; N] = std::array::from_fn(|_| None);
        self.structure(what, &mut |r, key| {
            let Some(i) = names.iter().position(|name| name.as_bytes() == key) else {
                return Ok(false);
            };
            once(&values[i], names[i])?;
            values[i] = Some(r.string()?);
            Ok(true)
        })?;
        if let Some(i) = values.iter().position(Option::is_none) {
            return Err(missing(names[i]));
        }
        Ok(values.map(|value| value.unwrap_or_default()))
    }
}

/// `text` as UTF-8, or malformed (ciborium checks every chunk on its own).
fn utf8(at: usize, text: &[u8]) -> Parse<&str> {
    std::str::from_utf8(text)
        .map_err(|_| DecodeError::malformed(format_args!("invalid UTF-8 in a string at byte {at}")))
}

/// Refuses a field seen twice (serde's derive does).
fn once<T>(slot: &Option<T>, field: &str) -> Parse<()> {
    match slot {
        Some(_) => Err(DecodeError::malformed(format_args!(
            "duplicate field `{field}`"
        ))),
        None => Ok(()),
    }
}

fn missing(field: &str) -> DecodeError {
    DecodeError::malformed(format_args!("missing field `{field}`"))
}

fn required(seen: bool, field: &str) -> Parse<()> {
    match seen {
        true => Ok(()),
        false => Err(missing(field)),
    }
}

/// Keeps the first refusal of a list's elements.
fn first_invalid(first: &mut Invalid, check: impl FnOnce() -> Result<(), DecodeError>) {
    if first.is_none() {
        *first = check().err();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_batch, encode_body, encode_message, AgentEvent, Batch, Body, Record};
    use crate::{Started, Telemetry};

    fn records() -> Vec<Record> {
        vec![
            Record {
                seq: 3,
                recorded_at: UnixMillis(1_700_000_000_000),
                body: Body::Telemetry(Telemetry::default()),
            },
            Record {
                seq: 9,
                recorded_at: UnixMillis(1_700_000_000_001),
                body: Body::Event(AgentEvent::Started(Started {
                    agent_version: "1.2.3".into(),
                })),
            },
        ]
    }

    fn bodies_at(message: &[u8]) -> Vec<Vec<u8>> {
        decode_message_view(message, 1 << 20)
            .expect("a view")
            .records
            .into_iter()
            .map(|record| message[record.span].to_vec())
            .collect()
    }

    #[test]
    fn the_spans_are_the_bodies_as_encoded_with_or_without_a_header() {
        let expected: Vec<Vec<u8>> = records().iter().map(|r| encode_body(&r.body)).collect();
        assert_eq!(bodies_at(&encode_batch(&Batch::new(records()))), expected);
        let epoch = Epoch {
            id: 42,
            first_seq: 1,
        };
        let headed = encode_message(&Batch::in_epoch(records(), epoch));
        assert_eq!(bodies_at(&headed), expected);
        assert!(bodies_at(&encode_batch(&Batch::new(vec![]))).is_empty());
    }

    /// The same batch written the long way (indefinite lengths, a tag, an unknown key first, a
    /// byte string key), which the serde decoder accepts too.
    #[test]
    fn unusual_but_accepted_encodings_are_read() {
        let body = encode_body(&records()[1].body);
        let mut message = vec![0xbf]; // indefinite map
        message.extend([0x61, b'v', 0x82, 0x01, 0x00]); // "v": [1, 0]
        message.extend([0x61, b'x', 0x9f, 0x01, 0x02, 0xff]); // "x": [_ 1, 2]
        message.extend([0x41, b'r', 0x9f]); // h'72': [_
        message.extend([0xd8, 0x20, 0xa3]); // a tagged record map
        message.extend([0x61, b's', 0x09, 0x61, b't', 0x01]);
        message.extend([0x61, b'b']);
        message.extend(&body);
        message.extend([0xff, 0xff]);
        assert_eq!(crate::decode_batch(&message).unwrap().records.len(), 1);
        assert_eq!(bodies_at(&message), vec![body]);
        let view = decode_message_view(&message, 1 << 20).unwrap();
        assert_eq!(view.records[0].seq, 9);
        assert_eq!(view.records[0].body, BodyView::Event(None));
    }
}
