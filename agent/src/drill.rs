//! Restore drills, whoever asked for one: proof that a database's backups come back. The newest
//! snapshot (or the state at a point in time) is restored into a scratch instance under the
//! state directory, the checks run against it, and the instance and its directory are removed
//! again — also when a check or the restore fails.
//!
//! The daemon's drill jobs (`daemon/runners/drill.rs`) and `bulwark-agent drill` run this same
//! code; they differ only in where the repository and the WAL come from and who hears about
//! the phases, which is a [`DrillHost`] the caller plugs in. A failed check fails the drill
//! (with every check in the outcome), so a drill that proves nothing is never reported as a
//! success. The clock runs from the caller's start until the last check answered: that is the
//! RTO an operator would see, restore and start-up included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use bulwark_core::api::{CheckResult, DrillOutcome, ReachedPoint, SqlCheck};
use bulwark_core::repo::backup::Progress;
use bulwark_core::repo::Repository;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::config::DatabaseType;
use crate::drivers::{
    self, DrillFindings, DrillRequest, Driver, RecoveryTarget, RestoreMode, RestoreRequest,
};

/// What to drill.
#[derive(Debug, Clone)]
pub struct DrillSpec {
    /// Names the scratch directory, `<state dir>/drills/<id>`.
    pub id: String,
    pub database_type: DatabaseType,
    /// Restore a physical base backup with WAL (PostgreSQL) rather than the newest dump.
    pub physical: bool,
    /// Where point-in-time recovery stops (physical only).
    pub target: RecoveryTarget,
    /// Run the engine's own integrity check (pg_amcheck, PRAGMA integrity_check).
    pub integrity: bool,
    pub row_counts: RowCounts,
    pub sql_checks: Vec<SqlCheck>,
    /// The agent's config file and the flags that chose the repository, for the scratch
    /// cluster's restore_command (as for a restore).
    pub config_path: PathBuf,
    pub repository_args: Vec<String>,
}

/// Whether the copy's row counts are compared with the ones the snapshot recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowCounts {
    No,
    /// Always: a snapshot that recorded none fails the check (a policy asked for drills, so
    /// its backups should have counted).
    Yes,
    /// Only when the snapshot recorded counts; otherwise the drill notes that they were not
    /// compared (`bulwark-agent backup` does not count rows, physical bases never do).
    WhenRecorded,
}

/// The caller's part in a drill.
pub trait DrillHost: Send + Sync {
    /// The database's driver.
    fn driver(&self) -> Result<Box<dyn Driver>>;
    /// The repository the snapshot is restored from.
    fn open(&self) -> BoxFuture<'_, Result<Repository>>;
    /// The `wal-fetch` flags a physical scratch cluster whose data directory will be in
    /// `scratch` fetches its WAL with, after setting up whatever they name (a binding).
    fn bind_wal(&self, scratch: &Path) -> Result<Vec<String>>;
    /// Undoes [`DrillHost::bind_wal`]; called after every drill, bound or not.
    fn unbind_wal(&self);
    /// The drill enters `phase`.
    fn phase<'a>(&'a self, phase: &'a str) -> BoxFuture<'a, ()>;
    /// Resolves, with the reason, when the drill must be given up (the scratch instance is
    /// then stopped and removed all the same).
    fn interrupted(&self) -> BoxFuture<'_, anyhow::Error> {
        futures::future::pending().boxed()
    }
}

/// A finished drill.
pub struct Drilled {
    /// The drill's id ([`DrillSpec::id`]).
    pub id: String,
    /// What was found; `snapshot` is empty when no snapshot was chosen.
    pub outcome: DrillOutcome,
    /// `Err` when the copy could not be made or reached at all (failed checks are findings,
    /// not errors).
    pub ran: Result<()>,
    pub scratch: PathBuf,
    /// Said about the drill beside the checks (a check left out, and why).
    pub notes: Vec<String>,
    /// The drill was given up ([`DrillHost::interrupted`]).
    pub interrupted: bool,
}

impl Drilled {
    /// Every failed check, as `name: detail`.
    pub fn failed_checks(&self) -> Vec<String> {
        self.outcome
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }

    /// Why the drill failed, or `None` when it passed: the copy could not be made, a check
    /// failed, or the scratch directory is still there.
    pub fn error(&self) -> Option<String> {
        let id = &self.id;
        let failed_checks = self.failed_checks();
        match &self.ran {
            Err(e) => Some(format!("drill {id} failed: {e:#}")),
            Ok(()) if !failed_checks.is_empty() => Some(format!(
                "drill {id} of {}: {} check(s) failed: {}",
                self.outcome.snapshot,
                failed_checks.len(),
                failed_checks.join("; ")
            )),
            Ok(()) if !self.outcome.scratch_removed => Some(format!(
                "drill {id}: the scratch directory {} could not be removed",
                self.scratch.display()
            )),
            Ok(()) => None,
        }
    }
}

/// Runs the drill `spec` asks for in `<state_dir>/drills/<id>`, timed from `clock`, and
/// removes the scratch instance again whatever happened.
pub async fn run(
    state_dir: &Path,
    spec: &DrillSpec,
    host: &dyn DrillHost,
    clock: Instant,
) -> Drilled {
    let scratch = state_dir.join("drills").join(&spec.id);
    let mut outcome = DrillOutcome::default();
    let mut notes = Vec::new();
    let mut interrupted = false;
    let ran = {
        let drill = drill(spec, host, &scratch, clock, &mut outcome, &mut notes);
        tokio::select! {
            r = drill => r,
            e = host.interrupted() => {
                interrupted = true;
                Err(e)
            }
        }
    };
    if interrupted {
        stop_leftover_server(&scratch.join("data"));
    }
    if let Err(e) = std::fs::remove_dir_all(&scratch) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(drill = %spec.id, path = %scratch.display(), error = %e, "removing the drill's scratch directory failed");
        }
    }
    host.unbind_wal();
    outcome.scratch_removed = !scratch.exists();
    Drilled {
        id: spec.id.clone(),
        outcome,
        ran,
        scratch,
        notes,
        interrupted,
    }
}

async fn drill(
    spec: &DrillSpec,
    host: &dyn DrillHost,
    scratch: &Path,
    clock: Instant,
    outcome: &mut DrillOutcome,
    notes: &mut Vec<String>,
) -> Result<()> {
    let driver = host.driver()?;
    let repo = host.open().await?;
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).with_context(|| {
        format!(
            "creating the drill's scratch directory {}",
            scratch.display()
        )
    })?;
    let mut req = RestoreRequest {
        target: spec.target.clone(),
        config_path: spec.config_path.clone(),
        repository_args: spec.repository_args.clone(),
        progress: Arc::new(Progress::default()),
        ..Default::default()
    };
    // The options tell the driver which method's snapshot to choose.
    match (spec.database_type, spec.physical) {
        (DatabaseType::Postgresql, true) => {
            req.data_dir = Some(scratch.join("data"));
            req.fetch_args = host
                .bind_wal(scratch)
                .context("giving the scratch cluster the storage's WAL")?;
        }
        (DatabaseType::Postgresql, false) => req.mode = Some(RestoreMode::Full),
        _ => {}
    }
    host.phase("choosing").await;
    let manifest = driver.find_latest(&repo, &req).await?;
    outcome.snapshot = manifest.name.clone();
    req.data_dir = None;
    req.mode = None;
    let recorded = manifest.details.contains_key(drivers::ROW_COUNTS_DETAIL);
    let row_counts = match spec.row_counts {
        RowCounts::No => false,
        RowCounts::Yes => true,
        RowCounts::WhenRecorded if recorded => true,
        RowCounts::WhenRecorded => {
            notes.push(format!(
                "row counts not compared: snapshot {} recorded none (backups record them for policies with drills; `bulwark-agent backup` and physical bases do not)",
                manifest.name
            ));
            false
        }
    };
    let drill = DrillRequest {
        scratch: scratch.to_path_buf(),
        restore: req,
        integrity: spec.integrity,
        row_counts,
        queries: spec.sql_checks.iter().map(|c| c.query.clone()).collect(),
    };
    host.phase("restoring into a scratch instance").await;
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
    outcome.checks = checks(&spec.sql_checks, &manifest.details, found);
    Ok(())
}

/// A PostgreSQL scratch server left running by a drill given up half-way (the driver stops its
/// server itself when it gets to the end): stopped at once (SIGQUIT, an immediate shutdown)
/// before its directory is removed.
fn stop_leftover_server(data: &Path) {
    let Ok(pid) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return;
    };
    let Some(pid) = pid
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: plain syscalls on a process id; signal 0 only asks whether it still exists.
    unsafe {
        if libc::kill(pid, libc::SIGQUIT) != 0 {
            return;
        }
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if libc::kill(pid, 0) != 0 {
                return;
            }
        }
    }
    tracing::warn!(pid, "the drill's scratch server did not stop within 10 s");
}

/// Each asked-for check, passed or not.
fn checks(
    sql_checks: &[SqlCheck],
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
    for (c, answer) in sql_checks.iter().zip(found.answers) {
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

    #[test]
    fn the_error_names_the_drill_and_every_failed_check() {
        let mut d = Drilled {
            id: "drl_1".into(),
            outcome: DrillOutcome {
                snapshot: "s1".into(),
                checks: vec![
                    check("integrity", true, "ok"),
                    check("one", false, "answered \"2\", expected \"1\""),
                ],
                scratch_removed: true,
                ..Default::default()
            },
            ran: Ok(()),
            scratch: PathBuf::from("/state/drills/drl_1"),
            notes: Vec::new(),
            interrupted: false,
        };
        assert_eq!(
            d.error().as_deref(),
            Some("drill drl_1 of s1: 1 check(s) failed: one: answered \"2\", expected \"1\"")
        );
        d.outcome.checks.pop();
        assert_eq!(d.error(), None);
        d.outcome.scratch_removed = false;
        assert!(d.error().unwrap().contains("could not be removed"));
        d.ran = Err(anyhow::anyhow!("no snapshot"));
        assert_eq!(
            d.error().as_deref(),
            Some("drill drl_1 failed: no snapshot")
        );
    }
}
