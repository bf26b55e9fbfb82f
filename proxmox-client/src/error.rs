//! One error type for every call, classified the way a caller has to react to it: fix the
//! configuration (TLS mismatch, unauthorized, forbidden), fix the request (parameter), look
//! elsewhere (not found), try again later (unreachable, server). The classification follows
//! what PVE really answers (NOTES.md A4): a missing object is usually a **500** whose message
//! says "does not exist", and the type-specific storage checks fail as 500 with only a message,
//! so [`Error::from_response`] reads the message as well as the status.

use std::collections::BTreeMap;
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client configuration itself is unusable (bad URL, fingerprint or CA file).
    #[error("invalid Proxmox client configuration: {0}")]
    Config(String),
    /// No answer: connection refused, DNS, a timeout, or a PVE proxy status 595–599 (the node
    /// we called could not reach the node owning the resource).
    #[error("cannot reach the Proxmox VE API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server's certificate is not the pinned one (or not issued by the configured CA).
    #[error("the TLS certificate of {url} does not match: expected {expected}, found {found}")]
    TlsMismatch {
        url: String,
        expected: String,
        found: String,
    },
    /// 401: no, wrong or expired credentials (PVE sends no body, only the reason phrase).
    #[error("Proxmox VE refused the credentials: {message}")]
    Unauthorized { message: String },
    /// 403: authenticated but lacking a privilege. `path` and `privilege` are parsed from PVE's
    /// "Permission check failed (/storage, Datastore.Allocate)" when the message has that shape.
    #[error("Proxmox VE denied the request: {message}")]
    Forbidden {
        message: String,
        path: Option<String>,
        privilege: Option<String>,
    },
    /// The request was refused for its parameters: 400 with PVE's per-field `errors`, a
    /// type-specific check that PVE reports as 500 ("missing value for required option 'x'",
    /// "unexpected property 'x'", "can't change value of fixed parameter 'x'"), or a check this
    /// client made before sending. `errors` maps each parameter to its reason.
    #[error("invalid parameters: {message}{}", fmt_fields(.errors))]
    Parameter {
        message: String,
        errors: BTreeMap<String, String>,
    },
    /// The storage, node, task or path does not exist.
    #[error("not found: {message}")]
    NotFound { message: String },
    /// The update carried a `digest` and the configuration changed in the meantime.
    #[error("the configuration changed meanwhile: {message}")]
    Conflict { message: String },
    /// Any other failure reported by the server (5xx and unexpected statuses).
    #[error("Proxmox VE answered {status}: {message}")]
    Server { status: u16, message: String },
    /// The answer did not have the shape the schema promises.
    #[error("cannot decode the answer of {url}: {reason}")]
    Decode { url: String, reason: String },
    /// A task ended with an exit status other than `OK` / `WARNINGS: n`.
    #[error("task {upid} failed: {exitstatus}")]
    TaskFailed { upid: String, exitstatus: String },
    /// A task was still running when the wait ended.
    #[error("task {upid} still running after {waited:?}")]
    TaskTimeout { upid: String, waited: Duration },
}

fn fmt_fields(errors: &BTreeMap<String, String>) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = errors
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.trim_end()))
        .collect();
    format!(" ({})", parts.join("; "))
}

impl Error {
    /// Classifies a non-2xx answer from its status, message (`message` in the body, or the
    /// reason phrase on servers before 2025) and per-field `errors`.
    pub(crate) fn from_response(
        status: u16,
        message: String,
        errors: BTreeMap<String, String>,
    ) -> Error {
        let message = message.trim_end().to_string();
        match status {
            400 => {
                if errors
                    .get("storage")
                    .is_some_and(|e| e.contains("No such storage"))
                {
                    return Error::NotFound {
                        message: fmt_message(&message, &errors),
                    };
                }
                Error::Parameter { message, errors }
            }
            401 => Error::Unauthorized { message },
            403 => {
                let (path, privilege) = parse_permission(&message);
                Error::Forbidden {
                    message,
                    path,
                    privilege,
                }
            }
            404 => Error::NotFound { message },
            500 => classify_500(message, errors),
            501 if message.contains("not implemented") => Error::NotFound { message },
            595..=599 => Error::Unreachable {
                url: String::new(),
                reason: format!("{status} {message}"),
            },
            _ => Error::Server {
                status,
                message: fmt_message(&message, &errors),
            },
        }
    }

    /// Whether the same request may succeed if sent again (for GETs; see `client.rs`).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Server { .. })
    }
}

fn fmt_message(message: &str, errors: &BTreeMap<String, String>) -> String {
    format!("{message}{}", fmt_fields(errors))
}

/// PVE reports type-specific storage checks and missing objects as plain `die`s, that is 500
/// with only a message (NOTES.md A4, A6; `storage_semantics` in the schema file).
fn classify_500(message: String, errors: BTreeMap<String, String>) -> Error {
    const FIELD_MESSAGES: [&str; 5] = [
        "missing value for required option '",
        "unexpected property '",
        "can't change value of fixed parameter '",
        "unable to delete required option '",
        "unable to delete fixed option '",
    ];
    for prefix in FIELD_MESSAGES {
        if let Some(field) = quoted_after(&message, prefix) {
            let mut errors = errors;
            let reason = message
                .rsplit_once(": ")
                .filter(|(head, _)| head.ends_with("failed"))
                .map_or(message.as_str(), |(_, tail)| tail)
                .to_string();
            errors.insert(field, reason);
            return Error::Parameter { message, errors };
        }
    }
    if message.contains("does not exist") {
        return Error::NotFound { message };
    }
    if message.contains("detected modified configuration") {
        return Error::Conflict { message };
    }
    Error::Server {
        status: 500,
        message: fmt_message(&message, &errors),
    }
}

fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let start = message.find(prefix)? + prefix.len();
    let len = message[start..].find('\'')?;
    Some(message[start..start + len].to_string())
}

/// `Permission check failed (/storage, Datastore.Allocate)` → (`/storage`, `Datastore.Allocate`).
/// PVE's `raise_perm_exc` also produces bare "Permission check failed" and
/// "Permission check failed (user != root@pam)"; those give what they can.
pub(crate) fn parse_permission(message: &str) -> (Option<String>, Option<String>) {
    let Some(open) = message.find("Permission check failed (") else {
        return (None, None);
    };
    let inner = &message[open + "Permission check failed (".len()..];
    let Some(close) = inner.rfind(')') else {
        return (None, None);
    };
    let inner = &inner[..close];
    match inner.split_once(", ") {
        Some((path, privs)) if path.starts_with('/') => {
            (Some(path.to_string()), Some(privs.trim().to_string()))
        }
        _ if inner.starts_with('/') => (Some(inner.to_string()), None),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_messages() {
        assert_eq!(
            parse_permission("Permission check failed (/storage, Datastore.Allocate)\n"),
            (Some("/storage".into()), Some("Datastore.Allocate".into()))
        );
        assert_eq!(
            parse_permission(
                "Permission check failed (/storage/bk, Datastore.Audit|Datastore.AllocateSpace)"
            ),
            (
                Some("/storage/bk".into()),
                Some("Datastore.Audit|Datastore.AllocateSpace".into())
            )
        );
        assert_eq!(parse_permission("Permission check failed"), (None, None));
        assert_eq!(
            parse_permission("Permission check failed (user != root@pam)"),
            (None, None)
        );
    }

    #[test]
    fn five_hundreds_are_classified_by_message() {
        let e = Error::from_response(
            500,
            "missing value for required option 'export'\n".into(),
            BTreeMap::new(),
        );
        match e {
            Error::Parameter { errors, .. } => assert!(errors.contains_key("export")),
            other => panic!("{other:?}"),
        }
        let e = Error::from_response(
            500,
            "update storage failed: can't change value of fixed parameter 'server'".into(),
            BTreeMap::new(),
        );
        match e {
            Error::Parameter { errors, .. } => assert_eq!(
                errors["server"],
                "can't change value of fixed parameter 'server'"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Error::from_response(500, "storage 'x' does not exist".into(), BTreeMap::new()),
            Error::NotFound { .. }
        ));
        assert!(matches!(
            Error::from_response(
                500,
                "update storage failed: detected modified configuration - file changed by other user? Try again.".into(),
                BTreeMap::new()
            ),
            Error::Conflict { .. }
        ));
        assert!(matches!(
            Error::from_response(500, "mount error: timeout".into(), BTreeMap::new()),
            Error::Server { status: 500, .. }
        ));
        let mut errors = BTreeMap::new();
        errors.insert("storage".to_string(), "No such storage.".to_string());
        assert!(matches!(
            Error::from_response(400, "Parameter verification failed.".into(), errors),
            Error::NotFound { .. }
        ));
        assert!(matches!(
            Error::from_response(596, "Connection timed out".into(), BTreeMap::new()),
            Error::Unreachable { .. }
        ));
    }
}
