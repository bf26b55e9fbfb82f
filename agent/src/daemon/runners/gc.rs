//! Gc jobs: one storage's garbage collection, on one agent at a time (the control plane sees to
//! that; the repository's leases keep it safe against other hosts' backups anyway). Archived
//! WAL that no kept base backup can use goes too, so the point-in-time window is what
//! retention keeps. The result says what was freed and what the repository holds afterwards,
//! for the control plane's usage figures.

use std::time::Duration;

use anyhow::Result;
use bulwark_core::api::{AgentJob, GcTask, JobResult};
use bulwark_core::repo::gc::GcOptions;

use super::Context;

/// How long gc waits for running backups (of any host) before giving up, deleting nothing.
const WAIT_FOR_BACKUPS: Duration = Duration::from_secs(600);

pub(super) async fn run(cx: &Context, job: &AgentJob, task: &GcTask) -> Result<JobResult> {
    let (repo, created) = cx.open_repository(job, true).await?;
    cx.report(job, "collecting", 0).await;
    let report = repo
        .gc(&GcOptions {
            dry_run: false,
            wait: WAIT_FOR_BACKUPS,
        })
        .await?;
    let mut freed = report.deleted_bytes;
    let mut warnings = Vec::new();
    if task.expire_wal {
        for expiry in repo.expire_wal(false).await? {
            freed += expiry.deleted_bytes;
            if expiry.deleted_files > 0 {
                tracing::info!(database = %expiry.database_id, files = expiry.deleted_files, bytes = expiry.deleted_bytes, "archived WAL expired");
            }
            if let Some(why) = expiry.kept_because {
                warnings.push(format!("WAL of {} kept: {why}", expiry.database_id));
            }
        }
    }
    let repository_bytes = super::repository_bytes(&repo).await?;
    tracing::info!(job = %job.id, chunks = report.deleted_chunks, freed, repository_bytes, "gc done");
    Ok(JobResult {
        freed_bytes: freed,
        repository_bytes: Some(repository_bytes),
        warnings,
        created_repository: created,
        ..JobResult::default()
    })
}
