//! Where jobs come from: a policy's slot that came (the scheduler decided it is due) or a
//! person's request (`POST /api/v1/backups`). Both go through the workspace's quota before
//! anything is queued, but differently: a scheduled run the quota refuses is still recorded —
//! as a failed job saying why, so the missed slot is visible — while a manual request is refused
//! as a whole and queues nothing.

use chrono::{DateTime, Utc};

use super::{Board, Error};
use crate::domain::audit::Actor;
use crate::domain::backup::SnapshotKind;
use crate::domain::database::Database;
use crate::domain::job::{Job, JobStatus};
use crate::domain::new_id;
use crate::domain::policy::{Policy, Priority};
use crate::domain::Violation;
use crate::store::quota::Admission;
use crate::store::{Store, StoreError, Tx};

/// A job for `db`, not yet stored.
#[allow(clippy::too_many_arguments)]
pub fn new_job(
    db: &Database,
    agent: &str,
    kind: SnapshotKind,
    policy: Option<&Policy>,
    priority: Priority,
    not_before: DateTime<Utc>,
    reason: String,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Job {
    Job {
        id: new_id("job"),
        job_kind: bulwark_core::api::JobKind::Backup,
        work: Default::default(),
        workspace_id: db.workspace_id.clone(),
        database_id: db.id.clone(),
        db_type: db.db_type,
        agent_id: agent.to_string(),
        policy_id: policy.map(|p| p.id.clone()),
        storage_id: policy.and_then(|p| p.storage_id.clone()),
        kind,
        priority,
        method: policy.map(|p| p.backup_method),
        status: JobStatus::Queued,
        not_before,
        reason,
        attempt: 1,
        max_attempts,
        retry_of: None,
        notes: None,
        tags: Default::default(),
        created_at: now,
        started_at: None,
        finished_at: None,
        progress: None,
        snapshot: None,
        logical_bytes: 0,
        stored_bytes: 0,
        error: None,
        warnings: Vec::new(),
    }
}

/// Stores `job` after the quota admission; a refused one is stored as failed with the reason.
pub fn admit_and_create(tx: &mut Tx, mut job: Job, expected_bytes: u64) -> Result<Job, StoreError> {
    if let Admission::Refused(why) =
        tx.admit_backup(&job.workspace_id, &job.database_id, expected_bytes)?
    {
        job.status = JobStatus::Failed;
        job.finished_at = Some(tx.now);
        job.error = Some(why);
    }
    tx.create_job(&job)?;
    Ok(job)
}

/// The run of `policy`'s slot that came, on `agent`, starting now; `expected_bytes` (what the
/// last run stored) is what the quota is asked for.
pub fn scheduled(
    tx: &mut Tx,
    db: &Database,
    agent: &str,
    policy: &Policy,
    reason: String,
    max_attempts: u32,
    expected_bytes: u64,
) -> Result<Job, StoreError> {
    let now = tx.now;
    let mut job = new_job(
        db,
        agent,
        SnapshotKind::Automatic,
        Some(policy),
        policy.schedule.priority,
        now,
        reason,
        max_attempts,
        now,
    );
    if job.storage_id.is_none() {
        // A policy from before storages were defaulted: the workspace's only storage, or a
        // failed run saying which to choose (never the agent's own repository by accident).
        match tx.default_storage(&db.workspace_id, "storage_id") {
            Ok(storage) => job.storage_id = storage.map(|s| s.id),
            Err(StoreError::Rejected(why)) => {
                job.status = JobStatus::Failed;
                job.finished_at = Some(now);
                job.error = Some(format!(
                    "policy '{}' names no backup storage: {}",
                    policy.id,
                    why.first().map(|v| v.problem.as_str()).unwrap_or("")
                ));
                tx.create_job(&job)?;
                return Ok(job);
            }
            Err(e) => return Err(e),
        }
    }
    admit_and_create(tx, job, expected_bytes)
}

/// A person's request for backups now (or at `at`): one job per database, each for the
/// database's agent.
pub struct ManualRequest {
    /// Each database with where the request named it (`database_ids[1]`, …), for the answer
    /// when it cannot be backed up.
    pub databases: Vec<(Database, String)>,
    pub priority: Priority,
    pub at: DateTime<Utc>,
    /// Who asked (the jobs' reason names them).
    pub requested_by: String,
    pub notes: Option<String>,
    pub tags: std::collections::BTreeMap<String, String>,
    /// The backup storage named in the request (`storage_id`); without it each database's
    /// workspace's only storage (none: the agent's own repository).
    pub storage_id: Option<String>,
}

/// Queues the jobs of a manual request, all or none: every database must have an agent of its
/// own workspace, and the quota must admit each. The agents' polls are woken.
pub async fn manual(
    store: &Store,
    board: &Board,
    actor: Actor,
    request: ManualRequest,
) -> Result<Vec<Job>, Error> {
    let max_attempts = board.settings.max_attempts;
    let outcome = store
        .write(actor, move |tx| {
            let ManualRequest {
                databases,
                priority,
                at,
                requested_by,
                notes,
                tags,
                storage_id,
            } = request;
            // Only a live agent of the database's own workspace may run its job.
            let mut agents = Vec::new();
            let mut unserved = Vec::new();
            for (db, path) in &databases {
                match tx.serving_agent(db)? {
                    Some(a) => agents.push(a.id),
                    None => unserved.push(Violation::new(
                        path.clone(),
                        format!(
                            "database '{}' has no agent of its workspace; enrol an agent that declares it in its configuration",
                            db.id
                        ),
                    )),
                }
            }
            if !unserved.is_empty() {
                return Err(StoreError::Rejected(unserved));
            }
            let mut storages = Vec::new();
            for (db, _) in &databases {
                let storage = match &storage_id {
                    Some(id) => Some(tx.active_storage_in(&db.workspace_id, id, "storage_id")?),
                    None => tx.default_storage(&db.workspace_id, "storage_id")?,
                };
                storages.push(storage.map(|s| s.id));
            }
            let mut jobs = Vec::new();
            for (((db, _), agent), storage) in databases.iter().zip(agents).zip(storages) {
                if let Admission::Refused(why) = tx.admit_backup(&db.workspace_id, &db.id, 0)? {
                    // Committed without jobs, so the quota alert stays recorded.
                    return Ok(Err(why));
                }
                let mut job = new_job(
                    db,
                    &agent,
                    SnapshotKind::Manual,
                    None,
                    priority,
                    at,
                    format!("manual, requested by {requested_by}"),
                    max_attempts,
                    tx.now,
                );
                job.notes = notes.clone();
                job.tags = tags.clone();
                job.storage_id = storage;
                tx.create_job(&job)?;
                jobs.push(job);
            }
            Ok(Ok(jobs))
        })
        .await?;
    let jobs = outcome.map_err(Error::QuotaExceeded)?;
    for job in &jobs {
        board.wake(&job.agent_id);
    }
    Ok(jobs)
}
