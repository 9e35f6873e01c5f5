//! The rule for names and labels people type (devices, groups, tokens, keys): 1 to 200 bytes, not
//! only blanks, no control characters. Written once so every refusal reads the same.

use crate::StoreError;

/// Longest accepted name, label key or label value, in bytes (the schema enforces the same).
pub const MAX_TEXT_LEN: usize = 200;

/// Checks `text` as the value of `field`.
pub(crate) fn check_text(field: &'static str, text: &str) -> Result<(), StoreError> {
    let reason = if text.trim().is_empty() {
        "must not be empty"
    } else if text.len() > MAX_TEXT_LEN {
        "must be at most 200 bytes"
    } else if text.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(StoreError::Invalid {
        field,
        reason: reason.into(),
    })
}

/// Most labels a device (or a token, for its devices) may carry.
pub const MAX_LABELS: usize = 64;

/// Checks a label map as the value of `field`: at most [`MAX_LABELS`], keys as names, values
/// up to 200 bytes without control characters (an empty value is allowed).
pub(crate) fn check_labels(
    field: &'static str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), StoreError> {
    if labels.len() > MAX_LABELS {
        return Err(StoreError::Invalid {
            field,
            reason: format!("at most {MAX_LABELS}"),
        });
    }
    for (key, value) in labels {
        check_text(field, key)?;
        if value.len() > MAX_TEXT_LEN || value.chars().any(char::is_control) {
            return Err(StoreError::Invalid {
                field,
                reason: format!(
                    "the value of {key:?} must be at most 200 bytes without control characters"
                ),
            });
        }
    }
    Ok(())
}

/// CIDR lists as stored (`cidr[]` read as `text[]`), parsed back; a value that does not parse is
/// reported against `field`.
pub(crate) fn parse_stored_cidrs(
    field: &'static str,
    texts: &[String],
) -> Result<Vec<ipnet::IpNet>, StoreError> {
    texts
        .iter()
        .map(|text| {
            text.parse().map_err(|e| StoreError::Invalid {
                field,
                reason: format!("stored value {text:?}: {e}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_printable_and_not_blank() {
        assert!(check_text("name", "line 3").is_ok());
        for bad in ["", "  ", "a\nb", &"x".repeat(201)] {
            assert!(check_text("name", bad).is_err(), "{bad:?}");
        }
    }
}
