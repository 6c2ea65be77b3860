//! The integration-test binary: one target, one module per area.
mod engine_model;
mod engine_table;
