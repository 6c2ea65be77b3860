//! The watched folder: readiness gates, claim by atomic rename into `work/`, moves to
//! `archive/` and `failed/`, crash recovery of `work/`, notify events as hints plus rescans.

use std::path::PathBuf;
use std::time::Duration;

use crate::model::MerchantId;

/// How the inbox is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// notify, or polling on network filesystems.
    Auto,
    /// notify.
    Notify,
    /// polling.
    Poll,
}

/// Resolved inbox settings.
#[derive(Debug, Clone)]
pub struct InboxConfig {
    /// Inbox folder.
    pub inbox: PathBuf,
    /// Work folder.
    pub work: PathBuf,
    /// Archive folder.
    pub archive: PathBuf,
    /// Failed folder.
    pub failed: PathBuf,
    /// Outbox folder.
    pub outbox: PathBuf,
    /// Settle time.
    pub settle: Duration,
    /// Ignore globs.
    pub ignore: Vec<String>,
    /// Grace for truncated XML.
    pub truncated_grace: Duration,
    /// Done-marker suffix.
    pub done_marker: Option<String>,
    /// Allowed merchants in the top-level inbox.
    pub allowed_merchants: Option<Vec<MerchantId>>,
    /// Watch mode.
    pub watch: WatchMode,
    /// Poll period.
    pub poll_interval: Duration,
    /// Rescan period.
    pub rescan_interval: Duration,
}
