//! Handing jobs out: agents long-poll, and a poll returns the agent's next due job or, after up
//! to `wait_secs`, nothing.
//!
//! While nothing is due the poll is a read transaction, so a thousand idle agents cost no
//! writes; it sleeps on its agent's notifier on the [`Board`] (woken when a job is queued for
//! the agent or one of its slots frees up) or until the earliest queued job becomes due. The
//! claim itself is one write transaction (`Tx::claim_job`) that applies the priority order and
//! the limits per agent and per storage, so two polls can never take the same job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_core::api::{AgentJob, MAX_POLL_WAIT_SECS};
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::{Error, JobSettings};
use crate::domain::agent::Agent;
use crate::domain::audit::Actor;
use crate::domain::job::Job;
use crate::domain::storage::{BackupStorage, StorageState};
use crate::domain::Violation;
use crate::secrets::SecretKey;
use crate::store::{self, Store};

/// How long a poll waits when the agent does not say.
pub const DEFAULT_POLL_WAIT_SECS: u32 = 25;

/// Wakes the long poll of the agent a job was queued for.
pub struct Board {
    pub settings: JobSettings,
    /// Agents' silence is measured from no earlier than this: after a restart of the control
    /// plane they get `lost_after` to come back before their jobs are failed.
    pub started_at: DateTime<Utc>,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// Set when the server shuts down: open long polls answer "no job" at once instead of
    /// holding the shutdown up.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Board {
    pub fn new(settings: JobSettings) -> Board {
        Board {
            settings,
            started_at: Utc::now(),
            waiters: Mutex::new(HashMap::new()),
            closing: tokio::sync::watch::channel(false).0,
        }
    }

    /// Ends every long poll now and later ones at once.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn notifier(&self, agent: &str) -> Arc<Notify> {
        self.waiters
            .lock()
            .expect("board lock")
            .entry(agent.to_string())
            .or_default()
            .clone()
    }

    pub fn wake(&self, agent: &str) {
        if let Some(n) = self.waiters.lock().expect("board lock").get(agent) {
            n.notify_waiters();
        }
    }
}

/// Waits up to `wait_secs` (default 25, at most 30) for a due job of `agent` and hands it out,
/// with the workspace key; `None` when none came (or the server is shutting down).
pub async fn poll(
    store: &Store,
    secrets: &SecretKey,
    board: &Board,
    agent: &Agent,
    actor: Actor,
    wait_secs: Option<u32>,
) -> Result<Option<AgentJob>, Error> {
    let wait = wait_secs.unwrap_or(DEFAULT_POLL_WAIT_SECS);
    if wait > MAX_POLL_WAIT_SECS {
        return Err(Error::Invalid(vec![Violation::new(
            "wait_secs",
            format!("at most {MAX_POLL_WAIT_SECS} seconds (got {wait})"),
        )]));
    }
    let agent_id = agent.id.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(wait));
    let notify = board.notifier(&agent_id);
    let mut closing = board.closing();
    loop {
        if *closing.borrow() {
            return Ok(None);
        }
        let woken = notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now = store.now();
        let next_due = store::jobs::next_due_time(&store.read()?, &agent_id)?;
        if next_due.is_some_and(|ms| ms <= now.timestamp_millis()) {
            let id = agent_id.clone();
            let limits = board.settings.limits;
            let claimed = store
                .write(actor.clone(), move |tx| tx.claim_job(&id, limits))
                .await?;
            if let Some(job) = claimed {
                match job_storage(store, &job)? {
                    Ok(storage) => {
                        return Ok(Some(hand_out(store, secrets, agent, job, storage).await?))
                    }
                    Err(why) => {
                        // Failed instead of handed out; look for the next job at once.
                        store
                            .write(actor.clone(), move |tx| {
                                tx.fail_lost_job(&job.id, &why, None)?;
                                // A forget that never ran: its entries may be planned again.
                                super::upkeep::release_forget(tx, &job)
                            })
                            .await?;
                        continue;
                    }
                }
            }
        }
        // Sleep until woken, the deadline, or (if sooner) the next queued job's start; a job
        // held back by a limit is looked at again when something finishes (a wake) or in 5 s.
        let mut until = deadline;
        if let Some(ms) = next_due {
            let in_ms = (ms - now.timestamp_millis()).clamp(0, 3_600_000) as u64;
            let due = tokio::time::Instant::now() + Duration::from_millis(in_ms.max(5_000));
            until = until.min(due);
        }
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep_until(until) => {}
            _ = closing.changed() => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// The backup storage `job` writes to (`None`: the agent's own repository), or why the job
/// cannot run: its storage was deleted or is not active.
fn job_storage(store: &Store, job: &Job) -> Result<Result<Option<BackupStorage>, String>, Error> {
    let Some(id) = &job.storage_id else {
        return Ok(Ok(None));
    };
    Ok(
        match store::storages::get(&store.read()?, &job.workspace_id, id)? {
            None => Err(format!(
                "backup storage '{id}' of workspace '{}' no longer exists; the job was not started",
                job.workspace_id
            )),
            Some(s) if s.status != StorageState::Active => Err(format!(
                "backup storage '{id}' is {}, not active{}; the job was not started",
                s.status.as_str(),
                s.status_message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            )),
            Some(s) => Ok(Some(s)),
        },
    )
}

/// The job as its agent receives it, with the workspace key, and with its storage's target
/// (plus the recovery key while that storage's repository may not exist yet).
async fn hand_out(
    store: &Store,
    secrets: &SecretKey,
    agent: &Agent,
    job: Job,
    storage: Option<BackupStorage>,
) -> Result<AgentJob, Error> {
    // The claim already limits jobs to the agent's own queue; a job of another workspace in
    // it would be a bug, and must not carry that workspace's key.
    if job.workspace_id != agent.workspace_id {
        return Err(Error::ForeignJob(job.id));
    }
    let key = super::keys::workspace_key(store, secrets, &job.workspace_id).await?;
    let recovery_key = match &storage {
        Some(s) if !s.repository_exists => {
            Some(super::keys::recovery_key(store, secrets, &job.workspace_id).await?)
        }
        _ => None,
    };
    let mut tags = job.tags.clone();
    tags.insert("job".into(), job.id.clone());
    // The policy says whether the agent authenticates the snapshot it just wrote; any drill
    // of the database that compares row counts has every backup of it record them.
    let rtx = store.read()?;
    let verify_after = match &job.policy_id {
        Some(p) => store::policies::get(&rtx, p)?.is_some_and(|p| p.verify_after_backup),
        None => false,
    };
    let count_rows = store::policies::of_database(&rtx, &job.database_id)?
        .iter()
        .any(|p| p.drill.as_ref().is_some_and(|d| d.row_counts));
    Ok(AgentJob {
        id: job.id.clone(),
        workspace_id: job.workspace_id.clone(),
        attempt: job.attempt,
        workspace_key: key,
        storage: storage.map(|s| s.target()),
        recovery_key,
        task: super::upkeep::task_of(&job, tags, verify_after, count_rows),
    })
}
