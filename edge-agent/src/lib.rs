//! `fleet-agent`, the fleetplane device agent, as a library; `src/main.rs` only calls
//! [`cli::main`].
//!
//! Public, for the binary and for tests:
//!
//! - [`cli`]: the command line and its exit codes.
//! - [`outbox`]: the on-disk queue where records wait until the server's ack watermark
//!   covers them (bounded, CRC-checked, survives power loss and `kill -9`). Synchronous.
//! - [`collect`]: system metrics from `/proc` and `/sys`, and patch status from the
//!   package manager (apt/dpkg, apk, opkg). Also synchronous.
//!
//! Inside the crate: `config` (agent.toml), `identity` (the state directory, key and
//! certificates), `enroll` and `https` (enrollment and renewal over HTTPS), `url` (the one
//! parser of server and broker URLs), `tls` (rustls configurations pinned to the fleet
//! root), `records` (collector output to `wire` records and batches), `run` (the `run`
//! command), `status`, `certinfo` and `logging`.

#![warn(missing_docs)]

mod certinfo;
pub mod cli;
pub mod collect;
mod config;
mod enroll;
mod https;
mod identity;
mod logging;
pub mod outbox;
mod records;
mod run;
mod status;
mod tls;
mod url;
