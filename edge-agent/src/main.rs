//! `fleet-agent`: the fleetplane device agent.
//!
//! See `README.md` in this crate for the command-line contract, the state directory and the
//! certificate renewal protocol. Everything lives in the library (`edge_agent`); this is
//! only the entry point.

fn main() -> std::process::ExitCode {
    edge_agent::cli::main()
}
