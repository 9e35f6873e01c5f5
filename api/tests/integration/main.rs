//! api's integration tests, one binary: the helpers in `common` serve every module, and
//! the crate links once instead of once per file.

mod common;
mod enroll;
mod enroll_cost;
mod exhaustion;
mod renew;
mod tls_policy;
