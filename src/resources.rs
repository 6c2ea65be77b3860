//! What the process runs short of: which I/O errors come from the process or the system
//! rather than from the file an operation named ([`shortage`]: too many open files, no
//! memory, an interrupted call), so that a feed is never rejected for them, and the raise
//! of the open-file limit at daemon start ([`raise_open_file_limit`]).

use std::io;

use rustix::io::Errno;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Why an I/O error is not the file's fault: what the process or the system ran short of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    /// `EMFILE`: the process holds as many descriptors as its `RLIMIT_NOFILE` allows.
    ProcessOpenFiles,
    /// `ENFILE`: the system's table of open files is full (`fs.file-max`).
    SystemOpenFiles,
    /// `ENOMEM`, `ENOBUFS`: no memory for the kernel's work.
    Memory,
    /// `ENOLCK`: the system's lock table is full.
    Locks,
    /// `EINTR`, `EAGAIN`: the call was interrupted or would have blocked; trying again works.
    Interrupted,
}

impl Shortage {
    /// What ran short, for a log line and `/healthz`.
    pub fn describe(self) -> &'static str {
        match self {
            Shortage::ProcessOpenFiles => {
                "too many open files in adjustd (its RLIMIT_NOFILE; raise LimitNOFILE or ulimit -n)"
            }
            Shortage::SystemOpenFiles => {
                "too many open files in the system (fs.file-max is reached)"
            }
            Shortage::Memory => "out of memory",
            Shortage::Locks => "the system's file lock table is full",
            Shortage::Interrupted => "a system call was interrupted",
        }
    }
}

/// The shortage behind `error` when the process or the system caused it and a later try
/// can succeed, `None` when the error is the file's own (no permission, `EIO` of the disk
/// holding it, gone, a directory, ...).
pub fn shortage(error: &io::Error) -> Option<Shortage> {
    match error.kind() {
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => {
            return Some(Shortage::Interrupted);
        }
        io::ErrorKind::OutOfMemory => return Some(Shortage::Memory),
        _ => {}
    }
    let errno = Errno::from_io_error(error)?;
    if errno == Errno::MFILE {
        Some(Shortage::ProcessOpenFiles)
    } else if errno == Errno::NFILE {
        Some(Shortage::SystemOpenFiles)
    } else if errno == Errno::NOMEM || errno == Errno::NOBUFS {
        Some(Shortage::Memory)
    } else if errno == Errno::NOLCK {
        Some(Shortage::Locks)
    } else if errno == Errno::INTR || errno == Errno::AGAIN {
        Some(Shortage::Interrupted)
    } else {
        None
    }
}

/// The open-file limit after [`raise_open_file_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// The soft limit in force (`None`: unlimited).
    pub soft: Option<u64>,
    /// The hard limit (`None`: unlimited).
    pub hard: Option<u64>,
    /// The soft limit before, when it was raised.
    pub raised_from: Option<Option<u64>>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as long-running daemons do: the
/// default soft limit (often 1024) is a guard for old `select(2)` users, and each feed whose
/// report waits holds a descriptor. A refusal leaves the limit as it was.
///
/// # Errors
/// `setrlimit` refused; the limit is unchanged.
pub fn raise_open_file_limit() -> Result<OpenFileLimit, (OpenFileLimit, io::Error)> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let unchanged = OpenFileLimit {
        soft: current,
        hard: maximum,
        raised_from: None,
    };
    let below_hard = match (current, maximum) {
        (Some(soft), Some(hard)) => soft < hard,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if !below_hard {
        return Ok(unchanged);
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: maximum,
            maximum,
        },
    ) {
        Ok(()) => Ok(OpenFileLimit {
            soft: maximum,
            hard: maximum,
            raised_from: Some(current),
        }),
        Err(errno) => Err((unchanged, io::Error::from(errno))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: Errno) -> io::Error {
        io::Error::from_raw_os_error(errno.raw_os_error())
    }

    #[test]
    fn errors_of_the_process_or_the_system_are_shortages_and_errors_of_the_file_are_not() {
        assert_eq!(
            shortage(&os(Errno::MFILE)),
            Some(Shortage::ProcessOpenFiles)
        );
        assert_eq!(shortage(&os(Errno::NFILE)), Some(Shortage::SystemOpenFiles));
        assert_eq!(shortage(&os(Errno::NOMEM)), Some(Shortage::Memory));
        assert_eq!(shortage(&os(Errno::NOBUFS)), Some(Shortage::Memory));
        assert_eq!(shortage(&os(Errno::NOLCK)), Some(Shortage::Locks));
        assert_eq!(shortage(&os(Errno::INTR)), Some(Shortage::Interrupted));
        assert_eq!(shortage(&os(Errno::AGAIN)), Some(Shortage::Interrupted));
        assert_eq!(
            shortage(&io::Error::from(io::ErrorKind::OutOfMemory)),
            Some(Shortage::Memory)
        );
        // The file's own: final, reported as FEED_UNREADABLE.
        for errno in [
            Errno::ACCESS,
            Errno::PERM,
            Errno::IO,
            Errno::NOENT,
            Errno::ISDIR,
            Errno::LOOP,
            Errno::NAMETOOLONG,
            Errno::STALE,
        ] {
            assert_eq!(shortage(&os(errno)), None, "{errno:?}");
        }
        assert_eq!(shortage(&io::Error::other("no errno")), None);
        assert!(
            Shortage::ProcessOpenFiles
                .describe()
                .contains("too many open files")
        );
    }

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let limit = raise_open_file_limit().expect("raise");
        assert_eq!(limit.soft, limit.hard);
        assert_eq!(getrlimit(Resource::Nofile).current, limit.soft);
    }
}
