//! The integration-test binary: one target, one module per area.

mod cli;
mod docs;
mod pipeline;
mod report;
