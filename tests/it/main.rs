//! The integration-test binary: one target, one module per area.

mod cli;
mod docs;
mod engine_model;
mod engine_table;
mod fixtures;
mod hostile;
mod pipeline;
mod report;
mod store;
mod store_pg;
