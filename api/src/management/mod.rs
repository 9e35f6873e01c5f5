//! The management API's handlers, one module per resource. Each handler gets its
//! [`crate::auth::Caller`] from the permission check, opens its transaction with
//! [`crate::auth::Caller::begin`] and calls the store, which writes the audit events.

pub(crate) mod api_keys;
pub(crate) mod audit;
pub(crate) mod devices;
pub(crate) mod enrollment_tokens;
pub(crate) mod groups;
pub(crate) mod patch;
pub(crate) mod tenant;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// RFC 3339 text of a stored time (always representable).
pub(crate) fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

pub(crate) fn rfc3339_opt(at: Option<OffsetDateTime>) -> Option<String> {
    at.map(rfc3339)
}
