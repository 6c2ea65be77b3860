//! Parked feeds (refund-rules §c3.4: "`ORDER_NOT_FOUND` may be ingestion lag: park and
//! retry with back-off for a bounded window, then pin it"). A committed feed whose report
//! has a deferred `ORDER_NOT_FOUND` is parked as two files in the `[paths] parked` folder: a
//! durable copy of its bytes and its retry schedule. This module owns those files (written
//! atomically, read back at start), the lock that keeps two instances from retrying one feed
//! at once, and the back-off arithmetic. It never touches the store or the pipeline and
//! reads no clock for the schedules: the daemon decides when to park, retry and unpark, and
//! passes the time (only the clean-up of a copy without a schedule looks at a file's age).
//!
//! Layout, per parked feed (named by the id of the feed that was parked, the first
//! processing of those bytes):
//!
//! ```text
//! parked/<feed id>.xml            the feed's bytes, as processed (content hash checked)
//! parked/<feed id>.schedule.json  its Schedule (versioned JSON)
//! ```
//!
//! The schedule file is what makes a feed parked: it is written after the bytes and removed
//! before them, so a crash in between leaves at most a copy without a schedule, which is
//! ignored (and removed once it is an hour old).

use std::collections::BTreeMap;
use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::MerchantId;
use crate::pipeline::HashingReader;
use crate::report::{fsync_dir, write_atomic};
use crate::telemetry::escaped;

/// Retries of one parked feed are at most this far apart, however long the window.
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(3600);

/// The version [`Schedule::version`] is written with, and the only one read.
pub const SCHEDULE_VERSION: u32 = 1;

const BYTES_SUFFIX: &str = ".xml";
const SCHEDULE_SUFFIX: &str = ".schedule.json";

/// A temporary file or a copy without a schedule older than this is left over from a crash
/// (no parking takes that long) and is removed when the folder is read.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// When a parked feed is retried (`[daemon] order_not_found_window_secs` and
/// `order_not_found_first_retry_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryWindow {
    /// How long after a feed was first processed its `ORDER_NOT_FOUND`s are retried. The
    /// first attempt that starts after the window has ended is the last one: it pins what
    /// is still not found. A parked feed's window never ends before the end its reports
    /// announced ([`Schedule::window_end`]).
    pub window: Duration,
    /// The delay before the first retry; each later delay doubles, up to
    /// [`MAX_RETRY_INTERVAL`].
    pub first_retry: Duration,
}

impl RetryWindow {
    /// The defaults: a window of one day (86 400 s), the first retry after a minute.
    pub const DEFAULT: RetryWindow = RetryWindow {
        window: Duration::from_secs(86_400),
        first_retry: Duration::from_secs(60),
    };

    /// When this window ends for a feed first processed at `first_processed_at`; the last
    /// representable time for a window beyond the calendar (the config sets no upper bound,
    /// and the daemon asks this before every feed it processes). A parked feed's window
    /// ends at [`Schedule::window_end`], which is never earlier than this.
    pub fn ends(&self, first_processed_at: DateTime<Utc>) -> DateTime<Utc> {
        first_processed_at
            .checked_add_signed(chrono_duration(self.window))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The time of the next attempt after `attempts` attempts (0: the feed was just parked),
    /// the last of them finished at `now`, for a feed whose window ends at `window_end`
    /// ([`Schedule::window_end`]): `now` plus `first_retry` × 2^`attempts` (at most
    /// [`MAX_RETRY_INTERVAL`]), but never later than `window_end` while that is ahead, so
    /// the last attempt comes right when the window ends.
    pub fn next_attempt(
        &self,
        window_end: DateTime<Utc>,
        attempts: u32,
        now: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let delay = self
            .first_retry
            .checked_mul(1 << attempts.min(20))
            .map_or(MAX_RETRY_INTERVAL, |delay| delay.min(MAX_RETRY_INTERVAL));
        let next = now + chrono_duration(delay);
        if now < window_end {
            next.min(window_end)
        } else {
            next
        }
    }
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// The retry schedule of one parked feed: `<feed id>.schedule.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// The format version, [`SCHEDULE_VERSION`].
    pub version: u32,
    /// The feed that was parked (its first processing); names the files.
    pub feed_id: u64,
    /// The name the feed was dropped under: its retries report under it.
    pub file_name: String,
    /// The merchant folder (`inbox/<merchant>/`) it came from: its retries are bound to that
    /// merchant and report to `outbox/<merchant>/`, as it did.
    pub merchant_folder: Option<String>,
    /// SHA-256 of the bytes (checked when they are copied here).
    pub content_hash: String,
    /// When the feed was first processed: the window counts from here. The daemon writes
    /// the start of the attempt that processed it (whole seconds: that attempt's report
    /// names the window's end), or for a feed recovered at start its report's
    /// `processed_at`.
    pub first_processed_at: DateTime<Utc>,
    /// The end of the window the feed's latest report announced ("adjustd retries this
    /// message automatically until ..."): set when the feed is parked and by each retry
    /// that reports while the feed stays parked. The window never ends before it, even
    /// when `order_not_found_window_secs` was made shorter since ([`Schedule::window_end`]).
    /// Absent from schedules written before it was recorded (`None`: the window then ends
    /// where the current config puts it); left out of the file when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ends_at: Option<DateTime<Utc>>,
    /// Retries made so far (those rolled back for changing nothing included).
    pub attempts: u32,
    /// The feed id of the latest retry that committed, if any (a retry that would change
    /// nothing is rolled back and makes no feed).
    pub last_feed_id: Option<u64>,
    /// When the next retry is due.
    pub next_attempt_at: DateTime<Utc>,
    /// The claim token the next retry is recorded under in the store. Written here before
    /// the retry runs, so a crash after its commit and before this file is updated is
    /// recognised at the next start (its stored report is re-emitted, nothing is applied
    /// twice); a new token is chosen for each retry that committed (one rolled back for
    /// changing nothing recorded nothing under it, so the next retry keeps it).
    pub next_claim_token: String,
}

impl Schedule {
    /// The merchant folder as a [`MerchantId`]; `None` for the top-level inbox (a schedule
    /// whose merchant is not valid is refused when it is read).
    pub fn merchant(&self) -> Option<MerchantId> {
        self.merchant_folder.as_deref().and_then(MerchantId::new)
    }

    /// When this feed's window ends under `retry` (the current config): the end its
    /// reports announced ([`Schedule::window_ends_at`]), or later when `retry`'s window,
    /// counted from [`Schedule::first_processed_at`], ends later. So a longer window
    /// extends the retries, and a shorter one never takes back what a report promised.
    pub fn window_end(&self, retry: &RetryWindow) -> DateTime<Utc> {
        let current = retry.ends(self.first_processed_at);
        self.window_ends_at
            .map_or(current, |announced| announced.max(current))
    }

    /// True when an attempt starting at `now` is the last one: the feed's window
    /// ([`Schedule::window_end`]) has ended.
    pub fn is_last_attempt(&self, retry: &RetryWindow, now: DateTime<Utc>) -> bool {
        now >= self.window_end(retry)
    }

    /// True when `retry`'s window alone would end before the end the feed's reports
    /// announced (the window was made shorter since): that end is kept.
    pub fn keeps_announced_end(&self, retry: &RetryWindow) -> bool {
        self.window_ends_at
            .is_some_and(|announced| retry.ends(self.first_processed_at) < announced)
    }

    fn check(&self, feed_id: u64) -> Result<(), String> {
        if self.version != SCHEDULE_VERSION {
            return Err(format!(
                "version {} (this build reads {SCHEDULE_VERSION})",
                self.version
            ));
        }
        if self.feed_id != feed_id {
            return Err(format!("it names feed {}", self.feed_id));
        }
        if let Some(merchant) = &self.merchant_folder
            && MerchantId::new(merchant).is_none()
        {
            return Err(format!("{merchant:?} is not a merchant identifier"));
        }
        Ok(())
    }
}

/// Why a feed could not be parked; it then stays where it is (`work/`) for the next start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParkError {
    /// Copying the bytes or writing the schedule failed.
    #[error("writing {path}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file's bytes are not the ones that were processed (it changed since).
    #[error("{path} changed since it was processed (SHA-256 {found}, processed {expected})")]
    Changed {
        /// The file.
        path: PathBuf,
        /// The hash of the bytes processed.
        expected: String,
        /// The hash of the bytes found.
        found: String,
    },
}

/// What [`ParkedFeeds::park`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parking {
    /// The feed is parked now, with this schedule.
    Parked(Schedule),
    /// It was parked already (a restart after a crash between parking and moving the feed
    /// out of `work/`): its schedule is kept as it is, except that the end of the window the
    /// feed's re-emitted report announced is recorded when it is later than the one
    /// recorded ([`Schedule::window_ends_at`]).
    AlreadyParked(Schedule),
}

/// A retry in hand: the schedule as read under the lock, and the lock.
#[derive(Debug)]
pub struct Attempt {
    /// The schedule, read again after the lock was taken.
    pub schedule: Schedule,
    /// The parked copy of the feed's bytes, to process.
    pub feed_path: PathBuf,
    /// An exclusive `flock` on the copy, held until the attempt is rescheduled or unparked,
    /// so a second instance sharing the folder skips this feed meanwhile.
    _lock: File,
}

/// The parked folder, with the schedules of its feeds in memory.
#[derive(Debug)]
pub struct ParkedFeeds {
    folder: PathBuf,
    /// By feed id; each with the time it is due (the schedule's, or later after a busy
    /// lock or an unreadable schedule).
    entries: BTreeMap<u64, (Schedule, DateTime<Utc>)>,
}

impl ParkedFeeds {
    /// Creates the folder if needed and reads the schedules in it. A schedule that cannot
    /// be read, or whose copy is missing, is logged and left alone.
    ///
    /// # Errors
    /// The folder cannot be created or listed.
    pub fn open(folder: &Path) -> io::Result<ParkedFeeds> {
        fs::create_dir_all(folder)?;
        let mut parked = ParkedFeeds {
            folder: folder.to_path_buf(),
            entries: BTreeMap::new(),
        };
        parked.reload()?;
        Ok(parked)
    }

    /// The number of feeds parked in the folder, as of the last [`ParkedFeeds::reload`]
    /// and this instance's own parking since.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no feed is parked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when feed `feed_id` is parked, as of the last [`ParkedFeeds::reload`] and this
    /// instance's own changes since.
    pub fn contains(&self, feed_id: u64) -> bool {
        self.entries.contains_key(&feed_id)
    }

    /// Reads the folder again: the files are the truth (another instance sharing the folder
    /// may have parked or unparked feeds, an operator may have removed one). Removes
    /// temporary files and copies without a schedule that are older than an hour.
    ///
    /// # Errors
    /// The folder cannot be listed.
    pub fn reload(&mut self) -> io::Result<()> {
        let mut entries = BTreeMap::new();
        let mut copies = Vec::new();
        for entry in fs::read_dir(&self.folder)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name
                .strip_suffix(SCHEDULE_SUFFIX)
                .and_then(|id| id.parse::<u64>().ok())
            {
                match self.read_schedule(id) {
                    Ok(Some(schedule)) => {
                        // A later due time set in memory (a busy lock) stays.
                        let due = match self.entries.get(&id) {
                            Some((known, due)) if *known == schedule => *due,
                            _ => schedule.next_attempt_at,
                        };
                        entries.insert(id, (schedule, due));
                    }
                    Ok(None) => {}
                    Err(problem) => tracing::warn!(
                        file = %escaped(self.schedule_path(id).display()),
                        problem,
                        "cannot read the schedule of a parked feed; it is not retried until it is fixed or removed"
                    ),
                }
            } else if name.ends_with(BYTES_SUFFIX) || is_temporary(name) {
                copies.push(entry.path());
            }
        }
        for path in copies {
            let has_schedule = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_suffix(BYTES_SUFFIX))
                .and_then(|id| id.parse::<u64>().ok())
                .is_some_and(|id| entries.contains_key(&id));
            if !has_schedule && is_old(&path) {
                match fs::remove_file(&path) {
                    Ok(()) => tracing::info!(
                        file = %escaped(path.display()),
                        "removed a parked copy without a schedule, left over from an interrupted parking"
                    ),
                    Err(error) => tracing::warn!(
                        file = %escaped(path.display()),
                        error = %error,
                        "cannot remove a parked copy without a schedule"
                    ),
                }
            }
        }
        self.entries = entries;
        Ok(())
    }

    /// Parks the feed whose bytes are at `feed_file` under `schedule`: copies the bytes (to
    /// a temporary file in the folder, checking them against `schedule.content_hash`,
    /// fsync, rename, fsync the folder), then writes the schedule the same way. A feed
    /// parked already keeps its schedule, but takes `schedule.window_ends_at` when that is
    /// later than its own (see [`Parking::AlreadyParked`]).
    ///
    /// # Errors
    /// [`ParkError`]: nothing is parked then (a copy without a schedule may be left, which
    /// is ignored).
    pub fn park(&mut self, feed_file: &Path, schedule: Schedule) -> Result<Parking, ParkError> {
        let id = schedule.feed_id;
        match self.read_schedule(id) {
            Ok(Some(existing)) if existing.content_hash == schedule.content_hash => {
                let existing = self.record_announced_end(existing, schedule.window_ends_at);
                let due = existing.next_attempt_at;
                self.entries.insert(id, (existing.clone(), due));
                return Ok(Parking::AlreadyParked(existing));
            }
            Ok(Some(_)) => tracing::warn!(
                file = %escaped(self.schedule_path(id).display()),
                "a parked feed of other bytes has the same feed id (was the store replaced?); it is replaced"
            ),
            Ok(None) | Err(_) => {}
        }
        let bytes_path = self.bytes_path(id);
        let write_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ParkError::Write { path, source }
        };
        let mut temp = tempfile::Builder::new()
            .prefix(".adjustd-")
            .suffix(".tmp")
            .tempfile_in(&self.folder)
            .map_err(write_error(&bytes_path))?;
        let source = File::open(feed_file).map_err(write_error(feed_file))?;
        let mut reader = HashingReader::new(source);
        io::copy(&mut reader, temp.as_file_mut()).map_err(write_error(&bytes_path))?;
        let found = reader.finish().map_err(write_error(feed_file))?;
        if found != schedule.content_hash {
            return Err(ParkError::Changed {
                path: feed_file.to_path_buf(),
                expected: schedule.content_hash,
                found,
            });
        }
        temp.as_file()
            .sync_all()
            .map_err(write_error(&bytes_path))?;
        temp.persist(&bytes_path)
            .map_err(|error| error.error)
            .map_err(write_error(&bytes_path))?;
        // The copy's name must be durable before the schedule that refers to it.
        fsync_dir(&self.folder).map_err(write_error(&self.folder))?;
        self.write_schedule(&schedule)?;
        self.entries
            .insert(id, (schedule.clone(), schedule.next_attempt_at));
        Ok(Parking::Parked(schedule))
    }

    /// The schedules of the parked feeds, by feed id, as of the last
    /// [`ParkedFeeds::reload`] and this instance's own changes since.
    pub fn schedules(&self) -> impl Iterator<Item = &Schedule> {
        self.entries.values().map(|(schedule, _)| schedule)
    }

    /// The parked feed due first, and when.
    pub fn next_due(&self) -> Option<(u64, DateTime<Utc>)> {
        self.entries
            .iter()
            .map(|(id, (_, due))| (*id, *due))
            .min_by_key(|(id, due)| (*due, *id))
    }

    /// Takes the retry of parked feed `feed_id` in hand: locks its copy and reads its
    /// schedule again. `None` when another instance holds it (it is looked at again after
    /// `busy_delay`) or it is no longer parked.
    ///
    /// # Errors
    /// The copy or the schedule cannot be read; the feed is looked at again after
    /// `busy_delay`.
    pub fn begin(
        &mut self,
        feed_id: u64,
        now: DateTime<Utc>,
        busy_delay: Duration,
    ) -> io::Result<Option<Attempt>> {
        let later = now + chrono_duration(busy_delay);
        let feed_path = self.bytes_path(feed_id);
        let file = match File::open(&feed_path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                if self.schedule_path(feed_id).exists() {
                    self.postpone(feed_id, later);
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("the parked copy {} is missing", feed_path.display()),
                    ));
                }
                self.entries.remove(&feed_id);
                return Ok(None);
            }
            Err(error) => {
                self.postpone(feed_id, later);
                return Err(error);
            }
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                self.postpone(feed_id, later);
                return Ok(None);
            }
            Err(TryLockError::Error(error)) => {
                self.postpone(feed_id, later);
                return Err(error);
            }
        }
        match self.read_schedule(feed_id) {
            Ok(Some(schedule)) if schedule.next_attempt_at <= now => Ok(Some(Attempt {
                schedule,
                feed_path,
                _lock: file,
            })),
            // Retried by another instance meanwhile: not due any more.
            Ok(Some(schedule)) => {
                let due = schedule.next_attempt_at;
                self.entries.insert(feed_id, (schedule, due));
                Ok(None)
            }
            Ok(None) => {
                self.entries.remove(&feed_id);
                Ok(None)
            }
            Err(problem) => {
                self.postpone(feed_id, later);
                Err(io::Error::new(io::ErrorKind::InvalidData, problem))
            }
        }
    }

    /// Ends an attempt with the feed still parked under `schedule` (written atomically).
    ///
    /// # Errors
    /// The schedule cannot be written; the old one stays, so the retry is repeated (as the
    /// recovery of a committed retry when it used the old claim token).
    pub fn reschedule(&mut self, attempt: Attempt, schedule: Schedule) -> Result<(), ParkError> {
        let id = schedule.feed_id;
        let written = self.write_schedule(&schedule);
        match &written {
            Ok(()) => {
                let due = schedule.next_attempt_at;
                self.entries.insert(id, (schedule, due));
            }
            Err(_) => self.postpone(id, schedule.next_attempt_at),
        }
        drop(attempt);
        written
    }

    /// Ends an attempt by unparking the feed: removes the schedule, then the copy.
    ///
    /// # Errors
    /// A file cannot be removed. When the schedule is gone the feed is unparked anyway.
    pub fn unpark(&mut self, attempt: Attempt) -> io::Result<()> {
        let id = attempt.schedule.feed_id;
        self.entries.remove(&id);
        let removed = fs::remove_file(self.schedule_path(id));
        if let Err(error) = &removed
            && error.kind() != io::ErrorKind::NotFound
        {
            return removed;
        }
        match fs::remove_file(&attempt.feed_path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        drop(attempt);
        fsync_dir(&self.folder)
    }

    /// `existing` (the schedule of a feed parked already) with `announced` as its
    /// [`Schedule::window_ends_at`] when that is later, written under the lock on the copy
    /// (re-read under it). The feed is parked either way: when the lock is held elsewhere
    /// (another instance is retrying the feed) or a file cannot be read or written, the
    /// schedule stays as it is, with a warning.
    fn record_announced_end(
        &mut self,
        existing: Schedule,
        announced: Option<DateTime<Utc>>,
    ) -> Schedule {
        if announced <= existing.window_ends_at {
            return existing;
        }
        let id = existing.feed_id;
        let locked = File::open(self.bytes_path(id)).and_then(|copy| match copy.try_lock() {
            Ok(()) => Ok(Some(copy)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(error)) => Err(error),
        });
        let problem = match locked {
            Ok(Some(copy)) => match self.read_schedule(id) {
                Ok(Some(mut schedule)) => {
                    schedule.window_ends_at = schedule.window_ends_at.max(announced);
                    let written = self.write_schedule(&schedule);
                    drop(copy);
                    match written {
                        Ok(()) => return schedule,
                        Err(error) => format!("{:#}", anyhow::Error::new(error)),
                    }
                }
                // Unparked or spoiled meanwhile: nothing to record it in.
                Ok(None) | Err(_) => return existing,
            },
            Ok(None) => "its retry is in hand elsewhere".to_owned(),
            Err(error) => error.to_string(),
        };
        tracing::warn!(
            file = %escaped(self.schedule_path(id).display()),
            problem = %escaped(problem),
            "cannot record the later end of the window a parked feed's re-emitted report announced; its schedule is kept as it is"
        );
        existing
    }

    /// Keeps the feed off the retry list until `until` (in memory only).
    fn postpone(&mut self, feed_id: u64, until: DateTime<Utc>) {
        if let Some((_, due)) = self.entries.get_mut(&feed_id) {
            *due = (*due).max(until);
        }
    }

    fn bytes_path(&self, feed_id: u64) -> PathBuf {
        self.folder.join(format!("{feed_id}{BYTES_SUFFIX}"))
    }

    fn schedule_path(&self, feed_id: u64) -> PathBuf {
        self.folder.join(format!("{feed_id}{SCHEDULE_SUFFIX}"))
    }

    /// The schedule of `feed_id`; `None` when it has none. `Err` describes a schedule that
    /// cannot be used.
    fn read_schedule(&self, feed_id: u64) -> Result<Option<Schedule>, String> {
        let path = self.schedule_path(feed_id);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.to_string()),
        };
        let schedule: Schedule = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        schedule.check(feed_id)?;
        Ok(Some(schedule))
    }

    fn write_schedule(&self, schedule: &Schedule) -> Result<(), ParkError> {
        let path = self.schedule_path(schedule.feed_id);
        // Serializing a struct of strings, numbers and times cannot fail.
        let mut json = serde_json::to_string_pretty(schedule)
            .expect("invariant: a schedule of strings, numbers and times always serializes");
        json.push('\n');
        write_atomic(&path, json.as_bytes()).map_err(|source| ParkError::Write { path, source })
    }
}

fn is_temporary(name: &str) -> bool {
    name.starts_with(".adjustd-") && name.ends_with(".tmp")
}

fn is_old(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|metadata| metadata.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|age| age >= LEFTOVER_AGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("valid time")
    }

    fn window(window_secs: u64, first_secs: u64) -> RetryWindow {
        RetryWindow {
            window: Duration::from_secs(window_secs),
            first_retry: Duration::from_secs(first_secs),
        }
    }

    fn schedule(feed_id: u64, content_hash: &str) -> Schedule {
        Schedule {
            version: SCHEDULE_VERSION,
            feed_id,
            file_name: "refunds.xml".to_owned(),
            merchant_folder: Some("M1".to_owned()),
            content_hash: content_hash.to_owned(),
            first_processed_at: at(0),
            window_ends_at: Some(at(86_400)),
            attempts: 0,
            last_feed_id: None,
            next_attempt_at: at(60),
            next_claim_token: "00000000000000000001-1-0".to_owned(),
        }
    }

    fn sha256(bytes: &[u8]) -> String {
        HashingReader::new(bytes).finish().expect("in memory")
    }

    #[test]
    fn retries_double_up_to_an_hour_and_the_last_comes_when_the_window_ends() {
        let retry = window(86_400, 60);
        let first = at(0);
        let parked = schedule(1, "hash");
        let end = parked.window_end(&retry);
        assert_eq!(end, retry.ends(first));
        // Each retry is due the doubled delay after the previous one finished.
        let mut now = first;
        let mut delays = Vec::new();
        for attempts in 0..9 {
            let next = retry.next_attempt(end, attempts, now);
            delays.push((next - now).num_seconds());
            now = next;
        }
        assert_eq!(delays, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        // Close to the end of the window, the next attempt is the end itself: the last one.
        let near_end = at(86_400 - 100);
        assert_eq!(retry.next_attempt(end, 7, near_end), at(86_400));
        assert!(!parked.is_last_attempt(&retry, at(86_399)));
        assert!(parked.is_last_attempt(&retry, at(86_400)));
        // After the end (a last attempt that failed, say), the back-off alone counts.
        assert_eq!(retry.next_attempt(end, 30, at(90_000)), at(93_600));
        // A first retry longer than the window: the one retry is the last, at its end.
        let short = window(10, 60);
        assert_eq!(short.next_attempt(short.ends(first), 0, first), at(10));
    }

    #[test]
    fn a_window_beyond_the_calendar_ends_at_its_last_second_instead_of_panicking() {
        // `order_not_found_window_secs` has no upper bound; the daemon asks for the end of
        // the window before it processes every feed.
        let retry = window(u64::MAX, 60);
        let first = at(0);
        assert_eq!(retry.ends(first), DateTime::<Utc>::MAX_UTC);
        let parked = schedule(1, "hash");
        assert_eq!(parked.window_end(&retry), DateTime::<Utc>::MAX_UTC);
        assert!(!parked.is_last_attempt(&retry, at(86_400 * 365 * 1000)));
        assert_eq!(
            retry.next_attempt(parked.window_end(&retry), 0, first),
            at(60)
        );
    }

    #[test]
    fn a_shorter_window_never_ends_before_the_announced_end_and_a_longer_one_extends_it() {
        // Parked with a day's window: its report announced the end at(86_400).
        let parked = schedule(1, "hash");
        // The window made an hour long since: the announced end is kept.
        let shorter = window(3600, 60);
        assert!(parked.keeps_announced_end(&shorter));
        let end = parked.window_end(&shorter);
        assert_eq!(end, at(86_400));
        assert!(!parked.is_last_attempt(&shorter, at(3600)));
        assert!(!parked.is_last_attempt(&shorter, at(86_399)));
        assert!(parked.is_last_attempt(&shorter, at(86_400)));
        // The retries go on to that end, the last one right at it.
        assert_eq!(shorter.next_attempt(end, 30, at(7200)), at(10_800));
        assert_eq!(shorter.next_attempt(end, 30, at(86_000)), at(86_400));
        // Made two days long: the window extends, as the config says.
        let longer = window(2 * 86_400, 60);
        assert!(!parked.keeps_announced_end(&longer));
        assert_eq!(parked.window_end(&longer), at(2 * 86_400));
        assert!(!parked.is_last_attempt(&longer, at(86_400)));
        // Unchanged: the same end.
        assert!(!parked.keeps_announced_end(&window(86_400, 60)));
        assert_eq!(parked.window_end(&window(86_400, 60)), at(86_400));
        // A schedule from before the end was recorded: the current window alone, as then.
        let unrecorded = Schedule {
            window_ends_at: None,
            ..parked
        };
        assert!(!unrecorded.keeps_announced_end(&shorter));
        assert_eq!(unrecorded.window_end(&shorter), at(3600));
        assert!(unrecorded.is_last_attempt(&shorter, at(3600)));
    }

    #[test]
    fn schedules_round_trip_with_and_without_the_announced_end() {
        let dir = tempfile::tempdir().expect("temp dir");
        let folder = dir.path().join("parked");
        fs::create_dir_all(&folder).expect("folder");
        let hash = sha256(b"<AmazonEnvelope/>");
        fs::write(folder.join("1.xml"), b"<AmazonEnvelope/>").expect("copy");
        fs::write(folder.join("2.xml"), b"<AmazonEnvelope/>").expect("copy");

        // As this build writes it: the announced end is in the file and read back.
        let recorded = schedule(1, &hash);
        let json = serde_json::to_string_pretty(&recorded).expect("JSON");
        assert!(
            json.contains(r#""window_ends_at": "2027-01-16T08:00:00Z""#),
            "{json}"
        );
        fs::write(folder.join("1.schedule.json"), &json).expect("write");
        // As a build before it wrote it: no such field.
        let earlier = format!(
            r#"{{
  "version": 1,
  "feed_id": 2,
  "file_name": "refunds.xml",
  "merchant_folder": "M1",
  "content_hash": "{hash}",
  "first_processed_at": "2027-01-15T08:00:00Z",
  "attempts": 0,
  "last_feed_id": null,
  "next_attempt_at": "2027-01-15T08:01:00Z",
  "next_claim_token": "00000000000000000001-1-0"
}}
"#
        );
        fs::write(folder.join("2.schedule.json"), &earlier).expect("write");

        let parked = ParkedFeeds::open(&folder).expect("open");
        assert_eq!(parked.len(), 2, "both read");
        let read: Vec<&Schedule> = parked.schedules().collect();
        assert_eq!(read[0], &recorded);
        let unrecorded = Schedule {
            feed_id: 2,
            window_ends_at: None,
            ..schedule(2, &hash)
        };
        assert_eq!(read[1], &unrecorded);
        // Written again without one, it is left out, as before.
        assert_eq!(
            serde_json::to_string_pretty(&unrecorded).expect("JSON") + "\n",
            earlier
        );
    }

    #[test]
    fn parking_a_feed_parked_already_records_a_later_announced_end_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let folder = dir.path().join("parked");
        let feed = dir.path().join("feed.xml");
        fs::write(&feed, b"<AmazonEnvelope/>").expect("write feed");
        let hash = sha256(b"<AmazonEnvelope/>");
        let mut parked = ParkedFeeds::open(&folder).expect("open");
        parked.park(&feed, schedule(7, &hash)).expect("park");

        // Recovered from work/ and re-reported with an earlier end: the schedule stays.
        let mut earlier = schedule(7, &hash);
        earlier.window_ends_at = Some(at(3600));
        earlier.next_attempt_at = at(999);
        assert_eq!(
            parked.park(&feed, earlier).expect("park again"),
            Parking::AlreadyParked(schedule(7, &hash))
        );
        let mut later = schedule(7, &hash);
        later.window_ends_at = Some(at(90_000));
        later.next_attempt_at = at(999);
        // While another instance has its retry in hand, the schedule is left to it.
        let mut other = ParkedFeeds::open(&folder).expect("open again");
        let in_hand = other
            .begin(7, at(60), Duration::from_secs(5))
            .expect("begin")
            .expect("due");
        assert_eq!(
            parked.park(&feed, later.clone()).expect("park again"),
            Parking::AlreadyParked(schedule(7, &hash))
        );
        drop(in_hand);
        // With a later end: recorded, the rest of the schedule kept.
        let mut expected = schedule(7, &hash);
        expected.window_ends_at = Some(at(90_000));
        assert_eq!(
            parked.park(&feed, later).expect("park again"),
            Parking::AlreadyParked(expected.clone())
        );
        let reopened = ParkedFeeds::open(&folder).expect("reopen");
        assert_eq!(reopened.schedules().collect::<Vec<_>>(), [&expected]);
    }

    #[test]
    fn a_parked_feed_survives_reopening_and_is_unparked_with_its_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let folder = dir.path().join("parked");
        let feed = dir.path().join("feed.xml");
        fs::write(&feed, b"<AmazonEnvelope/>").expect("write feed");
        let hash = sha256(b"<AmazonEnvelope/>");

        let mut parked = ParkedFeeds::open(&folder).expect("open");
        assert!(parked.is_empty());
        let parking = parked.park(&feed, schedule(7, &hash)).expect("park");
        assert_eq!(parking, Parking::Parked(schedule(7, &hash)));
        assert_eq!(
            fs::read(folder.join("7.xml")).expect("copy"),
            b"<AmazonEnvelope/>"
        );
        // Parking it again (a restart before the feed left work/) keeps the schedule.
        let mut later = schedule(7, &hash);
        later.next_attempt_at = at(999);
        assert_eq!(
            parked.park(&feed, later).expect("park again"),
            Parking::AlreadyParked(schedule(7, &hash))
        );

        let mut reopened = ParkedFeeds::open(&folder).expect("reopen");
        assert_eq!(reopened.len(), 1);
        assert_eq!(reopened.next_due(), Some((7, at(60))));
        assert!(
            reopened
                .begin(7, at(59), Duration::from_secs(5))
                .expect("begin")
                .is_none(),
            "not due yet"
        );
        let attempt = reopened
            .begin(7, at(60), Duration::from_secs(5))
            .expect("begin")
            .expect("due");
        // Held: a second reader of the folder (another instance) skips it meanwhile.
        let mut other = ParkedFeeds::open(&folder).expect("open again");
        assert!(
            other
                .begin(7, at(60), Duration::from_secs(5))
                .expect("begin")
                .is_none()
        );
        assert_eq!(other.next_due(), Some((7, at(65))), "postponed");

        let mut next = attempt.schedule.clone();
        next.attempts = 1;
        next.next_attempt_at = at(180);
        reopened
            .reschedule(attempt, next.clone())
            .expect("reschedule");
        assert_eq!(reopened.next_due(), Some((7, at(180))));
        other.reload().expect("reload");
        assert_eq!(other.next_due(), Some((7, at(180))));

        let attempt = reopened
            .begin(7, at(180), Duration::from_secs(5))
            .expect("begin")
            .expect("due");
        reopened.unpark(attempt).expect("unpark");
        assert!(reopened.is_empty());
        assert!(
            fs::read_dir(&folder).expect("list").next().is_none(),
            "no files left"
        );
    }

    #[test]
    fn changed_bytes_and_bad_schedules_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let folder = dir.path().join("parked");
        let feed = dir.path().join("feed.xml");
        fs::write(&feed, b"<AmazonEnvelope/>").expect("write feed");
        let mut parked = ParkedFeeds::open(&folder).expect("open");
        let error = parked
            .park(&feed, schedule(3, &sha256(b"other bytes")))
            .expect_err("changed");
        assert!(matches!(error, ParkError::Changed { .. }), "{error}");
        assert!(parked.is_empty());
        assert!(!folder.join("3.schedule.json").exists());

        // A schedule of another version, or naming another feed, is not used.
        let hash = sha256(b"<AmazonEnvelope/>");
        let mut newer = schedule(4, &hash);
        newer.version = 2;
        fs::write(
            folder.join("4.schedule.json"),
            serde_json::to_string(&newer).expect("json"),
        )
        .expect("write");
        fs::write(
            folder.join("5.schedule.json"),
            serde_json::to_string(&schedule(6, &hash)).expect("json"),
        )
        .expect("write");
        fs::write(folder.join("8.schedule.json"), "{").expect("write");
        parked.reload().expect("reload");
        assert!(parked.is_empty());
    }
}
