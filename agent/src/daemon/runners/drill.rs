//! Restore drill jobs: the drill [`crate::drill`] runs, with the job's storage as the
//! repository and the WAL source (through a binding of the drill's own), and progress reported
//! to the control plane. `bulwark-agent drill` runs the same drill from the command line.
//!
//! A failed check fails the job (with every check in the result), so a drill that proves
//! nothing is never reported as a success. The clock runs from the job's start until the last
//! check answered: that is the RTO an operator would see, restore and start-up included.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use bulwark_core::api::{AgentJob, DrillTask, JobResult};
use bulwark_core::repo::Repository;
use chrono::Utc;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::{failed, Context};
use crate::config::{DatabaseConfig, DatabaseType};
use crate::drill::{DrillHost, DrillSpec, RowCounts};
use crate::drivers::{self, Driver};

pub(super) async fn run(cx: &Context, job: &AgentJob, task: &DrillTask) -> JobResult {
    let started_at = Utc::now();
    let clock = Instant::now();
    let spec = DrillSpec {
        id: task.drill_id.clone(),
        database_type: task.database_type,
        physical: task.physical,
        target: super::restore::recovery_target(&task.point),
        integrity: task.integrity,
        row_counts: match task.row_counts {
            true => RowCounts::Yes,
            false => RowCounts::No,
        },
        sql_checks: task.sql_checks.clone(),
        config_path: cx.g.config_path(),
        repository_args: cx.g.repository_args(),
    };
    let host = JobHost {
        cx,
        job,
        task,
        binding: format!("drill-{}", task.drill_id),
    };
    let drilled = crate::drill::run(&cx.state.path, &spec, &host, clock).await;
    let error = drilled.error();
    let outcome = drilled.outcome;
    let drill = (!outcome.snapshot.is_empty()).then_some(outcome);
    match error {
        None => {
            tracing::info!(job = %job.id, drill = %task.drill_id, "drill passed");
            JobResult {
                succeeded: true,
                snapshot: drill.as_ref().map(|d| d.snapshot.clone()),
                started_at,
                finished_at: Utc::now(),
                drill,
                ..Default::default()
            }
        }
        Some(error) => {
            tracing::warn!(job = %job.id, error = %error, "drill failed");
            JobResult {
                snapshot: drill.as_ref().map(|d| d.snapshot.clone()),
                drill,
                ..failed(started_at, error)
            }
        }
    }
}

/// A drill job's repository (the job's storage, opened with the workspace key), its WAL
/// binding, and progress reports.
struct JobHost<'a> {
    cx: &'a Context,
    job: &'a AgentJob,
    task: &'a DrillTask,
    binding: String,
}

impl DrillHost for JobHost<'_> {
    fn driver(&self) -> Result<Box<dyn Driver>> {
        driver_for(self.cx, self.task)
    }

    fn open(&self) -> BoxFuture<'_, Result<Repository>> {
        async move { Ok(self.cx.open_repository(self.job, false).await?.0) }.boxed()
    }

    fn bind_wal(&self, scratch: &Path) -> Result<Vec<String>> {
        match &self.job.storage {
            Some(storage) => {
                super::restore::bind_wal(self.cx, self.job, storage, &self.binding, scratch)
            }
            None => Ok(Vec::new()),
        }
    }

    fn unbind_wal(&self) {
        let _ = crate::wal_target::unbind(&self.cx.state.path, &self.binding);
    }

    fn phase<'a>(&'a self, phase: &'a str) -> BoxFuture<'a, ()> {
        self.cx.report(self.job, phase, 0).boxed()
    }
}

/// The database's driver as this agent declares it, or one made from the job (a scratch agent
/// drilling another host's database needs no connection to it).
fn driver_for(cx: &Context, task: &DrillTask) -> Result<Box<dyn Driver>> {
    let config = match cx.g.settings.database(&task.database_id) {
        Some(db) if db.kind == task.database_type => db.clone(),
        Some(db) => anyhow::bail!(
            "the control plane registered {} as {}, but this agent declares it as {}",
            task.database_id,
            task.database_type,
            db.kind
        ),
        None => DatabaseConfig {
            id: task.database_id.clone(),
            kind: task.database_type,
            method: None,
            data_dir: None,
            // A SQLite driver needs a path; a drill never touches it.
            path: (task.database_type == DatabaseType::Sqlite)
                .then(|| std::path::PathBuf::from(format!("/nonexistent/{}", task.database_id))),
            connection: Default::default(),
            bin_dir: None,
        },
    };
    Ok(drivers::driver_for(&config)?)
}
