//! Parsers for command-line values, so that a bad value is a usage error (exit 2) before any
//! request is made.

use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A `key=value` label.
pub fn label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

/// A point in time: RFC 3339 (`2026-12-02T08:06:13Z`), `now`, or a duration meaning that long
/// ago (`24h`, `7d`, `90m`).
pub fn moment(text: &str) -> Result<OffsetDateTime, String> {
    if text == "now" {
        return Ok(OffsetDateTime::now_utc());
    }
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!(
            "{text:?} is neither an RFC 3339 time (2026-12-02T08:06:13Z) nor a duration ago (24h)"
        )
    })?;
    let ago = time::Duration::try_from(ago).map_err(|_| format!("{text:?} is too long ago"))?;
    OffsetDateTime::now_utc()
        .checked_sub(ago)
        .ok_or_else(|| format!("{text:?} is too long ago"))
}

/// A positive duration such as `5m` or `7d`.
pub fn duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration such as 5m, 12h or 7d: {e}"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// A time as the API takes it: RFC 3339 in UTC.
pub fn api_time(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// Now plus `d`, in the API's format.
pub fn from_now(d: Duration) -> Result<String, String> {
    let d = time::Duration::try_from(d).map_err(|_| "too far in the future".to_owned())?;
    OffsetDateTime::now_utc()
        .checked_add(d)
        .map(api_time)
        .ok_or_else(|| "too far in the future".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_rfc3339_or_a_duration_ago() {
        let at = moment("2026-12-02T08:06:13Z").unwrap();
        assert_eq!(api_time(at), "2026-12-02T08:06:13Z");
        let ago = moment("24h").unwrap();
        let expected = OffsetDateTime::now_utc() - time::Duration::hours(24);
        assert!((ago - expected).abs() < time::Duration::seconds(5));
        assert!(moment("yesterday").is_err());
        assert!(moment("2026-12-02 08:06:13").is_err());
    }

    #[test]
    fn labels_need_a_key() {
        assert_eq!(
            label("site=berlin").unwrap(),
            ("site".into(), "berlin".into())
        );
        assert_eq!(label("empty=").unwrap(), ("empty".into(), String::new()));
        assert!(label("=x").is_err());
        assert!(label("x").is_err());
    }

    #[test]
    fn durations_are_positive() {
        assert_eq!(duration("5m").unwrap(), Duration::from_secs(300));
        assert!(duration("0s").is_err());
        assert!(duration("soon").is_err());
    }
}
