//! Watching the inbox: notify events as wake-up hints (the callback only does `try_send`
//! into a bounded channel), or polling when the inbox is on a network or FUSE filesystem,
//! when a watch cannot be added, or when configured. Re-adds the watch when the inbox is
//! removed and recreated. Never decides readiness: every wake-up leads to a full listing.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::inbox::WatchMode;
use crate::metrics::Metrics;

/// What wakes the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Something changed in the inbox: list it.
    Event,
    /// Events may have been lost: list it (same action, counted apart).
    Rescan,
    /// Shutdown was requested.
    Shutdown,
}

/// The mode in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveMode {
    /// notify events plus periodic rescans.
    Notify,
    /// Periodic scans only.
    Poll,
}

/// Filesystem types whose changes inotify does not see (made on another machine, or by a
/// FUSE daemon that does not report them).
const REMOTE_FILESYSTEMS: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "ceph",
    "glusterfs",
    "lustre",
    "gpfs",
    "afs",
    "davfs",
    "fuse",
    "fuseblk",
    "virtiofs",
    "ncpfs",
    "coda",
];

/// True for filesystem types that need polling (`fuse.sshfs`, `nfs4`, ...).
pub fn is_remote_filesystem(fs_type: &str) -> bool {
    fs_type.starts_with("fuse.") || REMOTE_FILESYSTEMS.contains(&fs_type)
}

/// The filesystem type of the mount holding `path`, from `/proc/self/mountinfo`.
pub fn filesystem_type(path: &Path) -> Option<String> {
    let canonical = fs::canonicalize(path).ok()?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_type_for(&mountinfo, &canonical)
}

/// Finds the longest mount point containing `path` in a mountinfo text and returns its type.
fn mount_type_for(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let (before, after) = line.split_once(" - ")?;
        let mount_point = unescape(before.split(' ').nth(4)?);
        let fs_type = after.split(' ').next()?;
        let mount_point = Path::new(&mount_point);
        if path.starts_with(mount_point) {
            let depth = mount_point.components().count();
            if best
                .as_ref()
                .is_none_or(|(best_depth, _)| depth >= *best_depth)
            {
                best = Some((depth, fs_type.to_owned()));
            }
        }
    }
    best.map(|(_, fs_type)| fs_type)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The inbox watch. Owned by the worker; [`Watch::refresh`] is called before every listing.
pub struct Watch {
    inbox: PathBuf,
    sender: SyncSender<Wake>,
    metrics: Arc<Metrics>,
    overflowed: Arc<AtomicBool>,
    mode: ActiveMode,
    /// The mode last logged, so a change is logged once.
    logged_mode: Option<ActiveMode>,
    forced_poll: bool,
    watcher: Option<RecommendedWatcher>,
    /// (device, inode) of the inbox the watch is on, to notice a recreated inbox.
    watched: Option<(u64, u64)>,
}

impl Watch {
    /// Chooses the mode (see [`WatchMode`]) and adds the watch when notify is used.
    pub fn start(
        inbox: &Path,
        configured: WatchMode,
        sender: SyncSender<Wake>,
        metrics: Arc<Metrics>,
    ) -> Watch {
        let mut forced_poll = configured == WatchMode::Poll;
        if configured == WatchMode::Auto
            && let Some(fs_type) = filesystem_type(inbox)
            && is_remote_filesystem(&fs_type)
        {
            tracing::info!(inbox = %inbox.display(), fs_type, "inbox is on a network or fuse filesystem, polling it");
            forced_poll = true;
        }
        let mut watch = Watch {
            inbox: inbox.to_owned(),
            sender,
            metrics,
            overflowed: Arc::new(AtomicBool::new(false)),
            mode: ActiveMode::Poll,
            logged_mode: None,
            forced_poll,
            watcher: None,
            watched: None,
        };
        watch.refresh();
        watch
    }

    /// The mode in force.
    pub fn mode(&self) -> ActiveMode {
        self.mode
    }

    /// True (once) when the event queue overflowed since the last call.
    pub fn take_overflow(&self) -> bool {
        self.overflowed.swap(false, Ordering::Relaxed)
    }

    /// Re-adds the watch when the inbox was removed and recreated (or appeared); a missing
    /// inbox leaves the daemon polling until it comes back.
    pub fn refresh(&mut self) {
        if self.forced_poll {
            self.set_mode(ActiveMode::Poll);
            return;
        }
        let identity = fs::metadata(&self.inbox).ok().map(|m| (m.dev(), m.ino()));
        if identity == self.watched && self.watcher.is_some() {
            return;
        }
        if self.watched.is_some() {
            tracing::warn!(inbox = %self.inbox.display(), "inbox removed or replaced, re-adding the watch");
        }
        self.watcher = None;
        self.watched = None;
        let Some(identity) = identity else {
            self.set_mode(ActiveMode::Poll);
            return;
        };
        match self.add_watch() {
            Ok(watcher) => {
                self.watcher = Some(watcher);
                self.watched = Some(identity);
                self.set_mode(ActiveMode::Notify);
            }
            Err(error) => {
                tracing::warn!(inbox = %self.inbox.display(), error = %error, hint = watch_limit_hint(&error), "cannot watch the inbox, polling it");
                self.forced_poll = matches!(error.kind, notify::ErrorKind::MaxFilesWatch);
                self.set_mode(ActiveMode::Poll);
            }
        }
    }

    fn set_mode(&mut self, mode: ActiveMode) {
        if self.logged_mode != Some(mode) {
            self.logged_mode = Some(mode);
            tracing::info!(
                inbox = %self.inbox.display(),
                mode = match mode { ActiveMode::Notify => "notify", ActiveMode::Poll => "poll" },
                "watch mode"
            );
        }
        self.mode = mode;
        self.metrics.watch_mode(mode == ActiveMode::Poll);
    }

    fn add_watch(&self) -> notify::Result<RecommendedWatcher> {
        let sender = self.sender.clone();
        let metrics = Arc::clone(&self.metrics);
        let overflowed = Arc::clone(&self.overflowed);
        let limit_warned = AtomicBool::new(false);
        let handler = move |event: notify::Result<Event>| {
            let wake = match event {
                Ok(event) if event.need_rescan() => Wake::Rescan,
                Ok(event) if is_noise(&event.kind) => return,
                Ok(event) => {
                    tracing::trace!(?event, "notify event");
                    Wake::Event
                }
                Err(error) => {
                    // A folder made after the watch limit was reached (a new merchant's)
                    // is not watched: say so once, its feeds are found by the rescans.
                    if matches!(error.kind, notify::ErrorKind::MaxFilesWatch)
                        && !limit_warned.swap(true, Ordering::Relaxed)
                    {
                        tracing::warn!(error = %error, hint = watch_limit_hint(&error), "a new folder in the inbox cannot be watched; its feeds are found by the periodic rescan");
                    } else {
                        tracing::debug!(error = %error, "notify error, rescanning");
                    }
                    Wake::Rescan
                }
            };
            match sender.try_send(wake) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => {
                    // A rescan always follows: the worker drains the queue and lists the
                    // inbox, so dropping the event only costs a count.
                    metrics.event_dropped();
                    overflowed.store(true, Ordering::Relaxed);
                }
            }
        };
        // Symlinks in the inbox are never followed (the inbox leaves them alone), so a link
        // to a large tree cannot use up the inotify watches or flood us with events.
        let mut watcher = RecommendedWatcher::new(
            handler,
            notify::Config::default().with_follow_symlinks(false),
        )?;
        watcher.watch(&self.inbox, RecursiveMode::Recursive)?;
        Ok(watcher)
    }
}

/// What to change when the inbox cannot be watched for a system limit: the sysctl, named
/// (an inotify instance refused reads as "Too many open files", which points elsewhere).
fn watch_limit_hint(error: &notify::Error) -> &'static str {
    match &error.kind {
        notify::ErrorKind::MaxFilesWatch => {
            "the inotify watches of this user are used up: raise the sysctl fs.inotify.max_user_watches"
        }
        notify::ErrorKind::Io(io)
            if io.raw_os_error() == Some(rustix::io::Errno::MFILE.raw_os_error()) =>
        {
            "the inotify instances of this user are used up (sysctl fs.inotify.max_user_instances), or the process's open files (ulimit -n)"
        }
        _ => "",
    }
}

/// Events that never mean new content: opens and reads (ours included).
fn is_noise(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        EventKind::Access(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_refused_for_a_system_limit_names_the_sysctl() {
        let watches = notify::Error::new(notify::ErrorKind::MaxFilesWatch);
        assert!(watch_limit_hint(&watches).contains("fs.inotify.max_user_watches"));
        let instances = notify::Error::io(std::io::Error::from_raw_os_error(
            rustix::io::Errno::MFILE.raw_os_error(),
        ));
        assert!(watch_limit_hint(&instances).contains("fs.inotify.max_user_instances"));
        let other = notify::Error::generic("something else");
        assert_eq!(watch_limit_hint(&other), "");
    }

    const MOUNTINFO: &str = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:27 / /mnt/nas rw,relatime shared:2 - nfs4 nas:/export rw
31 30 0:28 / /mnt/nas/local\\040disk rw - ext4 /dev/vdb rw
32 22 0:29 / /home/me/remote rw - fuse.sshfs me@host: rw
";

    #[test]
    fn finds_the_innermost_mount() {
        let find = |path: &str| mount_type_for(MOUNTINFO, Path::new(path));
        assert_eq!(find("/var/adjustd/inbox").as_deref(), Some("ext4"));
        assert_eq!(find("/mnt/nas/inbox").as_deref(), Some("nfs4"));
        assert_eq!(find("/mnt/nas/local disk/inbox").as_deref(), Some("ext4"));
        assert_eq!(find("/mnt/nasty").as_deref(), Some("ext4"));
        assert_eq!(find("/home/me/remote/in").as_deref(), Some("fuse.sshfs"));
    }

    #[test]
    fn remote_filesystems_are_polled() {
        for fs_type in [
            "nfs",
            "nfs4",
            "cifs",
            "smb3",
            "9p",
            "fuse.sshfs",
            "fuse.rclone",
            "fuse",
        ] {
            assert!(is_remote_filesystem(fs_type), "{fs_type}");
        }
        for fs_type in ["ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs"] {
            assert!(!is_remote_filesystem(fs_type), "{fs_type}");
        }
    }

    #[test]
    fn this_machine_has_a_type_for_the_temp_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(filesystem_type(dir.path()).is_some());
    }

    #[test]
    fn events_wake_the_worker_and_recreated_inbox_is_rewatched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = dir.path().join("inbox");
        fs::create_dir(&inbox).expect("inbox");
        let (sender, receiver) = std::sync::mpsc::sync_channel(64);
        let mut watch = Watch::start(&inbox, WatchMode::Notify, sender, Arc::new(Metrics::new()));
        assert_eq!(watch.mode(), ActiveMode::Notify);
        let wait = std::time::Duration::from_secs(5);
        fs::write(inbox.join("a.xml"), b"x").expect("write");
        assert_eq!(receiver.recv_timeout(wait), Ok(Wake::Event));
        while receiver.try_recv().is_ok() {}
        fs::remove_dir_all(&inbox).expect("remove");
        watch.refresh();
        assert_eq!(watch.mode(), ActiveMode::Poll);
        fs::create_dir(&inbox).expect("recreate");
        watch.refresh();
        assert_eq!(watch.mode(), ActiveMode::Notify);
        while receiver.try_recv().is_ok() {}
        fs::write(inbox.join("b.xml"), b"x").expect("write");
        assert_eq!(receiver.recv_timeout(wait), Ok(Wake::Event));
    }

    #[test]
    fn forced_polling_never_adds_a_watch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sender, receiver) = std::sync::mpsc::sync_channel(64);
        let mut watch = Watch::start(
            dir.path(),
            WatchMode::Poll,
            sender,
            Arc::new(Metrics::new()),
        );
        watch.refresh();
        assert_eq!(watch.mode(), ActiveMode::Poll);
        assert!(watch.watcher.is_none());
        fs::write(dir.path().join("a.xml"), b"x").expect("write");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(receiver.try_recv().is_err(), "no events in polling mode");
    }

    #[test]
    fn full_queue_counts_dropped_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sender, _receiver) = std::sync::mpsc::sync_channel(1);
        let metrics = Arc::new(Metrics::new());
        let watch = Watch::start(dir.path(), WatchMode::Notify, sender, Arc::clone(&metrics));
        for i in 0..50 {
            fs::write(dir.path().join(format!("{i}.xml")), b"x").expect("write");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while metrics.events_dropped_total() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(metrics.events_dropped_total() > 0);
        assert!(watch.take_overflow());
        assert!(!watch.take_overflow());
    }
}
