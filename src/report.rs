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

/// Errors reading a stored JSON report back.
#[derive(Debug, thiserror::Error)]
#[error("invalid stored report: {0}")]
pub struct ReportError(pub String);

/// Renders the ProcessingReport XML.
pub fn render_xml(outcome: &FeedOutcome) -> String {
    let _ = outcome;
    unimplemented!("report::render_xml is being written")
}

/// Renders the JSON twin.
pub fn render_json(outcome: &FeedOutcome) -> String {
    let _ = outcome;
    unimplemented!("report::render_json is being written")
}

/// Reads a JSON report back.
///
/// # Errors
/// Invalid JSON.
pub fn parse_json(json: &str) -> Result<FeedOutcome, ReportError> {
    let _ = json;
    unimplemented!("report::parse_json is being written")
}

/// The XML and JSON report paths of a feed.
pub fn report_paths(
    outbox: &std::path::Path,
    merchant_folder: Option<&MerchantId>,
    file_name: &str,
    feed_id: u64,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let _ = (outbox, merchant_folder, file_name, feed_id);
    unimplemented!("report::report_paths is being written")
}

/// Writes both reports atomically.
///
/// # Errors
/// I/O errors.
pub fn write_reports(
    outcome: &FeedOutcome,
    xml_path: &std::path::Path,
    json_path: &std::path::Path,
) -> std::io::Result<()> {
    let _ = (outcome, xml_path, json_path);
    unimplemented!("report::write_reports is being written")
}
