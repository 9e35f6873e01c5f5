//! fleetd, the fleetplane server: the composition root that reads the configuration, opens the
//! database (starting the private cluster when no URL is configured) and serves the listeners,
//! in that order, until it is told to stop.

mod audit_checkpoints;
mod audit_retention;
mod backups;
pub mod config;
mod crl_file;
mod data_path;
mod descriptors;
mod device_sessions;
mod key_file;
mod live_streams;
pub mod logging;
mod metrics;
pub mod pki;
pub mod production;
mod sealing_key;
mod server;
pub mod siem;

pub use config::Config;
pub use server::{start, Running};
