//! Restore drills: proof that a policy's backups come back. The newest snapshot (or the state
//! at a point in time) is restored into a scratch instance under the state directory, the
//! checks run against it, and the instance and its directory are removed again — also when a
//! check or the restore fails.
//!
//! A failed check fails the job (with every check in the result), so a drill that proves
//! nothing is never reported as a success. The clock runs from the job's start until the last
//! check answered: that is the RTO an operator would see, restore and start-up included.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use bulwark_core::api::{AgentJob, CheckResult, DrillOutcome, DrillTask, JobResult, ReachedPoint};
use bulwark_core::repo::backup::Progress;
use chrono::{DateTime, Utc};

use super::{failed, Context};
use crate::config::{DatabaseConfig, DatabaseType};
use crate::drivers::{self, DrillFindings, DrillRequest, Driver, RestoreMode, RestoreRequest};

pub(super) async fn run(cx: &Context, job: &AgentJob, task: &DrillTask) -> JobResult {
    let started_at = Utc::now();
    let clock = Instant::now();
    let scratch = cx.state.path.join("drills").join(&task.drill_id);
    let binding = format!("drill-{}", task.drill_id);
    let mut outcome = DrillOutcome::default();
    let ran = drill(cx, job, task, &scratch, &binding, clock, &mut outcome).await;
    if let Err(e) = std::fs::remove_dir_all(&scratch) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(drill = %task.drill_id, path = %scratch.display(), error = %e, "removing the drill's scratch directory failed");
        }
    }
    let _ = crate::wal_target::unbind(&cx.state.path, &binding);
    outcome.scratch_removed = !scratch.exists();
    let failed_checks: Vec<String> = outcome
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    let error = match ran {
        Err(e) => Some(format!("drill {} failed: {e:#}", task.drill_id)),
        Ok(()) if !failed_checks.is_empty() => Some(format!(
            "drill {} of {}: {} check(s) failed: {}",
            task.drill_id,
            outcome.snapshot,
            failed_checks.len(),
            failed_checks.join("; ")
        )),
        Ok(()) if !outcome.scratch_removed => Some(format!(
            "drill {}: the scratch directory {} could not be removed",
            task.drill_id,
            scratch.display()
        )),
        Ok(()) => None,
    };
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

async fn drill(
    cx: &Context,
    job: &AgentJob,
    task: &DrillTask,
    scratch: &std::path::Path,
    binding: &str,
    clock: Instant,
    outcome: &mut DrillOutcome,
) -> Result<()> {
    let driver = driver_for(cx, task)?;
    let (repo, _) = cx.open_repository(job, false).await?;
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).with_context(|| {
        format!(
            "creating the drill's scratch directory {}",
            scratch.display()
        )
    })?;
    let mut req = RestoreRequest {
        target: super::restore::recovery_target(&task.point),
        config_path: cx.g.config_path(),
        repository_args: cx.g.repository_args(),
        progress: Arc::new(Progress::default()),
        ..Default::default()
    };
    // The options tell the driver which method's snapshot to choose.
    match (task.database_type, task.physical) {
        (DatabaseType::Postgresql, true) => {
            req.data_dir = Some(scratch.join("data"));
            if let Some(storage) = &job.storage {
                req.fetch_args = super::restore::bind_wal(cx, job, storage, binding, scratch)
                    .context("giving the scratch cluster the storage's WAL")?;
            }
        }
        (DatabaseType::Postgresql, false) => req.mode = Some(RestoreMode::Full),
        _ => {}
    }
    cx.report(job, "choosing", 0).await;
    let manifest = driver.find_latest(&repo, &req).await?;
    outcome.snapshot = manifest.name.clone();
    req.data_dir = None;
    req.mode = None;
    let drill = DrillRequest {
        scratch: scratch.to_path_buf(),
        restore: req,
        integrity: task.integrity,
        row_counts: task.row_counts,
        queries: task.sql_checks.iter().map(|c| c.query.clone()).collect(),
    };
    cx.report(job, "restoring into a scratch instance", 0).await;
    let found = driver
        .drill(&repo, &manifest, &drill)
        .await
        .with_context(|| format!("drill restore of {} failed", manifest.name))?;
    outcome.ready_secs = found.ready_at.duration_since(clock).as_secs_f64();
    outcome.reached = found.reached.as_ref().map(|r| ReachedPoint {
        stop_reason: text(r, "stop_reason").unwrap_or_default(),
        last_transaction_time: text(r, "last_transaction_time"),
        lsn: text(r, "current_lsn"),
        timeline: text(r, "new_timeline"),
    });
    outcome.recovered_to = match &outcome.reached {
        // The newest transaction replayed; a base without any later commit is its end.
        Some(r) => r
            .last_transaction_time
            .as_deref()
            .and_then(parse_server_time)
            .or(Some(manifest.finished.with_timezone(&Utc))),
        // A dump or a file copy holds its snapshot's state, taken at its start.
        None => Some(manifest.started.with_timezone(&Utc)),
    };
    outcome.checks = checks(task, &manifest.details, found);
    Ok(())
}

/// Each asked-for check, passed or not.
fn checks(
    task: &DrillTask,
    details: &BTreeMap<String, String>,
    found: DrillFindings,
) -> Vec<CheckResult> {
    let mut out = Vec::new();
    if let Some(integrity) = found.integrity {
        out.push(match integrity {
            Ok(detail) => check("integrity", true, detail),
            Err(detail) => check("integrity", false, detail),
        });
    }
    if let Some(restored) = found.row_counts {
        out.push(compare_counts(details, &restored));
    }
    for (c, answer) in task.sql_checks.iter().zip(found.answers) {
        out.push(match answer {
            Ok(got) if got.trim() == c.expect.trim() => {
                check(&c.name, true, format!("answered {:?}", got.trim()))
            }
            Ok(got) => check(
                &c.name,
                false,
                format!("answered {:?}, expected {:?}", got.trim(), c.expect.trim()),
            ),
            Err(e) => check(&c.name, false, format!("the query failed: {e}")),
        });
    }
    out
}

fn check(name: &str, passed: bool, detail: impl Into<String>) -> CheckResult {
    CheckResult {
        name: name.into(),
        passed,
        detail: detail.into(),
    }
}

/// The copy's row counts against the ones the backup recorded.
fn compare_counts(
    details: &BTreeMap<String, String>,
    restored: &BTreeMap<String, u64>,
) -> CheckResult {
    let Some(recorded) = details.get(drivers::ROW_COUNTS_DETAIL) else {
        return check(
            "row_counts",
            false,
            "the snapshot recorded no row counts (taken before the policy asked for drills?); the next backup records them",
        );
    };
    let recorded: BTreeMap<String, u64> = match serde_json::from_str(recorded) {
        Ok(r) => r,
        Err(e) => {
            return check(
                "row_counts",
                false,
                format!("the snapshot's row counts cannot be read: {e}"),
            )
        }
    };
    let mut differ = Vec::new();
    for (table, n) in &recorded {
        match restored.get(table) {
            Some(m) if m == n => {}
            Some(m) => differ.push(format!("{table}: {n} backed up, {m} restored")),
            None => differ.push(format!("{table}: {n} backed up, missing from the copy")),
        }
    }
    for table in restored.keys().filter(|t| !recorded.contains_key(*t)) {
        differ.push(format!(
            "{table}: in the copy but not in the backup's counts"
        ));
    }
    match differ.is_empty() {
        true => check(
            "row_counts",
            true,
            format!(
                "{} tables, {} rows, as backed up",
                recorded.len(),
                recorded.values().sum::<u64>()
            ),
        ),
        false => check("row_counts", false, differ.join("; ")),
    }
}

/// A time as the PostgreSQL log prints it (`2026-11-23 09:58:59.1+00`).
fn parse_server_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn text(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key).and_then(|s| s.as_str()).map(str::to_string)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_counts_name_every_table_that_differs() {
        let details: BTreeMap<String, String> = [(
            drivers::ROW_COUNTS_DETAIL.to_string(),
            r#"{"public.a":3,"public.b":5}"#.to_string(),
        )]
        .into();
        let same = [("public.a".to_string(), 3), ("public.b".to_string(), 5)].into();
        let c = compare_counts(&details, &same);
        assert!(c.passed && c.detail.contains("2 tables, 8 rows"), "{c:?}");
        let short = [("public.a".to_string(), 2), ("public.c".to_string(), 1)].into();
        let c = compare_counts(&details, &short);
        assert!(!c.passed);
        assert!(
            c.detail.contains("public.a: 3 backed up, 2 restored"),
            "{}",
            c.detail
        );
        assert!(
            c.detail.contains("public.b: 5 backed up, missing"),
            "{}",
            c.detail
        );
        assert!(c.detail.contains("public.c: in the copy"), "{}", c.detail);
        assert!(!compare_counts(&BTreeMap::new(), &same).passed);
        assert_eq!(
            parse_server_time("2026-11-23 09:58:59.1+00").map(|t| t.to_rfc3339()),
            Some("2026-11-23T09:58:59.100+00:00".to_string())
        );
    }
}
