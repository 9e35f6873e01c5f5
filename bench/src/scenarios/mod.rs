//! One module per scenario of `fleet-bench` (BENCHMARKS.md has their tables).

pub mod api;
pub mod connect;
pub mod enroll;
pub mod ingest;
pub mod patch_wave;
