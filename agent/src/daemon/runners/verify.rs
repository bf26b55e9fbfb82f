//! Verify jobs: authenticate the named snapshots (or every snapshot of the storage), all of
//! their chunks or the part the job names, so that a scheduled verify reads every chunk within
//! its period. Damaged chunks are quarantined, so the next backup of the same data heals them;
//! each snapshot's outcome goes back to the catalog. A verify of the whole storage (the
//! scheduled one, daily by default) also measures the repository for the usage reconcile; one of
//! named snapshots does not (it is asked for often and the listing costs as much as the storage
//! is large).

use std::sync::Arc;

use anyhow::Result;
use bulwark_core::api::{AgentJob, JobResult, SnapshotCheck, VerifyTask};
use bulwark_core::repo::backup::Progress;
use bulwark_core::repo::verify::{VerifyOptions, VerifyReport};

use super::Context;

pub(super) async fn run(cx: &Context, job: &AgentJob, task: &VerifyTask) -> Result<JobResult> {
    let (repo, created) = cx.open_repository(job, true).await?;
    let list = repo.list_snapshots(None).await?;
    let mut manifests = list.manifests;
    if !task.snapshots.is_empty() {
        manifests.retain(|m| {
            task.snapshots
                .iter()
                .any(|s| s.database_id == m.database_id && s.name == m.name)
        });
    }
    cx.report(job, "verifying", 0).await;
    let opts = VerifyOptions {
        subset: task.subset,
        ..VerifyOptions::default()
    };
    let report = repo
        .verify(&manifests, opts, Arc::new(Progress::default()))
        .await?;
    let mut verified = checks(&report);
    // A named snapshot that is not there, or whose manifest cannot be read, is not intact.
    for wanted in &task.snapshots {
        if !verified
            .iter()
            .any(|c| c.database_id == wanted.database_id && c.name == wanted.name)
        {
            let damaged = list.damaged.iter().find(|(path, _)| {
                path.ends_with(&format!("/{}/{}", wanted.database_id, wanted.name))
            });
            verified.push(SnapshotCheck {
                database_id: wanted.database_id.clone(),
                name: wanted.name.clone(),
                intact: false,
                problems: vec![match damaged {
                    Some((path, e)) => format!("manifest {path} cannot be read: {e}"),
                    None => "the snapshot is not in the repository".into(),
                }],
            });
        }
    }
    for (path, e) in &list.damaged {
        if task.snapshots.is_empty() {
            tracing::warn!(manifest = %path, error = %e, "unreadable manifest");
        }
    }
    // What was found must reach the catalog even when the measuring fails: a warning, not a
    // failed job.
    let mut warnings = Vec::new();
    let repository_bytes = if task.snapshots.is_empty() {
        match super::repository_bytes(&repo).await {
            Ok(n) => Some(n),
            Err(e) => {
                warnings.push(format!("the repository was not measured: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    tracing::info!(job = %job.id, snapshots = verified.len(), chunks = report.checked_chunks, damaged = verified.iter().filter(|c| !c.intact).count(), ?repository_bytes, "verify done");
    Ok(JobResult {
        verified,
        repository_bytes,
        warnings,
        created_repository: created,
        ..JobResult::default()
    })
}

/// Each verified snapshot's outcome, for the catalog.
pub(super) fn checks(report: &VerifyReport) -> Vec<SnapshotCheck> {
    report
        .snapshots
        .iter()
        .map(|s| SnapshotCheck {
            database_id: s.database_id.clone(),
            name: s.name.clone(),
            // Chunks the storage failed to return are not known damage, but not proof either.
            intact: s.problems.is_empty(),
            problems: s.problems.clone(),
        })
        .collect()
}
