//! Jobs, their queue, the workspace keys agents receive with them, and the scheduler's memory.
//!
//! Tables:
//! - `jobs` (id → Job), `jobs_by_workspace` `(workspace, id)` for listings (ids sort by time);
//! - `job_queue` `(agent, priority rank, not_before_ms, id)`: an agent's poll is one range scan
//!   over its own prefix, highest priority first, then oldest;
//! - `jobs_running` `(agent, id)` and `jobs_running_by_storage` `(storage, id)`: the concurrency
//!   limits are counts over a prefix, and the lost-job sweep walks only running jobs;
//! - `workspace_keys` (workspace → key sealed with `secrets.key`);
//! - `schedule_state` (policy → [`ScheduleState`]): when the policy is next due, its last job and
//!   the learned duration, so a restart neither forgets nor repeats runs.
//!
//! Claiming a job, recording its result and sweeping lost ones are each one write transaction,
//! which also writes the job's catalog entry: the catalog can never disagree with the jobs.

use std::ops::Bound;

use bulwark_core::api::JobResult;
use chrono::{DateTime, Duration, Utc};
use redb::{ReadTransaction, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{get_json, put_json, Index2, Records, Result, StoreError, Tx};
use crate::domain::backup::{BackupRecord, BackupStatus};
use crate::domain::job::{priority_rank, Job, JobStatus, Progress};

pub const JOBS: Records = Records::new("jobs");
pub const BY_WORKSPACE: Index2 = Index2::new("jobs_by_workspace");
pub const QUEUE: TableDefinition<'static, (&'static str, u8, i64, &'static str), ()> =
    TableDefinition::new("job_queue");
pub const RUNNING: Index2 = Index2::new("jobs_running");
pub const RUNNING_BY_STORAGE: Index2 = Index2::new("jobs_running_by_storage");
pub const WORKSPACE_KEYS: TableDefinition<'static, &'static str, &'static str> =
    TableDefinition::new("workspace_keys");
pub const SCHEDULE: Records = Records::new("schedule_state");

/// Concurrency limits applied when a job is handed out.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_agent: usize,
    pub per_storage: usize,
}

/// What the scheduler remembers of a policy between ticks and restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// The start of the next slot; `None` until the scheduler first sees the policy.
    #[serde(default)]
    pub next_due: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_job: Option<String>,
    /// Learned duration of successful runs, seconds.
    #[serde(default)]
    pub expected_secs: Option<i64>,
    /// Stored bytes of the last successful run (the admission estimate for the next).
    #[serde(default)]
    pub last_stored_bytes: u64,
    /// The schedule `next_due` was planned from (frequency, window, time zone).
    #[serde(default)]
    pub plan_key: Option<String>,
}

pub fn get(rtx: &ReadTransaction, id: &str) -> Result<Option<Job>> {
    get_json(&rtx.open_table(JOBS)?, "job", id)
}

/// The workspace's sealed key, if it was made.
pub fn workspace_key_sealed(rtx: &ReadTransaction, workspace: &str) -> Result<Option<String>> {
    Ok(rtx
        .open_table(WORKSPACE_KEYS)?
        .get(workspace)?
        .map(|v| v.value().to_string()))
}

pub fn schedule_state(rtx: &ReadTransaction, policy: &str) -> Result<ScheduleState> {
    Ok(get_json(&rtx.open_table(SCHEDULE)?, "schedule state", policy)?.unwrap_or_default())
}

/// A record the scheduler keeps with the policies' states ([`Tx::schedule_record`]).
pub fn schedule_record<T: serde::de::DeserializeOwned + Default>(
    rtx: &ReadTransaction,
    key: &str,
) -> Result<T> {
    debug_assert!(key.contains(':'));
    Ok(get_json(&rtx.open_table(SCHEDULE)?, "schedule record", key)?.unwrap_or_default())
}

/// Jobs of one workspace (or all), newest first, before `before`.
pub fn list(
    rtx: &ReadTransaction,
    workspace: Option<&str>,
    keep: impl Fn(&Job) -> bool,
    before: Option<&str>,
    limit: usize,
) -> Result<(Vec<Job>, bool)> {
    let jobs = rtx.open_table(JOBS)?;
    let mut out = Vec::new();
    let mut more = false;
    let mut take = |job: Job| {
        if !keep(&job) {
            return true;
        }
        if out.len() == limit {
            more = true;
            return false;
        }
        out.push(job);
        true
    };
    match workspace {
        Some(ws) => {
            let upper = match before {
                Some(b) => Bound::Excluded((ws, b)),
                None => Bound::Included((ws, "\u{10ffff}")),
            };
            let index = rtx.open_table(BY_WORKSPACE)?;
            for item in index
                .range::<(&str, &str)>((Bound::Included((ws, "")), upper))?
                .rev()
            {
                let (key, _) = item?;
                if let Some(job) = get_json(&jobs, "job", key.value().1)? {
                    if !take(job) {
                        break;
                    }
                }
            }
        }
        None => {
            let upper = before.map_or(Bound::Unbounded, Bound::Excluded);
            for item in jobs.range::<&str>((Bound::Unbounded, upper))?.rev() {
                let (k, v) = item?;
                if !take(super::decode("job", k.value(), v.value())?) {
                    break;
                }
            }
        }
    }
    Ok((out, more))
}

/// The earliest `not_before` (ms) among the agent's queued jobs.
pub fn next_due_time(rtx: &ReadTransaction, agent: &str) -> Result<Option<i64>> {
    let queue = rtx.open_table(QUEUE)?;
    let mut earliest: Option<i64> = None;
    for item in queue.range::<(&str, u8, i64, &str)>(agent_range(agent))? {
        let (key, _) = item?;
        let ms = key.value().2;
        earliest = Some(earliest.map_or(ms, |e: i64| e.min(ms)));
    }
    Ok(earliest)
}

/// A key of `job_queue`: (agent, priority rank, not_before_ms, job id).
type QueueKey<'a> = (&'a str, u8, i64, &'a str);

fn agent_range(agent: &str) -> (Bound<QueueKey<'_>>, Bound<QueueKey<'_>>) {
    (
        Bound::Included((agent, 0, i64::MIN, "")),
        Bound::Included((agent, u8::MAX, i64::MAX, "\u{10ffff}")),
    )
}

fn count_prefix(
    table: &impl ReadableTable<(&'static str, &'static str), ()>,
    prefix: &str,
) -> Result<usize> {
    let mut n = 0;
    super::scan_index(table, prefix, None, |_| {
        n += 1;
        Ok(true)
    })?;
    Ok(n)
}

/// Every running job (the lost-job sweep).
pub fn running_in(tx: &Tx) -> Result<Vec<Job>> {
    let index = tx.txn.open_table(RUNNING)?;
    let jobs = tx.txn.open_table(JOBS)?;
    let mut out = Vec::new();
    for item in index.iter()? {
        let (key, _) = item?;
        if let Some(job) = get_json(&jobs, "job", key.value().1)? {
            out.push(job);
        }
    }
    Ok(out)
}

/// Every queued job that `keep` accepts (a scan of the queue, not of all jobs).
pub fn queued(rtx: &ReadTransaction, keep: impl Fn(&Job) -> bool) -> Result<Vec<Job>> {
    queued_from(&rtx.open_table(QUEUE)?, &rtx.open_table(JOBS)?, keep)
}

/// [`queued`] inside a write transaction: every queued job.
pub fn queued_in(tx: &Tx) -> Result<Vec<Job>> {
    queued_from(
        &tx.txn.open_table(QUEUE)?,
        &tx.txn.open_table(JOBS)?,
        |_| true,
    )
}

fn queued_from(
    queue: &impl ReadableTable<QueueKey<'static>, ()>,
    jobs: &impl ReadableTable<&'static str, &'static [u8]>,
    keep: impl Fn(&Job) -> bool,
) -> Result<Vec<Job>> {
    let mut out = Vec::new();
    for item in queue.iter()? {
        let (key, _) = item?;
        if let Some(job) = get_json::<Job>(jobs, "job", key.value().3)? {
            if keep(&job) {
                out.push(job);
            }
        }
    }
    Ok(out)
}

impl Tx {
    pub fn job(&self, id: &str) -> Result<Option<Job>> {
        get_json(&self.txn.open_table(JOBS)?, "job", id)
    }

    fn put_job(&mut self, job: &Job) -> Result<()> {
        put_json(&mut self.txn.open_table(JOBS)?, &job.id, job)
    }

    pub fn schedule_state(&self, policy: &str) -> Result<ScheduleState> {
        Ok(
            get_json(&self.txn.open_table(SCHEDULE)?, "schedule state", policy)?
                .unwrap_or_default(),
        )
    }

    pub fn put_schedule_state(&mut self, policy: &str, state: &ScheduleState) -> Result<()> {
        put_json(&mut self.txn.open_table(SCHEDULE)?, policy, state)
    }

    /// Another record the scheduler keeps with the policies' states (a storage's upkeep, the
    /// daily retention pass), under a key no policy id can take (it holds a `:`).
    pub fn schedule_record<T: serde::de::DeserializeOwned + Default>(
        &self,
        key: &str,
    ) -> Result<T> {
        debug_assert!(key.contains(':'));
        Ok(get_json(&self.txn.open_table(SCHEDULE)?, "schedule record", key)?.unwrap_or_default())
    }

    pub fn put_schedule_record<T: serde::Serialize>(&mut self, key: &str, value: &T) -> Result<()> {
        debug_assert!(key.contains(':'));
        put_json(&mut self.txn.open_table(SCHEDULE)?, key, value)
    }

    /// The workspace's key-encryption key, sealed; made (by `make`) on first use.
    pub fn workspace_key_sealed(
        &mut self,
        workspace: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String> {
        let mut table = self.txn.open_table(WORKSPACE_KEYS)?;
        if let Some(v) = table.get(workspace)? {
            return Ok(v.value().to_string());
        }
        let sealed = make();
        table.insert(workspace, sealed.as_str())?;
        drop(table);
        self.audit(
            "workspace.key.create",
            "workspace",
            workspace,
            Some(workspace),
            None,
            None::<&()>,
            Some(&serde_json::json!({"key": "created (sealed; never shown)"})),
        )?;
        Ok(sealed)
    }

    /// Queues `job` (status `queued`) or records it as already failed (status `failed`, e.g. a
    /// scheduled run refused by the quota).
    pub fn create_job(&mut self, job: &Job) -> Result<()> {
        if self.job(&job.id)?.is_some() {
            return Err(StoreError::Conflict(format!("job '{}' exists", job.id)));
        }
        self.check_job_refs(job)?;
        self.put_job(job)?;
        self.txn
            .open_table(BY_WORKSPACE)?
            .insert((job.workspace_id.as_str(), job.id.as_str()), ())?;
        if job.status == JobStatus::Queued {
            self.txn.open_table(QUEUE)?.insert(queue_key(job), ())?;
        }
        self.audit(
            "job.create",
            "job",
            &job.id,
            Some(&job.workspace_id),
            Some(&job.database_id),
            None::<&()>,
            Some(job),
        )?;
        if job.status == JobStatus::Failed && job.has_catalog_entry() {
            self.record_backup(&catalog_entry(job, self.now))?;
        }
        Ok(())
    }

    /// Hands the agent its most urgent due job that fits the limits: marks it running and opens
    /// its catalog entry. `None` when nothing is due or the agent is at its limit.
    pub fn claim_job(&mut self, agent: &str, limits: Limits) -> Result<Option<Job>> {
        if count_prefix(&self.txn.open_table(RUNNING)?, agent)? >= limits.per_agent {
            return Ok(None);
        }
        let now_ms = self.now.timestamp_millis();
        let candidates: Vec<String> = {
            let queue = self.txn.open_table(QUEUE)?;
            let mut ids = Vec::new();
            for item in queue.range::<(&str, u8, i64, &str)>(agent_range(agent))? {
                let (key, _) = item?;
                let (_, _, ms, id) = key.value();
                if ms <= now_ms {
                    ids.push(id.to_string());
                }
            }
            ids
        };
        for id in candidates {
            let Some(mut job) = self.job(&id)? else {
                continue;
            };
            // Queued before references were checked, for an agent of another workspace: it
            // must never run there (it would carry that workspace's key), nor block the queue.
            if self.agent_in(&job.workspace_id, agent).is_err() {
                self.fail_queued_job(
                    &id,
                    &format!(
                        "agent '{agent}' is not an agent of workspace '{}'",
                        job.workspace_id
                    ),
                )?;
                continue;
            }
            if let Some(storage) = &job.storage_id {
                let busy = count_prefix(&self.txn.open_table(RUNNING_BY_STORAGE)?, storage)?;
                if busy >= limits.per_storage {
                    continue;
                }
            }
            self.txn.open_table(QUEUE)?.remove(queue_key(&job))?;
            job.status = JobStatus::Running;
            job.started_at = Some(self.now);
            self.put_job(&job)?;
            self.txn
                .open_table(RUNNING)?
                .insert((agent, job.id.as_str()), ())?;
            if let Some(storage) = &job.storage_id {
                self.txn
                    .open_table(RUNNING_BY_STORAGE)?
                    .insert((storage.as_str(), job.id.as_str()), ())?;
            }
            if job.has_catalog_entry() {
                self.record_backup(&catalog_entry(&job, self.now))?;
            }
            return Ok(Some(job));
        }
        Ok(None)
    }

    /// Records progress of a running job of `agent`. Returns the job (its status tells the agent
    /// whether to go on).
    pub fn job_progress(&mut self, agent: &str, id: &str, progress: Progress) -> Result<Job> {
        let mut job = self.agent_job(agent, id)?;
        if job.status == JobStatus::Running {
            job.progress = Some(progress);
            self.put_job(&job)?;
        }
        Ok(job)
    }

    fn agent_job(&self, agent: &str, id: &str) -> Result<Job> {
        match self.job(id)? {
            Some(job) if job.agent_id == agent => Ok(job),
            _ => Err(StoreError::NotFound {
                kind: "job",
                id: id.to_string(),
            }),
        }
    }

    /// Records the agent's result. A result the job already holds changes nothing (`true` =
    /// duplicate). A success reported for a job given up as lost is still recorded — the backup
    /// exists — and its queued retry is withdrawn.
    pub fn finish_job(&mut self, agent: &str, id: &str, result: &JobResult) -> Result<(Job, bool)> {
        let mut job = self.agent_job(agent, id)?;
        let same = job.snapshot == result.snapshot
            && (job.status == JobStatus::Succeeded) == result.succeeded;
        match job.status {
            JobStatus::Succeeded | JobStatus::Failed if same => return Ok((job, true)),
            JobStatus::Succeeded => {
                return Err(StoreError::Conflict(format!(
                    "job '{id}' already succeeded with snapshot {}; a different result cannot replace it",
                    job.snapshot.as_deref().unwrap_or("-")
                )))
            }
            JobStatus::Failed if !result.succeeded => return Ok((job, true)),
            JobStatus::Queued => {
                return Err(StoreError::Refused(format!(
                    "job '{id}' was never handed out; it cannot have a result"
                )))
            }
            JobStatus::Failed => self.withdraw_retries(&job)?,
            JobStatus::Running => {}
        }
        self.leave_running(&job)?;
        let before = job.clone();
        job.status = if result.succeeded {
            JobStatus::Succeeded
        } else {
            JobStatus::Failed
        };
        job.started_at = Some(result.started_at);
        job.finished_at = Some(result.finished_at);
        job.snapshot = result.snapshot.clone();
        job.logical_bytes = result.logical_bytes;
        job.stored_bytes = result.stored_bytes;
        if result.method.is_some() {
            // What was done, where the job left it to the agent's configuration.
            job.method = result.method;
        }
        job.error = result.error.clone();
        job.warnings = result.warnings.clone();
        if let crate::domain::job::Work::Gc {
            freed_bytes,
            repository_bytes,
        } = &mut job.work
        {
            *freed_bytes = result.freed_bytes;
            *repository_bytes = result.repository_bytes;
        }
        self.save_job("job.finish", &before, &job)?;
        if !job.has_catalog_entry() {
            // What the other kinds found is recorded by their recorders (`jobs::results`).
            return Ok((job, false));
        }
        let mut entry = catalog_entry(&job, self.now);
        entry.started_at = self
            .backup(&job.id)?
            .map_or(entry.started_at, |b| b.started_at);
        self.record_backup(&entry)?;
        if let (Some(policy), true) = (&job.policy_id, result.succeeded) {
            let mut state = self.schedule_state(policy)?;
            let secs = job.duration_secs().unwrap_or(0);
            state.expected_secs = Some(crate::domain::plan::learn(state.expected_secs, secs));
            state.last_stored_bytes = job.stored_bytes;
            self.put_schedule_state(policy, &state)?;
        }
        Ok((job, false))
    }

    /// Stores a changed job with its audit entry (`before` → `job`).
    fn save_job(&mut self, action: &str, before: &Job, job: &Job) -> Result<()> {
        self.put_job(job)?;
        self.audit(
            action,
            "job",
            &job.id,
            Some(&job.workspace_id),
            Some(&job.database_id),
            Some(before),
            Some(job),
        )?;
        Ok(())
    }

    /// Takes `job` out of the running indexes (its agent's and its storage's slots free up).
    fn leave_running(&mut self, job: &Job) -> Result<()> {
        self.txn
            .open_table(RUNNING)?
            .remove((job.agent_id.as_str(), job.id.as_str()))?;
        if let Some(storage) = &job.storage_id {
            self.txn
                .open_table(RUNNING_BY_STORAGE)?
                .remove((storage.as_str(), job.id.as_str()))?;
        }
        Ok(())
    }

    /// Fails queued retries of `job` (its own result arrived after all).
    fn withdraw_retries(&mut self, job: &Job) -> Result<()> {
        let retries: Vec<Job> = {
            let queue = self.txn.open_table(QUEUE)?;
            let jobs = self.txn.open_table(JOBS)?;
            let mut out = Vec::new();
            for item in queue.range::<(&str, u8, i64, &str)>(agent_range(&job.agent_id))? {
                let (key, _) = item?;
                if let Some(j) = get_json::<Job>(&jobs, "job", key.value().3)? {
                    if j.retry_of.as_deref() == Some(job.id.as_str()) {
                        out.push(j);
                    }
                }
            }
            out
        };
        for mut retry in retries {
            self.txn.open_table(QUEUE)?.remove(queue_key(&retry))?;
            retry.status = JobStatus::Failed;
            retry.finished_at = Some(self.now);
            retry.error = Some(format!(
                "not needed: the result of {} arrived after it had been given up",
                job.id
            ));
            self.put_job(&retry)?;
        }
        Ok(())
    }

    /// Fails a queued job that can never run (its agent is gone), with its catalog entry.
    pub fn fail_queued_job(&mut self, id: &str, why: &str) -> Result<()> {
        let Some(mut job) = self.job(id)? else {
            return Ok(());
        };
        if job.status != JobStatus::Queued {
            return Ok(());
        }
        let before = job.clone();
        self.txn.open_table(QUEUE)?.remove(queue_key(&job))?;
        job.status = JobStatus::Failed;
        job.finished_at = Some(self.now);
        job.error = Some(why.to_string());
        self.save_job("job.cancel", &before, &job)?;
        if !job.has_catalog_entry() {
            return Ok(());
        }
        self.record_backup(&catalog_entry(&job, self.now))
    }

    /// Fails a running job that its agent stopped reporting on, and queues a retry while
    /// attempts remain and `retry` (its id and delay) is given. Returns the retry.
    pub fn fail_lost_job(
        &mut self,
        id: &str,
        why: &str,
        retry: Option<(String, Duration)>,
    ) -> Result<Option<Job>> {
        let Some(mut job) = self.job(id)? else {
            return Ok(None);
        };
        if job.status != JobStatus::Running {
            return Ok(None);
        }
        let before = job.clone();
        self.leave_running(&job)?;
        job.status = JobStatus::Failed;
        job.finished_at = Some(self.now);
        job.error = Some(why.to_string());
        self.save_job("job.lost", &before, &job)?;
        if job.has_catalog_entry() {
            self.record_backup(&catalog_entry(&job, self.now))?;
        }
        let Some((retry_id, retry_delay)) = retry else {
            return Ok(None);
        };
        if job.attempt >= job.max_attempts {
            return Ok(None);
        }
        let retry = Job {
            id: retry_id,
            status: JobStatus::Queued,
            not_before: self.now + retry_delay,
            reason: format!(
                "retry {}/{} of {}: {why}",
                job.attempt + 1,
                job.max_attempts,
                job.id
            ),
            attempt: job.attempt + 1,
            retry_of: Some(job.id.clone()),
            created_at: self.now,
            started_at: None,
            finished_at: None,
            progress: None,
            snapshot: None,
            logical_bytes: 0,
            stored_bytes: 0,
            error: None,
            warnings: Vec::new(),
            ..job.clone()
        };
        // Its database (or agent) is gone since: nothing to retry. Not an error, which would
        // abort the whole sweep, for every tenant, at every tick.
        match self.check_job_refs(&retry) {
            Err(StoreError::NotFound { kind, id }) => {
                tracing::warn!(job = %job.id, "{kind} '{id}' is gone; the lost job is not retried");
                return Ok(None);
            }
            r => r?,
        }
        self.create_job(&retry)?;
        if let Some(policy) = &retry.policy_id {
            let mut state = self.schedule_state(policy)?;
            state.last_job = Some(retry.id.clone());
            self.put_schedule_state(policy, &state)?;
        }
        Ok(Some(retry))
    }
}

fn queue_key(job: &Job) -> (&str, u8, i64, &str) {
    (
        job.agent_id.as_str(),
        priority_rank(job.priority),
        job.not_before.timestamp_millis(),
        job.id.as_str(),
    )
}

/// The catalog entry a job stands for (same id).
fn catalog_entry(job: &Job, now: DateTime<Utc>) -> BackupRecord {
    BackupRecord {
        id: job.id.clone(),
        workspace_id: job.workspace_id.clone(),
        database_id: job.database_id.clone(),
        db_type: job.db_type,
        kind: job.kind,
        status: match job.status {
            JobStatus::Succeeded => BackupStatus::Succeeded,
            JobStatus::Failed => BackupStatus::Failed,
            JobStatus::Queued | JobStatus::Running => BackupStatus::Running,
        },
        started_at: job.started_at.unwrap_or(now),
        finished_at: job.finished_at,
        snapshot: job.snapshot.clone(),
        policy_id: job.policy_id.clone(),
        storage_id: job.storage_id.clone(),
        method: job.method,
        logical_bytes: job.logical_bytes,
        stored_bytes: job.stored_bytes,
        error: job.error.clone(),
        job_id: Some(job.id.clone()),
        notes: job.notes.clone(),
        tags: job.tags.clone(),
        verified_at: None,
        verification: None,
        forget_job: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;
    use crate::domain::audit::Actor;

    fn job(id: &str, agent: &str, storage: &str) -> Job {
        serde_json::from_value(serde_json::json!({
            "id": id, "workspace_id": "ws", "database_id": format!("db-{agent}"), "db_type": "sqlite",
            "agent_id": agent, "storage_id": storage, "kind": "manual", "priority": "normal",
            "status": "queued", "not_before": "2020-01-01T00:00:00Z", "reason": "test",
            "attempt": 1, "max_attempts": 3, "created_at": "2020-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    fn actor() -> Actor {
        Actor {
            kind: "system".into(),
            id: "t".into(),
            name: "t".into(),
        }
    }

    /// Agent `id` of workspace `ws` and its database `db-<id>`: what a job must name.
    fn agent_with_database(tx: &mut Tx, ws: &str, id: &str) -> Result<()> {
        let agent: crate::domain::agent::Agent = serde_json::from_value(serde_json::json!({
            "id": id, "workspace_id": ws, "hostname": "h", "version": "t", "databases": [],
            "cert": {"serial": "1", "fingerprint": id, "not_before": "2020-01-01T00:00:00Z",
                "expires_at": "2030-01-01T00:00:00Z"},
            "created_at": "2020-01-01T00:00:00Z",
        }))
        .unwrap();
        put_json(
            &mut tx.txn.open_table(super::super::agents::AGENTS)?,
            id,
            &agent,
        )?;
        tx.create_database(
            &serde_json::from_value(serde_json::json!({
                "id": format!("db-{id}"), "workspace_id": ws, "db_type": "sqlite", "agent_id": id,
                "connection": {"path": "/x.db"}, "secrets": {}, "labels": {},
                "description": null, "created_at": "2020-01-01T00:00:00Z",
                "updated_at": "2020-01-01T00:00:00Z",
            }))
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn jobs_name_an_agent_and_database_of_their_own_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write(actor(), |tx| {
                agent_with_database(tx, "ws", "ag1")?;
                agent_with_database(tx, "other", "ag9")
            })
            .await
            .unwrap();
        // A job of workspace `ws` for another workspace's agent, or database, is refused.
        let mut stranger = job("job_x", "ag9", "nfs1");
        stranger.database_id = "db-ag1".into();
        let e = store
            .write(actor(), move |tx| tx.create_job(&stranger))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::NotFound { kind: "agent", id } if id == "ag9"),
            "{e}"
        );
        let e = store
            .write(actor(), |tx| {
                tx.create_job(&job("job_y", "ag1", "nfs1")).and_then(|_| {
                    let mut j = job("job_z", "ag1", "nfs1");
                    j.database_id = "db-ag9".into();
                    tx.create_job(&j)
                })
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                StoreError::NotFound {
                    kind: "database",
                    ..
                }
            ),
            "{e}"
        );
        // Nothing of the refused transaction was kept.
        assert!(get(&store.read().unwrap(), "job_y").unwrap().is_none());
    }

    /// Regression: a lost job whose database was deleted meanwhile made its retry fail the
    /// reference check, which aborted the whole lost-job sweep of every tenant at every tick.
    #[tokio::test]
    async fn a_lost_job_of_a_deleted_database_is_failed_without_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let limits = Limits {
            per_agent: 1,
            per_storage: 1,
        };
        store
            .write(actor(), |tx| {
                agent_with_database(tx, "ws", "ag1")?;
                tx.create_job(&job("job_a", "ag1", "nfs1"))
            })
            .await
            .unwrap();
        store
            .write(actor(), move |tx| {
                tx.claim_job("ag1", limits)?;
                tx.delete_database("db-ag1").map(|_| ())
            })
            .await
            .unwrap();
        let retry = store
            .write(actor(), |tx| {
                tx.fail_lost_job(
                    "job_a",
                    "lost",
                    Some(("job_r".into(), Duration::seconds(30))),
                )
            })
            .await
            .unwrap();
        assert!(retry.is_none());
        let rtx = store.read().unwrap();
        assert_eq!(
            get(&rtx, "job_a").unwrap().unwrap().status,
            JobStatus::Failed
        );
        assert!(get(&rtx, "job_r").unwrap().is_none());
    }

    #[tokio::test]
    async fn a_busy_storage_holds_other_agents_jobs_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let limits = Limits {
            per_agent: 2,
            per_storage: 1,
        };
        store
            .write(actor(), |tx| {
                agent_with_database(tx, "ws", "ag1")?;
                agent_with_database(tx, "ws", "ag2")?;
                tx.create_job(&job("job_a", "ag1", "nfs1"))?;
                tx.create_job(&job("job_b", "ag2", "nfs1"))?;
                tx.create_job(&job("job_c", "ag2", "nfs2"))
            })
            .await
            .unwrap();
        let claim = |agent: &'static str| {
            let store = store.clone();
            async move {
                store
                    .write(actor(), move |tx| tx.claim_job(agent, limits))
                    .await
                    .unwrap()
                    .map(|j| j.id)
            }
        };
        assert_eq!(claim("ag1").await.as_deref(), Some("job_a"));
        // nfs1 is busy: ag2 gets its job on nfs2 instead, then nothing.
        assert_eq!(claim("ag2").await.as_deref(), Some("job_c"));
        assert_eq!(claim("ag2").await, None);
        let t = Utc::now();
        let result = JobResult {
            succeeded: true,
            snapshot: Some("backup-x".into()),
            logical_bytes: 1,
            stored_bytes: 1,
            started_at: t,
            finished_at: t,
            ..Default::default()
        };
        store
            .write(actor(), move |tx| tx.finish_job("ag1", "job_a", &result))
            .await
            .unwrap();
        assert_eq!(claim("ag2").await.as_deref(), Some("job_b"));
    }
}
