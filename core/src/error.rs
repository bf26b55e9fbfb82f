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
    #[error("storage error on {object}: {source}")]
    Storage {
        object: String,
        #[source]
        source: opendal::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
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
            Error::Storage { .. } | Error::Io { .. } | Error::Busy(_) => ErrorClass::Storage,
            Error::WrongPassphrase { .. } => ErrorClass::Passphrase,
            Error::Corrupt { .. } | Error::Missing { .. } | Error::LatestUnreadable { .. } => {
                ErrorClass::Integrity
            }
            Error::NotARepository { .. }
            | Error::AlreadyExists { .. }
            | Error::UnsupportedVersion { .. }
            | Error::SnapshotNotFound(_)
            | Error::Invalid { .. }
            | Error::UnsafeRestore(_)
            | Error::Conflict { .. } => ErrorClass::Usage,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
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
