//! The jobs that keep repositories in shape: retention's `forget` jobs, `gc` of a storage, and
//! `verify` of snapshots — what makes them, what each one's result changes, and what the
//! scheduler's daily and per-storage passes decide is due.
//!
//! The rules:
//! - retention is planned from the catalog by the pure planner (`domain::retention::plan`),
//!   after each successful automatic backup and once a day; its removals become ONE forget job
//!   for the database, and no other while one is queued or running for it. The entries are
//!   marked (`forget_job`) and leave the catalog only when the agent confirms their snapshots
//!   are gone; a forget that fails unmarks them, so the next run tries again;
//! - forgetting frees nothing by itself (the chunks stay); a gc of the storage deletes what no
//!   snapshot references, and usage falls by exactly the bytes its result says it freed;
//! - at most one gc per storage is queued or running, on a live agent of the workspace;
//! - a verify (after a backup, by hand, or scheduled per storage over `verify_parts` parts)
//!   records `verified_at` and the outcome in the catalog; a damaged snapshot raises a
//!   `verify_failed` alert and never counts as a good copy again.

use bulwark_core::api::{
    ForgetTask, GcTask, JobKind, JobResult, JobTask, SnapshotCheck, SnapshotRef, VerifyTask,
};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::agent::Agent;
use crate::domain::backup::{BackupRecord, SnapshotKind, Verification};
use crate::domain::database::{Database, DatabaseType};
use crate::domain::job::{Job, JobStatus, NamedSnapshot, Work};
use crate::domain::new_id;
use crate::domain::policy::{Policy, Priority};
use crate::domain::quota::AlertKind;
use crate::domain::retention::{self, RetentionPlan};
use crate::store::{self, ReadTx, StoreError, Tx};

/// When a storage's gc and verify run (`control-plane.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpkeepSettings {
    /// A storage's gc runs this often…
    pub gc_interval_days: u32,
    /// …or sooner, once this many snapshots were forgotten on it since its last gc.
    pub gc_after_forgets: u32,
    /// A storage's scheduled verify runs this often…
    pub verify_interval_hours: u32,
    /// …reading part `n % verify_parts` of its chunks, so every chunk is read once per
    /// `verify_parts` runs.
    pub verify_parts: u32,
}

impl Default for UpkeepSettings {
    fn default() -> Self {
        UpkeepSettings {
            gc_interval_days: 7,
            gc_after_forgets: 20,
            verify_interval_hours: 24,
            verify_parts: 7,
        }
    }
}

/// What the scheduler remembers about one storage's upkeep (kept with the schedule states).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpkeepState {
    #[serde(default)]
    pub last_gc_at: Option<DateTime<Utc>>,
    /// Snapshots forgotten on the storage since its last gc.
    #[serde(default)]
    pub forgets_since_gc: u32,
    #[serde(default)]
    pub last_verify_at: Option<DateTime<Utc>>,
    /// Scheduled verifies made so far (the next reads part `verify_runs % verify_parts`).
    #[serde(default)]
    pub verify_runs: u32,
    /// What the storage's repository held when last measured (a gc, or a verify of the whole
    /// storage), and when.
    #[serde(default)]
    pub repository_bytes: Option<u64>,
    #[serde(default)]
    pub repository_bytes_at: Option<DateTime<Utc>>,
    /// The daily retention pass (kept under its own key, not a storage's).
    #[serde(default)]
    pub last_retention_at: Option<DateTime<Utc>>,
}

/// The key a storage's upkeep state is kept under; `""` is the repository the agents
/// configure themselves (a workspace without storages).
fn upkeep_key(workspace: &str, storage: Option<&str>) -> String {
    format!("upkeep:{workspace}:{}", storage.unwrap_or(""))
}

pub fn upkeep_state(
    tx: &Tx,
    workspace: &str,
    storage: Option<&str>,
) -> Result<UpkeepState, StoreError> {
    tx.schedule_record(&upkeep_key(workspace, storage))
}

/// [`upkeep_state`] in a read transaction (the usage endpoint).
pub fn read_upkeep_state(
    rtx: &ReadTx,
    workspace: &str,
    storage: Option<&str>,
) -> Result<UpkeepState, StoreError> {
    store::jobs::schedule_record(rtx, &upkeep_key(workspace, storage))
}

fn put_upkeep_state(
    tx: &mut Tx,
    workspace: &str,
    storage: Option<&str>,
    state: &UpkeepState,
) -> Result<(), StoreError> {
    tx.put_schedule_record(&upkeep_key(workspace, storage), state)
}

/// A job of another kind than backup, not yet stored. `database` is `None` for storage-wide
/// jobs (gc, a verify of the whole storage).
#[allow(clippy::too_many_arguments)]
fn new_upkeep_job(
    workspace: &str,
    database: Option<&Database>,
    storage: Option<String>,
    agent: &str,
    kind: JobKind,
    work: Work,
    reason: String,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Job {
    Job {
        id: new_id("job"),
        job_kind: kind,
        work,
        workspace_id: workspace.to_string(),
        database_id: database.map(|d| d.id.clone()).unwrap_or_default(),
        db_type: database.map_or(DatabaseType::Files, |d| d.db_type),
        agent_id: agent.to_string(),
        policy_id: None,
        storage_id: storage,
        kind: SnapshotKind::Automatic,
        priority: Priority::Normal,
        method: None,
        status: JobStatus::Queued,
        not_before: now,
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

/// What the agent receives for `job`: its task, by kind. `tags` and `verify_after` are the
/// backup's.
pub fn task_of(
    job: &Job,
    tags: std::collections::BTreeMap<String, String>,
    verify_after: bool,
    count_rows: bool,
) -> JobTask {
    match (job.job_kind, &job.work) {
        (_, Work::Restore { task, .. }) => JobTask::Restore(task.clone()),
        (_, Work::Drill { task, .. }) => JobTask::Drill(task.clone()),
        (JobKind::Forget, Work::Forget { snapshots, .. }) => JobTask::Forget(ForgetTask {
            database_id: job.database_id.clone(),
            snapshots: snapshots.clone(),
        }),
        (JobKind::Gc, _) => JobTask::Gc(GcTask { expire_wal: true }),
        (JobKind::Verify, work) => {
            let (snapshots, subset) = match work {
                Work::Verify {
                    snapshots,
                    subset_part,
                    subset_of,
                } => (
                    snapshots
                        .iter()
                        .map(|s| SnapshotRef {
                            database_id: s.database_id.clone(),
                            name: s.name.clone(),
                        })
                        .collect(),
                    match (subset_part, subset_of) {
                        (Some(part), Some(of)) => Some(bulwark_core::repo::verify::Subset {
                            part: *part,
                            of: *of,
                        }),
                        _ => None,
                    },
                ),
                _ => (Vec::new(), None),
            };
            JobTask::Verify(VerifyTask { snapshots, subset })
        }
        // A forget without its snapshots (or a restore or drill without its task) cannot be
        // made; it would read as a backup.
        (JobKind::Backup | JobKind::Forget | JobKind::Restore | JobKind::Drill, _) => {
            JobTask::Backup(bulwark_core::api::BackupTask {
                database_id: job.database_id.clone(),
                database_type: job.db_type,
                method: job.method,
                snapshot_kind: job.kind,
                tags,
                verify_after,
                count_rows,
            })
        }
    }
}

/// Whether a forget job of `database` is queued or running.
pub fn forget_pending(tx: &Tx, database: &str) -> Result<bool, StoreError> {
    let is = |j: &Job| j.job_kind == JobKind::Forget && j.database_id == database;
    Ok(store::jobs::queued_in(tx)?.iter().any(is) || store::jobs::running_in(tx)?.iter().any(is))
}

/// One forget job for `entries` of `db` on the database's agent, the entries marked with it.
/// Entries without a snapshot (failed backups) have nothing in the repository and leave the
/// catalog at once. `None` when nothing is left to forget.
pub fn forget(
    tx: &mut Tx,
    db: &Database,
    entries: Vec<BackupRecord>,
    reason: String,
    max_attempts: u32,
) -> Result<Option<Job>, StoreError> {
    let mut snapshots = Vec::new();
    let mut backup_ids = Vec::new();
    for e in entries {
        match e.snapshot {
            Some(s) => {
                snapshots.push(s);
                backup_ids.push(e.id);
            }
            None => {
                tx.remove_backup(&e.id)?;
            }
        }
    }
    if backup_ids.is_empty() {
        return Ok(None);
    }
    let Some(agent) = tx.serving_agent(db)? else {
        return Err(StoreError::Conflict(format!(
            "database '{}' has no live agent of its workspace to delete its snapshots; enrol one",
            db.id
        )));
    };
    let storage = tx.backup(&backup_ids[0])?.and_then(|b| b.storage_id);
    let job = new_upkeep_job(
        &db.workspace_id,
        Some(db),
        storage,
        &agent.id,
        JobKind::Forget,
        Work::Forget {
            snapshots,
            backup_ids: backup_ids.clone(),
        },
        reason,
        max_attempts,
        tx.now,
    );
    tx.create_job(&job)?;
    for id in &backup_ids {
        let job_id = job.id.clone();
        tx.update_backup(id, move |b| b.forget_job = Some(job_id))?;
    }
    Ok(Some(job))
}

/// The enabled policies of `database`.
fn policies_of(tx: &Tx, database: &str) -> Result<Vec<Policy>, StoreError> {
    Ok(tx
        .all_policies()?
        .into_iter()
        .filter(|p| p.db_identifier == database && p.enabled)
        .collect())
}

/// Plans retention for `database` and queues the forget job of its removals; `None` when
/// nothing goes, a forget job is already pending, or the database has no policy.
pub fn run_retention(
    tx: &mut Tx,
    database: &str,
    max_attempts: u32,
) -> Result<Option<Job>, StoreError> {
    let Some(db) = tx.database(database)? else {
        return Ok(None);
    };
    let policies = policies_of(tx, database)?;
    if policies.is_empty() || forget_pending(tx, database)? {
        return Ok(None);
    }
    let entries = tx.backups_of(database)?;
    let plan = retention::plan(database, &policies, &entries, tx.now);
    let gone: Vec<&str> = plan.removals().map(|e| e.backup_id.as_str()).collect();
    if gone.is_empty() {
        return Ok(None);
    }
    let removals: Vec<BackupRecord> = entries
        .into_iter()
        .filter(|e| gone.contains(&e.id.as_str()))
        .collect();
    let n = removals.len();
    match forget(
        tx,
        &db,
        removals,
        format!("retention: {n} snapshot(s) past the policy's rules"),
        max_attempts,
    ) {
        Ok(job) => Ok(job),
        // No agent now: the next run (after the next backup, or tomorrow) tries again.
        Err(StoreError::Conflict(why)) => {
            tracing::warn!(database, "retention not run: {why}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// What the next retention run of `database` would do (`GET /api/v1/databases/{id}/retention`).
pub fn retention_plan(
    rtx: &ReadTx,
    database: &str,
    now: DateTime<Utc>,
) -> Result<RetentionPlan, StoreError> {
    let (policies, _) = store::policies::list(
        rtx,
        store::policies::Scope::Database(database),
        None,
        |p| p.enabled,
        None,
        10_000,
    )?;
    let entries = store::backups::of_database(rtx, database)?;
    Ok(retention::plan(database, &policies, &entries, now))
}

/// A person's delete of backup `id` (manual or pre-restore): a forget job of its snapshot;
/// `None` when it had none and its entry went at once.
pub fn forget_by_hand(
    tx: &mut Tx,
    id: &str,
    who: &str,
    max_attempts: u32,
) -> Result<Option<Job>, StoreError> {
    let b = tx.backup(id)?.ok_or_else(|| StoreError::NotFound {
        kind: "backup",
        id: id.to_string(),
    })?;
    store::backups::check_deletable(&b)?;
    if let Some(j) = &b.forget_job {
        if let Some(job) = tx.job(j)?.filter(|j| j.status.is_active()) {
            return Ok(Some(job));
        }
    }
    let db = tx.database_in(&b.workspace_id, &b.database_id)?;
    forget(tx, &db, vec![b], format!("deleted by {who}"), max_attempts)
}

/// A live agent of `workspace`: not revoked, heard from within `recent`; the most recently
/// heard first.
fn live_agent(tx: &Tx, workspace: &str, recent: Duration) -> Result<Option<Agent>, StoreError> {
    let now = tx.now;
    Ok(tx
        .agents_of(workspace)?
        .into_iter()
        .filter(|a| a.revoked_at.is_none())
        .filter(|a| a.last_heartbeat_at.is_some_and(|t| now - t <= recent))
        .max_by_key(|a| a.last_heartbeat_at))
}

/// Whether a gc of the storage is queued or running.
fn gc_pending(tx: &Tx, workspace: &str, storage: Option<&str>) -> Result<bool, StoreError> {
    let is = |j: &Job| {
        j.job_kind == JobKind::Gc
            && j.workspace_id == workspace
            && j.storage_id.as_deref() == storage
    };
    Ok(store::jobs::queued_in(tx)?.iter().any(is) || store::jobs::running_in(tx)?.iter().any(is))
}

/// A gc of `storage` on a live agent of `workspace`; `None` when one is pending already or no
/// agent is live.
pub fn gc(
    tx: &mut Tx,
    workspace: &str,
    storage: Option<&str>,
    recent: Duration,
    reason: String,
    max_attempts: u32,
) -> Result<Option<Job>, StoreError> {
    if gc_pending(tx, workspace, storage)? {
        return Ok(None);
    }
    let Some(agent) = live_agent(tx, workspace, recent)? else {
        return Ok(None);
    };
    let job = new_upkeep_job(
        workspace,
        None,
        storage.map(str::to_string),
        &agent.id,
        JobKind::Gc,
        Work::Gc {
            freed_bytes: 0,
            repository_bytes: None,
        },
        reason,
        max_attempts,
        tx.now,
    );
    tx.create_job(&job)?;
    Ok(Some(job))
}

/// A verify of one catalog entry's snapshot on its database's agent (`POST
/// /api/v1/backups/{id}/verify`).
pub fn verify_backup(
    tx: &mut Tx,
    id: &str,
    who: &str,
    max_attempts: u32,
) -> Result<Job, StoreError> {
    let b = tx.backup(id)?.ok_or_else(|| StoreError::NotFound {
        kind: "backup",
        id: id.to_string(),
    })?;
    let Some(name) = b.snapshot.clone() else {
        return Err(StoreError::Refused(format!(
            "backup '{id}' has no snapshot to verify (it did not succeed)"
        )));
    };
    let db = tx.database_in(&b.workspace_id, &b.database_id)?;
    let Some(agent) = tx.serving_agent(&db)? else {
        return Err(StoreError::Conflict(format!(
            "database '{}' has no live agent of its workspace to verify its snapshot; enrol one",
            db.id
        )));
    };
    let job = new_upkeep_job(
        &b.workspace_id,
        Some(&db),
        b.storage_id.clone(),
        &agent.id,
        JobKind::Verify,
        Work::Verify {
            snapshots: vec![NamedSnapshot {
                database_id: db.id.clone(),
                name,
            }],
            subset_part: None,
            subset_of: None,
        },
        format!("verify requested by {who}"),
        max_attempts,
        tx.now,
    );
    tx.create_job(&job)?;
    Ok(job)
}

/// Records what a verify found: `verified_at` and the outcome of each checked snapshot's
/// catalog entry, and a `verify_failed` alert for a damaged one.
pub fn record_checks(
    tx: &mut Tx,
    workspace: &str,
    checks: &[SnapshotCheck],
    whole: bool,
) -> Result<(), StoreError> {
    let now = tx.now;
    let mut storages = std::collections::BTreeSet::new();
    for c in checks {
        let Some(entry) = tx.backup_by_snapshot(&c.database_id, &c.name)? else {
            continue;
        };
        if entry.workspace_id != workspace {
            continue;
        }
        // A check of part of the chunks cannot clear damage another part found.
        let outcome = match (c.intact, entry.verification) {
            (false, _) => Verification::Damaged,
            (true, Some(Verification::Damaged)) if !whole => Verification::Damaged,
            (true, _) => Verification::Intact,
        };
        tx.update_backup(&entry.id, |b| {
            b.verified_at = Some(now);
            b.verification = Some(outcome);
        })?;
        storages.insert(entry.storage_id.clone());
        if !c.intact {
            let problems = c.problems.join("; ");
            tx.raise_alert(
                workspace,
                AlertKind::VerifyFailed,
                entry.storage_id.as_deref(),
                &format!(
                    "snapshot {} of database '{}' is damaged: {problems}",
                    c.name, c.database_id
                ),
            )?;
        }
    }
    for storage in storages {
        resolve_verify_failed(tx, workspace, storage.as_deref())?;
    }
    Ok(())
}

/// Resolves a storage's `verify_failed` once none of its catalog entries is marked damaged
/// (healed and verified whole again, or deleted).
fn resolve_verify_failed(
    tx: &mut Tx,
    workspace: &str,
    storage: Option<&str>,
) -> Result<(), StoreError> {
    if !tx.any_damaged(workspace, storage)? {
        tx.resolve_alert(workspace, AlertKind::VerifyFailed, storage)?;
    }
    Ok(())
}

/// A forget's result: the confirmed entries leave the catalog, the others are unmarked so a
/// later run retries them; the storage counts the forgets towards its next gc.
pub fn record_forget(tx: &mut Tx, job: &Job, result: &JobResult) -> Result<(), StoreError> {
    let Work::Forget {
        snapshots,
        backup_ids,
    } = &job.work
    else {
        return Ok(());
    };
    let mut gone = 0u32;
    for (name, id) in snapshots.iter().zip(backup_ids) {
        if result.succeeded && result.forgotten.contains(name) {
            if tx.remove_backup(id)?.is_some() {
                gone += 1;
            }
        } else if tx.backup(id)?.is_some() {
            tx.update_backup(id, |b| b.forget_job = None)?;
        }
    }
    if gone > 0 {
        let storage = job.storage_id.as_deref();
        let mut state = upkeep_state(tx, &job.workspace_id, storage)?;
        state.forgets_since_gc = state.forgets_since_gc.saturating_add(gone);
        put_upkeep_state(tx, &job.workspace_id, storage, &state)?;
        resolve_verify_failed(tx, &job.workspace_id, storage)?;
    }
    Ok(())
}

/// A forget that will not report (lost without a retry, cancelled): its entries are unmarked.
pub fn release_forget(tx: &mut Tx, job: &Job) -> Result<(), StoreError> {
    if let Work::Forget { backup_ids, .. } = &job.work {
        for id in backup_ids {
            let mine = tx
                .backup(id)?
                .is_some_and(|b| b.forget_job.as_deref() == Some(&job.id));
            if mine {
                tx.update_backup(id, |b| b.forget_job = None)?;
            }
        }
    }
    Ok(())
}

/// A gc's result: usage falls by exactly what it freed; the storage records what its
/// repository holds now, and when.
pub fn record_gc(tx: &mut Tx, job: &Job, result: &JobResult) -> Result<(), StoreError> {
    if !result.succeeded {
        return Ok(());
    }
    tx.record_freed(&job.workspace_id, result.freed_bytes)?;
    let storage = job.storage_id.as_deref();
    let mut state = upkeep_state(tx, &job.workspace_id, storage)?;
    state.forgets_since_gc = 0;
    state.last_gc_at = Some(tx.now);
    put_upkeep_state(tx, &job.workspace_id, storage, &state)?;
    if let Some(bytes) = result.repository_bytes {
        record_measured(tx, &job.workspace_id, storage, bytes)?;
    }
    Ok(())
}

/// A verify's result: what it found (see [`record_checks`]); a verify of the whole storage
/// also measured the repository, which the storage's upkeep state records like a gc's.
pub fn record_verify(tx: &mut Tx, job: &Job, result: &JobResult) -> Result<(), StoreError> {
    let partial = matches!(&job.work, Work::Verify { subset_of: Some(n), .. } if *n > 1);
    record_checks(tx, &job.workspace_id, &result.verified, !partial)?;
    let whole_storage = matches!(&job.work, Work::Verify { snapshots, .. } if snapshots.is_empty());
    match result.repository_bytes {
        Some(bytes) if result.succeeded && whole_storage => {
            record_measured(tx, &job.workspace_id, job.storage_id.as_deref(), bytes)
        }
        _ => Ok(()),
    }
}

/// Records that the repository of `storage` holds `bytes` now (for the usage reconcile).
pub fn record_measured(
    tx: &mut Tx,
    workspace: &str,
    storage: Option<&str>,
    bytes: u64,
) -> Result<(), StoreError> {
    let mut state = upkeep_state(tx, workspace, storage)?;
    state.repository_bytes = Some(bytes);
    state.repository_bytes_at = Some(tx.now);
    put_upkeep_state(tx, workspace, storage, &state)
}

/// The scheduler's upkeep pass: once a day, retention of every database with a policy; per
/// storage (and per workspace's own agents' repository), gc and verify when due. Returns the
/// jobs made.
pub fn due(
    tx: &mut Tx,
    settings: UpkeepSettings,
    recent: Duration,
    max_attempts: u32,
) -> Result<Vec<Job>, StoreError> {
    let now = tx.now;
    let mut made = Vec::new();
    // Daily retention.
    let mut daily: UpkeepState = tx.schedule_record("upkeep:retention")?;
    if daily
        .last_retention_at
        .is_none_or(|t| now - t >= Duration::days(1))
    {
        let mut databases: Vec<String> = tx
            .all_policies()?
            .into_iter()
            .filter(|p| p.enabled)
            .map(|p| p.db_identifier)
            .collect();
        databases.sort();
        databases.dedup();
        for db in databases {
            made.extend(run_retention(tx, &db, max_attempts)?);
        }
        daily.last_retention_at = Some(now);
        tx.put_schedule_record("upkeep:retention", &daily)?;
    }
    // Per storage: every storage of each workspace that has a policy, or the agents' own
    // repository when the policy names none.
    let mut targets: Vec<(String, Option<String>)> = tx
        .all_policies()?
        .into_iter()
        .filter(|p| p.enabled)
        .map(|p| (p.workspace_id, p.storage_id))
        .collect();
    targets.sort();
    targets.dedup();
    for (ws, storage) in targets {
        let storage = storage.as_deref();
        let mut state = upkeep_state(tx, &ws, storage)?;
        if state.last_gc_at.is_none() && state.last_verify_at.is_none() {
            // First sight: count the intervals from now.
            state.last_gc_at = Some(now);
            state.last_verify_at = Some(now);
            put_upkeep_state(tx, &ws, storage, &state)?;
            continue;
        }
        let gc_due = state
            .last_gc_at
            .is_none_or(|t| now - t >= Duration::days(i64::from(settings.gc_interval_days)))
            || state.forgets_since_gc >= settings.gc_after_forgets;
        if gc_due {
            let why = if state.forgets_since_gc >= settings.gc_after_forgets {
                format!(
                    "gc: {} snapshots forgotten since the last",
                    state.forgets_since_gc
                )
            } else {
                format!("gc: every {} days", settings.gc_interval_days)
            };
            if let Some(job) = gc(tx, &ws, storage, recent, why, max_attempts)? {
                state.last_gc_at = Some(now);
                made.push(job);
            }
        }
        let verify_due = state
            .last_verify_at
            .is_none_or(|t| now - t >= Duration::hours(i64::from(settings.verify_interval_hours)));
        if verify_due {
            if let Some(agent) = live_agent(tx, &ws, recent)? {
                let part = state.verify_runs % settings.verify_parts.max(1);
                let job = new_upkeep_job(
                    &ws,
                    None,
                    storage.map(str::to_string),
                    &agent.id,
                    JobKind::Verify,
                    Work::Verify {
                        snapshots: Vec::new(),
                        subset_part: Some(part),
                        subset_of: Some(settings.verify_parts.max(1)),
                    },
                    format!(
                        "scheduled verify: part {} of {}",
                        part + 1,
                        settings.verify_parts.max(1)
                    ),
                    max_attempts,
                    now,
                );
                tx.create_job(&job)?;
                state.verify_runs = state.verify_runs.wrapping_add(1);
                state.last_verify_at = Some(now);
                made.push(job);
            }
        }
        put_upkeep_state(tx, &ws, storage, &state)?;
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use bulwark_core::api::JobResult;

    use super::*;
    use crate::domain::audit::Actor;
    use crate::domain::backup::BackupStatus;
    use crate::jobs::{Board, JobSettings};
    use crate::store::Store;

    fn actor() -> Actor {
        Actor {
            kind: "system".into(),
            id: "t".into(),
            name: "t".into(),
        }
    }

    fn setup(tx: &mut Tx) -> Result<(), StoreError> {
        let agent: Agent = serde_json::from_value(serde_json::json!({
            "id": "ag1", "workspace_id": "ws", "hostname": "h", "version": "t", "databases": [],
            "cert": {"serial": "1", "fingerprint": "ag1", "not_before": "2020-01-01T00:00:00Z",
                "expires_at": "2030-01-01T00:00:00Z"},
            "created_at": "2020-01-01T00:00:00Z", "last_heartbeat_at": tx.now,
        }))
        .unwrap();
        tx.put_agent_for_tests(&agent)?;
        tx.create_database(
            &serde_json::from_value(serde_json::json!({
                "id": "db", "workspace_id": "ws", "db_type": "sqlite", "agent_id": "ag1",
                "connection": {"path": "/x.db"}, "secrets": {}, "labels": {},
                "description": null, "created_at": "2020-01-01T00:00:00Z",
                "updated_at": "2020-01-01T00:00:00Z",
            }))
            .unwrap(),
        )?;
        tx.create_policy(
            &serde_json::from_value(serde_json::json!({
                "id": "p1", "workspace_id": "ws", "db_identifier": "db", "db_type": "sqlite",
                "schedule": {"frequency": "daily", "preferred_window": "00:00-06:00", "priority": "normal"},
                "retention": {"period_days": 1, "min_snapshots": 2},
                "timezone": "UTC", "backup_method": "physical", "pitr": false,
                "verify_after_backup": false, "require_restore_approval": false, "enabled": true,
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
            }))
            .unwrap(),
        )?;
        for days in 0..5 {
            let at = tx.now - Duration::days(days) - Duration::hours(1);
            tx.record_backup(&BackupRecord {
                id: format!("b{days}"),
                workspace_id: "ws".into(),
                database_id: "db".into(),
                db_type: DatabaseType::Sqlite,
                kind: SnapshotKind::Automatic,
                status: BackupStatus::Succeeded,
                started_at: at,
                finished_at: Some(at),
                snapshot: Some(format!("backup-{days}")),
                policy_id: Some("p1".into()),
                storage_id: None,
                method: None,
                logical_bytes: 100,
                stored_bytes: 100,
                error: None,
                job_id: None,
                notes: None,
                tags: Default::default(),
                verified_at: None,
                verification: None,
                forget_job: None,
            })?;
        }
        Ok(())
    }

    fn result(ok: bool) -> JobResult {
        let t = Utc::now();
        JobResult {
            succeeded: ok,
            error: (!ok).then(|| "no".to_string()),
            started_at: t,
            finished_at: t,
            ..Default::default()
        }
    }

    async fn claim(store: &Store) -> Job {
        let limits = JobSettings::default().limits;
        store
            .write(actor(), move |tx| tx.claim_job("ag1", limits))
            .await
            .unwrap()
            .expect("a job to claim")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partial_verify_never_clears_damage_and_the_alert_ends_with_the_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fn check(intact: bool) -> SnapshotCheck {
            SnapshotCheck {
                database_id: "db".into(),
                name: "backup-1".into(),
                intact,
                problems: if intact {
                    vec![]
                } else {
                    vec!["chunk ab… failed".into()]
                },
            }
        }
        let open_alerts = |store: &Store| {
            let rtx = store.read().unwrap();
            store::quota::list_alerts(
                &rtx,
                "ws",
                Some(crate::domain::quota::AlertState::Open),
                None,
                100,
            )
            .unwrap()
            .0
            .into_iter()
            .filter(|a| a.kind == AlertKind::VerifyFailed)
            .count()
        };
        let verification = |store: &Store| {
            store::backups::get(&store.read().unwrap(), "b1")
                .unwrap()
                .unwrap()
                .verification
        };
        store
            .write(actor(), |tx| {
                setup(tx)?;
                record_checks(tx, "ws", &[check(false)], false)
            })
            .await
            .unwrap();
        assert_eq!(verification(&store), Some(Verification::Damaged));
        assert_eq!(open_alerts(&store), 1);
        // Part 2 of 7 reads other chunks: the damage part 1 found stands, and so does the alert.
        store
            .write(actor(), |tx| record_checks(tx, "ws", &[check(true)], false))
            .await
            .unwrap();
        assert_eq!(verification(&store), Some(Verification::Damaged));
        assert_eq!(open_alerts(&store), 1);
        // A whole verify after the next backup healed the chunk: intact, alert resolved.
        store
            .write(actor(), |tx| record_checks(tx, "ws", &[check(true)], true))
            .await
            .unwrap();
        assert_eq!(verification(&store), Some(Verification::Intact));
        assert_eq!(open_alerts(&store), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_forgets_once_entries_go_on_confirmation_gc_frees_verify_marks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let board = Board::new(JobSettings::default());
        let job = store
            .write(actor(), |tx| {
                setup(tx)?;
                assert_eq!(tx.used_bytes("ws")?, 500);
                let job = run_retention(tx, "db", 3)?.expect("old entries go");
                // One forget job per database at a time.
                assert!(run_retention(tx, "db", 3)?.is_none());
                Ok(job)
            })
            .await
            .unwrap();
        // The 1-day period keeps b0; min_snapshots 2 keeps b1 (25 hours old) too.
        let Work::Forget {
            snapshots,
            backup_ids,
        } = &job.work
        else {
            panic!("{job:?}")
        };
        assert_eq!(backup_ids, &["b2", "b3", "b4"]);
        assert_eq!(job.job_kind, JobKind::Forget);
        let claimed = claim(&store).await;
        assert_eq!(claimed.id, job.id);
        assert!(store::backups::get(&store.read().unwrap(), &job.id)
            .unwrap()
            .is_none());
        // The agent confirms two of the three: those go, the third is unmarked for a retry.
        let mut r = result(true);
        r.forgotten = snapshots[..2].to_vec();
        crate::jobs::results::record(&store, &board, "ag1", actor(), job.id.clone(), r)
            .await
            .unwrap();
        let rtx = store.read().unwrap();
        assert!(store::backups::get(&rtx, "b2").unwrap().is_none());
        assert!(store::backups::get(&rtx, "b3").unwrap().is_none());
        let b4 = store::backups::get(&rtx, "b4").unwrap().unwrap();
        assert_eq!(b4.forget_job, None);
        assert_eq!(
            store::quota::used_bytes(&rtx, "ws").unwrap(),
            500,
            "forgetting frees nothing"
        );
        drop(rtx);

        // A verify of b1 finds it damaged: marked, alerted, and no longer a good copy.
        let v = store
            .write(actor(), |tx| verify_backup(tx, "b1", "alice", 3))
            .await
            .unwrap();
        assert_eq!(claim(&store).await.id, v.id);
        let mut r = result(true);
        r.verified = vec![SnapshotCheck {
            database_id: "db".into(),
            name: "backup-1".into(),
            intact: false,
            problems: vec!["chunk x: bad tag".into()],
        }];
        crate::jobs::results::record(&store, &board, "ag1", actor(), v.id.clone(), r)
            .await
            .unwrap();
        let rtx = store.read().unwrap();
        let b1 = store::backups::get(&rtx, "b1").unwrap().unwrap();
        assert_eq!(b1.verification, Some(Verification::Damaged));
        assert!(b1.verified_at.is_some());
        let (alerts, _) = store::quota::list_alerts(&rtx, "ws", None, None, 10).unwrap();
        assert!(
            alerts.iter().any(|a| a.kind == AlertKind::VerifyFailed),
            "{alerts:?}"
        );
        drop(rtx);
        let plan = retention_plan(&store.read().unwrap(), "db", store.now()).unwrap();
        assert!(
            plan.entries.iter().any(|e| e.backup_id == "b4" && e.keep),
            "b1 is damaged: b4 is kept to make two good copies: {plan:?}"
        );

        // gc: one per storage at a time; usage falls by exactly what it freed.
        let recent = Duration::minutes(5);
        let g = store
            .write(actor(), move |tx| {
                let g = gc(tx, "ws", None, recent, "test".into(), 3)?.expect("a live agent");
                assert!(gc(tx, "ws", None, recent, "test".into(), 3)?.is_none());
                Ok(g)
            })
            .await
            .unwrap();
        assert_eq!(g.database_id, "");
        assert_eq!(claim(&store).await.id, g.id);
        let mut r = result(true);
        r.freed_bytes = 123;
        r.repository_bytes = Some(377);
        crate::jobs::results::record(&store, &board, "ag1", actor(), g.id.clone(), r)
            .await
            .unwrap();
        assert_eq!(
            store::quota::used_bytes(&store.read().unwrap(), "ws").unwrap(),
            377
        );
        let g = store::jobs::get(&store.read().unwrap(), &g.id)
            .unwrap()
            .unwrap();
        assert_eq!(
            g.work,
            Work::Gc {
                freed_bytes: 123,
                repository_bytes: Some(377)
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_forget_unmarks_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let board = Board::new(JobSettings::default());
        let job = store
            .write(actor(), |tx| {
                setup(tx)?;
                Ok(run_retention(tx, "db", 3)?.unwrap())
            })
            .await
            .unwrap();
        claim(&store).await;
        crate::jobs::results::record(
            &store,
            &board,
            "ag1",
            actor(),
            job.id.clone(),
            result(false),
        )
        .await
        .unwrap();
        let again = store
            .write(actor(), |tx| {
                for id in ["b2", "b3", "b4"] {
                    assert_eq!(tx.backup(id)?.unwrap().forget_job, None);
                }
                run_retention(tx, "db", 3)
            })
            .await
            .unwrap();
        assert!(again.is_some(), "a later run retries");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_scheduler_runs_retention_daily_and_gc_and_verify_per_storage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let settings = UpkeepSettings::default();
        let recent = Duration::days(30);
        let kinds = |jobs: &[Job]| jobs.iter().map(|j| j.job_kind).collect::<Vec<_>>();
        let made = store
            .write(actor(), move |tx| {
                setup(tx)?;
                due(tx, settings, recent, 3)
            })
            .await
            .unwrap();
        // The first pass: the daily retention; the storage is seen, its intervals start now.
        assert_eq!(kinds(&made), [JobKind::Forget]);
        let again = store
            .write(actor(), move |tx| due(tx, settings, recent, 3))
            .await
            .unwrap();
        assert!(again.is_empty(), "{again:?}");
        store.advance_clock_for_tests(Duration::hours(25));
        let made = store
            .write(actor(), move |tx| due(tx, settings, recent, 3))
            .await
            .unwrap();
        // A day later: a verify of part 1 of 7 of the whole storage; the forget still pends.
        assert_eq!(kinds(&made), [JobKind::Verify]);
        assert_eq!(made[0].database_id, "");
        assert_eq!(
            made[0].work,
            Work::Verify {
                snapshots: vec![],
                subset_part: Some(0),
                subset_of: Some(7)
            }
        );
        // Its result measures the repository; a verify of named snapshots does not.
        let whole = made[0].clone();
        let named = Job {
            work: Work::Verify {
                snapshots: vec![NamedSnapshot {
                    database_id: "db".into(),
                    name: "backup-0".into(),
                }],
                subset_part: None,
                subset_of: None,
            },
            ..whole.clone()
        };
        let (before, after) = store
            .write(actor(), move |tx| {
                let mut r = result(true);
                r.repository_bytes = Some(1234);
                record_verify(tx, &named, &r)?;
                let before = upkeep_state(tx, "ws", None)?;
                record_verify(tx, &whole, &r)?;
                Ok((before, upkeep_state(tx, "ws", None)?))
            })
            .await
            .unwrap();
        assert_eq!(before.repository_bytes, None);
        assert_eq!(after.repository_bytes, Some(1234));
        store.advance_clock_for_tests(Duration::days(7));
        let made = store
            .write(actor(), move |tx| due(tx, settings, recent, 3))
            .await
            .unwrap();
        assert_eq!(kinds(&made), [JobKind::Gc, JobKind::Verify], "{made:?}");
        assert!(matches!(
            made[1].work,
            Work::Verify {
                subset_part: Some(1),
                ..
            }
        ));
    }

    #[test]
    fn each_kind_is_handed_out_as_its_task() {
        let db: Database = serde_json::from_value(serde_json::json!({
            "id": "db", "workspace_id": "ws", "db_type": "sqlite", "agent_id": "ag1",
            "connection": {"path": "/x.db"}, "secrets": {}, "labels": {},
            "description": null, "created_at": "2020-01-01T00:00:00Z",
            "updated_at": "2020-01-01T00:00:00Z",
        }))
        .unwrap();
        let now = Utc::now();
        let forget = new_upkeep_job(
            "ws",
            Some(&db),
            None,
            "ag1",
            JobKind::Forget,
            Work::Forget {
                snapshots: vec!["s1".into()],
                backup_ids: vec!["b1".into()],
            },
            "t".into(),
            3,
            now,
        );
        assert_eq!(
            task_of(&forget, Default::default(), false, false),
            JobTask::Forget(ForgetTask {
                database_id: "db".into(),
                snapshots: vec!["s1".into()],
            })
        );
        let verify = Job {
            job_kind: JobKind::Verify,
            work: Work::Verify {
                snapshots: vec![],
                subset_part: Some(2),
                subset_of: Some(7),
            },
            ..forget.clone()
        };
        let JobTask::Verify(v) = task_of(&verify, Default::default(), false, false) else {
            panic!()
        };
        assert_eq!(
            (v.snapshots.len(), v.subset.map(|s| (s.part, s.of))),
            (0, Some((2, 7)))
        );
        let gc = Job {
            job_kind: JobKind::Gc,
            work: Work::None,
            ..forget.clone()
        };
        assert_eq!(
            task_of(&gc, Default::default(), false, false),
            JobTask::Gc(GcTask { expire_wal: true })
        );
        let backup = Job {
            job_kind: JobKind::Backup,
            work: Work::None,
            ..forget
        };
        let JobTask::Backup(b) = task_of(&backup, Default::default(), true, false) else {
            panic!()
        };
        assert!(b.verify_after);
    }
}
