//! The daemon: one worker thread that owns the inbox watch, the readiness tracker and the
//! pipeline context (recover `work/`, list, claim, process or report as unreadable, move,
//! repeat), retries with capped exponential backoff on transient errors (in place when the
//! store is away, which holds up every feed alike, after giving the batch's other claims
//! back to the inbox for peers and marking the health check failed; later, between other
//! feeds, when only one feed's report cannot be written; likewise, with a backoff of its own,
//! parking and the move out of `work/` of a feed done with, which is counted and summed up
//! once), gives a claim whose file is still being written back to the inbox to wait, the
//! retries of parked feeds (feeds with an `ORDER_NOT_FOUND`, see [`crate::park`]) between
//! inbox batches, graceful shutdown that never cancels a feed in hand, and the optional
//! metrics/health listener. No business rules and no signal handling (the CLI turns signals
//! into the cancellation token).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, SubsecRound as _, Utc};
use tokio_util::sync::CancellationToken;

use crate::inbox::ready::{
    ContentDecision, EntryKind, FileSignature, InboxName, ReadyFile, ReadyRules, Tracker,
};
use crate::inbox::watch::{ActiveMode, Wake, Watch};
use crate::inbox::{
    self, Claim, ClaimResult, ClaimTokens, Content, Destination, InboxConfig, Syncs,
};
use crate::metrics::{FeedResult, Metrics, ScanReason};
use crate::model::{MerchantId, Position};
use crate::park::{self, Attempt, ParkError, ParkedFeeds, Parking, RetryWindow, Schedule};
use crate::pipeline::{
    self, Context, ProcessError, Processed, Retried, Source, Unchanged, Unsettled,
};
use crate::problem::{Problem, Severity};
use crate::report::FeedOutcome;
use crate::store::FeedStatus;
use crate::telemetry::{escaped, escaped_shortened};

/// The daemon's configuration, resolved.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The watched folder.
    pub inbox: InboxConfig,
    /// How long shutdown waits for the feed in hand before giving up (the feed is then
    /// recovered at the next start).
    pub shutdown_timeout: Duration,
    /// Longest wait between retries of a feed that failed transiently, and between content
    /// checks of an incomplete upload.
    pub max_backoff: Duration,
    /// Where to serve `/healthz` and `/metrics`; off when `None`.
    pub http_listen: Option<SocketAddr>,
    /// Where feeds with an `ORDER_NOT_FOUND` are parked for their retries (`[paths]
    /// parked`).
    pub parked: PathBuf,
    /// How long after its first processing a parked feed is retried (`[daemon]
    /// order_not_found_window_secs`); `None` (0 in the file) turns parking off.
    pub order_not_found_window: Option<Duration>,
    /// The delay before the first retry of a parked feed; it doubles after each retry, up
    /// to [`park::MAX_RETRY_INTERVAL`] (`[daemon] order_not_found_first_retry_secs`).
    pub order_not_found_first_retry: Duration,
}

impl DaemonConfig {
    /// A configuration with the documented defaults around `inbox` and the `parked`
    /// folder.
    pub fn with_defaults(inbox: InboxConfig, parked: PathBuf) -> DaemonConfig {
        DaemonConfig {
            inbox,
            shutdown_timeout: Duration::from_secs(30),
            max_backoff: Duration::from_secs(64),
            http_listen: None,
            parked,
            order_not_found_window: Some(RetryWindow::DEFAULT.window),
            order_not_found_first_retry: RetryWindow::DEFAULT.first_retry,
        }
    }

    /// When parked feeds are retried; `None` when parking is off.
    pub fn order_not_found_retry(&self) -> Option<RetryWindow> {
        self.order_not_found_window.map(|window| RetryWindow {
            window,
            first_retry: self.order_not_found_first_retry,
        })
    }
}

/// Shutdown gave up on the feed in hand after `[daemon] shutdown_timeout_secs`. Nothing is
/// lost: the feed's transaction either committed or did not, and the file stays in `work/`,
/// where the next start recovers it. The CLI exits with its own code for this
/// ([`crate::cli::exit::INTERRUPTED`], as for a second signal), not as a runtime failure.
#[derive(Debug, thiserror::Error)]
#[error(
    "shutdown did not finish within {timeout:?}; the feed in hand stays in {} and is recovered at the next start",
    work.display()
)]
pub struct ShutdownTimedOut {
    /// `[daemon] shutdown_timeout_secs`.
    pub timeout: Duration,
    /// The `work/` folder.
    pub work: PathBuf,
}

/// Capacity of the queue between the notify callback and the worker. Overflow is harmless
/// (a listing follows), so it is small.
const WAKE_QUEUE: usize = 256;

/// Claims given back when the process runs out of descriptors while claiming a batch (each
/// claim holds one): what reading, reporting and moving the feeds kept needs, with room.
const SHORTAGE_RESERVE: usize = 8;

/// Most claims made before processing starts; they share one fsync per folder.
const CLAIM_BATCH: usize = 64;

/// Shortest time between two listings triggered by events, so a burst of events (or a
/// writer appending in small pieces) costs a few listings, not thousands.
const EVENT_COALESCE: Duration = Duration::from_millis(15);

/// Checks the daemon's folder layout and creates the missing folders
/// ([`inbox::check_layout`], and the `parked` folder when parking is on): the caller does
/// this before it opens the store, so a refused layout creates nothing.
///
/// # Errors
/// [`inbox::LayoutError`] naming the folders.
pub fn check_folders(config: &DaemonConfig) -> Result<(), inbox::LayoutError> {
    inbox::check_layout(&config.inbox)?;
    if config.order_not_found_window.is_some() {
        inbox::check_other_folder(&config.inbox, "parked", &config.parked)?;
    }
    Ok(())
}

/// Runs the daemon until `shutdown` is cancelled: recovers the feeds left in `work/`, then
/// watches the inbox. On shutdown it stops taking new files, finishes the feed in hand and
/// returns `Ok`. The folders must have passed [`check_folders`].
///
/// # Errors
/// An HTTP address that cannot be bound, a `work/` folder that cannot be read, or a
/// shutdown that did not finish within `shutdown_timeout` ([`ShutdownTimedOut`]).
pub async fn run(
    config: DaemonConfig,
    context: Context,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    metrics.set_inbox_lister(inbox_lister(&config));
    let mut context = context;
    context.on_conflict = Some(show_long_lock_waits(Arc::clone(&metrics)));
    let http_stop = CancellationToken::new();
    let mut http_task = None;
    if let Some(address) = config.http_listen {
        let listener = crate::metrics::bind(address)
            .await
            .with_context(|| format!("binding the http listener on {address}"))?;
        let bound = listener.local_addr().unwrap_or(address);
        tracing::info!(address = %bound, "http listener ready (/healthz, /metrics)");
        http_task = Some(tokio::spawn(crate::metrics::serve(
            listener,
            Arc::clone(&metrics),
            http_stop.clone(),
        )));
    }

    let (wake_sender, wake_receiver) = std::sync::mpsc::sync_channel(WAKE_QUEUE);
    let (done_sender, done_receiver) = tokio::sync::oneshot::channel();
    let feed_in_hand = FeedInHand::default();
    let worker = Worker::new(
        config.clone(),
        context,
        Arc::clone(&metrics),
        wake_sender.clone(),
        wake_receiver,
        shutdown.clone(),
        feed_in_hand.clone(),
    );
    // A plain thread, not spawn_blocking: if shutdown times out we must be able to return
    // without the runtime waiting for the feed in hand.
    std::thread::Builder::new()
        .name("adjustd-worker".into())
        .spawn(move || {
            let result = worker.run();
            let _ = done_sender.send(result);
        })
        .context("starting the worker thread")?;

    let mut done_receiver = done_receiver;
    let result = tokio::select! {
        result = &mut done_receiver => Some(result),
        () = shutdown.cancelled() => None,
    };
    let result = match result {
        Some(result) => {
            result.unwrap_or_else(|_| Err(anyhow::anyhow!("the worker thread panicked")))
        }
        None => {
            tracing::info!(
                timeout_secs = config.shutdown_timeout.as_secs_f64(),
                "shutting down, finishing the feed in hand"
            );
            let _ = wake_sender.try_send(Wake::Shutdown);
            let finished =
                match tokio::time::timeout(config.shutdown_timeout, &mut done_receiver).await {
                    Ok(result) => Some(result),
                    Err(_) => worker_between_feeds(&mut done_receiver, &feed_in_hand).await,
                };
            match finished {
                Some(result) => {
                    result.unwrap_or_else(|_| Err(anyhow::anyhow!("the worker thread panicked")))
                }
                None => Err(anyhow::Error::new(ShutdownTimedOut {
                    timeout: config.shutdown_timeout,
                    work: config.inbox.work.clone(),
                })),
            }
        }
    };
    http_stop.cancel();
    if let Some(task) = http_task {
        let _ = task.await;
    }
    if result.is_ok() {
        tracing::info!("stopped");
    }
    result
}

/// After `shutdown_timeout` passed: the timeout is for the feed in hand, so a worker that has
/// none (waiting, listing, between two feeds) is waited for, as it returns at its next look
/// at the cancelled token; `None` as soon as a feed is in hand (one it started just before
/// the signal), which is what the timeout cuts short.
async fn worker_between_feeds(
    done: &mut tokio::sync::oneshot::Receiver<anyhow::Result<()>>,
    feed_in_hand: &FeedInHand,
) -> Option<Result<anyhow::Result<()>, tokio::sync::oneshot::error::RecvError>> {
    loop {
        if feed_in_hand.is_set() {
            return None;
        }
        tokio::select! {
            result = &mut *done => return Some(result),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// Whether the worker has a feed in hand, from the start of its first attempt to its move
/// out of `work/` (or a parked feed's retry, to its new schedule), shared with [`run`], whose
/// shutdown timeout only ever gives up on such a feed ([`ShutdownTimedOut`]).
#[derive(Debug, Clone, Default)]
struct FeedInHand(Arc<AtomicBool>);

impl FeedInHand {
    fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Sets the flag until the returned guard is dropped.
    fn hold(&self) -> HeldFeed {
        self.0.store(true, Ordering::SeqCst);
        HeldFeed(Arc::clone(&self.0))
    }
}

/// Clears [`FeedInHand`] when dropped.
struct HeldFeed(Arc<AtomicBool>);

impl Drop for HeldFeed {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// How a scrape lists the inbox while the worker is busy ([`Metrics::set_inbox_lister`]):
/// the regular files that pass the name gate, done markers left out, as the tracker counts
/// them, each with its status-change time (when it arrived).
fn inbox_lister(config: &DaemonConfig) -> crate::metrics::InboxLister {
    let inbox = config.inbox.clone();
    let gate = Tracker::new(ready_rules(config));
    Box::new(move || {
        Ok(inbox::list(&inbox)?
            .into_iter()
            .filter_map(|listed| match listed.kind {
                EntryKind::File(signature) if gate.is_candidate(&listed.name.name) => {
                    Some((listed.name, signature.changed_at()))
                }
                _ => None,
            })
            .collect())
    })
}

fn ready_rules(config: &DaemonConfig) -> ReadyRules {
    ReadyRules {
        settle: config.inbox.settle,
        ignore: config.inbox.ignore.clone(),
        done_marker: config.inbox.done_marker.clone(),
        truncated_grace: config.inbox.truncated_grace,
        max_backoff: config.max_backoff,
    }
}

/// An attempt that conflicted after running this long waited for a row lock, not for a
/// race: conflicts between instances writing at once come in milliseconds, and PostgreSQL
/// gives up a lock wait after its lock timeout (60 s).
const LONG_LOCK_WAIT: Duration = Duration::from_secs(10);

/// The [`pipeline::ConflictObserver`] of the daemon: an attempt that conflicted after
/// [`LONG_LOCK_WAIT`] or more makes `/healthz` fail, naming the feed, until an attempt gets
/// past the store. Without it a feed held up by a stuck session (another instance frozen
/// mid-feed, an operator's open transaction) would show only after all attempts failed,
/// and then as healthy.
fn show_long_lock_waits(metrics: Arc<Metrics>) -> pipeline::ConflictObserver {
    Arc::new(move |file_name, waited, detail| {
        if waited >= LONG_LOCK_WAIT {
            tracing::warn!(file = %escaped(file_name), waited_secs = waited.as_secs(), detail = %detail, "a feed waited for rows another session holds locked; it is retried");
            metrics.store_lock_wait(&format!(
                "feed {} waited {} s, then: {detail}",
                escaped(file_name),
                waited.as_secs()
            ));
        }
    })
}

/// The worker: everything blocking, in one thread, one feed at a time.
struct Worker {
    config: DaemonConfig,
    context: Context,
    metrics: Arc<Metrics>,
    wake_sender: SyncSender<Wake>,
    wakes: Receiver<Wake>,
    shutdown: CancellationToken,
    /// Set while a feed is in hand (see [`FeedInHand`]).
    feed_in_hand: FeedInHand,
    tracker: Tracker,
    tokens: ClaimTokens,
    /// Claims of the current inbox batch not started yet: given back to the inbox when the
    /// store turns out to be away (`Worker::give_back_queued`) or at shutdown.
    queued: VecDeque<Claim>,
    /// Files given back to the inbox because their document ended early although the
    /// content gate had found them complete (`Worker::give_back_unsettled`), with their
    /// signature just after: while it is unchanged, the gate takes such a file for
    /// incomplete, so it waits out the truncation grace (then is reported as truncated)
    /// instead of going round claim and give-back for ever when the gate and the reader
    /// disagree about it.
    ended_early: HashMap<InboxName, FileSignature>,
    inbox_missing: bool,
    /// The parked feeds and when to retry them; `None` when parking is off.
    parking: Option<ParkingLot>,
    /// When the outbox was last swept for temp reports left by interrupted writes
    /// ([`Worker::sweep_temp_reports`]).
    temps_swept_at: Option<Instant>,
    /// When `work/` was last looked at for claims no live process holds (at start, then
    /// every rescan interval: `adopt_orphans`).
    work_checked_at: Instant,
    /// Committed feeds whose report the outbox could not take, each waiting in `work/` (its
    /// claim, and so its lock, held) for its own next attempt while other feeds go on
    /// ([`Worker::retry_reports`]).
    awaiting_report: Vec<InHand>,
    /// Feeds done with (committed and reported, or failed for good) that could not yet be
    /// parked or moved out of `work/` (a full disk, a read-only folder), each still claimed
    /// and locked in `work/`, waiting for its own next try ([`Worker::retry_unfinished`]).
    /// Their summary line is logged and they are counted once, when they are done with;
    /// a retry only parks and moves them.
    unfinished: Vec<Unfinished>,
    /// True once the content gate logged that it cannot open inbox files for want of
    /// descriptors or memory; false again once it opens one. One warning per shortage.
    gate_short: bool,
}

/// A feed done with whose last steps (parking, then the move to `archive/` or `failed/`)
/// failed, kept in hand until they succeed.
struct Unfinished {
    claim: Claim,
    destination: Destination,
    /// The feed id for the archive name (`None` for a feed that could not be processed).
    feed_id: Option<u64>,
    /// The schedule to park it under, until parking succeeds: made when the feed was
    /// processed, so its window counts from that processing, however long parking takes.
    schedule: Option<Schedule>,
    /// The `ORDER_NOT_FOUND`s its parking is for (for the log).
    orders_not_found: Option<u64>,
    backoff: Backoff,
    /// When the next try is due.
    due: Instant,
}

/// Which of a finished feed's last steps failed ([`Worker::park_and_move`]).
enum LastStep {
    Park(ParkError),
    Move(std::io::Error),
}

/// A claimed feed from its claim to its move out of `work/`, across the attempts at it.
struct InHand {
    claim: Claim,
    origin: Origin,
    /// When it was claimed (or found in `work/`): its processing time counts from here.
    started: Instant,
    /// When the last attempt began (whole seconds): when the window of its `ORDER_NOT_FOUND`
    /// retries begins if it is parked (see `Worker::process_once`). A report retry keeps the
    /// time of the attempt that committed.
    attempt_at: DateTime<Utc>,
    /// The attempts whose report the outbox could not take, and the wait before the next.
    report_backoff: Backoff,
    /// When the next attempt at its report is due (while it is in `awaiting_report`).
    due: Instant,
}

/// Where a claim came from, which tells a recovery from a retry within this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Claimed from the inbox by this run.
    Inbox,
    /// Found in `work/` at start, left there by an earlier run.
    Work,
}

/// Capped exponential backoff for a transient failure: 1 s, doubling, at most `[daemon]
/// max_backoff_secs`. Each feed whose report cannot be written has its own, so one blocked
/// outbox folder delays no other feed.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    /// The wait after the next failure.
    next: Duration,
    /// Failed attempts so far.
    failures: u32,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: Duration::from_secs(1),
            failures: 0,
        }
    }

    /// Counts a failed attempt; returns how long to wait before the next one.
    fn failed(&mut self, max: Duration) -> Duration {
        let wait = self.next;
        self.failures += 1;
        self.next = (self.next * 2).min(max);
        wait
    }
}

/// The parked feeds of a daemon with parking on.
struct ParkingLot {
    parked: ParkedFeeds,
    retry: RetryWindow,
    /// When the folder was last read (it is read again every rescan interval, so feeds
    /// parked or unparked by another instance sharing it, or by hand, are seen).
    read_at: Instant,
    /// Parked feeds whose retry committed but whose report the outbox could not take, by
    /// parked feed id, with the backoff of their report. They stay parked under the same
    /// claim token, due again after the backoff, so the next attempt only writes the stored
    /// report (`Worker::defer_retry_report`).
    awaiting_report: HashMap<u64, Backoff>,
}

impl ParkingLot {
    /// Counts a retry of a parked feed that leaves it parked under the same claim token
    /// (it changed nothing, or failed) and schedules the next one after the back-off:
    /// returns the schedule it had, the attempts made now, the next attempt's time and
    /// whether the new schedule was written.
    fn count_attempt(
        &mut self,
        attempt: Attempt,
    ) -> (Schedule, u32, DateTime<Utc>, Result<(), ParkError>) {
        let schedule = attempt.schedule.clone();
        let attempts = schedule.attempts + 1;
        let next_attempt_at = self.retry.next_attempt(
            schedule.window_end(&self.retry),
            attempts,
            chrono::Utc::now(),
        );
        let next = Schedule {
            attempts,
            next_attempt_at,
            ..schedule.clone()
        };
        let rescheduled = self.parked.reschedule(attempt, next);
        (schedule, attempts, next_attempt_at, rescheduled)
    }
}

impl Worker {
    fn new(
        config: DaemonConfig,
        context: Context,
        metrics: Arc<Metrics>,
        wake_sender: SyncSender<Wake>,
        wakes: Receiver<Wake>,
        shutdown: CancellationToken,
        feed_in_hand: FeedInHand,
    ) -> Worker {
        let tracker = Tracker::new(ready_rules(&config));
        Worker {
            config,
            context,
            metrics,
            wake_sender,
            wakes,
            shutdown,
            feed_in_hand,
            tracker,
            tokens: ClaimTokens::new(),
            queued: VecDeque::new(),
            ended_early: HashMap::new(),
            inbox_missing: false,
            parking: None,
            temps_swept_at: None,
            work_checked_at: Instant::now(),
            awaiting_report: Vec::new(),
            unfinished: Vec::new(),
            gate_short: false,
        }
    }

    fn run(mut self) -> anyhow::Result<()> {
        let result = self.work();
        if !self.awaiting_report.is_empty() {
            tracing::info!(
                files = self.awaiting_report.len(),
                "feeds waiting for their reports stay in work/; the next start writes them"
            );
        }
        if !self.unfinished.is_empty() {
            tracing::info!(
                files = self.unfinished.len(),
                "feeds that could not be parked or moved out of work/ yet stay there; the next start writes their reports again and finishes them"
            );
        }
        result
    }

    fn work(&mut self) -> anyhow::Result<()> {
        // Busy until the first wait for the inbox: scrapes list the inbox meanwhile.
        self.metrics.worker_busy(true);
        self.sweep_temp_reports();
        // Before the recovery of work/, which may park a recovered feed.
        self.open_parking()?;
        // A leftover that cannot be opened was claimed already: it gets its FEED_UNREADABLE
        // report now, without the grace an inbox file gets (`process_once`).
        let leftovers = inbox::leftovers(&self.config.inbox, &self.tokens).with_context(|| {
            format!(
                "recovering feeds left in {}",
                self.config.inbox.work.display()
            )
        })?;
        if !leftovers.is_empty() {
            tracing::info!(files = leftovers.len(), "recovering feeds left in work/");
        }
        self.recover(leftovers);
        self.work_checked_at = Instant::now();
        if self.shutdown.is_cancelled() {
            return Ok(());
        }
        let mut watch = Watch::start(
            &self.config.inbox.inbox,
            self.config.inbox.watch,
            self.wake_sender.clone(),
            Arc::clone(&self.metrics),
        );
        let mut reason = ScanReason::Startup;
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(());
            }
            watch.refresh();
            if watch.take_overflow() && reason == ScanReason::Event {
                reason = ScanReason::Overflow;
            }
            self.sweep_temp_reports();
            let last_scan = Instant::now();
            let processed = self.scan_and_process(reason) + self.adopt_orphans();
            // One parked feed per round at most, so the inbox waits for one retry at most.
            let retried = self.retry_parked();
            let reported = self.retry_reports();
            let finished = self.retry_unfinished();
            if processed > 0 || retried || reported || finished {
                // After a batch the listing is stale: look again at once.
                reason = ScanReason::Followup;
                continue;
            }
            reason = self.wait(&watch, last_scan);
        }
    }

    /// Processes claims taken from `work/`, oldest first, as feeds found there
    /// ([`Origin::Work`]: one that committed re-emits its stored report); returns how many.
    fn recover(&mut self, claims: Vec<Claim>) -> usize {
        let mut syncs = Syncs::new();
        let mut processed = 0;
        for claim in claims {
            if self.shutdown.is_cancelled() {
                break;
            }
            self.process(claim, Origin::Work, &mut syncs);
            processed += 1;
        }
        self.sync(&mut syncs);
        processed
    }

    /// Every rescan interval: takes up the claims in `work/` that no live process holds,
    /// those of an instance sharing `work/` that died (SIGKILL, a lost host) with its batch
    /// in hand, whose locks died with it, so they do not wait for that instance to start
    /// again. At most [`CLAIM_BATCH`] at a time, so that peers share a large one; claims
    /// that cannot be opened (held without a lock) are left to a start, since a live
    /// instance's cannot be told from a dead one's. Returns how many it processed.
    fn adopt_orphans(&mut self) -> usize {
        if self.work_checked_at.elapsed() < self.config.inbox.rescan_interval
            || self.shutdown.is_cancelled()
        {
            return 0;
        }
        self.work_checked_at = Instant::now();
        let mut orphans = match inbox::leftovers(&self.config.inbox, &self.tokens) {
            Ok(claims) => claims,
            Err(error) => {
                tracing::warn!(folder = %escaped(self.config.inbox.work.display()), error = %error, "cannot read work/ to look for feeds no instance holds");
                return 0;
            }
        };
        orphans.retain(|claim| claim.unreadable().is_none());
        // Dropping a claim lets its lock go: the rest are for peers or the next look.
        orphans.truncate(CLAIM_BATCH);
        if orphans.is_empty() {
            return 0;
        }
        tracing::warn!(
            files = orphans.len(),
            "taking up feeds in work/ that no running instance holds (an instance sharing work/ stopped with them in hand, or this one could not give them back to the inbox)"
        );
        self.recover(orphans)
    }

    /// Removes the temp reports that interrupted writes left in the outbox
    /// ([`crate::report::remove_stale_temp_reports`]): at start, then every
    /// [`crate::report::STALE_TEMP_REPORT_AGE`], so one left by a crash just before a quick
    /// restart (too young to be taken for a leftover at start) goes too. One listing of the
    /// outbox and its merchant folders each time.
    fn sweep_temp_reports(&mut self) {
        let age = crate::report::STALE_TEMP_REPORT_AGE;
        if self.temps_swept_at.is_some_and(|at| at.elapsed() < age) {
            return;
        }
        self.temps_swept_at = Some(Instant::now());
        crate::report::remove_stale_temp_reports(&self.config.inbox.outbox, age);
    }

    /// Reads the parked folder when parking is on; says so when it is off and feeds are
    /// parked there (they are left alone).
    fn open_parking(&mut self) -> anyhow::Result<()> {
        let folder = &self.config.parked;
        let Some(retry) = self.config.order_not_found_retry() else {
            let parked = std::fs::read_dir(folder).map_or(0, |entries| {
                entries
                    .flatten()
                    .filter(|entry| {
                        entry
                            .file_name()
                            .to_string_lossy()
                            .ends_with(".schedule.json")
                    })
                    .count()
            });
            if parked > 0 {
                tracing::warn!(
                    folder = %escaped(folder.display()),
                    parked,
                    "feeds are parked but parking is off ([daemon] order_not_found_window_secs = 0): they are not retried"
                );
            }
            return Ok(());
        };
        let parked = ParkedFeeds::open(folder)
            .with_context(|| format!("reading the parked feeds in {}", folder.display()))?;
        if !parked.is_empty() {
            tracing::info!(
                folder = %escaped(folder.display()),
                parked = parked.len(),
                "feeds parked for ORDER_NOT_FOUND retries"
            );
        }
        // A window made shorter since applies only to what no report announced yet.
        for schedule in parked
            .schedules()
            .filter(|schedule| schedule.keeps_announced_end(&retry))
        {
            let time = |at: DateTime<Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            tracing::info!(
                file = %escaped(&schedule.file_name),
                parked_feed_id = schedule.feed_id,
                window_ends_at = %time(schedule.window_end(&retry)),
                configured_window_ends_at = %time(retry.ends(schedule.first_processed_at)),
                "the parked feed's reports announced retries until a later time than [daemon] order_not_found_window_secs now gives; the announced end is kept"
            );
        }
        self.metrics.parked_feeds(parked.len());
        self.parking = Some(ParkingLot {
            parked,
            retry,
            read_at: Instant::now(),
            awaiting_report: HashMap::new(),
        });
        Ok(())
    }

    /// Sleeps until an event, the end of a settle time or backoff, the periodic scan, or
    /// shutdown; says why it woke.
    fn wait(&mut self, watch: &Watch, last_scan: Instant) -> ScanReason {
        self.metrics.worker_busy(false);
        let reason = self.wait_idle(watch, last_scan);
        self.metrics.worker_busy(true);
        reason
    }

    fn wait_idle(&mut self, watch: &Watch, last_scan: Instant) -> ScanReason {
        let period = if watch.mode() == ActiveMode::Poll || self.inbox_missing {
            self.config.inbox.poll_interval
        } else {
            self.config.inbox.rescan_interval
        };
        let timer = last_scan + period;
        let deadline = self
            .tracker
            .next_deadline(Instant::now())
            .map_or(timer, |next| next.min(timer));
        let deadline = self
            .next_parked_retry()
            .map_or(deadline, |next| next.min(deadline));
        let deadline = self
            .awaiting_report
            .iter()
            .map(|feed| feed.due)
            .fold(deadline, Instant::min);
        let deadline = self
            .unfinished
            .iter()
            .map(|feed| feed.due)
            .fold(deadline, Instant::min);
        let reason = loop {
            let now = Instant::now();
            if self.shutdown.is_cancelled() {
                return ScanReason::Followup;
            }
            if deadline <= now {
                break if deadline == timer {
                    ScanReason::Timer
                } else {
                    ScanReason::Followup
                };
            }
            match self.wakes.recv_timeout(deadline - now) {
                Ok(Wake::Event) => break ScanReason::Event,
                Ok(Wake::Rescan) => break ScanReason::Overflow,
                Ok(Wake::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    return ScanReason::Followup;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        };
        if matches!(reason, ScanReason::Event | ScanReason::Overflow) {
            let earliest = last_scan + EVENT_COALESCE;
            let now = Instant::now();
            if earliest > now {
                std::thread::sleep(earliest - now);
            }
        }
        // Everything queued so far is covered by the listing that follows.
        let mut reason = reason;
        loop {
            match self.wakes.try_recv() {
                Ok(Wake::Rescan) => reason = ScanReason::Overflow,
                Ok(_) => {}
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        reason
    }

    /// Lists the inbox, then claims and processes every ready file; returns how many.
    fn scan_and_process(&mut self, reason: ScanReason) -> usize {
        self.metrics.scanned(reason);
        let listing = match inbox::list(&self.config.inbox) {
            Ok(listing) => {
                if self.inbox_missing {
                    tracing::info!(inbox = %self.config.inbox.inbox.display(), "inbox is back");
                    self.inbox_missing = false;
                }
                listing
            }
            Err(error) => {
                if !self.inbox_missing {
                    tracing::error!(inbox = %self.config.inbox.inbox.display(), error = %error, "cannot list the inbox, waiting for it");
                    self.inbox_missing = true;
                }
                Vec::new()
            }
        };
        let now = Instant::now();
        let observation = self.tracker.observe(&listing, now);
        for listed in &observation.not_followed {
            match listed.kind {
                EntryKind::Unreadable(kind) => tracing::warn!(
                    folder = %self.config.inbox.inbox_path(&listed.name).display(),
                    error = %std::io::Error::from(kind),
                    "cannot read the merchant folder; its feeds wait until it can be read"
                ),
                EntryKind::Folder if listed.name.merchant.is_none() => tracing::warn!(
                    folder = %escaped(listed.name.display_path()),
                    rule = MerchantId::RULE,
                    "a folder whose name is not a merchant id, so not a merchant folder: its files are not read; rename it to the merchant id"
                ),
                _ => tracing::warn!(
                    file = %escaped(listed.name.display_path()),
                    kind = listed.kind.as_str(),
                    "not a regular file, not followed; left in the inbox"
                ),
            }
        }
        for listed in &observation.stale {
            tracing::warn!(
                file = %escaped(listed.name.display_path()),
                unchanged_secs = self.config.inbox.truncated_grace.as_secs(),
                "temporary upload name unchanged for the truncation grace, maybe abandoned; left in the inbox"
            );
        }
        for name in &observation.marker_missing {
            let marker = self.tracker.marker_for(&name.name).unwrap_or_default();
            tracing::info!(
                file = %escaped(name.display_path()),
                marker = %escaped(marker.to_string_lossy()),
                unchanged_secs = self.config.inbox.truncated_grace.as_secs(),
                "feed unchanged for the truncation grace and still waiting for its done marker; left in the inbox"
            );
        }
        self.metrics.stale_partials(self.tracker.stale_partials());
        let tracker = &self.tracker;
        self.ended_early.retain(|name, _| tracker.is_waiting(name));
        self.update_waiting();
        let mut processed = 0;
        let mut ready = observation.ready.into_iter().peekable();
        while ready.peek().is_some() && !self.shutdown.is_cancelled() {
            // Claim a batch, make the claims durable with one fsync per folder, then
            // process them one by one.
            let mut syncs = Syncs::new();
            let mut batch = Vec::new();
            for ready_file in ready.by_ref() {
                if let Some(claim) = self.gate_and_claim(&ready_file, &mut syncs) {
                    let short = claim
                        .unreadable()
                        .is_some_and(|error| crate::resources::shortage(error).is_some());
                    batch.push(claim);
                    if short {
                        self.gate_short = true;
                    }
                    if batch.len() == CLAIM_BATCH {
                        break;
                    }
                }
                if self.gate_short {
                    break;
                }
            }
            if self.gate_short && !batch.is_empty() {
                // Out of descriptors while claiming: each claim holds one. The newest go
                // back to the inbox, so that the feeds kept can be read and reported.
                let keep = batch.len().saturating_sub(SHORTAGE_RESERVE).max(1);
                let given_back = batch.split_off(keep);
                let kept = self.release(given_back, &mut syncs);
                batch.extend(kept);
            }
            self.sync(&mut syncs);
            self.queued.extend(batch);
            while let Some(claim) = self.queued.pop_front() {
                if self.shutdown.is_cancelled() {
                    self.queued.push_front(claim);
                    let queued = std::mem::take(&mut self.queued);
                    // Whatever cannot be given back stays in work/ for the next start.
                    drop(self.release(queued, &mut syncs));
                    break;
                }
                self.process(claim, Origin::Inbox, &mut syncs);
                processed += 1;
            }
            self.sync(&mut syncs);
            self.update_waiting();
        }
        processed
    }

    /// When the feed in hand failed because the store is away or busy (or because each
    /// attempt conflicted with another instance, or the process ran short of open files or
    /// memory: `why`): gives the claims
    /// of its batch not started yet back to the inbox at once, so that other instances
    /// sharing the inbox take them (or this one, once the store answers) instead of having
    /// them wait in `work/` behind the retries. A claim whose name is taken again in the
    /// inbox goes back under a fallback name ([`Claim::release`]); one that cannot be given
    /// back (the rename failed) stays queued, in hand.
    fn give_back_queued(&mut self, why: HeldUp) {
        if self.queued.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.queued);
        let claims = queued.len();
        let mut syncs = Syncs::new();
        self.queued = self.release(queued, &mut syncs);
        self.sync(&mut syncs);
        let given_back = claims - self.queued.len();
        let kept = self.queued.len();
        match why {
            HeldUp::Conflicts => tracing::info!(
                given_back,
                kept,
                "feed in hand conflicts with another instance: claimed feeds not started yet given back to the inbox"
            ),
            HeldUp::Store => tracing::info!(
                given_back,
                kept,
                "store unavailable: claimed feeds not started yet given back to the inbox"
            ),
            HeldUp::Shortage => tracing::info!(
                given_back,
                kept,
                "out of open files or memory: claimed feeds not started yet given back to the inbox (which frees their descriptors)"
            ),
        }
    }

    /// Gives claims that were not started back to the inbox (at shutdown, or when the store
    /// is away); returns those it could not give back (still claimed, in `work/`).
    fn release(
        &self,
        claims: impl IntoIterator<Item = Claim>,
        syncs: &mut Syncs,
    ) -> VecDeque<Claim> {
        let mut kept = VecDeque::new();
        for claim in claims {
            let file_name = claim.file_name.clone();
            let work_path = claim.path.clone();
            // The claim (and its lock) goes with the rename; on failure it is kept.
            match claim.release(&self.config.inbox, syncs) {
                Ok(given_back) if !given_back.renamed => {
                    tracing::debug!(file = %escaped(&file_name), "claim given back to the inbox")
                }
                Ok(given_back) => tracing::info!(
                    file = %escaped(&file_name),
                    given_back_as = %escaped(given_back.name.display_path()),
                    "name taken again in the inbox (a new upload); the claim is given back under another name, which its report will have"
                ),
                Err((claim, error)) => {
                    tracing::warn!(file = %escaped(&file_name), work_path = %escaped(work_path.display()), error = %error, "cannot give the claim back; it stays in work/");
                    kept.push_back(claim);
                }
            }
        }
        kept
    }

    fn sync(&self, syncs: &mut Syncs) {
        if let Err(error) = syncs.sync() {
            tracing::error!(error = %error, "cannot sync a folder; a power loss could undo recent moves");
        }
    }

    /// Publishes the files waiting in the inbox as the tracker knows them after a listing.
    fn update_waiting(&self) {
        let tracker = &self.tracker;
        self.metrics.waiting_listed(|waiting| {
            waiting.retain(|name, _| tracker.is_waiting(name));
            for (name, first_seen) in tracker.waiting_files() {
                match waiting.get_mut(name) {
                    Some(seen) => *seen = (*seen).min(first_seen),
                    None => {
                        waiting.insert(name.clone(), first_seen);
                    }
                }
            }
        });
    }

    /// The last gates before a claim: unchanged since it settled, then the content gate. A
    /// file whose XML is not complete yet, or that cannot be opened yet (an upload whose
    /// permissions are set after it is written, or fixed by hand), waits with backoff until
    /// it has not changed for the grace time; then it is claimed anyway, to be reported as
    /// truncated or unreadable.
    fn gate_and_claim(&mut self, ready: &ReadyFile, syncs: &mut Syncs) -> Option<Claim> {
        let config = &self.config.inbox;
        let path = config.inbox_path(&ready.name);
        match std::fs::symlink_metadata(&path) {
            Ok(metadata)
                if metadata.is_file() && inbox::signature(&metadata) == ready.signature => {}
            // Changed or gone since the listing: the next listing decides.
            _ => return None,
        }
        let content = if self.ended_early.get(&ready.name) == Some(&ready.signature) {
            // Given back unchanged after its document ended early: see `ended_early`.
            Ok(Content::Incomplete)
        } else {
            self.ended_early.remove(&ready.name);
            inbox::check_content(&path, &self.context.limits)
        };
        let mut waited_out_grace = false;
        // Not the file's fault: it waits in the inbox, with no grace counted and no
        // FEED_UNREADABLE to come, until the process can open files again.
        if let Err(error) = &content
            && let Some(shortage) = crate::resources::shortage(error)
        {
            let file = escaped(ready.name.display_path());
            if !self.gate_short {
                self.gate_short = true;
                tracing::warn!(file = %file, error = %error, "cannot open inbox files: {}; they wait in the inbox and are not rejected for it", shortage.describe());
            } else {
                tracing::debug!(file = %file, error = %error, "cannot open the feed for want of resources, waiting");
            }
            self.metrics.resources_short(&format!(
                "cannot open inbox files: {}: {error}",
                shortage.describe()
            ));
            return None;
        }
        if content.is_ok() {
            self.gate_short = false;
        }
        let held_back = match content {
            Ok(Content::Complete | Content::Broken) => None,
            Ok(Content::Incomplete) => Some(HeldBack::Incomplete),
            // Gone since the listing: the next listing decides.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => Some(HeldBack::Unreadable(error)),
        };
        if let Some(held_back) = held_back {
            let decision = self.tracker.content_pending(&ready.name, Instant::now());
            waited_out_grace = decision == ContentDecision::GiveUp;
            let file = escaped(ready.name.display_path());
            let merchant = ready.name.merchant.as_deref().unwrap_or("");
            let grace_secs = config.truncated_grace.as_secs();
            match (decision, held_back) {
                (ContentDecision::WaitUntil { .. }, HeldBack::Incomplete) => {
                    tracing::debug!(file = %file, "xml not complete yet, waiting for the rest of the upload");
                    return None;
                }
                (ContentDecision::WaitUntil { first: true, .. }, HeldBack::Unreadable(error)) => {
                    tracing::warn!(
                        file = %file,
                        merchant,
                        error = %error,
                        grace_secs,
                        "cannot open the feed; it waits and is reported as unreadable after the grace time unless it becomes readable"
                    );
                    return None;
                }
                (ContentDecision::WaitUntil { first: false, .. }, HeldBack::Unreadable(error)) => {
                    tracing::debug!(file = %file, error = %error, "feed still cannot be opened, waiting");
                    return None;
                }
                (ContentDecision::GiveUp, HeldBack::Incomplete) => tracing::warn!(
                    file = %file,
                    grace_secs,
                    "xml still incomplete after the grace time, processing it as truncated"
                ),
                // The claim finds it unreadable too (unless it just became readable) and the
                // feed's report and summary line say so.
                (ContentDecision::GiveUp, HeldBack::Unreadable(error)) => tracing::debug!(
                    file = %file,
                    error = %error,
                    "feed still cannot be opened after the grace time, claiming it to report it"
                ),
            }
        }
        let claimed = inbox::claim(config, ready, &self.tokens, syncs);
        self.tracker.forget(&ready.name);
        self.ended_early.remove(&ready.name);
        self.metrics.not_waiting(&ready.name);
        match claimed {
            // The claim removed the done marker, if any.
            Ok(ClaimResult::Claimed(mut claim)) => {
                claim.waited_out_grace = waited_out_grace;
                Some(claim)
            }
            Ok(ClaimResult::Gone) => {
                tracing::debug!(file = %escaped(ready.name.display_path()), "taken by someone else before our claim");
                None
            }
            Err(error) => {
                tracing::error!(file = %escaped(ready.name.display_path()), error = %error, "cannot claim the file");
                None
            }
        }
    }

    /// Processes one claimed feed to its end: archive/failed move, summary line, metrics.
    /// A store that is away is retried here (the file stays in `work/`, and every other feed
    /// waits too, as it would fail alike); shutdown during that wait leaves the file there
    /// for the next start. A committed feed whose report the outbox cannot take waits in
    /// `work/` for [`Worker::retry_reports`] instead, so other feeds go on.
    fn process(&mut self, claim: Claim, origin: Origin, syncs: &mut Syncs) {
        tracing::debug!(file = %escaped(&claim.file_name), claim = %claim.token, "processing feed");
        let now = Instant::now();
        let feed = InHand {
            claim,
            origin,
            started: now,
            attempt_at: Utc::now().trunc_subsecs(0),
            report_backoff: Backoff::new(),
            due: now,
        };
        self.attempt(feed, syncs);
    }

    /// Tries the report of every feed in `awaiting_report` that is due; true when one was
    /// tried, so the caller looks at the inbox again before it waits.
    fn retry_reports(&mut self) -> bool {
        if self.shutdown.is_cancelled() {
            return false;
        }
        let due = take_due(&mut self.awaiting_report, |feed| feed.due);
        if due.is_empty() {
            return false;
        }
        let mut syncs = Syncs::new();
        for feed in due {
            if self.shutdown.is_cancelled() {
                self.awaiting_report.push(feed);
                continue;
            }
            tracing::debug!(file = %escaped(&feed.claim.file_name), claim = %feed.claim.token, failures = feed.report_backoff.failures, "retrying the report of a committed feed");
            self.attempt(feed, &mut syncs);
        }
        self.sync(&mut syncs);
        self.update_reports_pending();
        true
    }

    /// Runs the pipeline on a feed in hand (a store that is away is retried in place), then
    /// finishes it, or puts it in `awaiting_report` when its report could not be written.
    fn attempt(&mut self, mut feed: InHand, syncs: &mut Syncs) {
        let _held = self.feed_in_hand.hold();
        let first = feed.report_backoff.failures == 0;
        let file_name = feed.claim.file_name.clone();
        let result = self.with_transient_retries(&file_name, |worker| {
            // A first attempt repeated after a store error is a new attempt, whose report
            // names a window counted from its own start; a report retry writes the report
            // of the attempt that committed, whose time is kept.
            if first {
                feed.attempt_at = Utc::now().trunc_subsecs(0);
            }
            worker.process_once(&mut feed.claim, feed.attempt_at)
        });
        // Set per feed only, like `pin_order_not_found` for a retry.
        self.context.rules.order_not_found_retry_until = None;
        match result {
            Some(Ok(processed)) => self.finish_processed(feed, processed, syncs),
            Some(Err(Failure::Process(ProcessError::Unsettled { why, .. }))) => {
                self.give_back_unsettled(feed, why, syncs);
            }
            Some(Err(failure)) if failure.retry() == Retry::Later => {
                let wait = feed.report_backoff.failed(self.config.max_backoff);
                self.log_transient(
                    &feed.claim.file_name,
                    feed.report_backoff.failures,
                    wait,
                    &failure.into_error(),
                );
                feed.due = Instant::now() + wait;
                self.awaiting_report.push(feed);
                self.update_reports_pending();
            }
            Some(Err(failure)) => self.finish_failed(feed, &failure.into_error(), syncs),
            None => {
                tracing::info!(file = %escaped(&feed.claim.file_name), "shutdown while waiting to retry; the feed stays in work/");
            }
        }
    }

    /// After an attempt that committed nothing because the file is still being written (it
    /// changed after its claim, or ends early although the content gate found it complete:
    /// an in-place writer that still holds the file, ingest R3): gives the claim back to the
    /// inbox, where it waits like any upload in progress (settle time, content gate, and
    /// the truncation grace before it is reported as truncated). One that cannot be given
    /// back stays in `work/`, let go, and is taken up again by `adopt_orphans`; one that was
    /// removed from `work/` meanwhile is only logged (nothing was committed).
    fn give_back_unsettled(&mut self, feed: InHand, why: Unsettled, syncs: &mut Syncs) {
        let InHand { claim, .. } = feed;
        let file_name = claim.file_name.clone();
        let work_path = claim.path.clone();
        match claim.release(&self.config.inbox, syncs) {
            Ok(given_back) => {
                if why == Unsettled::EndsEarly
                    && let Ok(metadata) =
                        std::fs::symlink_metadata(self.config.inbox.inbox_path(&given_back.name))
                {
                    self.ended_early
                        .insert(given_back.name.clone(), inbox::signature(&metadata));
                }
                tracing::info!(
                    file = %escaped(&file_name),
                    why = %why,
                    given_back_as = given_back
                        .renamed
                        .then(|| escaped(given_back.name.display_path()).to_string()),
                    "the feed is still being written: nothing was committed; given back to the inbox to wait for the rest of the upload"
                );
            }
            // Gone: removed from work/ by someone while it was read (which is also why it
            // looked changed). There is nothing left to give back or to report.
            Err((claim, error))
                if error.kind() == std::io::ErrorKind::NotFound
                    && std::fs::symlink_metadata(&work_path)
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
            {
                tracing::error!(
                    file = %escaped(&file_name),
                    work_path = %escaped(work_path.display()),
                    "the claimed file disappeared from work/ while it was read (removed by someone else): nothing of it was committed and no report will be written; to apply it, drop it in the inbox again"
                );
                drop(claim);
            }
            Err((claim, error)) => {
                tracing::error!(
                    file = %escaped(&file_name),
                    why = %why,
                    work_path = %escaped(work_path.display()),
                    error = %error,
                    "the feed is still being written and cannot be given back to the inbox; nothing was committed; it stays in work/ and is taken up from there again within the rescan interval"
                );
                drop(claim);
            }
        }
    }

    /// Runs `attempt` until it succeeds, fails for good or fails for this feed only
    /// ([`Retry::Later`], returned for the caller to retry later), retrying what holds up
    /// every feed alike (the store away or busy) in place with capped exponential backoff;
    /// `None` on shutdown while waiting to retry. Meanwhile the batch's other claims are
    /// given back to the inbox and `/healthz` fails, until an attempt gets past the store.
    /// The feed itself stays in hand under its claim: its commit may have happened.
    fn with_transient_retries<T>(
        &mut self,
        file_name: &str,
        mut attempt: impl FnMut(&mut Worker) -> Result<T, Failure>,
    ) -> Option<Result<T, Failure>> {
        let mut backoff = Backoff::new();
        loop {
            match attempt(self) {
                Err(failure) if failure.retry() == Retry::InPlace => {
                    let why = failure.held_up_by();
                    let error = failure.into_error();
                    match why {
                        // The store answered: another instance wrote the same orders each
                        // time. Not an outage, and an earlier one is over; a long lock wait
                        // among the attempts stays on /healthz (`show_long_lock_waits`).
                        HeldUp::Conflicts => self.metrics.store_answered(),
                        HeldUp::Store => self.metrics.store_unavailable(&format!("{error:#}")),
                        // The claims given back free their descriptors too.
                        HeldUp::Shortage => self.metrics.resources_short(&format!("{error:#}")),
                    }
                    self.give_back_queued(why);
                    let wait = backoff.failed(self.config.max_backoff);
                    self.log_transient(file_name, backoff.failures, wait, &error);
                    if !self.sleep_unless_shutdown(wait) {
                        return None;
                    }
                }
                other => {
                    self.metrics.store_available();
                    self.metrics.resources_available();
                    return Some(other);
                }
            }
        }
    }

    /// Counts and logs a transient failure, the `failures`-th in a row of this feed, retried
    /// after `wait`: a warning for the first three, then an error.
    fn log_transient(&self, file_name: &str, failures: u32, wait: Duration, error: &anyhow::Error) {
        self.metrics.retried();
        let file = escaped(file_name);
        let error = escaped(format!("{error:#}"));
        let retry_in_secs = wait.as_secs_f64();
        if failures <= 3 {
            tracing::warn!(file = %file, attempt = failures, retry_in_secs, error = %error, "transient failure, will retry");
        } else {
            tracing::error!(file = %file, attempt = failures, retry_in_secs, error = %error, "transient failure persists, will retry");
        }
    }

    /// Publishes how many committed feeds wait for their report.
    fn update_reports_pending(&self) {
        let parked = self
            .parking
            .as_ref()
            .map_or(0, |parking| parking.awaiting_report.len());
        self.metrics
            .reports_pending(self.awaiting_report.len() + parked);
    }

    /// One attempt at a claimed feed that began at `attempt_at` (whole seconds), which is
    /// when the window of its `ORDER_NOT_FOUND` retries begins if it is parked.
    fn process_once(
        &mut self,
        claim: &mut Claim,
        attempt_at: DateTime<Utc>,
    ) -> Result<Processed, Failure> {
        // A claim that could not be opened for want of descriptors or memory tries again.
        claim.reopen();
        // The report of a feed that will be parked says until when it is retried. Whether it
        // is parked is decided after the commit (`park`), but from what is known now: the
        // engine words only a deferred `ORDER_NOT_FOUND` with this, and a feed with one is
        // exactly what `park` parks when parking is on (a feed-level rejection, the other
        // case `park` skips, rolls its messages back and reports none of them). If parking
        // fails, the feed stays in hand in work/ and parking is retried with the schedule
        // made now (`retry_unfinished`). The schedule's window
        // counts from `attempt_at`, so it ends at the very second the report names.
        self.context.rules.order_not_found_retry_until = self
            .parking
            .as_ref()
            .map(|parking| parking.retry.ends(attempt_at));
        let mut source = Source::new(
            &claim.path,
            &claim.file_name,
            Some(&claim.token),
            claim.merchant.as_ref(),
            self.config.inbox.allowed_merchants.as_deref(),
        );
        // A claim that did not wait out the grace may be an upload still going on.
        source.may_still_be_uploading = !claim.waited_out_grace;
        let context = &mut self.context;
        // A claim that cannot be opened or read is a rejected feed with its own report,
        // recorded and retried (transient failures) like any other, then moved to failed/.
        run_pipeline(|| pipeline::process_claimed(context, &source, claim.unreadable()))
    }

    fn finish_processed(&mut self, feed: InHand, processed: Processed, syncs: &mut Syncs) {
        let InHand {
            claim,
            origin,
            started,
            attempt_at,
            report_backoff,
            ..
        } = feed;
        let mut processed = processed;
        // The pipeline says whether it only re-emitted a committed report. That is a
        // recovery (outcome "recovered") only for a feed found in work/ at start whose first
        // report went out: any other re-emission is the report of a commit made by this run,
        // after its report could not be written (or an ambiguous store error), and the feed
        // counts, logs and parks with its own outcome.
        processed.recovered &= origin == Origin::Work && report_backoff.failures == 0;
        let processed = &processed;
        let outcome = &processed.outcome;
        let destination = match outcome.status {
            FeedStatus::Complete => Destination::Archive,
            FeedStatus::Rejected => Destination::Failed,
        };
        let file_name = claim.file_name.clone();
        // Parked before the feed leaves work/: a crash in between recovers it from there
        // (its report is re-emitted) and parks it then.
        let schedule = self.schedule_for(&claim, processed, attempt_at);
        let orders_not_found = schedule.as_ref().and(processed.deferred);
        let unfinished = Unfinished {
            claim,
            destination,
            feed_id: Some(outcome.feed_id),
            schedule,
            orders_not_found,
            backoff: Backoff::new(),
            due: Instant::now(),
        };
        let moved = self.park_and_move(unfinished, syncs);
        let duration = started.elapsed();
        // Counted and summed up once, here, whether or not its last steps succeeded: a
        // retry of those only parks and moves it.
        let result = FeedResult::of(outcome, processed.recovered);
        self.metrics.feed_finished(result, Some(outcome), duration);
        let merchant = outcome.merchant.as_ref().map_or("", |m| m.as_str());
        let moved_to = match &moved {
            // A string field is written with Debug, so control characters are escaped.
            Ok(path) => path.display().to_string(),
            Err(_) => String::new(),
        };
        // Only on a feed whose report was retried: how many attempts the outbox refused.
        let report_retries = (report_backoff.failures > 0).then_some(report_backoff.failures);
        let first = FirstError::of(outcome);
        macro_rules! summary {
            ($level:ident, $message:literal) => {
                tracing::$level!(
                    file = %escaped(&file_name),
                    merchant,
                    feed_id = outcome.feed_id,
                    status = outcome.status.as_str(),
                    outcome = result.as_str(),
                    duplicate_of = outcome.duplicate_of,
                    messages = outcome.messages_processed,
                    successful = outcome.messages_successful,
                    errors = outcome.messages_with_error,
                    warnings = outcome.messages_with_warning,
                    error_code = first.code,
                    error_message_id = first.message_id,
                    error_element = first.element,
                    error_at = first.at.map(tracing::field::display),
                    error_description = first.description,
                    duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                    report = %escaped(processed.json_report.display()),
                    report_retries,
                    moved_to,
                    $message
                )
            };
        }
        match outcome.status {
            FeedStatus::Complete => summary!(info, "feed processed"),
            FeedStatus::Rejected => summary!(warn, "feed rejected"),
        }
        if let Err((feed, step)) = moved {
            self.unfinished_failed(feed, step);
        }
    }

    /// After a failed last step (parking or the move) of a feed done with: logs it, naming
    /// the folder and the error, and keeps the feed in hand (claimed and locked in `work/`)
    /// for another try after its backoff ([`Worker::retry_unfinished`]). Nothing is applied
    /// or reported again, and the feed is not counted again.
    fn unfinished_failed(&mut self, feed: Unfinished, step: LastStep) {
        let mut feed = feed;
        let wait = feed.backoff.failed(self.config.max_backoff);
        feed.due = Instant::now() + wait;
        let file = escaped(&feed.claim.file_name);
        let work_path = escaped(feed.claim.path.display());
        let attempt = feed.backoff.failures;
        let retry_in_secs = wait.as_secs_f64();
        match step {
            LastStep::Park(error) => {
                let folder = escaped(self.config.parked.display());
                let error = escaped(format!("{:#}", anyhow::Error::new(error)));
                // The first failure and every tenth are errors; the others in between, at
                // most one per backoff, are warnings.
                if attempt == 1 || attempt.is_multiple_of(10) {
                    tracing::error!(file = %file, feed_id = feed.feed_id, folder = %folder, work_path = %work_path, attempt, retry_in_secs, error = %error, "cannot park the feed for its ORDER_NOT_FOUND retries (the error names the file): its report is written and its retry window counts from its processing; it stays in work/, in hand, and parking is retried by this run with backoff: make the parked folder writable or free space");
                } else {
                    tracing::warn!(file = %file, feed_id = feed.feed_id, folder = %folder, attempt, retry_in_secs, error = %error, "still cannot park the feed; retried with backoff");
                }
            }
            LastStep::Move(error) => {
                let folder = match feed.destination {
                    Destination::Archive => &self.config.inbox.archive,
                    Destination::Failed => &self.config.inbox.failed,
                };
                let folder = escaped(folder.display());
                let error = escaped(error.to_string());
                if attempt == 1 || attempt.is_multiple_of(10) {
                    tracing::error!(file = %file, feed_id = feed.feed_id, folder = %folder, work_path = %work_path, attempt, retry_in_secs, error = %error, "cannot move the feed out of work/: nothing is applied or reported again; it stays in work/, in hand, and the move is retried by this run with backoff: free space or make the folder writable");
                } else {
                    tracing::warn!(file = %file, feed_id = feed.feed_id, folder = %folder, attempt, retry_in_secs, error = %error, "still cannot move the feed out of work/; retried with backoff");
                }
            }
        }
        self.unfinished.push(feed);
    }

    /// Tries again the last steps of every feed in `unfinished` that is due; true when one
    /// was tried, so the caller looks at the inbox again before it waits.
    fn retry_unfinished(&mut self) -> bool {
        if self.shutdown.is_cancelled() {
            return false;
        }
        let due = take_due(&mut self.unfinished, |feed| feed.due);
        if due.is_empty() {
            return false;
        }
        let mut syncs = Syncs::new();
        for feed in due {
            let retries = feed.backoff.failures;
            let file_name = feed.claim.file_name.clone();
            let feed_id = feed.feed_id;
            match self.park_and_move(feed, &mut syncs) {
                Ok(path) => tracing::info!(
                    file = %escaped(&file_name),
                    feed_id,
                    retries,
                    moved_to = %escaped(path.display()),
                    "feed moved out of work/ after its earlier attempts failed"
                ),
                Err((feed, step)) => self.unfinished_failed(feed, step),
            }
        }
        self.sync(&mut syncs);
        true
    }

    /// The last steps of a feed done with: parks it while it has a schedule that is not
    /// written yet (which is then dropped from it), then moves it to its destination. On
    /// success the claim is gone (with its lock) and the path the file now has is returned;
    /// on failure the feed is handed back, its claim still in hand.
    fn park_and_move(
        &mut self,
        feed: Unfinished,
        syncs: &mut Syncs,
    ) -> Result<PathBuf, (Unfinished, LastStep)> {
        let mut feed = feed;
        if let Some(schedule) = feed.schedule.take() {
            match self.park(&feed.claim, &schedule, feed.orders_not_found) {
                Ok(()) => {}
                // Trying again would not help: the bytes processed are no longer there.
                Err(error @ ParkError::Changed { .. }) => {
                    tracing::error!(file = %escaped(&feed.claim.file_name), feed_id = feed.feed_id, error = %escaped(format!("{:#}", anyhow::Error::new(error))), "the file in work/ was written to after it was processed, so it cannot be parked: its ORDER_NOT_FOUND messages are not retried and must be sent again; the file is moved out of work/ as it is now");
                }
                Err(error) => {
                    feed.schedule = Some(schedule);
                    return Err((feed, LastStep::Park(error)));
                }
            }
        }
        let Unfinished {
            claim,
            destination,
            feed_id,
            schedule,
            orders_not_found,
            backoff,
            due,
        } = feed;
        claim
            .finish(&self.config.inbox, destination, feed_id, syncs)
            .map_err(|(claim, error)| {
                let feed = Unfinished {
                    claim,
                    destination,
                    feed_id,
                    schedule,
                    orders_not_found,
                    backoff,
                    due,
                };
                (feed, LastStep::Move(error))
            })
    }

    /// The schedule a processed feed that has a deferred `ORDER_NOT_FOUND` is parked under
    /// (when parking is on); `None` when it is not to be parked. Its window counts from
    /// `attempt_at`, when the attempt that processed it began (see `process_once`), and stays
    /// so however long parking takes ([`Worker::retry_unfinished`]).
    fn schedule_for(
        &self,
        claim: &Claim,
        processed: &Processed,
        attempt_at: DateTime<Utc>,
    ) -> Option<Schedule> {
        let parking = self.parking.as_ref()?;
        let outcome = &processed.outcome;
        if !still_deferred(processed) || outcome.status != FeedStatus::Complete {
            return None;
        }
        let now = chrono::Utc::now();
        // The end of the window is then the time its report names: a recovered feed's
        // stored report is worded again for this attempt too
        // (`engine::reword_deferred_order_not_found`), so its window counts from here, and
        // the time a crash or an outage kept the daemon away is not taken from it.
        // The end its report announced is recorded: a shorter window set later never ends
        // the feed's retries before it (`Schedule::window_end`).
        let first_processed_at = attempt_at;
        let window_ends_at = parking.retry.ends(first_processed_at);
        let schedule = Schedule {
            version: park::SCHEDULE_VERSION,
            feed_id: outcome.feed_id,
            file_name: claim.file_name.clone(),
            merchant_folder: claim.merchant.as_ref().map(|m| m.as_str().to_owned()),
            content_hash: outcome.content_hash.clone(),
            first_processed_at,
            window_ends_at: Some(window_ends_at),
            attempts: 0,
            last_feed_id: None,
            next_attempt_at: parking.retry.next_attempt(window_ends_at, 0, now),
            next_claim_token: self.tokens.next(),
        };
        Some(schedule)
    }

    /// Parks a processed feed under `schedule` ([`Worker::schedule_for`]): a copy of its
    /// bytes and the schedule go to the parked folder. A first retry that fell due while
    /// parking failed is due now.
    fn park(
        &mut self,
        claim: &Claim,
        schedule: &Schedule,
        orders_not_found: Option<u64>,
    ) -> Result<(), ParkError> {
        let Some(parking) = self.parking.as_mut() else {
            return Ok(());
        };
        let window_ends_at = schedule
            .window_ends_at
            .unwrap_or_else(|| parking.retry.ends(schedule.first_processed_at));
        let parking_result = parking.parked.park(&claim.path, schedule.clone())?;
        self.metrics.parked_feeds(parking.parked.len());
        match parking_result {
            Parking::Parked(schedule) => tracing::info!(
                file = %escaped(&claim.file_name),
                feed_id = schedule.feed_id,
                orders_not_found,
                next_attempt_at = %schedule.next_attempt_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                window_ends_at = %window_ends_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "feed parked for ORDER_NOT_FOUND retries"
            ),
            Parking::AlreadyParked(schedule) => tracing::info!(
                file = %escaped(&claim.file_name),
                feed_id = schedule.feed_id,
                attempts = schedule.attempts,
                window_ends_at = %schedule.window_end(&parking.retry).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "feed was parked already; its schedule is kept"
            ),
        }
        Ok(())
    }

    /// When the next parked feed is due, as an `Instant`.
    fn next_parked_retry(&self) -> Option<Instant> {
        let (_, due) = self.parking.as_ref()?.parked.next_due()?;
        let wait = (due - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        Some(Instant::now() + wait)
    }

    /// Runs the retry of the parked feed due first, if one is due; true when one was taken
    /// up (even if another instance had it, or it failed), so the caller looks at the
    /// inbox and then comes back for the next.
    fn retry_parked(&mut self) -> bool {
        if self.shutdown.is_cancelled() {
            return false;
        }
        let rescan_interval = self.config.inbox.rescan_interval;
        let Some(parking) = self.parking.as_mut() else {
            return false;
        };
        if parking.read_at.elapsed() >= rescan_interval {
            if let Err(error) = parking.parked.reload() {
                tracing::error!(folder = %escaped(self.config.parked.display()), error = %error, "cannot read the parked folder; parked feeds wait until it can be read");
            }
            parking.read_at = Instant::now();
            let parked = &parking.parked;
            parking.awaiting_report.retain(|id, _| parked.contains(*id));
            self.metrics.parked_feeds(parking.parked.len());
        }
        let now = chrono::Utc::now();
        let feed_id = match parking.parked.next_due() {
            Some((feed_id, due)) if due <= now => feed_id,
            _ => return false,
        };
        let retry = parking.retry;
        let attempt = match parking.parked.begin(feed_id, now, retry.first_retry) {
            Ok(Some(attempt)) => attempt,
            Ok(None) => {
                // Unparked meanwhile (by another instance sharing the folder, or by hand):
                // its report is no longer ours to wait for.
                if !parking.parked.contains(feed_id) {
                    parking.awaiting_report.remove(&feed_id);
                }
                self.metrics.parked_feeds(parking.parked.len());
                self.update_reports_pending();
                return true;
            }
            Err(error) => {
                tracing::error!(parked_feed_id = feed_id, folder = %escaped(self.config.parked.display()), error = %error, "cannot retry a parked feed; tried again later");
                return true;
            }
        };
        let _held = self.feed_in_hand.hold();
        let schedule = attempt.schedule.clone();
        // Never before the end the feed's reports announced, whatever the window is now.
        let window_end = schedule.window_end(&retry);
        let last = schedule.is_last_attempt(&retry, now);
        let merchant = schedule.merchant();
        let started = Instant::now();
        tracing::debug!(file = %escaped(&schedule.file_name), parked_feed_id = feed_id, attempt = schedule.attempts + 1, last, "retrying parked feed");
        // The last retry pins what is still not found (refund-rules c3.4). Any other leaves
        // the feed parked when something is still deferred (`finish_retry`), which its
        // report then says, with the window's end (see `process_once`); and it commits only
        // if something changes (`pipeline::process_retry`), so a retry that finds nothing
        // new leaves no feed record and no report (`finish_unchanged_retry`). The last one
        // always commits and reports: pinning is a change.
        self.context.rules.pin_order_not_found = last;
        self.context.rules.order_not_found_retry_until = (!last).then_some(window_end);
        let result = self.with_transient_retries(&schedule.file_name, |worker| {
            let source = Source::new(
                &attempt.feed_path,
                &schedule.file_name,
                Some(&schedule.next_claim_token),
                merchant.as_ref(),
                worker.config.inbox.allowed_merchants.as_deref(),
            );
            if last {
                run_pipeline(|| pipeline::process_file(&mut worker.context, &source))
                    .map(Retried::Processed)
            } else {
                run_pipeline(|| pipeline::process_retry(&mut worker.context, &source))
            }
        });
        self.context.rules.pin_order_not_found = false;
        self.context.rules.order_not_found_retry_until = None;
        let report_backoff = self
            .parking
            .as_mut()
            .and_then(|parking| parking.awaiting_report.remove(&feed_id));
        match result {
            Some(Ok(Retried::Processed(processed))) => {
                let announced = (!last).then_some(window_end);
                self.finish_retry(attempt, &processed, announced, started, report_backoff);
            }
            Some(Ok(Retried::Unchanged(unchanged))) => {
                self.finish_unchanged_retry(attempt, &unchanged, started);
            }
            Some(Err(failure)) if failure.retry() == Retry::Later => {
                self.defer_retry_report(
                    attempt,
                    report_backoff.unwrap_or_else(Backoff::new),
                    &failure.into_error(),
                );
            }
            Some(Err(failure)) => self.fail_retry(attempt, &failure.into_error(), started),
            None => {
                tracing::info!(file = %escaped(&schedule.file_name), parked_feed_id = feed_id, "shutdown while waiting to retry; the parked feed is retried at the next start")
            }
        }
        self.update_reports_pending();
        true
    }

    /// After a retry that committed but whose report the outbox could not take: the feed
    /// stays parked under the same claim token and schedule (the attempt does not count),
    /// due again after its report's own backoff, so the next attempt writes the stored
    /// report and other feeds go on meanwhile.
    fn defer_retry_report(&mut self, attempt: Attempt, backoff: Backoff, error: &anyhow::Error) {
        let mut backoff = backoff;
        let wait = backoff.failed(self.config.max_backoff);
        self.log_transient(&attempt.schedule.file_name, backoff.failures, wait, error);
        let Some(parking) = self.parking.as_mut() else {
            return;
        };
        let schedule = attempt.schedule.clone();
        let feed_id = schedule.feed_id;
        let next = Schedule {
            next_attempt_at: chrono::Utc::now()
                + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX),
            ..schedule
        };
        if let Err(error) = parking.parked.reschedule(attempt, next) {
            tracing::error!(parked_feed_id = feed_id, error = %escaped(format!("{:#}", anyhow::Error::new(error))), "cannot write a parked feed's schedule; the retry is repeated");
        }
        parking.awaiting_report.insert(feed_id, backoff);
    }

    /// After a retry that produced a report: unparks the feed when nothing is deferred any
    /// more or this was the last retry, else schedules the next one. One summary line.
    /// `announced` is the end of the window the report names, `None` for the last retry
    /// (which names none): it is recorded in the schedule of a feed that stays parked.
    /// `report_backoff` is there when this attempt only wrote the report of a retry this run
    /// committed earlier, which the outbox had refused.
    fn finish_retry(
        &mut self,
        attempt: Attempt,
        processed: &Processed,
        announced: Option<DateTime<Utc>>,
        started: Instant,
        report_backoff: Option<Backoff>,
    ) {
        let last = announced.is_none();
        let Some(parking) = self.parking.as_mut() else {
            return;
        };
        let outcome = &processed.outcome;
        let duration = started.elapsed();
        // The report of a retry committed by this run counts as that retry ("retried", not
        // "recovered"). Whether it was the last one is left as for a recovered retry below,
        // which at worst runs one more retry: the attempt whose report was refused may have
        // been the re-emission of one committed before a crash.
        let recovered_at_start = processed.recovered && report_backoff.is_none();
        self.metrics.feed_finished(
            FeedResult::of_retry(outcome, recovered_at_start),
            Some(outcome),
            duration,
        );
        let report_retries = report_backoff.map(|backoff| backoff.failures);
        let schedule = attempt.schedule.clone();
        let now = chrono::Utc::now();
        let deferred = still_deferred(processed);
        // A recovered retry (committed before a crash, report re-emitted) may have run
        // before the window ended, so it does not count as the last one.
        let done = !deferred || (last && !processed.recovered);
        let (result, next_attempt_at) = if done {
            // The last retry pins what it still lists; any other ends with nothing deferred.
            let result = if last && pipeline::lists_order_not_found(outcome) {
                "pinned"
            } else {
                "unparked"
            };
            if let Err(error) = parking.parked.unpark(attempt) {
                tracing::error!(parked_feed_id = schedule.feed_id, folder = %escaped(self.config.parked.display()), error = %error, "cannot remove a parked feed's files; it may be retried once more");
            }
            (result, String::new())
        } else {
            let attempts = schedule.attempts + 1;
            // The end this report names (a recovered retry's stored report is worded again
            // with it too); a last retry that stays parked named none, so the end recorded
            // before stays.
            let window_ends_at = announced.or(schedule.window_ends_at);
            let next_attempt_at = if processed.recovered && last {
                now
            } else {
                // The end named is the feed's window end already (`retry_parked`).
                let window_end = announced.unwrap_or_else(|| schedule.window_end(&parking.retry));
                parking.retry.next_attempt(window_end, attempts, now)
            };
            let next = Schedule {
                window_ends_at,
                attempts,
                last_feed_id: Some(outcome.feed_id),
                next_attempt_at,
                next_claim_token: self.tokens.next(),
                ..schedule.clone()
            };
            if let Err(error) = parking.parked.reschedule(attempt, next) {
                tracing::error!(parked_feed_id = schedule.feed_id, error = %escaped(format!("{:#}", anyhow::Error::new(error))), "cannot write a parked feed's schedule; the retry is repeated");
            }
            (
                "parked",
                next_attempt_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
        };
        self.metrics.parked_feeds(parking.parked.len());
        let merchant = outcome.merchant.as_ref().map_or("", |m| m.as_str());
        let first = FirstError::of(outcome);
        tracing::info!(
            file = %escaped(&schedule.file_name),
            merchant,
            feed_id = outcome.feed_id,
            parked_feed_id = schedule.feed_id,
            attempt = schedule.attempts + 1,
            status = outcome.status.as_str(),
            orders_not_found = processed.deferred,
            messages = outcome.messages_processed,
            successful = outcome.messages_successful,
            errors = outcome.messages_with_error,
            warnings = outcome.messages_with_warning,
            error_code = first.code,
            error_message_id = first.message_id,
            error_element = first.element,
            error_at = first.at.map(tracing::field::display),
            error_description = first.description,
            duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            report = %escaped(processed.json_report.display()),
            report_retries,
            result,
            next_attempt_at,
            "parked feed retried"
        );
    }

    /// After a retry that would have changed nothing and was rolled back (no feed record, no
    /// report): the feed stays parked and is rescheduled as after a retry that reported, the
    /// attempt counted, under the same claim token (nothing was recorded under it, so a
    /// crash before the schedule is written only repeats this retry). One info line.
    fn finish_unchanged_retry(
        &mut self,
        attempt: Attempt,
        unchanged: &Unchanged,
        started: Instant,
    ) {
        let Some(parking) = self.parking.as_mut() else {
            return;
        };
        self.metrics.parked_retry_unchanged();
        let (schedule, attempts, next_attempt_at, rescheduled) = parking.count_attempt(attempt);
        if let Err(error) = rescheduled {
            tracing::error!(parked_feed_id = schedule.feed_id, error = %escaped(format!("{:#}", anyhow::Error::new(error))), "cannot write a parked feed's schedule; the retry is repeated");
        }
        tracing::info!(
            file = %escaped(&schedule.file_name),
            merchant = unchanged.merchant.as_str(),
            parked_feed_id = schedule.feed_id,
            attempt = attempts,
            orders_not_found = unchanged.deferred,
            messages = unchanged.messages,
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            next_attempt_at = %next_attempt_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "parked feed retried: nothing new"
        );
    }

    /// After a retry that failed for good (no report): the feed stays parked and is tried
    /// again after the back-off, under the same claim token (if the failure came after the
    /// commit, the next try re-emits that report instead of processing again).
    fn fail_retry(&mut self, attempt: Attempt, error: &anyhow::Error, started: Instant) {
        let Some(parking) = self.parking.as_mut() else {
            return;
        };
        self.metrics
            .feed_finished(FeedResult::Error, None, started.elapsed());
        let (schedule, attempts, next_attempt_at, rescheduled) = parking.count_attempt(attempt);
        tracing::error!(
            file = %escaped(&schedule.file_name),
            parked_feed_id = schedule.feed_id,
            attempt = attempts,
            next_attempt_at = %next_attempt_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            error = %escaped(format!("{error:#}")),
            "retry of a parked feed failed; it stays parked"
        );
        if let Err(error) = rescheduled {
            tracing::error!(parked_feed_id = schedule.feed_id, error = %escaped(format!("{:#}", anyhow::Error::new(error))), "cannot write a parked feed's schedule");
        }
    }

    fn finish_failed(&mut self, feed: InHand, error: &anyhow::Error, syncs: &mut Syncs) {
        let InHand { claim, started, .. } = feed;
        let file_name = claim.file_name.clone();
        let work_path = claim.path.clone();
        let unfinished = Unfinished {
            claim,
            destination: Destination::Failed,
            feed_id: None,
            schedule: None,
            orders_not_found: None,
            backoff: Backoff::new(),
            due: Instant::now(),
        };
        let moved = self.park_and_move(unfinished, syncs);
        self.metrics
            .feed_finished(FeedResult::Error, None, started.elapsed());
        match moved {
            Ok(path) => tracing::error!(
                file = %escaped(&file_name),
                moved_to = %escaped(path.display()),
                error = %escaped(format!("{error:#}")),
                "feed could not be processed, moved to failed/ without a report"
            ),
            Err((feed, step)) => {
                tracing::error!(
                    file = %escaped(&file_name),
                    work_path = %escaped(work_path.display()),
                    error = %escaped(format!("{error:#}")),
                    "feed could not be processed, no report; it goes to failed/ once it can be moved there"
                );
                self.unfinished_failed(feed, step);
            }
        }
    }

    /// Waits `duration` unless shutdown comes first; false on shutdown.
    fn sleep_unless_shutdown(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        loop {
            if self.shutdown.is_cancelled() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            match self.wakes.recv_timeout(deadline - now) {
                Ok(Wake::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    return !self.shutdown.is_cancelled();
                }
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

enum Failure {
    Process(ProcessError),
    Panic(String),
}

/// How a failed attempt at a feed is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Not at all: the failure is final.
    Never,
    /// At once after a backoff, before any other feed: the store is away or busy, or refuses
    /// work for a reason that is not the feed's (a schema migrated by a newer adjustd, a
    /// privilege revoked, an unknown error), which every feed would run into alike and
    /// which must never fail a feed: only the feed's own content may
    /// ([`crate::store::StoreError::is_caused_by_request`]).
    InPlace,
    /// After a backoff of its own, other feeds going on meanwhile: the feed committed but the
    /// outbox (full, permissions, maybe only this merchant's folder) did not take its report.
    /// The file stays in `work/`, and the retry only writes the stored report.
    Later,
}

impl Failure {
    fn retry(&self) -> Retry {
        match self {
            Failure::Process(ProcessError::Report { .. }) => Retry::Later,
            // Nothing committed, nothing to retry: the daemon gives such a claim back to the
            // inbox to wait (`Worker::give_back_unsettled`); a parked copy, which no one
            // writes, has failed once and stays parked.
            Failure::Process(ProcessError::Unsettled { .. }) => Retry::Never,
            Failure::Process(error) if error.is_transient() => Retry::InPlace,
            Failure::Process(_) | Failure::Panic(_) => Retry::Never,
        }
    }

    /// What holds up a failure retried in place ([`Retry::InPlace`]).
    fn held_up_by(&self) -> HeldUp {
        match self {
            Failure::Process(ProcessError::Conflicts { .. }) => HeldUp::Conflicts,
            Failure::Process(ProcessError::Shortage { .. }) => HeldUp::Shortage,
            _ => HeldUp::Store,
        }
    }

    fn into_error(self) -> anyhow::Error {
        match self {
            Failure::Process(error) => anyhow::Error::new(error),
            Failure::Panic(message) => anyhow::anyhow!("processing panicked: {message}"),
        }
    }
}

/// What holds up a feed retried in place ([`Failure::held_up_by`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeldUp {
    /// The store is away or busy, or refuses work for a reason that is not the feed's.
    Store,
    /// Every attempt conflicted with another instance ([`ProcessError::Conflicts`]).
    Conflicts,
    /// The process or the system ran short of open files or memory
    /// ([`ProcessError::Shortage`]).
    Shortage,
}

/// Why the content gate holds an inbox file back.
enum HeldBack {
    /// Its XML root element does not close (yet).
    Incomplete,
    /// It cannot be opened (yet): why.
    Unreadable(std::io::Error),
}

/// Takes out of `waiting` the entries due now (by `due`), in their order; the rest stay.
fn take_due<T>(waiting: &mut Vec<T>, due: impl Fn(&T) -> Instant) -> Vec<T> {
    let now = Instant::now();
    let (due, rest) = std::mem::take(waiting)
        .into_iter()
        .partition(|entry| due(entry) <= now);
    *waiting = rest;
    due
}

/// Runs the pipeline on one feed; a panic is caught and becomes a [`Failure`].
fn run_pipeline<T>(run: impl FnOnce() -> Result<T, ProcessError>) -> Result<T, Failure> {
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(result) => result.map_err(Failure::Process),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(Failure::Panic(message))
        }
    }
}

/// Longest description of a feed's first error on its summary line (in characters).
const SUMMARY_DESCRIPTION_CHARS: usize = 160;

/// The first error of a processed feed (feed-level errors come first in a report), as fields
/// of its summary line, so an operator reading the log sees why a feed was rejected, or why
/// a message failed, without opening the report: the code's name, the MessageID (0 for the
/// feed), the element, `line:column` when known, and the description, escaped and cut to
/// [`SUMMARY_DESCRIPTION_CHARS`]. All `None` when the feed has no error.
struct FirstError {
    code: Option<&'static str>,
    message_id: Option<u64>,
    element: Option<String>,
    at: Option<Position>,
    description: Option<String>,
}

impl FirstError {
    fn of(outcome: &FeedOutcome) -> FirstError {
        let first: Option<&Problem> = outcome
            .results
            .iter()
            .find(|problem| problem.severity == Severity::Error);
        FirstError {
            code: first.map(|problem| problem.code.name()),
            message_id: first.map(|problem| problem.message_id.get()),
            element: first.map(|problem| escaped(&problem.element).to_string()),
            at: first.and_then(|problem| problem.position),
            description: first
                .map(|problem| escaped_shortened(&problem.description, SUMMARY_DESCRIPTION_CHARS)),
        }
    }
}

/// True when a processed feed still has an `ORDER_NOT_FOUND` that a retry may change: the
/// count of deferred messages, or for a recovered feed what its report lists.
fn still_deferred(processed: &Processed) -> bool {
    processed.deferred.map_or_else(
        || pipeline::lists_order_not_found(&processed.outcome),
        |deferred| deferred > 0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    fn store_failure(error: StoreError) -> Retry {
        Failure::Process(ProcessError::Store(error)).retry()
    }

    #[test]
    fn only_an_error_the_feed_causes_fails_it() {
        let detail = || "x".to_owned();
        // Not the feed's fault: held in place, never failed without a report.
        assert_eq!(
            store_failure(StoreError::Unavailable { detail: detail() }),
            Retry::InPlace
        );
        assert_eq!(
            store_failure(StoreError::Conflict { detail: detail() }),
            Retry::InPlace
        );
        assert_eq!(
            store_failure(StoreError::SchemaTooNew {
                found: 4,
                supported: 3
            }),
            Retry::InPlace
        );
        // A privilege revoked (42501), an unknown SQLSTATE.
        assert_eq!(
            store_failure(StoreError::Other { detail: detail() }),
            Retry::InPlace
        );
        // The feed's own content breaks an invariant: final.
        assert_eq!(
            store_failure(StoreError::Invalid { detail: detail() }),
            Retry::Never
        );
        assert_eq!(Failure::Panic(detail()).retry(), Retry::Never);
    }

    #[test]
    fn a_feed_the_process_cannot_open_for_want_of_descriptors_is_retried_in_place() {
        let short = Failure::Process(ProcessError::Shortage {
            path: "work/x.xml".into(),
            shortage: crate::resources::Shortage::ProcessOpenFiles,
            source: std::io::Error::from_raw_os_error(24),
        });
        assert_eq!(short.retry(), Retry::InPlace);
        assert_eq!(short.held_up_by(), HeldUp::Shortage);
        let text = format!("{:#}", short.into_error());
        assert!(text.contains("too many open files"), "{text}");
        assert!(text.contains("not a fault of the feed"), "{text}");
    }
}
