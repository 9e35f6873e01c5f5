//! `fleet-agent`: the fleetplane device agent.
//!
//! See `README.md` in this crate for the command-line contract, the state directory and the
//! certificate renewal protocol. The outbox and the collectors live in the library half
//! (`edge_agent`); everything here is the program around them.

mod backoff;
mod certinfo;
mod cli;
mod config;
mod enroll;
mod https;
mod identity;
mod logging;
mod records;
mod run;
mod status;
mod tls;

fn main() -> std::process::ExitCode {
    cli::main()
}
