//! A minimal `tracing` subscriber: one line per event on stderr,
//! `2026-11-24T06:00:00Z WARN message key=value ...`.
//!
//! tracing-subscriber's formatter costs more than 70 KB in the ARM binary, which has a
//! 2 MiB budget; the agent needs no spans, filters or colours. Under systemd, journald adds
//! its own timestamps and the level maps to nothing special, so the line stays plain.

use std::fmt::{self, Write as _};
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::certinfo::{now_secs, rfc3339};

/// Writes events at `max_level` and more severe to stderr.
pub struct StderrLogger {
    max_level: Level,
}

impl StderrLogger {
    /// Installs the logger as the global default (once; later calls do nothing).
    pub fn install(max_level: Level) {
        let _ = tracing::subscriber::set_global_default(Self { max_level });
    }
}

/// Renders an event's fields: the message first, then `key=value` pairs.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

/// The text of one event (without the timestamp), for tests.
fn render(level: &Level, line: &Line) -> String {
    format!("{level} {}{}", line.message, line.fields)
}

impl Subscriber for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= &self.max_level
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        let text = render(event.metadata().level(), &line);
        let _ = writeln!(std::io::stderr().lock(), "{} {text}", rfc3339(now_secs()));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_comes_first_then_fields() {
        let line = Line {
            message: "connected".into(),
            fields: " pending=3".into(),
        };
        assert_eq!(render(&Level::INFO, &line), "INFO connected pending=3");
    }

    #[test]
    fn levels_filter() {
        let logger = StderrLogger {
            max_level: Level::INFO,
        };
        tracing::subscriber::with_default(logger, || {
            assert!(tracing::enabled!(Level::WARN));
            assert!(!tracing::enabled!(Level::DEBUG));
            tracing::info!(count = 1, "visible in the test's stderr");
        });
    }
}
