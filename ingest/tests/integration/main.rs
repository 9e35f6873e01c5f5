//! ingest's integration tests, one binary: the helpers in `common` serve every module, and
//! the crate links once instead of once per file.

mod bad_input;
mod common;
mod epochs;
mod exactly_once;
mod external_mosquitto;
mod isolation;
mod postgres_outage;
mod refused_device;
mod retention;
