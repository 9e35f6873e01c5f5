//! The fleet's certificate revocation list (RFC 5280 CRL), signed by the issuing CA: what an
//! external broker (Mosquitto's `crlfile`) checks device certificates against, since it cannot
//! ask fleetd at every handshake as the embedded gateway does.
//!
//! It lists serials only, no names: device ids and tenants stay private, so the list can be
//! published without authentication, as CRLs are meant to be.

use std::time::Duration;

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;

use crate::ca::IssuingCa;
use crate::error::IssueError;

/// How long a CRL is valid (`nextUpdate`). fleetd rewrites it far more often (on every
/// revocation and every few minutes); an external broker holding a CRL past this date refuses
/// every device (OpenSSL: "CRL has expired"), which fails closed.
pub const CRL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Longest serial a CRL entry may carry (RFC 5280: at most 20 octets).
const MAX_SERIAL_LEN: usize = 20;

/// Why a certificate is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlReason {
    /// The device was revoked (no reason code: RFC 5280 asks to omit `unspecified`).
    DeviceRevoked,
    /// A renewal replaced it (`superseded`).
    Superseded,
}

/// One listed certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    /// Its serial, lowercase hex, as the store records it.
    pub serial: String,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
    /// Why.
    pub reason: CrlReason,
}

/// A signed CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    der: Vec<u8>,
    pem: String,
}

impl Crl {
    /// DER, as served over HTTP (`application/pkix-crl`).
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM (`X509 CRL`), as Mosquitto's `crlfile` reads it.
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

impl IssuingCa {
    /// Signs a CRL listing `entries`, issued `now` and valid for [`CRL_VALIDITY`]. Its CRL
    /// number is `now` in milliseconds since the epoch: increasing across fleetd instances as
    /// far as their clocks agree, with no shared counter.
    pub fn sign_crl(&self, entries: &[CrlEntry], now: OffsetDateTime) -> Result<Crl, IssueError> {
        let revoked_certs = entries
            .iter()
            .map(revoked_cert)
            .collect::<Result<Vec<_>, _>>()?;
        let this_update = now
            .replace_nanosecond(0)
            .map_err(|_| IssueError::InvalidLifetime)?;
        let next_update = this_update
            .checked_add(time::Duration::try_from(CRL_VALIDITY).expect("a week"))
            .ok_or(IssueError::InvalidLifetime)?;
        let crl_number = (now.unix_timestamp_nanos() / 1_000_000).max(1) as u64;
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(self.issuer())?;
        Ok(Crl {
            der: crl.der().to_vec(),
            pem: crl.pem()?,
        })
    }
}

fn revoked_cert(entry: &CrlEntry) -> Result<RevokedCertParams, IssueError> {
    Ok(RevokedCertParams {
        serial_number: SerialNumber::from_slice(&serial_bytes(&entry.serial)?),
        revocation_time: entry
            .revoked_at
            .replace_nanosecond(0)
            .unwrap_or(entry.revoked_at),
        reason_code: match entry.reason {
            CrlReason::DeviceRevoked => None,
            CrlReason::Superseded => Some(RevocationReason::Superseded),
        },
        invalidity_date: None,
    })
}

/// The bytes of a lowercase hex serial of 1 to 20 bytes.
fn serial_bytes(serial: &str) -> Result<Vec<u8>, IssueError> {
    let invalid = || IssueError::InvalidSerial {
        serial: serial.to_owned(),
    };
    let well_formed = !serial.is_empty()
        && serial.len().is_multiple_of(2)
        && serial.len() <= 2 * MAX_SERIAL_LEN
        && serial
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !well_formed {
        return Err(invalid());
    }
    (0..serial.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&serial[i..i + 2], 16).map_err(|_| invalid()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_lowercase_hex_of_one_to_twenty_bytes() {
        assert_eq!(serial_bytes("40ff").unwrap(), vec![0x40, 0xff]);
        for bad in ["", "4", "40FF", "zz", &"ab".repeat(21), "-1"] {
            assert!(
                matches!(serial_bytes(bad), Err(IssueError::InvalidSerial { .. })),
                "{bad:?}"
            );
        }
    }
}
