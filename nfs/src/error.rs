//! What went wrong, in the words of the person who has to fix it, and how core should treat it.
//!
//! The repository code knows one error type ([`bulwark_core::Error`]) and decides two things
//! from it: whether [`bulwark_core::backend::Retrying`] tries again (the I/O kind of an
//! `Error::Io`) and what the operator reads. So every NFS status is mapped here once: a full
//! export becomes `StorageFull` with "No space left on device" (core's full-disk class,
//! never retried), a dropped connection, a stale handle after a server restart or a busy server
//! becomes a transient kind (retried, after a reconnect), and every message names the server.

use std::io;

use nfs_rs::NfsError as ClientError;

#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    #[error("invalid NFS location {location:?}: {reason}")]
    InvalidLocation { location: String, reason: String },
    #[error("NFS server {server} is unreachable: {cause}")]
    Unreachable { server: String, cause: String },
    #[error("NFS server {server} has no export {export} that this client may mount ({cause}); for NFSv3 give the export's real path, for NFSv4 its pseudo path")]
    ExportNotFound {
        server: String,
        export: String,
        cause: String,
    },
    #[error("NFS server {server} denied access to {path} ({cause}); check the export's client list, access type and root squashing")]
    AccessDenied {
        server: String,
        path: String,
        cause: String,
    },
    #[error("No space left on device: the NFS export on {server} is full ({cause})")]
    NoSpace { server: String, cause: String },
    #[error("the NFS export on {server} is read-only ({cause})")]
    ReadOnly { server: String, cause: String },
    #[error("stale NFS file handle on {server} ({cause}): the server restarted or the directory was replaced; reconnecting")]
    Stale { server: String, cause: String },
    #[error("NFS server {server} is busy ({cause})")]
    Busy { server: String, cause: String },
    #[error("NFS server {server} accepted none of the protocol versions tried: {tried}")]
    NoVersion { server: String, tried: String },
    #[error("NFS server {server}: {cause}")]
    Other { server: String, cause: String },
    #[error("NFS server {server}: no answer within {secs} s")]
    TimedOut { server: String, secs: u64 },
}

/// What a client error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Meaning {
    NotFound,
    Exists,
    NoSpace,
    Denied,
    ReadOnly,
    /// The handle or NFSv4 state is gone: reconnect, then retry.
    Stale,
    /// Try again later (NFS3ERR_JUKEBOX, NFS4ERR_DELAY, NFS4ERR_GRACE).
    Busy,
    /// The connection is gone or never came up: reconnect, then retry.
    Connection,
    Other,
}

pub(crate) fn meaning(err: &ClientError) -> Meaning {
    if err.is_not_found() {
        return Meaning::NotFound;
    }
    if err.is_exist() {
        return Meaning::Exists;
    }
    if err.is_server_busy() {
        return Meaning::Busy;
    }
    // nfsstat3 and nfsstat4 share the numbers of the statuses below.
    let status = match err {
        // The generated v3 status types are neither `Copy` nor `Clone`: go by their names.
        ClientError::Nfs3(code) => Some(match format!("{code:?}").as_str() {
            "NFS3ERR_PERM" => 1,
            "NFS3ERR_ACCES" => 13,
            "NFS3ERR_NOSPC" => 28,
            "NFS3ERR_ROFS" => 30,
            "NFS3ERR_DQUOT" => 69,
            "NFS3ERR_STALE" => 70,
            "NFS3ERR_BADHANDLE" => 10001,
            "NFS3ERR_JUKEBOX" => 10008,
            _ => 0,
        }),
        ClientError::Nfs4(code) => Some(*code as u32),
        ClientError::Mount(code) => {
            return match format!("{code:?}").as_str() {
                "MNT3ERR_NOENT" | "MNT3ERR_NOTDIR" => Meaning::NotFound,
                "MNT3ERR_PERM" | "MNT3ERR_ACCES" => Meaning::Denied,
                _ => Meaning::Other,
            }
        }
        // The client could not tell how the call ended. Every call of ours may be repeated as a
        // whole (a write goes to a fresh temporary name), so unless the client knows better,
        // mount afresh and try again.
        ClientError::OperationOutcome(outcome) => {
            return match meaning(&outcome.source) {
                Meaning::Other if outcome.recovery != nfs_rs::RecoveryAction::DoNotRetry => {
                    Meaning::Connection
                }
                m => m,
            }
        }
        ClientError::ServerBusy(_) => return Meaning::Busy,
        ClientError::FileClose(failures) => {
            return failures
                .iter()
                .map(|f| meaning(&f.error))
                .find(|m| *m != Meaning::Other)
                .unwrap_or(Meaning::Other)
        }
        ClientError::ClientClosed(_) | ClientError::ClosedResource(_) => {
            return Meaning::Connection
        }
        ClientError::LostOpenState(_) => return Meaning::Stale,
        _ => None,
    };
    if let Some(status) = status {
        return match status {
            28 | 69 => Meaning::NoSpace,
            1 | 13 => Meaning::Denied,
            30 => Meaning::ReadOnly,
            // STALE, BADHANDLE, FHEXPIRED, EXPIRED, STALE_CLIENTID, STALE_STATEID, BAD_STATEID,
            // BADSESSION, DEADSESSION, CONN_NOT_BOUND_TO_SESSION
            70 | 10001 | 10014 | 10011 | 10022 | 10023 | 10025 | 10052 | 10053 | 10055 => {
                Meaning::Stale
            }
            10008 | 10013 => Meaning::Busy,
            _ => Meaning::Other,
        };
    }
    match err.transport_error_kind() {
        Some(
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
            | io::ErrorKind::TimedOut
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown
            | io::ErrorKind::AddrNotAvailable,
        ) => Meaning::Connection,
        _ => Meaning::Other,
    }
}

/// The client's error and its causes in one line, each said once.
pub(crate) fn describe(err: &ClientError) -> String {
    // An operation whose outcome the client could not tell is wrapped in retry guidance for the
    // caller ("Uncertain NFS operation ReplaySensitive; recovery=VerifyThenResume"), which
    // `meaning` acts on; the operator reads what the server or the connection said.
    if let ClientError::OperationOutcome(outcome) = err {
        return describe(&outcome.source);
    }
    let mut text = err.to_string();
    let mut next = std::error::Error::source(err);
    while let Some(e) = next {
        let s = e.to_string();
        if !text.contains(&s) {
            text = format!("{text}: {s}");
        }
        next = e.source();
    }
    text
}

impl NfsError {
    /// The typed error for a client error met on `server`.
    pub(crate) fn from_client(server: &str, err: &ClientError) -> NfsError {
        let server = server.to_string();
        let cause = describe(err);
        match meaning(err) {
            Meaning::NoSpace => NfsError::NoSpace { server, cause },
            Meaning::Denied => NfsError::AccessDenied {
                server,
                path: String::new(),
                cause,
            },
            Meaning::ReadOnly => NfsError::ReadOnly { server, cause },
            Meaning::Stale => NfsError::Stale { server, cause },
            Meaning::Busy => NfsError::Busy { server, cause },
            Meaning::Connection => NfsError::Unreachable { server, cause },
            Meaning::NotFound | Meaning::Exists | Meaning::Other => {
                NfsError::Other { server, cause }
            }
        }
    }

    /// The I/O kind core classifies by: transient kinds are retried.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            NfsError::InvalidLocation { .. } => io::ErrorKind::InvalidInput,
            // Retried: a server restarting comes back within the retry budget.
            NfsError::Unreachable { .. } | NfsError::Stale { .. } => io::ErrorKind::ConnectionReset,
            NfsError::Busy { .. } | NfsError::TimedOut { .. } => io::ErrorKind::TimedOut,
            NfsError::ExportNotFound { .. } => io::ErrorKind::NotFound,
            NfsError::AccessDenied { .. } => io::ErrorKind::PermissionDenied,
            NfsError::NoSpace { .. } => io::ErrorKind::StorageFull,
            NfsError::ReadOnly { .. } => io::ErrorKind::ReadOnlyFilesystem,
            NfsError::NoVersion { .. } | NfsError::Other { .. } => io::ErrorKind::Other,
        }
    }

    /// Core's error for `what` (`"writing chunks/ab/cd"`) having failed this way.
    pub fn into_core(self, what: impl Into<String>) -> bulwark_core::Error {
        bulwark_core::Error::Io {
            what: what.into(),
            cause: io::Error::new(self.io_kind(), self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_export_is_core_full_disk_and_a_dropped_connection_is_retried() {
        let full = ClientError::Nfs3(nfs_rs::Nfs3ErrorCode::NFS3ERR_NOSPC);
        let err = NfsError::from_client("nas:2049", &full).into_core("writing chunks/ab/x");
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains("No space left on device")
                && text.contains("nas:2049")
                && text.contains("chunks/ab/x"),
            "{text}"
        );
        // A pipelined WRITE the server refused: the client wraps the status in its retry
        // guidance, which the operator does not need to read.
        let wrapped = ClientError::OperationOutcome(Box::new(nfs_rs::OperationOutcomeError::new(
            nfs_rs::OperationOutcome::Uncertain,
            nfs_rs::OperationClass::ReplaySensitive,
            nfs_rs::RecoveryAction::VerifyThenResume,
            nfs_rs::RequestContext {
                operation: "WRITE".into(),
                protocol: nfs_rs::NFSVersion::NFSv3,
                request_id: None,
            },
            ClientError::Nfs3(nfs_rs::Nfs3ErrorCode::NFS3ERR_NOSPC),
        )));
        let text = NfsError::from_client("nas:2049", &wrapped).to_string();
        assert_eq!(
            text,
            "No space left on device: the NFS export on nas:2049 is full (NFS3 error: no space left on device)"
        );
        let full4 = ClientError::Nfs4(nfs_rs::Nfs4ErrorCode::NFS4ERR_NOSPC);
        assert!(matches!(
            NfsError::from_client("s", &full4),
            NfsError::NoSpace { .. }
        ));

        let reset = ClientError::Io(io::ErrorKind::ConnectionReset.into());
        let err = NfsError::from_client("nas", &reset).into_core("reading config");
        assert!(err.is_transient(), "{err}");
        let stale = ClientError::Nfs3(nfs_rs::Nfs3ErrorCode::NFS3ERR_STALE);
        assert!(NfsError::from_client("nas", &stale)
            .into_core("x")
            .is_transient());
        let busy = ClientError::Nfs4(nfs_rs::Nfs4ErrorCode::NFS4ERR_DELAY);
        assert!(NfsError::from_client("nas", &busy)
            .into_core("x")
            .is_transient());
        let denied = ClientError::Nfs3(nfs_rs::Nfs3ErrorCode::NFS3ERR_ACCES);
        assert!(!NfsError::from_client("nas", &denied)
            .into_core("x")
            .is_transient());
    }
}
