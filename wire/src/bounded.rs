//! Serde helpers that never trust a length the input declares.
//!
//! A CBOR array or map header states its element count up front, so a ten-byte
//! message can claim four billion elements. ciborium passes that claim to serde as
//! a size hint; serde's own collections cap their pre-allocation at 1 MiB, but
//! that is still a megabyte per lie. The helpers here pre-allocate nothing: a
//! collection grows only with elements actually decoded, and stops growing one
//! element past its limit. The extra element lets validation report the typed
//! error ([`DecodeError::TooManyEntries`](crate::DecodeError::TooManyEntries));
//! the remaining elements are skipped without being stored.
//!
//! Strings need no helper: ciborium reads text in chunks of its 4 KiB scratch
//! buffer, so a string grows only with bytes actually present, and the input is
//! bounded before decoding starts.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// Deserializes a sequence of at most `MAX` elements (keeping `MAX + 1` to
/// signal overflow). Use with `#[serde(deserialize_with = "...")]`.
pub(crate) fn vec<'de, D, T, const MAX: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(BoundedSeq::<T> {
        keep: MAX.saturating_add(1),
        element: PhantomData,
    })
}

/// Deserializes a map of unique string keys, at most `MAX` of them (keeping
/// `MAX + 1` to signal overflow). A repeated key is malformed: CBOR (RFC 8949
/// §5.6) leaves its meaning undefined, and we refuse to guess which value wins.
pub(crate) fn map<'de, D, V, const MAX: usize>(
    deserializer: D,
) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    deserializer.deserialize_map(BoundedMap::<V> {
        keep: MAX.saturating_add(1),
        value: PhantomData,
    })
}

struct BoundedSeq<T> {
    keep: usize,
    element: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedSeq<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // No `with_capacity(seq.size_hint())`: the hint is the attacker's claim.
        let mut items = Vec::new();
        while items.len() < self.keep {
            match seq.next_element()? {
                Some(item) => items.push(item),
                None => return Ok(items),
            }
        }
        // Over the limit: validation refuses it. Drain the rest so that the
        // decoder stays aligned and reports any syntax error in it.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(items)
    }
}

struct BoundedMap<V> {
    keep: usize,
    value: PhantomData<V>,
}

impl<'de, V: Deserialize<'de>> Visitor<'de> for BoundedMap<V> {
    type Value = BTreeMap<String, V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map with unique text keys")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = BTreeMap::new();
        while entries.len() < self.keep {
            let Some((key, value)) = map.next_entry::<String, V>()? else {
                return Ok(entries);
            };
            if entries.insert(key, value).is_some() {
                return Err(de::Error::custom("repeated map key"));
            }
        }
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(entries)
    }
}

/// An enum that travels as a one-entry map `{ kind: payload }` and tolerates
/// kinds it does not know.
///
/// Serde's derived enums refuse an unknown variant, and `#[serde(other)]` does
/// not consume the payload of an externally tagged variant (ciborium would then
/// read the payload as the next key). So open enums decode through
/// [`open_enum`], which skips an unknown payload properly.
pub(crate) trait OpenEnum: Sized {
    /// What the enum is, for error messages.
    const EXPECTING: &'static str;

    /// Decodes the payload of `kind` with `map.next_value()`, or returns `None`
    /// without touching `map` if `kind` is unknown.
    fn known<'de, A: MapAccess<'de>>(kind: &str, map: &mut A) -> Result<Option<Self>, A::Error>;

    /// The value standing for a kind this build does not know.
    fn unknown(kind: String) -> Self;
}

/// Deserializes an [`OpenEnum`].
pub(crate) fn open_enum<'de, D: Deserializer<'de>, T: OpenEnum>(
    deserializer: D,
) -> Result<T, D::Error> {
    deserializer.deserialize_map(OpenEnumVisitor(PhantomData))
}

/// Serializes one variant of an open enum as `{ kind: payload }`.
pub(crate) fn serialize_tagged<S: Serializer, P: Serialize + ?Sized>(
    serializer: S,
    kind: &str,
    payload: &P,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(1))?;
    map.serialize_entry(kind, payload)?;
    map.end()
}

/// The payload written for an unknown kind: an empty map, so that the message
/// keeps the `{ kind: payload }` shape.
#[derive(Serialize)]
pub(crate) struct EmptyPayload {}

struct OpenEnumVisitor<T>(PhantomData<T>);

impl<'de, T: OpenEnum> Visitor<'de> for OpenEnumVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as a one-entry map", T::EXPECTING)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let kind: String = map
            .next_key()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let value = match T::known(&kind, &mut map)? {
            Some(value) => value,
            None => {
                map.next_value::<IgnoredAny>()?;
                T::unknown(kind)
            }
        };
        if map.next_key::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(2, &self));
        }
        Ok(value)
    }
}
