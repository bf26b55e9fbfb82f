//! What agents report on a job they took: progress while it runs, then one result.
//!
//! A result means something different for each kind of job (a backup adds a catalog entry and
//! teaches the scheduler how long the policy's runs take; the kinds to come — forget, gc,
//! verify, restore — record other things), so [`record`] dispatches on the job's kind to
//! one function per kind. Whatever the kind, a result sent again changes nothing and answers
//! "duplicate", since an agent resends until it is acknowledged.

use bulwark_core::api::{JobKind, JobProgress, JobResult};

use super::{upkeep, Board, Error};
use crate::domain::audit::Actor;
use crate::domain::backup::SnapshotKind;
use crate::domain::job::{check_progress, check_result, Job, Progress};
use crate::store::{self, Store, StoreError, Tx};

/// The kind of work `job` is.
pub fn kind(job: &Job) -> JobKind {
    job.job_kind
}

/// Records the progress `agent` reports on its running job; answers the job as it stands.
pub async fn progress(
    store: &Store,
    agent: &str,
    actor: Actor,
    id: String,
    report: JobProgress,
) -> Result<Job, Error> {
    let problems = check_progress(&report.phase, report.percent);
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    let agent_id = agent.to_string();
    let job = store
        .write(actor, move |tx| {
            let at = tx.now;
            tx.job_progress(
                &agent_id,
                &id,
                Progress {
                    phase: report.phase,
                    bytes: report.bytes,
                    percent: report.percent,
                    at,
                },
            )
        })
        .await?;
    Ok(job)
}

/// Records the result `agent` reports for its job `id`; `true` when it was a duplicate.
pub async fn record(
    store: &Store,
    board: &Board,
    agent: &str,
    actor: Actor,
    id: String,
    result: JobResult,
) -> Result<(Job, bool), Error> {
    let job_kind =
        crate::store::jobs::get(&store.read()?, &id)?.map_or(JobKind::Backup, |j| kind(&j));
    let problems = check_result(job_kind, &result);
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    let agent_id = agent.to_string();
    let max_attempts = board.settings.max_attempts;
    let repository_made = result.succeeded || result.created_repository;
    let (job, duplicate, forget) = store
        .write(actor, move |tx| {
            // A job that is not there (or not the agent's) is answered by the kind's recorder.
            let kind = tx.job(&id)?.map_or(JobKind::Backup, |j| kind(&j));
            let (job, duplicate) = tx.finish_job(&agent_id, &id, &result)?;
            if duplicate {
                return Ok((job, true, None));
            }
            let forget = match kind {
                JobKind::Backup => backup(tx, &job, &result, max_attempts)?,
                JobKind::Forget => {
                    upkeep::record_forget(tx, &job, &result)?;
                    None
                }
                JobKind::Gc => {
                    upkeep::record_gc(tx, &job, &result)?;
                    None
                }
                JobKind::Verify => {
                    upkeep::record_verify(tx, &job, &result)?;
                    None
                }
                JobKind::Restore => {
                    super::restores::record(tx, &job, &result)?;
                    None
                }
                JobKind::Drill => {
                    super::drills::record(tx, &job, &result)?;
                    None
                }
            };
            Ok((job, false, forget))
        })
        .await?;
    if let Some(forget) = &forget {
        board.wake(&forget.agent_id);
    }

    if let (Some(storage), true, false) = (&job.storage_id, repository_made, duplicate) {
        // From now on the storage's jobs need no recovery key: its repository exists.
        let (ws, st) = (job.workspace_id.clone(), storage.clone());
        let known =
            store::storages::get(&store.read()?, &ws, &st)?.is_none_or(|s| s.repository_exists);
        if !known {
            store
                .write(super::system_actor(), move |tx| {
                    tx.note_repository_exists(&ws, &st)
                })
                .await?;
        }
    }
    if !duplicate {
        // A slot freed: the agent (and others waiting on the same storage) may take the next.
        board.wake(&job.agent_id);
        tracing::info!(job = %job.id, database = %job.database_id, status = job.status.as_str(), "job finished");
    }
    Ok((job, duplicate))
}

/// A backup's result (its job, catalog entry and the policy's learned duration are recorded by
/// `finish_job`): what its verify-after found, then — a successful automatic backup — the
/// database's retention, whose forget job is returned.
fn backup(
    tx: &mut Tx,
    job: &Job,
    result: &JobResult,
    max_attempts: u32,
) -> Result<Option<Job>, StoreError> {
    upkeep::record_checks(tx, &job.workspace_id, &result.verified, true)?;
    if result.succeeded && job.kind == SnapshotKind::Automatic {
        return upkeep::run_retention(tx, &job.database_id, max_attempts);
    }
    Ok(None)
}
