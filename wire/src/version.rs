//! The schema version every message carries.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeTuple, Serializer};

/// The version of the message schema, `major.minor`.
///
/// * A new **minor** version only adds: optional fields, record kinds, event
///   kinds. Readers of an older minor version ignore what they do not know.
/// * A new **major** version may change anything. Readers refuse a major version
///   other than their own with
///   [`DecodeError::UnsupportedMajorVersion`](crate::DecodeError::UnsupportedMajorVersion).
///
/// On the wire it is the array `[major, minor]` under the key `"v"` of the
/// top-level map. That one detail is frozen across all major versions, because it
/// is how a reader tells which schema the rest of the message follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SchemaVersion {
    /// Incremented for incompatible changes.
    pub major: u16,
    /// Incremented for additions that older readers may ignore.
    pub minor: u16,
}

impl SchemaVersion {
    /// The version this build writes, and whose major version it reads.
    pub const CURRENT: Self = Self::new(1, 0);

    /// A version from its two parts.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self { major, minor }
    }
}

impl Default for SchemaVersion {
    fn default() -> Self {
        Self::CURRENT
    }
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Serialize for SchemaVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(2)?;
        tuple.serialize_element(&self.major)?;
        tuple.serialize_element(&self.minor)?;
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for SchemaVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(VersionVisitor)
    }
}

struct VersionVisitor;

impl<'de> Visitor<'de> for VersionVisitor {
    type Value = SchemaVersion;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a version as [major, minor]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SchemaVersion, A::Error> {
        let major = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let minor = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        // Serde's tuple visitor would stop after two elements and leave any third
        // one in the stream, misaligning the rest of the decode. Skip extras
        // instead, as we skip unknown fields.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(SchemaVersion { major, minor })
    }
}
