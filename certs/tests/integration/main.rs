//! certs's integration tests, one binary: the helpers in `common` serve every module, and
//! the crate links once instead of once per file.

mod common;
mod csr_policy;
mod identity;
mod issuance;
mod pki_dir;
mod service_client;
