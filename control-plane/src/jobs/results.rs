//! What agents report on a job they took: progress while it runs, then one result.
//!
//! A result means something different for each kind of job (a backup adds a catalog entry and
//! teaches the scheduler how long the policy's runs take; the kinds to come — forget, gc,
//! verify, restore — will record other things), so [`record`] dispatches on the job's kind to
//! one function per kind. Whatever the kind, a result sent again changes nothing and answers
//! "duplicate", since an agent resends until it is acknowledged.

use bulwark_core::api::{JobKind, JobProgress, JobResult};

use super::{Board, Error};
use crate::domain::audit::Actor;
use crate::domain::job::{check_progress, check_result, Job, Progress};
use crate::store::{Store, StoreError, Tx};

/// The kind of work `job` is. Every job is a backup so far.
pub fn kind(_job: &Job) -> JobKind {
    JobKind::Backup
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
    let problems = check_result(&result);
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    let agent_id = agent.to_string();
    let (job, duplicate) = store
        .write(actor, move |tx| {
            // A job that is not there (or not the agent's) is answered by the kind's recorder.
            let kind = tx.job(&id)?.map_or(JobKind::Backup, |j| kind(&j));
            match kind {
                // No job of the other kinds is made yet (`kind` says backup for every job).
                JobKind::Backup | JobKind::Forget | JobKind::Gc | JobKind::Verify => {
                    backup(tx, &agent_id, &id, &result)
                }
            }
        })
        .await?;
    if !duplicate {
        // A slot freed: the agent (and others waiting on the same storage) may take the next.
        board.wake(&job.agent_id);
        tracing::info!(job = %job.id, database = %job.database_id, status = job.status.as_str(), "job finished");
    }
    Ok((job, duplicate))
}

/// A backup's result: the job, its catalog entry and the policy's learned duration.
fn backup(
    tx: &mut Tx,
    agent: &str,
    id: &str,
    result: &JobResult,
) -> Result<(Job, bool), StoreError> {
    tx.finish_job(agent, id, result)
}
