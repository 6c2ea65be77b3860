//! The SQLite backend: the embedded default.
//!
//! One database file, WAL mode, `synchronous=FULL` so a commit is durable, foreign keys on.
//! A single process writes a database: [`SqliteStore::open`] takes an exclusive lock on
//! `<db>.lock` next to the database's canonical path (holding the pid and host), and an
//! exclusive `flock` on the database file itself, so a second opener gets
//! [`StoreError::Locked`] however it reaches the file: another spelling of the path meets the
//! lock file, a hard link or a second mount (another name of the same inode) meets the
//! `flock`. Migrations are embedded SQL files versioned by
//! `PRAGMA user_version`; a database newer than this build is refused.
//!
//! One feed is one `BEGIN IMMEDIATE` transaction ([`SqliteFeedTx`]); statements are
//! prepared once and cached. Orders are loaded with `IN (...)` lists of up to 1024 ids, one
//! statement per list returning each order with its items and their component totals;
//! keys likewise, except that keys outside the merchant's key range from before the feed
//! (`MIN`/`MAX`, read once) are new without a lookup. Each `apply` call writes its rows with
//! multi-row statements (256 rows each, values bound straight into SQLite; running totals
//! summed per item and component first and written in key order), so a feed of 100k
//! messages costs a few thousand statements. Adjustment ids are assigned here (`MAX(id) + 1` onwards),
//! which is safe because the transaction holds SQLite's write lock. The CHECK constraints and
//! append-only triggers of the schema hold the refund invariants even against a bug in the
//! engine. This module does not decide what a feed does (see `engine`) nor parse order
//! reports (see [`crate::store::import`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{
    Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params,
};

use crate::engine::{
    Change, ComponentTotals, ItemState, KeyOrigin, KeyRecord, Needs, NewAdjustment, OrderState,
    PayloadDigest, RecentAdjustment, RecentAdjustments, Snapshot,
};
use crate::model::{
    AmazonOrderId, Component, Currency, FulfillmentChannel, MerchantId, MessageId, OrderItemCode,
    OrderRef, SellerId, format_minor, same_purchase_date, stored_purchase_date,
};
use crate::problem::Code;
use crate::store::{
    AdjustmentView, FeedDone, FeedRecord, FeedStatus, FeedTx, ImportSeen, ImportSummary, ItemView,
    NewFeed, OrderRow, OrderView, ReportFolder, RowSource, Store, StoreError,
    check_charged_after_import, created_on, import_invalid, may_have_adjustments,
    merchant_item_id_taken, merchant_order_id_taken, shipped_after_import,
};

/// The embedded migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite/0001_initial.sql"),
    include_str!("migrations/sqlite/0002_load_indexes.sql"),
    include_str!("migrations/sqlite/0003_quantity_returned.sql"),
    include_str!("migrations/sqlite/0004_load_purchase_date.sql"),
    include_str!("migrations/sqlite/0005_report_folder.sql"),
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a statement waits for another connection's lock before failing as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sizes of the `IN (...)` lists used when loading orders and keys. A batch is padded to
/// the next size (repeating its last id), so a few cached statements serve every feed: a
/// one-order feed runs `IN (?)` (an equality), a large one runs lists of 1024.
const BATCH_SIZES: [usize; 4] = [1, 16, 128, 1024];

/// Ids per batch: the largest of [`BATCH_SIZES`].
const BATCH: usize = BATCH_SIZES[BATCH_SIZES.len() - 1];

/// The list size a batch of `len` ids is padded to.
fn batch_size(len: usize) -> usize {
    BATCH_SIZES
        .iter()
        .copied()
        .find(|size| *size >= len)
        .unwrap_or(BATCH)
}

/// The SQLite order store. Holds the database connection and the single-writer lock.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    // Held for the life of the store; dropping it releases the lock. `None` for a read-only
    // store, which takes no lock. Declared after `conn`, so it is dropped after it: closing
    // a descriptor of the database file drops every POSIX lock this process holds on the
    // file, SQLite's included, so ours is closed only once SQLite's connection is.
    _lock: Option<WriterLock>,
}

/// The single-writer lock of a database: the lock file beside its canonical path, which
/// names the holder, and an exclusive `flock` on the database file itself, which follows
/// the file's identity (its inode) rather than its path, so a hard link or a second mount
/// of the file meets it too. Linux `flock` locks and the POSIX (`fcntl`) locks SQLite takes
/// do not interact on a local filesystem, and a `flock` belongs to our own descriptor: SQLite
/// opening or closing its descriptors of the file leaves it alone.
struct WriterLock {
    _named: File,
    /// `None` on NFS and SMB, where the kernel emulates `flock` with a byte-range lock of
    /// the whole file, which would conflict with SQLite's own locks (the lock file still
    /// guards those, as before).
    _database: Option<File>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating when absent, with its parent folder) and migrates the database at
    /// `path`, after taking the single-writer lock `<path>.lock` (`path` resolved, see
    /// `lock_path`).
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another process (or another store in this process)
    /// holds the lock; [`StoreError::SchemaTooNew`] for a database written by a newer
    /// adjustd; [`StoreError::Other`] when the file, its lock file or its folder can never
    /// be opened as configured (not a folder, no permission, a read-only file system, ...);
    /// [`StoreError::Unavailable`] only for the few causes that can pass (interrupted, timed
    /// out, busy).
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        refuse_non_database(path)?;
        // Said in the log, so a mistyped path shows as a new, empty store.
        let created = !path.exists();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                open_error(
                    &format!("cannot create folder {}", parent.display()),
                    parent,
                    &e,
                )
            })?;
        }
        let named = take_lock(path)?;
        let mut conn = Connection::open(path).map_err(|e| unopenable(path, e))?;
        // After SQLite's open, which creates the file; nothing has been read or written yet.
        let lock = WriterLock {
            _named: named,
            _database: lock_database_file(path)?,
        };
        configure(&conn, path)?;
        migrate(&mut conn)?;
        conn.set_prepared_statement_cache_capacity(128);
        if created {
            tracing::info!(path = %path.display(), "created a new, empty SQLite store");
        }
        Ok(SqliteStore {
            conn,
            path: path.to_owned(),
            _lock: Some(lock),
        })
    }

    /// Opens an existing database for reading only, without the single-writer lock, so
    /// operators can look at the store while the daemon runs (`orders show`, `feeds list`).
    /// WAL mode lets such readers see the last committed state without blocking the writer.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when there is no database yet,
    /// [`StoreError::SchemaTooNew`] / [`StoreError::Invalid`] when its schema version is not
    /// this build's (a writer migrates it first), [`StoreError::Other`] for a folder.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        refuse_non_database(path)?;
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Unavailable {
            detail: format!(
                "cannot open {} for reading: {e} (import orders or run the daemon first)",
                path.display()
            ),
        })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_error)?;
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db_error)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            return Err(StoreError::Invalid {
                detail: format!(
                    "{} has schema version {found}, this adjustd reads version {SCHEMA_VERSION}: \
                     open it once with a writing command (orders import, process or run) to migrate it",
                    path.display()
                ),
            });
        }
        Ok(SqliteStore {
            conn,
            path: path.to_owned(),
            _lock: None,
        })
    }

    /// How long a statement waits for another connection's lock before the operation
    /// fails with [`StoreError::Unavailable`] (default 5 s).
    ///
    /// # Errors
    /// A driver error.
    pub fn set_busy_timeout(&mut self, timeout: Duration) -> Result<(), StoreError> {
        self.conn.busy_timeout(timeout).map_err(db_error)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `<db>.lock` next to the database, named after the database's canonical path (symlinks,
/// `.` and `..` resolved, as SQLite itself resolves them to name the `-wal` file), so that
/// two spellings of one database (a symlinked file or folder, a relative path) share one
/// lock. The database may not exist yet: then its folder is resolved and its name kept. A
/// path that cannot be resolved at all (a dangling symlink) is used as written.
fn lock_path(path: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(path)
        .ok()
        .or_else(|| {
            let name = path.file_name()?;
            let folder = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            std::fs::canonicalize(folder)
                .ok()
                .map(|folder| folder.join(name))
        })
        .unwrap_or_else(|| path.to_owned());
    let mut name = canonical.into_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

fn take_lock(path: &Path) -> Result<File, StoreError> {
    let lock_path = lock_path(path);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| {
            open_error(
                &format!("cannot open lock file {}", lock_path.display()),
                &lock_path,
                &e,
            )
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // Best effort: the holder may be rewriting it right now.
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(StoreError::Locked {
                path: path.display().to_string(),
                holder: if holder.is_empty() {
                    "unknown holder".to_owned()
                } else {
                    holder.to_owned()
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(open_error(
                &format!("cannot lock {}", lock_path.display()),
                &lock_path,
                &e,
            ));
        }
    }
    let holder = format!("pid {} on host {}\n", std::process::id(), this_host());
    let written = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(holder.as_bytes()))
        .and_then(|()| file.flush());
    written.map_err(|e| {
        open_error(
            &format!("cannot write lock file {}", lock_path.display()),
            &lock_path,
            &e,
        )
    })?;
    Ok(file)
}

/// The name of this machine, for naming a lock's holder.
fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// Filesystems whose `flock` is a byte-range lock of the whole file, seen by SQLite's POSIX
/// locks (flock(2), "NFS details" and "CIFS details"): NFS, SMB, CIFS and SMB2 `f_type`s.
const FLOCK_EMULATED_FILESYSTEMS: [u32; 4] = [0x6969, 0x517B, 0xFF53_4D42, 0xFE53_4D42];

/// Takes the exclusive, non-blocking `flock` on the database file itself (see
/// [`WriterLock`]); `None` where the filesystem emulates `flock` ([`FLOCK_EMULATED_FILESYSTEMS`]).
/// Refused, it names the holder found in `/proc/locks`: whoever holds it reached the file
/// through another path, or the lock file would have refused us first.
fn lock_database_file(path: &Path) -> Result<Option<File>, StoreError> {
    let file = File::open(path).map_err(|e| {
        open_error(
            &format!("cannot open {} to lock it", path.display()),
            path,
            &e,
        )
    })?;
    let emulated = rustix::fs::fstatfs(&file).is_ok_and(|statfs| {
        // The magic numbers are 32-bit; `f_type` is a C long (or `__u32`) by platform.
        #[allow(clippy::cast_possible_truncation, clippy::unnecessary_cast)]
        let kind = statfs.f_type as u32;
        FLOCK_EMULATED_FILESYSTEMS.contains(&kind)
    });
    if emulated {
        return Ok(None);
    }
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.display().to_string(),
            holder: database_file_holder(&file),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(open_error(
            &format!("cannot lock {}", path.display()),
            path,
            &e,
        )),
    }
}

/// Who holds the `flock` on `file`, from the kernel's list of locks (`/proc/locks`: `ID:
/// FLOCK ADVISORY WRITE PID MAJOR:MINOR:INODE START END`).
fn database_file_holder(file: &File) -> String {
    use std::os::unix::fs::MetadataExt;
    let through = "through another path to the same file (a hard link or a second mount)";
    let holder = file.metadata().ok().and_then(|metadata| {
        let device = rustix::fs::Dev::from(metadata.dev());
        let inode = format!(
            "{:02x}:{:02x}:{}",
            rustix::fs::major(device),
            rustix::fs::minor(device),
            metadata.ino()
        );
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        locks.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                [_, "FLOCK", _, "WRITE", pid, lock_inode, ..]
                    if lock_inode == inode && pid != "0" =>
                {
                    Some(pid.to_owned())
                }
                _ => None,
            }
        })
    });
    match holder {
        Some(pid) => format!("pid {pid} on host {}, {through}", this_host()),
        None => format!("unknown holder, {through}"),
    }
}

/// Classifies a failure to create or open the database's folder or lock file. The daemon
/// retries transient errors at start for ever, so only causes that can pass by themselves
/// are [`StoreError::Unavailable`]; a path that cannot work (a file where a folder should
/// be, no permission, a read-only filesystem, a name the filesystem refuses, a folder that
/// cannot be created there) is [`StoreError::Other`], naming the path and the fix.
fn open_error(what: &str, path: &Path, error: &std::io::Error) -> StoreError {
    use std::io::ErrorKind;
    if error.kind() == ErrorKind::PermissionDenied
        && let Some(owner) = owned_by_another_user(path)
    {
        return StoreError::Other {
            detail: format!(
                "{what}: {error}: it belongs to {owner}, not to the user adjustd runs as (uid {}), so another user made the store (`orders import` or `process` run as root, say); give the database and its -wal, -shm and .lock files to the user the daemon runs as (chown), and run imports as that user",
                rustix::process::geteuid().as_raw()
            ),
        };
    }
    let hint = match error.kind() {
        ErrorKind::Interrupted
        | ErrorKind::WouldBlock
        | ErrorKind::TimedOut
        | ErrorKind::ResourceBusy
        | ErrorKind::StaleNetworkFileHandle => {
            return StoreError::Unavailable {
                detail: format!("{what}: {error}"),
            };
        }
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            return StoreError::Unavailable {
                detail: format!(
                    "{what}: {error}: the filesystem that holds it is full; {FULL_FIX}"
                ),
            };
        }
        ErrorKind::NotADirectory | ErrorKind::AlreadyExists => {
            "a part of the path is a file, not a folder"
        }
        ErrorKind::PermissionDenied => "adjustd may not write there",
        ErrorKind::ReadOnlyFilesystem => "the filesystem is read-only",
        ErrorKind::NotFound => "that folder cannot be created there",
        _ => "the path cannot be used",
    };
    StoreError::Other {
        detail: format!("{what}: {error}: {hint}; {STORE_PATH_FIX}"),
    }
}

/// "uid N" when `path` (or its folder, when it does not exist) belongs to another user than
/// the one adjustd runs as: the likely reason it may not be written.
fn owned_by_another_user(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path)
        .or_else(|_| std::fs::metadata(path.parent().unwrap_or(Path::new("."))))
        .ok()?;
    (metadata.uid() != rustix::process::geteuid().as_raw())
        .then(|| format!("uid {}", metadata.uid()))
}

/// A driver error while opening and configuring the database: busy or locked (another
/// process holds it) stays [`StoreError::Unavailable`], which passes; anything else that
/// [`db_error`] calls unavailable (cannot open, read-only, permission denied) cannot pass by
/// waiting, so it is not reported as such.
fn unopenable(path: &Path, error: rusqlite::Error) -> StoreError {
    if is_busy(&error) {
        return db_error(error);
    }
    match db_error(error) {
        // SQLite calls a full filesystem a "disk I/O error" when it cannot even open the
        // database: say what it is, and that it passes (`run` waits for it, as for any store
        // that is away).
        StoreError::Unavailable { detail } | StoreError::Other { detail }
            if let Some(free) = free_bytes_if_full(path) =>
        {
            StoreError::Unavailable {
                detail: format!(
                    "cannot open {}: {detail}: the filesystem that holds it is full ({free} bytes free); {FULL_FIX}",
                    path.display()
                ),
            }
        }
        StoreError::Unavailable { detail } => StoreError::Other {
            detail: format!("cannot open {}: {detail}; {STORE_PATH_FIX}", path.display()),
        },
        other => other,
    }
}

/// The bytes free for adjustd on the filesystem of the database at `path` (its folder),
/// when that is too little for SQLite to open or create the database (under 1 MiB).
fn free_bytes_if_full(path: &Path) -> Option<u64> {
    const TOO_LITTLE: u64 = 1 << 20;
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let stats = rustix::fs::statvfs(folder).ok()?;
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    (free < TOO_LITTLE).then_some(free)
}

/// A folder (or a link to one), or a file that is something else than an SQLite database,
/// can never be the store: said so before a lock file is made beside it and before SQLite
/// reports a "disk I/O error", "unable to open database file" or "file is not a database",
/// which blame the disk or the permissions. An empty file is a database SQLite has not
/// written yet; a file that cannot be read is left to SQLite's own error.
fn refuse_non_database(path: &Path) -> Result<(), StoreError> {
    let fix = "set [store] url (or ADJUSTD_STORE_URL) to sqlite:PATH with the database file's path";
    if std::fs::metadata(path).is_ok_and(|metadata| metadata.is_dir()) {
        return Err(StoreError::Other {
            detail: format!(
                "{} is a folder, not a database file: {fix}, e.g. sqlite:{}",
                path.display(),
                path.join("adjustd.db").display()
            ),
        });
    }
    let mut header = [0_u8; 16];
    let read = File::open(path).and_then(|mut file| {
        let mut filled = 0;
        while filled < header.len() {
            match file.read(&mut header[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    });
    if let Ok(filled @ 1..) = read
        && header[..filled] != SQLITE_HEADER[..filled.min(SQLITE_HEADER.len())]
    {
        return Err(StoreError::Other {
            detail: format!(
                "{} is not an SQLite database (its first bytes are not \"SQLite format 3\"): {fix}",
                path.display()
            ),
        });
    }
    Ok(())
}

/// The first 16 bytes of every SQLite 3 database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// True when another connection held the database beyond the busy timeout.
fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(failure, _)
            if matches!(failure.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// What to do about a store on a full filesystem (`run` waits for it meanwhile).
const FULL_FIX: &str = "free space there, or set [store] url (or ADJUSTD_STORE_URL) to \
     sqlite:PATH on another filesystem";

/// What to do about a store path that cannot be used.
const STORE_PATH_FIX: &str =
    "set [store] url (or ADJUSTD_STORE_URL) to sqlite:PATH in a folder adjustd can write";

/// Sets the connection up for writing (busy timeout, WAL, durability); errors as
/// [`unopenable`] words them.
fn configure(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let unopenable = |e| unopenable(path, e);
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unopenable)?;
    // The bundled SQLite is built with STAT4, which re-prepares a statement whenever a new
    // value is bound to a parameter its plan looked at: measured on `orders import`, a
    // quarter of the time went into re-parsing one query. The query planner stability
    // guarantee keeps each prepared plan.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(unopenable)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(unopenable)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Other {
            detail: format!(
                "cannot open {}: cannot switch the database to WAL mode (got {mode:?}); {STORE_PATH_FIX}",
                path.display()
            ),
        });
    }
    // A 64 MiB page cache keeps a large feed's working set (orders, totals, new rows) in
    // memory instead of spilling into the WAL before commit. No mmap: measured on a
    // 200k-message feed it cost more CPU (11.9 s vs 10.7 s) and its touched pages added
    // ~80 MB to the resident set.
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536; \
         PRAGMA mmap_size = 0; PRAGMA temp_store = MEMORY;",
    )
    .map_err(unopenable)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_error)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (version, sql) in (1_i64..).zip(MIGRATIONS).skip_while(|(v, _)| *v <= found) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(db_error)?;
        tx.execute_batch(sql).map_err(db_error)?;
        // PRAGMA takes no bound parameters; the version is our own integer.
        tx.execute_batch(&format!("PRAGMA user_version = {version}"))
            .map_err(db_error)?;
        tx.commit().map_err(db_error)?;
    }
    Ok(())
}

/// Maps a driver error: constraint violations are invariant breaches; I/O trouble, and a
/// database still busy or locked once the busy timeout has passed, mean the database is
/// unavailable. Busy is not a [`StoreError::Conflict`]: one adjustd writes a SQLite
/// database (the lock file), so it is another process (a backup, a `sqlite3` shell) holding
/// it, an outage like a PostgreSQL restart that the daemon must report at once (health,
/// metric, the batch given back) rather than retry as a race between peers.
fn db_error(e: rusqlite::Error) -> StoreError {
    let detail = e.to_string();
    match &e {
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Unavailable {
                detail: format!(
                    "{detail} (another process held it for longer than the busy timeout of {} s)",
                    BUSY_TIMEOUT.as_secs()
                ),
            },
            ErrorCode::ConstraintViolation => StoreError::Invalid { detail },
            ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::PermissionDenied
            | ErrorCode::ReadOnly => StoreError::Unavailable { detail },
            _ => StoreError::Other { detail },
        },
        _ => StoreError::Other { detail },
    }
}

/// A stored seller-assigned id (`NULL` is `None`); a value that is not one is corruption.
fn seller_id(raw: Option<String>, what: &str) -> Result<Option<SellerId>, StoreError> {
    raw.map(|m| SellerId::new(&m).ok_or_else(|| corrupt(what, &m)))
        .transpose()
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Other {
        detail: format!("the database holds an invalid {what}: {value:?}"),
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Message ids are `u64`; SQLite integers are `i64`. Store the same 64 bits (ids above
/// `i64::MAX` read back negative in raw SQL, and round-trip exactly through adjustd).
fn message_id_to_sql(id: MessageId) -> i64 {
    id.get() as i64
}

fn message_id_from_sql(raw: i64) -> Result<MessageId, StoreError> {
    MessageId::new(raw as u64).ok_or_else(|| corrupt("message id", &raw.to_string()))
}

fn count_to_sql(n: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Invalid {
        detail: format!("{what} {n} does not fit the database"),
    })
}

/// The state rejection a key was pinned with, from its `ResultMessageCode`. 5000 is shared
/// by `SCHEMA_INVALID` and `DUPLICATE_ADJUSTMENT`, neither of which is ever pinned, so it
/// is not a valid pinned number.
pub fn pinned_code_from_number(number: i64) -> Option<Code> {
    if number == 5000 {
        return None;
    }
    Code::ALL
        .iter()
        .copied()
        .find(|c| i64::from(c.number()) == number)
}

const FEED_COLUMNS: &str = "id, merchant, file_name, content_hash, status, duplicate_of, \
    processed_at, messages_processed, messages_successful, messages_with_error, \
    messages_with_warning, report_json, report_folder";

fn feed_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<FeedRecordRaw> {
    Ok(FeedRecordRaw {
        id: row.get(0)?,
        merchant: row.get(1)?,
        file_name: row.get(2)?,
        content_hash: row.get(3)?,
        status: row.get(4)?,
        duplicate_of: row.get(5)?,
        processed_at: row.get(6)?,
        counts: [row.get(7)?, row.get(8)?, row.get(9)?, row.get(10)?],
        report_json: row.get(11)?,
        report_folder: row.get(12)?,
    })
}

struct FeedRecordRaw {
    id: i64,
    merchant: Option<String>,
    file_name: String,
    content_hash: String,
    status: String,
    duplicate_of: Option<i64>,
    processed_at: Option<String>,
    counts: [i64; 4],
    report_json: Option<String>,
    report_folder: Option<String>,
}

impl FeedRecordRaw {
    fn into_record(self) -> Result<FeedRecord, StoreError> {
        let status = match self.status.as_str() {
            "Complete" => FeedStatus::Complete,
            "Rejected" => FeedStatus::Rejected,
            other => return Err(corrupt("committed feed status", other)),
        };
        let unsigned = |n: i64| u64::try_from(n).map_err(|_| corrupt("count", &n.to_string()));
        Ok(FeedRecord {
            id: unsigned(self.id)?,
            merchant: self.merchant,
            file_name: self.file_name,
            content_hash: self.content_hash,
            status,
            duplicate_of: self.duplicate_of.map(unsigned).transpose()?,
            processed_at: self.processed_at.unwrap_or_default(),
            messages_processed: unsigned(self.counts[0])?,
            messages_successful: unsigned(self.counts[1])?,
            messages_with_error: unsigned(self.counts[2])?,
            messages_with_warning: unsigned(self.counts[3])?,
            report_json: self.report_json.unwrap_or_default(),
            report_folder: ReportFolder::from_column(self.report_folder)?,
        })
    }
}

impl SqliteStore {
    fn feed_where(
        &mut self,
        condition: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<FeedRecord>, StoreError> {
        let sql = format!("SELECT {FEED_COLUMNS} FROM feeds WHERE {condition}");
        let mut stmt = self.conn.prepare_cached(&sql).map_err(db_error)?;
        let raws = stmt
            .query_map(params, feed_from_row)
            .map_err(db_error)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_error)?;
        raws.into_iter().map(FeedRecordRaw::into_record).collect()
    }
}

impl Store for SqliteStore {
    fn begin_feed(&mut self, feed: &NewFeed) -> Result<Box<dyn FeedTx + '_>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_error)?;
        let now = now();
        let feed_id = {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO feeds (merchant, file_name, content_hash, claim_token, status, \
                     received_at, report_folder) VALUES (?1, ?2, ?3, ?4, 'Processing', ?5, ?6) \
                     RETURNING id",
                )
                .map_err(db_error)?;
            let id: i64 = stmt
                .query_row(
                    params![
                        feed.merchant.as_ref().map(MerchantId::as_str),
                        feed.file_name,
                        feed.content_hash,
                        feed.claim_token,
                        now,
                        feed.report_folder.to_column()
                    ],
                    |r| r.get(0),
                )
                .map_err(db_error)?;
            id
        };
        let recent = feed.recent_adjustments_since.map(|since| Recent {
            since: since.format("%Y-%m-%d").to_string(),
            feed_id,
        });
        let overlay = Overlay {
            // This feed's adjustments, as the writing connection would load them.
            recent_on: recent.as_ref().and_then(|_| created_on(&now)),
            ..Overlay::default()
        };
        Ok(Box::new(SqliteFeedTx {
            tx,
            feed_id,
            items: HashMap::new(),
            components: HashSet::default(),
            components_read: HashSet::default(),
            next_adjustment_id: None,
            created_at: now,
            prior_keys: None,
            written_keys: HashSet::default(),
            path: &self.path,
            loader: LoaderState::Idle,
            touched: HashSet::default(),
            overlay,
            recent,
            failed: false,
        }))
    }

    fn feed_by_claim(&mut self, claim_token: &str) -> Result<Option<FeedRecord>, StoreError> {
        Ok(self
            .feed_where(
                "claim_token = ?1 AND status <> 'Processing'",
                &[&claim_token],
            )?
            .into_iter()
            .next())
    }

    fn feed_by_hash(
        &mut self,
        merchant: &MerchantId,
        content_hash: &str,
    ) -> Result<Option<FeedRecord>, StoreError> {
        Ok(self
            .feed_where(
                "merchant = ?1 AND content_hash = ?2 AND status = 'Complete' \
                 AND duplicate_of IS NULL ORDER BY id LIMIT 1",
                &[&merchant.as_str(), &content_hash],
            )?
            .into_iter()
            .next())
    }

    fn recent_feeds(&mut self, limit: u32) -> Result<Vec<FeedRecord>, StoreError> {
        self.feed_where(
            "status <> 'Processing' ORDER BY id DESC LIMIT ?1",
            &[&i64::from(limit)],
        )
    }

    fn import_orders(
        &mut self,
        merchant: &MerchantId,
        rows: &dyn RowSource,
    ) -> Result<ImportSummary, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_error)?;
        let mut seen = ImportSeen::default();
        let mut lines = 0;
        for row in rows.rows()? {
            let row = row?;
            lines += 1;
            if seen.repeat(&row)? {
                continue;
            }
            import_row(&tx, merchant, &row, &mut seen).map_err(|e| match e {
                StoreError::Invalid { detail } if !detail.starts_with("line ") => {
                    StoreError::Invalid {
                        detail: format!(
                            "line {}: order {} item {}: {detail}",
                            row.line, row.amazon_order_id, row.item_code
                        ),
                    }
                }
                other => other,
            })?;
        }
        tx.commit().map_err(db_error)?;
        Ok(seen.summary(lines))
    }

    fn orders(
        &mut self,
        merchant: Option<&MerchantId>,
        amazon_order_id: &str,
    ) -> Result<Vec<OrderView>, StoreError> {
        let tx = self.conn.transaction().map_err(db_error)?;
        type Head = (i64, String, Option<String>, String, String, Option<String>);
        let heads: Vec<Head> = tx
            .prepare_cached(
                "SELECT id, merchant, merchant_order_id, currency, fulfillment_channel, \
                 purchase_date FROM orders WHERE amazon_order_id = ?1 \
                 AND (?2 IS NULL OR merchant = ?2) ORDER BY merchant",
            )
            .map_err(db_error)?
            .query_map(
                params![amazon_order_id, merchant.map(MerchantId::as_str)],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .map_err(db_error)?
            .collect::<rusqlite::Result<_>>()
            .map_err(db_error)?;
        let mut views = Vec::with_capacity(heads.len());
        for (id, merchant, merchant_order_id, currency_code, channel, purchase_date) in heads {
            let currency = Currency::from_code(&currency_code)
                .ok_or_else(|| corrupt("currency", &currency_code))?;
            views.push(OrderView {
                merchant,
                amazon_order_id: amazon_order_id.to_owned(),
                merchant_order_id,
                currency: currency_code,
                fulfillment_channel: channel,
                purchase_date,
                items: item_views(&tx, id, currency)?,
                adjustments: adjustment_views(&tx, id, currency)?,
            });
        }
        tx.commit().map_err(db_error)?;
        Ok(views)
    }
}

fn item_views(
    tx: &Transaction<'_>,
    order_id: i64,
    currency: Currency,
) -> Result<Vec<ItemView>, StoreError> {
    type Raw = (i64, String, Option<String>, String, u32, u32, u32, u32);
    let raws: Vec<Raw> = tx
        .prepare_cached(
            "SELECT id, amazon_order_item_code, merchant_order_item_id, sku, quantity_ordered, \
             quantity_shipped, quantity_cancelled, quantity_returned FROM order_items \
             WHERE order_id = ?1 ORDER BY position",
        )
        .map_err(db_error)?
        .query_map([order_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })
        .map_err(db_error)?
        .collect::<rusqlite::Result<_>>()
        .map_err(db_error)?;
    let mut items = Vec::with_capacity(raws.len());
    let mut components = tx
        .prepare_cached(
            "SELECT component, charged, refunded FROM item_components WHERE item_id = ?1",
        )
        .map_err(db_error)?;
    for (id, code, merchant_item_id, sku, ordered, shipped, cancelled, returned) in raws {
        let principal = Component::Price(crate::model::PriceComponent::Principal).name();
        let mut charged = BTreeMap::from([(principal.to_owned(), format_minor(0, currency))]);
        let mut refunded = charged.clone();
        let rows = components
            .query_map([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(db_error)?;
        for row in rows {
            let (name, c, r) = row.map_err(db_error)?;
            if c == 0 && r == 0 && name != principal {
                continue;
            }
            charged.insert(name.clone(), format_minor(c, currency));
            refunded.insert(name, format_minor(r, currency));
        }
        items.push(ItemView {
            amazon_order_item_code: code,
            merchant_order_item_id: merchant_item_id,
            sku,
            quantity_ordered: ordered,
            quantity_shipped: shipped,
            quantity_cancelled: cancelled,
            quantity_returned: returned,
            charged,
            refunded,
        });
    }
    Ok(items)
}

fn adjustment_views(
    tx: &Transaction<'_>,
    order_id: i64,
    currency: Currency,
) -> Result<Vec<AdjustmentView>, StoreError> {
    type Raw = (
        i64,
        i64,
        i64,
        String,
        String,
        Option<String>,
        u32,
        Option<u32>,
        Option<String>,
        String,
    );
    let raws: Vec<Raw> = tx
        .prepare_cached(
            "SELECT a.id, a.feed_id, a.message_id, i.amazon_order_item_code, a.reason, \
             a.action_type, a.quantity_cancelled, a.quantity, a.merchant_adjustment_item_id, \
             a.created_at FROM adjustments a JOIN order_items i ON i.id = a.item_id \
             WHERE i.order_id = ?1 ORDER BY a.id",
        )
        .map_err(db_error)?
        .query_map([order_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        })
        .map_err(db_error)?
        .collect::<rusqlite::Result<_>>()
        .map_err(db_error)?;
    let mut amounts = tx
        .prepare_cached("SELECT component, amount FROM adjustment_amounts WHERE adjustment_id = ?1")
        .map_err(db_error)?;
    let mut views = Vec::with_capacity(raws.len());
    for (id, feed_id, message_id, code, reason, action, cancelled, quantity, key, created_at) in
        raws
    {
        let mut map = BTreeMap::new();
        let rows = amounts
            .query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db_error)?;
        for row in rows {
            let (name, amount) = row.map_err(db_error)?;
            map.insert(name, format_minor(amount, currency));
        }
        views.push(AdjustmentView {
            feed_id: u64::try_from(feed_id)
                .map_err(|_| corrupt("feed id", &feed_id.to_string()))?,
            message_id: message_id_from_sql(message_id)?.get(),
            amazon_order_item_code: code,
            reason,
            action_type: action,
            quantity_cancelled: cancelled,
            quantity,
            merchant_adjustment_item_id: key,
            amounts: map,
            created_at,
        });
    }
    Ok(views)
}

/// The error of an import's write of `row`: when it breaks a unique key because the line's
/// merchant-order-id belongs to another order of the merchant, or its
/// merchant-order-item-id to another item of the order (`order_id`, once known), the error
/// says so and names that order or item; otherwise the database's own error.
fn import_write_error(
    tx: &Transaction<'_>,
    merchant: &MerchantId,
    order_id: Option<i64>,
    row: &OrderRow,
    error: rusqlite::Error,
) -> StoreError {
    if error.sqlite_error_code() != Some(ErrorCode::ConstraintViolation) {
        return db_error(error);
    }
    let holder = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Option<String> {
        tx.query_row(sql, params, |r| r.get(0)).ok()
    };
    if let Some(id) = &row.merchant_order_id
        && let Some(order) = holder(
            "SELECT amazon_order_id FROM orders WHERE merchant = ?1 \
             AND merchant_order_id = ?2 AND amazon_order_id <> ?3",
            &[
                &merchant.as_str(),
                &id.as_str(),
                &row.amazon_order_id.as_str(),
            ],
        )
    {
        return merchant_order_id_taken(row, &order);
    }
    if let (Some(order_id), Some(id)) = (order_id, &row.merchant_item_id)
        && let Some(item) = holder(
            "SELECT amazon_order_item_code FROM order_items WHERE order_id = ?1 \
             AND merchant_order_item_id = ?2 AND amazon_order_item_code <> ?3",
            &[&order_id, &id.as_str(), &row.item_code.as_str()],
        )
    {
        return merchant_item_id_taken(row, &item);
    }
    db_error(error)
}

fn import_row(
    tx: &Transaction<'_>,
    merchant: &MerchantId,
    row: &OrderRow,
    seen: &mut ImportSeen,
) -> Result<(), StoreError> {
    let existing: Option<StoredOrder> = tx
        .prepare_cached(
            "SELECT id, currency, fulfillment_channel, merchant_order_id, purchase_date \
             FROM orders WHERE merchant = ?1 AND amazon_order_id = ?2",
        )
        .map_err(db_error)?
        .query_row(
            params![merchant.as_str(), row.amazon_order_id.as_str()],
            |r| {
                Ok(StoredOrder {
                    id: r.get(0)?,
                    currency: r.get(1)?,
                    channel: r.get(2)?,
                    merchant_order_id: r.get(3)?,
                    purchase_date: r.get(4)?,
                })
            },
        )
        .optional()
        .map_err(db_error)?;
    let (order_id, currency) = match existing {
        None => {
            let currency = row.currency.ok_or_else(|| {
                import_invalid(
                    row,
                    "currency",
                    "the order is not in the store and this report has no currency; import \
                     a New Orders report (with prices) first"
                        .into(),
                )
            })?;
            let channel = row.channel.unwrap_or(FulfillmentChannel::Merchant);
            let id: i64 = tx
                .prepare_cached(
                    "INSERT INTO orders (merchant, amazon_order_id, merchant_order_id, currency, \
                     fulfillment_channel, purchase_date) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     RETURNING id",
                )
                .map_err(db_error)?
                .query_row(
                    params![
                        merchant.as_str(),
                        row.amazon_order_id.as_str(),
                        row.merchant_order_id.as_ref().map(SellerId::as_str),
                        currency.code(),
                        channel.as_str(),
                        row.purchase_date
                    ],
                    |r| r.get(0),
                )
                .map_err(|e| import_write_error(tx, merchant, None, row, e))?;
            seen.order_created(id);
            (id, currency)
        }
        Some(order) => {
            let id = order.id;
            let stored = Currency::from_code(&order.currency)
                .ok_or_else(|| corrupt("currency", &order.currency))?;
            let channel: FulfillmentChannel = order
                .channel
                .parse()
                .map_err(|()| corrupt("fulfillment channel", &order.channel))?;
            seen.agree_with_stored(row, id, stored, channel)?;
            seen.order_found(id);
            // An empty field changes nothing. The channel can change here only for an order
            // this import created from a line without one (stored as MFN until a later line
            // of the order gives it).
            let changes = |given: Option<&str>, stored: Option<&str>| {
                given.is_some_and(|given| Some(given) != stored)
            };
            // A purchase-date that names the stored instant in another spelling (`Z`,
            // `+00:00`) is no change, and the stored text stays as it was.
            let purchase_date = row.purchase_date.as_deref().filter(|given| {
                order
                    .purchase_date
                    .as_deref()
                    .is_none_or(|stored| !same_purchase_date(given, stored))
            });
            let changed = changes(
                row.merchant_order_id.as_ref().map(SellerId::as_str),
                order.merchant_order_id.as_deref(),
            ) || changes(
                row.channel.map(FulfillmentChannel::as_str),
                Some(channel.as_str()),
            ) || purchase_date.is_some();
            if changed {
                tx.prepare_cached(
                    "UPDATE orders SET merchant_order_id = COALESCE(?2, merchant_order_id), \
                     fulfillment_channel = COALESCE(?3, fulfillment_channel), \
                     purchase_date = COALESCE(?4, purchase_date) WHERE id = ?1",
                )
                .map_err(db_error)?
                .execute(params![
                    id,
                    row.merchant_order_id.as_ref().map(SellerId::as_str),
                    row.channel.map(FulfillmentChannel::as_str),
                    purchase_date
                ])
                .map_err(|e| import_write_error(tx, merchant, None, row, e))?;
                seen.order_changed(id);
            }
            (id, stored)
        }
    };

    let item: Option<StoredItem> = tx
        .prepare_cached(
            "SELECT id, quantity_shipped, quantity_cancelled, sku, merchant_order_item_id, \
             quantity_ordered FROM order_items \
             WHERE order_id = ?1 AND amazon_order_item_code = ?2",
        )
        .map_err(db_error)?
        .query_row(params![order_id, row.item_code.as_str()], |r| {
            Ok(StoredItem {
                id: r.get(0)?,
                shipped: r.get(1)?,
                cancelled: r.get(2)?,
                sku: r.get(3)?,
                merchant_item_id: r.get(4)?,
                ordered: r.get(5)?,
            })
        })
        .optional()
        .map_err(db_error)?;
    let mut upsert = tx
        .prepare_cached(
            "INSERT INTO item_components (item_id, component, class, charged, refunded) \
             VALUES (?1, ?2, ?3, ?4, 0) \
             ON CONFLICT (item_id, component) DO UPDATE SET charged = excluded.charged",
        )
        .map_err(db_error)?;
    match item {
        None => {
            // A separate query: as a subquery of the INSERT, SQLite re-prepares the
            // statement on every execution.
            let position: i64 = tx
                .prepare_cached(
                    "SELECT COALESCE(MAX(position), 0) + 1 FROM order_items WHERE order_id = ?1",
                )
                .map_err(db_error)?
                .query_row([order_id], |r| r.get(0))
                .map_err(db_error)?;
            let item_id: i64 = tx
                .prepare_cached(
                    "INSERT INTO order_items (order_id, position, amazon_order_item_code, \
                     merchant_order_item_id, sku, quantity_ordered, quantity_shipped) \
                     VALUES (?1, ?7, ?2, ?3, ?4, ?5, ?6) RETURNING id",
                )
                .map_err(db_error)?
                .query_row(
                    params![
                        order_id,
                        row.item_code.as_str(),
                        row.merchant_item_id.as_ref().map(SellerId::as_str),
                        row.sku,
                        row.quantity_ordered,
                        row.quantity_shipped.unwrap_or(0),
                        position
                    ],
                    |r| r.get(0),
                )
                .map_err(|e| import_write_error(tx, merchant, Some(order_id), row, e))?;
            seen.item_created(order_id, item_id);
            // Nothing stored yet: held to the rules that do not depend on refunds.
            check_charged_after_import(row, currency, &BTreeMap::new())?;
            for (component, charged) in &row.charged {
                if *charged != 0 {
                    upsert
                        .execute(params![
                            item_id,
                            component.name(),
                            component.class().as_str(),
                            charged
                        ])
                        .map_err(db_error)?;
                }
            }
        }
        Some(stored) => {
            let item_id = stored.id;
            let shipped =
                shipped_after_import(row, i64::from(stored.shipped), i64::from(stored.cancelled))?;
            let mut changed = stored.sku != row.sku
                || stored.ordered != row.quantity_ordered
                || shipped != i64::from(stored.shipped)
                || row.merchant_item_id.as_ref().is_some_and(|given| {
                    Some(given.as_str()) != stored.merchant_item_id.as_deref()
                });
            if changed {
                tx.prepare_cached(
                    "UPDATE order_items SET sku = ?2, \
                     merchant_order_item_id = COALESCE(?3, merchant_order_item_id), \
                     quantity_ordered = ?4, quantity_shipped = ?5 WHERE id = ?1",
                )
                .map_err(db_error)?
                .execute(params![
                    item_id,
                    row.sku,
                    row.merchant_item_id.as_ref().map(SellerId::as_str),
                    row.quantity_ordered,
                    shipped
                ])
                .map_err(|e| import_write_error(tx, merchant, Some(order_id), row, e))?;
            }
            // An Unshipped Orders report has no prices: nothing to check or write.
            if !row.charged.is_empty() {
                let totals = item_totals(tx, item_id)?;
                check_charged_after_import(row, currency, &totals)?;
                for (component, charged) in &row.charged {
                    // A charge of 0 where none is stored is none, as for a new item.
                    let stored = totals.get(component).map(|t| t.charged);
                    if stored.map_or(*charged == 0, |stored| stored == *charged) {
                        continue;
                    }
                    upsert
                        .execute(params![
                            item_id,
                            component.name(),
                            component.class().as_str(),
                            charged
                        ])
                        .map_err(db_error)?;
                    changed = true;
                }
            }
            seen.item_found(order_id, item_id, changed);
        }
    }
    Ok(())
}

/// Every component of the stored item `item_id` with its totals, for an import line.
fn item_totals(
    tx: &Transaction<'_>,
    item_id: i64,
) -> Result<BTreeMap<Component, ComponentTotals>, StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT component, charged, refunded FROM item_components WHERE item_id = ?1",
        )
        .map_err(db_error)?;
    let rows = stmt
        .query_map([item_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(db_error)?;
    rows.map(|row| {
        let (name, charged, refunded) = row.map_err(db_error)?;
        let component = Component::from_name(&name).ok_or_else(|| corrupt("component", &name))?;
        Ok((component, ComponentTotals { charged, refunded }))
    })
    .collect()
}

/// An order as [`import_row`] finds it in the store.
struct StoredOrder {
    id: i64,
    currency: String,
    channel: String,
    merchant_order_id: Option<String>,
    purchase_date: Option<String>,
}

/// An order item as [`import_row`] finds it in the store.
struct StoredItem {
    id: i64,
    shipped: u32,
    cancelled: u32,
    sku: String,
    merchant_item_id: Option<String>,
    ordered: u32,
}

/// The open transaction of one feed on SQLite. Dropping it rolls back.
pub struct SqliteFeedTx<'a> {
    tx: Transaction<'a>,
    feed_id: i64,
    /// Item ids of the loaded orders, for [`FeedTx::apply`].
    items: HashMap<AmazonOrderId, HashMap<OrderItemCode, i64>>,
    /// The `item_components` rows that exist, so apply knows UPDATE from INSERT.
    components: HashSet<(i64, Component), IdBuild>,
    /// Items whose component rows were read into `components`.
    components_read: HashSet<i64, IdBuild>,
    /// The id the next adjustment gets (we hold the write lock, so ids are ours to pick);
    /// `None` until the first apply reads `MAX(id)`.
    next_adjustment_id: Option<i64>,
    created_at: String,
    /// The merchant and the smallest and largest key it had when this feed began (`None`:
    /// no keys), read by the first `load` (a range read later for another merchant may
    /// include this feed's keys: wider, so still exact).
    prior_keys: Option<(String, Option<(String, String)>)>,
    /// Hashes of the keys this feed wrote. With `prior_keys` they tell which keys may be in
    /// the database: a key outside the prior range and not in here is new without asking,
    /// so the engine's snapshot need not keep a feed's keys (memory stays flat). A hash
    /// collision only costs a query.
    written_keys: HashSet<u64, IdBuild>,
    /// The database file, for the prefetch connection.
    path: &'a Path,
    /// Loads the next chunk's orders on a second connection (see [`FeedTx::prefetch`]);
    /// started by the first prefetch.
    loader: LoaderState,
    /// Hashes of the AmazonOrderIDs this feed wrote to: only these can differ from the
    /// state before the feed, which the prefetch connection sees. A hash collision only
    /// costs a reload.
    touched: HashSet<u64, IdBuild>,
    /// What this feed wrote to some of the `touched` orders.
    overlay: Overlay,
    /// Which applied adjustments `load` gives each item (`None`: none).
    recent: Option<Recent>,
    /// An `apply` failed. Its rows may be half written (the totals are updated `OR FAIL`,
    /// which keeps the rows before a failing one), so this transaction must not commit.
    failed: bool,
}

/// Orders kept in an [`Overlay`] at most: about 0.5 KB each as measured (BENCHMARKS.md, run 5),
/// so at most about 65 MB.
const OVERLAY_ORDERS: usize = 131_072;

/// This feed's writes to orders it touched, recorded from an order's first write on: such
/// an order's state before the feed (as the prefetch connection reads it) plus its record
/// is its state now, so it need not be read again on the writing connection. When full,
/// the overlay is emptied; its orders stay `touched` and are read on the writing connection
/// again, so memory stays bounded and nothing is lost.
struct Overlay {
    orders: HashMap<AmazonOrderId, Vec<ItemDelta>>,
    /// [`OVERLAY_ORDERS`], or less in tests.
    cap: usize,
    /// The day of this feed's adjustments (`created_at`) when `load` gives items their
    /// recent adjustments, so the record keeps each one; `None`: it keeps none.
    recent_on: Option<chrono::NaiveDate>,
}

impl Default for Overlay {
    fn default() -> Overlay {
        Overlay {
            orders: HashMap::new(),
            cap: OVERLAY_ORDERS,
            recent_on: None,
        }
    }
}

/// What a feed wrote to one item: units cancelled and returned, the net amount per component added
/// to the running totals (a component without a row before gets one, charged 0), and the
/// payload and MessageID of each adjustment, for the item's recent adjustments (only when
/// those are loaded at all; 40 bytes each, as the overlay holds up to a feed's worth).
struct ItemDelta {
    item_id: i64,
    cancelled: u32,
    returned: u32,
    refunded: Vec<(Component, i64)>,
    recent: Vec<(PayloadDigest, MessageId)>,
}

impl Overlay {
    /// Records one adjustment of `order`. `first_write`: this feed never wrote to the order
    /// before, so a record started now is complete.
    fn record(
        &mut self,
        order: &AmazonOrderId,
        first_write: bool,
        adjustment: &NewAdjustment,
        item_id: i64,
    ) {
        let items = match self.orders.get_mut(order) {
            Some(items) => items,
            None if first_write => {
                if self.orders.len() >= self.cap {
                    self.orders.clear();
                }
                self.orders.entry(order.clone()).or_default()
            }
            // Written before without a record (or the overlay was emptied since).
            None => return,
        };
        let at = match items.iter().position(|item| item.item_id == item_id) {
            Some(at) => at,
            None => {
                items.push(ItemDelta {
                    item_id,
                    cancelled: 0,
                    returned: 0,
                    refunded: Vec::new(),
                    recent: Vec::new(),
                });
                items.len() - 1
            }
        };
        let item = &mut items[at];
        item.cancelled += adjustment.quantity_cancelled;
        item.returned += adjustment.quantity.unwrap_or(0);
        for (component, amount) in &adjustment.amounts {
            match item.refunded.iter_mut().find(|(c, _)| c == component) {
                Some((_, total)) => *total += amount,
                None => item.refunded.push((*component, *amount)),
            }
        }
        if self.recent_on.is_some()
            && let Some(payload) = PayloadDigest::from_hex(&adjustment.payload_hash)
        {
            // Most items get one; an item adjusted again and again grows as usual.
            if item.recent.capacity() == 0 {
                item.recent.reserve_exact(1);
            }
            item.recent.push((payload, adjustment.message_id));
        }
    }

    /// Brings a prefetched (pre-feed) order up to date; `false` when the order has no
    /// complete record here (or names an item it lacks), so it must be read again.
    fn bring_up_to_date(&self, order: &mut LoadedOrder) -> bool {
        let Some(items) = self.orders.get(&order.state.amazon_order_id) else {
            return false;
        };
        for delta in items {
            let Some(at) = order.item_ids.iter().position(|id| *id == delta.item_id) else {
                return false;
            };
            let item = &mut order.state.items[at];
            item.quantity_cancelled += delta.cancelled;
            item.quantity_returned += delta.returned;
            for (component, amount) in &delta.refunded {
                item.components
                    .entry(*component)
                    .or_insert(ComponentTotals {
                        charged: 0,
                        refunded: 0,
                    })
                    .refunded += amount;
            }
            // After the item's adjustments from before the feed: oldest first.
            if let Some(applied_on) = self.recent_on {
                for (payload, message_id) in &delta.recent {
                    item.recent_adjustments.push(RecentAdjustment {
                        payload: *payload,
                        origin: KeyOrigin {
                            feed_id: None,
                            message_id: *message_id,
                        },
                        applied_on,
                    });
                }
            }
        }
        true
    }
}

/// The prefetch connection of a feed.
enum LoaderState {
    /// Not needed yet.
    Idle,
    Running(Loader),
    /// Could not be started (logged); orders are loaded on the writing connection.
    Failed,
}

/// A second, read-only connection on its own thread that loads the orders of the next
/// chunk while the engine plans, and the writer writes, the current one.
///
/// Why its answer is exact: the feed's transaction holds SQLite's single write lock from
/// its start to its commit, so every read on another connection during the feed sees the
/// database as it was before the feed. An order differs from that state only if this feed
/// wrote to it (`SqliteFeedTx::touched`); such an order is brought up to date from the
/// feed's [`Overlay`], or loaded again on the writing connection when the overlay does not
/// hold it. Orders do not appear during a feed, so one the prefetch did not find does not
/// exist.
struct Loader {
    requests: Option<mpsc::Sender<Request>>,
    results: mpsc::Receiver<Prefetched>,
    /// A request was sent whose answer has not been taken yet.
    outstanding: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Orders of a merchant to prefetch.
struct Request {
    merchant: MerchantId,
    orders: Vec<OrderRef>,
}

/// The answer to a [`Request`]: the orders found among those asked for.
struct Prefetched {
    asked: Request,
    found: Result<Vec<LoadedOrder>, StoreError>,
}

impl Loader {
    fn start(path: &Path, recent: Option<Recent>) -> Result<Loader, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_error)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(db_error)?;
        // SQLite's default 2 MiB page cache: each chunk's orders are read once, so a larger
        // one (16 MiB was measured) only adds to the resident set.
        conn.execute_batch("PRAGMA cache_size = -2048; PRAGMA mmap_size = 0;")
            .map_err(db_error)?;
        let (requests, inbox) = mpsc::channel::<Request>();
        let (outbox, results) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("adjustd-prefetch".into())
            .spawn(move || {
                for asked in inbox {
                    let found = load_refs(&conn, &asked.merchant, &asked.orders, recent.as_ref());
                    if outbox.send(Prefetched { asked, found }).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| StoreError::Other {
                detail: format!("cannot start the prefetch thread: {e}"),
            })?;
        Ok(Loader {
            requests: Some(requests),
            results,
            outstanding: false,
            thread: Some(thread),
        })
    }

    /// Asks for `orders`, dropping the answer to an earlier request nobody took.
    fn request(&mut self, merchant: &MerchantId, orders: Vec<OrderRef>) -> bool {
        drop(self.take());
        let Some(requests) = &self.requests else {
            return false;
        };
        let request = Request {
            merchant: merchant.clone(),
            orders,
        };
        self.outstanding = requests.send(request).is_ok();
        self.outstanding
    }

    /// The answer to the outstanding request, waiting for it.
    fn take(&mut self) -> Option<Prefetched> {
        if !std::mem::take(&mut self.outstanding) {
            return None;
        }
        self.results.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the request channel ends the thread after its current query.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Loads orders named either way (see [`load_orders`]).
fn load_refs(
    conn: &Connection,
    merchant: &MerchantId,
    orders: &[OrderRef],
    recent: Option<&Recent>,
) -> Result<Vec<LoadedOrder>, StoreError> {
    let mut by_amazon = Vec::new();
    let mut by_merchant = Vec::new();
    for order in orders {
        match order {
            OrderRef::Amazon(id) => by_amazon.push(id.as_str()),
            OrderRef::Merchant(id) => by_merchant.push(id.as_str()),
        }
    }
    let mut loaded = load_orders(conn, merchant, "amazon_order_id", &by_amazon, recent)?;
    loaded.extend(load_orders(
        conn,
        merchant,
        "merchant_order_id",
        &by_merchant,
        recent,
    )?);
    Ok(loaded)
}

/// Rows of one `apply` call, written with multi-row statements at its end.
#[derive(Default)]
struct Pending<'c> {
    adjustments: Vec<AdjustmentRow<'c>>,
    amounts: Vec<(i64, &'static str, i64)>,
    /// Net delta per existing (item, component) row, in first-seen order.
    updates: Vec<((i64, Component), i64)>,
    /// New (item, component) rows with their refunded amount.
    inserts: Vec<((i64, Component), i64)>,
    slots: HashMap<(i64, Component), Slot, IdBuild>,
    /// Units cancelled and returned per adjusted item.
    units: Vec<(i64, u32, u32)>,
    keys: Vec<KeyRow<'c>>,
}

#[derive(Clone, Copy)]
enum Slot {
    Update(usize),
    Insert(usize),
}

struct AdjustmentRow<'c> {
    id: i64,
    message_id: i64,
    item_id: i64,
    reason: &'static str,
    action: Option<&'static str>,
    quantity_cancelled: u32,
    quantity: Option<u32>,
    key: Option<&'c str>,
    payload_hash: &'c str,
    net: i64,
}

struct KeyRow<'c> {
    key: &'c str,
    payload_hash: &'c str,
    message_id: i64,
    rejection: Option<u32>,
}

/// Rows per multi-row statement; the remainder goes one row at a time.
const ROWS: usize = 256;

/// One order as loaded, with the database ids of its items.
struct LoadedOrder {
    state: OrderState,
    item_ids: Vec<i64>,
    /// `order_items.position` of each item, to put them in import order.
    positions: Vec<i64>,
}

/// A hasher for database ids (and small tuples of them): multiply-xorshift, no SipHash.
/// Keys are our own row ids, so flooding is not a concern.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.write_u64(n as u64);
    }
}

type IdBuild = std::hash::BuildHasherDefault<IdHasher>;

/// A 64-bit hash (FNV-1a) of an idempotency key for [`SqliteFeedTx::written_keys`], or of an
/// AmazonOrderID for [`SqliteFeedTx::touched`].
fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Which applied adjustments [`load_orders`] gives each item
/// ([`ItemState::recent_adjustments`]).
#[derive(Debug, Clone)]
struct Recent {
    /// The first day, `YYYY-MM-DD`: `created_at` (RFC 3339 in UTC) compares as text.
    since: String,
    /// The feed being planned: its own adjustments have no feed id in their origin.
    feed_id: i64,
}

/// Loads the orders whose `column` (`amazon_order_id` or `merchant_order_id`) is in
/// `ids`, for `merchant`: one statement per batch returns each order's items with their
/// component totals (one row per component); strings are read in place and only the
/// identifiers the engine keeps are allocated. With `recent`, a second statement per batch
/// gives the items their recent adjustments ([`load_recent`]).
fn load_orders(
    conn: &Connection,
    merchant: &MerchantId,
    column: &str,
    ids: &[&str],
    recent: Option<&Recent>,
) -> Result<Vec<LoadedOrder>, StoreError> {
    let mut orders: Vec<LoadedOrder> = Vec::new();
    let mut order_at: IdMap<usize> = IdMap::default();
    let mut item_at: IdMap<(usize, usize)> = IdMap::default();
    // The covering index of migrations 2 and 4, named because without statistics the planner
    // takes the UNIQUE index and then reads every order row from the table as well.
    let hint = if column == "amazon_order_id" {
        "INDEXED BY orders_load"
    } else {
        ""
    };
    for chunk in ids.chunks(BATCH) {
        let placeholders = in_list(batch_size(chunk.len()));
        let sql = format!(
            "SELECT o.id, o.amazon_order_id, o.merchant_order_id, o.currency, \
             o.fulfillment_channel, i.id, i.amazon_order_item_code, i.merchant_order_item_id, \
             i.quantity_ordered, i.quantity_shipped, i.quantity_cancelled, i.position, \
             c.component, c.charged, c.refunded, i.quantity_returned, o.purchase_date \
             FROM orders o {hint} LEFT JOIN order_items i ON i.order_id = o.id \
             LEFT JOIN item_components c ON c.item_id = i.id \
             WHERE o.merchant = ?1 AND o.{column} IN ({placeholders})"
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(db_error)?;
        let params = padded_params(merchant.as_str(), chunk);
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(db_error)?;
        let text = |r: &rusqlite::Row<'_>, i: usize| -> Result<Option<String>, StoreError> {
            Ok(r.get_ref(i)
                .map_err(db_error)?
                .as_str_or_null()
                .map_err(|e| db_error(e.into()))?
                .map(str::to_owned))
        };
        while let Some(r) = rows.next().map_err(db_error)? {
            let order_id: i64 = r.get(0).map_err(db_error)?;
            let oi = match order_at.get(&order_id) {
                Some(oi) => *oi,
                None => {
                    let aid = text(r, 1)?.unwrap_or_default();
                    let moid = text(r, 2)?;
                    let cur = r.get_ref(3).map_err(db_error)?;
                    let cur = cur.as_str().map_err(|e| db_error(e.into()))?;
                    let channel = r.get_ref(4).map_err(db_error)?;
                    let channel = channel.as_str().map_err(|e| db_error(e.into()))?;
                    // Parsed once per order. The import only stores text the strict
                    // parser accepts; text an older build let in keeps the day it had
                    // (never failing the load), and text that is no date at all
                    // (`2026-02-30`) counts as no purchase date: `stored_purchase_date`.
                    let purchase_date = r
                        .get_ref(16)
                        .map_err(db_error)?
                        .as_str_or_null()
                        .map_err(|e| db_error(e.into()))?
                        .and_then(stored_purchase_date);
                    orders.push(LoadedOrder {
                        state: OrderState {
                            amazon_order_id: AmazonOrderId::new(&aid)
                                .ok_or_else(|| corrupt("AmazonOrderID", &aid))?,
                            merchant_order_id: seller_id(moid, "MerchantOrderID")?,
                            currency: Currency::from_code(cur)
                                .ok_or_else(|| corrupt("currency", cur))?,
                            channel: channel
                                .parse()
                                .map_err(|()| corrupt("fulfillment channel", channel))?,
                            purchase_date,
                            items: Vec::new(),
                        },
                        item_ids: Vec::new(),
                        positions: Vec::new(),
                    });
                    order_at.insert(order_id, orders.len() - 1);
                    orders.len() - 1
                }
            };
            let Some(item_id) = r.get::<_, Option<i64>>(5).map_err(db_error)? else {
                continue;
            };
            let (oi, ii) = match item_at.get(&item_id) {
                Some(at) => *at,
                None => {
                    let code = text(r, 6)?.unwrap_or_default();
                    let mid = text(r, 7)?;
                    let item = ItemState {
                        code: OrderItemCode::new(&code)
                            .ok_or_else(|| corrupt("AmazonOrderItemCode", &code))?,
                        merchant_item_id: seller_id(mid, "MerchantOrderItemID")?,
                        quantity_ordered: r.get(8).map_err(db_error)?,
                        quantity_shipped: r.get(9).map_err(db_error)?,
                        quantity_cancelled: r.get(10).map_err(db_error)?,
                        quantity_returned: r.get(15).map_err(db_error)?,
                        components: BTreeMap::new(),
                        recent_adjustments: RecentAdjustments::default(),
                    };
                    let order = &mut orders[oi];
                    order.state.items.push(item);
                    order.item_ids.push(item_id);
                    order.positions.push(r.get(11).map_err(db_error)?);
                    let at = (oi, order.item_ids.len() - 1);
                    item_at.insert(item_id, at);
                    at
                }
            };
            let name = r.get_ref(12).map_err(db_error)?;
            let Some(name) = name.as_str_or_null().map_err(|e| db_error(e.into()))? else {
                continue;
            };
            let component = Component::from_name(name).ok_or_else(|| corrupt("component", name))?;
            let totals = ComponentTotals {
                charged: r.get(13).map_err(db_error)?,
                refunded: r.get(14).map_err(db_error)?,
            };
            orders[oi].state.items[ii]
                .components
                .insert(component, totals);
        }
    }
    if let Some(recent) = recent
        && !item_at.is_empty()
    {
        load_recent(conn, recent, &mut orders, &item_at)?;
    }
    // Items in import order (the rows come in index order).
    for order in &mut orders {
        if order.positions.is_sorted() {
            continue;
        }
        let mut by_position: Vec<(i64, ItemState, i64)> = order
            .positions
            .drain(..)
            .zip(order.state.items.drain(..))
            .zip(order.item_ids.drain(..))
            .map(|((p, item), id)| (p, item, id))
            .collect();
        by_position.sort_by_key(|(p, _, _)| *p);
        for (p, item, id) in by_position {
            order.positions.push(p);
            order.state.items.push(item);
            order.item_ids.push(id);
        }
    }
    Ok(orders)
}

/// A map keyed by database id.
type IdMap<V> = HashMap<i64, V, IdBuild>;

/// Gives the items of `orders` (`item_at`: item id → order and item index) the adjustments
/// applied to them since `recent.since`: one statement per batch of up to [`BATCH`] items,
/// one search of the index `adjustments_item` per item that may have adjustments at all
/// ([`may_have_adjustments`]; none for an item never refunded). Its entries are in id order per
/// item, so each item's adjustments come oldest first. A payload hash that is not 64 hex
/// digits (no build writes one) cannot equal a new item's and is left out.
fn load_recent(
    conn: &Connection,
    recent: &Recent,
    orders: &mut [LoadedOrder],
    item_at: &IdMap<(usize, usize)>,
) -> Result<(), StoreError> {
    let item_ids: Vec<i64> = item_at
        .iter()
        .filter(|(_, (oi, ii))| may_have_adjustments(&orders[*oi].state.items[*ii]))
        .map(|(id, _)| *id)
        .collect();
    for chunk in item_ids.chunks(BATCH) {
        let size = batch_size(chunk.len());
        let sql = format!(
            "SELECT item_id, payload_hash, feed_id, message_id, created_at \
             FROM adjustments INDEXED BY adjustments_item \
             WHERE item_id IN ({}) AND created_at >= ?1",
            in_list(size)
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(db_error)?;
        stmt.raw_bind_parameter(1, recent.since.as_str())
            .map_err(db_error)?;
        // Padded with the last id, as for the orders (a repeated value in an IN list
        // selects no row twice).
        let last = chunk.last().copied().unwrap_or_default();
        for at in 0..size {
            stmt.raw_bind_parameter(at + 2, chunk.get(at).copied().unwrap_or(last))
                .map_err(db_error)?;
        }
        let mut rows = stmt.raw_query();
        while let Some(r) = rows.next().map_err(db_error)? {
            let item_id: i64 = r.get(0).map_err(db_error)?;
            let Some(&(oi, ii)) = item_at.get(&item_id) else {
                continue;
            };
            let hash = r.get_ref(1).map_err(db_error)?;
            let hash = hash.as_str().map_err(|e| db_error(e.into()))?;
            let Some(payload) = PayloadDigest::from_hex(hash) else {
                continue;
            };
            let feed_id: i64 = r.get(2).map_err(db_error)?;
            let created_at = r.get_ref(4).map_err(db_error)?;
            let created_at = created_at.as_str().map_err(|e| db_error(e.into()))?;
            let applied_on =
                created_on(created_at).ok_or_else(|| corrupt("created_at", created_at))?;
            // The index lists an item's adjustments in the order they were applied (by id).
            orders[oi].state.items[ii]
                .recent_adjustments
                .push(RecentAdjustment {
                    payload,
                    origin: KeyOrigin {
                        // This feed's own (on the writing connection) are "earlier in this
                        // feed".
                        feed_id: (feed_id != recent.feed_id)
                            .then(|| {
                                u64::try_from(feed_id)
                                    .map_err(|_| corrupt("feed id", &feed_id.to_string()))
                            })
                            .transpose()?,
                        message_id: message_id_from_sql(r.get(3).map_err(db_error)?)?,
                    },
                    applied_on,
                });
        }
    }
    Ok(())
}

impl SqliteFeedTx<'_> {
    /// [`FeedTx::apply`]: plans the rows of `changes` and writes them.
    fn write_changes(
        &mut self,
        merchant: &MerchantId,
        changes: &[Change],
    ) -> Result<(), StoreError> {
        let mut pending = Pending::default();
        for change in changes {
            match change {
                Change::Adjust(adjustment) => {
                    self.plan_adjustment(merchant, adjustment, &mut pending)
                        .map_err(|e| match e {
                            StoreError::Invalid { detail } => StoreError::Invalid {
                                detail: format!(
                                    "message {} order {} item {}: {detail}",
                                    adjustment.message_id,
                                    adjustment.amazon_order_id,
                                    adjustment.item_code
                                ),
                            },
                            other => other,
                        })?;
                }
                Change::PinRejection {
                    key,
                    payload_hash,
                    message_id,
                    code,
                } => {
                    if code.number() == 5000 {
                        return Err(StoreError::Invalid {
                            detail: format!(
                                "message {message_id}: {code} cannot be pinned under key {key}"
                            ),
                        });
                    }
                    pending.keys.push(KeyRow {
                        key: key.as_str(),
                        payload_hash,
                        message_id: message_id_to_sql(*message_id),
                        rejection: Some(code.number()),
                    });
                }
            }
        }
        // The rows are written together, so a constraint failure names the range of
        // messages rather than one (a failure here is a bug in the engine).
        let range = message_range(changes);
        self.flush(merchant, pending).map_err(|e| match e {
            StoreError::Invalid { detail } => StoreError::Invalid {
                detail: format!("{range}: {detail}"),
            },
            other => other,
        })
    }

    /// Loads `orders`: those the prefetch connection read and this feed has not written to
    /// from its answer, the rest on the writing connection.
    fn load_needed(
        &mut self,
        merchant: &MerchantId,
        orders: &[OrderRef],
    ) -> Result<Vec<LoadedOrder>, StoreError> {
        let answer = match &mut self.loader {
            LoaderState::Running(loader) => loader.take(),
            LoaderState::Idle | LoaderState::Failed => None,
        };
        let recent = self.recent.as_ref();
        let Some(Prefetched {
            asked,
            found: Ok(prefetched),
        }) = answer
        else {
            return load_refs(&self.tx, merchant, orders, recent);
        };
        if asked.merchant != *merchant {
            return load_refs(&self.tx, merchant, orders, recent);
        }
        let asked: HashSet<&OrderRef> = asked.orders.iter().collect();
        let mut found: HashMap<OrderRef, usize> = HashMap::new();
        for (at, order) in prefetched.iter().enumerate() {
            found.insert(OrderRef::Amazon(order.state.amazon_order_id.clone()), at);
            if let Some(id) = &order.state.merchant_order_id {
                found.insert(OrderRef::Merchant(id.clone()), at);
            }
        }
        let mut use_prefetched = vec![false; prefetched.len()];
        let mut again = Vec::new();
        for order in orders {
            if !asked.contains(order) {
                again.push(order.clone());
                continue;
            }
            // Not found before the feed: not there now either.
            let Some(&at) = found.get(order) else {
                continue;
            };
            use_prefetched[at] = true;
        }
        let mut loaded = Vec::with_capacity(prefetched.len());
        for (mut order, used) in prefetched.into_iter().zip(use_prefetched) {
            if !used {
                continue;
            }
            let amazon = &order.state.amazon_order_id;
            if self.touched.contains(&key_hash(amazon.as_str()))
                && !self.overlay.bring_up_to_date(&mut order)
            {
                again.push(OrderRef::Amazon(order.state.amazon_order_id));
                continue;
            }
            loaded.push(order);
        }
        loaded.extend(load_refs(&self.tx, merchant, &again, recent)?);
        Ok(loaded)
    }

    fn item_id(
        &self,
        merchant: &MerchantId,
        order: &AmazonOrderId,
        code: &OrderItemCode,
    ) -> Result<i64, StoreError> {
        if let Some(id) = self.items.get(order).and_then(|items| items.get(code)) {
            return Ok(*id);
        }
        self.tx
            .prepare_cached(
                "SELECT i.id FROM orders o JOIN order_items i ON i.order_id = o.id \
                 WHERE o.merchant = ?1 AND o.amazon_order_id = ?2 \
                 AND i.amazon_order_item_code = ?3",
            )
            .map_err(db_error)?
            .query_row(
                params![merchant.as_str(), order.as_str(), code.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_error)?
            .ok_or_else(|| StoreError::Invalid {
                detail: format!("order {order} of {merchant} has no item {code}"),
            })
    }

    /// Reads the component rows of an item that `load` did not load.
    fn read_components(&mut self, item_id: i64) -> Result<(), StoreError> {
        if !self.components_read.insert(item_id) {
            return Ok(());
        }
        let mut stmt = self
            .tx
            .prepare_cached("SELECT component FROM item_components WHERE item_id = ?1")
            .map_err(db_error)?;
        let names = stmt
            .query_map([item_id], |r| r.get::<_, String>(0))
            .map_err(db_error)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_error)?;
        for name in names {
            let component =
                Component::from_name(&name).ok_or_else(|| corrupt("component", &name))?;
            self.components.insert((item_id, component));
        }
        Ok(())
    }

    /// Adds one adjustment to `pending`.
    fn plan_adjustment<'c>(
        &mut self,
        merchant: &MerchantId,
        adjustment: &'c NewAdjustment,
        pending: &mut Pending<'c>,
    ) -> Result<(), StoreError> {
        let item_id = self.item_id(merchant, &adjustment.amazon_order_id, &adjustment.item_code)?;
        let first_write = self
            .touched
            .insert(key_hash(adjustment.amazon_order_id.as_str()));
        self.overlay.record(
            &adjustment.amazon_order_id,
            first_write,
            adjustment,
            item_id,
        );
        self.read_components(item_id)?;
        let net = adjustment
            .amounts
            .iter()
            .try_fold(0_i64, |sum, (_, amount)| sum.checked_add(*amount))
            .ok_or_else(|| StoreError::Invalid {
                detail: "the net of the adjustment overflows".into(),
            })?;
        let id = match self.next_adjustment_id {
            Some(id) => id,
            None => self
                .tx
                .prepare_cached("SELECT COALESCE(MAX(id), 0) + 1 FROM adjustments")
                .map_err(db_error)?
                .query_row([], |r| r.get(0))
                .map_err(db_error)?,
        };
        self.next_adjustment_id = Some(id + 1);
        let message_id = message_id_to_sql(adjustment.message_id);
        pending.adjustments.push(AdjustmentRow {
            id,
            message_id,
            item_id,
            reason: adjustment.reason.as_str(),
            action: adjustment.action.map(|a| a.as_str()),
            quantity_cancelled: adjustment.quantity_cancelled,
            quantity: adjustment.quantity,
            key: adjustment.merchant_adjustment_item_id(),
            payload_hash: &adjustment.payload_hash,
            net,
        });
        for (component, amount) in &adjustment.amounts {
            pending.amounts.push((id, component.name(), *amount));
            let slot_key = (item_id, *component);
            match pending.slots.get(&slot_key) {
                Some(Slot::Update(i)) => pending.updates[*i].1 += amount,
                Some(Slot::Insert(i)) => pending.inserts[*i].1 += amount,
                None if self.components.contains(&slot_key) => {
                    pending
                        .slots
                        .insert(slot_key, Slot::Update(pending.updates.len()));
                    pending.updates.push((slot_key, *amount));
                }
                None => {
                    pending
                        .slots
                        .insert(slot_key, Slot::Insert(pending.inserts.len()));
                    pending.inserts.push((slot_key, *amount));
                }
            }
        }
        let returned = adjustment.quantity.unwrap_or(0);
        if adjustment.quantity_cancelled > 0 || returned > 0 {
            pending
                .units
                .push((item_id, adjustment.quantity_cancelled, returned));
        }
        if let Some(key) = &adjustment.key {
            pending.keys.push(KeyRow {
                key: key.as_str(),
                payload_hash: &adjustment.payload_hash,
                message_id,
                rejection: None,
            });
        }
        Ok(())
    }

    /// Writes `pending` with multi-row statements: adjustments, their amounts, the
    /// running totals, cancelled quantities and keys.
    fn flush(&mut self, merchant: &MerchantId, mut pending: Pending<'_>) -> Result<(), StoreError> {
        let feed_id = self.feed_id;
        // Totals in key order: neighbouring rows share B-tree pages.
        pending.updates.sort_unstable_by_key(|(slot, _)| *slot);
        pending.inserts.sort_unstable_by_key(|(slot, _)| *slot);
        let created_at = self.created_at.as_str();
        write_rows(
            &self.tx,
            "INSERT INTO adjustments (id, feed_id, message_id, item_id, reason, action_type, \
             quantity_cancelled, quantity, merchant_adjustment_item_id, payload_hash, net, \
             created_at) VALUES ",
            12,
            "",
            &pending.adjustments,
            |a, out| {
                out.bind(a.id)?;
                out.bind(feed_id)?;
                out.bind(a.message_id)?;
                out.bind(a.item_id)?;
                out.bind(a.reason)?;
                out.bind(a.action)?;
                out.bind(a.quantity_cancelled)?;
                out.bind(a.quantity)?;
                out.bind(a.key)?;
                out.bind(a.payload_hash)?;
                out.bind(a.net)?;
                out.bind(created_at)
            },
        )?;
        write_rows(
            &self.tx,
            "INSERT INTO adjustment_amounts (adjustment_id, component, amount) VALUES ",
            3,
            "",
            &pending.amounts,
            |(id, component, amount), out| {
                out.bind(*id)?;
                out.bind(*component)?;
                out.bind(*amount)
            },
        )?;
        write_rows(
            &self.tx,
            "INSERT INTO item_components (item_id, component, class, charged, refunded) \
             SELECT column1, column2, column3, 0, column4 FROM (VALUES ",
            4,
            ")",
            &pending.inserts,
            |((item, component), refunded), out| {
                out.bind(*item)?;
                out.bind(component.name())?;
                out.bind(component.class().as_str())?;
                out.bind(*refunded)
            },
        )?;
        self.components
            .extend(pending.inserts.iter().map(|(slot, _)| *slot));
        // `OR FAIL`: without an ABORT to undo, SQLite keeps no statement journal for this
        // multi-row UPDATE (a tenth of the writing time, measured). A failure still fails
        // the feed: `failed` stops the commit and dropping the transaction rolls it back.
        write_rows(
            &self.tx,
            "UPDATE OR FAIL item_components SET refunded = refunded + v.column3 FROM (VALUES ",
            3,
            ") AS v WHERE item_components.item_id = v.column1 \
             AND item_components.component = v.column2",
            &pending.updates,
            |((item, component), delta), out| {
                out.bind(*item)?;
                out.bind(component.name())?;
                out.bind(*delta)
            },
        )?;
        if !pending.units.is_empty() {
            let mut stmt = self
                .tx
                .prepare_cached(
                    "UPDATE order_items SET quantity_cancelled = quantity_cancelled + ?2, \
                     quantity_returned = quantity_returned + ?3 WHERE id = ?1",
                )
                .map_err(db_error)?;
            for (item, cancelled, returned) in &pending.units {
                stmt.execute(params![item, cancelled, returned])
                    .map_err(db_error)?;
            }
        }
        self.written_keys
            .extend(pending.keys.iter().map(|k| key_hash(k.key)));
        let merchant = merchant.as_str();
        write_rows(
            &self.tx,
            "INSERT INTO idempotency_keys (merchant, key, payload_hash, feed_id, message_id, \
             rejection_code) VALUES ",
            6,
            "",
            &pending.keys,
            |k, out| {
                out.bind(merchant)?;
                out.bind(k.key)?;
                out.bind(k.payload_hash)?;
                out.bind(feed_id)?;
                out.bind(k.message_id)?;
                out.bind(k.rejection)
            },
        )
    }
}

/// Binds the values of one multi-row statement in order, straight into SQLite (no boxing,
/// no copies on our side).
struct Binder<'s, 'c> {
    stmt: &'s mut rusqlite::CachedStatement<'c>,
    next: usize,
}

impl Binder<'_, '_> {
    fn bind<T: rusqlite::ToSql>(&mut self, value: T) -> Result<(), StoreError> {
        self.next += 1;
        self.stmt
            .raw_bind_parameter(self.next, value)
            .map_err(db_error)
    }
}

/// Writes `rows` with `head (?, ...), (?, ...) tail` statements of [`ROWS`] rows, then the
/// remainder one row at a time (two cached statements per table).
fn write_rows<T>(
    tx: &Transaction<'_>,
    head: &str,
    width: usize,
    tail: &str,
    rows: &[T],
    bind: impl Fn(&T, &mut Binder<'_, '_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let statement = |n: usize| {
        let one = format!("({})", vec!["?"; width].join(", "));
        format!("{head}{}{tail}", vec![one; n].join(", "))
    };
    let mut chunks = rows.chunks_exact(ROWS);
    if rows.len() >= ROWS {
        let mut stmt = tx.prepare_cached(&statement(ROWS)).map_err(db_error)?;
        for chunk in chunks.by_ref() {
            let mut binder = Binder {
                stmt: &mut stmt,
                next: 0,
            };
            for row in chunk {
                bind(row, &mut binder)?;
            }
            stmt.raw_execute().map_err(db_error)?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut stmt = tx.prepare_cached(&statement(1)).map_err(db_error)?;
        for row in rest {
            bind(
                row,
                &mut Binder {
                    stmt: &mut stmt,
                    next: 0,
                },
            )?;
            stmt.raw_execute().map_err(db_error)?;
        }
    }
    Ok(())
}

/// "message 7" or "messages 1 to 90", naming the changes of one apply call.
fn message_range(changes: &[Change]) -> String {
    let ids = changes.iter().map(|c| match c {
        Change::Adjust(a) => a.message_id.get(),
        Change::PinRejection { message_id, .. } => message_id.get(),
    });
    let (low, high) = ids.fold((u64::MAX, 0), |(lo, hi), id| (lo.min(id), hi.max(id)));
    if low == high {
        format!("message {low}")
    } else {
        format!("messages {low} to {high}")
    }
}

/// `?2, ?3, ..., ?{n+1}`.
fn in_list(n: usize) -> String {
    (2..2 + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `merchant` then the chunk's ids, padded to [`batch_size`] with the last id.
fn padded_params<'s>(merchant: &'s str, chunk: &[&'s str]) -> Vec<&'s str> {
    let size = batch_size(chunk.len());
    let mut params = Vec::with_capacity(size + 1);
    params.push(merchant);
    params.extend_from_slice(chunk);
    if let Some(last) = chunk.last() {
        params.resize(size + 1, last);
    }
    params
}

impl FeedTx for SqliteFeedTx<'_> {
    fn feed_id(&self) -> u64 {
        // AUTOINCREMENT ids start at 1.
        self.feed_id.unsigned_abs()
    }

    fn prefetch(&mut self, merchant: &MerchantId, mut orders: Vec<OrderRef>) {
        // Orders this feed wrote to without a record in the overlay are loaded on the
        // writing connection anyway.
        orders.retain(|order| match order {
            OrderRef::Amazon(id) => {
                !self.touched.contains(&key_hash(id.as_str()))
                    || self.overlay.orders.contains_key(id)
            }
            OrderRef::Merchant(_) => true,
        });
        if orders.is_empty() {
            return;
        }
        if let LoaderState::Idle = self.loader {
            // An in-memory database has no file a second connection could open.
            let on_disk = self.tx.path().is_some_and(|path| !path.is_empty());
            self.loader = match on_disk.then(|| Loader::start(self.path, self.recent.clone())) {
                Some(Ok(loader)) => LoaderState::Running(loader),
                Some(Err(error)) => {
                    tracing::warn!(%error, "cannot open a second connection to prefetch orders; loading them on the writing connection");
                    LoaderState::Failed
                }
                None => LoaderState::Failed,
            };
        }
        if let LoaderState::Running(loader) = &mut self.loader
            && !loader.request(merchant, orders)
        {
            self.loader = LoaderState::Failed;
        }
    }

    fn forget_loaded(&mut self) {
        // Item ids and component rows are re-read by `load` (or on demand by `apply`).
        self.items.clear();
        self.components.clear();
        self.components_read.clear();
    }

    fn load(
        &mut self,
        merchant: &MerchantId,
        needs: &Needs,
        snapshot: &mut Snapshot,
    ) -> Result<(), StoreError> {
        let loaded = self.load_needed(merchant, &needs.orders)?;
        for order in loaded {
            if snapshot.has_order(&order.state.amazon_order_id) {
                // Already loaded (named both ways): keep the engine's working copy.
                continue;
            }
            let items = self
                .items
                .entry(order.state.amazon_order_id.clone())
                .or_default();
            for (item, id) in order.state.items.iter().zip(&order.item_ids) {
                items.insert(item.code.clone(), *id);
                self.components_read.insert(*id);
                self.components
                    .extend(item.components.keys().map(|component| (*id, *component)));
            }
            snapshot.insert_order(order.state);
        }
        for order in &needs.orders {
            // Every order found is in the snapshot now (by both of its ids).
            if snapshot.order(order).is_none() {
                snapshot.insert_missing_order(order.clone());
            }
        }

        // Keys outside the range of the merchant's keys from before this feed, and not
        // written by this feed, are new without asking.
        if self
            .prior_keys
            .as_ref()
            .is_none_or(|(of, _)| of != merchant.as_str())
        {
            let range: (Option<String>, Option<String>) = self
                .tx
                .prepare_cached(
                    "SELECT MIN(key), MAX(key) FROM idempotency_keys WHERE merchant = ?1",
                )
                .map_err(db_error)?
                .query_row([merchant.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db_error)?;
            let range = match range {
                (Some(low), Some(high)) => Some((low, high)),
                _ => None,
            };
            self.prior_keys = Some((merchant.as_str().to_owned(), range));
        }
        let range = self
            .prior_keys
            .as_ref()
            .and_then(|(_, range)| range.as_ref());
        let keys: Vec<&str> = needs
            .keys
            .iter()
            .map(SellerId::as_str)
            .filter(|key| {
                range.is_some_and(|(low, high)| *key >= low.as_str() && *key <= high.as_str())
                    || self.written_keys.contains(&key_hash(key))
            })
            .collect();
        let mut found_keys: HashSet<String> = HashSet::new();
        for chunk in keys.chunks(BATCH) {
            let sql = format!(
                "SELECT key, payload_hash, feed_id, message_id, rejection_code \
                 FROM idempotency_keys WHERE merchant = ?1 AND key IN ({})",
                in_list(batch_size(chunk.len()))
            );
            let mut stmt = self.tx.prepare_cached(&sql).map_err(db_error)?;
            let params = padded_params(merchant.as_str(), chunk);
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params.iter()))
                .map_err(db_error)?;
            while let Some(r) = rows.next().map_err(db_error)? {
                let key: String = r.get(0).map_err(db_error)?;
                if !found_keys.insert(key.clone()) {
                    continue;
                }
                let feed_id: i64 = r.get(2).map_err(db_error)?;
                let rejection = r
                    .get::<_, Option<i64>>(4)
                    .map_err(db_error)?
                    .map(|n| {
                        pinned_code_from_number(n)
                            .ok_or_else(|| corrupt("pinned rejection code", &n.to_string()))
                    })
                    .transpose()?;
                let record = KeyRecord {
                    payload_hash: r.get(1).map_err(db_error)?,
                    origin: KeyOrigin {
                        // A key of this feed's own earlier chunk is "earlier in this feed".
                        feed_id: (feed_id != self.feed_id)
                            .then(|| {
                                u64::try_from(feed_id)
                                    .map_err(|_| corrupt("feed id", &feed_id.to_string()))
                            })
                            .transpose()?,
                        message_id: message_id_from_sql(r.get(3).map_err(db_error)?)?,
                    },
                    rejection,
                };
                let key =
                    SellerId::from_stored(&key).ok_or_else(|| corrupt("idempotency key", &key))?;
                snapshot.insert_key(key, Some(record));
            }
        }
        for key in &needs.keys {
            if !found_keys.contains(key.as_str()) {
                snapshot.insert_key(key.clone(), None);
            }
        }
        Ok(())
    }

    fn apply(&mut self, merchant: &MerchantId, changes: &[Change]) -> Result<(), StoreError> {
        let applied = self.write_changes(merchant, changes);
        self.failed |= applied.is_err();
        applied
    }

    fn commit(self: Box<Self>, done: FeedDone) -> Result<(), StoreError> {
        let mut this = *self;
        if this.failed {
            return Err(StoreError::Other {
                detail: format!(
                    "feed {}: an earlier write of this feed failed, so it is rolled back, not committed",
                    this.feed_id
                ),
            });
        }
        // Stop the prefetch connection before the commit (and its checkpoint).
        this.loader = LoaderState::Idle;
        let conflict = |e: rusqlite::Error| match db_error(e) {
            // The partial unique index on (merchant, content_hash): someone applied the
            // same bytes first; the retry will find it as a duplicate.
            StoreError::Invalid { detail } if detail.contains("UNIQUE") => {
                StoreError::Conflict { detail }
            }
            other => other,
        };
        let duplicate_of = done
            .duplicate_of
            .map(|id| count_to_sql(id, "feed id"))
            .transpose()?;
        {
            let mut update = this
                .tx
                .prepare_cached(
                    "UPDATE feeds SET status = ?2, duplicate_of = ?3, processed_at = ?4, \
                     messages_processed = ?5, messages_successful = ?6, messages_with_error = ?7, \
                     messages_with_warning = ?8, report_json = ?9 WHERE id = ?1",
                )
                .map_err(db_error)?;
            let counts = [
                (done.messages_processed, "messages processed"),
                (done.messages_successful, "messages successful"),
                (done.messages_with_error, "messages with error"),
                (done.messages_with_warning, "messages with warning"),
            ];
            update
                .raw_bind_parameter(1, this.feed_id)
                .map_err(db_error)?;
            update
                .raw_bind_parameter(2, done.status.as_str())
                .map_err(db_error)?;
            update
                .raw_bind_parameter(3, duplicate_of)
                .map_err(db_error)?;
            update.raw_bind_parameter(4, now()).map_err(db_error)?;
            for (index, (count, what)) in (5..).zip(counts) {
                update
                    .raw_bind_parameter(index, count_to_sql(count, what)?)
                    .map_err(db_error)?;
            }
            // SQLite copies a bound text; the report (megabytes for 20 000 results) is not
            // held twice while the row is written.
            update
                .raw_bind_parameter(9, done.report_json.as_str())
                .map_err(db_error)?;
            drop(done);
            update.raw_execute().map_err(conflict)?;
        }
        this.tx.commit().map_err(conflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AdjustmentReason, MessageId, PriceComponent};

    fn refund(order: &AmazonOrderId, cents: i64, cancelled: u32) -> NewAdjustment {
        NewAdjustment {
            message_id: MessageId::new(1).expect("message id"),
            amazon_order_id: order.clone(),
            item_code: OrderItemCode::new("12345678901234").expect("item code"),
            reason: AdjustmentReason::CustomerReturn,
            action: None,
            quantity_cancelled: cancelled,
            quantity: None,
            amounts: vec![(Component::Price(PriceComponent::Principal), cents)],
            key: None,
            payload_hash: String::new(),
        }
    }

    fn prefetched(order: &AmazonOrderId) -> LoadedOrder {
        let principal = Component::Price(PriceComponent::Principal);
        LoadedOrder {
            state: OrderState {
                amazon_order_id: order.clone(),
                merchant_order_id: None,
                currency: Currency::from_code("USD").expect("currency"),
                channel: FulfillmentChannel::Merchant,
                purchase_date: None,
                items: vec![ItemState {
                    code: OrderItemCode::new("12345678901234").expect("item code"),
                    merchant_item_id: None,
                    quantity_ordered: 3,
                    quantity_shipped: 0,
                    quantity_cancelled: 0,
                    quantity_returned: 0,
                    recent_adjustments: RecentAdjustments::default(),
                    components: BTreeMap::from([(
                        principal,
                        ComponentTotals {
                            charged: 1000,
                            refunded: 100,
                        },
                    )]),
                }],
            },
            item_ids: vec![7],
            positions: vec![1],
        }
    }

    #[test]
    fn the_overlay_brings_a_pre_feed_order_up_to_date_or_says_it_cannot() {
        let a = AmazonOrderId::new("111-0000001-0000001").expect("order id");
        let b = AmazonOrderId::new("111-0000002-0000002").expect("order id");
        let mut overlay = Overlay {
            cap: 1,
            ..Overlay::default()
        };
        overlay.record(&a, true, &refund(&a, 250, 0), 7);
        overlay.record(&a, false, &refund(&a, 50, 1), 7);
        let mut order = prefetched(&a);
        assert!(overlay.bring_up_to_date(&mut order));
        let item = &order.state.items[0];
        let principal = Component::Price(PriceComponent::Principal);
        assert_eq!(item.components[&principal].refunded, 400);
        assert_eq!(item.quantity_cancelled, 1);

        // Full: B's first write empties the overlay. A's later writes are not recorded
        // (its record would miss the earlier ones), so A must be read again.
        overlay.record(&b, true, &refund(&b, 10, 0), 7);
        overlay.record(&a, false, &refund(&a, 10, 0), 7);
        assert!(!overlay.bring_up_to_date(&mut prefetched(&a)));
        let mut order = prefetched(&b);
        assert!(overlay.bring_up_to_date(&mut order));
        assert_eq!(order.state.items[0].components[&principal].refunded, 110);

        // An item the prefetched order lacks: read again.
        let mut other = prefetched(&b);
        other.item_ids = vec![8];
        assert!(!overlay.bring_up_to_date(&mut other));
    }
}
