//! A restore's life: requested (checked against the catalog, the recoverable window and the
//! workspace's agents), approved or rejected by a second person when its policy or its request
//! asks, cancelled by its requester, expired when nobody decided in time, run as a job on its
//! target agent, and finished with what that job reports.
//!
//! Every refusal happens before anything is stored: a request the checks refuse leaves no
//! record, and a restore waiting for approval has no job, so no agent can start it early.

use bulwark_core::api::{JobKind, JobResult, RestoreTarget, RestoreTask};
use chrono::{DateTime, Utc};

use super::decision::{check_decider, check_note, person, user_actor};
use super::{Board, Error};
use crate::domain::authz::{Access, Caller};
use crate::domain::backup::{BackupRecord, BackupStatus, SnapshotKind};
use crate::domain::database::Database;
use crate::domain::job::{Job, JobStatus, Work};
use crate::domain::pitr::{self, WalSeen};
use crate::domain::policy::Priority;
use crate::domain::quota::AlertKind;
use crate::domain::restore::{
    check_confirmation, check_point, Decision, Restore, RestoreBody, RestoreStatus,
};
use crate::domain::{new_id, Violation};
use crate::store::{Store, StoreError, Tx};

/// What a request restores: a catalog entry, or a database's newest state or point.
pub enum Source {
    Backup(Box<BackupRecord>),
    Database,
}

fn rejected(path: &str, problem: impl Into<String>) -> StoreError {
    StoreError::Rejected(vec![Violation::new(path, problem)])
}

/// Checks a request for `db` and stores it: queued at once (its job made), or waiting for
/// approval. The target agent's poll is woken.
pub async fn request(
    store: &Store,
    board: &Board,
    caller: &Caller,
    db: Database,
    source: Source,
    body: RestoreBody,
) -> Result<Restore, Error> {
    let checked = body.check(db.db_type).map_err(Error::Invalid)?;
    let confirmed = check_confirmation(&db.id, &checked.target, body.confirm.as_deref())
        .map_err(|v| Error::Invalid(vec![v]))?;
    let requester = person(caller);
    let actor = user_actor(caller);
    let restore = store
        .write(actor, move |tx| {
            let backups = tx.backups_of(&db.id)?;
            let physical_target = matches!(checked.target, RestoreTarget::Location { .. })
                && db.db_type == crate::domain::database::DatabaseType::Postgresql;
            // The catalog entry read: the one named, or the newest good one of the database
            // that such a restore starts from (a physical base for a new data directory).
            let (backup_id, snapshot, storage_id) = match &source {
                Source::Backup(b) => {
                    if !b.is_good() {
                        return Err(rejected(
                            "backup_id",
                            format!(
                                "backup '{}' cannot be restored: it {}",
                                b.id,
                                match (b.status, b.verification) {
                                    (BackupStatus::Running, _) => "is still running",
                                    (BackupStatus::Failed, _) => "failed",
                                    _ => "was found damaged by a verify",
                                }
                            ),
                        ));
                    }
                    (Some(b.id.clone()), b.snapshot.clone(), b.storage_id.clone())
                }
                Source::Database => {
                    let wal: Option<WalSeen> = tx.schedule_record(&pitr::wal_key(&db.id))?;
                    let window = pitr::window(&backups, wal.as_ref());
                    check_point(&checked.point, window.as_ref())
                        .map_err(|v| StoreError::Rejected(vec![v]))?;
                    let newest = backups
                        .iter()
                        .filter(|b| b.is_good())
                        .filter(|b| {
                            !physical_target
                                || b.method == Some(bulwark_core::api::BackupMethod::Physical)
                        })
                        .max_by_key(|b| b.finished_at);
                    let Some(newest) = newest else {
                        return Err(rejected(
                            "target",
                            "the database has no good physical base backup to restore into a new data directory",
                        ));
                    };
                    (None, None, newest.storage_id.clone())
                }
            };
            if let Some(storage) = &storage_id {
                tx.storage_in(&db.workspace_id, storage)?;
            }
            let agent = match &body.agent_id {
                Some(id) => {
                    let agent = tx.agent_in(&db.workspace_id, id)?;
                    if agent.revoked_at.is_some() {
                        return Err(rejected("agent_id", format!("agent '{id}' was revoked")));
                    }
                    agent
                }
                None => tx.serving_agent(&db)?.ok_or_else(|| {
                    rejected(
                        "agent_id",
                        format!("database '{}' has no live agent; name another agent of the workspace with agent_id (restore to a new location)", db.id),
                    )
                })?,
            };
            let own_agent = db.agent_id.as_deref() == Some(agent.id.as_str());
            if !own_agent && !matches!(checked.target, RestoreTarget::Location { .. }) {
                return Err(rejected(
                    "target",
                    format!("agent '{}' does not serve database '{}': another agent can only restore to a new location", agent.id, db.id),
                ));
            }
            let approval_required = tx
                .policies_of(&db.workspace_id)?
                .into_iter()
                .find(|p| p.db_identifier == db.id && p.require_restore_approval)
                .map(|p| format!("policy {}", p.id))
                .or_else(|| body.require_approval.then(|| "requested".to_string()));
            let now = tx.now;
            let id = new_id("rst");
            let task = RestoreTask {
                restore_id: id.clone(),
                database_id: db.id.clone(),
                database_type: db.db_type,
                snapshot: snapshot.clone(),
                point: checked.point.clone(),
                mode: checked.mode,
                schemas: body.schemas.clone(),
                tables: body.tables.clone(),
                target: checked.target.clone(),
                confirmed,
            };
            let mut restore = Restore {
                id,
                workspace_id: db.workspace_id.clone(),
                database_id: db.id.clone(),
                db_type: db.db_type,
                backup_id,
                snapshot,
                point: task.point.clone(),
                mode: task.mode,
                schemas: task.schemas.clone(),
                tables: task.tables.clone(),
                target: task.target.clone(),
                agent_id: agent.id.clone(),
                storage_id,
                reason: checked.reason.clone(),
                confirmed: body.confirm.clone(),
                requested_by: requester,
                requested_at: now,
                approval_required,
                decision: None,
                expires_at: now + checked.expires_in,
                status: RestoreStatus::PendingApproval,
                job_id: None,
                progress: None,
                pre_restore_backup_id: None,
                restored_snapshot: None,
                reached: None,
                details: serde_json::Value::Null,
                started_at: None,
                finished_at: None,
                duration_secs: None,
                error: None,
                cancelled_by: None,
            };
            if restore.approval_required.is_some() {
                tx.create_restore(&restore)?;
                return Ok(restore);
            }
            restore.status = RestoreStatus::Queued;
            restore.job_id = Some(queue_job(tx, &db, &restore, task)?);
            tx.create_restore(&restore)?;
            Ok(restore)
        })
        .await?;
    board.wake(&restore.agent_id);
    Ok(restore)
}

/// Makes the restore's job (one attempt: a restore is never repeated behind a person's back).
fn queue_job(
    tx: &mut Tx,
    db: &Database,
    restore: &Restore,
    task: RestoreTask,
) -> Result<String, StoreError> {
    let mut job = super::make::new_job(
        db,
        &restore.agent_id,
        SnapshotKind::Manual,
        None,
        Priority::Critical,
        tx.now,
        format!(
            "restore {}, requested by {}: {}",
            restore.id, restore.requested_by.name, restore.reason
        ),
        1,
        tx.now,
    );
    job.job_kind = JobKind::Restore;
    job.method = None;
    job.storage_id = restore.storage_id.clone();
    job.work = Work::Restore {
        restore_id: restore.id.clone(),
        task,
    };
    tx.create_job(&job)?;
    Ok(job.id)
}

/// A second person's decision on a restore waiting for approval.
pub async fn decide(
    store: &Store,
    board: &Board,
    caller: &Caller,
    id: String,
    approve: bool,
    note: Option<String>,
) -> Result<Restore, Error> {
    check_note(note.as_deref())?;
    let by = person(caller);
    let restore = readable(store, &id)?;
    check_decider(
        caller,
        &restore.requested_by,
        &restore.workspace_id,
        &format!("restore '{id}'"),
        approve,
    )?;
    let actor = user_actor(caller);
    let outcome = store
        .write(actor, move |tx| {
            let before = tx.existing_restore(&id)?;
            if before.status != RestoreStatus::PendingApproval {
                return Err(StoreError::Conflict(format!(
                    "restore '{id}' is {}, not waiting for approval",
                    before.status.as_str()
                )));
            }
            let mut after = before.clone();
            if expire_if_due(tx, &mut after)? {
                // Committed, so the expiry stays recorded; the caller hears why.
                return Ok(Err(after));
            }
            after.decision = Some(Decision {
                by: by.clone(),
                approved: approve,
                note: note.clone(),
                at: tx.now,
            });
            if !approve {
                after.status = RestoreStatus::Rejected;
                after.finished_at = Some(tx.now);
                tx.save_restore("reject", &before, &after)?;
                return Ok(Ok(after));
            }
            after.status = RestoreStatus::Approved;
            tx.save_restore("approve", &before, &after)?;
            let approved = after.clone();
            let db = tx.database_in(&after.workspace_id, &after.database_id)?;
            let task = task_of(&after);
            after.job_id = Some(queue_job(tx, &db, &after, task)?);
            after.status = RestoreStatus::Queued;
            tx.save_restore("queue", &approved, &after)?;
            Ok(Ok(after))
        })
        .await?;
    match outcome {
        Ok(r) => {
            board.wake(&r.agent_id);
            Ok(r)
        }
        Err(expired) => Err(Error::Store(StoreError::Conflict(format!(
            "restore '{}' expired at {} before anyone approved it; request it again",
            expired.id,
            expired.expires_at.to_rfc3339()
        )))),
    }
}

/// The stored restore `id` (the caller's right to see it was checked by the handler).
fn readable(store: &Store, id: &str) -> Result<Restore, Error> {
    Ok(
        crate::store::restores::get(&store.read()?, id)?.ok_or_else(|| StoreError::NotFound {
            kind: "restore",
            id: id.to_string(),
        })?,
    )
}

/// The agent's task, rebuilt from the stored restore (the same fields it was checked with).
fn task_of(r: &Restore) -> RestoreTask {
    RestoreTask {
        restore_id: r.id.clone(),
        database_id: r.database_id.clone(),
        database_type: r.db_type,
        snapshot: r.snapshot.clone(),
        point: r.point.clone(),
        mode: r.mode,
        schemas: r.schemas.clone(),
        tables: r.tables.clone(),
        target: r.target.clone(),
        confirmed: r.confirmed.is_some(),
    }
}

/// Marks a pending restore past its expiry as expired; `true` when it was.
fn expire_if_due(tx: &mut Tx, r: &mut Restore) -> Result<bool, StoreError> {
    if r.status != RestoreStatus::PendingApproval || tx.now <= r.expires_at {
        return Ok(false);
    }
    let before = r.clone();
    r.status = RestoreStatus::Expired;
    r.finished_at = Some(tx.now);
    r.error = Some(format!(
        "nobody approved it before {}",
        r.expires_at.to_rfc3339()
    ));
    tx.save_restore("expire", &before, r)?;
    Ok(true)
}

/// The scheduler's sweep: every restore whose approval did not come in time expires.
pub fn expire_due(tx: &mut Tx) -> Result<usize, StoreError> {
    let mut n = 0;
    for mut r in tx.pending_restores()? {
        if expire_if_due(tx, &mut r)? {
            n += 1;
        }
    }
    Ok(n)
}

/// The requester (or an admin of the workspace) withdraws a restore that has not started.
pub async fn cancel(store: &Store, caller: &Caller, id: String) -> Result<Restore, Error> {
    let by = person(caller);
    let restore = readable(store, &id)?;
    let admin = caller.access(&restore.workspace_id, None) >= Access::Admin;
    if restore.requested_by.user_id != by.user_id && !admin {
        return Err(Error::Forbidden(format!(
            "only its requester or an admin of workspace '{}' may cancel restore '{id}'",
            restore.workspace_id
        )));
    }
    let r = store
        .write(user_actor(caller), move |tx| {
            let before = tx.existing_restore(&id)?;
            let job = match &before.job_id {
                Some(j) => tx.job(j)?,
                None => None,
            };
            let started = job.as_ref().is_some_and(|j| j.status != JobStatus::Queued);
            if before.status.is_final() || started {
                return Err(StoreError::Conflict(format!(
                    "restore '{id}' is {}; only a restore that has not started can be cancelled",
                    current(before.clone(), job.as_ref()).status.as_str()
                )));
            }
            if let Some(j) = &job {
                tx.fail_queued_job(&j.id, &format!("restore {id} cancelled by {}", by.name))?;
            }
            let mut after = before.clone();
            after.status = RestoreStatus::Cancelled;
            after.finished_at = Some(tx.now);
            after.cancelled_by = Some(by);
            tx.save_restore("cancel", &before, &after)?;
            Ok(after)
        })
        .await?;
    Ok(r)
}

/// The restore as it stands: while its job is queued or running, the job's status and progress;
/// a job failed without a result (its agent went silent) fails the restore.
pub fn current(mut r: Restore, job: Option<&Job>) -> Restore {
    let Some(job) = job else { return r };
    if r.status == RestoreStatus::Queued {
        match job.status {
            JobStatus::Queued => {}
            JobStatus::Running => {
                r.status = RestoreStatus::Running;
                r.started_at = job.started_at;
                r.progress = job.progress.clone();
            }
            JobStatus::Failed | JobStatus::Succeeded => {
                // Its result was not recorded against the restore: the job was given up.
                r.status = RestoreStatus::Failed;
                r.started_at = job.started_at;
                r.finished_at = job.finished_at;
                r.error = job.error.clone();
            }
        }
    }
    r
}

/// What a restore job's agent reported: the pre-restore backup into the catalog (kind
/// `pre-restore`, linked both ways), the point reached, and on failure the `restore_failed`
/// alert.
pub fn record(tx: &mut Tx, job: &Job, result: &JobResult) -> Result<(), StoreError> {
    let Work::Restore { restore_id, .. } = &job.work else {
        return Ok(());
    };
    let before = tx.existing_restore(restore_id)?;
    let mut after = before.clone();
    let outcome = result.restore.clone().unwrap_or_default();
    if let Some(pre) = &outcome.pre_restore {
        let entry = BackupRecord {
            id: new_id("job"),
            workspace_id: job.workspace_id.clone(),
            database_id: job.database_id.clone(),
            db_type: job.db_type,
            kind: SnapshotKind::PreRestore,
            status: BackupStatus::Succeeded,
            started_at: pre.started_at,
            finished_at: Some(pre.finished_at),
            snapshot: Some(pre.snapshot.clone()),
            policy_id: None,
            storage_id: job.storage_id.clone(),
            method: pre.method,
            logical_bytes: pre.logical_bytes,
            stored_bytes: pre.stored_bytes,
            error: None,
            job_id: Some(job.id.clone()),
            notes: Some(format!("taken before restore {restore_id}")),
            tags: [("restore".to_string(), restore_id.clone())].into(),
            verified_at: None,
            verification: None,
            forget_job: None,
        };
        tx.record_backup(&entry)?;
        after.pre_restore_backup_id = Some(entry.id);
    }
    after.status = if result.succeeded {
        RestoreStatus::Succeeded
    } else {
        RestoreStatus::Failed
    };
    after.restored_snapshot = (!outcome.snapshot.is_empty()).then(|| outcome.snapshot.clone());
    after.reached = outcome.reached.clone();
    after.details = outcome.details.clone();
    after.started_at = Some(result.started_at);
    after.finished_at = Some(result.finished_at);
    after.duration_secs = Some(duration(result.started_at, result.finished_at));
    after.error = result.error.clone();
    after.progress = None;
    let action = if result.succeeded { "succeed" } else { "fail" };
    tx.save_restore(action, &before, &after)?;
    if !result.succeeded {
        let message = format!(
            "restore {} of database '{}' on agent '{}' failed: {}",
            after.id,
            after.database_id,
            after.agent_id,
            after.error.as_deref().unwrap_or("no reason given")
        );
        tx.raise_alert(
            &after.workspace_id,
            AlertKind::RestoreFailed,
            None,
            &message,
        )?;
    }
    Ok(())
}

fn duration(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_seconds().max(0)
}
