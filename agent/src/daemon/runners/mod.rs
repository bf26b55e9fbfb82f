//! One runner per kind of job. The daemon asks nothing of a job but its id and its
//! [`JobResult`]; everything a kind needs beyond the shared [`Context`] lives in its own file,
//! so a new kind is one file and one arm of [`run`].
//!
//! Every failure becomes a failed result naming why, never a dropped job: a job without a result
//! stays "running" at the control plane until it is failed as lost and retried.

mod backup;
mod drill;
mod forget;
mod gc;
mod restore;
mod verify;

use std::time::Duration;

use anyhow::{Context as _, Result};
use bulwark_core::api::{AgentJob, JobProgress, JobResult, JobTask, UnreadableJob};
use bulwark_core::keys::KdfParams;
use bulwark_core::repo::NewSlot;
use bulwark_core::repo::Repository;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{current, SharedClient};
use crate::cli::{Global, MACHINE_KEY_KDF};

/// Label of the key slot the workspace key opens.
const WORKSPACE_SLOT_LABEL: &str = "workspace key (control plane)";
/// Label of the slot the workspace's recovery key opens (restores without the control plane).
const RECOVERY_SLOT_LABEL: &str = "recovery key (workspace admin)";

/// What the daemon gives every runner.
pub(super) struct Context {
    pub(super) g: Global,
    /// The daemon's state directory (WAL bindings live there: [`crate::wal_target`]).
    pub(super) state: crate::control::StateDir,
    pub(super) client: SharedClient,
    /// `true` once the daemon is stopping.
    pub(super) stop: watch::Receiver<bool>,
    /// How long a running job may take to finish after a stop.
    pub(super) stop_timeout: Duration,
}

/// The result of one poll answer's job, with the job's id: the job run by its runner, or, when
/// this agent could not read it (a kind, method or field from a newer control plane), a refusal.
pub(super) async fn answer(
    cx: &Context,
    polled: Result<AgentJob, UnreadableJob>,
) -> (String, JobResult) {
    match polled {
        Ok(job) => {
            tracing::info!(job = %job.id, kind = %job.task.kind(), database = ?job.task.database_id(), attempt = job.attempt, "job started");
            let result = within_limits(run(cx, &job).await);
            (job.id, result)
        }
        Err(unreadable) => {
            let result = refusal(&unreadable);
            (unreadable.id, result)
        }
    }
}

/// Most bytes of a result's error, and of one drill check's detail, the control plane takes.
const MAX_ERROR_BYTES: usize = 8000;
const MAX_DETAIL_BYTES: usize = 2000;

/// A result the control plane accepts: a long error (a tool's whole stderr, every table whose
/// row count differs) is cut rather than refused, which would leave the result undeliverable.
fn within_limits(mut r: JobResult) -> JobResult {
    if let Some(e) = &mut r.error {
        cut(e, MAX_ERROR_BYTES);
    }
    if let Some(d) = &mut r.drill {
        for c in &mut d.checks {
            cut(&mut c.detail, MAX_DETAIL_BYTES);
        }
    }
    r
}

fn cut(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max - " … (cut)".len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(" … (cut)");
}

async fn run(cx: &Context, job: &AgentJob) -> JobResult {
    let started_at = Utc::now();
    let outcome = match &job.task {
        JobTask::Backup(task) => return backup::run(cx, job, task).await,
        JobTask::Forget(task) => forget::run(cx, job, task).await,
        JobTask::Gc(task) => gc::run(cx, job, task).await,
        JobTask::Verify(task) => verify::run(cx, job, task).await,
        JobTask::Restore(task) => return restore::run(cx, job, task).await,
        JobTask::Drill(task) => return drill::run(cx, job, task).await,
    };
    let kind = job.task.kind();
    match outcome {
        Ok(result) => {
            tracing::info!(job = %job.id, %kind, "job done");
            JobResult {
                succeeded: true,
                started_at,
                finished_at: Utc::now(),
                ..result
            }
        }
        Err(e) => {
            tracing::warn!(job = %job.id, %kind, error = format!("{e:#}"), "job failed");
            failed(started_at, format!("{kind} job {} failed: {e:#}", job.id))
        }
    }
}

/// A failed result that says why this agent cannot run the job.
fn refusal(job: &UnreadableJob) -> JobResult {
    let error = format!(
        "bulwark-agent {} cannot run job {}: {}; upgrade the agent",
        env!("CARGO_PKG_VERSION"),
        job.id,
        job.reason
    );
    tracing::error!(job = %job.id, error = %error, "job refused");
    let now = Utc::now();
    JobResult {
        finished_at: now,
        ..failed(now, error)
    }
}

/// The WAL binding a job's storage gives a server (a backed-up or restored cluster).
fn wal_target_for(
    job: &AgentJob,
    storage: &bulwark_core::api::StorageTarget,
) -> crate::wal_target::WalTarget {
    crate::wal_target::WalTarget {
        workspace_id: job.workspace_id.clone(),
        storage: storage.clone(),
        workspace_key: job.workspace_key.clone(),
        job_id: job.id.clone(),
        written_at: Utc::now(),
    }
}

/// A failed result started at `started_at` and finished now.
fn failed(started_at: DateTime<Utc>, error: String) -> JobResult {
    JobResult {
        succeeded: false,
        started_at,
        finished_at: Utc::now(),
        error: Some(error),
        ..JobResult::default()
    }
}

impl Context {
    /// Tells the control plane which phase a job is in; a lost report is only logged.
    async fn report(&self, job: &AgentJob, phase: &str, bytes: u64) {
        let report = JobProgress {
            phase: phase.into(),
            bytes,
            percent: None,
        };
        if let Err(e) = current(&self.client).progress(&job.id, &report).await {
            tracing::debug!(error = %e, "progress report failed");
        }
    }

    /// Opens the job's repository with the workspace key: the storage the job names (see
    /// [`crate::storage`]), or the configured repository for jobs without one. A storage whose
    /// repository does not exist yet gets one, with a slot for the workspace key and one for
    /// the recovery key when the job carries it (two agents racing make one). An existing
    /// passphrase repository of the configuration gets a slot for the workspace key.
    /// Returns whether this call created it. Without `create` (restores: there is nothing to
    /// restore from an empty storage) a missing repository is an error.
    async fn open_repository(&self, job: &AgentJob, create: bool) -> Result<(Repository, bool)> {
        use bulwark_core::Error;
        let g = &self.g;
        let key = &job.workspace_key;
        let (location, backend) = match &job.storage {
            Some(target) => {
                let location = crate::storage::location_for(target, &g.settings.storage);
                let backend = crate::cli::open_backend(&location, true).with_context(|| {
                    format!("opening the repository of storage {}", target.storage_id)
                })?;
                (location, backend)
            }
            None => (g.location()?.to_string(), g.backend(true)?),
        };
        match Repository::open(backend.clone(), key.as_bytes()).await {
            Ok(repo) => Ok((repo, false)),
            Err(Error::NotARepository { .. }) if !create => {
                anyhow::bail!(
                    "{location} holds no repository yet: nothing was ever backed up there"
                )
            }
            Err(Error::NotARepository { .. }) => {
                tracing::info!(%location, recovery_slot = job.recovery_key.is_some(), "creating the repository with the workspace key");
                let mut slots = vec![NewSlot {
                    passphrase: key.as_bytes(),
                    label: WORKSPACE_SLOT_LABEL,
                    kdf: MACHINE_KEY_KDF,
                }];
                if let Some(recovery) = &job.recovery_key {
                    slots.push(NewSlot {
                        passphrase: recovery.as_bytes(),
                        label: RECOVERY_SLOT_LABEL,
                        kdf: KdfParams::default(),
                    });
                }
                match Repository::init_with(backend.clone(), &slots).await {
                    Ok(repo) => Ok((repo, true)),
                    // Another agent made it meanwhile.
                    Err(Error::AlreadyExists { .. }) => {
                        Ok((Repository::open(backend, key.as_bytes()).await?, false))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Err(e @ Error::WrongPassphrase { .. }) if job.storage.is_none() => {
                let pass = g.passphrase().map_err(|_| {
                    anyhow::anyhow!("{e}: the repository has no key slot for this workspace's key, and no password_file is configured to add one")
                })?;
                let repo = Repository::open(backend, &pass).await?;
                repo.add_key(key.as_bytes(), WORKSPACE_SLOT_LABEL, MACHINE_KEY_KDF)
                    .await?;
                tracing::info!("added a key slot for the workspace key to the repository");
                Ok((repo, false))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The bytes every object of `repo` holds, by listing and stat (what the storage bills), for the
/// control plane's usage reconcile. Shared by gc, which reports it after collecting, and the
/// scheduled verify of a whole storage, which runs daily and so keeps the figure fresh between
/// weekly gcs.
async fn repository_bytes(repo: &Repository) -> Result<u64> {
    let mut paths = Vec::new();
    repo.backend()
        .list_each("", &mut |p| paths.push(p.to_string()))
        .await
        .context("listing the repository's objects to measure it")?;
    let mut total = 0;
    for p in paths {
        let info = repo
            .backend()
            .stat(&p)
            .await
            .with_context(|| format!("measuring repository object {p}"))?;
        // Gone since the listing (a concurrent gc or forget): it holds nothing now.
        if let Some(info) = info {
            total += info.size;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use super::*;
    use crate::control::{Client, Fingerprint};

    /// A context whose control plane is never reached.
    fn offline() -> Context {
        let client = Client::new("https://127.0.0.1:9", Fingerprint([0; 32]), None).unwrap();
        Context {
            g: Global::default(),
            state: crate::control::StateDir::new("/nonexistent/bulwark-state"),
            client: Arc::new(RwLock::new(Arc::new(client))),
            stop: watch::channel(false).1,
            stop_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn long_errors_and_check_details_are_cut_to_what_the_control_plane_takes() {
        let mut r = failed(Utc::now(), "é".repeat(10_000));
        r.drill = Some(bulwark_core::api::DrillOutcome {
            checks: vec![bulwark_core::api::CheckResult {
                name: "row_counts".into(),
                passed: false,
                detail: "t: 1 backed up, 2 restored; ".repeat(500),
            }],
            ..Default::default()
        });
        let r = within_limits(r);
        let e = r.error.unwrap();
        assert!(
            e.len() <= MAX_ERROR_BYTES && e.ends_with("(cut)"),
            "{}",
            e.len()
        );
        let detail = &r.drill.unwrap().checks[0].detail;
        assert!(detail.len() <= MAX_DETAIL_BYTES && detail.ends_with("(cut)"));
        let short = within_limits(failed(Utc::now(), "short".into()));
        assert_eq!(short.error.as_deref(), Some("short"));
    }

    #[tokio::test]
    async fn a_job_of_a_kind_this_agent_does_not_know_gets_a_failed_result_naming_the_kind() {
        let job = serde_json::json!({
            "id": "job-7",
            "kind": "defragment",
            "workspace_id": "acme",
            "database_id": "crm",
            "database_type": "postgresql",
            "snapshot_kind": "automatic",
            "attempt": 1,
            "workspace_key": "00".repeat(32),
        });
        let polled = AgentJob::from_value(job).map_err(|e| e.expect("the job has an id"));
        let (id, result) = answer(&offline(), polled).await;
        assert_eq!(id, "job-7");
        assert!(!result.succeeded);
        assert_eq!(result.snapshot, None);
        let error = result.error.expect("the result says why");
        assert!(
            error.contains("cannot run job job-7")
                && error.contains("defragment")
                && error.ends_with("upgrade the agent"),
            "{error}"
        );
    }
}
