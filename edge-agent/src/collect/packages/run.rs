//! Running package-manager commands with a time limit, kept apart from parsing.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// What a finished command printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// How it exited.
    pub status: ExitStatus,
    /// Standard output (invalid UTF-8 replaced), at most `max_output_bytes`.
    pub stdout: String,
    /// Standard error, likewise.
    pub stderr: String,
    /// Whether either stream was cut at `max_output_bytes`.
    pub truncated: bool,
}

/// Why a command gave no output.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// It ran past the time limit and was killed.
    #[error("{program} did not finish within {after:?} and was killed")]
    TimedOut {
        /// The program.
        program: PathBuf,
        /// The limit.
        after: Duration,
    },
    /// Waiting for it failed.
    #[error("waiting for {program}: {source}")]
    Wait {
        /// The program.
        program: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Runs commands with a deadline and bounded output, in the C locale (so the output is
/// the untranslated format the parsers expect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandRunner {
    /// Longest a command may run before it is killed (default 120 s: `apt-get -s` on a
    /// slow SD card takes tens of seconds).
    pub timeout: Duration,
    /// Bytes kept of each output stream (default 16 MiB); the rest is read and discarded
    /// so the command never blocks on a full pipe.
    pub max_output_bytes: usize,
}

impl Default for CommandRunner {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            max_output_bytes: 16 * 1024 * 1024,
        }
    }
}

/// How often a running command is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

impl CommandRunner {
    /// Runs `program` with `args` (no shell) and waits for it, at most `timeout`.
    pub fn run(&self, program: &Path, args: &[&str]) -> Result<CommandOutput, RunError> {
        let deadline = Instant::now() + self.timeout;
        let mut child = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RunError::Spawn {
                program: program.to_owned(),
                source,
            })?;
        let stdout = self.spawn_reader(child.stdout.take());
        let stderr = self.spawn_reader(child.stderr.take());
        let status = self.wait_until(&mut child, program, deadline)?;
        // A grandchild may hold the pipes open after the command exits: wait for the
        // readers only until the deadline.
        let (stdout, stdout_cut) = collect_reader(&stdout, deadline);
        let (stderr, stderr_cut) = collect_reader(&stderr, deadline);
        Ok(CommandOutput {
            status,
            stdout,
            stderr,
            truncated: stdout_cut || stderr_cut,
        })
    }

    fn wait_until(
        &self,
        child: &mut Child,
        program: &Path,
        deadline: Instant,
    ) -> Result<ExitStatus, RunError> {
        loop {
            let waited = child.try_wait().map_err(|source| RunError::Wait {
                program: program.to_owned(),
                source,
            })?;
            if let Some(status) = waited {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait(); // reap it: no zombie
                return Err(RunError::TimedOut {
                    program: program.to_owned(),
                    after: self.timeout,
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn spawn_reader(
        &self,
        stream: Option<impl Read + Send + 'static>,
    ) -> mpsc::Receiver<(Vec<u8>, bool)> {
        let (sender, receiver) = mpsc::channel();
        let limit = self.max_output_bytes;
        if let Some(stream) = stream {
            thread::spawn(move || {
                let _ = sender.send(read_capped(stream, limit));
            });
        }
        receiver
    }
}

/// Reads up to `limit` bytes, then drains the rest; returns the bytes and whether it cut.
fn read_capped(stream: impl Read, limit: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut stream = stream;
    let _ = stream.by_ref().take(limit as u64).read_to_end(&mut kept);
    let discarded = io::copy(&mut stream, &mut io::sink()).unwrap_or(0);
    (kept, discarded > 0)
}

fn collect_reader(receiver: &mpsc::Receiver<(Vec<u8>, bool)>, deadline: Instant) -> (String, bool) {
    let remaining = deadline.saturating_duration_since(Instant::now());
    match receiver.recv_timeout(remaining) {
        Ok((bytes, cut)) => (String::from_utf8_lossy(&bytes).into_owned(), cut),
        Err(_) => (String::new(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh() -> &'static Path {
        Path::new("/bin/sh")
    }

    #[test]
    fn captures_both_streams_and_the_status() {
        let runner = CommandRunner::default();
        let output = runner
            .run(sh(), &["-c", "echo out; echo err >&2; exit 3"])
            .unwrap();
        assert_eq!(output.stdout, "out\n");
        assert_eq!(output.stderr, "err\n");
        assert_eq!(output.status.code(), Some(3));
        assert!(!output.truncated);
    }

    #[test]
    fn runs_in_the_c_locale() {
        let output = CommandRunner::default()
            .run(sh(), &["-c", "echo $LC_ALL"])
            .unwrap();
        assert_eq!(output.stdout, "C\n");
    }

    #[test]
    fn kills_a_command_that_runs_too_long() {
        let runner = CommandRunner {
            timeout: Duration::from_millis(200),
            ..CommandRunner::default()
        };
        let started = Instant::now();
        let err = runner.run(sh(), &["-c", "sleep 30"]).unwrap_err();
        assert!(matches!(err, RunError::TimedOut { .. }));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn output_beyond_the_cap_is_discarded_without_blocking() {
        let runner = CommandRunner {
            max_output_bytes: 1000,
            ..CommandRunner::default()
        };
        let output = runner
            .run(sh(), &["-c", "head -c 1000000 /dev/zero | tr '\\0' x"])
            .unwrap();
        assert_eq!(output.stdout.len(), 1000);
        assert!(output.truncated);
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = CommandRunner::default()
            .run(Path::new("/nonexistent/dpkg-query"), &[])
            .unwrap_err();
        assert!(matches!(err, RunError::Spawn { .. }));
    }
}
