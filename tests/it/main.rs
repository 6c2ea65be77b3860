//! The integration-test binary: one target, one module per area.

mod cli;
mod docs;
// mod pipeline; (enabled once the SQLite store is merged)
mod crash;
mod daemon;
mod report;
mod util;
