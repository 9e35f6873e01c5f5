//! Ingest's errors.

/// What can go wrong when starting or running ingest.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A setting cannot work.
    #[error("ingest config: {field}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// TLS material for the external broker is unusable.
    #[error("external broker TLS: {0}")]
    Tls(String),
    /// Ingest has shut down; nothing more is accepted.
    #[error("ingest has shut down")]
    Closed,
}
