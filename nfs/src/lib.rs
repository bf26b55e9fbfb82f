//! Repository storage on an NFS export, spoken from userspace.
//!
//! Why not a kernel mount: an agent in an unprivileged LXC container (or on a host without the
//! NFS client module) cannot mount, and a mount is set-up on the host that the agent cannot
//! check or repair. With `nfs://SERVER/EXPORT/REPO` the agent needs nothing but a route to the
//! server: it speaks NFSv4.1 (falling back to NFSv3 when the server refuses v4) through the
//! pure-Rust `nfs-rs` client with AUTH_SYS credentials, as the process's uid and gid.
//!
//! The repository code sees the same [`bulwark_core::backend::Backend`] as for a directory or
//! S3; [`open`] wraps it in core's `Retrying`, so a dropped connection, a restarting server or a
//! busy one is retried (with a fresh mount) and a full export fails at once with core's
//! full-disk error.

mod backend;
pub mod error;
pub mod location;

use std::sync::Arc;

use bulwark_core::backend::{DynBackend, RetryPolicy, Retrying};

pub use backend::{ConnectError, NfsBackend};
pub use error::NfsError;
pub use location::{Location, Version};

/// True for a location this crate opens.
pub fn is_nfs_location(location: &str) -> bool {
    location.starts_with("nfs://")
}

/// Opens the repository storage at `nfs://SERVER[:PORT]/EXPORT[/SUBPATH]?version=3|4`
/// (see [`Location`]) with transient failures retried: what every command uses. `create`
/// makes a missing repository directory under the export (for `repo init`).
pub async fn open(location: &str, create: bool) -> Result<DynBackend, bulwark_core::Error> {
    open_with_policy(location, create, retry_policy(location)).await
}

/// [`open`] for a caller that cannot wait: mounts on the first call (see [`NfsBackend::new`]).
pub fn open_lazy(location: &str, create: bool) -> Result<DynBackend, bulwark_core::Error> {
    let backend = NfsBackend::new(location, create)
        .map_err(|e| e.into_core(format!("opening {location}")))?;
    let backend: DynBackend = Arc::new(backend);
    Ok(Arc::new(Retrying::new(backend, retry_policy(location))))
}

/// Core's default retry policy, with the budget `retrysecs=` gives (an operator whose server
/// fails over slowly gives more; one who would rather the job failed soon, less).
fn retry_policy(location: &str) -> RetryPolicy {
    let mut policy = RetryPolicy::default();
    if let Some(secs) = Location::parse(location).ok().and_then(|l| l.retry_secs) {
        policy.budget = std::time::Duration::from_secs(secs.into());
    }
    policy
}

/// [`open`] with a retry policy of the caller's (tests use a short budget).
pub async fn open_with_policy(
    location: &str,
    create: bool,
    policy: RetryPolicy,
) -> Result<DynBackend, bulwark_core::Error> {
    let backend = NfsBackend::connect(location, create)
        .await
        .map_err(|e| match e {
            ConnectError::Missing(_) => bulwark_core::Error::NotARepository {
                location: location.to_string(),
            },
            ConnectError::Nfs(e) => e.into_core(format!("opening {location}")),
        })?;
    let backend: DynBackend = Arc::new(backend);
    Ok(Arc::new(Retrying::new(backend, policy)))
}
