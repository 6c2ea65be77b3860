//! Processing reports: Amazon's ProcessingReport XML and its JSON twin, rendered from a
//! [`FeedOutcome`], and the atomic file writes that put them in the outbox. No business
//! rules: the outcome already says everything.

use crate::model::MerchantId;
use crate::problem::Problem;
use crate::store::FeedStatus;

/// Everything a report says about one feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedOutcome {
    /// The feed id (`DocumentTransactionID`).
    pub feed_id: u64,
    /// The file name as dropped.
    pub file_name: String,
    /// The merchant, when the header could be read.
    pub merchant: Option<MerchantId>,
    /// Complete or Rejected.
    pub status: FeedStatus,
    /// The earlier feed with the same bytes, when this one was a duplicate.
    pub duplicate_of: Option<u64>,
    /// Hex SHA-256 of the file.
    pub content_hash: String,
    /// RFC 3339 UTC time of processing.
    pub processed_at: String,
    /// Messages processed.
    pub messages_processed: u64,
    /// Messages applied (warnings included).
    pub messages_successful: u64,
    /// Messages with an error.
    pub messages_with_error: u64,
    /// Messages with a warning.
    pub messages_with_warning: u64,
    /// Every error and warning, feed-level ones first, then by message in document order.
    pub results: Vec<Problem>,
}
