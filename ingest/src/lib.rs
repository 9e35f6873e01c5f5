//! fleetplane ingest: device records from MQTT into Postgres exactly once, acknowledged only
//! after the commit.
//!
//! ```text
//! source ──InboundMessage──▶ IngestSender ──▶ batcher (per tenant) ──▶ writers ──COMMIT──▶ AckSink
//! ```
//!
//! * Sources: the embedded broker's local link (fleetd wires it: call [`IngestSender::send`]
//!   for each message), or [`ExternalSource`], an MQTT v5 client of an external broker with a
//!   shared subscription and manual acks.
//! * Sink: [`AckSink`], where encoded [`wire::Ack`] watermarks go after the commit.
//! * [`start`] runs the pipeline; [`Metrics::register`] adds its metrics to fleetd's registry;
//!   [`Retention`] is the background job for retention and partitions.
//!
//! `architecture.md` beside this crate explains tenant resolution, the watermark, batching and
//! backpressure.

mod batch;
mod commit;
mod config;
mod directory;
mod error;
mod metrics;
mod mqtt;
mod pipeline;
mod retention;
mod sink;
mod source;
mod tls;
pub mod watermark;

pub use config::IngestConfig;
pub use error::IngestError;
pub use metrics::{Metrics, ReasonLabel, TopicLabel};
pub use mqtt::{ExternalBrokerConfig, ExternalHandle, ExternalSource};
pub use pipeline::{start, IngestHandle};
pub use retention::{Retention, RetentionConfig, RetentionReport};
pub use sink::{AckError, AckSink, BoxFuture};
pub use source::{InboundMessage, IngestSender, LossInjector};
