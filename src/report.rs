//! Processing reports: Amazon's ProcessingReport XML and its JSON twin, rendered from a
//! [`FeedOutcome`], the JSON parsed back (the pipeline keeps it in the feed record and
//! re-emits both reports from it after a crash), the report file names, and the atomic file
//! writes that put them in the outbox (and the sweep that removes the temp files an
//! interrupted write left there). No business rules: the outcome already says
//! everything; this module only words it and writes it down.
//!
//! Rendering is deterministic: the same outcome always gives the same bytes, so re-emitting
//! a report after a crash rewrites identical files. The files are rendered straight into
//! their temp files, never held whole in memory ([`write_reports`]); the JSON the feed record
//! keeps is the one report held as a string ([`render_json`]).

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{AmazonOrderId, MerchantId, MessageId, OrderItemCode, Position};
use crate::problem::{Code, Problem, Severity};
use crate::store::FeedStatus;
use crate::telemetry::escaped;

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
    /// Hex SHA-256 of the file, or [`crate::pipeline::UNREAD_CONTENT_HASH`] when the feed
    /// was rejected for its size before it was read.
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

/// The `schema_version` of the JSON report this code writes (and the only one it reads).
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// `MerchantIdentifier` of a report whose feed header could not be read.
pub const UNKNOWN_MERCHANT: &str = "UNKNOWN";

/// Why a JSON report could not be read back into a [`FeedOutcome`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Not JSON, or not the shape of a report.
    #[error("report json does not have the report shape")]
    Syntax(#[source] serde_json::Error),
    /// Written by another version of adjustd.
    #[error("report json has schema_version {found}, expected {JSON_SCHEMA_VERSION}")]
    UnsupportedVersion {
        /// The version found.
        found: u64,
    },
    /// A field has a value no report of ours would hold.
    #[error("report json has an invalid {field}: {reason}")]
    Invalid {
        /// The field, e.g. `results[2].code`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Renders the ProcessingReport XML: an `AmazonEnvelope` (no namespace, like Amazon's own
/// reports) with `MessageType` `ProcessingReport` and one `Message` (MessageID 1) holding
/// the report. One `Result` per problem, in the outcome's order; MessageID 0 for feed-level
/// problems. Text is escaped and characters XML 1.0 does not allow are dropped.
///
/// `AdditionalInfo/AmazonOrderID` and `AmazonOrderItemCode` are written only when they have
/// the schema's shape (a malformed id from a bad feed would make the report itself invalid);
/// the description still quotes them, and the JSON report keeps them as they were.
pub fn render_xml(outcome: &FeedOutcome) -> String {
    let mut xml = String::new();
    let Ok(()) = xml_parts(outcome, |part| {
        xml.push_str(part);
        Ok::<(), std::convert::Infallible>(())
    });
    xml
}

/// Writes the ProcessingReport XML of [`render_xml`] to `out` piece by piece, never more
/// than [`XML_PIECE_BYTES`] and one `Result` at a time: the report of 20 000 results (tens of
/// megabytes) is never held in memory whole.
///
/// # Errors
///
/// The errors of `out`.
pub fn write_xml(outcome: &FeedOutcome, out: &mut dyn io::Write) -> io::Result<()> {
    xml_parts(outcome, |part| out.write_all(part.as_bytes()))
}

/// How much XML [`write_xml`] gathers before it hands it to the writer.
pub const XML_PIECE_BYTES: usize = 1 << 16;

/// Renders the XML of [`render_xml`] in pieces of about [`XML_PIECE_BYTES`], handing each
/// to `emit` in document order; the pieces joined are the report.
fn xml_parts<E>(
    outcome: &FeedOutcome,
    mut emit: impl FnMut(&str) -> Result<(), E>,
) -> Result<(), E> {
    let merchant = outcome
        .merchant
        .as_ref()
        .map_or(UNKNOWN_MERCHANT, MerchantId::as_str);
    let mut xml = String::with_capacity(XML_PIECE_BYTES + 4096);
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    xml.push_str(
        "<AmazonEnvelope xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xsi:noNamespaceSchemaLocation=\"amzn-envelope.xsd\">\n",
    );
    xml.push_str("  <Header>\n");
    xml.push_str("    <DocumentVersion>1.02</DocumentVersion>\n");
    push_element(&mut xml, 4, "MerchantIdentifier", merchant);
    xml.push_str("  </Header>\n");
    xml.push_str("  <MessageType>ProcessingReport</MessageType>\n");
    xml.push_str("  <Message>\n");
    xml.push_str("    <MessageID>1</MessageID>\n");
    xml.push_str("    <ProcessingReport>\n");
    push_element(
        &mut xml,
        6,
        "DocumentTransactionID",
        &outcome.feed_id.to_string(),
    );
    push_element(&mut xml, 6, "StatusCode", outcome.status.as_str());
    xml.push_str("      <ProcessingSummary>\n");
    let counts = [
        ("MessagesProcessed", outcome.messages_processed),
        ("MessagesSuccessful", outcome.messages_successful),
        ("MessagesWithError", outcome.messages_with_error),
        ("MessagesWithWarning", outcome.messages_with_warning),
    ];
    for (name, count) in counts {
        push_element(&mut xml, 8, name, &count.to_string());
    }
    xml.push_str("      </ProcessingSummary>\n");
    for problem in &outcome.results {
        push_result(&mut xml, outcome, problem);
        if xml.len() >= XML_PIECE_BYTES {
            emit(&xml)?;
            xml.clear();
        }
    }
    xml.push_str("    </ProcessingReport>\n");
    xml.push_str("  </Message>\n");
    xml.push_str("</AmazonEnvelope>\n");
    emit(&xml)
}

/// The `ResultDescription` of one problem: where (message, line:column, element), what is
/// wrong and how to fix it, as one text a seller can act on, e.g. `Message 7, line 41:9,
/// AdjustedItem[1]/ItemPriceAdjustments/Component[2]/Amount: refund of Principal 30.00 USD
/// exceeds the 12.50 USD that remains refundable. Fix: lower the amount to at most 12.50.`
/// A duplicate feed's description names the earlier feed.
pub fn result_description(outcome: &FeedOutcome, problem: &Problem) -> String {
    let mut text = String::new();
    if problem.message_id == MessageId::FEED {
        text.push_str("Feed");
    } else {
        let _ = write!(text, "Message {}", problem.message_id);
    }
    if let Some(Position { line, column }) = problem.position {
        let _ = write!(text, ", line {line}:{column}");
    }
    let element = problem.element.trim();
    if !element.is_empty() {
        let _ = write!(text, ", {element}");
    }
    text.push_str(": ");
    let description = problem.description.trim();
    if description.is_empty() {
        push_sentence(&mut text, problem.code.summary());
    } else {
        push_sentence(&mut text, description);
    }
    if problem.code == Code::DuplicateFeed
        && let Some(earlier) = outcome.duplicate_of
    {
        let named = format!("duplicate of feed {earlier}");
        if !description.to_lowercase().contains(&named) {
            text.push(' ');
            push_sentence(&mut text, &format!("This file is a {named}"));
        }
    }
    let fix = problem.fix.trim();
    if !fix.is_empty() {
        text.push_str(" Fix: ");
        push_sentence(&mut text, fix);
    }
    text
}

/// Renders the JSON report: pretty-printed, keys in a fixed order, a trailing newline, and
/// `schema_version` 1. It holds the same facts as the XML (and the raw parts of each
/// description), and [`parse_json`] reads it back exactly. The text is built in place from
/// the outcome (no copy of its results) into a string of exactly its length: this is the
/// text the feed record keeps, megabytes for a report of 20 000 results.
pub fn render_json(outcome: &FeedOutcome) -> String {
    render_json_with(outcome, true)
}

/// The same report as [`render_json`] on one line (no newline inside, one at the end), for
/// JSON Lines output: `adjustd validate --format json` prints one such line per file.
/// [`parse_json`] reads it back exactly too.
pub fn render_json_line(outcome: &FeedOutcome) -> String {
    render_json_with(outcome, false)
}

/// Writes the JSON report of [`render_json`] to `out` as it is rendered, never holding it
/// whole.
///
/// # Errors
///
/// The errors of `out`.
pub fn write_json(outcome: &FeedOutcome, out: &mut dyn io::Write) -> io::Result<()> {
    json_to(outcome, true, &mut *out)?;
    out.write_all(b"\n")
}

/// The JSON report, pretty-printed or on one line, and a newline, in a string of exactly
/// that length: written once to count the bytes, then into its place.
fn render_json_with(outcome: &FeedOutcome, pretty: bool) -> String {
    // Neither writer fails, so neither does the report (plain strings and integers).
    let invariant = "invariant: a report of strings and integers always serializes";
    let mut length = ByteCount(0);
    json_to(outcome, pretty, &mut length).expect(invariant);
    let mut json = Vec::with_capacity(length.0 + 1);
    json_to(outcome, pretty, &mut json).expect(invariant);
    json.push(b'\n');
    String::from_utf8(json).expect("invariant: serde_json writes UTF-8")
}

/// Serializes the JSON report of `outcome` (without the final newline) into `out`.
fn json_to(outcome: &FeedOutcome, pretty: bool, out: &mut dyn io::Write) -> io::Result<()> {
    let report = json_report(outcome);
    if pretty {
        serde_json::to_writer_pretty(out, &report)
    } else {
        serde_json::to_writer(out, &report)
    }
    .map_err(io::Error::from)
}

/// A writer that only counts the bytes written to it.
struct ByteCount(usize);

impl io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The JSON shape of `outcome`, borrowing its texts.
fn json_report(outcome: &FeedOutcome) -> JsonReport<&str, JsonResults<'_>> {
    JsonReport {
        schema_version: u64::from(JSON_SCHEMA_VERSION),
        feed_id: outcome.feed_id,
        file_name: &outcome.file_name,
        merchant: outcome.merchant.as_ref().map(MerchantId::as_str),
        status: outcome.status,
        duplicate_of: outcome.duplicate_of,
        content_hash: &outcome.content_hash,
        processed_at: &outcome.processed_at,
        summary: JsonSummary {
            messages_processed: outcome.messages_processed,
            messages_successful: outcome.messages_successful,
            messages_with_error: outcome.messages_with_error,
            messages_with_warning: outcome.messages_with_warning,
        },
        results: JsonResults(&outcome.results),
    }
}

/// The `results` of a JSON report, serialized one by one from the problems.
struct JsonResults<'a>(&'a [Problem]);

impl Serialize for JsonResults<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|problem| JsonResult {
            message_id: problem.message_id.get(),
            result: problem.severity.as_str(),
            code: problem.code.number(),
            code_name: problem.code.name(),
            element: problem.element.as_str(),
            line: problem.position.map(|p| p.line),
            column: problem.position.map(|p| p.column),
            description: problem.description.as_str(),
            fix: problem.fix.as_ref(),
            amazon_order_id: problem.amazon_order_id.as_deref(),
            amazon_order_item_code: problem.amazon_order_item_code.as_deref(),
        }))
    }
}

/// Reads a JSON report written by [`render_json`] back into the outcome it was rendered
/// from: `parse_json(&render_json(x))` equals `x`.
///
/// # Errors
///
/// [`ReportError::Syntax`] when the text is not a JSON report,
/// [`ReportError::UnsupportedVersion`] for another `schema_version`, and
/// [`ReportError::Invalid`] for values no report of ours holds (an unknown code, a result
/// that disagrees with its code, a merchant identifier that is not valid, half a position).
pub fn parse_json(json: &str) -> Result<FeedOutcome, ReportError> {
    let report: JsonReport<String, Vec<JsonResult<String>>> =
        serde_json::from_str(json).map_err(ReportError::Syntax)?;
    if report.schema_version != u64::from(JSON_SCHEMA_VERSION) {
        return Err(ReportError::UnsupportedVersion {
            found: report.schema_version,
        });
    }
    let merchant = match report.merchant {
        None => None,
        Some(raw) => Some(MerchantId::new(&raw).ok_or_else(|| ReportError::Invalid {
            field: "merchant".to_owned(),
            reason: format!("{raw:?} is not a merchant identifier"),
        })?),
    };
    let results = report
        .results
        .into_iter()
        .enumerate()
        .map(|(index, result)| parse_result(index, result))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FeedOutcome {
        feed_id: report.feed_id,
        file_name: report.file_name,
        merchant,
        status: report.status,
        duplicate_of: report.duplicate_of,
        content_hash: report.content_hash,
        processed_at: report.processed_at,
        messages_processed: report.summary.messages_processed,
        messages_successful: report.summary.messages_successful,
        messages_with_error: report.summary.messages_with_error,
        messages_with_warning: report.summary.messages_with_warning,
        results,
    })
}

/// The `code` of each result of a JSON report (`None` for a result without one), read
/// without the rest of the report: a question about a stored report that needs only its
/// codes builds no tree of its 20 000 results' texts. `None` when the text is not JSON with
/// a `results` list of objects.
pub fn json_result_codes(json: &str) -> Option<Vec<Option<u32>>> {
    #[derive(Deserialize)]
    struct Codes {
        results: Vec<CodeOf>,
    }
    #[derive(Deserialize)]
    struct CodeOf {
        #[serde(default)]
        code: Option<u32>,
    }
    let codes: Codes = serde_json::from_str(json).ok()?;
    Some(
        codes
            .results
            .into_iter()
            .map(|result| result.code)
            .collect(),
    )
}

/// The two report files of a feed: `<outbox>[/<merchant>]/<file name>.<feed id>.report.xml`
/// and `.report.json`, in that order.
///
/// The file name is the name the feed was dropped under, kept as it is (spaces, Unicode, a
/// leading dash), cleaned by [`clean_file_name`] (a `/`, NUL or control character becomes
/// `_`), the rule the archive and failed names follow too. A name so long that the report
/// name would exceed 255 bytes (the usual file-name limit) is shortened at a character
/// boundary; the feed id in the name keeps shortened names apart.
pub fn report_paths(
    outbox: &Path,
    merchant_folder: Option<&MerchantId>,
    file_name: &str,
    feed_id: u64,
) -> (PathBuf, PathBuf) {
    let mut folder = outbox.to_path_buf();
    if let Some(merchant) = merchant_folder {
        folder.push(merchant.as_str());
    }
    // UTF-8 in, UTF-8 out: the lossy conversion changes nothing.
    let mut stem = clean_file_name(OsStr::new(file_name))
        .to_string_lossy()
        .into_owned();
    // ".report.json" and ".report.xml" differ in length; budget for the longer one so both
    // files keep the same stem.
    let suffix_len = format!(".{feed_id}.report.json").len();
    let budget = MAX_FILE_NAME_BYTES.saturating_sub(suffix_len);
    if stem.len() > budget {
        let mut cut = budget;
        while !stem.is_char_boundary(cut) {
            cut -= 1;
        }
        stem.truncate(cut);
    }
    (
        folder.join(format!("{stem}.{feed_id}.report.xml")),
        folder.join(format!("{stem}.{feed_id}.report.json")),
    )
}

/// `name` made fit to be the name (or the end of the name) of a file adjustd writes: a
/// report in the outbox ([`report_paths`]), a feed moved to `archive/` or `failed/`
/// ([`crate::inbox::Claim::finish`]). A path separator (`/`, NUL) becomes `_`, so the name
/// stays one path component, and so does a control character (newline, carriage return,
/// ESC, …), so a listing of those folders cannot be garbled or forged by a name (ingest
/// R10). Everything else is kept as it is, bytes that are not UTF-8 included: names are
/// bytes, and the report keeps the original name whole. One function for all those folders,
/// so a feed's names there agree.
pub fn clean_file_name(name: &OsStr) -> OsString {
    let mut cleaned = Vec::with_capacity(name.len());
    for chunk in name.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            let kept = if is_separator(c) || c.is_control() {
                '_'
            } else {
                c
            };
            cleaned.extend_from_slice(kept.encode_utf8(&mut [0; 4]).as_bytes());
        }
        cleaned.extend_from_slice(chunk.invalid());
    }
    OsString::from_vec(cleaned)
}

/// Writes both reports of an outcome, each atomically ([`write_atomic_with`]): the JSON
/// first, then the XML, each rendered straight into its temp file ([`write_json`],
/// [`write_xml`]), so neither report is held in memory whole. Writing the same outcome
/// again produces identical files.
///
/// # Errors
///
/// Any I/O error of creating the folder, writing, syncing or renaming.
pub fn write_reports(outcome: &FeedOutcome, xml_path: &Path, json_path: &Path) -> io::Result<()> {
    write_atomic_with(json_path, |out| write_json(outcome, out))?;
    write_atomic_with(xml_path, |out| write_xml(outcome, out))
}

/// Replaces `path` with `bytes` so that readers see either the old file or the whole new
/// one, even across a crash: [`write_atomic_with`] writing `bytes`.
///
/// # Errors
///
/// Any I/O error; `InvalidInput` when `path` has no parent folder or no file name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |out| out.write_all(bytes))
}

/// Replaces `path` with what `write` writes, so that readers see either the old file or
/// the whole new one, even across a crash: creates the folder if needed, writes a temp file
/// in the same folder (its name starts with `.` and ends with `.tmp`, which the inbox ignore
/// patterns and most watchers skip) through a buffer, syncs it, renames it over `path`,
/// then syncs the folder. On an error (of `write` too) the temp file is removed.
///
/// # Errors
///
/// Any I/O error; `InvalidInput` when `path` has no parent folder or no file name.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
) -> io::Result<()> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        Some(_) => Path::new("."),
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no parent folder", path.display()),
            ));
        }
    };
    if path.file_name().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        ));
    }
    create_folder(folder)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX).suffix(TEMP_SUFFIX);
    // Reports are for operators and other tools: the usual 0666 & umask, not tempfile's 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    let mut temp = builder.tempfile_in(folder)?;
    {
        let mut out = io::BufWriter::with_capacity(1 << 16, temp.as_file_mut());
        write(&mut out)?;
        out.flush()?;
    }
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|err| err.error)?;
    fsync_dir(folder)
}

/// Temp files of [`write_atomic`] are named `.adjustd-XXXXXX.tmp`.
const TEMP_PREFIX: &str = ".adjustd-";
const TEMP_SUFFIX: &str = ".tmp";

/// How long a temp file of [`write_atomic`] in the outbox must have been left unchanged
/// before [`remove_stale_temp_reports`] takes it for the leftover of an interrupted write.
/// The file lives only while its report is written (the XML rendered into it as it goes)
/// and synced (milliseconds, seconds on a slow disk); the margin keeps the sweep
/// away from a report another instance (PostgreSQL, one shared outbox) or `adjustd
/// process` is writing at that moment.
pub const STALE_TEMP_REPORT_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the temp files that interrupted report writes (a crash, a kill, a full disk
/// between create and rename) left in `outbox` and its merchant folders (ingest.md's crash
/// table: delete temp reports): regular files named exactly `.adjustd-*.tmp` whose last
/// change is at least `older_than` ago. Anything else is left alone: other names (a
/// downstream tool's own `.other.tmp`), symlinks, and whatever lies behind a symlinked
/// folder (not followed). Each removal is logged; a folder or file that cannot be read or
/// removed is logged and skipped. Returns how many files were removed.
pub fn remove_stale_temp_reports(outbox: &Path, older_than: std::time::Duration) -> usize {
    let mut removed = 0;
    let mut folders = vec![outbox.to_path_buf()];
    let mut index = 0;
    while let Some(folder) = folders.get(index).cloned() {
        index += 1;
        let entries = match fs::read_dir(&folder) {
            Ok(entries) => entries,
            // No outbox yet: nothing was ever written there.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => {
                tracing::warn!(folder = %escaped(folder.display()), error = %error, "cannot list the folder for temp reports left by an interrupted write");
                continue;
            }
        };
        for entry in entries.flatten() {
            // `file_type` does not follow symlinks.
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                // Merchant folders only: one level below the outbox.
                if folder == outbox {
                    folders.push(entry.path());
                }
                continue;
            }
            let name = entry.file_name();
            if !file_type.is_file() || !is_temp_report_name(&name.to_string_lossy()) {
                continue;
            }
            let path = entry.path();
            let age = entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .ok()
                .and_then(|modified| std::time::SystemTime::now().duration_since(modified).ok());
            if age.is_none_or(|age| age < older_than) {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(file = %escaped(path.display()), "removed a temp report left by an interrupted write");
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(file = %escaped(path.display()), error = %error, "cannot remove a temp report left by an interrupted write");
                }
            }
        }
    }
    removed
}

/// True for the names [`write_atomic`] gives its temp files: `.adjustd-`, at least one
/// character, `.tmp`.
fn is_temp_report_name(name: &str) -> bool {
    name.len() > TEMP_PREFIX.len() + TEMP_SUFFIX.len()
        && name.starts_with(TEMP_PREFIX)
        && name.ends_with(TEMP_SUFFIX)
}

/// Flushes a folder's entries (creations, renames, removals in it) to disk, so a rename is
/// durable and not only the renamed file's contents.
///
/// # Errors
///
/// Any I/O error of opening or syncing the folder.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()
    }
    // Windows cannot open a folder as a file; its renames are flushed by the file system.
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// The usual limit on one path component (Linux `NAME_MAX`, most file systems).
const MAX_FILE_NAME_BYTES: usize = 255;

/// The JSON report's shape: texts `S` (borrowed to write, owned to read) and the results
/// `R` ([`JsonResults`] to write, a list of [`JsonResult`] to read). The field order is the
/// key order of the report.
#[derive(Serialize, Deserialize)]
struct JsonReport<S, R> {
    schema_version: u64,
    feed_id: u64,
    file_name: S,
    merchant: Option<S>,
    status: FeedStatus,
    duplicate_of: Option<u64>,
    content_hash: S,
    processed_at: S,
    summary: JsonSummary,
    results: R,
}

#[derive(Serialize, Deserialize)]
struct JsonSummary {
    messages_processed: u64,
    messages_successful: u64,
    messages_with_error: u64,
    messages_with_warning: u64,
}

#[derive(Serialize, Deserialize)]
struct JsonResult<S> {
    message_id: u64,
    result: S,
    code: u32,
    code_name: S,
    element: S,
    line: Option<u32>,
    column: Option<u32>,
    description: S,
    fix: S,
    amazon_order_id: Option<S>,
    amazon_order_item_code: Option<S>,
}

fn parse_result(index: usize, result: JsonResult<String>) -> Result<Problem, ReportError> {
    let invalid = |field: &str, reason: String| ReportError::Invalid {
        field: format!("results[{index}].{field}"),
        reason,
    };
    let code = Code::ALL
        .iter()
        .copied()
        .find(|code| code.number() == result.code && code.name() == result.code_name)
        .ok_or_else(|| {
            invalid(
                "code",
                format!("no result code {} {}", result.code, result.code_name),
            )
        })?;
    let severity = if code.severity().as_str() == result.result {
        code.severity()
    } else if code.is_policy() && result.result == Severity::Error.as_str() {
        Severity::Error
    } else {
        return Err(invalid(
            "result",
            format!(
                "{:?} but {} is a {}",
                result.result,
                code.name(),
                code.severity().as_str()
            ),
        ));
    };
    // Any combination of code and MessageID is kept as written: the report records what the
    // pipeline said, and re-emission after a crash must not lose a result.
    let message_id = MessageId::new(result.message_id).unwrap_or(MessageId::FEED);
    let position = match (result.line, result.column) {
        (Some(line), Some(column)) => Some(Position { line, column }),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "line",
                "line and column must both be present or both be null".to_owned(),
            ));
        }
    };
    Ok(Problem {
        code,
        severity,
        message_id,
        element: result.element,
        position,
        description: result.description,
        fix: result.fix.into(),
        amazon_order_id: result.amazon_order_id,
        amazon_order_item_code: result.amazon_order_item_code,
    })
}

fn push_result(xml: &mut String, outcome: &FeedOutcome, problem: &Problem) {
    xml.push_str("      <Result>\n");
    push_element(xml, 8, "MessageID", &problem.message_id.get().to_string());
    push_element(xml, 8, "ResultCode", problem.severity.as_str());
    push_element(
        xml,
        8,
        "ResultMessageCode",
        &problem.code.number().to_string(),
    );
    push_element(
        xml,
        8,
        "ResultDescription",
        &result_description(outcome, problem),
    );
    let order_id = problem
        .amazon_order_id
        .as_deref()
        .and_then(AmazonOrderId::new);
    let item_code = problem
        .amazon_order_item_code
        .as_deref()
        .and_then(OrderItemCode::new);
    if order_id.is_some() || item_code.is_some() {
        // Schema order: SKU, FulfillmentCenterID, AmazonOrderID, AmazonOrderItemCode.
        xml.push_str("        <AdditionalInfo>\n");
        if let Some(order_id) = &order_id {
            push_element(xml, 10, "AmazonOrderID", order_id.as_str());
        }
        if let Some(item_code) = &item_code {
            push_element(xml, 10, "AmazonOrderItemCode", item_code.as_str());
        }
        xml.push_str("        </AdditionalInfo>\n");
    }
    xml.push_str("      </Result>\n");
}

fn push_element(xml: &mut String, indent: usize, name: &str, text: &str) {
    for _ in 0..indent {
        xml.push(' ');
    }
    xml.push('<');
    xml.push_str(name);
    xml.push('>');
    push_escaped(xml, text);
    xml.push_str("</");
    xml.push_str(name);
    xml.push_str(">\n");
}

/// Appends `text` as XML character data: `&`, `<` and `>` as entities (`>` so that `]]>`
/// cannot appear; quotes need no escaping in element content and stay readable), a carriage return as
/// `&#13;` (a parser would otherwise turn it into a line feed), and characters XML 1.0 does
/// not allow (most C0 controls, U+FFFE, U+FFFF) dropped.
fn push_escaped(xml: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => xml.push_str("&amp;"),
            '<' => xml.push_str("&lt;"),
            '>' => xml.push_str("&gt;"),
            '\r' => xml.push_str("&#13;"),
            '\t' | '\n' => xml.push(c),
            c if is_xml_char(c) => xml.push(c),
            _ => {}
        }
    }
}

/// XML 1.0 `Char`, minus what `push_escaped` handles itself. Rust `char`s are never
/// surrogates, so only the C0 controls and the two non-characters remain to exclude.
fn is_xml_char(c: char) -> bool {
    c >= '\u{20}' && c != '\u{FFFE}' && c != '\u{FFFF}'
}

/// Appends `text` and ends it with a period unless it already ends a sentence.
fn push_sentence(out: &mut String, text: &str) {
    out.push_str(text);
    if !text.ends_with(['.', '!', '?']) {
        out.push('.');
    }
}

fn is_separator(c: char) -> bool {
    c == '/' || c == '\0' || (cfg!(windows) && matches!(c, '\\' | ':'))
}

fn create_folder(folder: &Path) -> io::Result<()> {
    if folder.is_dir() {
        return Ok(());
    }
    // Folders about to be created, innermost first.
    let missing: Vec<&Path> = folder
        .ancestors()
        .take_while(|dir| !dir.as_os_str().is_empty() && !dir.is_dir())
        .collect();
    fs::create_dir_all(folder)?;
    // Each new folder's own entry must be durable too, or a crash could lose the folder and
    // the report in it after the report's rename was synced.
    for dir in missing {
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent)?,
            _ => fsync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_drops_forbidden_characters() {
        let mut out = String::new();
        push_escaped(
            &mut out,
            "a]]>b<c&d\"e'f\u{0}\u{1}\u{b}\u{1f}g\r\n\th\u{fffe}\u{ffff}é😀",
        );
        assert_eq!(out, "a]]&gt;b&lt;c&amp;d\"e'fg&#13;\n\th\u{e9}\u{1f600}");
    }

    #[test]
    fn separators_in_file_names_cannot_leave_the_folder() {
        let (xml, json) = report_paths(Path::new("/out"), None, "../../etc/passwd", 3);
        assert_eq!(xml, Path::new("/out/.._.._etc_passwd.3.report.xml"));
        assert_eq!(json, Path::new("/out/.._.._etc_passwd.3.report.json"));
    }

    #[test]
    fn control_characters_in_file_names_become_underscores() {
        let (xml, _) = report_paths(Path::new("/out"), None, "a\nb\r\u{1b}[31mc.xml", 4);
        assert_eq!(xml, Path::new("/out/a_b__[31mc.xml.4.report.xml"));
    }
}
