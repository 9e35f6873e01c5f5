//! The command-line contract packaging, scripts and tests rely on.
//!
//! ```text
//! fleet-agent [--config FILE] [--state-dir DIR] <command>
//!   enroll --server URL --ca ROOT.pem (--token TOKEN | $FLEET_AGENT_TOKEN | --token-file FILE)
//!   run [--once [--timeout SECS]]
//!   status [--json]
//!   configfile
//! ```
//!
//! `--config` and `--state-dir` are accepted before or after the command (given twice, the
//! last one wins). Exit codes:
//! 0 success, 1 failure (one line on stderr says why), 2 bad command line, 3 enrollment
//! refused by the server, 4 the device is revoked or its certificate expired (enroll
//! again), 5 `run --once` got no covering ack in time.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::enroll::{self, EnrollError, Enrollment};
use crate::identity::{StateDir, DEFAULT_STATE_DIR};
use crate::run::{self, RunError, RunOptions};
use crate::status;

/// Exit code: failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: enrollment refused by the server.
pub const EXIT_REFUSED: u8 = 3;
/// Exit code: revoked or expired; enroll again.
pub const EXIT_REVOKED: u8 = 4;
/// Exit code: `run --once` timed out.
pub const EXIT_ONCE_TIMEOUT: u8 = 5;

/// Environment variable that lets the agent run as root (tests, CI, containers).
pub const ALLOW_ROOT_ENV: &str = "FLEET_AGENT_ALLOW_ROOT";

#[derive(Debug, Parser)]
#[command(
    name = "fleet-agent",
    version,
    about = "fleetplane device agent: reports telemetry and patch status over mutual-TLS MQTT"
)]
struct Cli {
    /// Tuning configuration (TOML); a missing file means all defaults.
    #[arg(long, global = true, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH, overrides_with = "config")]
    config: PathBuf,
    /// Identity and state directory (key, certificates, outbox).
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_STATE_DIR, overrides_with = "state_dir")]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate the device key, enroll with a token, store the certificate.
    Enroll(EnrollArgs),
    /// Connect and report until stopped (or one round with --once).
    Run(RunArgs),
    /// Show identity, broker, connection, outbox depth, last ack, certificate expiry.
    Status {
        /// Print JSON instead of plain words.
        #[arg(long)]
        json: bool,
    },
    /// Print a commented configuration template with every default.
    Configfile,
}

#[derive(Debug, Args)]
struct EnrollArgs {
    /// The fleet API, e.g. https://fleet.example.com:8443
    #[arg(long, value_name = "URL")]
    server: String,
    /// The enrollment token; without it, $FLEET_AGENT_TOKEN, then --token-file (prefer
    /// those two: a command line is visible to other users).
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the enrollment token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The fleet root CA certificate (PEM): the only certificate trusted for this call.
    #[arg(long, value_name = "ROOT.pem")]
    ca: PathBuf,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Send one round of telemetry and patch status, wait for the ack covering it, exit.
    #[arg(long)]
    once: bool,
    /// With --once: seconds to wait for the ack (default: [once] timeout).
    #[arg(long, value_name = "SECS", requires = "once")]
    timeout: Option<u64>,
}

/// Parses the command line, runs the command, maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("fleet-agent: {message}");
            ExitCode::from(code)
        }
    }
}

type Outcome = Result<(), (u8, String)>;

fn fail(message: impl ToString) -> (u8, String) {
    (EXIT_FAILURE, message.to_string())
}

fn dispatch(cli: Cli) -> Outcome {
    let dir = StateDir::new(&cli.state_dir);
    match cli.command {
        Command::Configfile => print_out(Config::template()),
        Command::Status { json } => {
            let report = status::report(&dir);
            if json {
                let mut text = serde_json::to_string_pretty(&report).expect("serializes");
                text.push('\n');
                print_out(&text)
            } else {
                print_out(&status::render_plain(&report))
            }
        }
        Command::Enroll(args) => {
            refuse_root()?;
            let config = Config::load(&cli.config).map_err(fail)?;
            init_logging(&config);
            let token = read_token(&args)?;
            block_on(enroll_command(&dir, &args, &token))
        }
        Command::Run(args) => {
            refuse_root()?;
            let config = Config::load(&cli.config).map_err(fail)?;
            init_logging(&config);
            let options = RunOptions {
                once: args.once,
                once_timeout: args.timeout.map(Duration::from_secs),
            };
            block_on(async move { run::run(dir, config, options).await.map_err(run_error) })
        }
    }
}

/// Writes to stdout; a closed pipe (`fleet-agent status | head -1`) is not an error.
fn print_out(text: &str) -> Outcome {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(fail(format!("writing to stdout: {err}")))
        }
        _ => Ok(()),
    }
}

fn block_on<F: std::future::Future<Output = Outcome>>(future: F) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| fail(format!("starting the runtime: {err}")))?;
    let outcome = runtime.block_on(future);
    // Do not wait for a package-manager query still running on the blocking pool (dropping
    // the runtime would): it only reads, and its result is no longer wanted.
    runtime.shutdown_timeout(Duration::from_millis(500));
    outcome
}

async fn enroll_command(dir: &StateDir, args: &EnrollArgs, token: &str) -> Outcome {
    let request = Enrollment {
        server: &args.server,
        token,
        ca_file: &args.ca,
    };
    match enroll::enroll(dir, &request).await {
        Ok(record) => {
            println!(
                "enrolled as device {} (tenant {}); broker {}; identity stored in {}",
                record.device_id,
                record.tenant_id,
                record.broker_url,
                dir.path().display()
            );
            Ok(())
        }
        Err(err @ EnrollError::Refused { .. }) => Err((EXIT_REFUSED, err.to_string())),
        Err(err) => Err(fail(err)),
    }
}

fn run_error(err: RunError) -> (u8, String) {
    let code = match err {
        RunError::Fatal(_) => EXIT_FAILURE,
        RunError::Revoked(_) => EXIT_REVOKED,
        RunError::OnceTimeout(_) => EXIT_ONCE_TIMEOUT,
    };
    (code, err.to_string())
}

/// Environment variable holding the enrollment token.
pub const TOKEN_ENV: &str = "FLEET_AGENT_TOKEN";

/// The token from `--token`, `$FLEET_AGENT_TOKEN` or `--token-file`, in that order.
/// (Read here rather than with clap's `env` feature, which costs binary size.)
fn read_token(args: &EnrollArgs) -> Result<String, (u8, String)> {
    let from_env = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty());
    match (args.token.as_ref(), from_env.as_ref(), &args.token_file) {
        (Some(token), _, _) | (None, Some(token), None) => Ok(token.clone()),
        (None, _, Some(path)) => read_token_file(path),
        (None, None, None) => Err(fail(
            "no enrollment token: pass --token, set FLEET_AGENT_TOKEN, or use --token-file",
        )),
    }
}

fn read_token_file(path: &Path) -> Result<String, (u8, String)> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|err| fail(format!("reading --token-file {}: {err}", path.display())))
}

/// The agent runs unprivileged; as root it refuses unless `FLEET_AGENT_ALLOW_ROOT=1`.
fn refuse_root() -> Outcome {
    root_check(
        nix::unistd::geteuid().is_root(),
        std::env::var(ALLOW_ROOT_ENV).ok().as_deref(),
    )
}

fn root_check(is_root: bool, allow: Option<&str>) -> Outcome {
    if is_root && allow != Some("1") {
        return Err(fail(format!(
            "refusing to run as root: run as the unprivileged fleet-agent user (or set {ALLOW_ROOT_ENV}=1 for tests and containers)"
        )));
    }
    Ok(())
}

fn init_logging(config: &Config) {
    let level = std::env::var("FLEET_AGENT_LOG")
        .ok()
        .unwrap_or_else(|| config.log_level.clone());
    let level = match level.as_str() {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    crate::logging::StderrLogger::install(level);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_and_state_dir_work_before_and_after_every_command() {
        for command in [
            vec!["run"],
            vec!["run", "--once"],
            vec!["status"],
            vec!["configfile"],
            vec!["enroll", "--server", "https://x", "--ca", "ca.pem"],
        ] {
            let mut before = vec!["fleet-agent", "--config", "/c.toml", "--state-dir", "/s"];
            before.extend(&command);
            let mut after = vec!["fleet-agent"];
            after.extend(&command);
            after.extend(["--config", "/c.toml", "--state-dir", "/s"]);
            for args in [before, after] {
                let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
                assert_eq!(cli.config, PathBuf::from("/c.toml"));
                assert_eq!(cli.state_dir, PathBuf::from("/s"));
            }
        }
    }

    #[test]
    fn defaults_are_the_packaged_paths() {
        let cli = Cli::try_parse_from(["fleet-agent", "status"]).unwrap();
        assert_eq!(cli.config, PathBuf::from("/etc/fleet-agent/agent.toml"));
        assert_eq!(cli.state_dir, PathBuf::from("/var/lib/fleet-agent"));
    }

    #[test]
    fn token_and_token_file_conflict() {
        let args = "fleet-agent enroll --server https://x --ca c --token t --token-file f";
        let err = Cli::try_parse_from(args.split(' ')).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn timeout_requires_once() {
        assert!(Cli::try_parse_from(["fleet-agent", "run", "--timeout", "5"]).is_err());
        assert!(Cli::try_parse_from(["fleet-agent", "run", "--once", "--timeout", "5"]).is_ok());
    }

    #[test]
    fn root_is_refused_unless_allowed() {
        let (code, message) = root_check(true, None).unwrap_err();
        assert_eq!(code, EXIT_FAILURE);
        assert!(message.contains("FLEET_AGENT_ALLOW_ROOT=1"), "{message}");
        assert!(!message.contains('\n'));
        assert!(root_check(true, Some("0")).is_err());
        assert!(root_check(true, Some("1")).is_ok());
        assert!(root_check(false, None).is_ok());
    }

    #[test]
    fn token_sources() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("token");
        std::fs::write(&file, "fpe_abc\n").unwrap();
        let args = |token: Option<&str>, token_file: Option<PathBuf>| EnrollArgs {
            server: "https://x".into(),
            token: token.map(str::to_owned),
            token_file,
            ca: "c".into(),
        };
        assert_eq!(read_token(&args(Some("t"), None)).unwrap(), "t");
        assert_eq!(read_token(&args(None, Some(file))).unwrap(), "fpe_abc");
        assert!(read_token(&args(None, None))
            .unwrap_err()
            .1
            .contains("FLEET_AGENT_TOKEN"));
        assert!(read_token(&args(None, Some(tmp.path().join("absent")))).is_err());
    }

    #[test]
    fn run_errors_map_to_distinct_exit_codes() {
        assert_eq!(run_error(RunError::Fatal("x".into())).0, EXIT_FAILURE);
        assert_eq!(run_error(RunError::Revoked("x".into())).0, EXIT_REVOKED);
        assert_eq!(
            run_error(RunError::OnceTimeout("x".into())).0,
            EXIT_ONCE_TIMEOUT
        );
    }
}
