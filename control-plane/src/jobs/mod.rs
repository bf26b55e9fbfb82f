//! Jobs from birth to result: made (from a due slot or a person's request) and admitted against
//! the quota, claimed by an agent's long poll with its workspace key, reported on, recorded by
//! kind, and given up when their agent goes silent.
//!
//! Why a module of its own: the scheduler, the HTTP handlers and the lost-job sweep all touch
//! the same life cycle, and each used to carry a piece of it. Here the rules of that life cycle
//! live once: the scheduler only decides *when* a policy is due, the handlers only translate
//! HTTP, and the store only keeps records. Failures are [`Error`]s, turned into HTTP answers in
//! `api/error.rs` alone.
//!
//! - [`make`]: a due slot or a manual request becomes a [`Job`](crate::domain::job::Job),
//!   admitted against the workspace's quota;
//! - [`claim`]: the agents' long poll and the [`Board`] that wakes it;
//! - [`keys`]: the workspace key a handed-out job carries;
//! - [`results`]: progress and results, each result recorded by its job's kind;
//! - [`lost`]: jobs whose agent went silent (or was revoked) are failed and retried;
//! - [`upkeep`]: retention's forget jobs, gc and verify of a storage, and what their results
//!   change (the catalog, usage, alerts);
//! - [`restores`]: a restore requested, approved (or rejected, cancelled, expired), run as a
//!   job on its target agent, and what its result records (the pre-restore backup, the point
//!   reached, the `restore_failed` alert);
//! - [`approvals`]: four eyes for destructive acts — requested, approved (and then carried out
//!   by the caller), rejected, cancelled or expired;
//! - [`reconcile`]: the daily comparison of the usage counter with what the repositories were
//!   measured to hold (and Proxmox reports), and its `usage_drift` alert.

pub mod approvals;
pub mod claim;
mod decision;
pub mod drills;
pub mod keys;
pub mod lost;
pub mod make;
pub mod reconcile;
pub mod restores;
pub mod results;
pub mod upkeep;

use std::time::Duration;

use crate::domain::audit::Actor;
use crate::domain::job::DEFAULT_MAX_ATTEMPTS;
use crate::domain::Violation;
use crate::store::jobs::Limits;
use crate::store::StoreError;

pub use claim::Board;

/// The job-related settings (`control-plane.toml`).
#[derive(Debug, Clone, Copy)]
pub struct JobSettings {
    /// How often the scheduler looks at policies and running jobs.
    pub tick: Duration,
    /// A running job whose agent has not been heard of for this long is failed (and retried).
    pub lost_after: Duration,
    pub limits: Limits,
    pub max_attempts: u32,
    /// Delay before a lost job's retry may start (its agent may just be restarting).
    pub retry_delay: Duration,
    /// When each storage's gc and verify run.
    pub upkeep: upkeep::UpkeepSettings,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            tick: Duration::from_secs(15),
            lost_after: Duration::from_secs(120),
            limits: Limits {
                per_agent: 1,
                per_storage: 4,
            },
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_delay: Duration::from_secs(30),
            upkeep: upkeep::UpkeepSettings::default(),
        }
    }
}

/// Why a job could not be made, handed out or recorded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request breaks rules of the job protocol (a field each).
    #[error("the request breaks {} rule(s)", .0.len())]
    Invalid(Vec<Violation>),
    /// The workspace's quota does not admit the backups asked for; nothing was queued.
    #[error("{0}")]
    QuotaExceeded(String),
    /// A job of another workspace in an agent's queue: a bug, and it must not carry that
    /// workspace's key.
    #[error("job '{0}' is not of the agent's workspace")]
    ForeignJob(String),
    /// The caller sees the object but may not do this to it (403).
    #[error("{0}")]
    Forbidden(String),
    /// The recovery key was shown (or chosen) before; it is never shown again.
    #[error("the recovery key of workspace '{workspace}' was {} {to} at {at}; it is shown only once", if *.chosen { "chosen by" } else { "shown to" })]
    RecoveryKeyShown {
        workspace: String,
        chosen: bool,
        at: chrono::DateTime<chrono::Utc>,
        to: String,
    },
    /// The stored workspace key cannot be opened with this control plane's secrets key.
    #[error("the key of workspace '{workspace}' cannot be opened: {source}")]
    WorkspaceKey {
        workspace: String,
        source: crate::secrets::SecretsError,
    },
}

/// Who the audit log names for what the control plane does with jobs on its own.
pub fn system_actor() -> Actor {
    Actor {
        kind: "system".into(),
        id: "scheduler".into(),
        name: "scheduler".into(),
    }
}
