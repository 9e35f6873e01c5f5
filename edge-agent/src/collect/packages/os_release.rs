//! `/etc/os-release` (falling back to `/usr/lib/os-release`, as os-release(5) says).

use crate::collect::{FsRoot, ParseProblem, Parsed};

/// The operating system, from os-release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID` (`debian`, `raspbian`, `alpine`, `openwrt`).
    pub id: Option<String>,
    /// `ID_LIKE`, split on spaces.
    pub id_like: Vec<String>,
    /// `VERSION_ID` (`12`, `3.20.3`).
    pub version_id: Option<String>,
    /// `VERSION_CODENAME` (`bookworm`).
    pub version_codename: Option<String>,
    /// `PRETTY_NAME`.
    pub pretty_name: Option<String>,
}

/// Parses os-release: `KEY=value` lines, values optionally in double or single quotes
/// (double-quoted values may escape `"`, `\`, `$` and `` ` `` with a backslash). Comments
/// and blank lines are skipped, unknown keys ignored, malformed lines reported.
pub fn parse_os_release(text: &str) -> (OsRelease, Vec<ParseProblem>) {
    let parsed: Parsed<(String, String)> = Parsed::from_lines(text, |line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(None);
        }
        let (key, raw) = line.split_once('=').ok_or("no '='")?;
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err("bad key".to_owned());
        }
        Ok(Some((key.to_owned(), unquote(raw)?)))
    });
    let mut release = OsRelease::default();
    for (key, value) in parsed.items {
        match key.as_str() {
            "ID" => release.id = Some(value),
            "ID_LIKE" => release.id_like = value.split_whitespace().map(str::to_owned).collect(),
            "VERSION_ID" => release.version_id = Some(value),
            "VERSION_CODENAME" => release.version_codename = Some(value),
            "PRETTY_NAME" => release.pretty_name = Some(value),
            _ => {}
        }
    }
    (release, parsed.problems)
}

fn unquote(raw: &str) -> Result<String, String> {
    if let Some(inner) = raw.strip_prefix('\'') {
        return inner
            .strip_suffix('\'')
            .map(str::to_owned)
            .ok_or_else(|| "unclosed single quote".to_owned());
    }
    let Some(inner) = raw.strip_prefix('"') else {
        return Ok(raw.to_owned());
    };
    let inner = inner.strip_suffix('"').ok_or("unclosed double quote")?;
    let mut value = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some(escaped @ ('"' | '\\' | '$' | '`'))) => {
                value.push(escaped);
                chars.next();
            }
            _ => value.push(c),
        }
    }
    Ok(value)
}

/// Reads os-release under `root`; `None` when neither file exists.
pub fn read_os_release(root: &FsRoot) -> std::io::Result<Option<(OsRelease, Vec<ParseProblem>)>> {
    for path in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Some(text) = root.read_optional(path)? {
            return Ok(Some(parse_os_release(&text)));
        }
    }
    Ok(None)
}
