//! Typed identifiers, so a device id can never be passed where a tenant id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random identifier.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A tenant: the unit of isolation. Every tenant row carries it.
    TenantId
);
uuid_id!(
    /// A device, unique across tenants (it is the certificate's common name).
    DeviceId
);
uuid_id!(
    /// An enrollment token; its public half, printed in the token string and in listings.
    EnrollmentTokenId
);
uuid_id!(
    /// A device group; devices name their group, group-scoped API keys hold these ids.
    DeviceGroupId
);

/// An API key's public id: 12 base62 characters, printed in the key text (`fpk_<env>_<id>_…`),
/// in listings, URLs and the audit trail. Not secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ApiKeyId(String);

/// Characters of an [`ApiKeyId`].
pub const API_KEY_ID_LEN: usize = 12;

impl ApiKeyId {
    /// A fresh random id.
    pub(crate) fn new_random() -> Self {
        Self(crate::credentials::random_base62(API_KEY_ID_LEN))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The text is not an API key id (12 base62 characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an API key id (12 letters and digits)")]
pub struct InvalidApiKeyId;

impl FromStr for ApiKeyId {
    type Err = InvalidApiKeyId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == API_KEY_ID_LEN && crate::credentials::is_base62(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidApiKeyId)
        }
    }
}

impl<'de> Deserialize<'de> for ApiKeyId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ApiKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
