//! fleetplane ingest: device records from MQTT into Postgres exactly once, acknowledged only
//! after the commit.
//!
//! ```text
//! source ──InboundMessage──▶ IngestSender ──▶ batcher (per tenant) ──▶ writers ──COMMIT──▶ AckSink
//! ```
//!
//! * Sources: the embedded broker's sessions (fleetd wires them: [`IngestSender::send`] for
//!   each device publish), or [`ExternalSource`], an MQTT v5 client of an external broker with a
//!   shared subscription and manual acks.
//! * Sinks: [`AckSink`], where encoded [`wire::Ack`] watermarks go after the commit, and
//!   [`StreamSink`], where the records a commit inserted go for live streams (best effort;
//!   [`start_with_streams`]).
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
mod stream;
mod tls;
pub mod watermark;

pub use config::IngestConfig;
pub use error::IngestError;
pub use metrics::{Metrics, ReasonLabel, TopicLabel};
pub use mqtt::{ExternalBrokerConfig, ExternalHandle, ExternalSource};
pub use pipeline::{start, start_with_streams, IngestHandle};
pub use retention::{Retention, RetentionConfig, RetentionReport};
pub use sink::{AckError, AckSink, BoxFuture, CommittedRecord, NoStreams, StreamSink};
pub use source::{InboundMessage, IngestSender, LossInjector};
