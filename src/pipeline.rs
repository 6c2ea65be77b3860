//! One feed end to end: hash, read and validate, plan against the store, commit in one
//! transaction, write the reports. A feed too large, or one the daemon could not open or
//! read for a fault of the file (no permission, an I/O error of its disk), is recorded and
//! reported as rejected without being applied; one it could not open or read because the
//! process or the system ran short (too many open files, no memory:
//! [`crate::resources::shortage`]) is neither recorded nor reported
//! ([`ProcessError::Shortage`], retried). The file is opened once
//! and every pass over it (hash, parse, canonical digest) reads that one open file; nothing
//! is committed unless every pass saw the bytes of the content hash and the file's signature
//! is what it was before the first read ([`ProcessError::Unsettled`] otherwise).

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::canon;
use crate::engine::{self, Rules, Snapshot};
use crate::feed::Limits;
use crate::inbox::ready::FileSignature;
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
    /// Told of every attempt at a feed that ended in a conflict with another session
    /// (the daemon shows a long lock wait on `/healthz`); `None` for `adjustd process`.
    pub on_conflict: Option<ConflictObserver>,
}

/// Called with the feed's file name, how long the attempt ran and the conflict, for each
/// attempt at a feed that conflicted with another session ([`Context::on_conflict`]).
pub type ConflictObserver = Arc<dyn Fn(&str, std::time::Duration, &str) + Send + Sync>;

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
    /// True when the file may still be being written: a document that ends early
    /// (`TRUNCATED`) is then an upload in progress, returned as
    /// [`ProcessError::Unsettled`] without a commit, for the daemon to let it wait
    /// (DESIGN, "Content gate"). The daemon sets it for a claim that the content gate did
    /// not hold back for the whole truncation grace; [`Source::new`] leaves it false, for
    /// `adjustd process` (which does not wait) and a parked copy.
    pub may_still_be_uploading: bool,
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
            may_still_be_uploading: false,
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

/// What [`process_retry`] did with the bytes of a parked feed.
// One value per retry, moved once into the daemon's match: boxing `Processed` would only
// add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Retried {
    /// Committed and reported (or the report of an earlier commit under the claim token
    /// re-emitted), as by [`process_file`].
    Processed(Processed),
    /// Nothing would have changed: rolled back, so no feed record, no report.
    Unchanged(Unchanged),
}

/// A retry of a parked feed rolled back because it would have changed nothing in the store
/// ([`Retried::Unchanged`]): the engine planned no store change for any of its messages (no
/// adjustment written, no rejection pinned; each one a replay of what applied before, a
/// content rejection as before, or an `ORDER_NOT_FOUND` deferred again), and some
/// `ORDER_NOT_FOUND` is still deferred, so the feed stays parked as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unchanged {
    /// The feed's merchant (its MerchantIdentifier).
    pub merchant: MerchantId,
    /// The messages read.
    pub messages: u64,
    /// The messages whose `ORDER_NOT_FOUND` is still deferred (at least one), as
    /// [`Processed::deferred`] would have said.
    pub deferred: u64,
}

/// What a run does when the engine planned no store change for any message of the feed and
/// an `ORDER_NOT_FOUND` is still deferred: [`process_file`] commits and reports it like any
/// feed, [`process_retry`] rolls it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenUnchanged {
    Commit,
    RollBack,
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
    /// Opening or reading the feed file failed because the process or the system ran short
    /// ([`crate::resources::shortage`]: too many open files, no memory), not for a fault of
    /// the file. Nothing was committed. Transient: the daemon keeps the feed under its claim
    /// and tries it again after a backoff.
    #[error("cannot read {path}: {}; not a fault of the feed, nothing was committed", .shortage.describe())]
    Shortage {
        /// The file.
        path: PathBuf,
        /// What ran short.
        shortage: crate::resources::Shortage,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store failed; see [`StoreError::is_transient`].
    #[error("store")]
    Store(#[from] StoreError),
    /// Every attempt at the feed conflicted with another instance writing the same orders
    /// or feeds ([`StoreError::Conflict`], [`crate::store::CONFLICT_ATTEMPTS`] of them in a row): the store
    /// answered, it is not away, and nothing was committed. Transient: the daemon keeps the
    /// feed and tries it again after a backoff.
    #[error(
        "{attempts} attempts in a row conflicted with another session writing or locking the same orders or feeds (another adjustd instance, or any client holding those rows); nothing was committed"
    )]
    Conflicts {
        /// How many attempts conflicted.
        attempts: u32,
        /// The last conflict.
        #[source]
        source: StoreError,
    },
    /// Nothing was committed because the file is still being written: it changed while it
    /// was processed (its signature moved, or a later pass over it read other bytes than
    /// the content hash was made of), or it ends early and
    /// [`Source::may_still_be_uploading`] is set. The daemon gives it back to the inbox, to
    /// wait like any upload in progress.
    #[error("{path} is still being written ({why}); nothing was committed")]
    Unsettled {
        /// The file.
        path: PathBuf,
        /// What showed it.
        why: Unsettled,
    },
    /// Writing a report failed, after the feed was committed (or found committed).
    #[error(
        "feed {feed_id} is processed and committed, but its report could not be written to {path}"
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
    /// True when retrying later can succeed: any store error the feed did not cause (the
    /// database away or busy, but also one that waits for an operator: a schema migrated by
    /// a newer adjustd, a privilege revoked, an error of no known kind; see
    /// [`StoreError::is_caused_by_request`]), or the outbox not writable (full,
    /// permissions): a retry under the same claim token re-emits the committed report and
    /// applies nothing again; or a file still being written, once it is complete; or a file
    /// the process could not open or read for want of descriptors or memory. Only what the
    /// feed itself causes is final.
    pub fn is_transient(&self) -> bool {
        match self {
            ProcessError::Store(error) => !error.is_caused_by_request(),
            ProcessError::Report { .. }
            | ProcessError::Unsettled { .. }
            | ProcessError::Shortage { .. }
            | ProcessError::Conflicts { .. } => true,
            ProcessError::Read { .. } => false,
        }
    }
}

/// Why a file is taken to be still being written ([`ProcessError::Unsettled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsettled {
    /// It changed while it was processed.
    Changed,
    /// Its document ends before the root element closes, and it may still be uploading.
    EndsEarly,
}

impl std::fmt::Display for Unsettled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unsettled::Changed => "it changed while it was read",
            Unsettled::EndsEarly => "its XML ends before the root element closes",
        })
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
    match process(context, source, WhenUnchanged::Commit)? {
        Retried::Processed(processed) => Ok(processed),
        Retried::Unchanged(_) => unreachable!(
            "invariant: only WhenUnchanged::RollBack leaves a feed uncommitted for being unchanged"
        ),
    }
}

/// Processes the bytes of a parked feed again (a retry that is not the last one), as
/// [`process_file`] does, but commits only if something changes: when the engine planned
/// no store change for any message (every one comes back as a replay of what applied
/// before, or as the same deferred `ORDER_NOT_FOUND`) and an `ORDER_NOT_FOUND` is still
/// deferred, the feed's transaction is rolled back and no report is written
/// ([`Retried::Unchanged`]). A feed rejected as a whole, a retry that leaves nothing deferred
/// (the feed is unparked then, so its report says how it ended) and the re-emission of a
/// retry committed earlier under the claim token are committed and reported as ever.
///
/// The last retry of a parked feed pins what is still not found, which is a change: the
/// daemon runs it with [`process_file`].
///
/// # Errors
/// As [`process_file`]; a rolled-back retry is not an error.
pub fn process_retry(context: &mut Context, source: &Source<'_>) -> Result<Retried, ProcessError> {
    process(context, source, WhenUnchanged::RollBack)
}

/// [`process_file`] and [`process_retry`], which differ only in `when_unchanged`.
fn process(
    context: &mut Context,
    source: &Source<'_>,
    when_unchanged: WhenUnchanged,
) -> Result<Retried, ProcessError> {
    // The size of the opened file decides before a byte is read (ingest R8): a file above
    // `max_file_bytes` is rejected without being hashed or parsed, so a huge (or sparse)
    // file costs nothing and holds up no other feed.
    let file = File::open(source.path).map_err(|e| read_error(source.path, e))?;
    let metadata = file.metadata().map_err(|e| read_error(source.path, e))?;
    if let Some(problem) = context.limits.file_too_large(metadata.len()) {
        return retry_conflicts(context, source, |context| {
            reject_unread(context, source, problem.clone())
        })
        .map(Retried::Processed);
    }
    let feed = OpenedFeed::hash(file, crate::inbox::signature(&metadata))
        .map_err(|e| read_error(source.path, e))?;
    retry_conflicts(context, source, |context| {
        attempt_once(context, source, &feed, when_unchanged)
    })
}

/// Processes a feed the daemon claimed, which always ends with a pair of reports unless the
/// store or the outbox fails (transient, retried by the caller): a claim that could not be
/// opened (`unreadable`, see [`crate::inbox::Claim::unreadable`]), and one whose reading
/// fails after it was opened (an I/O error of the disk or file system), is recorded and
/// reported as rejected with [`Code::FeedUnreadable`] instead of being processed. An error
/// of the process or the system rather than of the file ([`crate::resources::shortage`]:
/// too many open files, no memory), at the claim or now, records nothing: it is returned as
/// [`ProcessError::Shortage`], for the daemon to try the feed again.
///
/// `adjustd process` calls [`process_file`] instead: a file it cannot read is an error it
/// names on stderr ([`ProcessError::Read`]).
///
/// # Errors
/// [`ProcessError::Store`] or [`ProcessError::Report`], as for any feed;
/// [`ProcessError::Shortage`].
pub fn process_claimed(
    context: &mut Context,
    source: &Source<'_>,
    unreadable: Option<&std::io::Error>,
) -> Result<Processed, ProcessError> {
    if let Some(error) = unreadable {
        if let Some(shortage) = crate::resources::shortage(error) {
            return Err(ProcessError::Shortage {
                path: source.path.to_path_buf(),
                shortage,
                source: std::io::Error::new(error.kind(), error.to_string()),
            });
        }
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
    retry_conflicts(context, source, |context| {
        reject_unread(context, source, problem.clone())
    })
}

/// Runs `attempt` again after a conflict with another instance (serialization failure,
/// deadlock, lost race on a unique key), as [`crate::store::retry_conflicts`] does; when
/// the last attempt conflicts too, says so ([`ProcessError::Conflicts`]) rather than
/// handing back a bare store error, which reads as the store being away. Each conflicting
/// attempt is told to [`Context::on_conflict`].
fn retry_conflicts<T>(
    context: &mut Context,
    source: &Source<'_>,
    mut attempt: impl FnMut(&mut Context) -> Result<T, ProcessError>,
) -> Result<T, ProcessError> {
    crate::store::retry_conflicts(
        || {
            let started = std::time::Instant::now();
            let result = attempt(context);
            if let (Some(observer), Err(ProcessError::Store(error))) = (&context.on_conflict, &result)
                && let Some(detail) = error.conflict()
            {
                observer(source.file_name, started.elapsed(), detail);
            }
            result
        },
        |error| match error {
            ProcessError::Store(error) => error.conflict(),
            _ => None,
        },
        |attempt, detail| {
            tracing::info!(file = %crate::telemetry::escaped(source.file_name), attempt, detail = %detail, "store conflict, retrying feed");
        },
    )
    .map_err(|error| match error {
        // Only the last attempt's conflict comes back: every attempt conflicted.
        ProcessError::Store(conflict @ StoreError::Conflict { .. }) => ProcessError::Conflicts {
            attempts: crate::store::CONFLICT_ATTEMPTS,
            source: conflict,
        },
        other => other,
    })
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
    let mut outcome = stored_outcome(&record)?;
    // The stored text (megabytes for a report of 20 000 results) is not kept while the
    // files are written: they are rendered from the outcome, to the same bytes.
    drop(record);
    // The stored words of a deferred ORDER_NOT_FOUND are those of the committed attempt's
    // configuration; the report says what happens now (parked with this window, or not).
    if let Some(merchant) = outcome.merchant.clone() {
        for problem in &mut outcome.results {
            crate::engine::reword_deferred_order_not_found(
                problem,
                &merchant,
                context.rules.order_not_found_retry_until,
            );
        }
    }
    write(context, source, outcome, None).map(Some)
}

fn attempt_once(
    context: &mut Context,
    source: &Source<'_>,
    feed: &OpenedFeed,
    when_unchanged: WhenUnchanged,
) -> Result<Retried, ProcessError> {
    if let Some(processed) = re_emit_committed(context, source)? {
        return Ok(Retried::Processed(processed));
    }
    let store = context.store.as_store();
    let content_hash = feed.content_hash.as_str();
    // Passes of an earlier attempt (retried after a conflict) are not this one's concern.
    feed.forget_passes();
    let mut validator = Validator::new(
        BufReader::with_capacity(1 << 16, feed.pass()),
        context.limits,
        &context.rules,
    );
    let header = match validator.header() {
        Ok(header) => header,
        Err(problem) => {
            feed.confirm_rejection(source, &problem)?;
            let merchant = validator.merchant().cloned();
            let outcome = reject(store, source, content_hash, merchant, problem)?;
            return write(context, source, outcome, Some(0)).map(Retried::Processed);
        }
    };
    if let Some(problem) = merchant_problem(&header, source) {
        feed.confirm(source)?;
        let outcome = reject(store, source, content_hash, Some(header.merchant), problem)?;
        return write(context, source, outcome, Some(0)).map(Retried::Processed);
    }
    let earlier = store.feed_by_hash(&header.merchant, content_hash)?;
    if let Some(earlier) = &earlier {
        restore_missing_report(&context.outbox, source, earlier)?;
    }
    if let (Some(earlier), DuplicatePolicy::Skip) = (&earlier, context.duplicate_policy)
        && !had_deferred(earlier)
    {
        feed.confirm(source)?;
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
        return write(context, source, outcome, Some(0)).map(Retried::Processed);
    }
    // With the `process` policy, or when the earlier run left messages for later (see
    // `had_deferred`), a repeated feed is applied like any other (idempotency keys still
    // catch replays) and records which feed it repeats.
    let duplicate_of = earlier.map(|e| e.id);
    let applied = apply(
        store,
        &mut validator,
        source,
        feed,
        header,
        duplicate_of,
        &context.rules,
        context.chunk_messages,
        when_unchanged,
    )?;
    match applied {
        Applied::Committed { outcome, deferred } => {
            write(context, source, outcome, Some(deferred)).map(Retried::Processed)
        }
        Applied::RolledBack(unchanged) => Ok(Retried::Unchanged(unchanged)),
    }
}

/// How [`apply`] ended the feed's transaction.
enum Applied {
    /// Committed (the feed's messages, or its rejection as a whole), with the number of
    /// deferred messages ([`Processed::deferred`]).
    Committed { outcome: FeedOutcome, deferred: u64 },
    /// Rolled back: nothing would have changed ([`WhenUnchanged::RollBack`]).
    RolledBack(Unchanged),
}

/// Streams the messages through validate → engine → store inside one transaction. The
/// reader and validator run on a second thread, one chunk ahead of the engine and the store,
/// so parsing overlaps with the database work. Returns the outcome and the number of
/// deferred messages ([`Processed::deferred`]); or, under [`WhenUnchanged::RollBack`], rolls
/// back a feed for none of whose messages the engine planned a store change while some
/// `ORDER_NOT_FOUND` is still deferred.
// The inputs of one private call site; a struct for them would only rename them.
#[allow(clippy::too_many_arguments)]
fn apply<R: std::io::BufRead + Send>(
    store: &mut dyn Store,
    validator: &mut Validator<R>,
    source: &Source<'_>,
    feed: &OpenedFeed,
    header: FeedHeader,
    duplicate_of: Option<u64>,
    rules: &Rules,
    chunk_messages: usize,
    when_unchanged: WhenUnchanged,
) -> Result<Applied, ProcessError> {
    let merchant = header.merchant;
    let content_hash = feed.content_hash.as_str();
    let key_digest = KeyDigest {
        feed,
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
        feed.confirm_rejection(source, &problem)?;
        let outcome = reject(store, source, content_hash, Some(merchant), problem)?;
        return Ok(Applied::Committed {
            outcome,
            deferred: 0,
        });
    }
    if when_unchanged == WhenUnchanged::RollBack && tally.changes == 0 && tally.deferred > 0 {
        // Nothing was written but the feed record's start: dropping the transaction leaves
        // the store as it was. A retry with nothing deferred any more is committed although
        // it changes nothing either: it unparks the feed, so its report says how it ended.
        drop(tx);
        return Ok(Applied::RolledBack(Unchanged {
            merchant,
            messages: tally.processed,
            deferred: tally.deferred,
        }));
    }
    // Dropping the transaction on an error rolls it back.
    feed.confirm(source)?;
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
    tx.commit(feed_done(&outcome))?;
    Ok(Applied::Committed { outcome, deferred })
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
    tally.changes += plan.changes.len() as u64;
    tx.apply(merchant, &plan.changes)?;
    snapshot.forget();
    tx.forget_loaded();
    let mut outcomes = plan.outcomes.into_iter();
    for slot in order {
        match slot {
            Some((problems, unlisted)) => tally.add_with_unlisted(false, problems, unlisted),
            None => {
                let outcome = outcomes.next().ok_or_else(|| StoreError::Invalid {
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
///
/// A report lists at most [`MAX_RESULTS`] results, errors before warnings: once the list is
/// full, an error takes the place of the latest warning listed, so errors that follow many
/// warnings (a cumulative resend of lines applied before, say) are not hidden behind them.
/// What is left out is a prefix-closed tail of each kind (every warning from some result on,
/// every error from some result on), which the `RESULTS_OMITTED` result names.
#[derive(Debug, Default)]
pub struct Tally {
    processed: u64,
    successful: u64,
    with_error: u64,
    with_warning: u64,
    /// The listed results in document order; `None` where an error took a warning's place.
    results: Vec<Option<Problem>>,
    /// How many of `results` are `Some`.
    listed: usize,
    /// The listed warnings in document order, each with its index in `results` and where it
    /// stands: the last one is the next an error displaces.
    listed_warnings: Vec<(usize, ResultAt)>,
    /// Warnings and errors counted, not listed.
    omitted_warnings: Omitted,
    omitted_errors: Omitted,
    /// Messages whose `ORDER_NOT_FOUND` was not pinned ([`Processed::deferred`]), counted
    /// whether or not their result is listed.
    deferred: u64,
    /// The store changes the engine planned ([`engine::Change`]: adjustments written,
    /// rejections pinned); none means the feed leaves the store as it was, but for its
    /// own record ([`process_retry`] rolls such a retry back).
    changes: u64,
}

/// Where a result stands: its message, and how many results of that message come before it.
type ResultAt = (MessageId, usize);

/// Results of one severity left out of a report: how many, and the first of them in
/// document order (every later one of that severity is left out too).
#[derive(Debug, Default)]
struct Omitted {
    count: u64,
    from: Option<ResultAt>,
}

impl Omitted {
    /// Counts `count` results left out, the first of them at `at`; `earliest` when `at`
    /// comes before every one counted so far (a displaced warning), else it only counts.
    fn add(&mut self, count: u64, at: ResultAt, earliest: bool) {
        self.count += count;
        if earliest {
            self.from = Some(at);
        } else {
            self.from.get_or_insert(at);
        }
    }

    /// `3 warnings from result 2 of message 7 on`, or `None` when none was left out.
    fn describe(&self, what: &str) -> Option<String> {
        let (message, before) = self.from?;
        let from = match before {
            0 => format!("message {message}"),
            before => format!("result {} of message {message}", before + 1),
        };
        let plural = if self.count == 1 { "" } else { "s" };
        Some(format!("{} {what}{plural} from {from} on", self.count))
    }
}

impl Tally {
    /// The tally of a feed that ended at a feed-level result (MessageID 0): no message
    /// processed. An error counts as one with an error, as Amazon's reports count a
    /// document-level error (processed 0, with error 1); a warning (DUPLICATE_FEED) is no
    /// message's and is not counted, like RESULTS_OMITTED, so the messages with a warning
    /// never outnumber those processed.
    pub fn feed_level(problem: Problem) -> Tally {
        Tally {
            with_error: u64::from(problem.is_error()),
            results: vec![Some(problem)],
            listed: 1,
            ..Tally::default()
        }
    }

    /// Counts one message and lists its problems while the list has room (see [`Tally`]).
    pub fn add(&mut self, applied: bool, problems: Vec<Problem>) {
        self.add_with_unlisted(applied, problems, 0);
    }

    /// [`Tally::add`] for a message that has `unlisted` more problems after `problems`,
    /// counted but not kept ([`ValidatedMessage::Invalid`], a message with more problems
    /// than a report lists): they are left out as errors, the validation problems they are.
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
        let message = problems.first().map(|p| p.message_id);
        let count = problems.len();
        for (before, problem) in problems.into_iter().enumerate() {
            self.list(problem, before);
        }
        if unlisted > 0 {
            let message = message.unwrap_or(MessageId::FEED);
            self.omitted_errors.add(unlisted, (message, count), false);
        }
    }

    /// Lists `problem` (the `before`-th of its message) if the list has room, or in the
    /// place of the latest warning listed if it is an error; else counts it as left out.
    fn list(&mut self, problem: Problem, before: usize) {
        let at = (problem.message_id, before);
        if self.listed < MAX_RESULTS {
            if !problem.is_error() {
                self.listed_warnings.push((self.results.len(), at));
            }
            self.results.push(Some(problem));
            self.listed += 1;
        } else if !problem.is_error() {
            self.omitted_warnings.add(1, at, false);
        } else if let Some((index, warning_at)) = self.listed_warnings.pop() {
            self.results[index] = None;
            self.omitted_warnings.add(1, warning_at, true);
            self.results.push(Some(problem));
        } else {
            self.omitted_errors.add(1, at, false);
        }
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
        let mut results: Vec<Problem> = self.results.into_iter().flatten().collect();
        let left_out: Vec<String> = [
            self.omitted_errors.describe("error"),
            self.omitted_warnings.describe("warning"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !left_out.is_empty() {
            results.push(Problem::new(
                Code::ResultsOmitted,
                MessageId::FEED,
                "AmazonEnvelope",
                None,
                format!(
                    "{} not listed ({}): a report lists at most {MAX_RESULTS} results, errors before warnings; the counts above include every message",
                    match self.omitted_errors.count + self.omitted_warnings.count {
                        1 => "1 more result is".to_owned(),
                        count => format!("{count} more results are"),
                    },
                    left_out.join(", ")
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
    tx.commit(feed_done(&outcome))?;
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

/// Where a feed's reports are, as recorded with the feed. A feed recorded before the store
/// kept that (schema version 5 of SQLite, 3 of PostgreSQL) has them where a file of the pair
/// is found: in its merchant's folder, else in the outbox itself; where neither holds one,
/// in `otherwise` (`None`: the outbox itself).
pub fn locate_reports(
    outbox: &Path,
    feed: &FeedRecord,
    otherwise: Option<&MerchantId>,
) -> (PathBuf, PathBuf) {
    let at = |folder: Option<&MerchantId>| {
        report::report_paths(outbox, folder, &feed.file_name, feed.id)
    };
    match &feed.report_folder {
        ReportFolder::Outbox => at(None),
        ReportFolder::Merchant(merchant) => at(Some(merchant)),
        ReportFolder::Unrecorded => {
            let merchant = feed.merchant.as_deref().and_then(MerchantId::new);
            [merchant.as_ref(), None]
                .into_iter()
                .map(&at)
                .find(|(xml, json)| xml.exists() || json.exists())
                .unwrap_or_else(|| at(otherwise))
        }
    }
}

/// Writes the stored report of `earlier` again when `process` (no claim: the daemon retries
/// its own) finds it missing from the outbox: the report a run of `process` committed but
/// could not write ([`ProcessError::Report`]) is written by processing the file again.
///
/// It goes to the folder recorded with `earlier`. When that is not recorded (a feed of an
/// older build, [`ReportFolder::Unrecorded`]), a pair of which a file is left in the
/// merchant's folder or the outbox is completed there; a pair gone from both goes where the
/// reports of this copy (`source`) go, where the operator is looking now (rather than to the
/// outbox itself, whatever folder either copy came from).
fn restore_missing_report(
    outbox: &Path,
    source: &Source<'_>,
    earlier: &FeedRecord,
) -> Result<(), ProcessError> {
    if source.claim_token.is_some() {
        return Ok(());
    }
    let (xml_report, json_report) = locate_reports(outbox, earlier, source.bound_merchant);
    if xml_report.exists() && json_report.exists() {
        return Ok(());
    }
    let outcome = stored_outcome(earlier)?;
    report::write_reports(&outcome, &xml_report, &json_report).map_err(|source| {
        ProcessError::Report {
            feed_id: earlier.id,
            path: xml_report.clone(),
            source,
        }
    })?;
    tracing::info!(feed_id = earlier.id, xml_report = %xml_report.display(), "wrote the missing report of the earlier feed");
    Ok(())
}

/// The outcome of a committed feed as its report was stored with it. A stored report that
/// cannot be read is an error of that feed's (it would fail the same way on every retry).
fn stored_outcome(record: &FeedRecord) -> Result<FeedOutcome, StoreError> {
    report::parse_json(&record.report_json).map_err(|e| StoreError::Invalid {
        detail: format!("feed {}: its stored report cannot be read: {e}", record.id),
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

/// The end of the feed record of `outcome`, with its JSON report ([`report::render_json`]),
/// which the store drops as soon as the database has its copy.
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
    let Some(codes) = report::json_result_codes(&earlier.report_json) else {
        // No readable report (an older or damaged record): the bytes decide, as before.
        return false;
    };
    codes.iter().any(|&code| {
        code == Some(Code::OrderNotFound.number()) || code == Some(Code::ResultsOmitted.number())
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
/// feed's canonical content digests ([`canon::content_digests`]), so a re-exported copy is
/// recognised. Read from the file (a pass of its own, [`OpenedFeed::pass`]) on first use
/// only, so a fully keyed feed costs no further pass. A file without a digest (it cannot be
/// read again, or it is XML that the reader rejects anyway) falls back to the byte hash.
struct KeyDigest<'a> {
    feed: &'a OpenedFeed,
    digests: Option<canon::Digests>,
}

impl KeyDigest<'_> {
    fn get(&mut self) -> &canon::Digests {
        let feed = self.feed;
        self.digests.get_or_insert_with(|| {
            let digests = canon::content_digests(BufReader::with_capacity(1 << 16, feed.pass()));
            digests.unwrap_or_else(|| {
                // Only XML the reader rejects further on has no digest (canon's limits are
                // the reader's), and then nothing is applied: not worth a warning.
                tracing::debug!("no canonical content digest; keys of items without a MerchantAdjustmentItemID derive from the file's bytes");
                canon::Digests {
                    current: feed.content_hash.clone(),
                    earlier: feed.content_hash.clone(),
                }
            })
        })
    }
}

/// The feed file being processed, opened once, with the content hash of its bytes. Every
/// later pass over it (the parse, the canonical digest) reads this one open file from its
/// own offset ([`OpenedFeed::pass`]), so all of them read the same inode, whatever happens
/// to the path meanwhile, and hashes what it reads. Before anything is committed,
/// [`OpenedFeed::confirm`] checks that each pass saw exactly the bytes of the content hash
/// and that the file's signature (size, mtime, ctime, inode) is what it was before the
/// hash was made: an in-place writer that goes on after the claim (ingest R3) cannot have
/// its bytes applied under another version's hash, nor its new version archived as
/// processed. The signature alone could miss a rewrite of equal length within the
/// filesystem's timestamp granularity; the hashes cannot.
struct OpenedFeed {
    file: File,
    /// Before the first read.
    signature: FileSignature,
    /// Hex SHA-256 of the bytes, the first pass.
    content_hash: String,
    /// The later passes of the current attempt.
    passes: Mutex<Vec<Arc<Mutex<Pass>>>>,
}

/// How far a pass over the feed file has read, and the hash of what it read.
struct Pass {
    hasher: Sha256,
    offset: u64,
}

/// A reader of one pass over an [`OpenedFeed`] (positional reads of the one open file).
struct PassReader<'a> {
    file: &'a File,
    pass: Arc<Mutex<Pass>>,
}

impl Read for PassReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut pass = self.pass.lock().unwrap_or_else(PoisonError::into_inner);
        let n = self.file.read_at(buf, pass.offset)?;
        pass.hasher.update(&buf[..n]);
        pass.offset += n as u64;
        Ok(n)
    }
}

impl OpenedFeed {
    /// Hashes `file`, whose signature before any read was `signature`.
    fn hash(file: File, signature: FileSignature) -> std::io::Result<OpenedFeed> {
        let content_hash = HashingReader::new(&file).finish()?;
        Ok(OpenedFeed {
            file,
            signature,
            content_hash,
            passes: Mutex::new(Vec::new()),
        })
    }

    /// A new pass over the file from its start.
    fn pass(&self) -> PassReader<'_> {
        let pass = Arc::new(Mutex::new(Pass {
            hasher: Sha256::new(),
            offset: 0,
        }));
        self.passes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&pass));
        PassReader {
            file: &self.file,
            pass,
        }
    }

    fn forget_passes(&self) {
        self.passes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Checks, before a commit, that the file has not changed since its hash was made: each
    /// pass, read on to the end if it stopped early, hashes to the content hash, and the
    /// signature is unchanged.
    ///
    /// # Errors
    /// [`ProcessError::Unsettled`] with [`Unsettled::Changed`]; a read error.
    fn confirm(&self, source: &Source<'_>) -> Result<(), ProcessError> {
        let read_error = |e| read_error(source.path, e);
        let changed = || ProcessError::Unsettled {
            path: source.path.to_owned(),
            why: Unsettled::Changed,
        };
        let passes =
            std::mem::take(&mut *self.passes.lock().unwrap_or_else(PoisonError::into_inner));
        let mut buffer = vec![0; 1 << 16];
        for pass in passes {
            let mut pass = pass.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                let n = self
                    .file
                    .read_at(&mut buffer, pass.offset)
                    .map_err(read_error)?;
                if n == 0 {
                    break;
                }
                pass.hasher.update(&buffer[..n]);
                pass.offset += n as u64;
            }
            if hex(pass.hasher.clone().finalize().as_slice()) != self.content_hash {
                return Err(changed());
            }
        }
        let metadata = self.file.metadata().map_err(read_error)?;
        if crate::inbox::signature(&metadata) != self.signature {
            return Err(changed());
        }
        Ok(())
    }

    /// Before a rejection for `problem` is committed: [`OpenedFeed::confirm`], then, for a
    /// file that may still be uploading, a document that ends early is one
    /// ([`Unsettled::EndsEarly`]), not a truncated feed.
    ///
    /// # Errors
    /// [`ProcessError::Unsettled`]; a read error.
    fn confirm_rejection(
        &self,
        source: &Source<'_>,
        problem: &Problem,
    ) -> Result<(), ProcessError> {
        self.confirm(source)?;
        if problem.code == Code::Truncated && source.may_still_be_uploading {
            return Err(ProcessError::Unsettled {
                path: source.path.to_owned(),
                why: Unsettled::EndsEarly,
            });
        }
        Ok(())
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
        Ok(hex(self.hasher.finalize().as_slice()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Lower-case hex of a digest.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The error of a failed open or read of the feed file: [`ProcessError::Shortage`] when the
/// process or the system ran short, else [`ProcessError::Read`] (the file's own fault).
fn read_error(path: &Path, source: std::io::Error) -> ProcessError {
    if let Some(shortage) = crate::resources::shortage(&source) {
        return ProcessError::Shortage {
            path: path.to_path_buf(),
            shortage,
            source,
        };
    }
    ProcessError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// The current UTC time in RFC 3339 with second precision (`2026-11-30T12:00:00Z`).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(path: &Path) -> Source<'_> {
        Source::new(path, "feed.xml", None, None, None)
    }

    /// Opens `path` and hashes it as [`process_file`] does.
    fn opened(path: &Path) -> OpenedFeed {
        let file = File::open(path).expect("open");
        let signature = crate::inbox::signature(&file.metadata().expect("metadata"));
        OpenedFeed::hash(file, signature).expect("hash")
    }

    fn read_pass(feed: &OpenedFeed) -> Vec<u8> {
        let mut bytes = Vec::new();
        feed.pass().read_to_end(&mut bytes).expect("read");
        bytes
    }

    #[test]
    fn passes_that_read_the_hashed_bytes_confirm() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("feed.xml");
        std::fs::write(&path, b"<a>version one</a>").expect("write");
        let feed = opened(&path);
        assert_eq!(read_pass(&feed), b"<a>version one</a>");
        // A pass that stopped early is read on to the end by the check.
        let mut stopped = feed.pass();
        let mut head = [0; 3];
        stopped.read_exact(&mut head).expect("read");
        feed.confirm(&source(&path)).expect("unchanged");
    }

    #[test]
    fn a_rewrite_after_the_hash_is_caught_by_the_signature() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("feed.xml");
        std::fs::write(&path, b"<a>version one</a>").expect("write");
        let feed = opened(&path);
        // The same length, written in place after the hash and after every read.
        read_pass(&feed);
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open for writing");
        writer.write_all_at(b"two", 11).expect("rewrite");
        // An mtime of its own, so the signature moves whatever the timestamp granularity.
        writer
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
            .expect("set mtime");
        let error = feed.confirm(&source(&path)).expect_err("changed");
        assert!(
            matches!(
                error,
                ProcessError::Unsettled {
                    why: Unsettled::Changed,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn a_rewrite_the_signature_cannot_see_is_caught_by_the_hashes() {
        // A write within the filesystem's timestamp granularity can leave size, mtime and
        // ctime as they were; the signature is taken after the rewrite here to stand for
        // that case. The pass read other bytes than were hashed.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("feed.xml");
        std::fs::write(&path, b"<a>version one</a>").expect("write");
        let hashed = opened(&path);
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open for writing");
        writer.write_all_at(b"two", 11).expect("rewrite");
        let file = File::open(&path).expect("open");
        let feed = OpenedFeed {
            signature: crate::inbox::signature(&file.metadata().expect("metadata")),
            file,
            content_hash: hashed.content_hash,
            passes: Mutex::new(Vec::new()),
        };
        assert_eq!(read_pass(&feed), b"<a>version two</a>");
        assert!(matches!(
            feed.confirm(&source(&path)),
            Err(ProcessError::Unsettled {
                why: Unsettled::Changed,
                ..
            })
        ));
    }

    #[test]
    fn a_document_that_ends_early_is_unsettled_only_while_it_may_still_be_uploading() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("feed.xml");
        std::fs::write(&path, b"<AmazonEnvelope><Header>").expect("write");
        let feed = opened(&path);
        let truncated = Problem::new(
            Code::Truncated,
            MessageId::FEED,
            "AmazonEnvelope",
            None,
            "ends early",
            "Upload the rest.",
        );
        let mut source = source(&path);
        feed.confirm_rejection(&source, &truncated)
            .expect("process does not wait: truncated");
        source.may_still_be_uploading = true;
        assert!(matches!(
            feed.confirm_rejection(&source, &truncated),
            Err(ProcessError::Unsettled {
                why: Unsettled::EndsEarly,
                ..
            })
        ));
    }
}
