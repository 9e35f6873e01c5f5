//! What the agent needs to know about its certificate: the validity period.
//!
//! A full X.509 parser (x509-parser and its nom stack) would cost a few hundred KB on a
//! device with a 2 MiB budget for its one binary; the validity period sits at a fixed place
//! in the DER structure, so a small reader of the outer TLVs is enough. Only certificates
//! the agent itself stored after a verified exchange with the pinned server pass through it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A certificate's `notBefore` and `notAfter`, as seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// `notBefore`.
    pub not_before: i64,
    /// `notAfter`.
    pub not_after: i64,
}

impl Validity {
    /// The moment less than a third of the lifetime remains: renewal is due from then on.
    pub fn renew_at(&self) -> i64 {
        let lifetime = (self.not_after - self.not_before).max(0);
        self.not_after - lifetime / 3
    }

    /// Whether renewal is due at `now` (seconds since the epoch).
    pub fn renewal_due(&self, now: i64) -> bool {
        now >= self.renew_at()
    }

    /// Whether the certificate has expired at `now`.
    pub fn expired(&self, now: i64) -> bool {
        now > self.not_after
    }
}

/// Why a certificate's validity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate is not well-formed DER: {0}")]
pub struct CertError(&'static str);

/// Reads the validity period of a DER certificate.
pub fn validity(der: &[u8]) -> Result<Validity, CertError> {
    let (certificate, _) = read_tlv(der, 0x30, "certificate")?;
    let (tbs, _) = read_tlv(certificate, 0x30, "tbsCertificate")?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = skip_tlv(rest)?; // [0] version
    }
    rest = skip_tlv(rest)?; // serialNumber
    rest = skip_tlv(rest)?; // signature algorithm
    rest = skip_tlv(rest)?; // issuer
    let (validity, _) = read_tlv(rest, 0x30, "validity")?;
    let (not_before, after) = read_time(validity)?;
    let (not_after, _) = read_time(after)?;
    Ok(Validity {
        not_before,
        not_after,
    })
}

/// Splits off one TLV with the expected tag: (contents, rest).
fn read_tlv<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), CertError> {
    if input.first() != Some(&tag) {
        return Err(CertError(what));
    }
    let (len, header) = read_len(&input[1..]).ok_or(CertError(what))?;
    let start = 1 + header;
    let end = start.checked_add(len).ok_or(CertError(what))?;
    if end > input.len() {
        return Err(CertError(what));
    }
    Ok((&input[start..end], &input[end..]))
}

fn skip_tlv(input: &[u8]) -> Result<&[u8], CertError> {
    let tag = *input.first().ok_or(CertError("truncated"))?;
    read_tlv(input, tag, "truncated").map(|(_, rest)| rest)
}

/// DER length: returns (length, bytes used by the length field).
fn read_len(input: &[u8]) -> Option<(usize, usize)> {
    let first = *input.first()?;
    if first < 0x80 {
        return Some((usize::from(first), 1));
    }
    let count = usize::from(first & 0x7f);
    if count == 0 || count > 4 || input.len() < 1 + count {
        return None;
    }
    let len = input[1..=count]
        .iter()
        .fold(0usize, |acc, byte| (acc << 8) | usize::from(*byte));
    Some((len, 1 + count))
}

/// Reads a UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn read_time(input: &[u8]) -> Result<(i64, &[u8]), CertError> {
    let tag = *input.first().ok_or(CertError("time"))?;
    let (text, rest) = read_tlv(input, tag, "time")?;
    let text = std::str::from_utf8(text).map_err(|_| CertError("time"))?;
    let digits = text.strip_suffix('Z').ok_or(CertError("time zone"))?;
    let full = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: i64 = digits[..2].parse().map_err(|_| CertError("time"))?;
            let century = if yy >= 50 { "19" } else { "20" };
            format!("{century}{digits}")
        }
        (0x18, 14) => digits.to_owned(),
        _ => return Err(CertError("time")),
    };
    let field = |range: std::ops::Range<usize>| -> Result<i64, CertError> {
        full.get(range)
            .and_then(|s| s.parse().ok())
            .ok_or(CertError("time"))
    };
    let secs = days_from_civil(field(0..4)?, field(4..6)?, field(6..8)?) * 86_400
        + field(8..10)? * 3600
        + field(10..12)? * 60
        + field(12..14)?;
    Ok((secs, rest))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats seconds since the epoch as RFC 3339 UTC (`2026-11-24T06:00:00Z`).
pub fn rfc3339(secs: i64) -> String {
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Now, as seconds since the epoch.
pub fn now_secs() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["device".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_utc_time_validity() {
        let der = cert_with((2026, 11, 1), (2026, 12, 1));
        let validity = validity(&der).unwrap();
        assert_eq!(rfc3339(validity.not_before), "2026-11-01T00:00:00Z");
        assert_eq!(rfc3339(validity.not_after), "2026-12-01T00:00:00Z");
    }

    #[test]
    fn reads_generalized_time_validity() {
        // rcgen writes GeneralizedTime from 2050 on, as RFC 5280 requires.
        let der = cert_with((2049, 6, 30), (2051, 1, 2));
        let validity = validity(&der).unwrap();
        assert_eq!(rfc3339(validity.not_before), "2049-06-30T00:00:00Z");
        assert_eq!(rfc3339(validity.not_after), "2051-01-02T00:00:00Z");
    }

    #[test]
    fn renewal_is_due_in_the_last_third() {
        let validity = Validity {
            not_before: 0,
            not_after: 30 * 86_400,
        };
        assert_eq!(validity.renew_at(), 20 * 86_400);
        assert!(!validity.renewal_due(20 * 86_400 - 1));
        assert!(validity.renewal_due(20 * 86_400));
        assert!(!validity.expired(30 * 86_400));
        assert!(validity.expired(30 * 86_400 + 1));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(validity(&[]).is_err());
        assert!(validity(&[0x30, 0x82, 0xff]).is_err());
        assert!(validity(&[0x30, 0x03, 0x30, 0x01, 0x02]).is_err());
        let der = cert_with((2026, 11, 1), (2026, 12, 1));
        for cut in [10, 50, 120] {
            assert!(validity(&der[..cut]).is_err());
        }
    }

    #[test]
    fn civil_dates_round_trip() {
        for secs in [0, 951_782_400, 1_700_000_000, 4_102_444_800] {
            let (y, m, d) = civil_from_days(secs / 86_400);
            assert_eq!(days_from_civil(y, m, d) * 86_400, secs - secs % 86_400);
        }
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
