//! One feed end to end: hash, read and validate, plan against the store, commit in one
//! transaction, write the reports. A feed too large, or one the daemon could not open or
//! read, is recorded and reported as rejected without being applied.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::canon;
use crate::engine::{self, Rules, Snapshot};
use crate::feed::Limits;
use crate::model::{AdjustmentMessage, FeedHeader, MerchantId, MessageId, OrderRef};
use crate::problem::{Code, MAX_RESULTS, Problem, Severity};
use crate::report::{self, FeedOutcome};
use crate::store::{
    AnyStore, FeedDone, FeedRecord, FeedStatus, FeedTx, NewFeed, ReportFolder, Store, StoreError,
};
use crate::validate::{ValidatedMessage, Validator};

/// Messages validated before the engine plans them and the store writes them: large
/// enough to amortise a store round trip, small enough to keep memory flat.
pub const CHUNK_MESSAGES: usize = 4096;

/// A conflict (serialization failure, deadlock, lost race on a unique key) retries the
/// whole feed this many times before it is handed back to the caller as transient.
const CONFLICT_ATTEMPTS: u32 = 8;

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
    /// Messages per chunk ([`CHUNK_MESSAGES`] unless a test wants many chunk boundaries in a
    /// small feed). Memory and the engine's view do not depend on it: after each chunk the
    /// snapshot is dropped and later chunks read what they need from the transaction.
    pub chunk_messages: usize,
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

impl<'a> Source<'a> {
    /// A feed dropped into the inbox, claimed by the daemon or named to `adjustd process`:
    /// one from a merchant folder is bound to that merchant (reports in `outbox/<merchant>/`,
    /// another merchant rejected) and the allow-list does not apply to it; one from the
    /// top level (or, for `process`, from outside the inbox) may speak for the merchants of
    /// the allow-list (`None`: any).
    pub fn new(
        path: &'a Path,
        file_name: &'a str,
        claim_token: Option<&'a str>,
        merchant_folder: Option<&'a MerchantId>,
        allowed_merchants: Option<&'a [MerchantId]>,
    ) -> Source<'a> {
        Source {
            path,
            file_name,
            claim_token,
            bound_merchant: merchant_folder,
            allowed_merchants: if merchant_folder.is_some() {
                None
            } else {
                allowed_merchants
            },
        }
    }
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
    /// Messages rejected with `ORDER_NOT_FOUND` that may still apply once their order is
    /// imported ([`crate::engine::MessageOutcome::deferred`]): what the daemon parks a
    /// feed for. `None` for a recovered feed, whose stored report does not tell a deferred
    /// `ORDER_NOT_FOUND` from the replay of a pinned one (see [`lists_order_not_found`]).
    pub deferred: Option<u64>,
}

/// Errors that leave the feed without its reports; the caller keeps the file. Nothing is
/// committed, except for [`ProcessError::Report`]: the feed is applied and its report is in
/// the store, so the next attempt with the same claim token only writes the report.
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
    /// Writing a report failed, after the feed was committed (or found committed).
    #[error(
        "feed {feed_id} is processed and committed, but its report could not be written to {path} (processing the file again applies nothing twice)"
    )]
    Report {
        /// The committed feed.
        feed_id: u64,
        /// The report file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl ProcessError {
    /// True when retrying later can succeed: the database away or busy, or the outbox not
    /// writable (full, permissions): a retry under the same claim token re-emits the
    /// committed report and applies nothing again.
    pub fn is_transient(&self) -> bool {
        match self {
            ProcessError::Store(error) => error.is_transient(),
            ProcessError::Report { .. } => true,
            ProcessError::Read { .. } => false,
        }
    }
}

/// Processes one feed file: exactly-once application and one pair of reports.
///
/// A feed whose claim token is already committed (a restart after a crash between commit
/// and the file move) is not applied again: its committed report is re-emitted. Conflicts
/// with other instances are retried here; what remains is returned.
///
/// # Errors
/// See [`ProcessError`]; bad input is never an error (it is in the report).
pub fn process_file(context: &mut Context, source: &Source<'_>) -> Result<Processed, ProcessError> {
    // The size of the opened file decides before a byte is read (ingest R8): a file above
    // `max_file_bytes` is rejected without being hashed or parsed, so a huge (or sparse)
    // file costs nothing and holds up no other feed.
    let file = File::open(source.path).map_err(|e| read_error(source.path, e))?;
    let size = file
        .metadata()
        .map_err(|e| read_error(source.path, e))?
        .len();
    let too_large = context.limits.file_too_large(size);
    let content_hash = match &too_large {
        Some(_) => UNREAD_CONTENT_HASH.to_owned(),
        None => HashingReader::new(file)
            .finish()
            .map_err(|e| read_error(source.path, e))?,
    };
    retry_conflicts(source, || match &too_large {
        Some(problem) => reject_unread(context, source, problem.clone()),
        None => attempt_once(context, source, &content_hash),
    })
}

/// Processes a feed the daemon claimed, which always ends with a pair of reports unless the
/// store or the outbox fails (transient, retried by the caller): a claim that could not be
/// opened (`unreadable`, see [`crate::inbox::Claim::unreadable`]), and one whose reading
/// fails after it was opened (an I/O error of the disk or file system), is recorded and
/// reported as rejected with [`Code::FeedUnreadable`] instead of being processed.
///
/// `adjustd process` calls [`process_file`] instead: a file it cannot read is an error it
/// names on stderr ([`ProcessError::Read`]).
///
/// # Errors
/// [`ProcessError::Store`] or [`ProcessError::Report`], as for any feed.
pub fn process_claimed(
    context: &mut Context,
    source: &Source<'_>,
    unreadable: Option<&std::io::Error>,
) -> Result<Processed, ProcessError> {
    if let Some(error) = unreadable {
        return reject_unreadable(context, source, error);
    }
    match process_file(context, source) {
        Err(ProcessError::Read { source: error, .. }) => {
            tracing::warn!(file = %crate::telemetry::escaped(source.file_name), error = %error, "cannot read the claimed feed; it is reported as unreadable");
            reject_unreadable(context, source, &error)
        }
        other => other,
    }
}

/// Records and reports a claimed feed that cannot be read (`error`) as rejected with
/// [`Code::FeedUnreadable`]; like a feed too large, its record and report carry
/// [`UNREAD_CONTENT_HASH`]. If this claim already committed (a restart after a crash between
/// commit and the file move), its report is re-emitted instead. Conflicts with other
/// instances are retried here, as in [`process_file`].
fn reject_unreadable(
    context: &mut Context,
    source: &Source<'_>,
    error: &std::io::Error,
) -> Result<Processed, ProcessError> {
    let fix = if error.kind() == std::io::ErrorKind::PermissionDenied {
        "Make the file readable by the user adjustd runs as (for SFTP uploads: the server's \
         umask, or the group of the inbox folder), then drop it into the inbox again (the \
         operator finds it in failed/)."
    } else {
        "The disk or file system that holds the inbox reported an error (the system log names \
         it); once it is mended, drop the file into the inbox again (the operator finds it in \
         failed/)."
    };
    let problem = Problem::new(
        Code::FeedUnreadable,
        MessageId::FEED,
        "(file)",
        None,
        format!(
            "the file {} cannot be read: {error}; nothing in it was applied",
            source.file_name
        ),
        fix,
    );
    retry_conflicts(source, || reject_unread(context, source, problem.clone()))
}

/// Runs `attempt` again after a conflict with another instance (serialization failure,
/// deadlock, lost race on a unique key), at most [`CONFLICT_ATTEMPTS`] times in all.
fn retry_conflicts(
    source: &Source<'_>,
    mut attempt: impl FnMut() -> Result<Processed, ProcessError>,
) -> Result<Processed, ProcessError> {
    let mut attempt_number = 1;
    loop {
        match attempt() {
            Err(ProcessError::Store(StoreError::Conflict { detail }))
                if attempt_number < CONFLICT_ATTEMPTS =>
            {
                tracing::info!(file = %crate::telemetry::escaped(source.file_name), attempt = attempt_number, detail = %detail, "store conflict, retrying feed");
                std::thread::sleep(Duration::from_millis(5 << attempt_number.min(6)));
                attempt_number += 1;
            }
            other => return other,
        }
    }
}

/// The `content_hash` of a feed rejected before it was read ([`Limits::file_too_large`],
/// [`process_claimed`]): not a hash, and never equal to one (a SHA-256 is 64 hex digits),
/// so it stands for "no hash" in the feed record and the report. A rejected feed is never
/// the original of a duplicate, so the marker cannot make two such feeds look alike either.
pub const UNREAD_CONTENT_HASH: &str = "unread";

/// Records and reports a feed rejected before it was read (too large, or it cannot be
/// opened), unless this claim already committed (a restart after a crash between commit and
/// the file move), whose report is re-emitted.
fn reject_unread(
    context: &mut Context,
    source: &Source<'_>,
    problem: Problem,
) -> Result<Processed, ProcessError> {
    if let Some(processed) = re_emit_committed(context, source)? {
        return Ok(processed);
    }
    let outcome = reject(
        context.store.as_store(),
        source,
        UNREAD_CONTENT_HASH,
        None,
        problem,
    )?;
    write(context, source, outcome, Some(0))
}

/// The report of this claim re-emitted, when it already committed (a restart after a crash,
/// or a report the outbox could not take, between commit and the file move).
fn re_emit_committed(
    context: &mut Context,
    source: &Source<'_>,
) -> Result<Option<Processed>, ProcessError> {
    let Some(token) = source.claim_token else {
        return Ok(None);
    };
    let Some(record) = context.store.as_store().feed_by_claim(token)? else {
        return Ok(None);
    };
    let outcome = report::parse_json(&record.report_json).map_err(|e| StoreError::Other {
        detail: format!("feed {}: {e}", record.id),
    })?;
    write(context, source, outcome, None).map(Some)
}

fn attempt_once(
    context: &mut Context,
    source: &Source<'_>,
    content_hash: &str,
) -> Result<Processed, ProcessError> {
    if let Some(processed) = re_emit_committed(context, source)? {
        return Ok(processed);
    }
    let store = context.store.as_store();

    let file = File::open(source.path).map_err(|e| read_error(source.path, e))?;
    let mut validator = Validator::new(
        BufReader::with_capacity(1 << 16, file),
        context.limits,
        &context.rules,
    );
    let header = match validator.header() {
        Ok(header) => header,
        Err(problem) => {
            let merchant = validator.merchant().cloned();
            let outcome = reject(store, source, content_hash, merchant, problem)?;
            return write(context, source, outcome, Some(0));
        }
    };
    if let Some(problem) = merchant_problem(&header, source) {
        let outcome = reject(store, source, content_hash, Some(header.merchant), problem)?;
        return write(context, source, outcome, Some(0));
    }
    let earlier = store.feed_by_hash(&header.merchant, content_hash)?;
    if let (Some(earlier), DuplicatePolicy::Skip) = (&earlier, context.duplicate_policy)
        && !had_deferred(earlier)
    {
        let problem = Problem::new(
            Code::DuplicateFeed,
            MessageId::FEED,
            "AmazonEnvelope",
            None,
            format!(
                "this file has the same bytes as feed {} ({}, processed {}); nothing was applied again",
                earlier.id, earlier.file_name, earlier.processed_at
            ),
            "Nothing to do if this was a repeated upload; to apply new adjustments, send a new feed.",
        );
        let outcome = finish_without_changes(
            store,
            source,
            content_hash,
            Some(header.merchant),
            FeedStatus::Complete,
            Some(earlier.id),
            problem,
        )?;
        return write(context, source, outcome, Some(0));
    }
    // With the `process` policy, or when the earlier run left messages for later (see
    // `had_deferred`), a repeated feed is applied like any other (idempotency keys still
    // catch replays) and records which feed it repeats.
    let duplicate_of = earlier.map(|e| e.id);
    let (outcome, deferred) = apply(
        store,
        &mut validator,
        source,
        content_hash,
        header,
        duplicate_of,
        &context.rules,
        context.chunk_messages,
    )?;
    write(context, source, outcome, Some(deferred))
}

/// Streams the messages through validate → engine → store inside one transaction. The
/// reader and validator run on a second thread, one chunk ahead of the engine and the store,
/// so parsing overlaps with the database work. Returns the outcome and the number of
/// deferred messages ([`Processed::deferred`]).
// The inputs of one private call site; a struct for them would only rename them.
#[allow(clippy::too_many_arguments)]
fn apply<R: std::io::BufRead + Send>(
    store: &mut dyn Store,
    validator: &mut Validator<R>,
    source: &Source<'_>,
    content_hash: &str,
    header: FeedHeader,
    duplicate_of: Option<u64>,
    rules: &Rules,
    chunk_messages: usize,
) -> Result<(FeedOutcome, u64), ProcessError> {
    let merchant = header.merchant;
    let key_digest = KeyDigest {
        path: source.path,
        content_hash,
        digests: None,
    };
    // One processing day for the whole feed, even if it runs past midnight, so every
    // message of a feed is judged alike (the refund window, the resubmission window).
    let processed_on = chrono::Utc::now().date_naive();
    let mut tx = store.begin_feed(&NewFeed {
        recent_adjustments_since: rules.recent_adjustments_since(processed_on),
        ..new_feed(source, content_hash, Some(&merchant))
    })?;
    let mut tally = Tally::default();
    let mut snapshot = Snapshot::new();
    let feed_problem = std::thread::scope(|scope| -> Result<Option<Problem>, ProcessError> {
        let (sender, chunks) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || read_chunks(validator, chunk_messages.max(1), key_digest, &sender));
        // One chunk of look-ahead, so the store can start reading the next chunk's orders
        // while this one is planned and written.
        let mut chunks = chunks.into_iter();
        let mut next = chunks.next();
        while let Some(chunk) = next.take() {
            let mut chunk = match chunk {
                Ok(chunk) => chunk,
                Err(problem) => return Ok(Some(problem)),
            };
            next = chunks.next();
            let upcoming = match &next {
                Some(Ok(upcoming)) => order_refs(upcoming),
                _ => Vec::new(),
            };
            flush(
                tx.as_mut(),
                &merchant,
                &mut snapshot,
                &mut chunk,
                upcoming,
                rules,
                processed_on,
                &mut tally,
            )?;
        }
        Ok(None)
        // Leaving the scope drops the receiver first, so a reader still running after a
        // store error stops at its next send.
    })?;
    if let Some(problem) = feed_problem {
        // A feed-level problem anywhere rejects the whole feed: roll back.
        drop(tx);
        let outcome = reject(store, source, content_hash, Some(merchant), problem)?;
        return Ok((outcome, 0));
    }
    let feed_id = tx.feed_id();
    let deferred = tally.deferred;
    let outcome = tally.into_outcome(
        feed_id,
        source.file_name,
        content_hash,
        Some(merchant),
        FeedStatus::Complete,
        duplicate_of,
    );
    tx.commit(&feed_done(&outcome))?;
    Ok((outcome, deferred))
}

/// A chunk of validated messages, or the feed-level problem that ends the feed.
type Chunk = Result<Vec<ValidatedMessage>, Problem>;

/// The reader thread: validates messages, gives the adjusted items without a
/// `MerchantAdjustmentItemID` their derived key
/// ([`AdjustmentMessage::derive_missing_keys`]) and hands the
/// messages over in chunks until the end of the feed, a feed-level problem, or the receiver
/// going away.
fn read_chunks<R: std::io::BufRead>(
    validator: &mut Validator<R>,
    chunk_messages: usize,
    mut key_digest: KeyDigest<'_>,
    sender: &std::sync::mpsc::SyncSender<Chunk>,
) {
    let mut chunk = Vec::with_capacity(chunk_messages);
    loop {
        match validator.next_message() {
            Ok(Some(mut message)) => {
                if let ValidatedMessage::Valid(message) = &mut message {
                    message.derive_missing_keys(|| key_digest.get());
                }
                chunk.push(message);
                if chunk.len() == chunk_messages {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(chunk_messages));
                    if sender.send(Ok(full)).is_err() {
                        return;
                    }
                }
            }
            Ok(None) => {
                if !chunk.is_empty() {
                    // An error means the receiver is gone; nothing is left to do either way.
                    let _ = sender.send(Ok(chunk));
                }
                return;
            }
            Err(problem) => {
                let _ = sender.send(Err(problem));
                return;
            }
        }
    }
}

/// The orders the messages of `chunk` that go to the store name (SQLite drops repeats from
/// an `IN` list).
fn order_refs(chunk: &[ValidatedMessage]) -> Vec<OrderRef> {
    chunk
        .iter()
        .filter_map(|message| match message {
            ValidatedMessage::Valid(message) => Some(message.order.clone()),
            ValidatedMessage::Invalid {
                precision_pending, ..
            } => precision_pending.as_ref().map(|m| m.order.clone()),
        })
        .collect()
}

/// Plans and writes one chunk: loads its orders, hints the store at the `upcoming` chunk's
/// orders ([`FeedTx::prefetch`]), plans, writes, then forgets the orders.
// The inputs of one private call site, as for `apply`.
#[allow(clippy::too_many_arguments)]
fn flush(
    tx: &mut dyn FeedTx,
    merchant: &MerchantId,
    snapshot: &mut Snapshot,
    chunk: &mut Vec<ValidatedMessage>,
    upcoming: Vec<OrderRef>,
    rules: &Rules,
    processed_on: chrono::NaiveDate,
    tally: &mut Tally,
) -> Result<(), ProcessError> {
    let mut valid: Vec<AdjustmentMessage> = Vec::new();
    // Rejected by the validator, but AMOUNT_PRECISION in the order's currency may come first:
    // the index of their slot in `order`, and the message.
    let mut pending: Vec<AdjustmentMessage> = Vec::new();
    let mut pending_slots: Vec<usize> = Vec::new();
    let mut order: Vec<Option<(Vec<Problem>, u64)>> = Vec::with_capacity(chunk.len());
    for message in chunk.drain(..) {
        match message {
            ValidatedMessage::Valid(message) => {
                valid.push(message);
                order.push(None);
            }
            ValidatedMessage::Invalid {
                problems,
                unlisted,
                precision_pending,
                ..
            } => {
                if let Some(message) = precision_pending {
                    pending.push(*message);
                    pending_slots.push(order.len());
                }
                order.push(Some((problems, unlisted)));
            }
        }
    }
    let needs = engine::needs(snapshot, &valid, &pending);
    if !needs.is_empty() {
        tx.load(merchant, &needs, snapshot)?;
    }
    for (message, slot) in pending.iter().zip(pending_slots) {
        if let Some(problems) = engine::precision_problems(snapshot, message) {
            order[slot] = Some((problems, 0));
        }
    }
    tx.prefetch(merchant, upcoming);
    let plan = engine::plan(snapshot, merchant, &valid, rules, processed_on);
    tx.apply(merchant, &plan.changes)?;
    snapshot.forget();
    tx.forget_loaded();
    let mut outcomes = plan.outcomes.into_iter();
    for slot in order {
        match slot {
            Some((problems, unlisted)) => tally.add_with_unlisted(false, problems, unlisted),
            None => {
                let outcome = outcomes.next().ok_or_else(|| StoreError::Other {
                    detail: "engine returned fewer outcomes than messages".to_owned(),
                })?;
                tally.deferred += u64::from(outcome.deferred);
                tally.add(outcome.applied, outcome.problems);
            }
        }
    }
    Ok(())
}

/// Per-message counts and the results, in document order: what a report summarises.
#[derive(Debug, Default)]
pub struct Tally {
    processed: u64,
    successful: u64,
    with_error: u64,
    with_warning: u64,
    results: Vec<Problem>,
    /// Results beyond [`MAX_RESULTS`], counted, not kept.
    omitted: u64,
    /// Where the omitted results start: the message of the first one, and how many results
    /// of that message are listed before it.
    first_omitted: Option<(MessageId, usize)>,
    /// Messages whose `ORDER_NOT_FOUND` was not pinned ([`Processed::deferred`]), counted
    /// whether or not their result is listed.
    deferred: u64,
}

impl Tally {
    /// The tally of a feed that ended at a feed-level result (MessageID 0): no message
    /// processed, the result counted as one error or one warning, as Amazon's reports do.
    pub fn feed_level(problem: Problem) -> Tally {
        Tally {
            with_error: u64::from(problem.is_error()),
            with_warning: u64::from(!problem.is_error()),
            results: vec![problem],
            ..Tally::default()
        }
    }

    /// Counts one message and keeps its problems while the list has room: the first
    /// [`MAX_RESULTS`] results of the feed are listed, also when they are the first of one
    /// message's many, and every later one is only counted.
    pub fn add(&mut self, applied: bool, problems: Vec<Problem>) {
        self.add_with_unlisted(applied, problems, 0);
    }

    /// [`Tally::add`] for a message that has `unlisted` more problems after `problems`,
    /// counted but not kept ([`ValidatedMessage::Invalid`]): they are left out like any
    /// result past the end of the list.
    pub fn add_with_unlisted(&mut self, applied: bool, problems: Vec<Problem>, unlisted: u64) {
        self.processed += 1;
        if applied {
            self.successful += 1;
        }
        if problems.iter().any(|p| p.severity == Severity::Error) {
            self.with_error += 1;
        }
        if problems.iter().any(|p| p.severity == Severity::Warning) {
            self.with_warning += 1;
        }
        let listed = problems
            .len()
            .min(MAX_RESULTS.saturating_sub(self.results.len()));
        let omitted = (problems.len() - listed) as u64 + unlisted;
        if omitted > 0 {
            // The list is the feed's first results, so everything from here on is left out.
            let message = problems.first().map_or(MessageId::FEED, |p| p.message_id);
            self.first_omitted.get_or_insert((message, listed));
            self.omitted += omitted;
        }
        self.results.extend(problems.into_iter().take(listed));
    }

    /// The report outcome of the feed (processed now).
    pub fn into_outcome(
        self,
        feed_id: u64,
        file_name: &str,
        content_hash: &str,
        merchant: Option<MerchantId>,
        status: FeedStatus,
        duplicate_of: Option<u64>,
    ) -> FeedOutcome {
        let mut results = self.results;
        if let Some((message, listed)) = self.first_omitted {
            let from = match listed {
                0 => format!("message {message}"),
                listed => format!("result {} of message {message}", listed + 1),
            };
            results.push(Problem::new(
                Code::ResultsOmitted,
                MessageId::FEED,
                "AmazonEnvelope",
                None,
                format!(
                    "{} more results, from {from} on, are not listed: a report lists the first {MAX_RESULTS}; the counts above include every message",
                    self.omitted
                ),
                "Fix the problems listed, then send the messages that failed again in a new feed; split very large feeds.",
            ));
        }
        FeedOutcome {
            feed_id,
            file_name: file_name.to_owned(),
            merchant,
            status,
            duplicate_of,
            content_hash: content_hash.to_owned(),
            processed_at: now_rfc3339(),
            messages_processed: self.processed,
            messages_successful: self.successful,
            messages_with_error: self.with_error,
            messages_with_warning: self.with_warning,
            results,
        }
    }
}

/// Records a feed-level rejection (nothing applied) in its own transaction.
fn reject(
    store: &mut dyn Store,
    source: &Source<'_>,
    content_hash: &str,
    merchant: Option<MerchantId>,
    problem: Problem,
) -> Result<FeedOutcome, ProcessError> {
    finish_without_changes(
        store,
        source,
        content_hash,
        merchant,
        FeedStatus::Rejected,
        None,
        problem,
    )
}

fn finish_without_changes(
    store: &mut dyn Store,
    source: &Source<'_>,
    content_hash: &str,
    merchant: Option<MerchantId>,
    status: FeedStatus,
    duplicate_of: Option<u64>,
    problem: Problem,
) -> Result<FeedOutcome, ProcessError> {
    let recorded_merchant = merchant.clone().or_else(|| source.bound_merchant.cloned());
    let tx = store.begin_feed(&new_feed(source, content_hash, recorded_merchant.as_ref()))?;
    let tally = Tally::feed_level(problem);
    let outcome = tally.into_outcome(
        tx.feed_id(),
        source.file_name,
        content_hash,
        recorded_merchant,
        status,
        duplicate_of,
    );
    tx.commit(&feed_done(&outcome))?;
    Ok(outcome)
}

/// `MerchantNotAllowed` when the feed's MerchantIdentifier may not be used from where it
/// came: another merchant's inbox folder, or a top-level inbox limited by
/// `inbox.allowed_merchants`.
pub fn merchant_problem(header: &FeedHeader, source: &Source<'_>) -> Option<Problem> {
    let merchant = &header.merchant;
    let (allowed, fix) = match (source.bound_merchant, source.allowed_merchants) {
        (Some(bound), _) => (
            bound == merchant,
            format!(
                "This inbox folder only accepts feeds of merchant {bound}: drop the feed into inbox/{merchant}/ or correct MerchantIdentifier."
            ),
        ),
        (None, Some([])) => (
            false,
            format!(
                "The top-level inbox accepts no feeds (config inbox.allowed_merchants is empty): use the merchant's own folder inbox/{merchant}/."
            ),
        ),
        (None, Some(list)) => (
            list.contains(merchant),
            format!(
                "The top-level inbox accepts only merchants {} (config inbox.allowed_merchants): use the merchant's own folder inbox/{merchant}/.",
                list.iter()
                    .map(MerchantId::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        (None, None) => (true, String::new()),
    };
    (!allowed).then(|| {
        Problem::new(
            Code::MerchantNotAllowed,
            MessageId::FEED,
            "AmazonEnvelope/Header/MerchantIdentifier",
            header.merchant_position,
            format!("the feed speaks for merchant {merchant}, which may not be used from here; nothing was applied"),
            fix,
        )
    })
}

/// Writes the report pair; `deferred` is `None` for a recovered feed (its report re-emitted).
fn write(
    context: &Context,
    source: &Source<'_>,
    outcome: FeedOutcome,
    deferred: Option<u64>,
) -> Result<Processed, ProcessError> {
    let (xml_report, json_report) = report::report_paths(
        &context.outbox,
        source.bound_merchant,
        source.file_name,
        outcome.feed_id,
    );
    report::write_reports(&outcome, &xml_report, &json_report).map_err(|source| {
        ProcessError::Report {
            feed_id: outcome.feed_id,
            path: xml_report.clone(),
            source,
        }
    })?;
    Ok(Processed {
        outcome,
        xml_report,
        json_report,
        recovered: deferred.is_none(),
        deferred,
    })
}

/// The start of the feed record of `source`, loading no recent adjustments (a feed that
/// plans messages sets [`NewFeed::recent_adjustments_since`]).
fn new_feed(source: &Source<'_>, content_hash: &str, merchant: Option<&MerchantId>) -> NewFeed {
    NewFeed {
        merchant: merchant.cloned(),
        file_name: source.file_name.to_owned(),
        content_hash: content_hash.to_owned(),
        claim_token: source.claim_token.map(str::to_owned),
        report_folder: ReportFolder::of(source.bound_merchant),
        recent_adjustments_since: None,
    }
}

fn feed_done(outcome: &FeedOutcome) -> FeedDone {
    FeedDone {
        status: outcome.status,
        duplicate_of: outcome.duplicate_of,
        messages_processed: outcome.messages_processed,
        messages_successful: outcome.messages_successful,
        messages_with_error: outcome.messages_with_error,
        messages_with_warning: outcome.messages_with_warning,
        report_json: report::render_json(outcome),
    }
}

/// True when `earlier`'s report holds an outcome that may change without the feed
/// changing: `ORDER_NOT_FOUND` (refund-rules c3.4: often an order report not imported yet;
/// its fix says to resend the message unchanged), or results it left out, which may hold
/// one. A byte-identical copy of such a feed is processed again under the `skip` policy:
/// every message is idempotent, so what applied comes back as a duplicate and what was
/// pinned keeps its answer, while the orders imported since get their refunds.
fn had_deferred(earlier: &FeedRecord) -> bool {
    let Ok(report) = serde_json::from_str::<serde_json::Value>(&earlier.report_json) else {
        // No readable report (an older or damaged record): the bytes decide, as before.
        return false;
    };
    report["results"].as_array().is_some_and(|results| {
        results.iter().any(|result| {
            let code = result["code"].as_u64();
            code == Some(u64::from(Code::OrderNotFound.number()))
                || code == Some(u64::from(Code::ResultsOmitted.number()))
        })
    })
}

/// True when `outcome` lists an `ORDER_NOT_FOUND` or left results out (which may hold
/// one): what can be said of a report read back from the store, where a deferred
/// `ORDER_NOT_FOUND` and the replay of a pinned one look alike. The daemon goes by this
/// for a recovered feed ([`Processed::deferred`] is `None`); the next retry then knows.
pub fn lists_order_not_found(outcome: &FeedOutcome) -> bool {
    outcome
        .results
        .iter()
        .any(|result| matches!(result.code, Code::OrderNotFound | Code::ResultsOmitted))
}

/// What the keys of adjusted items without a `MerchantAdjustmentItemID` derive from: the
/// feed's canonical content digest ([`canon::content_digest`]), so a re-exported copy is
/// recognised. Read from the file on first use only, so a fully keyed feed costs no
/// second pass. A file without a digest (it cannot be read again, or it is XML that the
/// reader rejects anyway) falls back to the byte hash.
struct KeyDigest<'a> {
    path: &'a Path,
    content_hash: &'a str,
    digests: Option<canon::Digests>,
}

impl KeyDigest<'_> {
    fn get(&mut self) -> &canon::Digests {
        let (path, content_hash) = (self.path, self.content_hash);
        self.digests.get_or_insert_with(|| {
            let digests = File::open(path)
                .ok()
                .and_then(|file| canon::content_digests(BufReader::with_capacity(1 << 16, file)));
            digests.unwrap_or_else(|| {
                // Only XML the reader rejects further on has no digest (canon's limits are
                // the reader's), and then nothing is applied: not worth a warning.
                tracing::debug!(file = %path.display(), "no canonical content digest; keys of items without a MerchantAdjustmentItemID derive from the file's bytes");
                canon::Digests {
                    current: content_hash.to_owned(),
                    earlier: content_hash.to_owned(),
                }
            })
        })
    }
}

/// A reader that computes the SHA-256 of every byte read through it, so a file can be
/// hashed in the same pass that parses it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> HashingReader<R> {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads whatever is left and returns the hex SHA-256 of all the bytes.
    ///
    /// # Errors
    /// Read errors of the rest of the input.
    pub fn finish(mut self) -> std::io::Result<String> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok(self
            .hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn read_error(path: &Path, source: std::io::Error) -> ProcessError {
    ProcessError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// The current UTC time in RFC 3339 with second precision (`2026-11-30T12:00:00Z`).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
