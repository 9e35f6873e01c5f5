//! `dpkg-query` output: installed packages on Debian, Ubuntu, Raspberry Pi OS.

use super::{is_package_name, InstalledPackage};
use crate::collect::Parsed;

/// Arguments that make `dpkg-query` print `name TAB version TAB status` per package (no
/// shell is involved, so the format needs no quoting).
pub const DPKG_QUERY_ARGS: &[&str] = &["-W", "-f=${Package}\t${Version}\t${Status}\n"];

/// Parses `dpkg-query -W -f='${Package}\t${Version}\t${Status}\n'`. Keeps packages whose
/// status is "installed" (`install ok installed`, also `hold ok installed`); removed
/// packages with leftover configuration and half-installed ones are skipped silently.
pub fn parse_dpkg_query(text: &str) -> Parsed<InstalledPackage> {
    Parsed::from_lines(text, |line| {
        if line.is_empty() {
            return Ok(None);
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, version, status] = fields[..] else {
            return Err(format!("{} tab-separated fields, expected 3", fields.len()));
        };
        if !is_package_name(name) {
            return Err("bad package name".to_owned());
        }
        let status_words: Vec<&str> = status.split_whitespace().collect();
        let [_want, _flag, state] = status_words[..] else {
            return Err("status is not 'want flag state'".to_owned());
        };
        if state != "installed" {
            return Ok(None);
        }
        if version.is_empty() {
            return Err("installed package without a version".to_owned());
        }
        Ok(Some(InstalledPackage {
            name: name.to_owned(),
            version: version.to_owned(),
        }))
    })
}
