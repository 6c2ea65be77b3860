//! The integration-test binary: one target, one module per area.

mod cli;
mod docs;
mod engine_model;
mod engine_table;
mod fixtures;
mod hostile;
mod pipeline_model;
// mod pipeline; (enabled once the SQLite store is merged)
mod report;
mod store;
