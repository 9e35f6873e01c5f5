//! What fleetctl prints: tables and field lists for people, JSON for scripts, and the few value
//! formats both share (times in RFC 3339, `-` for nothing).
//!
//! Everything a server or a database supplies (names, labels, details) passes through
//! [`printable`], so no value can inject terminal control sequences or break a table's lines.

use std::io::{self, Write};

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{Exit, Failure};

/// Columns are separated by this.
const GAP: &str = "  ";

/// A table: a header row and aligned columns. The last column is not padded.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; its cells are made printable.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows
            .push(cells.into_iter().map(|cell| printable(&cell)).collect());
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str(GAP);
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// One object shown as `field  value` lines, the names aligned.
#[derive(Default)]
pub struct Fields {
    rows: Vec<(&'static str, String)>,
}

impl Fields {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a field; its value is made printable.
    pub fn field(&mut self, name: &'static str, value: impl Into<String>) -> &mut Self {
        self.rows.push((name, printable(&value.into())));
        self
    }

    /// The fields as text.
    pub fn render(&self) -> String {
        let width = self.rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        self.rows
            .iter()
            .map(|(name, value)| format!("{name:<width$}{GAP}{value}").trim_end().to_owned() + "\n")
            .collect()
    }
}

/// A time as people read it here: RFC 3339 in UTC to the second, `2026-12-02T08:06:13Z`.
pub fn time(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let at = at.replace_nanosecond(0).unwrap_or(at);
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// [`time`], or `-` for none.
pub fn opt_time(at: Option<OffsetDateTime>) -> String {
    at.map_or_else(|| "-".to_owned(), time)
}

/// The value, or `-` for none.
pub fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `yes` or `no`.
pub fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// A list joined with commas, or `-` when empty.
pub fn list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "-".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `k=v` pairs joined with commas, or `-` when there are none.
pub fn labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    list(&pairs)
}

/// The text with control characters (newlines, escape sequences) written as escapes, so that it
/// stays on its line and cannot drive the terminal.
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Writes text to standard output. A reader that went away (`fleetctl ... | head`) is not an
/// error: there is nobody left to tell.
pub fn emit(text: &str) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(Failure::new(
            Exit::Refused,
            "output",
            format!("writing to standard output: {e}"),
        )),
        _ => Ok(()),
    }
}

/// Writes a value as indented JSON, for scripts.
pub fn emit_json<T: Serialize + ?Sized>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::new(Exit::Refused, "output", format!("encoding JSON: {e}")))?;
    emit(&(text + "\n"))
}

/// Says something to the person at the terminal (notices, warnings), never to a script's pipe.
pub fn notice(text: &str) {
    eprintln!("{text}");
}

/// A new file (mode 0600) that will receive a secret the moment it exists, so that scripts
/// hand secrets on through a file and never through a terminal, a pipe or shell history.
/// Opened before the secret is created, so a path that cannot be written (it exists, a missing
/// directory) refuses the command before anything changes; removed again if no secret arrives.
pub struct SecretFile {
    file: Option<std::fs::File>,
    path: std::path::PathBuf,
}

impl SecretFile {
    /// Creates the file, refusing to overwrite anything; `None` without a path.
    pub fn create(path: Option<&std::path::Path>) -> Result<Option<Self>, crate::error::Failure> {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(path) = path else { return Ok(None) };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                crate::error::Failure::new(
                    crate::error::Exit::Refused,
                    "secret-file",
                    format!("{}: {e}; nothing was created", path.display()),
                )
            })?;
        Ok(Some(Self {
            file: Some(file),
            path: path.to_owned(),
        }))
    }

    /// Moves `value[field]` into the file and leaves a note in its place.
    pub fn stash(
        mut self,
        value: &mut serde_json::Value,
        field: &str,
    ) -> Result<(), crate::error::Failure> {
        use std::io::Write;
        let secret = value
            .get(field)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .unwrap_or_default();
        let mut file = self.file.take().expect("stashed once");
        let written = file
            .write_all(secret.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            // Say it and keep the secret on screen: it exists only in this process now.
            notice(&format!(
                "writing {} failed ({e}); the secret follows instead",
                self.path.display()
            ));
            return Ok(());
        }
        value[field] = serde_json::Value::String(format!("(written to {})", self.path.display()));
        Ok(())
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        // Never received its secret (the command failed): leave no empty file behind.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// With a secret file, moves `value[field]` into it; without, nothing changes.
pub fn stash_secret(
    value: &mut serde_json::Value,
    field: &str,
    file: Option<SecretFile>,
) -> Result<(), crate::error::Failure> {
    match file {
        Some(file) => file.stash(value, field),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &Rfc3339).unwrap()
    }

    #[test]
    fn tables_have_a_header_and_aligned_columns_without_trailing_blanks() {
        let mut table = Table::new(&["ID", "NAME", "STATUS"]);
        table.row(vec!["1".into(), "gateway-berlin".into(), "active".into()]);
        table.row(vec!["22".into(), "pi".into(), "revoked".into()]);
        assert_eq!(
            table.render(),
            "ID  NAME            STATUS\n\
             1   gateway-berlin  active\n\
             22  pi              revoked\n"
        );
        let empty = Table::new(&["ID", "NAME"]);
        assert_eq!(empty.render(), "ID  NAME\n");
    }

    #[test]
    fn cells_cannot_break_lines_or_send_escape_sequences() {
        let mut table = Table::new(&["NAME"]);
        table.row(vec!["evil\nrow\x1b[2J".into()]);
        assert_eq!(table.render(), "NAME\nevil\\nrow\\u{1b}[2J\n");
    }

    #[test]
    fn times_are_rfc3339_in_utc_to_the_second() {
        assert_eq!(
            time(at("2026-12-02T08:06:13.105546Z")),
            "2026-12-02T08:06:13Z"
        );
        assert_eq!(
            time(at("2026-12-02T10:06:13+02:00")),
            "2026-12-02T08:06:13Z"
        );
        assert_eq!(opt_time(None), "-");
    }

    #[test]
    fn fields_align_their_names() {
        let mut fields = Fields::new();
        fields
            .field("id", "x")
            .field("status", "active")
            .field("labels", "");
        assert_eq!(fields.render(), "id      x\nstatus  active\nlabels\n");
    }
}
