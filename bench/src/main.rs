//! fleet-bench: the numbers a buyer compares, each scenario one command, measured side by side
//! with the peers on the same machine in the same run (BENCHMARKS.md).
//!
//!     TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!         cargo run --release -p fleet-bench -- <scenario> [options]
//!
//! fleetd runs as a child process of its own (`fleet-bench serve`), so that its CPU time and
//! memory are read from /proc apart from the load's. Every scenario prints its table, writes
//! `<out>/<scenario>.json` and, where it has a time series, `<out>/<scenario>.svg`.

mod fleetd_child;
mod procfs;
mod report;
mod run;
mod scenarios;
mod session;
mod sim;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "fleet-bench", about, version)]
struct Cli {
    /// Where the JSON results and SVG charts go.
    #[arg(long, global = true, default_value = "bench-results")]
    out: PathBuf,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Devices connect at once (full handshakes), then reconnect (resumption); against Mosquitto.
    ConnectStorm(scenarios::connect::StormArgs),
    /// Devices connected and idle: fleetd's memory per device; against Mosquitto.
    IdleFleet(scenarios::connect::IdleArgs),
    /// Telemetry at increasing rates until p99 passes the bound; the database and broker tiers.
    Ingest(scenarios::ingest::Args),
    /// Every device reports a full package inventory at once.
    PatchWave(scenarios::patch_wave::Args),
    /// Devices enroll with one shared token.
    EnrollStorm(scenarios::enroll::Args),
    /// Authenticated GET /v1/devices and the patch summary on a large tenant; wrk and our client.
    Api(scenarios::api::Args),
    /// fleetd itself, as the scenarios start it (internal).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        options: fleetd_child::ServeOptions,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Scenario::Serve {
        database_url,
        data_dir,
        options,
    } = cli.scenario
    {
        return runtime.block_on(fleetd_child::serve(database_url, data_dir, options));
    }
    let report = runtime.block_on(async {
        let run = run::Run::start().await?;
        match cli.scenario {
            Scenario::ConnectStorm(args) => scenarios::connect::storm(&run, args).await,
            Scenario::IdleFleet(args) => scenarios::connect::idle(&run, args).await,
            Scenario::Ingest(args) => scenarios::ingest::run(&run, args).await,
            Scenario::PatchWave(args) => scenarios::patch_wave::run(&run, args).await,
            Scenario::EnrollStorm(args) => scenarios::enroll::run(&run, args).await,
            Scenario::Api(args) => scenarios::api::run(&run, args).await,
            Scenario::Serve { .. } => unreachable!("served above"),
        }
    })?;
    println!("\n## {}\n\n{}", report.scenario, report.table());
    for path in report.write(&cli.out)? {
        println!("wrote {}", path.display());
    }
    anyhow::ensure!(
        report.incomplete.is_empty(),
        "the run is incomplete: {}",
        report.incomplete.join("; ")
    );
    Ok(())
}
