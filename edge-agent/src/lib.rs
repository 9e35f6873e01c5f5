//! `fleet-agent`, the fleetplane device agent, as a library; `src/main.rs` only calls
//! [`cli::main`].
//!
//! Public, for the binary and for tests:
//!
//! - [`cli`]: the command line and its exit codes.
//! - [`outbox`]: the on-disk queue where records wait until the server's ack watermark
//!   covers them (bounded, CRC-checked, survives power loss and `kill -9`). It is
//!   synchronous: `run` calls it on tokio's blocking pool, never on the runtime thread.
//! - [`collect`]: system metrics from `/proc` and `/sys`, and patch status from the
//!   package manager (apt/dpkg, apk, opkg). Also synchronous; the package-manager
//!   commands run on the blocking pool.
//!
//! Inside the crate: `config` (agent.toml), `identity` (the state directory, key and
//! certificates), `enroll` and `https` (enrollment and renewal over HTTPS), `url` (the one
//! parser of server and broker URLs), `tls` (rustls configurations pinned to the fleet
//! root), `records` (collector output to `wire` records and batches), `run` (the `run`
//! command: the main loop in `run/mod.rs`, the broker link in `run/link.rs`, the
//! collection schedules in `run/schedule.rs`, renewal in `run/renewal.rs`, the outbox on
//! the blocking pool in `run/queue.rs`), `status`, `certinfo` and `logging`. The retry
//! policy is `wire::backoff`, shared with ingest.

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
