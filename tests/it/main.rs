//! The integration-test binary: one target, one module per area.
mod store;
mod store_pg;
