//! The watched folder: its configuration and layout check, listing the inbox, the XML
//! content gate, claims by atomic rename into `work/` (with a claim token in the name and a
//! kernel lock held while the feed is in hand; a file that cannot be opened is claimed
//! without one, to be reported as unreadable), recovery of `work/` leftovers, and the final
//! move to `archive/` or `failed/`. Readiness timing lives in [`ready`], notify and polling in
//! [`watch`]. This module never parses feeds beyond the completeness check and never touches
//! the store; the daemon decides when each step runs.

pub mod glob;
pub mod ready;
pub mod watch;

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, TryLockError};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::feed::Limits;
use crate::inbox::ready::{EntryKind, FileSignature, InboxName, Listed, ReadyFile};
use crate::model::MerchantId;
use crate::report::{clean_file_name, fsync_dir};
use crate::telemetry::escaped;

/// How the inbox is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchMode {
    /// notify events as wake-up hints, unless the inbox is on a network or FUSE filesystem
    /// or the watch cannot be added; then polling.
    #[default]
    Auto,
    /// Always notify (falls back to polling only when the watch cannot be added).
    Notify,
    /// Always poll every `poll_interval`.
    Poll,
}

impl WatchMode {
    /// `auto`, `notify` or `poll`.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchMode::Auto => "auto",
            WatchMode::Notify => "notify",
            WatchMode::Poll => "poll",
        }
    }
}

/// The default ignore patterns (temporary upload names of common clients).
pub const DEFAULT_IGNORE: [&str; 6] = [".*", "*.tmp", "*.part", "*.partial", "*.filepart", "*~"];

/// The watched folder's configuration, resolved (absolute paths, durations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxConfig {
    /// Where feeds are dropped (`inbox/` and `inbox/<merchant>/`).
    pub inbox: PathBuf,
    /// Where claimed feeds sit while processed.
    pub work: PathBuf,
    /// Where processed feeds go (`archive/YYYY-MM-DD/`).
    pub archive: PathBuf,
    /// Where rejected or unprocessable feeds go (`failed/YYYY-MM-DD/`).
    pub failed: PathBuf,
    /// Where reports go (the pipeline writes there; checked here for the layout rules).
    pub outbox: PathBuf,
    /// How long size, mtime, ctime and inode must stay unchanged before a file is ready.
    pub settle: Duration,
    /// Name patterns that are never feeds (`*`, `?`, case-insensitive).
    pub ignore: Vec<String>,
    /// How long an unchanged file whose XML root never closes, or that cannot be opened,
    /// waits before it is processed anyway and reported as truncated or unreadable (also
    /// how long a temp-named file stays unchanged before it is logged as stale).
    pub truncated_grace: Duration,
    /// With `Some(".done")`, `NAME` is ready only once `NAME.done` exists; the marker is
    /// removed when the feed is claimed, and made again when the claim is given back
    /// ([`Claim::release`]).
    pub done_marker: Option<String>,
    /// Merchants the top-level inbox may speak for (`None`: any). Merchant folders are bound
    /// to their own merchant regardless.
    pub allowed_merchants: Option<Vec<MerchantId>>,
    /// notify, polling, or chosen from the filesystem.
    pub watch: WatchMode,
    /// Time between scans in polling mode.
    pub poll_interval: Duration,
    /// Time between safety rescans in notify mode.
    pub rescan_interval: Duration,
}

impl InboxConfig {
    /// A configuration with the documented defaults for everything but the folders.
    pub fn with_defaults(
        inbox: PathBuf,
        work: PathBuf,
        archive: PathBuf,
        failed: PathBuf,
        outbox: PathBuf,
    ) -> InboxConfig {
        InboxConfig {
            inbox,
            work,
            archive,
            failed,
            outbox,
            settle: Duration::from_secs(1),
            ignore: DEFAULT_IGNORE.iter().map(|p| (*p).to_owned()).collect(),
            truncated_grace: Duration::from_secs(300),
            done_marker: None,
            allowed_merchants: None,
            watch: WatchMode::Auto,
            poll_interval: Duration::from_secs(2),
            rescan_interval: Duration::from_secs(30),
        }
    }

    fn roles(&self) -> [(&'static str, &Path); 5] {
        [
            ("inbox", &self.inbox),
            ("work", &self.work),
            ("archive", &self.archive),
            ("failed", &self.failed),
            ("outbox", &self.outbox),
        ]
    }
}

/// Why the folder layout is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A folder could not be created or inspected.
    #[error("cannot create or open the {role} folder {path}")]
    Folder {
        /// `inbox`, `work`, `archive`, `failed`, `outbox` or `parked`.
        role: &'static str,
        /// The folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Two roles share one folder, or one is inside the other.
    #[error(
        "the {role} folder {path} is inside (or the same as) the {other_role} folder {other_path}: \
         give each of inbox, work, archive, failed, outbox and parked its own folder, none inside another"
    )]
    Nested {
        /// The inner folder's role.
        role: &'static str,
        /// The inner folder.
        path: PathBuf,
        /// The outer folder's role.
        other_role: &'static str,
        /// The outer folder.
        other_path: PathBuf,
    },
    /// A folder is on another filesystem than the inbox, so moves would not be atomic renames.
    #[error(
        "the {role} folder {path} is on another filesystem than the inbox {inbox}: \
         moves between them would not be atomic renames; put them on one filesystem"
    )]
    OtherFilesystem {
        /// The folder's role.
        role: &'static str,
        /// The folder.
        path: PathBuf,
        /// The inbox.
        inbox: PathBuf,
    },
}

/// Refuses a layout where moves would not be atomic renames or where the daemon would watch
/// its own output: work, archive, failed and outbox must be distinct, none inside another or
/// inside the inbox, and all on the inbox's filesystem. Missing folders are created once the
/// nesting is accepted, so a refused layout leaves no folder behind (one inside the inbox
/// would look like a merchant folder at the next start).
///
/// # Errors
/// [`LayoutError`] naming the folders.
pub fn check_layout(config: &InboxConfig) -> Result<(), LayoutError> {
    let mut resolved = Vec::new();
    for (role, path) in config.roles() {
        resolved.push((role, path, resolve_uncreated(role, path)?));
    }
    for (role, path, canonical) in &resolved {
        for (other_role, other_path, other_canonical) in &resolved {
            if role != other_role && canonical.starts_with(other_canonical) {
                return Err(LayoutError::Nested {
                    role,
                    path: path.to_path_buf(),
                    other_role,
                    other_path: other_path.to_path_buf(),
                });
            }
        }
    }
    let mut devices = Vec::new();
    for (role, path, _) in &resolved {
        let folder_error = |source| LayoutError::Folder {
            role,
            path: path.to_path_buf(),
            source,
        };
        fs::create_dir_all(path).map_err(folder_error)?;
        devices.push(fs::metadata(path).map_err(folder_error)?.dev());
    }
    for ((role, path, _), device) in resolved.iter().zip(&devices).skip(1) {
        if *device != devices[0] {
            return Err(LayoutError::OtherFilesystem {
                role,
                path: path.to_path_buf(),
                inbox: config.inbox.clone(),
            });
        }
    }
    Ok(())
}

/// `path` resolved as it will be once created: its nearest existing ancestor resolved
/// (symlinks, `..`), plus the rest of the path. Nothing is created.
fn resolve_uncreated(role: &'static str, path: &Path) -> Result<PathBuf, LayoutError> {
    let mut existing = path;
    let mut rest = Vec::new();
    while !existing.exists() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        rest.push(name);
        existing = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
    }
    let mut canonical = fs::canonicalize(existing).map_err(|source| LayoutError::Folder {
        role,
        path: path.to_owned(),
        source,
    })?;
    canonical.extend(rest.iter().rev());
    Ok(canonical)
}

/// Refuses a folder with another `role` than the ones [`check_layout`] checks (the daemon's
/// `parked` folder) inside, around or the same as any of those, by the same rule, and
/// creates it if it is not refused. It may be on another filesystem: nothing is renamed into
/// or out of it. Call it after [`check_layout`], which creates the others.
///
/// # Errors
/// [`LayoutError`] naming the folders.
pub fn check_other_folder(
    config: &InboxConfig,
    role: &'static str,
    path: &Path,
) -> Result<(), LayoutError> {
    // Checked before it is created, so a refused folder is not left inside the inbox.
    let canonical = resolve_uncreated(role, path)?;
    for (other_role, other_path) in config.roles() {
        let Ok(other) = fs::canonicalize(other_path) else {
            continue;
        };
        if canonical.starts_with(&other) {
            return Err(LayoutError::Nested {
                role,
                path: path.to_path_buf(),
                other_role,
                other_path: other_path.to_path_buf(),
            });
        }
        if other.starts_with(&canonical) {
            return Err(LayoutError::Nested {
                role: other_role,
                path: other_path.to_path_buf(),
                other_role: role,
                other_path: path.to_path_buf(),
            });
        }
    }
    fs::create_dir_all(path).map_err(|source| LayoutError::Folder {
        role,
        path: path.to_owned(),
        source,
    })?;
    Ok(())
}

/// Lists the inbox without following anything: regular files (with their signature),
/// symlinks and special files at the top level and in merchant folders, folders where
/// none is expected, and merchant folders that cannot be read. Folders whose name matches an
/// ignore pattern are skipped silently.
///
/// # Errors
/// The inbox itself cannot be read (`NotFound` when it was removed).
pub fn list(config: &InboxConfig) -> io::Result<Vec<Listed>> {
    let mut listing = Vec::new();
    for entry in fs::read_dir(&config.inbox)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_dir() {
            match config.top_folder(&name) {
                TopFolder::Ignored => {}
                TopFolder::Merchant(merchant) => {
                    list_merchant(config, &entry.path(), &merchant, &mut listing);
                }
                TopFolder::Other => listing.push(Listed {
                    name: InboxName {
                        merchant: None,
                        name,
                    },
                    kind: EntryKind::Folder,
                }),
            }
            continue;
        }
        if let Some(kind) = entry_kind(&entry, file_type) {
            listing.push(Listed {
                name: InboxName {
                    merchant: None,
                    name,
                },
                kind,
            });
        }
    }
    Ok(listing)
}

fn list_merchant(
    config: &InboxConfig,
    folder: &Path,
    merchant: &MerchantId,
    listing: &mut Vec<Listed>,
) {
    let entries = match fs::read_dir(folder) {
        Ok(entries) => entries,
        // A merchant folder removed while we list it is simply empty this time.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return,
        // Unreadable (permissions): its feeds cannot be seen, which the daemon must say.
        Err(error) => {
            listing.push(Listed {
                name: InboxName {
                    merchant: None,
                    name: OsString::from(merchant.as_str()),
                },
                kind: EntryKind::Unreadable(error.kind()),
            });
            return;
        }
    };
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        let kind = if file_type.is_dir() {
            if glob::matches_any(&config.ignore, &name.to_string_lossy()) {
                continue;
            }
            Some(EntryKind::Folder)
        } else {
            entry_kind(&entry, file_type)
        };
        if let Some(kind) = kind {
            listing.push(Listed {
                name: InboxName {
                    merchant: Some(merchant.as_str().to_owned()),
                    name,
                },
                kind,
            });
        }
    }
}

fn entry_kind(entry: &fs::DirEntry, file_type: fs::FileType) -> Option<EntryKind> {
    if file_type.is_symlink() {
        Some(EntryKind::Symlink)
    } else if file_type.is_file() {
        // DirEntry::metadata does not follow symlinks; a file gone since readdir is skipped.
        entry
            .metadata()
            .ok()
            .map(|metadata| EntryKind::File(signature(&metadata)))
    } else {
        Some(EntryKind::Other)
    }
}

/// The signature of a file's metadata (see [`FileSignature`]).
pub fn signature(metadata: &fs::Metadata) -> FileSignature {
    FileSignature {
        size: metadata.size(),
        mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000 + i128::from(metadata.mtime_nsec()),
        ctime_ns: i128::from(metadata.ctime()) * 1_000_000_000 + i128::from(metadata.ctime_nsec()),
        ino: metadata.ino(),
    }
}

/// What a folder directly in the inbox is.
enum TopFolder {
    /// Its name matches an ignore pattern: never looked into.
    Ignored,
    /// `inbox/<merchant>/`: its feeds are bound to that merchant.
    Merchant(MerchantId),
    /// Any other folder (its name cannot be a merchant identifier): not a place for feeds.
    Other,
}

/// A file named through a symlink where the symlink and its target lie in the merchant
/// folders of two different merchants, so which merchant it may speak for is ambiguous.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} is a symlink in the inbox folder of merchant {named} to a file in the folder of \
     merchant {target}, so the merchant it may speak for is ambiguous: name the file itself \
     (the daemon never follows symlinks in the inbox)"
)]
pub struct AmbiguousMerchantFolder {
    /// The path as given.
    pub path: PathBuf,
    /// The merchant folder the symlink is in.
    pub named: MerchantId,
    /// The merchant folder its target is in.
    pub target: MerchantId,
}

impl InboxConfig {
    /// Classifies a folder directly in the inbox by its name, the one rule [`list`] and
    /// [`InboxConfig::merchant_folder_of`] share.
    fn top_folder(&self, name: &OsStr) -> TopFolder {
        if glob::matches_any(&self.ignore, &name.to_string_lossy()) {
            return TopFolder::Ignored;
        }
        name.to_str()
            .and_then(MerchantId::new)
            .map_or(TopFolder::Other, TopFolder::Merchant)
    }

    /// The merchant folder (`inbox/<merchant>/`, a folder [`list`] reads as one) that the
    /// file at `path` lies in, at any depth, so that `adjustd process` binds a feed from
    /// there to its merchant as the daemon binds the feeds it claims from it. `None` for a
    /// file in the top-level inbox or outside the inbox, and when the inbox or the file's
    /// folder does not exist (whoever opens a missing file reports it).
    ///
    /// Where a file lies is decided on disk, not by the spelling of `path`: a relative path
    /// resolves against the current directory, and `..` and symlinked folders (the inbox's
    /// own included) are followed. A file that is itself a symlink lies both where it is
    /// named and where its target is; either one in a merchant folder binds it.
    ///
    /// # Errors
    /// [`AmbiguousMerchantFolder`] when those two are folders of different merchants.
    pub fn merchant_folder_of(
        &self,
        path: &Path,
    ) -> Result<Option<MerchantId>, AmbiguousMerchantFolder> {
        let Ok(inbox) = fs::canonicalize(&self.inbox) else {
            return Ok(None);
        };
        let in_merchant_folder = |resolved: Option<PathBuf>| {
            let resolved = resolved?;
            let mut parts = resolved.strip_prefix(&inbox).ok()?.components();
            let folder = parts.next()?;
            // A file directly in the inbox is in no merchant folder.
            parts.next()?;
            match self.top_folder(folder.as_os_str()) {
                TopFolder::Merchant(merchant) => Some(merchant),
                TopFolder::Ignored | TopFolder::Other => None,
            }
        };
        // Where the file is named: its folder resolved, its own name as given.
        let named = path.file_name().and_then(|name| {
            let folder = path
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            fs::canonicalize(folder)
                .ok()
                .map(|folder| folder.join(name))
        });
        match (
            in_merchant_folder(named),
            in_merchant_folder(fs::canonicalize(path).ok()),
        ) {
            (Some(named), Some(target)) if named != target => Err(AmbiguousMerchantFolder {
                path: path.to_path_buf(),
                named,
                target,
            }),
            (named, target) => Ok(named.or(target)),
        }
    }

    /// The path of the done marker of the inbox file `name`, in done-marker mode.
    pub fn marker_path(&self, name: &InboxName) -> Option<PathBuf> {
        let suffix = self.done_marker.as_deref()?;
        Some(
            self.inbox_path(name)
                .with_file_name(ready::marker_name(&name.name, suffix)),
        )
    }

    /// The path of an inbox file.
    pub fn inbox_path(&self, name: &InboxName) -> PathBuf {
        let mut path = self.inbox.clone();
        if let Some(merchant) = &name.merchant {
            path.push(merchant);
        }
        path.push(&name.name);
        path
    }
}

/// What the XML content gate found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// The root element closes: process it.
    Complete,
    /// The document ends before its root element closes (still uploading, or truncated).
    Incomplete,
    /// Not XML we can make sense of; process it at once (the report says why).
    Broken,
}

/// The XML content gate: is the document's root element closed?
///
/// A cheap look at the start and the end of the file first: when the file ends with the
/// end tag of the root element named by its first start tag (or the root is empty,
/// `<Root/>`), it is complete and goes on to the pipeline. Otherwise the whole file is read
/// with [`crate::feed::completeness`], which tells a document that merely stops early
/// (still uploading) from one that is broken elsewhere (reported at once).
///
/// # Errors
/// The file cannot be opened or read.
pub fn check_content(path: &Path, limits: &Limits) -> io::Result<Content> {
    const WINDOW: u64 = 64 * 1024;
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    if size > limits.max_file_bytes {
        // Too big to matter whether it is complete: the pipeline rejects it on size.
        return Ok(Content::Broken);
    }
    let mut head = Vec::new();
    (&mut file).take(WINDOW).read_to_end(&mut head)?;
    let mut tail = Vec::new();
    if size > WINDOW {
        file.seek(SeekFrom::Start(size - WINDOW))?;
        file.read_to_end(&mut tail)?;
    } else {
        tail.clone_from(&head);
    }
    if classify(&head, &tail) == Content::Complete {
        return Ok(Content::Complete);
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(
        match crate::feed::completeness(io::BufReader::new(file), *limits) {
            crate::feed::Completeness::Complete => Content::Complete,
            crate::feed::Completeness::Incomplete => Content::Incomplete,
            crate::feed::Completeness::Broken => Content::Broken,
        },
    )
}

/// The cheap half of the content gate: `Complete` when the root element visibly closes at
/// the end of the file; otherwise a guess the full reader confirms or corrects.
fn classify(head: &[u8], tail: &[u8]) -> Content {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let Some(root) = root_element(head) else {
        // No start tag in the first window: empty, whitespace, or still only a prolog.
        return if head
            .iter()
            .all(|b| b.is_ascii_whitespace() || *b == b'<' || *b == b'?')
            || head.starts_with(b"<?")
        {
            Content::Incomplete
        } else {
            Content::Broken
        };
    };
    if root.self_closing {
        return Content::Complete;
    }
    let mut end = strip_trailing_misc(tail);
    // `</Root >`: the end tag, allowing whitespace before `>`.
    let Some(rest) = end.strip_suffix(b">") else {
        return Content::Incomplete;
    };
    end = rest;
    while let Some(rest) = end.strip_suffix(b" ").or_else(|| end.strip_suffix(b"\n")) {
        end = rest;
    }
    let mut closing = b"</".to_vec();
    closing.extend_from_slice(root.name);
    if end.ends_with(&closing) {
        Content::Complete
    } else {
        Content::Incomplete
    }
}

struct Root<'a> {
    name: &'a [u8],
    self_closing: bool,
}

fn root_element(head: &[u8]) -> Option<Root<'_>> {
    let mut at = 0;
    while at < head.len() {
        let rest = &head[at..];
        let open = rest.iter().position(|&b| b == b'<')?;
        let rest = &rest[open..];
        let skip_to = |needle: &[u8]| {
            rest.windows(needle.len())
                .position(|w| w == needle)
                .map(|p| p + needle.len())
        };
        let consumed = if rest.starts_with(b"<?") {
            skip_to(b"?>")?
        } else if rest.starts_with(b"<!--") {
            skip_to(b"-->")?
        } else if rest.starts_with(b"<!") {
            skip_to(b">")?
        } else {
            let name_len = rest[1..]
                .iter()
                .position(|&b| b.is_ascii_whitespace() || b == b'>' || b == b'/')?;
            if name_len == 0 {
                return None;
            }
            let name = &rest[1..=name_len];
            let close = rest.iter().position(|&b| b == b'>')?;
            let self_closing = close > 0 && rest[close - 1] == b'/';
            return Some(Root { name, self_closing });
        };
        at += open + consumed;
    }
    None
}

fn strip_trailing_misc(mut bytes: &[u8]) -> &[u8] {
    loop {
        while let Some((last, rest)) = bytes.split_last() {
            if last.is_ascii_whitespace() {
                bytes = rest;
            } else {
                break;
            }
        }
        let stripped = if bytes.ends_with(b"-->") {
            bytes
                .windows(4)
                .rposition(|w| w == b"<!--")
                .map(|p| &bytes[..p])
        } else if bytes.ends_with(b"?>") {
            bytes
                .windows(2)
                .rposition(|w| w == b"<?")
                .map(|p| &bytes[..p])
        } else {
            None
        };
        match stripped {
            Some(rest) => bytes = rest,
            None => return bytes,
        }
    }
}

/// A feed in hand: renamed into `work/` and locked (a kernel `flock`, released by the
/// kernel if the process dies) so that a second instance's recovery leaves it alone. A
/// claimed file that cannot be opened cannot be locked either; it is still a claim, to be
/// reported as unreadable ([`Claim::unreadable`]).
#[derive(Debug)]
pub struct Claim {
    /// Where it is now (`work/[<merchant>/]<token>--<name>`, the name shortened if the
    /// whole would exceed the 255-byte file-name limit).
    pub path: PathBuf,
    /// The claim token (also in the store's feed record).
    pub token: String,
    /// The name it was dropped under.
    pub file_name: String,
    /// The merchant folder it came from.
    pub merchant: Option<MerchantId>,
    /// The name it was dropped under, exactly, for the archive name and for giving it back
    /// (a claim recovered from `work/` only knows the name in its claim name, which may be
    /// shortened).
    original: OsString,
    /// True when the daemon's content gate held the file back for the whole truncation
    /// grace before the claim: a document that still ends early is then truncated, no
    /// longer an upload in progress ([`crate::pipeline::Source::may_still_be_uploading`]).
    /// False from [`claim`] and [`leftovers`]; the daemon sets it.
    pub waited_out_grace: bool,
    /// The lock held for the claim's lifetime, or why there is none.
    hold: Hold,
}

/// What a claim holds on its file.
#[derive(Debug)]
enum Hold {
    /// The open file with its exclusive lock.
    Locked {
        /// Held for the lock, never read.
        _lock: File,
    },
    /// The file cannot be opened (so not locked): why.
    Unreadable(io::Error),
}

/// Makes unique claim tokens: `<unix nanos>-<pid>-<counter>`.
#[derive(Debug, Default)]
pub struct ClaimTokens {
    counter: AtomicU64,
}

impl ClaimTokens {
    /// A new token source.
    pub fn new() -> ClaimTokens {
        ClaimTokens::default()
    }

    /// The next token, unique within this process and, through the pid and the time,
    /// across instances and restarts.
    pub fn next(&self) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{nanos:020}-{}-{counter}", std::process::id())
    }
}

const TOKEN_SEPARATOR: &str = "--";

/// The longest file name (in bytes) the usual Linux filesystems accept (`NAME_MAX`).
const MAX_FILE_NAME_BYTES: usize = 255;

/// The longest extension (`.xml`) kept when a name is shortened or given a fallback form.
const MAX_KEPT_EXTENSION: usize = 16;

/// How many fallback names ([`fallback_name`]) a claim given back tries when its own name is
/// taken again in the inbox.
const MAX_FALLBACK_NAMES: u32 = 100;

/// `prefix` followed by `name`, with `name` shortened if the whole would not fit in
/// [`MAX_FILE_NAME_BYTES`]: an uploader may use the full 255 bytes, and the claim or archive
/// prefix must not make such a file impossible to move (it was retried on every scan,
/// forever). The cut keeps the start of the name and a short extension (`.xml`), at a
/// character boundary when the name is UTF-8.
fn fit_name(prefix: &str, name: &OsStr) -> OsString {
    let budget = MAX_FILE_NAME_BYTES.saturating_sub(prefix.len());
    let bytes = name.as_bytes();
    let mut fitted = OsString::from(prefix);
    if bytes.len() <= budget {
        fitted.push(name);
        return fitted;
    }
    let extension = match bytes.iter().rposition(|&b| b == b'.') {
        Some(dot) if dot > 0 && bytes.len() - dot <= MAX_KEPT_EXTENSION => &bytes[dot..],
        _ => &[][..],
    };
    let mut cut = budget.saturating_sub(extension.len());
    // Back off over UTF-8 continuation bytes so a multi-byte character is not split.
    while cut > 0 && bytes[cut] & 0b1100_0000 == 0b1000_0000 {
        cut -= 1;
    }
    fitted.push(OsStr::from_bytes(&bytes[..cut]));
    fitted.push(OsStr::from_bytes(extension));
    fitted
}

/// The `n`-th name to give a claim back under when its own name is taken again in the inbox
/// (a new upload of that name arrived meanwhile): `feed.xml` becomes `feed.given-back-1.xml`,
/// so it keeps its extension (and passes the name gate as before) and its report says what
/// happened. The stem is shortened (at a character boundary) if the whole would exceed
/// `max_bytes`.
fn fallback_name(name: &OsStr, n: u32, max_bytes: usize) -> OsString {
    let bytes = name.as_bytes();
    let (stem, extension) = match bytes.iter().rposition(|&b| b == b'.') {
        Some(dot) if dot > 0 && bytes.len() - dot <= MAX_KEPT_EXTENSION => bytes.split_at(dot),
        _ => (bytes, &[][..]),
    };
    let tag = format!(".given-back-{n}");
    let mut cut = stem
        .len()
        .min(max_bytes.saturating_sub(tag.len() + extension.len()));
    while cut > 0 && cut < stem.len() && stem[cut] & 0b1100_0000 == 0b1000_0000 {
        cut -= 1;
    }
    let mut fallback = OsStr::from_bytes(&stem[..cut]).to_os_string();
    fallback.push(&tag);
    fallback.push(OsStr::from_bytes(extension));
    fallback
}

/// Renames `from` to `to` unless `to` exists, atomically, so that nothing that appears at `to`
/// meanwhile (a new upload of that name) can be replaced: `renameat2` with
/// `RENAME_NOREPLACE`, or, on a filesystem that does not support it, [`link_then_unlink`].
///
/// # Errors
/// `AlreadyExists` when `to` is taken; any other error of the rename (or of the fallback when
/// the rename is not supported).
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use rustix::io::Errno;
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(errno) if errno == Errno::INVAL || errno == Errno::NOSYS => link_then_unlink(from, to),
        Err(errno) => Err(errno.into()),
    }
}

/// The no-replace rename where `renameat2` with `RENAME_NOREPLACE` is not supported: `link`
/// (which never replaces either) then `unlink` of the old name. A crash between the two
/// leaves the file under both names, and whichever is processed second is a
/// `DUPLICATE_FEED` of the first, never applied twice. Its own function so that a test runs
/// it on a filesystem that has `RENAME_NOREPLACE`.
///
/// # Errors
/// `AlreadyExists` when `to` is taken (nothing moved); any other error of the link, or of
/// the unlink, after which the new name is removed again so the file keeps only its old
/// name (left under both only if that removal fails too).
fn link_then_unlink(from: &Path, to: &Path) -> io::Result<()> {
    fs::hard_link(from, to)?;
    fs::remove_file(from).inspect_err(|_| {
        let _ = fs::remove_file(to);
    })
}

/// In done-marker mode, makes the marker of `name` unless it exists, and syncs its folder so
/// that the marker is durable before the feed is renamed back beside it. Returns the marker
/// when it made one.
///
/// # Errors
/// The marker cannot be made, or its folder synced: the feed must then stay in `work/`.
fn make_marker(config: &InboxConfig, name: &InboxName) -> io::Result<Option<PathBuf>> {
    let Some(marker) = config.marker_path(name) else {
        return Ok(None);
    };
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
    {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        Err(error) => return Err(error),
    }
    if let Some(folder) = marker.parent()
        && let Err(error) = fsync_dir(folder)
    {
        let _ = fs::remove_file(&marker);
        return Err(error);
    }
    Ok(Some(marker))
}

/// Where a claim given back by [`Claim::release`] is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GivenBack {
    /// Its place in the inbox: the merchant folder it came from, under its own name, or under
    /// a fallback name when its own was taken again.
    pub name: InboxName,
    /// True when `name` is a fallback name (`NAME.given-back-N.ext`).
    pub renamed: bool,
}

/// Splits a claim name `<token>--<name>` into token and original name.
pub fn parse_claim_name(claim_name: &OsStr) -> Option<(String, OsString)> {
    let bytes = claim_name.as_bytes();
    let separator = bytes
        .windows(TOKEN_SEPARATOR.len())
        .position(|w| w == TOKEN_SEPARATOR.as_bytes())?;
    let token = std::str::from_utf8(&bytes[..separator]).ok()?;
    let parts: Vec<&str> = token.split('-').collect();
    let well_formed = parts.len() == 3
        && parts
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    let original = &bytes[separator + TOKEN_SEPARATOR.len()..];
    if !well_formed || original.is_empty() {
        return None;
    }
    Some((token.to_owned(), OsStr::from_bytes(original).to_os_string()))
}

/// Outcome of a claim attempt.
#[derive(Debug)]
pub enum ClaimResult {
    /// The file is ours (perhaps one that cannot be opened, see [`Claim::unreadable`]).
    Claimed(Claim),
    /// Someone else (another instance, or the uploader) took or removed it first.
    Gone,
}

/// Claims an inbox file: atomic rename into `work/` under a name that embeds a fresh claim
/// token, then an exclusive lock on the claimed file. A file that cannot be opened once
/// renamed (no read permission, an I/O error) is claimed without a lock
/// ([`Claim::unreadable`]); the daemon waits for such a file before it claims it, so it gets
/// here only after the grace time (or when it changed just before the claim). In done-marker
/// mode the feed's marker is removed once the feed is in `work/`. Both folders
/// are added to `syncs`, which the caller must [`Syncs::sync`] before processing the claim
/// (so that a claim token in the store always names a durable claim).
///
/// # Errors
/// Renaming failed for another reason than the file being gone.
pub fn claim(
    config: &InboxConfig,
    ready: &ReadyFile,
    tokens: &ClaimTokens,
    syncs: &mut Syncs,
) -> io::Result<ClaimResult> {
    let source = config.inbox_path(&ready.name);
    let work_folder = match &ready.name.merchant {
        Some(merchant) => config.work.join(merchant),
        None => config.work.clone(),
    };
    fs::create_dir_all(&work_folder)?;
    let token = tokens.next();
    let target = work_folder.join(fit_name(
        &format!("{token}{TOKEN_SEPARATOR}"),
        &ready.name.name,
    ));
    match fs::rename(&source, &target) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(ClaimResult::Gone),
        Err(error) => return Err(error),
    }
    let metadata = fs::symlink_metadata(&target)?;
    if !metadata.is_file() {
        // Replaced by something else between the check and the rename: put it back.
        fs::rename(&target, &source)?;
        return Ok(ClaimResult::Gone);
    }
    syncs.add(&work_folder);
    if let Some(parent) = source.parent() {
        syncs.add(parent);
    }
    // The marker belongs to the file in the inbox: the claim took it, so it goes too (a
    // claim given back makes it again). A crash just before leaves it behind; the feed is
    // safe in work/ either way.
    if let Some(marker) = config.marker_path(&ready.name)
        && let Err(error) = fs::remove_file(&marker)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(file = %escaped(marker.display()), error = %error, "cannot remove the done marker");
    }
    let Some(hold) = hold(&target)? else {
        return Ok(ClaimResult::Gone);
    };
    Ok(ClaimResult::Claimed(Claim {
        path: target,
        token,
        file_name: ready.name.display_name(),
        merchant: ready.name.merchant.as_deref().and_then(MerchantId::new),
        original: ready.name.name.clone(),
        waited_out_grace: false,
        hold,
    }))
}

/// Opens and locks a claimed file; one that cannot be opened is held as unreadable. `None`
/// when it is gone or another live process holds its lock.
fn hold(path: &Path) -> io::Result<Option<Hold>> {
    match File::open(path) {
        Ok(file) => Ok(lock(file, path)?.map(|lock| Hold::Locked { _lock: lock })),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Ok(Some(Hold::Unreadable(error))),
    }
}

/// Takes the exclusive lock of a claimed file opened from `path`; `None` when another live
/// process holds it or the file left that path meanwhile.
fn lock(file: File, path: &Path) -> io::Result<Option<File>> {
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(error)) => return Err(error),
    }
    // Another instance may have finished and moved the file between our open and our lock:
    // the lock is then on an archived inode. Only keep it if the path still names it.
    let locked = file.metadata()?.ino();
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.ino() == locked && metadata.is_file() => Ok(Some(file)),
        Ok(_) => Ok(None),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// The feeds left in `work/` by an earlier run (crash or shutdown timeout), oldest claim
/// first, each locked. Files in `work/` without a claim name (put there by hand) are adopted
/// under a fresh token. A file that cannot be opened is returned too, without a lock
/// ([`Claim::unreadable`]), to be reported as unreadable. Files locked by another live
/// instance are skipped; so are entries that cannot be inspected, adopted or locked (each
/// logged with its path and the error, left where it is): one bad file must never keep the
/// daemon from starting.
///
/// An unreadable file cannot be locked, so a second instance starting while this one reports
/// it may report it too: under the same claim token, which the store records once (the
/// later attempt finds the record and writes the same report again).
///
/// # Errors
/// `work/` itself cannot be read.
pub fn leftovers(config: &InboxConfig, tokens: &ClaimTokens) -> io::Result<Vec<Claim>> {
    let mut found: Vec<(String, Option<String>, PathBuf, OsString)> = Vec::new();
    collect_leftovers(&config.work, None, tokens, &mut found)?;
    for entry in fs::read_dir(&config.work)?.flatten() {
        if entry.file_type().is_ok_and(|file_type| file_type.is_dir())
            && let Some(merchant) = entry.file_name().to_str().and_then(MerchantId::new)
            && let Err(error) =
                collect_leftovers(&entry.path(), Some(merchant.as_str()), tokens, &mut found)
        {
            tracing::warn!(folder = %escaped(entry.path().display()), error = %error, "cannot read a folder in work/, its feeds stay there");
        }
    }
    found.sort();
    let mut claims = Vec::new();
    for (token, merchant, path, original) in found {
        match hold(&path) {
            Ok(Some(hold)) => claims.push(Claim {
                path,
                token,
                file_name: original.to_string_lossy().into_owned(),
                merchant: merchant.as_deref().and_then(MerchantId::new),
                original,
                waited_out_grace: false,
                hold,
            }),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(file = %escaped(path.display()), error = %error, "cannot lock a feed left in work/, it stays there");
            }
        }
    }
    Ok(claims)
}

fn collect_leftovers(
    folder: &Path,
    merchant: Option<&str>,
    tokens: &ClaimTokens,
    found: &mut Vec<(String, Option<String>, PathBuf, OsString)>,
) -> io::Result<()> {
    for entry in fs::read_dir(folder)?.flatten() {
        if !entry.file_type().is_ok_and(|file_type| file_type.is_file()) {
            continue;
        }
        let name = entry.file_name();
        match parse_claim_name(&name) {
            Some((token, original)) => {
                found.push((token, merchant.map(str::to_owned), entry.path(), original))
            }
            None => {
                let token = tokens.next();
                let target = folder.join(fit_name(&format!("{token}{TOKEN_SEPARATOR}"), &name));
                if let Err(error) = fs::rename(entry.path(), &target) {
                    tracing::warn!(file = %escaped(entry.path().display()), error = %error, "cannot adopt a file found in work/ without a claim name, it stays there");
                    continue;
                }
                fsync_dir(folder)?;
                tracing::warn!(file = %escaped(entry.path().display()), "adopting a file found in work/ without a claim name");
                found.push((token, merchant.map(str::to_owned), target, name));
            }
        }
    }
    Ok(())
}

/// Where a finished feed goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `archive/`: processed (status Complete).
    Archive,
    /// `failed/`: rejected, or could not be processed.
    Failed,
}

impl Claim {
    /// Why the claimed file cannot be opened, when it cannot (no read permission, an I/O
    /// error): it is then not locked, and the daemon reports it as unreadable
    /// ([`crate::pipeline::process_claimed`]) instead of processing it; unless the process
    /// or the system ran short ([`crate::resources::shortage`]: too many open files), which
    /// is no fault of the file: the daemon tries it again ([`Claim::reopen`]).
    pub fn unreadable(&self) -> Option<&io::Error> {
        match &self.hold {
            Hold::Locked { .. } => None,
            Hold::Unreadable(error) => Some(error),
        }
    }

    /// A claim whose file could not be opened because the process or the system ran short
    /// ([`crate::resources::shortage`]: too many open files, no memory), not for a fault of
    /// the file, tries again to open and lock it: on success it is an ordinary claim; else
    /// [`Claim::unreadable`] gives the new error. A claim locked, or unreadable for a fault
    /// of its file, is left as it is.
    pub fn reopen(&mut self) {
        let Hold::Unreadable(error) = &self.hold else {
            return;
        };
        if crate::resources::shortage(error).is_none() {
            return;
        }
        match hold(&self.path) {
            Ok(Some(hold)) => self.hold = hold,
            // Gone, or locked by another process: processing finds out and says so.
            Ok(None) => {}
            Err(error) => self.hold = Hold::Unreadable(error),
        }
    }

    /// Moves the feed to `archive/YYYY-MM-DD/[<merchant>/]` or `failed/...` (UTC date) under
    /// `<feed id>-<name>` (or `<token>--<name>` without a feed id), with `-<n>` added after the
    /// prefix if that name exists. The name is cleaned as for the outbox
    /// ([`crate::report::clean_file_name`]: control characters and separators become `_`) and
    /// shortened if the whole would exceed the 255-byte file-name limit; the report keeps the
    /// full name. Returns the path the file now has, exactly. Consumes the claim and its
    /// lock. The folders go into `syncs`: a power loss before they are synced at most moves
    /// the file back to `work/`, where recovery re-emits the same report and moves it again.
    ///
    /// # Errors
    /// Creating the folder or renaming failed (a full disk, a read-only folder): the claim is
    /// handed back with the error, which names the folder or target, still in `work/` and
    /// still locked, so the caller can try the move again without anyone else taking the
    /// feed up meanwhile.
    pub fn finish(
        self,
        config: &InboxConfig,
        destination: Destination,
        feed_id: Option<u64>,
        syncs: &mut Syncs,
    ) -> Result<PathBuf, (Claim, io::Error)> {
        match self.move_out(config, destination, feed_id, syncs) {
            Ok(path) => Ok(path),
            Err(error) => Err((self, error)),
        }
    }

    fn move_out(
        &self,
        config: &InboxConfig,
        destination: Destination,
        feed_id: Option<u64>,
        syncs: &mut Syncs,
    ) -> io::Result<PathBuf> {
        let root = match destination {
            Destination::Archive => &config.archive,
            Destination::Failed => &config.failed,
        };
        let mut folder = root.join(chrono::Utc::now().format("%Y-%m-%d").to_string());
        if let Some(merchant) = &self.merchant {
            folder.push(merchant.as_str());
        }
        fs::create_dir_all(&folder).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot create {}: {error}", folder.display()),
            )
        })?;
        let (prefix, separator) = match feed_id {
            Some(feed_id) => (feed_id.to_string(), "-"),
            None => (self.token.clone(), TOKEN_SEPARATOR),
        };
        let name = clean_file_name(&self.original);
        let mut counter = 0u32;
        let target = loop {
            let name_prefix = match counter {
                0 => format!("{prefix}{separator}"),
                n => format!("{prefix}-{n}{separator}"),
            };
            let candidate = folder.join(fit_name(&name_prefix, &name));
            // Feed ids and tokens are unique, so a collision only comes from finishing the
            // same feed twice (a power loss undid an earlier move); no other process writes
            // these names, so checking first is enough.
            if fs::symlink_metadata(&candidate).is_err() {
                break candidate;
            }
            counter += 1;
        };
        fs::rename(&self.path, &target).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot rename it to {}: {error}", target.display()),
            )
        })?;
        syncs.add(&folder);
        if let Some(parent) = self.path.parent() {
            syncs.add(parent);
        }
        Ok(target)
    }

    /// Gives a claim that was not started back to the inbox folder it came from (at
    /// shutdown, or when the store is away), under its original name, or, when that name is
    /// taken again (a new upload of the same name), under the first free fallback name
    /// (`feed.given-back-1.xml`, ...). Never replaces a file: each name is tried with an
    /// atomic no-replace rename (`renameat2` with `RENAME_NOREPLACE`), so an upload that
    /// appears while this runs is left alone. In done-marker mode the claim removed the
    /// feed's marker, so
    /// the marker of the name it goes back under is made first (unless it exists), then the
    /// feed renamed beside it: a feed is never back without its marker, which would keep it
    /// waiting for good. Returns where the file is now; the folders go into `syncs`.
    ///
    /// # Errors
    /// The marker cannot be made, the rename failed, or every fallback name is taken: the
    /// claim is handed back with the error, still in `work/`.
    pub fn release(
        self,
        config: &InboxConfig,
        syncs: &mut Syncs,
    ) -> Result<GivenBack, (Claim, io::Error)> {
        let mut folder = config.inbox.clone();
        if let Some(merchant) = &self.merchant {
            folder.push(merchant.as_str());
        }
        for n in 0..=MAX_FALLBACK_NAMES {
            let name = match n {
                0 => self.original.clone(),
                n => {
                    let name = fallback_name(&self.original, n, MAX_FILE_NAME_BYTES);
                    // A name the name gate would turn away would never be taken again.
                    if glob::matches_any(&config.ignore, &name.to_string_lossy()) {
                        continue;
                    }
                    name
                }
            };
            let target = folder.join(&name);
            // Taken already: no marker for it, not even for the moment until the rename
            // fails (a peer could take the new upload for marked then). The no-replace
            // rename, not this look, is what keeps the upload from being replaced.
            if config.done_marker.is_some() && fs::symlink_metadata(&target).is_ok() {
                continue;
            }
            let inbox_name = InboxName {
                merchant: self.merchant.as_ref().map(|m| m.as_str().to_owned()),
                name,
            };
            // The marker first, so that the feed is never back without one (it would wait for
            // a marker the uploader sent already): a crash between the two leaves a marker
            // without its feed, which is still in work/ and recovered at the next start.
            let marker = match make_marker(config, &inbox_name) {
                Ok(marker) => marker,
                Err(error) => return Err((self, error)),
            };
            match rename_no_replace(&self.path, &target) {
                Ok(()) => {
                    syncs.add(&folder);
                    if let Some(parent) = self.path.parent() {
                        syncs.add(parent);
                    }
                    return Ok(GivenBack {
                        name: inbox_name,
                        renamed: n > 0,
                    });
                }
                Err(error) => {
                    // Not given back under this name: a marker made for it would speak for
                    // whatever else has or gets the name.
                    if let Some(marker) = marker {
                        let _ = fs::remove_file(marker);
                    }
                    if error.kind() != io::ErrorKind::AlreadyExists {
                        return Err((self, error));
                    }
                }
            }
        }
        let error = io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("its name and {MAX_FALLBACK_NAMES} fallback names are taken in the inbox"),
        );
        Err((self, error))
    }
}

/// Folders whose entries changed (renames) and must be fsynced before the change is
/// relied on. Collecting them lets a batch of claims or moves share one fsync per folder.
#[derive(Debug, Default)]
pub struct Syncs {
    folders: std::collections::BTreeSet<PathBuf>,
}

impl Syncs {
    /// Nothing to sync yet.
    pub fn new() -> Syncs {
        Syncs::default()
    }

    /// Remembers a folder to sync.
    pub fn add(&mut self, folder: &Path) {
        if !self.folders.contains(folder) {
            self.folders.insert(folder.to_owned());
        }
    }

    /// fsyncs every remembered folder (each once) and forgets them.
    ///
    /// # Errors
    /// The first folder that could not be synced (the others are still tried).
    pub fn sync(&mut self) -> io::Result<()> {
        let mut first_error = None;
        for folder in std::mem::take(&mut self.folders) {
            if let Err(error) = fsync_dir(&folder)
                && first_error.is_none()
            {
                first_error = Some(io::Error::new(
                    error.kind(),
                    format!("syncing {}: {error}", folder.display()),
                ));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(root: &Path) -> InboxConfig {
        InboxConfig::with_defaults(
            root.join("inbox"),
            root.join("work"),
            root.join("archive"),
            root.join("failed"),
            root.join("outbox"),
        )
    }

    /// The listed entry as a ready file (it must be a regular file).
    fn ready_file(listed: &Listed) -> ReadyFile {
        let EntryKind::File(signature) = listed.kind else {
            panic!("not a file");
        };
        ReadyFile {
            name: listed.name.clone(),
            signature,
        }
    }
    #[test]
    fn content_gate_tells_complete_from_incomplete() {
        let complete = br#"<?xml version="1.0" encoding="UTF-8"?>
<!-- hi -->
<AmazonEnvelope xmlns:xsi="x"><Header/><Message/></AmazonEnvelope>
<!-- trailing --> "#;
        assert_eq!(classify(complete, complete), Content::Complete);
        let truncated = &complete[..complete.len() - 40];
        assert_eq!(classify(truncated, truncated), Content::Incomplete);
        assert_eq!(classify(b"", b""), Content::Incomplete);
        assert_eq!(
            classify(b"<?xml version='1.0'?>\n", b"<?xml version='1.0'?>\n"),
            Content::Incomplete
        );
        assert_eq!(classify(b"<Root/>", b"<Root/>"), Content::Complete);
        assert_eq!(
            classify(b"<Root a='1'>x</Root >\n", b"<Root a='1'>x</Root >\n"),
            Content::Complete
        );
        assert_eq!(
            classify(b"<Root>x</Roo", b"<Root>x</Roo"),
            Content::Incomplete
        );
        assert_eq!(
            classify(b"\xEF\xBB\xBF<Root>x</Root>", b"<Root>x</Root>"),
            Content::Complete
        );
        assert_eq!(
            classify(b"hello, not xml", b"hello, not xml"),
            Content::Broken
        );
    }

    #[test]
    fn content_gate_on_files_uses_the_full_reader_when_in_doubt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits::default();
        let check = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            fs::write(&path, bytes).expect("write");
            check_content(&path, &limits).expect("check")
        };
        let feed = "<?xml version=\"1.0\"?>\n<AmazonEnvelope><Header/></AmazonEnvelope>\n";
        assert_eq!(check("ok.xml", feed.as_bytes()), Content::Complete);
        assert_eq!(
            check("cut.xml", &feed.as_bytes()[..30]),
            Content::Incomplete
        );
        assert_eq!(check("empty.xml", b""), Content::Incomplete);
        // Garbage after the root: not an upload in progress, report it now.
        let trailing = format!("{feed}<Other/>");
        assert_ne!(
            check("trailing.xml", trailing.as_bytes()),
            Content::Incomplete
        );
        // Broken inside but closed at the end: processed at once either way (the pipeline
        // reports the error).
        assert_ne!(
            check(
                "mismatch.xml",
                b"<AmazonEnvelope><Header></Oops></AmazonEnvelope>"
            ),
            Content::Incomplete
        );
        // Cut short, but with a DOCTYPE the reader refuses anyway: waiting will not help.
        assert_eq!(
            check(
                "doctype.xml",
                b"<!DOCTYPE AmazonEnvelope [<!ENTITY a \"b\">]>\n<AmazonEnvelope><Header>"
            ),
            Content::Broken
        );
    }

    #[test]
    fn claim_names_round_trip() {
        let tokens = ClaimTokens::new();
        let token = tokens.next();
        let name = OsString::from(format!("{token}---odd -- name.xml"));
        let (parsed_token, original) = parse_claim_name(&name).expect("claim name");
        assert_eq!(parsed_token, token);
        assert_eq!(original, OsString::from("-odd -- name.xml"));
        assert_ne!(tokens.next(), token);
        assert_eq!(parse_claim_name(OsStr::new("feed--x.xml")), None);
        assert_eq!(parse_claim_name(OsStr::new("1-2-3--")), None);
        assert_eq!(parse_claim_name(OsStr::new("plain.xml")), None);
    }

    #[test]
    fn long_names_are_shortened_to_fit_with_their_prefix() {
        let prefix = "00000000000000000001-1-0--";
        let short = fit_name(prefix, OsStr::new("feed.xml"));
        assert_eq!(short, OsString::from(format!("{prefix}feed.xml")));
        // 100 two-byte characters, then 50 bytes and the extension: 254 bytes.
        let long = format!("{}{}.xml", "é".repeat(100), "x".repeat(50));
        let fitted = fit_name(prefix, OsStr::new(&long));
        assert!(fitted.len() <= MAX_FILE_NAME_BYTES, "{}", fitted.len());
        let fitted = fitted.to_str().expect("still UTF-8");
        assert!(
            fitted.starts_with(prefix) && fitted.ends_with("x.xml"),
            "{fitted}"
        );
        // A cut that would split a character backs off to its start.
        let accents = format!("{}.xml", "é".repeat(125));
        let fitted = fit_name("1-", OsStr::new(&accents));
        assert_eq!(fitted.len(), 2 + 248 + 4);
        assert!(fitted.to_str().is_some());
        // No extension worth keeping, not UTF-8: a plain cut.
        let bytes = [b'\xff'; 300];
        assert_eq!(fit_name("p", OsStr::from_bytes(&bytes)).len(), 255);
    }

    #[test]
    fn a_name_that_only_just_fits_the_inbox_is_claimed_and_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        check_layout(&config).expect("layout");
        let long = format!("{}.xml", "n".repeat(251));
        fs::write(config.inbox.join(&long), b"<a/>").expect("write");
        let listing = list(&config).expect("list");
        let ready = ready_file(&listing[0]);
        let tokens = ClaimTokens::new();
        let mut syncs = Syncs::new();
        let ClaimResult::Claimed(claimed) =
            claim(&config, &ready, &tokens, &mut syncs).expect("claim")
        else {
            panic!("not claimed");
        };
        assert_eq!(claimed.file_name, long);
        let failed = claimed
            .finish(&config, Destination::Failed, None, &mut syncs)
            .expect("finish");
        let failed_name = failed.file_name().expect("name").to_string_lossy();
        assert!(failed_name.ends_with(".xml"), "{failed_name}");
        // Given back after a claim: under its full name again.
        fs::write(config.inbox.join(&long), b"<a/>").expect("write");
        let listing = list(&config).expect("list");
        let ready = ready_file(&listing[0]);
        let ClaimResult::Claimed(claimed) =
            claim(&config, &ready, &tokens, &mut syncs).expect("claim")
        else {
            panic!("not claimed");
        };
        let given_back = claimed.release(&config, &mut syncs).expect("release");
        assert!(!given_back.renamed);
        assert!(config.inbox.join(&long).is_file());
    }

    #[test]
    fn layout_refuses_folders_inside_the_inbox() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path());
        config.outbox = dir.path().join("inbox/outbox");
        let error = check_layout(&config).expect_err("outbox inside inbox");
        let message = error.to_string();
        assert!(message.contains("outbox folder"), "{message}");
        assert!(message.contains("inbox folder"), "{message}");
        config.outbox = dir.path().join("outbox");
        config.failed = dir.path().join("archive");
        assert!(matches!(
            check_layout(&config),
            Err(LayoutError::Nested { .. })
        ));
        config.failed = dir.path().join("failed");
        check_layout(&config).expect("good layout");
        assert!(dir.path().join("work").is_dir());
    }

    #[test]
    fn layout_refuses_another_filesystem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path());
        // /dev/shm is a tmpfs on Linux, never the filesystem of a temp dir on disk.
        let shm = Path::new("/dev/shm");
        if !shm.is_dir()
            || fs::metadata(shm).map(|m| m.dev()).ok()
                == fs::metadata(dir.path()).map(|m| m.dev()).ok()
        {
            eprintln!("skipping: no second filesystem at /dev/shm");
            return;
        }
        let other = tempfile::tempdir_in(shm).expect("tempdir in /dev/shm");
        config.archive = other.path().join("archive");
        let error = check_layout(&config).expect_err("archive elsewhere");
        assert!(
            matches!(
                error,
                LayoutError::OtherFilesystem {
                    role: "archive",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn claim_lock_finish_and_recover() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        check_layout(&config).expect("layout");
        fs::create_dir_all(config.inbox.join("M1")).expect("merchant folder");
        fs::write(config.inbox.join("M1/feed one.xml"), b"<a/>").expect("write");
        fs::write(config.inbox.join("top.xml"), b"<a/>").expect("write");
        let listing = list(&config).expect("list");
        assert_eq!(listing.len(), 2);
        let tokens = ClaimTokens::new();
        let mut syncs = Syncs::new();
        let merchant_file = listing
            .iter()
            .find(|listed| listed.name.merchant.is_some())
            .expect("merchant file");
        let ready = ready_file(merchant_file);
        let ClaimResult::Claimed(claimed) =
            claim(&config, &ready, &tokens, &mut syncs).expect("claim")
        else {
            panic!("gone");
        };
        assert!(claimed.path.starts_with(config.work.join("M1")));
        assert_eq!(claimed.file_name, "feed one.xml");
        assert_eq!(
            claimed.merchant.as_ref().map(MerchantId::as_str),
            Some("M1")
        );
        assert!(claimed.unreadable().is_none());
        // A second claim of the same file finds it gone.
        assert!(matches!(
            claim(&config, &ready, &tokens, &mut syncs).expect("claim"),
            ClaimResult::Gone
        ));
        // While we hold it, recovery (as another instance would) skips it.
        assert!(leftovers(&config, &tokens).expect("leftovers").is_empty());
        let token = claimed.token.clone();
        drop(claimed);
        let recovered = leftovers(&config, &tokens).expect("leftovers");
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].token, token);
        assert_eq!(recovered[0].file_name, "feed one.xml");
        let claim = recovered.into_iter().next().expect("one");
        let archived = claim
            .finish(&config, Destination::Archive, Some(42), &mut syncs)
            .expect("finish");
        assert!(
            archived.ends_with("M1/42-feed one.xml"),
            "{}",
            archived.display()
        );
        assert!(archived.starts_with(&config.archive));
        // A file put into work/ by hand is adopted under a fresh token.
        fs::write(config.work.join("stray.xml"), b"<a/>").expect("write");
        let adopted = leftovers(&config, &tokens).expect("leftovers");
        assert_eq!(adopted.len(), 1);
        assert_eq!(adopted[0].file_name, "stray.xml");
        let claim = adopted.into_iter().next().expect("one");
        let failed = claim
            .finish(&config, Destination::Failed, None, &mut syncs)
            .expect("finish");
        assert!(failed.starts_with(&config.failed));
        assert!(failed.to_string_lossy().ends_with("--stray.xml"));
        assert_eq!(
            fs::read_dir(&config.work).expect("work").count(),
            1,
            "only the M1 folder"
        );
    }

    #[test]
    fn finish_never_overwrites_and_release_gives_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        check_layout(&config).expect("layout");
        let tokens = ClaimTokens::new();
        let mut syncs = Syncs::new();
        let mut claim_one = |name: &str| {
            fs::write(config.inbox.join(name), b"<a/>").expect("write");
            let listing = list(&config).expect("list");
            let listed = listing
                .iter()
                .find(|l| l.name.name == OsStr::new(name))
                .expect("listed");
            let ready = ready_file(listed);
            match claim(&config, &ready, &tokens, &mut syncs).expect("claim") {
                ClaimResult::Claimed(claim) => claim,
                other => panic!("not claimed: {other:?}"),
            }
        };
        let first = claim_one("same.xml");
        let second = claim_one("same.xml");
        let third = claim_one("same.xml");
        let mut syncs = Syncs::new();
        let a = first
            .finish(&config, Destination::Archive, Some(7), &mut syncs)
            .expect("finish");
        let b = second
            .finish(&config, Destination::Archive, Some(7), &mut syncs)
            .expect("finish");
        assert!(a.ends_with("7-same.xml"), "{}", a.display());
        assert!(b.ends_with("7-1-same.xml"), "{}", b.display());
        syncs.sync().expect("sync");
        let given_back = third.release(&config, &mut syncs).expect("release");
        assert_eq!(given_back.name.name, OsStr::new("same.xml"));
        assert!(!given_back.renamed);
        assert!(config.inbox.join("same.xml").is_file());
        syncs.sync().expect("sync");
    }

    #[test]
    fn the_link_then_unlink_fallback_never_replaces_and_leaves_one_name() {
        // The fallback of `rename_no_replace` for filesystems without RENAME_NOREPLACE, run
        // directly: this one has it, so the rename never reaches the fallback here.
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("source");
        let target = dir.path().join("target");
        fs::write(&source, b"source").expect("write");
        fs::write(&target, b"target").expect("write");
        let error = link_then_unlink(&source, &target).expect_err("taken");
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&target).expect("read"), b"target");
        assert_eq!(fs::read(&source).expect("read"), b"source");
        for name in [&source, &target] {
            assert_eq!(
                fs::metadata(name).expect("stat").nlink(),
                1,
                "{}",
                name.display()
            );
        }
        fs::remove_file(&target).expect("remove");
        let inode = fs::metadata(&source).expect("stat").ino();
        link_then_unlink(&source, &target).expect("free");
        assert!(!source.exists());
        let moved = fs::metadata(&target).expect("stat");
        assert_eq!((moved.ino(), moved.nlink()), (inode, 1), "moved, one name");
        assert_eq!(fs::read(&target).expect("read"), b"source");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(names, [OsStr::new("target")]);
    }

    #[test]
    fn the_link_then_unlink_fallback_takes_the_new_name_back_when_the_unlink_fails() {
        // An append-only folder lets its file be linked elsewhere but not unlinked (even for
        // root): the fallback must not leave the file under both names.
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().join("append-only");
        fs::create_dir(&folder).expect("folder");
        let source = folder.join("source");
        let target = dir.path().join("target");
        fs::write(&source, b"source").expect("write");
        let chattr = |flag: &str| {
            std::process::Command::new("chattr")
                .arg(flag)
                .arg(&folder)
                .output()
                .is_ok_and(|out| out.status.success())
        };
        if !chattr("+a") {
            eprintln!("skipped: chattr +a is not available here (needs CAP_LINUX_IMMUTABLE)");
            return;
        }
        struct Undo<F: Fn(&str) -> bool>(F);
        impl<F: Fn(&str) -> bool> Drop for Undo<F> {
            fn drop(&mut self) {
                (self.0)("-a");
            }
        }
        let undo = Undo(chattr);
        let error = link_then_unlink(&source, &target).expect_err("cannot unlink");
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied, "{error}");
        drop(undo);
        assert!(!target.exists(), "the new name is taken back");
        assert_eq!(fs::read(&source).expect("read"), b"source");
    }

    #[test]
    fn a_claim_given_back_never_replaces_a_new_upload_of_its_name() {
        // QA4 finding 6: the give-back checked that the name was free, then renamed, and a
        // rename replaces its target: an upload of the same name arriving in between was lost.
        // Now the name is never checked first, the rename itself refuses to replace, and a
        // taken name sends the claim back under a fallback name.
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        check_layout(&config).expect("layout");
        let tokens = ClaimTokens::new();
        let mut syncs = Syncs::new();
        let first = drop_and_claim(&config, OsStr::new("same.xml"), &tokens);
        let second = drop_and_claim(&config, OsStr::new("same.xml"), &tokens);
        fs::write(config.inbox.join("same.xml"), b"new upload").expect("write");
        let given_back = first.release(&config, &mut syncs).expect("release");
        assert!(given_back.renamed);
        assert_eq!(given_back.name.name, OsStr::new("same.given-back-1.xml"));
        assert_eq!(
            fs::read(config.inbox.join("same.xml")).expect("read"),
            b"new upload"
        );
        assert_eq!(
            fs::read(config.inbox.join("same.given-back-1.xml")).expect("read"),
            b"<a/>"
        );
        let given_back = second.release(&config, &mut syncs).expect("release");
        assert_eq!(given_back.name.name, OsStr::new("same.given-back-2.xml"));
        syncs.sync().expect("sync");
        // The rename underneath: the target stays as it was, and so does the source.
        let source = dir.path().join("source");
        let target = dir.path().join("target");
        fs::write(&source, b"source").expect("write");
        fs::write(&target, b"target").expect("write");
        let error = rename_no_replace(&source, &target).expect_err("taken");
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&target).expect("read"), b"target");
        assert_eq!(fs::read(&source).expect("read"), b"source");
        fs::remove_file(&target).expect("remove");
        rename_no_replace(&source, &target).expect("free");
        assert_eq!(fs::read(&target).expect("read"), b"source");
        assert!(!source.exists());
    }

    #[test]
    fn a_claim_takes_the_done_marker_and_a_release_makes_it_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path());
        config.done_marker = Some(".done".to_owned());
        check_layout(&config).expect("layout");
        let tokens = ClaimTokens::new();
        let mut syncs = Syncs::new();
        let marker = config.inbox.join("feed.xml.done");
        fs::write(&marker, b"").expect("marker");
        let claim = drop_and_claim(&config, OsStr::new("feed.xml"), &tokens);
        assert!(!marker.exists(), "the claim removes the marker");
        claim.release(&config, &mut syncs).expect("release");
        assert!(config.inbox.join("feed.xml").is_file());
        assert!(marker.is_file(), "given back with its marker");
        // Given back under a fallback name: that name gets a marker, and the new upload's
        // own marker (or its absence) is left alone.
        let claim = drop_and_claim(&config, OsStr::new("feed.xml"), &tokens);
        assert!(!marker.exists());
        fs::write(config.inbox.join("feed.xml"), b"new upload").expect("write");
        let given_back = claim.release(&config, &mut syncs).expect("release");
        assert_eq!(given_back.name.name, OsStr::new("feed.given-back-1.xml"));
        assert!(config.inbox.join("feed.given-back-1.xml.done").is_file());
        assert!(!marker.exists(), "no marker made for the new upload");
        syncs.sync().expect("sync");
    }

    #[test]
    fn fallback_names_keep_the_extension_and_fit() {
        assert_eq!(
            fallback_name(OsStr::new("feed.xml"), 1, MAX_FILE_NAME_BYTES),
            OsString::from("feed.given-back-1.xml")
        );
        assert_eq!(
            fallback_name(OsStr::new("feed"), 12, MAX_FILE_NAME_BYTES),
            OsString::from("feed.given-back-12")
        );
        let long = format!("{}.xml", "é".repeat(125));
        let fitted = fallback_name(OsStr::new(&long), 3, MAX_FILE_NAME_BYTES);
        assert!(fitted.len() <= MAX_FILE_NAME_BYTES, "{}", fitted.len());
        let fitted = fitted.to_str().expect("still UTF-8");
        assert!(fitted.ends_with("é.given-back-3.xml"), "{fitted}");
    }

    /// Drops `name` into the top-level inbox and claims it.
    fn drop_and_claim(config: &InboxConfig, name: &OsStr, tokens: &ClaimTokens) -> Claim {
        fs::write(config.inbox.join(name), b"<a/>").expect("write");
        let listing = list(config).expect("list");
        let listed = listing
            .iter()
            .find(|listed| listed.name.name == name)
            .expect("listed");
        match claim(config, &ready_file(listed), tokens, &mut Syncs::new()).expect("claim") {
            ClaimResult::Claimed(claim) => claim,
            ClaimResult::Gone => panic!("not claimed"),
        }
    }

    #[test]
    fn archive_and_failed_names_are_cleaned_like_report_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        check_layout(&config).expect("layout");
        let tokens = ClaimTokens::new();
        let mut syncs = Syncs::new();
        // A newline, an ESC and a byte that is not UTF-8.
        let name = OsStr::from_bytes(b"new\nline\x1b[31m caf\xe9.xml");
        let archived = drop_and_claim(&config, name, &tokens)
            .finish(&config, Destination::Archive, Some(5), &mut syncs)
            .expect("finish");
        assert_eq!(
            archived.file_name(),
            Some(OsStr::from_bytes(b"5-new_line_[31m caf\xe9.xml"))
        );
        assert!(archived.is_file(), "{}", archived.display());
        let failed = drop_and_claim(&config, OsStr::new("tab\there.xml"), &tokens)
            .finish(&config, Destination::Failed, None, &mut syncs)
            .expect("finish");
        let failed_name = failed.file_name().expect("name").to_string_lossy();
        assert!(failed_name.ends_with("--tab_here.xml"), "{failed_name}");
        assert!(failed.is_file(), "{}", failed.display());
        // Given back at shutdown, a claim keeps its exact name.
        let released = drop_and_claim(&config, OsStr::new("keep\rme.xml"), &tokens);
        assert!(
            !released
                .release(&config, &mut syncs)
                .expect("release")
                .renamed
        );
        assert!(config.inbox.join("keep\rme.xml").is_file());
    }

    #[test]
    fn a_255_byte_name_is_archived_under_the_path_finish_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        check_layout(&config).expect("layout");
        let tokens = ClaimTokens::new();
        let mut syncs = Syncs::new();
        let long = format!("{}.xml", "L".repeat(251));
        for expected_prefix in ["7-", "7-1-"] {
            let archived = drop_and_claim(&config, OsStr::new(&long), &tokens)
                .finish(&config, Destination::Archive, Some(7), &mut syncs)
                .expect("finish");
            assert!(archived.is_file(), "{}", archived.display());
            let archived_name = archived.file_name().expect("name").to_string_lossy();
            assert_eq!(archived_name.len(), MAX_FILE_NAME_BYTES);
            assert!(
                archived_name.starts_with(expected_prefix) && archived_name.ends_with("L.xml"),
                "{archived_name}"
            );
        }
    }

    #[test]
    fn listing_reports_symlinks_and_folders_without_following() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        check_layout(&config).expect("layout");
        std::os::unix::fs::symlink("/etc/hostname", config.inbox.join("link.xml"))
            .expect("symlink");
        fs::create_dir_all(config.inbox.join("M1/sub")).expect("folders");
        fs::create_dir_all(config.inbox.join(".hidden")).expect("folders");
        let mut listing = list(&config).expect("list");
        listing.sort_by(|a, b| a.name.cmp(&b.name));
        let kinds: Vec<(String, &str)> = listing
            .iter()
            .map(|listed| (listed.name.display_path(), listed.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("link.xml".to_owned(), "symlink"),
                ("M1/sub".to_owned(), "folder")
            ]
        );
    }
}
