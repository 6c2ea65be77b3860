//! adjustd applies Amazon Order Adjustment Feeds (refunds and partial cancellations) to an
//! order store exactly once and writes a processing report per feed.
//!
//! Modules in reading order:
//! - [`model`]: domain types (ids, exact money, currencies, components, reasons).
//! - [`problem`]: the result-code table and the `Problem` value.
//! - [`feed`]: the streaming XML reader (wire format, limits, positions).
//! - [`validate`]: schema-level checks, typed messages and problems.
//! - [`canon`]: the canonical content digest of a feed (keys of items without one).
//! - [`engine`]: the refund and cancellation rules, pure.
//! - [`store`]: the order store trait, SQLite and PostgreSQL backends, order import.
//! - [`report`]: ProcessingReport XML and JSON, atomic writes.
//! - [`pipeline`]: one feed end to end (read, validate, plan, commit, report).
//! - [`inbox`]: the watched folder: readiness, claims, archive/failed moves, recovery.
//! - [`resources`]: errors of the process or system, not of a file; the open-file limit.
//! - [`park`]: parked feeds: ORDER_NOT_FOUND retried with back-off, then pinned.
//! - [`daemon`]: the event loop, retries, shutdown.
//! - [`metrics`]: Prometheus metrics and the health endpoint.
//! - [`config`]: TOML configuration, raw and resolved.
//! - [`cli`]: the command line.
//! - [`telemetry`]: logging setup.

pub mod canon;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod feed;
pub mod inbox;
pub mod metrics;
pub mod model;
pub mod park;
pub mod pipeline;
pub mod problem;
pub mod report;
pub mod resources;
pub mod store;
pub mod telemetry;
pub mod validate;
