//! Restore jobs: a restore the control plane checked (and, where its policy asks, a second
//! person approved) carried out with the driver's own restore code, the same the CLI runs.
//!
//! The agent that receives the job is the restore's target. It may not be the agent that took
//! the backup — that host may be gone — so a database this agent does not declare is restored
//! through a driver made from the job alone (type and id), which can write a new location (a
//! PostgreSQL data directory, a SQLite file) but never touch a database it does not know.
//!
//! Replacing data follows one order: the pre-restore backup of exactly what is replaced is
//! written and committed first; if it fails, nothing is replaced. Its snapshot goes back in the
//! result, also when the restore itself fails afterwards, so the catalog lists it either way.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use bulwark_core::api::{
    AgentJob, PreRestoreSnapshot, ReachedPoint, RecoveryPoint, RestoreMode, RestoreOutcome,
    RestoreTarget, RestoreTask,
};
use bulwark_core::manifest::SnapshotKind;
use bulwark_core::repo::backup::Progress;
use chrono::Utc;

use super::{failed, Context};
use crate::backup::DriverBackup;
use crate::config::{DatabaseConfig, DatabaseType};
use crate::drivers::{self, Driver, RecoveryTarget, RestoreRequest};

/// Runs the restore a job asks for; every failure becomes a failed result naming why, carrying
/// the pre-restore snapshot when one was written.
pub(super) async fn run(
    cx: &Context,
    job: &AgentJob,
    task: &RestoreTask,
) -> bulwark_core::api::JobResult {
    let started_at = Utc::now();
    let mut outcome = RestoreOutcome::default();
    match restore(cx, job, task, &mut outcome).await {
        Ok(()) => {
            tracing::info!(job = %job.id, restore = %task.restore_id, snapshot = %outcome.snapshot, "restore done");
            bulwark_core::api::JobResult {
                succeeded: true,
                snapshot: Some(outcome.snapshot.clone()),
                started_at,
                finished_at: Utc::now(),
                restore: Some(outcome),
                ..Default::default()
            }
        }
        Err(e) => {
            let error = format!("restore {} failed: {e:#}", task.restore_id);
            tracing::warn!(job = %job.id, error = %error, "restore failed");
            bulwark_core::api::JobResult {
                restore: (!outcome.snapshot.is_empty() || outcome.pre_restore.is_some())
                    .then_some(outcome),
                ..failed(started_at, error)
            }
        }
    }
}

async fn restore(
    cx: &Context,
    job: &AgentJob,
    task: &RestoreTask,
    outcome: &mut RestoreOutcome,
) -> Result<()> {
    let driver = driver_for(cx, task)?;
    let (repo, _) = cx.open_repository(job, false).await?;
    let mut req = request(task)?;
    req.config_path = cx.g.config_path();
    req.repository_args = cx.g.repository_args();
    if let (RestoreTarget::Location { path, .. }, Some(storage)) = (&task.target, &job.storage) {
        if task.database_type == DatabaseType::Postgresql {
            // The restored cluster fetches WAL from the storage the base came from, through a
            // binding of its own (the original's may point elsewhere, or not exist here).
            let path = std::path::Path::new(path);
            let owner = if path.exists() {
                path
            } else {
                bulwark_core::leftovers::parent_of(path)
            };
            let binding = format!("restore-{}", task.restore_id);
            req.fetch_args = bind_wal(cx, job, storage, &binding, owner)
                .context("giving the restored cluster the storage's WAL")?;
        }
    }
    cx.report(job, "choosing", 0).await;
    let manifest = match &task.snapshot {
        Some(name) => repo.find_snapshot(name, Some(&task.database_id)).await?,
        None => driver.find_latest(&repo, &req).await?,
    };
    if manifest.database_type != task.database_type.as_str() {
        anyhow::bail!(
            "snapshot {} is a {} backup, not {}",
            manifest.name,
            manifest.database_type,
            task.database_type
        );
    }
    outcome.snapshot = manifest.name.clone();
    if driver.replaces_existing(&manifest, &req).await? {
        let replaced = driver.replacement(&req).replaced;
        if !task.confirmed {
            anyhow::bail!(
                "restoring {} would replace {replaced}, and the request did not confirm it; nothing was changed",
                manifest.name
            );
        }
        cx.report(job, "pre-restore backup", 0).await;
        let (safety, method) = driver.pre_restore_backup(&req);
        let tags = [
            ("before-restore-of".to_string(), manifest.name.clone()),
            ("replaced".to_string(), replaced),
            ("restore".to_string(), task.restore_id.clone()),
        ]
        .into();
        let backup = DriverBackup {
            driver: safety.as_ref(),
            method,
            kind: SnapshotKind::PreRestore,
            tags,
            count_rows: false,
        };
        let written = crate::backup::run(&repo, backup, &super::backup::Reporting::new(cx, job))
            .await
            .context("the pre-restore backup failed, so nothing was replaced")?;
        let m = &written.manifest;
        outcome.pre_restore = Some(PreRestoreSnapshot {
            snapshot: m.name.clone(),
            method: m.details.get("method").and_then(|s| s.parse().ok()),
            logical_bytes: m.stats.logical_bytes,
            stored_bytes: m.stats.new_stored_bytes,
            started_at: m.started,
            finished_at: m.finished,
        });
    }
    cx.report(job, "restoring", 0).await;
    let report = driver
        .restore(&repo, &manifest, &req)
        .await
        .with_context(|| format!("restore of {} failed", manifest.name))?;
    outcome.reached = report.json.get("reached").map(|r| ReachedPoint {
        stop_reason: text(r, "stop_reason").unwrap_or_default(),
        last_transaction_time: text(r, "last_transaction_time"),
        lsn: text(r, "current_lsn"),
        timeline: text(r, "new_timeline"),
    });
    outcome.details = report.json;
    Ok(())
}

/// Binds `binding` to the job's storage for a server whose data directory is (or will be in)
/// `owner`; returns the `wal-fetch` flags that use it.
pub(super) fn bind_wal(
    cx: &Context,
    job: &AgentJob,
    storage: &bulwark_core::api::StorageTarget,
    binding: &str,
    owner: &std::path::Path,
) -> Result<Vec<String>> {
    let target = super::wal_target_for(job, storage);
    crate::wal_target::bind(&cx.state.path, binding, &target, owner)?;
    Ok(vec![
        "--state-dir".into(),
        cx.state.path.to_string_lossy().into_owned(),
        "--binding".into(),
        binding.to_string(),
    ])
}

/// The driver's recovery target for a requested point.
pub(super) fn recovery_target(point: &RecoveryPoint) -> RecoveryTarget {
    match point {
        RecoveryPoint::Latest => RecoveryTarget::Latest,
        RecoveryPoint::Time(t) => RecoveryTarget::Time(t.fixed_offset()),
        RecoveryPoint::Lsn(l) => RecoveryTarget::Lsn(l.clone()),
        RecoveryPoint::Name(n) => RecoveryTarget::Name(n.clone()),
    }
}

fn text(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key).and_then(|s| s.as_str()).map(str::to_string)
}

/// The database's driver as this agent declares it, or one made from the job for a database
/// another host served (new locations only).
fn driver_for(cx: &Context, task: &RestoreTask) -> Result<Box<dyn Driver>> {
    if let Some(db) = cx.g.settings.database(&task.database_id) {
        if db.kind != task.database_type {
            anyhow::bail!(
                "the control plane registered {} as {}, but this agent declares it as {}; nothing was restored",
                task.database_id,
                task.database_type,
                db.kind
            );
        }
        return Ok(drivers::driver_for(db)?);
    }
    if !matches!(task.target, RestoreTarget::Location { .. }) {
        anyhow::bail!(
            "database {} is not declared in this agent's configuration, so it can only be restored to a new location here",
            task.database_id
        );
    }
    let config = DatabaseConfig {
        id: task.database_id.clone(),
        kind: task.database_type,
        method: None,
        data_dir: None,
        path: None,
        connection: Default::default(),
        bin_dir: None,
    };
    Ok(drivers::driver_for(&config)?)
}

/// The driver's request for this task's mode, target and point.
fn request(task: &RestoreTask) -> Result<RestoreRequest> {
    let mut req = RestoreRequest {
        confirm: task.confirmed,
        progress: Arc::new(Progress::default()),
        ..Default::default()
    };
    req.target = recovery_target(&task.point);
    let logical_mode = match task.mode {
        RestoreMode::Full | RestoreMode::Selective => drivers::RestoreMode::Full,
        RestoreMode::Merge => drivers::RestoreMode::Merge,
    };
    match (task.database_type, &task.target) {
        (DatabaseType::Postgresql, RestoreTarget::InPlace) => req.mode = Some(logical_mode),
        (DatabaseType::Postgresql, RestoreTarget::Database { name }) => {
            req.mode = Some(logical_mode);
            req.into_database = Some(name.clone());
        }
        (DatabaseType::Postgresql, RestoreTarget::Location { path, port }) => {
            req.data_dir = Some(path.into());
            req.port = *port;
            req.start = true;
        }
        (DatabaseType::Sqlite, RestoreTarget::InPlace) => {}
        (DatabaseType::Sqlite, RestoreTarget::Location { path, .. }) => {
            req.to_path = Some(path.into())
        }
        (t, target) => anyhow::bail!("a {t} database cannot be restored to {target:?}"),
    }
    if task.mode == RestoreMode::Selective {
        req.schemas = task.schemas.clone();
        req.tables = task.tables.clone();
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(target: RestoreTarget, mode: RestoreMode) -> RestoreTask {
        RestoreTask {
            restore_id: "rst-1".into(),
            database_id: "crm".into(),
            database_type: DatabaseType::Postgresql,
            snapshot: None,
            point: RecoveryPoint::Latest,
            mode,
            schemas: vec!["tenant_a".into()],
            tables: vec![],
            target,
            confirmed: false,
        }
    }

    #[test]
    fn targets_become_the_driver_options_the_cli_would_pass() {
        let r = request(&task(
            RestoreTarget::Database {
                name: "crm_copy".into(),
            },
            RestoreMode::Selective,
        ))
        .unwrap();
        assert_eq!(r.into_database.as_deref(), Some("crm_copy"));
        assert_eq!(r.schemas, ["tenant_a"]);
        assert_eq!(r.mode, Some(drivers::RestoreMode::Full));
        // Schemas only count in selective mode.
        let r = request(&task(RestoreTarget::InPlace, RestoreMode::Merge)).unwrap();
        assert!(r.schemas.is_empty() && r.mode == Some(drivers::RestoreMode::Merge));
        let r = request(&task(
            RestoreTarget::Location {
                path: "/srv/pg-new".into(),
                port: Some(5499),
            },
            RestoreMode::Full,
        ))
        .unwrap();
        assert!(r.start && r.port == Some(5499) && r.data_dir.is_some());
        let mut sqlite = task(
            RestoreTarget::Database { name: "x".into() },
            RestoreMode::Full,
        );
        sqlite.database_type = DatabaseType::Sqlite;
        assert!(request(&sqlite).is_err());
    }
}
