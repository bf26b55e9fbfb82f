//! The one error type of the repository library.
//!
//! Every variant names the object it is about (a snapshot, a chunk path, a key slot, the
//! repository location), because the person reading the message is usually an operator at
//! 3 a.m. who needs to know *which* thing is broken. [`Error::class`] groups variants for exit
//! codes and HTTP statuses so callers never match on message text.

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Coarse kind of failure, for exit codes and API statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The caller asked for something invalid (bad name, missing option, unknown snapshot).
    Usage,
    /// No key slot opens with the passphrase.
    Passphrase,
    /// Stored data failed authentication, hashing, or is missing: the repository is damaged.
    Integrity,
    /// The storage or local file system failed (I/O, full disk, network).
    Storage,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The causes below are part of the message and deliberately not exposed as `source()`:
    // callers print the whole chain (`{:#}`), which would repeat their text.
    #[error("storage error on {object}: {}", describe_storage(cause))]
    Storage {
        object: String,
        cause: opendal::Error,
    },
    #[error("{what}: {cause}")]
    Io { what: String, cause: io::Error },
    #[error("{last} (still failing after {attempts} attempts over {secs} s of retrying; check the storage, then run the command again)")]
    RetriesExhausted {
        attempts: u32,
        secs: u64,
        last: Box<Error>,
    },
    #[error("no repository at {location}: its `config` object does not exist (run `bulwark-agent repo init` first)")]
    NotARepository { location: String },
    #[error("a repository already exists at {location}; refusing to overwrite it")]
    AlreadyExists { location: String },
    #[error("repository at {location} has format version {found}; this build understands version {supported} only — upgrade bulwark")]
    UnsupportedVersion {
        location: String,
        found: u32,
        supported: u32,
    },
    #[error("wrong passphrase: none of the {tried} key slot(s) of the repository at {location} opens with it")]
    WrongPassphrase { location: String, tried: usize },
    #[error("no key slots under keys/ in the repository at {location}: the repository's keys are missing, and without one its data cannot be decrypted; restore keys/ from a copy of the repository")]
    NoKeySlots { location: String },
    #[error("repository config id {config_id} at {location} does not match the id {slot_repository} that its key slots were made for ({slots}): the `config` object was edited or comes from another repository; restore the original config")]
    ConfigIdMismatch {
        location: String,
        config_id: String,
        slot_repository: String,
        slots: String,
    },
    #[error("{object} is damaged: {reason}")]
    Corrupt { object: String, reason: String },
    #[error("{object} is missing from the repository (referenced by {referenced_by})")]
    Missing {
        object: String,
        referenced_by: String,
    },
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    #[error("the newest snapshot of database {database} cannot be read ({reason}); refusing to pick an older one as `latest`{}. Restore a snapshot by name (`snapshots --database {database}` lists them), or repair or remove the damaged manifest", match newest_readable { Some(n) => format!(" (the newest readable one is {n})"), None => String::new() })]
    LatestUnreadable {
        database: String,
        object: String,
        reason: String,
        newest_readable: Option<String>,
    },
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("restore refused: {0}")]
    UnsafeRestore(String),
    #[error("{0}")]
    Busy(String),
    #[error("{object} already exists with different contents: {reason}")]
    Conflict { object: String, reason: String },
}

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Storage { .. }
            | Error::Io { .. }
            | Error::RetriesExhausted { .. }
            | Error::Busy(_) => ErrorClass::Storage,
            Error::WrongPassphrase { .. } => ErrorClass::Passphrase,
            Error::Corrupt { .. }
            | Error::Missing { .. }
            | Error::LatestUnreadable { .. }
            | Error::NoKeySlots { .. }
            | Error::ConfigIdMismatch { .. } => ErrorClass::Integrity,
            Error::NotARepository { .. }
            | Error::AlreadyExists { .. }
            | Error::UnsupportedVersion { .. }
            | Error::SnapshotNotFound(_)
            | Error::Invalid { .. }
            | Error::UnsafeRestore(_)
            | Error::Conflict { .. } => ErrorClass::Usage,
        }
    }

    pub(crate) fn io(what: impl Into<String>, cause: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            cause,
        }
    }

    /// True for a storage failure that may go away if the same call is made again: a dropped
    /// connection, a timeout, an S3 5xx or throttling answer. Never for a full disk, a missing
    /// permission or anything about the data itself.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Storage { cause, .. } => match io_cause(cause) {
                // OpenDAL calls every local I/O error it does not know "temporary", a full
                // disk included; only these kinds are worth a second try on a file system.
                Some(io) => transient_io(io.kind()),
                None => cause.is_temporary() || cause.kind() == opendal::ErrorKind::RateLimited,
            },
            Error::Io { cause, .. } => transient_io(cause.kind()),
            _ => false,
        }
    }

    /// True when the storage refused a write for lack of space (ENOSPC; an NFS export or
    /// S3 bucket that is full).
    pub fn is_storage_full(&self) -> bool {
        let full = |io: &io::Error| {
            io.kind() == io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
        };
        match self {
            Error::Storage { cause, .. } => io_cause(cause).is_some_and(full),
            Error::Io { cause, .. } => full(cause),
            _ => false,
        }
    }

    pub(crate) fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

fn transient_io(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        kind,
        Interrupted | TimedOut | WouldBlock | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// The local I/O error under an OpenDAL error, if it wraps one.
fn io_cause(err: &opendal::Error) -> Option<&io::Error> {
    let mut next = std::error::Error::source(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        next = e.source();
    }
    None
}

/// An OpenDAL error in one line without what our message already says (the object path,
/// which OpenDAL repeats in its context) and without saying the same thing twice.
fn describe_storage(err: &opendal::Error) -> String {
    let mut text = if err.message().is_empty() {
        err.kind().to_string()
    } else {
        err.message().to_string()
    };
    let mut next = std::error::Error::source(err);
    while let Some(e) = next {
        let s = e.to_string();
        if s.to_lowercase().contains(&text.to_lowercase()) {
            text = s; // OpenDAL's message is often the source's own text, shortened
        } else if !text.to_lowercase().contains(&s.to_lowercase()) {
            text = format!("{text}: {s}");
        }
        next = e.source();
    }
    if err.kind() == opendal::ErrorKind::PermissionDenied && !text.contains("ermission") {
        text = format!("permission denied: {text}");
    }
    text
}
