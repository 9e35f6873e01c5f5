//! fleetctl, the fleetplane operator CLI.
//!
//! Almost every command talks HTTPS to fleetd's management API (`api/CONTRACT.md`):
//! `--server URL` (env `FLEETCTL_SERVER`, default `https://localhost:8443`), trusting the fleet
//! root CA of `--ca FILE` (env `FLEETCTL_CA`) or else the system's roots, authenticated with the
//! API key of env `FLEETCTL_API_KEY` or `--api-key-file FILE` (never an argument holding the key
//! itself: arguments show in `ps` and shell history).
//!
//! Bootstrap and break-glass work on the database instead, through `--data-dir DIR` (fleetd's
//! data directory, whose private cluster fleetctl attaches to or starts but never creates) or
//! `--database-url URL` (or `--database-url-file FILE`, which keeps a password out of argv, where
//! every local user can read it): `tenant create` (the tenant and its first owner key), `tenant list`,
//! `api-key create --tenant T --role owner` (an owner locked out of the API) and `audit verify`
//! of every tenant; `db migrate` applies the migrations (fleetd does at start; no other command
//! migrates, and each refuses a schema other than its own). `backup create|verify|restore` work on
//! the database too (encrypted dumps, verified by restoring them: store::backup); `pki init` and
//! `backup keygen` work locally.
//!
//! Output is a table for people (a header row, aligned columns, RFC 3339 times) or, with
//! `--json`, the API's JSON for scripts.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | refused by the server or the database (a 4xx other than below, a conflict, an invalid value), a verification failed (a broken audit chain), or the output could not be written |
//! | 2 | usage error (the command line) |
//! | 3 | not found: HTTP 404, or an unknown `--tenant` |
//! | 4 | authentication or permission: HTTP 401/403, no or a malformed API key |
//! | 5 | the server or the database cannot be reached, or failed: HTTP 5xx, TLS, timeouts |
//! | 6 | the database's schema is not this fleetctl's: older (run `fleetctl db migrate`) or newer |
//!
//! Errors are one line on stderr: `fleetctl: <detail> (<problem type slug>)`.

mod cli;
mod commands;
mod db;
mod error;
mod http;
mod output;
mod parse;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fleetctl: cannot start the async runtime: {e} (internal)");
            return ExitCode::from(error::Exit::Unavailable.code());
        }
    };
    match runtime.block_on(commands::run(cli.command, cli.global)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("fleetctl: {failure}");
            failure.exit.into()
        }
    }
}
