//! Backup jobs: the shared backup runner ([`crate::backup`]) with the control plane watching.
//!
//! A backup job ends early two ways: the control plane answers a progress report with "cancel",
//! or the daemon is stopping and the stop timeout has passed. Either way the session is aborted
//! between chunk writes (no manifest, lease released, nothing visible) and the job fails.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bulwark_core::api::{
    AgentJob, BackupMethod, BackupTask, DatabaseType, JobProgress, JobResult, SnapshotCheck,
};
use bulwark_core::manifest::Manifest;
use bulwark_core::repo::backup::Progress;
use bulwark_core::repo::verify::VerifyOptions;
use chrono::Utc;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::watch;

use super::{failed, Context};
use crate::backup::{DriverBackup, Supervisor};
use crate::daemon::current;

/// How often a running backup reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// Runs the backup a job asks for; every failure becomes a failed result naming why.
pub(super) async fn run(cx: &Context, job: &AgentJob, task: &BackupTask) -> JobResult {
    let started_at = Utc::now();
    let result = match backup(cx, job, task).await {
        Ok(done) => JobResult {
            succeeded: true,
            snapshot: Some(done.manifest.name.clone()),
            logical_bytes: done.manifest.stats.logical_bytes,
            stored_bytes: done.manifest.stats.new_stored_bytes,
            method: done.manifest.details.get("method").and_then(|m| {
                BackupMethod::ALL
                    .into_iter()
                    .find(|x| x.as_str() == m.as_str())
            }),
            started_at,
            finished_at: Utc::now(),
            warnings: done.warnings,
            verified: done.verified,
            created_repository: done.created,
            ..JobResult::default()
        },
        Err(e) => failed(started_at, format!("{e:#}")),
    };
    match &result.error {
        None => tracing::info!(job = %job.id, snapshot = ?result.snapshot, "backup written"),
        Some(e) => tracing::warn!(job = %job.id, error = %e, "backup failed"),
    }
    result
}

struct Done {
    manifest: Manifest,
    warnings: Vec<String>,
    verified: Vec<SnapshotCheck>,
    created: bool,
}

async fn backup(cx: &Context, job: &AgentJob, task: &BackupTask) -> Result<Done> {
    let (db, driver) = cx.g.database(&task.database_id)?;
    if db.kind != task.database_type {
        anyhow::bail!(
            "job {}: the control plane registered {} as {}, but this agent's configuration declares it as {}; no snapshot was written",
            job.id, task.database_id, task.database_type, db.kind
        );
    }
    let (repo, created) = cx.open_repository(job, true).await?;
    bind_wal(cx, job, task, db)?;
    // The policy's method goes to the driver as it is: one the engine cannot take (logical for
    // SQLite) fails the job with the driver's reason instead of being swapped silently.
    let backup = DriverBackup {
        driver: driver.as_ref(),
        method: task.method,
        kind: task.snapshot_kind,
        tags: task.tags.clone(),
        count_rows: task.count_rows,
    };
    let reporting = Reporting::new(cx, job);
    let written = crate::backup::run(&repo, backup, &reporting).await?;
    let mut verified = Vec::new();
    if task.verify_after {
        cx.report(job, "verifying", 0).await;
        let manifests = std::slice::from_ref(&written.manifest);
        let report = repo
            .verify(
                manifests,
                VerifyOptions::default(),
                Arc::new(Progress::default()),
            )
            .await?;
        verified = super::verify::checks(&report);
    }
    Ok(Done {
        manifest: written.manifest,
        warnings: written.warnings,
        verified,
        created,
    })
}

/// A physical PostgreSQL backup onto a storage: from now on the database's archive_command
/// sends WAL to that storage's repository, where the base backup needs it (before the backup
/// starts: the server archives the backup's last segment before the backup may end).
fn bind_wal(
    cx: &Context,
    job: &AgentJob,
    task: &BackupTask,
    db: &crate::config::DatabaseConfig,
) -> Result<()> {
    let physical = task.method.or(db.method) == Some(BackupMethod::Physical);
    let (Some(storage), DatabaseType::Postgresql, true, Some(data_dir)) =
        (&job.storage, db.kind, physical, &db.data_dir)
    else {
        return Ok(());
    };
    let target = super::wal_target_for(job, storage);
    crate::wal_target::bind(&cx.state.path, &task.database_id, &target, data_dir).with_context(
        || {
            format!(
                "directing the WAL of {} to storage {}",
                task.database_id, storage.storage_id
            )
        },
    )?;
    Ok(())
}

/// The control plane's view of a backup job: phases and progress reports, and the two ways it
/// ends early.
pub(super) struct Reporting<'a> {
    cx: &'a Context,
    job: &'a AgentJob,
    /// Set when a progress report is answered with "cancel".
    cancel: Arc<watch::Sender<bool>>,
}

impl<'a> Reporting<'a> {
    pub(super) fn new(cx: &'a Context, job: &'a AgentJob) -> Self {
        Reporting {
            cx,
            job,
            cancel: Arc::new(watch::channel(false).0),
        }
    }
}

impl Supervisor for Reporting<'_> {
    // Percentages are taken against the size the database reports (the last report before the
    // end says at most 99 %).
    fn wants_estimate(&self) -> bool {
        true
    }

    fn checking(&self) -> BoxFuture<'_, ()> {
        self.cx.report(self.job, "checking", 0).boxed()
    }

    fn reading(&self, progress: Arc<Progress>, estimate: Option<u64>) -> Box<dyn Send> {
        let client = self.cx.client.clone();
        let id = self.job.id.clone();
        let cancel = self.cancel.clone();
        let reporter = tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let bytes = progress
                    .bytes_read
                    .load(std::sync::atomic::Ordering::Relaxed);
                let report = JobProgress {
                    phase: "reading".into(),
                    bytes,
                    percent: estimate.map(|total| percent_of(bytes, total)),
                };
                match current(&client).progress(&id, &report).await {
                    Ok(ack) if ack.cancel => {
                        let _ = cancel.send(true);
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "progress report failed"),
                }
            }
        });
        Box::new(AbortOnDrop(reporter))
    }

    fn interrupted(&self) -> BoxFuture<'_, String> {
        let mut cancel = self.cancel.subscribe();
        let mut stop = self.cx.stop.clone();
        let grace = self.cx.stop_timeout;
        async move {
            let why = tokio::select! {
                _ = cancel.wait_for(|c| *c) => "the control plane cancelled the job",
                _ = async {
                    let _ = stop.wait_for(|s| *s).await;
                    tokio::time::sleep(grace).await;
                } => "the agent was stopped (SIGTERM) before the backup finished",
            };
            why.to_string()
        }
        .boxed()
    }

    fn committing(&self) -> BoxFuture<'_, ()> {
        self.cx.report(self.job, "committing", 0).boxed()
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `done` of `total` in percent, one decimal, at most 99 (only the result says "finished").
fn percent_of(done: u64, total: u64) -> f64 {
    ((done as f64 * 1000.0 / total as f64).round() / 10.0).min(99.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_estimates_below_100() {
        assert_eq!(percent_of(0, 1000), 0.0);
        assert_eq!(percent_of(333, 1000), 33.3);
        assert_eq!(percent_of(5000, 1000), 99.0);
    }
}
