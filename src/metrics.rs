//! The daemon's metrics (counters, gauges and one histogram, lock-free atomics; a gauge that
//! is an age keeps its start instead, so a scrape computes it) rendered in the Prometheus
//! text format, the files waiting in the inbox (published by the worker after each listing
//! and claim, and completed at the scrape by a listing of the inbox while the worker is busy
//! with a feed, [`Metrics::set_inbox_lister`]), the store's health, and the optional HTTP
//! listener that serves them with `/healthz` (503 while a store outage, a long lock wait or
//! a shortage of open files or memory lasts). One method per kind of event. No HTTP framework: the listener speaks just
//! enough HTTP/1.1 for a scraper and a health probe.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::inbox::ready::InboxName;
use crate::report::FeedOutcome;
use crate::store::FeedStatus;
use crate::telemetry::escaped_shortened;

/// How a feed ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedResult {
    /// Processed, status Complete.
    Complete,
    /// Rejected as a whole.
    Rejected,
    /// The same bytes as an earlier feed, dropped again: not applied again (or processed
    /// again, when the earlier run had an `ORDER_NOT_FOUND` or left results out).
    Duplicate,
    /// A retry of a parked feed that produced a report ([`FeedResult::of_retry`]). It
    /// repeats the parked feed's bytes, so it would otherwise look like a duplicate.
    Retried,
    /// An earlier, committed attempt was found; the report was re-emitted.
    Recovered,
    /// Could not be processed (moved to `failed/` without a report).
    Error,
}

impl FeedResult {
    const ALL: [FeedResult; 6] = [
        FeedResult::Complete,
        FeedResult::Rejected,
        FeedResult::Duplicate,
        FeedResult::Retried,
        FeedResult::Recovered,
        FeedResult::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedResult::Complete => "complete",
            FeedResult::Rejected => "rejected",
            FeedResult::Duplicate => "duplicate",
            FeedResult::Retried => "retried",
            FeedResult::Recovered => "recovered",
            FeedResult::Error => "error",
        }
    }

    /// The label of a processed feed.
    pub fn of(outcome: &FeedOutcome, recovered: bool) -> FeedResult {
        if recovered {
            FeedResult::Recovered
        } else if outcome.duplicate_of.is_some() {
            FeedResult::Duplicate
        } else {
            match outcome.status {
                FeedStatus::Complete => FeedResult::Complete,
                FeedStatus::Rejected => FeedResult::Rejected,
            }
        }
    }

    /// The label of a processed retry of a parked feed: `retried`, unless it was recovered
    /// (its report re-emitted after a crash) or rejected as a whole, which keep those labels
    /// as for any feed. A failed retry is an [`FeedResult::Error`].
    pub fn of_retry(outcome: &FeedOutcome, recovered: bool) -> FeedResult {
        match FeedResult::of(outcome, recovered) {
            FeedResult::Complete | FeedResult::Duplicate => FeedResult::Retried,
            other => other,
        }
    }
}

/// Why the inbox was listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanReason {
    /// At startup.
    Startup,
    /// A notify event woke the worker.
    Event,
    /// The periodic timer (rescan interval, or poll interval in polling mode).
    Timer,
    /// notify reported lost events, or our event queue overflowed.
    Overflow,
    /// After a batch of feeds, or when a settle time or backoff ended.
    Followup,
}

impl ScanReason {
    const ALL: [ScanReason; 5] = [
        ScanReason::Startup,
        ScanReason::Event,
        ScanReason::Timer,
        ScanReason::Overflow,
        ScanReason::Followup,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ScanReason::Startup => "startup",
            ScanReason::Event => "event",
            ScanReason::Timer => "timer",
            ScanReason::Overflow => "overflow",
            ScanReason::Followup => "followup",
        }
    }
}

/// Upper bounds (seconds) of the processing-duration histogram buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Lists the inbox for a scrape: the names of the files that would count as waiting (regular
/// files that pass the name gate, done markers left out), claimed or not, each with when it
/// arrived there (its status-change time, which a rename into the inbox sets).
pub type InboxLister = Box<dyn Fn() -> std::io::Result<Vec<(InboxName, SystemTime)>> + Send + Sync>;

/// All metrics of one daemon. Shared (`Arc`) between the worker, the notify callback and
/// the HTTP listener.
#[derive(Default)]
pub struct Metrics {
    feeds: [AtomicU64; FeedResult::ALL.len()],
    messages_successful: AtomicU64,
    messages_with_error: AtomicU64,
    messages_with_warning: AtomicU64,
    /// The files waiting in the inbox, each with when it was first seen. The instants, not
    /// ages: an age is computed when scraped, so it moves between the listings that set it.
    waiting: Mutex<Waiting>,
    /// Lists the inbox at a scrape while the worker is busy ([`Metrics::set_inbox_lister`]).
    inbox_lister: OnceLock<InboxLister>,
    /// Set while the store is away or busy and a feed is retried in place.
    store_outage: Mutex<Option<StoreOutage>>,
    /// Set while feeds wait because the process or the system ran short (too many open
    /// files, no memory): [`Metrics::resources_short`].
    shortage: Mutex<Option<StoreOutage>>,
    /// Set while a feed waits for rows another session holds: an attempt gave up after a
    /// long lock wait ([`Metrics::store_lock_wait`]), and no attempt got past the store since.
    store_blocked: Mutex<Option<StoreOutage>>,
    stale_partials: AtomicU64,
    parked_feeds: AtomicU64,
    reports_pending: AtomicU64,
    processing_buckets: [AtomicU64; BUCKETS.len()],
    processing_count: AtomicU64,
    processing_sum_us: AtomicU64,
    polling: AtomicBool,
    scans: [AtomicU64; 5],
    events_dropped: AtomicU64,
    retries: AtomicU64,
    parked_retries_unchanged: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The files waiting in the inbox (seen, not claimed) and whether the worker is busy.
#[derive(Debug, Default)]
struct Waiting {
    /// Each waiting file and when it was first seen (by the worker or by a scrape).
    files: HashMap<InboxName, Instant>,
    /// Moves on every change made by the worker, so a scrape whose listing raced with one
    /// (a claim, say) drops its listing rather than count a claimed file again.
    generation: u64,
    /// True while the worker is not waiting for the inbox (a feed in hand, a retry, a
    /// listing): it cannot see new files then, so a scrape lists the inbox itself.
    worker_busy: bool,
}

/// A store outage (or a long lock wait): since when, and the last error.
#[derive(Debug, Clone)]
struct StoreOutage {
    since: SystemTime,
    since_instant: Instant,
    error: String,
}

/// Longest error text `/healthz` shows.
const HEALTH_ERROR_CHARS: usize = 200;

/// Locks `mutex`, also after a panic elsewhere (the values are plain data).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records `error` in `state`, keeping the time of the first record while one is set.
fn record_since(state: &Mutex<Option<StoreOutage>>, error: &str) {
    let error = escaped_shortened(error, HEALTH_ERROR_CHARS);
    let mut state = lock(state);
    match state.as_mut() {
        Some(outage) => outage.error = error,
        None => {
            *state = Some(StoreOutage {
                since: SystemTime::now(),
                since_instant: Instant::now(),
                error,
            });
        }
    }
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// A feed finished (processed, or moved to `failed/` after an error).
    pub fn feed_finished(
        &self,
        result: FeedResult,
        outcome: Option<&FeedOutcome>,
        duration: Duration,
    ) {
        let idx = FeedResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or_default();
        self.feeds[idx].fetch_add(1, Ordering::Relaxed);
        if let Some(outcome) = outcome {
            self.messages_successful
                .fetch_add(outcome.messages_successful, Ordering::Relaxed);
            self.messages_with_error
                .fetch_add(outcome.messages_with_error, Ordering::Relaxed);
            self.messages_with_warning
                .fetch_add(outcome.messages_with_warning, Ordering::Relaxed);
        }
        let seconds = duration.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.processing_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.processing_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.processing_sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// The waiting files after a listing of the inbox: `update` makes the map (each file and
    /// when it was first seen) what the worker knows. A file a scrape saw first keeps the
    /// scrape's instant when `update` keeps the file.
    pub fn waiting_listed(&self, update: impl FnOnce(&mut HashMap<InboxName, Instant>)) {
        let mut waiting = self.lock_waiting();
        update(&mut waiting.files);
        waiting.generation += 1;
    }

    /// `name` was claimed (or vanished, or was taken by another instance): it no longer
    /// waits.
    pub fn not_waiting(&self, name: &InboxName) {
        let mut waiting = self.lock_waiting();
        waiting.files.remove(name);
        waiting.generation += 1;
    }

    /// The worker is busy (`true`: a feed in hand, a retry, a listing) or waits for the
    /// inbox (`false`).
    pub fn worker_busy(&self, busy: bool) {
        self.lock_waiting().worker_busy = busy;
    }

    /// How a scrape lists the inbox while the worker is busy, so that files arriving during
    /// a long feed (or a store outage) count as waiting at once. Set once, at start.
    pub fn set_inbox_lister(&self, lister: InboxLister) {
        let _ = self.inbox_lister.set(lister);
    }

    /// Before a scrape: while the worker is busy, lists the inbox and counts the files that
    /// arrived since the worker's last listing (waiting since they arrived, not since this
    /// scrape: a worker held by a long feed or an outage is when the age matters), and
    /// forgets those gone. A listing that raced with a change by the worker is dropped.
    /// Blocking (a listing).
    pub fn refresh_waiting(&self) {
        let Some(lister) = self.inbox_lister.get() else {
            return;
        };
        let generation = {
            let waiting = self.lock_waiting();
            if !waiting.worker_busy {
                return;
            }
            waiting.generation
        };
        let Ok(listed) = lister() else {
            return;
        };
        let (now, wall_now) = (Instant::now(), SystemTime::now());
        let mut waiting = self.lock_waiting();
        if waiting.generation != generation {
            return;
        }
        let listed: HashMap<InboxName, SystemTime> = listed.into_iter().collect();
        waiting.files.retain(|name, _| listed.contains_key(name));
        for (name, arrived) in listed {
            // A time ahead of the clock (or one the monotonic clock cannot reach back to)
            // counts as now.
            let since = wall_now
                .duration_since(arrived)
                .ok()
                .and_then(|age| now.checked_sub(age))
                .unwrap_or(now);
            waiting.files.entry(name).or_insert(since);
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        lock(&self.waiting)
    }

    /// A feed's attempt failed because the store is away or busy; it is retried in place.
    /// The outage counts from the first such failure.
    pub fn store_unavailable(&self, error: &str) {
        record_since(&self.store_outage, error);
    }

    /// An attempt at a feed gave up after waiting long for rows another session holds
    /// (a row lock kept past the lock timeout: another instance stuck mid-feed, or an
    /// operator's open transaction): `/healthz` fails until an attempt gets past the store,
    /// counting from the first such wait. A conflict that comes at once (a serialization
    /// failure between instances) is no reason to call the store busy, so the caller tells
    /// only of long waits.
    pub fn store_lock_wait(&self, error: &str) {
        record_since(&self.store_blocked, error);
    }

    /// The store answered an attempt (it conflicted with another session): any outage is
    /// over, though a long lock wait may not be.
    pub fn store_answered(&self) {
        *lock(&self.store_outage) = None;
    }

    /// A feed's attempt got past the store: any outage or lock wait is over.
    pub fn store_available(&self) {
        *lock(&self.store_outage) = None;
        *lock(&self.store_blocked) = None;
    }

    /// A feed could not be opened or read because the process or the system ran short
    /// (`error` says of what: too many open files, no memory); it waits, nothing is
    /// rejected for it. `/healthz` fails until [`Metrics::resources_available`], counting
    /// from the first such failure.
    pub fn resources_short(&self, error: &str) {
        record_since(&self.shortage, error);
    }

    /// A feed's attempt got past opening and reading its file: any shortage is over.
    pub fn resources_available(&self) {
        *lock(&self.shortage) = None;
    }

    /// `None` when healthy, else the text `/healthz` answers with its 503.
    fn health_problem(&self, now: Instant) -> Option<String> {
        let since = |outage: &StoreOutage| {
            let at = chrono::DateTime::<chrono::Utc>::from(outage.since)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let for_secs = now
                .saturating_duration_since(outage.since_instant)
                .as_secs();
            format!("since {at} ({for_secs} s)")
        };
        if let Some(shortage) = lock(&self.shortage).clone() {
            return Some(format!(
                "out of resources {}, feeds wait (none is rejected for it): {}\n",
                since(&shortage),
                shortage.error
            ));
        }
        if let Some(outage) = lock(&self.store_outage).clone() {
            return Some(format!(
                "store unavailable {}, feeds wait: {}\n",
                since(&outage),
                outage.error
            ));
        }
        let blocked = lock(&self.store_blocked).clone()?;
        Some(format!(
            "store busy {}: a feed waits for rows another session holds locked (another adjustd instance stuck mid-feed, or a client's open transaction), feeds wait: {}\n",
            since(&blocked),
            blocked.error
        ))
    }

    /// Temp-named files (ignored names) unchanged for longer than the truncation grace,
    /// after a scan.
    pub fn stale_partials(&self, files: usize) {
        self.stale_partials
            .store(u64::try_from(files).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The feeds parked for `ORDER_NOT_FOUND` retries, after each change.
    pub fn parked_feeds(&self, feeds: usize) {
        self.parked_feeds
            .store(u64::try_from(feeds).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The committed feeds whose report the outbox has not taken yet (retried with
    /// backoff), after each change.
    pub fn reports_pending(&self, feeds: usize) {
        self.reports_pending
            .store(u64::try_from(feeds).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The watch mode now in force.
    pub fn watch_mode(&self, polling: bool) {
        self.polling.store(polling, Ordering::Relaxed);
    }

    /// The inbox was listed.
    pub fn scanned(&self, reason: ScanReason) {
        let idx = ScanReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or_default();
        self.scans[idx].fetch_add(1, Ordering::Relaxed);
    }

    /// A notify event was dropped because the queue was full (a rescan follows).
    pub fn event_dropped(&self) {
        self.events_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// A feed is retried after a transient error.
    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A retry of a parked feed changed nothing and was rolled back without a report.
    pub fn parked_retry_unchanged(&self) {
        self.parked_retries_unchanged
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Events dropped so far.
    pub fn events_dropped_total(&self) -> u64 {
        self.events_dropped.load(Ordering::Relaxed)
    }

    /// All metrics in the Prometheus text exposition format (version 0.0.4), ages as of now.
    pub fn render(&self) -> String {
        self.render_at(Instant::now())
    }

    /// [`Metrics::render`] with ages as of `now`.
    fn render_at(&self, now: Instant) -> String {
        let mut out = String::new();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        // Writing to a String cannot fail.
        let _ = self.render_into(&mut out, now, load);
        out
    }

    fn render_into(
        &self,
        out: &mut String,
        now: Instant,
        load: impl Fn(&AtomicU64) -> u64,
    ) -> std::fmt::Result {
        writeln!(
            out,
            "# HELP adjustd_feeds_total Feeds finished, by outcome (retried: a retry of a parked feed)."
        )?;
        writeln!(out, "# TYPE adjustd_feeds_total counter")?;
        for (result, counter) in FeedResult::ALL.iter().zip(&self.feeds) {
            writeln!(
                out,
                "adjustd_feeds_total{{outcome=\"{}\"}} {}",
                result.as_str(),
                load(counter)
            )?;
        }
        writeln!(
            out,
            "# HELP adjustd_messages_total Messages of processed feeds, by result."
        )?;
        writeln!(out, "# TYPE adjustd_messages_total counter")?;
        for (result, counter) in [
            ("successful", &self.messages_successful),
            ("error", &self.messages_with_error),
            ("warning", &self.messages_with_warning),
        ] {
            writeln!(
                out,
                "adjustd_messages_total{{result=\"{result}\"}} {}",
                load(counter)
            )?;
        }
        writeln!(
            out,
            "# HELP adjustd_files_waiting Files seen in the inbox and not yet claimed."
        )?;
        writeln!(out, "# TYPE adjustd_files_waiting gauge")?;
        let (files_waiting, oldest_since) = {
            let waiting = self.lock_waiting();
            (waiting.files.len(), waiting.files.values().copied().min())
        };
        writeln!(out, "adjustd_files_waiting {files_waiting}")?;
        writeln!(
            out,
            "# HELP adjustd_oldest_waiting_seconds Time since the oldest waiting file was first seen (or arrived, when a scrape lists the inbox)."
        )?;
        writeln!(out, "# TYPE adjustd_oldest_waiting_seconds gauge")?;
        write_age(out, "adjustd_oldest_waiting_seconds", oldest_since, now)?;
        writeln!(
            out,
            "# HELP adjustd_store_unavailable_seconds Time since the store outage that holds feeds up began (0 while the store answers)."
        )?;
        writeln!(out, "# TYPE adjustd_store_unavailable_seconds gauge")?;
        let since = |state: &Mutex<Option<StoreOutage>>| {
            lock(state).as_ref().map(|outage| outage.since_instant)
        };
        write_age(
            out,
            "adjustd_store_unavailable_seconds",
            since(&self.store_outage),
            now,
        )?;
        writeln!(
            out,
            "# HELP adjustd_store_lock_wait_seconds Time since a feed first gave up waiting for rows another session holds locked (0 once an attempt gets past the store)."
        )?;
        writeln!(out, "# TYPE adjustd_store_lock_wait_seconds gauge")?;
        write_age(
            out,
            "adjustd_store_lock_wait_seconds",
            since(&self.store_blocked),
            now,
        )?;
        writeln!(
            out,
            "# HELP adjustd_stale_partials Temp-named uploads unchanged for longer than the truncation grace."
        )?;
        writeln!(out, "# TYPE adjustd_stale_partials gauge")?;
        writeln!(out, "adjustd_stale_partials {}", load(&self.stale_partials))?;
        writeln!(
            out,
            "# HELP adjustd_parked_feeds Feeds parked to retry their ORDER_NOT_FOUND messages."
        )?;
        writeln!(out, "# TYPE adjustd_parked_feeds gauge")?;
        writeln!(out, "adjustd_parked_feeds {}", load(&self.parked_feeds))?;
        writeln!(
            out,
            "# HELP adjustd_parked_retries_unchanged_total Retries of parked feeds that changed nothing, rolled back without a report."
        )?;
        writeln!(out, "# TYPE adjustd_parked_retries_unchanged_total counter")?;
        writeln!(
            out,
            "adjustd_parked_retries_unchanged_total {}",
            load(&self.parked_retries_unchanged)
        )?;
        writeln!(
            out,
            "# HELP adjustd_reports_pending Committed feeds whose report the outbox has not taken yet, retried with backoff."
        )?;
        writeln!(out, "# TYPE adjustd_reports_pending gauge")?;
        writeln!(
            out,
            "adjustd_reports_pending {}",
            load(&self.reports_pending)
        )?;
        writeln!(
            out,
            "# HELP adjustd_processing_seconds Time to process one feed, claim to move."
        )?;
        writeln!(out, "# TYPE adjustd_processing_seconds histogram")?;
        for (bound, bucket) in BUCKETS.iter().zip(&self.processing_buckets) {
            writeln!(
                out,
                "adjustd_processing_seconds_bucket{{le=\"{bound}\"}} {}",
                load(bucket)
            )?;
        }
        let count = load(&self.processing_count);
        writeln!(
            out,
            "adjustd_processing_seconds_bucket{{le=\"+Inf\"}} {count}"
        )?;
        let sum_us = load(&self.processing_sum_us);
        writeln!(
            out,
            "adjustd_processing_seconds_sum {}.{:06}",
            sum_us / 1_000_000,
            sum_us % 1_000_000
        )?;
        writeln!(out, "adjustd_processing_seconds_count {count}")?;
        writeln!(
            out,
            "# HELP adjustd_watch_mode The inbox watch mode in force (1) and the other (0)."
        )?;
        writeln!(out, "# TYPE adjustd_watch_mode gauge")?;
        let polling = self.polling.load(Ordering::Relaxed);
        writeln!(
            out,
            "adjustd_watch_mode{{mode=\"notify\"}} {}",
            u8::from(!polling)
        )?;
        writeln!(
            out,
            "adjustd_watch_mode{{mode=\"poll\"}} {}",
            u8::from(polling)
        )?;
        writeln!(
            out,
            "# HELP adjustd_rescans_total Listings of the inbox, by reason."
        )?;
        writeln!(out, "# TYPE adjustd_rescans_total counter")?;
        for (reason, counter) in ScanReason::ALL.iter().zip(&self.scans) {
            writeln!(
                out,
                "adjustd_rescans_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                load(counter)
            )?;
        }
        writeln!(
            out,
            "# HELP adjustd_events_dropped_total notify events dropped on a full queue (a rescan covers them)."
        )?;
        writeln!(out, "# TYPE adjustd_events_dropped_total counter")?;
        writeln!(
            out,
            "adjustd_events_dropped_total {}",
            load(&self.events_dropped)
        )?;
        writeln!(
            out,
            "# HELP adjustd_retries_total Feed attempts retried after a transient error."
        )?;
        writeln!(out, "# TYPE adjustd_retries_total counter")?;
        writeln!(out, "adjustd_retries_total {}", load(&self.retries))?;
        Ok(())
    }
}

/// Writes the gauge `name`, the seconds from `since` to `now` (0 without `since`), to the
/// millisecond.
fn write_age(
    out: &mut String,
    name: &str,
    since: Option<Instant>,
    now: Instant,
) -> std::fmt::Result {
    let ms = since.map_or(0, |since| {
        u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX)
    });
    writeln!(out, "{name} {}.{:03}", ms / 1000, ms % 1000)
}

/// Binds the HTTP listener.
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves `GET /healthz` (200 `ok`, or 503 with since when and why while a store outage
/// holds feeds up) and `GET /metrics` until `shutdown`. Each connection gets one response
/// and is closed; slow or oversized requests are dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                if let Some(failures) = backoff.accepted() {
                    tracing::info!(failures, "http accept works again");
                }
                let metrics = Arc::clone(&metrics);
                connections.spawn(async move {
                    let answered =
                        tokio::time::timeout(Duration::from_secs(5), respond(stream, metrics))
                            .await;
                    if let Ok(Err(error)) = answered {
                        tracing::debug!(%error, "http connection failed");
                    }
                });
            }
            Err(error) => {
                // One line per wait: at most one a second, then one per half minute.
                let wait = backoff.failed();
                tracing::warn!(%error, retry_in_secs = wait.as_secs_f64(), failures = backoff.failures, "http accept failed, waiting before the next accept");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
}

/// The wait after a failed `accept` (out of descriptors, say): 1 s, doubling to
/// [`AcceptBackoff::MAX`], so a listener that cannot accept neither spins nor fills the log.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// Failed accepts in a row.
    failures: u64,
    /// The wait after the last failure.
    wait: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    /// Counts a failure; returns the wait before the next accept.
    fn failed(&mut self) -> Duration {
        self.failures += 1;
        let wait = if self.wait.is_zero() {
            Self::FIRST
        } else {
            (self.wait * 2).min(Self::MAX)
        };
        self.wait = wait;
        wait
    }

    /// An accept worked: `Some(failures)` when it ends a run of failures.
    fn accepted(&mut self) -> Option<u64> {
        let failures = std::mem::take(&mut self.failures);
        self.wait = Duration::ZERO;
        (failures > 0).then_some(failures)
    }
}

async fn respond(mut stream: TcpStream, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && !request.windows(2).any(|w| w == b"\n\n")
    {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..n]);
        if request.len() > 16 * 1024 {
            break;
        }
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/healthz") => match metrics.health_problem(Instant::now()) {
            None => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_owned()),
            Some(problem) => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                problem,
            ),
        },
        ("GET" | "HEAD", "/metrics") => {
            // A listing of the inbox while the worker is busy: off the async threads.
            let rendered = tokio::task::spawn_blocking(move || {
                metrics.refresh_waiting();
                metrics.render()
            })
            .await
            .map_err(std::io::Error::other)?;
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                rendered,
            )
        }
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "method not allowed\n".to_owned(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(name: &str) -> InboxName {
        InboxName {
            merchant: None,
            name: name.into(),
        }
    }

    /// Publishes `files`, each first seen at `first_seen`, as the worker's listing.
    fn listed(metrics: &Metrics, files: &[&str], first_seen: Instant) {
        metrics.waiting_listed(|waiting| {
            waiting.clear();
            waiting.extend(files.iter().map(|file| (name(file), first_seen)));
        });
    }

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::new();
        metrics.feed_finished(FeedResult::Complete, None, Duration::from_millis(30));
        metrics.feed_finished(FeedResult::Error, None, Duration::from_secs(100));
        metrics.scanned(ScanReason::Startup);
        metrics.event_dropped();
        metrics.parked_retry_unchanged();
        let first_seen = Instant::now();
        listed(&metrics, &["a.xml", "b.xml", "c.xml"], first_seen);
        metrics.watch_mode(true);
        let text = metrics.render_at(first_seen + Duration::from_millis(1500));
        for line in [
            "adjustd_feeds_total{outcome=\"complete\"} 1",
            "adjustd_feeds_total{outcome=\"error\"} 1",
            "adjustd_processing_seconds_bucket{le=\"0.025\"} 0",
            "adjustd_processing_seconds_bucket{le=\"0.05\"} 1",
            "adjustd_processing_seconds_bucket{le=\"+Inf\"} 2",
            "adjustd_processing_seconds_sum 100.030000",
            "adjustd_processing_seconds_count 2",
            "adjustd_files_waiting 3",
            "adjustd_oldest_waiting_seconds 1.500",
            "adjustd_watch_mode{mode=\"poll\"} 1",
            "adjustd_watch_mode{mode=\"notify\"} 0",
            "adjustd_rescans_total{reason=\"startup\"} 1",
            "adjustd_events_dropped_total 1",
            "adjustd_parked_retries_unchanged_total 1",
            "adjustd_store_unavailable_seconds 0.000",
            "adjustd_store_lock_wait_seconds 0.000",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn a_claimed_file_stops_waiting_and_a_busy_worker_has_the_inbox_listed_at_the_scrape() {
        let metrics = Metrics::new();
        let gauges = |metrics: &Metrics| {
            let text = metrics.render();
            let value = |gauge: &str| {
                text.lines()
                    .find_map(|line| line.strip_prefix(gauge))
                    .map(str::to_owned)
                    .unwrap_or_default()
            };
            (
                value("adjustd_files_waiting "),
                value("adjustd_oldest_waiting_seconds "),
            )
        };
        let first_seen = Instant::now() - Duration::from_secs(30);
        listed(&metrics, &["long.xml"], first_seen);
        assert_eq!(gauges(&metrics).0, "1");
        metrics.not_waiting(&name("long.xml"));
        assert_eq!(gauges(&metrics), ("0".to_owned(), "0.000".to_owned()));
        // The worker is busy with that feed; two files arrive. Without a lister nothing
        // changes; with one, a scrape counts them (first seen now).
        let inbox = Arc::new(Mutex::new(vec![
            (name("new-1.xml"), SystemTime::now()),
            (name("new-2.xml"), SystemTime::now()),
        ]));
        metrics.worker_busy(true);
        metrics.refresh_waiting();
        assert_eq!(gauges(&metrics).0, "0");
        let shared = Arc::clone(&inbox);
        metrics.set_inbox_lister(Box::new(move || Ok(shared.lock().expect("inbox").clone())));
        metrics.refresh_waiting();
        let (files, oldest) = gauges(&metrics);
        assert_eq!(files, "2");
        assert!(oldest.starts_with("0."), "{oldest}");
        // A file that arrived a minute before the scrape has waited a minute, not since the
        // scrape.
        inbox.lock().expect("inbox").push((
            name("early.xml"),
            SystemTime::now() - Duration::from_secs(60),
        ));
        metrics.refresh_waiting();
        let (files, oldest) = gauges(&metrics);
        assert_eq!(files, "3");
        let oldest: f64 = oldest.parse().expect("seconds");
        assert!((60.0..70.0).contains(&oldest), "{oldest}");
        inbox.lock().expect("inbox").pop();
        // One goes (taken by another instance): forgotten at the next scrape.
        inbox.lock().expect("inbox").remove(0);
        metrics.refresh_waiting();
        assert_eq!(gauges(&metrics).0, "1");
        // Idle, the worker's own listings are the truth: no listing at the scrape.
        metrics.worker_busy(false);
        inbox.lock().expect("inbox").clear();
        metrics.refresh_waiting();
        assert_eq!(gauges(&metrics).0, "1");
        // The worker's listing keeps a file's first sight by a scrape.
        let scraped_at = metrics.lock_waiting().files[&name("new-2.xml")];
        metrics.waiting_listed(|waiting| {
            waiting
                .entry(name("new-2.xml"))
                .or_insert_with(Instant::now);
        });
        assert_eq!(metrics.lock_waiting().files[&name("new-2.xml")], scraped_at);
    }

    #[test]
    fn a_scrape_listing_that_raced_with_a_claim_is_dropped() {
        let metrics = Arc::new(Metrics::new());
        metrics.worker_busy(true);
        let claimer = Arc::clone(&metrics);
        // The listing still shows the file; the worker claims it while the scrape lists.
        metrics.set_inbox_lister(Box::new(move || {
            claimer.not_waiting(&name("claimed.xml"));
            Ok(vec![(name("claimed.xml"), SystemTime::now())])
        }));
        metrics.refresh_waiting();
        assert!(
            metrics
                .render()
                .lines()
                .any(|line| line == "adjustd_files_waiting 0")
        );
    }

    #[test]
    fn health_fails_during_a_store_outage_and_recovers() {
        let metrics = Metrics::new();
        let now = Instant::now();
        assert_eq!(metrics.health_problem(now), None);
        metrics.store_unavailable("database unavailable: connection refused\nforged line");
        let later = Instant::now() + Duration::from_secs(12);
        let problem = metrics.health_problem(later).expect("unhealthy");
        assert!(
            problem.starts_with("store unavailable since 20"),
            "{problem}"
        );
        assert!(problem.contains("(12 s)"), "{problem}");
        assert!(
            problem.ends_with("connection refused\\nforged line\n"),
            "{problem}"
        );
        let text = metrics.render_at(later);
        assert!(
            text.lines()
                .any(|line| line == "adjustd_store_unavailable_seconds 12.000"),
            "{text}"
        );
        // A second failure keeps the start of the outage.
        metrics.store_unavailable("still away");
        assert!(
            metrics
                .health_problem(later)
                .is_some_and(|p| p.contains("(12 s)") && p.contains("still away"))
        );
        metrics.store_available();
        assert_eq!(metrics.health_problem(later), None);
        let long = "x".repeat(1000);
        metrics.store_unavailable(&long);
        let problem = metrics.health_problem(now).expect("unhealthy");
        assert!(
            problem.len() < 400 && problem.ends_with("x…\n"),
            "{problem}"
        );
    }

    #[test]
    fn health_fails_while_the_process_is_short_of_open_files_and_names_it() {
        let metrics = Metrics::new();
        metrics.store_unavailable("connection refused");
        metrics.resources_short(
            "cannot read work/x.xml: too many open files in adjustd (its RLIMIT_NOFILE; raise LimitNOFILE or ulimit -n)",
        );
        let later = Instant::now() + Duration::from_secs(5);
        let problem = metrics.health_problem(later).expect("unhealthy");
        assert!(
            problem.starts_with("out of resources since 20"),
            "{problem}"
        );
        assert!(problem.contains("too many open files"), "{problem}");
        metrics.resources_available();
        let problem = metrics
            .health_problem(later)
            .expect("the store is still away");
        assert!(problem.starts_with("store unavailable"), "{problem}");
        metrics.store_available();
        assert_eq!(metrics.health_problem(later), None);
    }

    #[test]
    fn a_failing_accept_waits_one_second_doubling_to_half_a_minute() {
        let mut backoff = AcceptBackoff::default();
        let waits: Vec<u64> = (0..7).map(|_| backoff.failed().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff.accepted(), Some(7));
        assert_eq!(backoff.accepted(), None);
        assert_eq!(backoff.failed(), Duration::from_secs(1));
    }

    #[test]
    fn health_fails_during_a_long_lock_wait_until_an_attempt_gets_past_the_store() {
        let metrics = Metrics::new();
        metrics.store_lock_wait("canceling statement due to lock timeout");
        let later = Instant::now() + Duration::from_secs(70);
        let problem = metrics.health_problem(later).expect("unhealthy");
        assert!(problem.starts_with("store busy since 20"), "{problem}");
        assert!(problem.contains("(70 s)"), "{problem}");
        assert!(problem.ends_with("due to lock timeout\n"), "{problem}");
        let text = metrics.render_at(later);
        assert!(
            text.lines()
                .any(|line| line == "adjustd_store_lock_wait_seconds 70.000"),
            "{text}"
        );
        // Conflicts that follow show the store answers: no outage, but still a wait.
        metrics.store_answered();
        assert!(metrics.health_problem(later).is_some());
        // An outage meanwhile is named first; once over, the wait shows again.
        metrics.store_unavailable("connection refused");
        assert!(
            metrics
                .health_problem(later)
                .is_some_and(|p| p.starts_with("store unavailable"))
        );
        metrics.store_answered();
        assert!(
            metrics
                .health_problem(later)
                .is_some_and(|p| p.starts_with("store busy"))
        );
        metrics.store_available();
        assert_eq!(metrics.health_problem(later), None);
        assert!(
            metrics
                .render_at(later)
                .lines()
                .any(|line| line == "adjustd_store_lock_wait_seconds 0.000")
        );
    }
    #[test]
    fn the_oldest_waiting_age_is_computed_when_scraped() {
        let metrics = Metrics::new();
        let gauge = |text: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix("adjustd_oldest_waiting_seconds "))
                .map(str::to_owned)
        };
        assert_eq!(gauge(&metrics.render()).as_deref(), Some("0.000"));
        let first_seen = Instant::now();
        listed(&metrics, &["a.xml"], first_seen);
        // No new listing in between: the age still moves with the scrape time.
        for (after_ms, expected) in [(250, "0.250"), (31_000, "31.000"), (90_500, "90.500")] {
            let text = metrics.render_at(first_seen + Duration::from_millis(after_ms));
            assert_eq!(gauge(&text).as_deref(), Some(expected), "{text}");
        }
        listed(&metrics, &[], first_seen);
        let text = metrics.render_at(first_seen + Duration::from_secs(100));
        assert_eq!(gauge(&text).as_deref(), Some("0.000"), "{text}");
    }

    #[test]
    fn a_retry_counts_as_retried_unless_it_was_recovered_or_rejected() {
        let outcome = |status: FeedStatus, duplicate_of: Option<u64>| FeedOutcome {
            feed_id: 2,
            file_name: "late.xml".to_owned(),
            merchant: None,
            status,
            duplicate_of,
            content_hash: String::new(),
            processed_at: "2027-01-15T08:02:03Z".to_owned(),
            messages_processed: 1,
            messages_successful: 0,
            messages_with_error: 1,
            messages_with_warning: 0,
            results: Vec::new(),
        };
        let repeat = outcome(FeedStatus::Complete, Some(1));
        // The same report from a feed dropped again is a duplicate; from a retry, a retry.
        assert_eq!(FeedResult::of(&repeat, false), FeedResult::Duplicate);
        assert_eq!(FeedResult::of_retry(&repeat, false), FeedResult::Retried);
        assert_eq!(
            FeedResult::of_retry(&outcome(FeedStatus::Complete, None), false),
            FeedResult::Retried
        );
        assert_eq!(FeedResult::of_retry(&repeat, true), FeedResult::Recovered);
        assert_eq!(
            FeedResult::of_retry(&outcome(FeedStatus::Rejected, None), false),
            FeedResult::Rejected
        );
        let metrics = Metrics::new();
        metrics.feed_finished(FeedResult::Retried, None, Duration::ZERO);
        let text = metrics.render();
        for line in [
            "adjustd_feeds_total{outcome=\"retried\"} 1",
            "adjustd_feeds_total{outcome=\"duplicate\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[tokio::test]
    async fn serves_healthz_and_metrics() {
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(Metrics::new()), shutdown.clone()));
        let get = |path: &'static str| async move {
            let mut stream = TcpStream::connect(address).await.expect("connect");
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut response = String::new();
            stream.read_to_string(&mut response).await.expect("read");
            response
        };
        let health = get("/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
        let text = get("/metrics").await;
        assert!(
            text.contains("adjustd_feeds_total{outcome=\"complete\"} 0"),
            "{text}"
        );
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        shutdown.cancel();
        server.await.expect("server task");
    }
}
