//! One feed end to end: hash, read and validate, plan against the store, commit in one
//! transaction, write the reports.

use std::path::{Path, PathBuf};

use crate::engine::Rules;
use crate::feed::Limits;
use crate::model::MerchantId;
use crate::report::FeedOutcome;
use crate::store::{AnyStore, StoreError};

/// What to do with a feed whose bytes were already processed for the same merchant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DuplicatePolicy {
    /// Do not apply it again; its report names the earlier feed (default).
    #[default]
    Skip,
    /// Process it like any other feed (idempotency keys still protect against replays).
    Process,
}

/// Everything `process_file` needs besides the file.
pub struct Context {
    /// The order store.
    pub store: AnyStore,
    /// Rule knobs.
    pub rules: Rules,
    /// Reader limits.
    pub limits: Limits,
    /// Duplicate-feed policy.
    pub duplicate_policy: DuplicatePolicy,
    /// Where reports go (a merchant subfolder is added for merchant inboxes).
    pub outbox: PathBuf,
}

/// One file to process.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// The file to read (in `work/` for the daemon, anywhere for `adjustd process`).
    pub path: &'a Path,
    /// The name the file was dropped under (reports are named after it).
    pub file_name: &'a str,
    /// The claim token (unique name in `work/`), `None` for `adjustd process`.
    pub claim_token: Option<&'a str>,
    /// The merchant the file's inbox folder is bound to (`inbox/<merchant>/`): reports go
    /// to `outbox/<merchant>/` and a feed for another merchant is rejected.
    pub bound_merchant: Option<&'a MerchantId>,
    /// For the top-level inbox: merchants allowed there (`None`: any).
    pub allowed_merchants: Option<&'a [MerchantId]>,
}

/// A processed feed and where its reports are.
#[derive(Debug, Clone)]
pub struct Processed {
    /// What the report says.
    pub outcome: FeedOutcome,
    /// The XML report.
    pub xml_report: PathBuf,
    /// The JSON report.
    pub json_report: PathBuf,
    /// True when this was the recovery of an earlier attempt that had committed (the
    /// report was only re-emitted).
    pub recovered: bool,
}

/// Errors that leave the feed unprocessed (nothing committed); the caller keeps the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// Reading the feed file failed.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store failed; see [`StoreError::is_transient`].
    #[error("store")]
    Store(#[from] StoreError),
    /// Writing a report failed.
    #[error("writing report {path}")]
    Report {
        /// The report file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl ProcessError {
    /// True when retrying later can succeed (database away or busy).
    pub fn is_transient(&self) -> bool {
        match self {
            ProcessError::Store(error) => error.is_transient(),
            ProcessError::Read { .. } | ProcessError::Report { .. } => false,
        }
    }
}

/// Processes one feed file: exactly-once application and one pair of reports.
///
/// # Errors
/// See [`ProcessError`]; bad input is never an error (it is in the report).
pub fn process_file(context: &mut Context, source: &Source<'_>) -> Result<Processed, ProcessError> {
    let _ = (context, source);
    unimplemented!("pipeline::process_file is being written")
}
