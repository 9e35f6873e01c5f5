//! Collectors: what the agent reports about its device.
//!
//! - [`system`]: CPU, memory, disks, temperatures, uptime, load and network counters,
//!   read directly from `/proc` and `/sys`.
//! - [`packages`]: installed packages, pending upgrades (with the security flag where the
//!   package manager says), reboot-required and the OS release, from apt/dpkg, apk or opkg.
//!
//! Every parser is a pure function over text (tested against recorded samples); thin
//! functions read the real files under a configurable [`FsRoot`] so tests can point them
//! at a fake tree. Parsers never fail on a bad line: they skip it and report a
//! [`ParseProblem`]. The output types are plain structs; the agent maps them to the wire
//! schema.

pub mod packages;
pub mod system;

use std::io;
use std::path::{Path, PathBuf};

/// The directory that stands for `/` when reading `/proc`, `/sys`, `/etc`, `/var` and
/// looking for package-manager binaries (`/` on a device, a temporary tree in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsRoot(PathBuf);

impl FsRoot {
    /// A root at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// The path of `absolute` (e.g. `/proc/stat`) under this root.
    pub fn join(&self, absolute: impl AsRef<Path>) -> PathBuf {
        let absolute = absolute.as_ref();
        self.0.join(absolute.strip_prefix("/").unwrap_or(absolute))
    }

    /// The root directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Reads a text file under the root; `Ok(None)` when it does not exist (a container
    /// without thermal zones, a distribution without the file), which is not an error.
    pub fn read_optional(&self, absolute: impl AsRef<Path>) -> io::Result<Option<String>> {
        match std::fs::read_to_string(self.join(absolute)) {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }
}

impl Default for FsRoot {
    /// The real root, `/`.
    fn default() -> Self {
        Self::new("/")
    }
}

/// A line a parser could not understand. It was skipped; the rest of the input was used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseProblem {
    /// 1-based line number in the input.
    pub line_no: usize,
    /// The line as it was (without its line ending).
    pub line: String,
    /// What was wrong with it.
    pub reason: String,
}

impl ParseProblem {
    pub(crate) fn new(line_no: usize, line: &str, reason: impl Into<String>) -> Self {
        Self {
            line_no,
            line: line.to_owned(),
            reason: reason.into(),
        }
    }
}

/// What a line-oriented parser found: the items it understood and the lines it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<T> {
    /// Items parsed from good lines, in input order.
    pub items: Vec<T>,
    /// Lines that were skipped, with the reason.
    pub problems: Vec<ParseProblem>,
}

impl<T> Default for Parsed<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            problems: Vec::new(),
        }
    }
}

impl<T> Parsed<T> {
    /// Runs `parse_line` over every line (1-based numbers, a trailing `\r` removed): `Ok(Some)`
    /// keeps an item, `Ok(None)` skips a line that carries nothing (a header, a blank line),
    /// `Err(reason)` records a problem.
    pub(crate) fn from_lines(
        text: &str,
        mut parse_line: impl FnMut(&str) -> Result<Option<T>, String>,
    ) -> Self {
        let mut parsed = Self::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            match parse_line(line) {
                Ok(Some(item)) => parsed.items.push(item),
                Ok(None) => {}
                Err(reason) => parsed
                    .problems
                    .push(ParseProblem::new(index + 1, line, reason)),
            }
        }
        parsed
    }
}
