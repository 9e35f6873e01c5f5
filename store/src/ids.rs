//! Typed identifiers, so a device id can never be passed where a tenant id is expected.
//! Tenant and device ids are `wire`'s (the agent and certificates carry them too); the
//! server's own ids use `wire`'s macro.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use wire::{DeviceId, TenantId};

wire::uuid_id!(
    /// An enrollment token; its public half, printed in the token string and in listings.
    #[derive(sqlx::Type)]
    #[sqlx(transparent)]
    EnrollmentTokenId
);
wire::uuid_id!(
    /// A device group; devices name their group, group-scoped API keys hold these ids.
    #[derive(sqlx::Type)]
    #[sqlx(transparent)]
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

wire::uuid_id!(
    /// A person's account in one tenant: listings, URLs, the audit trail (`user:<id>`).
    #[derive(sqlx::Type)]
    #[sqlx(transparent)]
    UserId
);
wire::uuid_id!(
    /// An invitation to become a user; its token is display-once, only its SHA-256 is stored.
    #[derive(sqlx::Type)]
    #[sqlx(transparent)]
    InvitationId
);
