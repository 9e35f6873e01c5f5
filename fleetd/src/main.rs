//! The fleetd binary: parses the command line, sets up logging, runs until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleetd::config::{self, Overrides};
use fleetd::Config;

/// The fleetplane server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, env = "FLEETD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Where fleetd keeps what it creates (private PostgreSQL cluster, dev PKI).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL of the owner role, instead of the private cluster. Arguments are visible
    /// to every local user (/proc/PID/cmdline, ps): give a URL with a password in
    /// --database-url-file or FLEETD_DATABASE_URL instead.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// A file holding the PostgreSQL URL (one line) [env: FLEETD_DATABASE_URL_FILE].
    #[arg(long, global = true, value_name = "FILE")]
    database_url_file: Option<PathBuf>,
    /// Refuse to start on development defaults: a generated PKI, the root CA key on this host,
    /// non-loopback listeners without a configured PKI (config: production = true).
    #[arg(long, global = true)]
    production: bool,
    /// Address of the HTTPS API listener.
    #[arg(long, global = true)]
    api_listen: Option<String>,
    /// Address of the devices' MQTT listener.
    #[arg(long, global = true)]
    broker_listen: Option<String>,
    /// Address of the plain-HTTP Prometheus listener (/metrics).
    #[arg(long, global = true)]
    metrics_listen: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Run,
    /// Print a commented configuration file holding every default.
    Configfile,
    /// Check a configuration file (with the environment and flags on top, as at start, and
    /// production mode's refusals) without starting: exit 0 and a summary, or exit 2 and what
    /// is wrong, where.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Configfile) = cli.command {
        print!("{}", config::template());
        return ExitCode::SUCCESS;
    }
    let overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        database_url: cli.database_url.clone().map(config::SecretString::new),
        database_url_file: cli.database_url_file.clone(),
        production: cli.production.then_some(true),
        api_listen: cli.api_listen.clone(),
        broker_listen: cli.broker_listen.clone(),
        metrics_listen: cli.metrics_listen.clone(),
    };
    if let Some(Command::CheckConfig { file }) = &cli.command {
        return check_config(file, &overrides);
    }
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("fleetd: {e}");
            return ExitCode::from(2);
        }
    };
    fleetd::logging::init(&config.log);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("fleetd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives once start-up has begun gets a clean shutdown.
    let mut signals = ShutdownSignals::install()?;
    let running = fleetd::start(config).await?;
    let fatal = tokio::select! {
        signal = signals.recv() => { tracing::info!(signal, "shutdown requested"); None }
        status = running.fatal() => Some(status),
    };
    running.shutdown().await?;
    match fatal {
        Some(status) => {
            anyhow::bail!("the private PostgreSQL cluster exited unexpectedly ({status})")
        }
        None => Ok(()),
    }
}

struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// `fleetd check-config FILE`: loads the configuration as a start would, and says so.
fn check_config(file: &std::path::Path, overrides: &Overrides) -> ExitCode {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let refused = |field: Option<String>, error: &dyn std::fmt::Display| {
        match field.and_then(|field| config::line_of(&text, &field)) {
            Some(line) => eprintln!("fleetd: {}:{line}: {error}", file.display()),
            None => eprintln!("fleetd: {}: {error}", file.display()),
        }
        ExitCode::from(2)
    };
    let config = match Config::load(Some(file), overrides) {
        Ok(config) => config,
        Err(e) => return refused(e.field(), &e),
    };
    // Production mode's refusals only read the PKI directory; a start would make them.
    if let Err(refusal) = fleetd::production::check(&config) {
        return refused(Some("production".into()), &refusal);
    }
    println!("{}: ok", file.display());
    println!("{}", config::summary(&config));
    ExitCode::SUCCESS
}
