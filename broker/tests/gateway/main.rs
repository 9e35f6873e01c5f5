//! The gateway's integration tests, in one test binary: every test starts its own
//! broker on an ephemeral loopback port with its own PKI, so they share no state and
//! run in parallel. None sets an environment variable or installs a global tracing
//! subscriber or crypto provider (clients pass ring explicitly).

mod common;
mod exhaustion;
mod identity;
mod interop;
mod limits;
mod revocation;
mod session;
mod slow_clients;
mod streams;
mod tenant_quota;
mod topic_rules;
