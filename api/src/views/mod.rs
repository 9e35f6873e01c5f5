//! What the API shows of device data, as plain types and functions: no HTTP, no SQL. Handlers
//! read rows through `store`, decode bodies with `wire`, and answer with these views.

pub mod chart;
pub(crate) mod markup;
pub mod telemetry;
