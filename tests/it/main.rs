//! The integration-test binary: one target, one module per area.

mod cli;
mod crash;
mod daemon;
mod differential;
mod docs;
mod engine_model;
mod engine_table;
mod fixtures;
mod hostile;
mod multi;
mod names;
mod park;
mod pipeline;
mod pipeline_model;
mod report;
mod store;
mod store_pg;
mod util;
