//! Typed identifiers, so a device id can never be passed where a tenant id is expected.
//!
//! [`TenantId`] and [`DeviceId`] travel everywhere: in the device certificate's subject, in
//! MQTT topics, in the agent's identity file and in every store row. They live here, in the
//! crate both the agent and the server depend on, so no boundary unwraps a raw [`Uuid`].
//! The server's own ids (enrollment tokens, device groups) use the same [`uuid_id!`] macro.
//!
//! Text forms: [`Display`](std::fmt::Display) writes the canonical form (lowercase,
//! hyphenated); [`FromStr`](std::str::FromStr) accepts any form the `uuid` crate reads (for
//! people typing ids); [`parse_canonical_uuid`] accepts only the canonical form, for places
//! where two spellings of one id must never both pass (topics, certificate subjects, client
//! ids).

use uuid::Uuid;

/// Defines a `Copy` newtype over [`Uuid`] with `Display` (canonical text), `FromStr`,
/// transparent serde and `new_random`. Extra attributes (a `sqlx::Type` derive, say) go before
/// the name. The calling crate needs `serde` as a dependency.
#[macro_export]
macro_rules! uuid_id {
    ($(#[$attr:meta])* $name:ident) => {
        $(#[$attr])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $crate::Uuid);

        impl $name {
            /// A fresh random identifier.
            pub fn new_random() -> Self {
                Self($crate::Uuid::new_v4())
            }

            /// The id from its canonical text only (lowercase, hyphenated).
            pub fn parse_canonical(text: &str) -> Option<Self> {
                $crate::ids::parse_canonical_uuid(text).map(Self)
            }
        }

        impl From<$crate::Uuid> for $name {
            fn from(uuid: $crate::Uuid) -> Self {
                Self(uuid)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::UuidError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $crate::Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A tenant: the unit of isolation. Every tenant row carries it, and every device
    /// certificate names it.
    #[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
    TenantId
);
uuid_id!(
    /// A device, unique across tenants: the certificate's common name, the MQTT client id
    /// and the second level of every device topic.
    #[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
    DeviceId
);

/// Parses a UUID only in its canonical text form: 36 characters, lowercase, hyphenated.
pub fn parse_canonical_uuid(text: &str) -> Option<Uuid> {
    let id = Uuid::try_parse(text).ok()?;
    let mut buffer = Uuid::encode_buffer();
    (*id.hyphenated().encode_lower(&mut buffer) == *text).then_some(id)
}

impl DeviceId {
    /// Whether `text` is exactly this id's canonical form (an MQTT client id, a topic level).
    pub fn is_canonical_text(self, text: &str) -> bool {
        Self::parse_canonical(text) == Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANONICAL: &str = "6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94";

    #[test]
    fn canonical_text_only() {
        let id = parse_canonical_uuid(CANONICAL).unwrap();
        assert_eq!(id.to_string(), CANONICAL);
        // Other spellings of the same id: people may type them, canonical parsing refuses them.
        for other_spelling in [
            "6F1C2E0A-4B7D-4C1E-9A53-2F8E1D0C7B94",
            "6f1c2e0a4b7d4c1e9a532f8e1d0c7b94",
            "{6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94}",
            "urn:uuid:6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94",
        ] {
            assert_eq!(
                parse_canonical_uuid(other_spelling),
                None,
                "{other_spelling}"
            );
            assert_eq!(DeviceId::parse_canonical(other_spelling), None);
            assert_eq!(other_spelling.parse::<DeviceId>().unwrap(), DeviceId(id));
        }
        // Not an id at all, in either parser.
        for not_an_id in [" 6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94", ""] {
            assert_eq!(parse_canonical_uuid(not_an_id), None, "{not_an_id:?}");
            assert!(not_an_id.parse::<DeviceId>().is_err(), "{not_an_id:?}");
        }
    }

    #[test]
    fn display_is_the_canonical_text_and_serde_round_trips() {
        let device = DeviceId::parse_canonical(CANONICAL).unwrap();
        assert_eq!(device.to_string(), CANONICAL);
        assert!(device.is_canonical_text(CANONICAL));
        assert!(!device.is_canonical_text(&CANONICAL.to_uppercase()));
        // serde is the uuid crate's: text in human-readable formats (JSON), 16 bytes in CBOR.
        let mut cbor = Vec::new();
        ciborium::into_writer(&device, &mut cbor).unwrap();
        let bytes: ciborium::Value = ciborium::from_reader(cbor.as_slice()).unwrap();
        assert_eq!(bytes, ciborium::Value::Bytes(device.0.as_bytes().to_vec()));
        let back: DeviceId = ciborium::from_reader(cbor.as_slice()).unwrap();
        assert_eq!(back, device);
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(TenantId::new_random(), TenantId::new_random());
    }
}
