//! The readiness state machine of inbox files: name gate, regular-file gate, settle time,
//! optional done marker and the waiting side of the content gate (XML not complete yet, or a
//! file that cannot be opened yet); also the watch on
//! temp-named files, which are never feeds but may be abandoned uploads. Pure: it is fed
//! directory listings and the current [`Instant`] and never touches the filesystem or the
//! clock itself, so every timing rule is unit-tested with controlled instants.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::time::{Duration, Instant};

use crate::inbox::glob;

/// The done marker of a feed named `name`: its name, byte for byte, then `suffix`
/// (`[inbox] done_marker`, `.done`).
pub fn marker_name(name: &OsStr, suffix: &str) -> OsString {
    let mut marker = name.to_os_string();
    marker.push(suffix);
    marker
}

/// Where a file sits in the inbox: the top level or a merchant folder, and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboxName {
    /// The merchant folder (`inbox/<merchant>/`), `None` for the top level.
    pub merchant: Option<String>,
    /// The file name exactly as on disk.
    pub name: OsString,
}

impl InboxName {
    /// The file name as text (lossy for names that are not UTF-8).
    pub fn display_name(&self) -> String {
        self.name.to_string_lossy().into_owned()
    }

    /// `merchant/name` or `name`, for logs.
    pub fn display_path(&self) -> String {
        match &self.merchant {
            Some(merchant) => format!("{merchant}/{}", self.display_name()),
            None => self.display_name(),
        }
    }
}

/// What identifies one version of a file's content without reading it. Any change of size,
/// mtime, ctime (which also moves on link, unlink and rename) or inode restarts the settle
/// time. mtime is only compared for equality, never with the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSignature {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i128,
    /// Inode number.
    pub ino: u64,
}

impl FileSignature {
    /// The status-change time: when the file arrived in its folder (a rename sets it) or
    /// last changed.
    pub fn changed_at(&self) -> std::time::SystemTime {
        let nanos = u64::try_from(self.ctime_ns).unwrap_or(0);
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos)
    }
}

/// The kind of a directory entry, as seen without following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file and its signature.
    File(FileSignature),
    /// A symbolic link (never followed).
    Symlink,
    /// A folder where no folder is expected (inside a merchant folder, or a top-level folder
    /// whose name is not a merchant identifier).
    Folder,
    /// A fifo, socket or device.
    Other,
    /// A merchant folder that cannot be listed (why, e.g. `PermissionDenied`): the feeds in
    /// it wait, unseen, until it can be read again.
    Unreadable(std::io::ErrorKind),
}

impl EntryKind {
    /// A short word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File(_) => "file",
            EntryKind::Symlink => "symlink",
            EntryKind::Folder => "folder",
            EntryKind::Other => "special file",
            EntryKind::Unreadable(_) => "unreadable folder",
        }
    }
}

/// One entry of a listing of the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Where it is.
    pub name: InboxName,
    /// What it is.
    pub kind: EntryKind,
}

/// The knobs of the state machine (a subset of the inbox configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyRules {
    /// How long size, mtime, ctime and inode must stay unchanged.
    pub settle: Duration,
    /// Names that are never feeds (temporary upload names).
    pub ignore: Vec<String>,
    /// With `Some(".done")`, `X` is ready only once `X.done` exists.
    pub done_marker: Option<String>,
    /// How long an unchanged file that the content gate holds back (incomplete XML, or a
    /// file that cannot be opened) waits before it is processed anyway (and reported as
    /// truncated or unreadable); also how long a temp-named file stays unchanged before it is
    /// reported stale, and how long a settled file waits for its done marker before it is
    /// reported as waiting. Named after its configuration key, `truncated_grace_secs`.
    pub truncated_grace: Duration,
    /// Longest wait between two content checks of an unchanged file held back.
    pub max_backoff: Duration,
}

/// A file that passed every gate known without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyFile {
    /// Where it is.
    pub name: InboxName,
    /// The signature that stayed unchanged for the settle time.
    pub signature: FileSignature,
}

/// What one listing changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Files ready to claim, oldest mtime first, then by folder and name.
    pub ready: Vec<ReadyFile>,
    /// Entries that are not regular files (or are unreadable merchant folders), each reported
    /// once while it stays.
    pub not_followed: Vec<Listed>,
    /// Temp-named files (ignored names: `*.filepart`, `.*`, …) that have not changed for the
    /// truncation grace: an upload whose client died leaves one behind, and nobody would
    /// notice. Each is reported once; a change (the upload resumed) and a new stall report it
    /// again.
    pub stale: Vec<Listed>,
    /// In done-marker mode, files unchanged for the truncation grace whose marker has not
    /// come: without it they are never processed, and an uploader that forgot it would go
    /// unnoticed. Each is reported once; a change reports it again after a new grace.
    pub marker_missing: Vec<InboxName>,
}

/// What to do with a ready file that the content gate holds back: its XML is still
/// incomplete, or it cannot be opened (an upload whose permissions are not set yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentDecision {
    /// Leave it in the inbox and check again at `next_check` (or earlier if it changes).
    WaitUntil {
        /// When to check again.
        next_check: Instant,
        /// True for the first wait since the file last changed, so the daemon can say once
        /// why it waits.
        first: bool,
    },
    /// The grace time passed without change: process it (the report says why: truncated,
    /// or unreadable).
    GiveUp,
}

/// The state machine. One per inbox; owned by the worker.
#[derive(Debug)]
pub struct Tracker {
    rules: ReadyRules,
    entries: HashMap<InboxName, Entry>,
    reported: HashSet<InboxName>,
    temp_named: HashMap<InboxName, TempNamed>,
}

/// A temp-named file: since when it is unchanged, and whether it was reported stale.
#[derive(Debug, Clone, Copy)]
struct TempNamed {
    signature: FileSignature,
    stable_since: Instant,
    stale: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    signature: FileSignature,
    first_seen: Instant,
    stable_since: Instant,
    /// Set while the content gate holds the file back (see [`Tracker::content_pending`]).
    pending: Option<Pending>,
    /// Reported in [`Observation::marker_missing`] since it last changed.
    marker_reported: bool,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    next_check: Instant,
    backoff: Duration,
}

impl Tracker {
    /// A tracker that knows no file yet.
    pub fn new(rules: ReadyRules) -> Tracker {
        Tracker {
            rules,
            entries: HashMap::new(),
            reported: HashSet::new(),
            temp_named: HashMap::new(),
        }
    }

    /// True when `name` is a marker file in done-marker mode. Compared as bytes: a feed's
    /// name need not be UTF-8, and its marker is its name with the suffix appended.
    pub fn is_marker(&self, name: &OsStr) -> bool {
        self.rules.done_marker.as_ref().is_some_and(|marker| {
            name.len() > marker.len() && name.as_bytes().ends_with(marker.as_bytes())
        })
    }

    /// True when the name gate turns `name` away.
    pub fn is_ignored(&self, name: &OsStr) -> bool {
        glob::matches_any(&self.rules.ignore, &name.to_string_lossy())
    }

    /// True when a regular file named `name` is tracked as a feed once listed: the name gate
    /// lets it through and it is not a done marker.
    pub fn is_candidate(&self, name: &OsStr) -> bool {
        !self.is_ignored(name) && !self.is_marker(name)
    }

    /// The marker file name for `name` in done-marker mode.
    pub fn marker_for(&self, name: &OsStr) -> Option<OsString> {
        self.rules
            .done_marker
            .as_ref()
            .map(|suffix| marker_name(name, suffix))
    }

    /// Takes a full listing of the inbox made at `now` and says which files are ready.
    /// Files absent from the listing are forgotten.
    pub fn observe(&mut self, listing: &[Listed], now: Instant) -> Observation {
        let mut observation = Observation::default();
        let mut present: HashSet<&InboxName> = HashSet::new();
        let mut markers: HashSet<(Option<&str>, &OsStr)> = HashSet::new();
        let mut files: Vec<(&InboxName, FileSignature)> = Vec::new();
        let mut temp_named: HashSet<&InboxName> = HashSet::new();
        for listed in listing {
            let name = listed.name.name.as_os_str();
            if self.is_ignored(name) {
                if let EntryKind::File(signature) = listed.kind {
                    temp_named.insert(&listed.name);
                    if self.is_stale_now(&listed.name, signature, now) {
                        observation.stale.push(listed.clone());
                    }
                }
                continue;
            }
            if self.is_marker(name) {
                markers.insert((listed.name.merchant.as_deref(), name));
                continue;
            }
            present.insert(&listed.name);
            match listed.kind {
                EntryKind::File(signature) => files.push((&listed.name, signature)),
                EntryKind::Symlink
                | EntryKind::Folder
                | EntryKind::Other
                | EntryKind::Unreadable(_) => {
                    if self.reported.insert(listed.name.clone()) {
                        observation.not_followed.push(listed.clone());
                    }
                }
            }
        }
        self.entries.retain(|name, _| present.contains(name));
        self.reported.retain(|name| present.contains(name));
        self.temp_named.retain(|name, _| temp_named.contains(name));

        for (name, signature) in files {
            let settle = self.rules.settle;
            let entry = self.entries.entry(name.clone()).or_insert(Entry {
                signature,
                first_seen: now,
                stable_since: now,
                pending: None,
                marker_reported: false,
            });
            if entry.signature != signature {
                entry.signature = signature;
                entry.stable_since = now;
                entry.pending = None;
                entry.marker_reported = false;
            }
            if now.saturating_duration_since(entry.stable_since) < settle {
                continue;
            }
            if let Some(pending) = entry.pending
                && now < pending.next_check
            {
                continue;
            }
            if let Some(suffix) = self.rules.done_marker.as_ref() {
                let marker = marker_name(&name.name, suffix);
                if !markers.contains(&(name.merchant.as_deref(), marker.as_os_str())) {
                    if !entry.marker_reported
                        && now.saturating_duration_since(entry.stable_since)
                            >= self.rules.truncated_grace
                    {
                        entry.marker_reported = true;
                        observation.marker_missing.push(name.clone());
                    }
                    continue;
                }
            }
            observation.ready.push(ReadyFile {
                name: name.clone(),
                signature,
            });
        }
        observation
            .ready
            .sort_by(|a, b| (a.signature.mtime_ns, &a.name).cmp(&(b.signature.mtime_ns, &b.name)));
        observation
    }

    /// How many temp-named files are stale now (reported and unchanged since).
    pub fn stale_partials(&self) -> usize {
        self.temp_named.values().filter(|temp| temp.stale).count()
    }

    /// Tracks a temp-named file seen at `now`; true when it has just become stale.
    fn is_stale_now(&mut self, name: &InboxName, signature: FileSignature, now: Instant) -> bool {
        let temp = self.temp_named.entry(name.clone()).or_insert(TempNamed {
            signature,
            stable_since: now,
            stale: false,
        });
        if temp.signature != signature {
            *temp = TempNamed {
                signature,
                stable_since: now,
                stale: false,
            };
        }
        if temp.stale
            || now.saturating_duration_since(temp.stable_since) < self.rules.truncated_grace
        {
            return false;
        }
        temp.stale = true;
        true
    }

    /// Records that the content gate held `name` back at `now` (its XML is incomplete, or it
    /// cannot be opened), and says whether to wait (with exponential backoff from 1 s up to
    /// the maximum) or to give up waiting: once the file has not changed for the grace time.
    /// Any change (a `chmod` too: it moves the ctime) starts the settle and the grace again.
    pub fn content_pending(&mut self, name: &InboxName, now: Instant) -> ContentDecision {
        let Some(entry) = self.entries.get_mut(name) else {
            return ContentDecision::WaitUntil {
                next_check: now,
                first: true,
            };
        };
        let deadline = entry.stable_since + self.rules.truncated_grace;
        if now >= deadline {
            return ContentDecision::GiveUp;
        }
        let backoff = match entry.pending {
            None => Duration::from_secs(1),
            Some(pending) => (pending.backoff * 2).min(self.rules.max_backoff),
        };
        let next_check = (now + backoff).min(deadline);
        let first = entry.pending.is_none();
        entry.pending = Some(Pending {
            next_check,
            backoff,
        });
        ContentDecision::WaitUntil { next_check, first }
    }

    /// Forgets `name` (claimed, or vanished).
    pub fn forget(&mut self, name: &InboxName) {
        self.entries.remove(name);
    }

    /// The earliest instant after `now` at which a new listing could find a file ready that
    /// is not ready now (end of a settle time or of a content backoff), if any. Files that
    /// are settled but wait for something else (their done marker) have no deadline: only a
    /// change in the folder (an event or the periodic scan) can make them ready.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.entries
            .values()
            .map(|entry| {
                let settled = entry.stable_since + self.rules.settle;
                match entry.pending {
                    Some(pending) => settled.max(pending.next_check),
                    None => settled,
                }
            })
            .filter(|deadline| *deadline > now)
            .min()
    }

    /// True when `name` is waiting (seen, not claimed).
    pub fn is_waiting(&self, name: &InboxName) -> bool {
        self.entries.contains_key(name)
    }

    /// The files waiting (seen, not claimed), each with when it was first seen.
    pub fn waiting_files(&self) -> impl Iterator<Item = (&InboxName, Instant)> {
        self.entries
            .iter()
            .map(|(name, entry)| (name, entry.first_seen))
    }

    /// How many files are waiting (seen, not claimed) and since when the oldest was first
    /// seen.
    pub fn waiting(&self) -> (usize, Option<Instant>) {
        let oldest = self.entries.values().map(|entry| entry.first_seen).min();
        (self.entries.len(), oldest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn rules() -> ReadyRules {
        ReadyRules {
            settle: 200 * MS,
            ignore: [".*", "*.tmp", "*.part", "*.partial", "*.filepart", "*~"]
                .map(String::from)
                .to_vec(),
            done_marker: None,
            truncated_grace: Duration::from_secs(300),
            max_backoff: Duration::from_secs(64),
        }
    }

    fn file(name: &str, size: u64, mtime_ns: i128) -> Listed {
        Listed {
            name: top(name),
            kind: EntryKind::File(FileSignature {
                size,
                mtime_ns,
                ctime_ns: mtime_ns,
                ino: 7,
            }),
        }
    }

    fn top(name: &str) -> InboxName {
        InboxName {
            merchant: None,
            name: OsString::from(name),
        }
    }

    fn ready_names(observation: &Observation) -> Vec<String> {
        observation
            .ready
            .iter()
            .map(|ready| ready.name.display_path())
            .collect()
    }

    #[test]
    fn file_is_ready_only_after_settle_without_change() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(rules());
        assert!(
            tracker
                .observe(&[file("a.xml", 10, 1)], t0)
                .ready
                .is_empty()
        );
        assert!(
            tracker
                .observe(&[file("a.xml", 10, 1)], t0 + 199 * MS)
                .ready
                .is_empty()
        );
        assert_eq!(tracker.next_deadline(t0 + 199 * MS), Some(t0 + 200 * MS));
        let observation = tracker.observe(&[file("a.xml", 10, 1)], t0 + 200 * MS);
        assert_eq!(ready_names(&observation), ["a.xml"]);
    }

    #[test]
    fn growth_or_touch_restarts_the_settle_time() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(rules());
        tracker.observe(&[file("a.xml", 10, 1)], t0);
        // A writer pausing shorter than the settle time: still not ready.
        tracker.observe(&[file("a.xml", 20, 2)], t0 + 150 * MS);
        assert!(
            tracker
                .observe(&[file("a.xml", 20, 2)], t0 + 300 * MS)
                .ready
                .is_empty()
        );
        // Same size, new mtime (rewritten in place) also restarts it.
        tracker.observe(&[file("a.xml", 20, 3)], t0 + 340 * MS);
        assert!(
            tracker
                .observe(&[file("a.xml", 20, 3)], t0 + 400 * MS)
                .ready
                .is_empty()
        );
        assert_eq!(tracker.next_deadline(t0 + 400 * MS), Some(t0 + 540 * MS));
        assert_eq!(
            ready_names(&tracker.observe(&[file("a.xml", 20, 3)], t0 + 540 * MS)),
            ["a.xml"]
        );
    }

    #[test]
    fn inode_or_ctime_change_restarts_the_settle_time() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(rules());
        let mut listed = file("a.xml", 10, 1);
        tracker.observe(std::slice::from_ref(&listed), t0);
        if let EntryKind::File(signature) = &mut listed.kind {
            signature.ino = 8;
        }
        tracker.observe(std::slice::from_ref(&listed), t0 + 100 * MS);
        assert!(
            tracker
                .observe(std::slice::from_ref(&listed), t0 + 250 * MS)
                .ready
                .is_empty()
        );
        if let EntryKind::File(signature) = &mut listed.kind {
            signature.ctime_ns = 99;
        }
        tracker.observe(std::slice::from_ref(&listed), t0 + 260 * MS);
        assert!(
            tracker
                .observe(std::slice::from_ref(&listed), t0 + 400 * MS)
                .ready
                .is_empty()
        );
        assert_eq!(tracker.observe(&[listed], t0 + 460 * MS).ready.len(), 1);
    }

    #[test]
    fn ignored_names_are_never_ready() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(rules());
        let listing = [
            file(".feed.xml.x1Y2z3.partial", 1, 1),
            file("feed.xml.x1Y2z3.partial", 1, 1),
            file("feed.xml.filepart", 1, 1),
            file("feed.tmp", 1, 1),
            file("feed.xml~", 1, 1),
            file(".hidden.xml", 1, 1),
        ];
        tracker.observe(&listing, t0);
        assert!(tracker.observe(&listing, t0 + 10_000 * MS).ready.is_empty());
        assert_eq!(tracker.waiting().0, 0);
    }

    #[test]
    fn temp_named_files_are_reported_stale_once_after_the_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(300);
        let mut tracker = Tracker::new(rules());
        let partial = file("feed.xml.filepart", 10, 1);
        let hidden = file(".feed.xml.Ab12Cd.partial", 10, 1);
        let listing = [partial.clone(), hidden.clone(), file("feed.xml", 1, 1)];
        assert!(tracker.observe(&listing, t0).stale.is_empty());
        assert!(tracker.observe(&listing, t0 + grace - MS).stale.is_empty());
        let observation = tracker.observe(&listing, t0 + grace);
        assert_eq!(observation.stale, [partial.clone(), hidden.clone()]);
        assert_eq!(tracker.stale_partials(), 2);
        // Reported once, not on every scan.
        assert!(tracker.observe(&listing, t0 + 2 * grace).stale.is_empty());
        // The upload resumes (grows), then stalls again: reported again after a new grace.
        let resumed = file("feed.xml.filepart", 20, 2);
        let listing = [resumed.clone(), hidden];
        assert!(tracker.observe(&listing, t0 + 2 * grace).stale.is_empty());
        assert_eq!(tracker.stale_partials(), 1);
        assert_eq!(tracker.observe(&listing, t0 + 3 * grace).stale, [resumed]);
        // Gone: forgotten.
        tracker.observe(&[], t0 + 3 * grace);
        assert_eq!(tracker.stale_partials(), 0);
        // Folders and links with temp names are not uploads.
        let link = Listed {
            name: top("x.tmp"),
            kind: EntryKind::Symlink,
        };
        tracker.observe(std::slice::from_ref(&link), t0);
        assert!(tracker.observe(&[link], t0 + 2 * grace).stale.is_empty());
    }

    #[test]
    fn non_regular_entries_are_reported_once_while_present() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(rules());
        let link = Listed {
            name: top("link.xml"),
            kind: EntryKind::Symlink,
        };
        let observation = tracker.observe(std::slice::from_ref(&link), t0);
        assert_eq!(observation.not_followed, std::slice::from_ref(&link));
        assert!(
            tracker
                .observe(std::slice::from_ref(&link), t0 + MS)
                .not_followed
                .is_empty()
        );
        assert!(tracker.observe(&[], t0 + 2 * MS).not_followed.is_empty());
        assert_eq!(
            tracker
                .observe(std::slice::from_ref(&link), t0 + 3 * MS)
                .not_followed,
            [link]
        );
    }

    #[test]
    fn ready_files_come_in_mtime_then_name_order() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(rules());
        let mut merchant_file = file("a.xml", 1, 5);
        merchant_file.name.merchant = Some("M1".into());
        let listing = [
            file("c.xml", 1, 5),
            file("b.xml", 1, 9),
            merchant_file,
            file("z.xml", 1, 1),
        ];
        tracker.observe(&listing, t0);
        let observation = tracker.observe(&listing, t0 + 200 * MS);
        assert_eq!(
            ready_names(&observation),
            ["z.xml", "c.xml", "M1/a.xml", "b.xml"]
        );
    }

    #[test]
    fn done_marker_mode_waits_for_the_marker() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(ReadyRules {
            done_marker: Some(".done".into()),
            ..rules()
        });
        tracker.observe(&[file("a.xml", 1, 1)], t0);
        assert!(
            tracker
                .observe(&[file("a.xml", 1, 1)], t0 + 10_000 * MS)
                .ready
                .is_empty()
        );
        // Settled and waiting for its marker: no deadline, so the worker does not spin.
        assert_eq!(tracker.next_deadline(t0 + 10_000 * MS), None);
        let with_marker = [file("a.xml", 1, 1), file("a.xml.done", 0, 2)];
        assert_eq!(
            ready_names(&tracker.observe(&with_marker, t0 + 10_001 * MS)),
            ["a.xml"]
        );
        // The marker alone is not a feed.
        assert_eq!(tracker.waiting().0, 1);
        assert_eq!(
            tracker.marker_for(OsStr::new("a.xml")),
            Some(OsString::from("a.xml.done"))
        );
    }

    #[test]
    fn done_marker_mode_matches_names_that_are_not_utf8() {
        use std::os::unix::ffi::OsStringExt as _;
        let t0 = Instant::now();
        let mut tracker = Tracker::new(ReadyRules {
            done_marker: Some(".done".into()),
            ..rules()
        });
        let raw = |bytes: &[u8]| {
            let mut listed = file("placeholder", 1, 1);
            listed.name.name = OsString::from_vec(bytes.to_vec());
            listed
        };
        let feed = raw(b"caf\xe9 \xff.xml");
        let marker = raw(b"caf\xe9 \xff.xml.done");
        tracker.observe(std::slice::from_ref(&feed), t0);
        let listing = [feed.clone(), marker.clone()];
        let observation = tracker.observe(&listing, t0 + 200 * MS);
        assert_eq!(observation.ready.len(), 1, "{observation:?}");
        assert_eq!(observation.ready[0].name, feed.name);
        // The marker is a marker, not a second file waiting (for a marker of its own).
        assert!(tracker.is_marker(&marker.name.name));
        assert_eq!(tracker.waiting().0, 1);
        assert_eq!(tracker.marker_for(&feed.name.name), Some(marker.name.name));
    }

    #[test]
    fn a_file_waiting_for_its_marker_is_reported_once_after_the_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(300);
        let mut tracker = Tracker::new(ReadyRules {
            done_marker: Some(".done".into()),
            ..rules()
        });
        let listing = [file("a.xml", 1, 1)];
        tracker.observe(&listing, t0);
        // Settled, but the grace counts from the last change, not from the settling.
        assert!(
            tracker
                .observe(&listing, t0 + grace - MS)
                .marker_missing
                .is_empty()
        );
        assert_eq!(
            tracker.observe(&listing, t0 + grace).marker_missing,
            [top("a.xml")]
        );
        assert!(
            tracker
                .observe(&listing, t0 + 2 * grace)
                .marker_missing
                .is_empty()
        );
        // Rewritten: reported again after a new grace.
        let rewritten = [file("a.xml", 2, 2)];
        let changed_at = t0 + 2 * grace + MS;
        tracker.observe(&rewritten, changed_at);
        assert!(
            tracker
                .observe(&rewritten, changed_at + grace - MS)
                .marker_missing
                .is_empty()
        );
        assert_eq!(
            tracker
                .observe(&rewritten, changed_at + grace)
                .marker_missing,
            [top("a.xml")]
        );
        // Without done-marker mode nothing waits for a marker.
        let mut plain = Tracker::new(rules());
        plain.observe(&listing, t0);
        assert!(
            plain
                .observe(&listing, t0 + grace)
                .marker_missing
                .is_empty()
        );
    }

    #[test]
    fn held_back_content_backs_off_then_gives_up_after_the_grace() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(ReadyRules {
            truncated_grace: Duration::from_secs(10),
            max_backoff: Duration::from_secs(4),
            ..rules()
        });
        let listing = [file("a.xml", 10, 1)];
        tracker.observe(&listing, t0);
        let mut now = t0 + 200 * MS;
        let mut waits = Vec::new();
        loop {
            assert_eq!(tracker.observe(&listing, now).ready.len(), 1);
            match tracker.content_pending(&top("a.xml"), now) {
                ContentDecision::WaitUntil { next_check, first } => {
                    assert!(tracker.observe(&listing, next_check - MS).ready.is_empty());
                    assert_eq!(tracker.next_deadline(next_check - MS), Some(next_check));
                    waits.push((next_check - now, first));
                    now = next_check;
                }
                ContentDecision::GiveUp => break,
            }
        }
        // 1 s, 2 s, 4 s (capped), then clipped to the grace measured from the last change;
        // only the first wait is the first.
        assert_eq!(
            waits,
            [
                (1000 * MS, true),
                (2000 * MS, false),
                (4000 * MS, false),
                (2800 * MS, false)
            ]
        );
        assert_eq!(now, t0 + Duration::from_secs(10));
    }

    #[test]
    fn held_back_file_that_changes_starts_over() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(rules());
        tracker.observe(&[file("a.xml", 10, 1)], t0);
        tracker.observe(&[file("a.xml", 10, 1)], t0 + 200 * MS);
        assert!(matches!(
            tracker.content_pending(&top("a.xml"), t0 + 200 * MS),
            ContentDecision::WaitUntil { first: true, .. }
        ));
        // The rest of the upload arrives: settle again, then ready at once (no backoff left).
        tracker.observe(&[file("a.xml", 20, 2)], t0 + 300 * MS);
        assert_eq!(
            tracker
                .observe(&[file("a.xml", 20, 2)], t0 + 500 * MS)
                .ready
                .len(),
            1
        );
    }

    #[test]
    fn a_chmod_while_held_back_starts_the_settle_and_the_grace_again() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let mut tracker = Tracker::new(ReadyRules {
            truncated_grace: grace,
            ..rules()
        });
        let unreadable = file("a.xml", 10, 1);
        tracker.observe(std::slice::from_ref(&unreadable), t0);
        let ready = tracker.observe(std::slice::from_ref(&unreadable), t0 + 200 * MS);
        assert_eq!(ready.ready.len(), 1);
        assert!(matches!(
            tracker.content_pending(&top("a.xml"), t0 + 200 * MS),
            ContentDecision::WaitUntil { first: true, .. }
        ));
        // chmod: same size and mtime, a new ctime.
        let mut chmodded = unreadable;
        if let EntryKind::File(signature) = &mut chmodded.kind {
            signature.ctime_ns = 2;
        }
        let changed_at = t0 + 9000 * MS;
        let listing = std::slice::from_ref(&chmodded);
        assert!(tracker.observe(listing, changed_at).ready.is_empty());
        // Settled again: ready at once, no backoff left from before.
        assert_eq!(
            tracker.observe(listing, changed_at + 200 * MS).ready.len(),
            1
        );
        // Still held back (a mode that still does not let it be read): a first wait again,
        // and the grace counts from the change, not from the first sight.
        assert!(matches!(
            tracker.content_pending(&top("a.xml"), changed_at + 200 * MS),
            ContentDecision::WaitUntil { first: true, .. }
        ));
        assert!(matches!(
            tracker.content_pending(&top("a.xml"), t0 + grace),
            ContentDecision::WaitUntil { first: false, .. }
        ));
        assert_eq!(
            tracker.content_pending(&top("a.xml"), changed_at + grace),
            ContentDecision::GiveUp
        );
    }

    #[test]
    fn vanished_and_forgotten_files_stop_waiting() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(rules());
        tracker.observe(&[file("a.xml", 1, 1), file("b.xml", 1, 1)], t0);
        assert_eq!(tracker.waiting(), (2, Some(t0)));
        tracker.observe(&[file("a.xml", 1, 1)], t0 + MS);
        tracker.forget(&top("a.xml"));
        assert_eq!(tracker.waiting(), (0, None));
        assert!(!tracker.is_waiting(&top("a.xml")));
        assert_eq!(tracker.waiting_files().count(), 0);
        assert_eq!(tracker.next_deadline(t0), None);
    }
}
