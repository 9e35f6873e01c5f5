//! wire's integration tests, one binary: the helpers in `common` serve every module, and
//! the crate links once instead of once per file.

mod body;
mod bounds;
mod common;
mod evolution;
mod no_panic;
mod record;
mod roundtrip;
mod view;
