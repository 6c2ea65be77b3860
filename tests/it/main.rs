//! The integration-test binary: one target, one module per area.

mod differential;
mod docs;
mod fixtures;
mod hostile;
