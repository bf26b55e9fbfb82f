//! Forget jobs: the control plane's retention plan (or a person's delete) carried out on the
//! repository. Only manifests go; their chunks are reclaimed by the storage's next gc job.
//! Names already gone count as forgotten, so a retried job succeeds.

use anyhow::Result;
use bulwark_core::api::{AgentJob, ForgetTask, JobResult};

use super::Context;

pub(super) async fn run(cx: &Context, job: &AgentJob, task: &ForgetTask) -> Result<JobResult> {
    let (repo, created) = cx.open_repository(job, true).await?;
    let report = repo.forget(&task.database_id, &task.snapshots).await?;
    tracing::info!(job = %job.id, database = %task.database_id, deleted = report.deleted.len(), already_gone = report.already_gone.len(), "snapshots forgotten");
    let mut forgotten = report.deleted;
    forgotten.extend(report.already_gone);
    Ok(JobResult {
        forgotten,
        created_repository: created,
        ..JobResult::default()
    })
}
