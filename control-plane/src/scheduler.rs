//! The scheduler: turns policies into jobs, hands jobs to agents, and gives up on jobs whose
//! agent went silent.
//!
//! Why not a cron library firing callbacks (tokio-cron-scheduler, as DESIGN.md proposed): a
//! policy's run is not "at this cron instant" but "somewhere in this window, spread from the
//! other policies, early enough for its learned duration", and the only memory that survives a
//! restart is redb. So each policy keeps `next_due` in the store (`schedule_state`), computed by
//! the pure planner (`domain::plan`), and one periodic tick compares it with the clock: a slot
//! that passed while the control plane was down is found on the first tick after the restart and
//! run once — the next slot is computed from *now*, never from the missed one, so nothing is
//! run once per missed tick. Cron expressions are still evaluated by `croner`, as in validation.
//!
//! Handing out: agents long-poll; [`Board`] wakes the poll of the agent a new job is for, and the
//! claim (one write transaction, `Tx::claim_job`) applies the priority order and the limits per
//! agent and per storage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::domain::audit::Actor;
use crate::domain::backup::SnapshotKind;
use crate::domain::database::Database;
use crate::domain::job::{Job, JobStatus, DEFAULT_MAX_ATTEMPTS};
use crate::domain::plan::{self, PlanInput};
use crate::domain::policy::Policy;
use crate::domain::schedule::Frequency;
use crate::domain::{new_id, schedule};
use crate::secrets::SecretKey;
use crate::store::jobs::{Limits, ScheduleState};
use crate::store::{self, quota::Admission, Store, StoreError, Tx};

/// The job-related settings (`control-plane.toml`).
#[derive(Debug, Clone, Copy)]
pub struct JobSettings {
    /// How often the scheduler looks at policies and running jobs.
    pub tick: Duration,
    /// A running job whose agent has not been heard of for this long is failed (and retried).
    pub lost_after: Duration,
    pub limits: Limits,
    pub max_attempts: u32,
    /// Delay before a lost job's retry may start (its agent may just be restarting).
    pub retry_delay: Duration,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            tick: Duration::from_secs(15),
            lost_after: Duration::from_secs(120),
            limits: Limits {
                per_agent: 1,
                per_storage: 4,
            },
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_delay: Duration::from_secs(30),
        }
    }
}

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

/// The workspace key-encryption key as agents receive it (64 hex digits), made on first use and
/// kept sealed with the secrets key.
pub async fn workspace_key(
    store: &Store,
    secrets: &SecretKey,
    workspace: &str,
) -> Result<String, StoreError> {
    let aad = format!("workspace-key:{workspace}");
    let ws = workspace.to_string();
    let seal_key = secrets.clone();
    let seal_aad = aad.clone();
    let existing = store::jobs::workspace_key_sealed(&store.read()?, workspace)?;
    let sealed = match existing {
        Some(sealed) => sealed,
        // Made once per workspace (the store keeps the first if two race).
        None => {
            store
                .write(system_actor(), move |tx| {
                    tx.workspace_key_sealed(&ws, || {
                        let mut key = [0u8; 32];
                        getrandom::fill(&mut key)
                            .expect("the operating system's random source failed");
                        seal_key.seal(&seal_aad, &hex::encode(key))
                    })
                })
                .await?
        }
    };
    secrets
        .open(&aad, &sealed)
        .map_err(|e| StoreError::Task(e.to_string()))
}

pub fn system_actor() -> Actor {
    Actor {
        kind: "system".into(),
        id: "scheduler".into(),
        name: "scheduler".into(),
    }
}

/// A job for `db`, not yet stored.
#[allow(clippy::too_many_arguments)]
pub fn new_job(
    db: &Database,
    agent: &str,
    kind: SnapshotKind,
    policy: Option<&Policy>,
    priority: crate::domain::policy::Priority,
    not_before: DateTime<Utc>,
    reason: String,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Job {
    Job {
        id: new_id("job"),
        workspace_id: db.workspace_id.clone(),
        database_id: db.id.clone(),
        db_type: db.db_type,
        agent_id: agent.to_string(),
        policy_id: policy.map(|p| p.id.clone()),
        storage_id: policy.and_then(|p| p.storage_id.clone()),
        kind,
        priority,
        method: policy.map(|p| p.backup_method),
        status: JobStatus::Queued,
        not_before,
        reason,
        attempt: 1,
        max_attempts,
        retry_of: None,
        notes: None,
        tags: Default::default(),
        created_at: now,
        started_at: None,
        finished_at: None,
        progress: None,
        snapshot: None,
        logical_bytes: 0,
        stored_bytes: 0,
        error: None,
        warnings: Vec::new(),
    }
}

/// Stores `job` after the quota admission; a refused one is stored as failed with the reason.
pub fn admit_and_create(tx: &mut Tx, mut job: Job, expected_bytes: u64) -> Result<Job, StoreError> {
    if let Admission::Refused(why) =
        tx.admit_backup(&job.workspace_id, &job.database_id, expected_bytes)?
    {
        job.status = JobStatus::Failed;
        job.finished_at = Some(tx.now);
        job.error = Some(why);
    }
    tx.create_job(&job)?;
    Ok(job)
}

/// What one tick did (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub created: Vec<String>,
    pub skipped: Vec<String>,
    pub lost: Vec<String>,
    pub retried: Vec<String>,
}

/// One pass: due policies become jobs, silent agents' jobs fail (and are retried).
pub async fn tick(store: &Store, board: &Board) -> Result<TickReport, StoreError> {
    let settings = board.settings;
    let started_at = board.started_at;
    let mut report = store
        .write(system_actor(), move |tx| plan_due(tx, settings))
        .await?;
    let lost = store
        .write(system_actor(), move |tx| {
            sweep_lost(tx, settings, started_at)
        })
        .await?;
    report.lost = lost.iter().map(|(l, _)| l.clone()).collect();
    report.retried = lost.into_iter().filter_map(|(_, r)| r).collect();
    let rtx = store.read()?;
    for id in report.created.iter().chain(&report.retried) {
        if let Some(job) = store::jobs::get(&rtx, id)? {
            board.wake(&job.agent_id);
        }
    }
    Ok(report)
}

/// What a stored slot was planned from: when it changes (frequency, window, time zone), the
/// slot is planned again.
pub fn plan_key(policy: &Policy) -> String {
    format!("{}|{}", policy.schedule_key(), policy.timezone)
}

/// A policy with its parsed frequency and learned duration: what the planner needs, owned.
pub struct Plan {
    policy: Policy,
    frequency: Frequency,
    expected_secs: i64,
}

impl Plan {
    pub fn input(&self) -> PlanInput<'_> {
        PlanInput::from_policy(&self.policy, &self.frequency, self.expected_secs)
            .expect("checked when the plan was made")
    }

    /// Why the slot at `due` is there (the planner's reason for it).
    pub fn reason_for(&self, due: DateTime<Utc>) -> String {
        plan::next_slot(&self.input(), due - chrono::Duration::seconds(1))
            .filter(|s| s.start == due)
            .map_or_else(|| format!("slot planned for {due}"), |s| s.reason)
    }
}

/// The planner's view of a policy, with its learned duration.
pub fn plan_for(policy: &Policy, state: &ScheduleState) -> Result<Plan, String> {
    let frequency = plan::policy_frequency(policy)?;
    let expected_secs = state.expected_secs.unwrap_or(0);
    PlanInput::from_policy(policy, &frequency, expected_secs)?;
    Ok(Plan {
        policy: policy.clone(),
        frequency,
        expected_secs,
    })
}

fn plan_due(tx: &mut Tx, settings: JobSettings) -> Result<TickReport, StoreError> {
    let now = tx.now;
    let mut report = TickReport::default();
    for policy in tx.all_policies()? {
        let mut state = tx.schedule_state(&policy.id)?;
        if !policy.enabled {
            // Forget the planned slot: re-enabling plans afresh instead of catching up.
            if state.next_due.take().is_some() {
                tx.put_schedule_state(&policy.id, &state)?;
            }
            continue;
        }
        let plan = match plan_for(&policy, &state) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(policy = %policy.id, error = %e, "policy cannot be planned");
                continue;
            }
        };
        let key = plan_key(&policy);
        let (Some(due), true) = (
            state.next_due,
            state.plan_key.as_deref() == Some(key.as_str()),
        ) else {
            // First sight of the policy, or its schedule changed: the next slot, not now.
            state.next_due = plan::next_slot(&plan.input(), now).map(|s| s.start);
            state.plan_key = Some(key);
            tx.put_schedule_state(&policy.id, &state)?;
            continue;
        };
        if due > now {
            continue;
        }
        state.next_due = plan::next_slot(&plan.input(), now).map(|s| s.start);
        let late = (now - due).num_seconds();
        let catch_up = late > (settings.tick.as_secs() as i64) * 2 + 60;
        let previous_active = match &state.last_job {
            Some(id) => tx.job(id)?.is_some_and(|j| j.status.is_active()),
            None => false,
        };
        let db = tx.database(&policy.db_identifier)?;
        let agent = match &db {
            Some(d) => tx.serving_agent(d)?.map(|a| a.id),
            None => None,
        };
        match (db, agent) {
            _ if previous_active => {
                tracing::info!(policy = %policy.id, "slot skipped: the previous run is still queued or running");
                report.skipped.push(policy.id.clone());
            }
            (Some(db), Some(agent)) => {
                let reason = if catch_up {
                    format!(
                        "catch-up: the slot at {due} was missed ({} late; the control plane was not running); run once now",
                        schedule::human(late)
                    )
                } else {
                    format!("schedule: {}", plan.reason_for(due))
                };
                let job = new_job(
                    &db,
                    &agent,
                    SnapshotKind::Automatic,
                    Some(&policy),
                    policy.schedule.priority,
                    now,
                    reason,
                    settings.max_attempts,
                    now,
                );
                let job = admit_and_create(tx, job, state.last_stored_bytes)?;
                state.last_job = Some(job.id.clone());
                report.created.push(job.id);
            }
            _ => {
                tracing::warn!(policy = %policy.id, database = %policy.db_identifier, "slot skipped: no enrolled agent serves this database");
                report.skipped.push(policy.id.clone());
            }
        }
        tx.put_schedule_state(&policy.id, &state)?;
    }
    Ok(report)
}

type Lost = (String, Option<String>);

fn sweep_lost(
    tx: &mut Tx,
    settings: JobSettings,
    started_at: DateTime<Utc>,
) -> Result<Vec<Lost>, StoreError> {
    let now = tx.now;
    let lost_after = chrono::Duration::from_std(settings.lost_after).unwrap_or_default();
    let mut out = Vec::new();
    let running = store::jobs::running_in(tx)?;
    for job in running {
        let agent = tx.agent(&job.agent_id)?;
        let heard = [
            agent.as_ref().and_then(|a| a.last_heartbeat_at),
            job.progress.as_ref().map(|p| p.at),
            job.started_at,
            Some(started_at),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(now);
        let revoked = agent.as_ref().is_some_and(|a| a.revoked_at.is_some());
        // Taken before references were checked by an agent of another workspace: it never
        // reports on it (and must not), however alive it is.
        let stranger = agent
            .as_ref()
            .is_some_and(|a| a.workspace_id != job.workspace_id);
        if !revoked && !stranger && now - heard <= lost_after {
            continue;
        }
        let why = if stranger {
            format!(
                "agent {} is not an agent of workspace '{}'; the job cannot run there",
                job.agent_id, job.workspace_id
            )
        } else if revoked {
            format!("agent {} was revoked while the job ran", job.agent_id)
        } else {
            format!(
                "lost with its agent: agent {} not heard of since {heard} ({} without heartbeat or progress)",
                job.agent_id,
                schedule::human((now - heard).num_seconds())
            )
        };
        // A revoked agent's work is not retried: whoever revoked it wants it stopped.
        let retry = (!revoked && !stranger).then(|| {
            (
                new_id("job"),
                chrono::Duration::from_std(settings.retry_delay).unwrap_or_default(),
            )
        });
        let retried = tx.fail_lost_job(&job.id, &why, retry)?;
        tracing::warn!(job = %job.id, agent = %job.agent_id, "{why}");
        out.push((job.id.clone(), retried.map(|j| j.id)));
    }
    // Queued jobs of a revoked agent would wait forever.
    for job in store::jobs::queued_in(tx)? {
        let revoked = tx
            .agent(&job.agent_id)?
            .is_none_or(|a| a.revoked_at.is_some());
        if revoked {
            let why = format!(
                "not run: agent {} was revoked (or removed) before it took the job",
                job.agent_id
            );
            tx.fail_queued_job(&job.id, &why)?;
            tracing::warn!(job = %job.id, "{why}");
            out.push((job.id.clone(), None));
        }
    }
    Ok(out)
}

/// The scheduler task: a [`tick`] every `settings.tick` until `stop` changes.
pub async fn run(store: Store, board: Arc<Board>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let period = board.settings.tick;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => match tick(&store, &board).await {
                Ok(r) if r != TickReport::default() => tracing::info!(
                    created = r.created.len(), skipped = r.skipped.len(), lost = r.lost.len(),
                    retried = r.retried.len(), "scheduler pass"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "scheduler pass failed"),
            },
            _ = stop.changed() => break,
        }
    }
}
