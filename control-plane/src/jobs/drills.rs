//! A drill's life: made on request (`POST /api/v1/policies/{id}/drills`) or when its policy's
//! drill frequency says so — inside the policy's preferred window, and only once the database
//! has a backup of the kind the drill restores — run as one job on the database's agent (or the
//! policy's scratch agent), and judged when that job reports: RTO and RPO against the policy's
//! targets, the `drill_failed` alert when it failed or missed one.
//!
//! One drill runs at a time per policy: a second request while one is queued or running is
//! refused (409), and the schedule waits for it.

use bulwark_core::api::{BackupMethod, DrillTask, JobKind, JobResult};
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::decision::{person, user_actor};
use super::{Board, Error};
use crate::domain::authz::Caller;
use crate::domain::backup::SnapshotKind;
use crate::domain::database::DatabaseType;
use crate::domain::drill::{
    self, Drill, DrillBody, DrillPoint, DrillSpec, DrillStatus, DrillTrigger,
};
use crate::domain::job::{Job, JobStatus, Work};
use crate::domain::pitr::{self, WalSeen};
use crate::domain::policy::Policy;
use crate::domain::quota::AlertKind;
use crate::domain::restore::{check_point, Person};
use crate::domain::schedule::{Frequency, Window};
use crate::domain::{new_id, Violation};
use crate::store::{Store, StoreError, Tx};

fn rejected(path: &str, problem: impl Into<String>) -> StoreError {
    StoreError::Rejected(vec![Violation::new(path, problem)])
}

/// Runs a drill of policy `policy_id` now (the caller's right to write its database was
/// checked by the handler). A policy without a `drill` block is drilled with the defaults.
pub async fn request(
    store: &Store,
    board: &Board,
    caller: &Caller,
    policy_id: String,
) -> Result<Drill, Error> {
    let by = person(caller);
    let drill = store
        .write(user_actor(caller), move |tx| {
            let policy = tx.policy(&policy_id)?.ok_or_else(|| StoreError::NotFound {
                kind: "policy",
                id: policy_id.clone(),
            })?;
            make(tx, &policy, DrillTrigger::Manual, Some(by))
        })
        .await?;
    board.wake(&drill.agent_id);
    Ok(drill)
}

/// The policy's drill block, or the defaults for its engine and method.
fn spec_of(policy: &Policy) -> Result<DrillSpec, StoreError> {
    if let Some(spec) = &policy.drill {
        return Ok(spec.clone());
    }
    let mut problems = Vec::new();
    drill::check(
        &DrillBody::default(),
        policy.db_type,
        policy.backup_method,
        policy.pitr,
        policy.timezone.parse().unwrap_or(Tz::UTC),
        &mut problems,
    )
    .ok_or(StoreError::Rejected(problems))
}

/// Makes the drill of `policy` and its job. Nothing is written when it is refused.
fn make(
    tx: &mut Tx,
    policy: &Policy,
    trigger: DrillTrigger,
    by: Option<Person>,
) -> Result<Drill, StoreError> {
    let spec = spec_of(policy)?;
    let db = tx.database_in(&policy.workspace_id, &policy.db_identifier)?;
    if let Some(open) = tx.newest_drill_of(&db.id, &policy.id)? {
        let job = tx.job(&open.job_id)?;
        let open = current(open, job.as_ref());
        if !open.is_final() {
            return Err(StoreError::Conflict(format!(
                "drill '{}' of policy '{}' is still {}; one drill runs at a time per policy",
                open.id,
                policy.id,
                open.status.as_str()
            )));
        }
    }
    let agent = match &spec.agent_id {
        Some(id) => {
            let agent = tx.agent_in(&db.workspace_id, id)?;
            if agent.revoked_at.is_some() {
                return Err(rejected("drill.agent_id", format!("agent '{id}' was revoked")));
            }
            agent
        }
        None => tx.serving_agent(&db)?.ok_or_else(|| {
            rejected(
                "drill.agent_id",
                format!(
                    "database '{}' has no live agent to drill on; name a scratch agent in the policy's drill.agent_id",
                    db.id
                ),
            )
        })?,
    };
    let physical =
        db.db_type == DatabaseType::Postgresql && policy.backup_method == BackupMethod::Physical;
    let backups = tx.backups_of(&db.id)?;
    // The newest good backup of the kind the drill restores says which storage it reads.
    let newest = backups
        .iter()
        .filter(|b| b.is_good())
        .filter(|b| {
            db.db_type != DatabaseType::Postgresql
                || (b.method == Some(BackupMethod::Physical)) == physical
        })
        .max_by_key(|b| b.finished_at)
        .ok_or_else(|| {
            rejected(
                "policy",
                format!(
                    "database '{}' has no good {} backup to drill yet; run one first (POST /api/v1/backups)",
                    db.id,
                    if physical { "physical" } else { "logical" }
                ),
            )
        })?;
    let now = tx.now;
    let point = DrillPoint::parse(&spec.point).map_err(|e| rejected("drill.point", e))?;
    let (point, target_time) = point.resolve(now);
    let wal: Option<WalSeen> = tx.schedule_record(&pitr::wal_key(&db.id))?;
    check_point(&point, pitr::window(&backups, wal.as_ref()).as_ref())
        .map_err(|v| rejected("drill.point", v.problem))?;
    let id = new_id("drl");
    let task = DrillTask {
        drill_id: id.clone(),
        database_id: db.id.clone(),
        database_type: db.db_type,
        point,
        physical,
        integrity: spec.integrity,
        row_counts: spec.row_counts,
        sql_checks: spec.sql_checks.clone(),
    };
    let who = by
        .as_ref()
        .map_or("the schedule".to_string(), |p| p.name.clone());
    let mut job = super::make::new_job(
        &db,
        &agent.id,
        SnapshotKind::Manual,
        None,
        policy.schedule.priority,
        now,
        format!("drill {id} of policy {}, by {who}", policy.id),
        // A drill is never repeated behind its requester's back: the next one is a new drill.
        1,
        now,
    );
    job.job_kind = JobKind::Drill;
    job.method = None;
    job.storage_id = newest.storage_id.clone();
    job.work = Work::Drill {
        drill_id: id.clone(),
        task,
    };
    tx.create_job(&job)?;
    let drill = Drill {
        id,
        workspace_id: db.workspace_id.clone(),
        database_id: db.id.clone(),
        db_type: db.db_type,
        policy_id: policy.id.clone(),
        agent_id: agent.id.clone(),
        storage_id: job.storage_id.clone(),
        job_id: job.id.clone(),
        trigger,
        requested_by: by,
        point: spec.point.clone(),
        target_time,
        physical,
        status: DrillStatus::Queued,
        progress: None,
        snapshot: None,
        checks: Vec::new(),
        reached: None,
        recovered_to: None,
        rto_secs: None,
        rpo_secs: None,
        rto_target_minutes: policy.rto_target_minutes,
        rpo_target_minutes: policy.rpo_target_minutes,
        targets_met: None,
        misses: Vec::new(),
        scratch_removed: None,
        created_at: now,
        started_at: None,
        finished_at: None,
        error: None,
    };
    tx.create_drill(&drill)?;
    Ok(drill)
}

/// When a policy's next scheduled drill is due, kept with the scheduler's records.
#[derive(Debug, Default, Serialize, Deserialize)]
struct DrillSchedule {
    /// Absent: not planned yet.
    next_due: Option<DateTime<Utc>>,
    /// The frequency `next_due` was planned with; a changed one plans afresh.
    frequency: String,
}

fn schedule_key(policy: &str) -> String {
    format!("drill:{policy}")
}

/// The scheduler's pass: every enabled policy whose drill is due and whose window is open gets
/// one; the next is due a frequency's average gap later (the first: a gap after the drill block
/// was first seen). A policy that cannot be drilled when due (no backup yet, no live agent, a
/// point outside the recoverable window) is tried again at the next tick.
pub fn due(tx: &mut Tx) -> Result<Vec<Drill>, StoreError> {
    let now = tx.now;
    let mut made = Vec::new();
    for policy in tx.all_policies()? {
        let Some(spec) = policy.drill.as_ref().filter(|_| policy.enabled) else {
            continue;
        };
        let key = schedule_key(&policy.id);
        let mut state: DrillSchedule = tx.schedule_record(&key)?;
        let tz: Tz = policy.timezone.parse().unwrap_or(Tz::UTC);
        let gap = Duration::seconds(
            spec.frequency
                .parse::<Frequency>()
                .and_then(|f| f.cadence(tz))
                .map_or(7 * 24 * 3600, |c| c.avg_gap_seconds),
        );
        let Some(next_due) = state.next_due.filter(|_| state.frequency == spec.frequency) else {
            // First seen (or its frequency changed): the first drill is one gap away; until
            // then `POST /api/v1/policies/{id}/drills` runs one.
            state = DrillSchedule {
                next_due: Some(now + gap),
                frequency: spec.frequency.clone(),
            };
            tx.put_schedule_record(&key, &state)?;
            continue;
        };
        if next_due > now || !window_open(&policy, now) {
            continue;
        }
        match make(tx, &policy, DrillTrigger::Scheduled, None) {
            Ok(d) => made.push(d),
            Err(StoreError::Rejected(v)) => {
                tracing::debug!(policy = %policy.id, problem = %v.first().map_or("", |v| v.problem.as_str()), "drill not possible yet");
                continue;
            }
            Err(StoreError::Conflict(_) | StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
        state.next_due = Some(now + gap);
        tx.put_schedule_record(&key, &state)?;
    }
    Ok(made)
}

/// Whether `now` falls into the policy's preferred window, in its time zone.
fn window_open(policy: &Policy, now: DateTime<Utc>) -> bool {
    use chrono::Timelike;
    let (Ok(w), Ok(tz)) = (
        policy.schedule.preferred_window.parse::<Window>(),
        policy.timezone.parse::<Tz>(),
    ) else {
        return false;
    };
    let local = now.with_timezone(&tz);
    w.contains_minute(local.hour() * 60 + local.minute())
}

/// The drill as it stands: while its job is queued or running, the job's status and progress;
/// a job that ended without its result being recorded (its agent went silent) failed it.
pub fn current(mut d: Drill, job: Option<&Job>) -> Drill {
    let Some(job) = job else { return d };
    if d.is_final() {
        return d;
    }
    match job.status {
        JobStatus::Queued => {}
        JobStatus::Running => {
            d.status = DrillStatus::Running;
            d.started_at = job.started_at;
            d.progress = job.progress.clone();
        }
        JobStatus::Failed | JobStatus::Succeeded => {
            d.status = DrillStatus::Failed;
            d.targets_met = Some(false);
            d.started_at = job.started_at;
            d.finished_at = job.finished_at;
            d.error = job.error.clone();
        }
    }
    d
}

/// What a drill job's agent reported: the drill judged against its targets; a drill that
/// failed or missed a target raises `drill_failed`, and once every drilled policy of the
/// workspace has proven itself again the alert is resolved.
pub fn record(tx: &mut Tx, job: &Job, result: &JobResult) -> Result<(), StoreError> {
    let Work::Drill { drill_id, .. } = &job.work else {
        return Ok(());
    };
    let before = tx.existing_drill(drill_id)?;
    let mut after = before.clone();
    after.finish(result);
    let action = match after.status {
        DrillStatus::Passed => "pass",
        _ => "fail",
    };
    tx.save_drill(action, &before, &after)?;
    if after.proves() {
        if every_drill_proves(tx, &after.workspace_id)? {
            tx.resolve_alert(&after.workspace_id, AlertKind::DrillFailed, None)?;
        }
        return Ok(());
    }
    let why = match (&after.error, after.misses.is_empty()) {
        (Some(e), _) => e.clone(),
        (None, false) => after.misses.join("; "),
        (None, true) => "no reason given".to_string(),
    };
    let message = format!(
        "drill {} of database '{}' (policy {}) on agent '{}' {}: {why}",
        after.id,
        after.database_id,
        after.policy_id,
        after.agent_id,
        if after.status == DrillStatus::Passed {
            "missed its targets"
        } else {
            "failed"
        }
    );
    tx.raise_alert(&after.workspace_id, AlertKind::DrillFailed, None, &message)?;
    Ok(())
}

/// Whether the newest ended drill of every policy of the workspace proves it.
fn every_drill_proves(tx: &Tx, workspace: &str) -> Result<bool, StoreError> {
    for policy in tx.policies_of(workspace)? {
        if let Some(d) = tx.newest_drill_of(&policy.db_identifier, &policy.id)? {
            if d.is_final() && !d.proves() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}
