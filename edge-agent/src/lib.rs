//! Library half of `fleet-agent`, the device agent.
//!
//! - [`outbox`]: the on-disk queue where records wait until the server's ack watermark
//!   covers them (bounded, CRC-checked, survives power loss and `kill -9`).
//! - [`collect`]: system metrics from `/proc` and `/sys`, and patch status from the
//!   package manager (apt/dpkg, apk, opkg).
//!
//! Nothing here does networking or async: the agent calls these from a blocking task.

#![warn(missing_docs)]

pub mod collect;
pub mod outbox;
